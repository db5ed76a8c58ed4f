"""Pieces shared by the register-tiled kernel builders (direct convolution, depthwise, GEMM):
tile sizes, accumulator blocks, the store epilogue's ReLU floor, integer parameters."""

from __future__ import annotations

from .kernel_ir import (
    Const,
    Epilogue,
    Expr,
    ExprLike,
    Let,
    Param,
    Select,
    Var,
    VBin,
    VSplat,
    VZero,
    cmp,
    const,
)

#: Output pixels per register tile of the direct kernel.
TILE_Q = 6
#: Output channels per register tile (two 8-lane vectors).
TILE_K = 16
#: Pixels per tile of the depthwise kernel (one accumulator per pixel).
TILE_DW = 8
#: GEMM register tile: rows (output channels) x columns (pixels).
GEMM_M, GEMM_N = 6, 16


def _prod(*xs: ExprLike) -> ExprLike:
    r: ExprLike = 1
    for x in xs:
        r = r * x
    return r


def _tile_stmts(T: int, nvec: int, inner: list, stores, prefix: str = "acc") -> list:
    """Zero ``T x nvec`` accumulators, run ``inner`` (loops that update them), then ``stores``."""
    body: list = [Let(f"{prefix}_{i}_{h}", VZero()) for i in range(T) for h in range(nvec)]
    body += inner
    body += stores
    return body



def _ints(*names: str) -> list[Param]:
    return [Param(n, "int") for n in names]


#: The lowest finite float32: ``max(v, LOWEST)`` is ``v`` for every finite ``v``.
LOWEST = -3.4028234663852886e38


def _epilogue_stores(stores_for) -> list:
    """The stores of a tile: bias, then ``max(v, floor)`` where ``floor`` is 0 for a fused
    ReLU and the lowest float otherwise (a runtime choice: one ``vmaxps`` per store, outside
    the hot loop; branching between two store blocks instead compiled noticeably slower)."""
    return stores_for(Epilogue(bias=True, activation=None))


def _floored(v: Expr) -> Expr:
    return VBin("max", v, VSplat(Var("floor")))


def _floor_let() -> Let:
    return Let("floor", Select(cmp("!=", Var("relu"), 0), Const(0.0), Const(LOWEST)))


#: Runtime integers describing a channel-blocked buffer an operand lives in: blocks per image,
#: stored height and width (halo included), and where the tensor starts in them.
BLOCKED_INTS = ("B", "H", "W", "T", "L")


def operand_ints(k: int) -> list[str]:
    """Names of the geometry integers of fused epilogue operand ``k`` (``e<k>``)."""
    return [f"E{k}{s}" for s in BLOCKED_INTS]


def operand_row(k: int, n: Expr, block: Expr, p: Expr, kind: str = "full") -> Expr:
    """Offset of row ``p`` of 8-channel block ``block`` of image ``n`` in operand ``k``: a
    ``full`` operand is channel-blocked storage; a ``channel`` gate is the plain ``[N, C]``
    vector (``E<k>B`` = C/8), 8 consecutive channels per block, the same for every pixel."""
    B, H, W, T, L = (Var(s) for s in operand_ints(k))
    if kind == "channel":
        return (n * B + block) * 8
    return ((n * B + block) * H + p + T) * (W * 8) + L * 8


def operand_step(k: int, kind: str, pixel: ExprLike, half: ExprLike = 0) -> Expr:
    """The offset from ``operand_row`` to output pixel ``pixel`` of 8-channel half ``half`` of
    a 16-channel tile (``eplane<k>``: one block further on)."""
    step = const(half) * Var(f"eplane{k}")
    return step if kind == "channel" else const(pixel) * 8 + step


def operand_plane(k: int, kind: str) -> Expr:
    """Floats between consecutive blocks of operand ``k`` (a ``Let`` of ``eplane<k>``)."""
    if kind == "channel":
        return Const(8)
    return Var(f"E{k}H") * Var(f"E{k}W") * 8


def store_epilogue(array: str, index: Expr, value: Expr, epilogue, operand_index,
                   operand_array=lambda k: f"e{k}") -> list:
    """Store the 8-lane ``value`` at ``array[index]`` with the fused ``epilogue`` applied.

    Ops with a vector rule (``OpDef.vector_epilogue``: ReLU, ReLU6, a residual add, ...) are
    applied to the vector; from the first op without one on, the stored lanes are rewritten one
    by one with the scalar rules (sigmoid, swish, GELU: their ``exp``/``erf`` have no vector
    form here). ``operand_index(k)`` is the element offset in operand ``e<k>`` that meets
    ``index``; operands are numbered in epilogue order.
    """
    from ..ops import get_op
    from .elementwise import apply_epilogue
    from .kernel_ir import Const, Load, Loop, Store, VLoad, VStore

    numbers = {e.operand: k for k, e in enumerate(o for o in epilogue if o.operand is not None)}
    v = value
    rest = list(epilogue)
    while rest:
        e = rest[0]
        rule = get_op(e.op).vector_epilogue
        operand = None if e.operand is None else VLoad(operand_array(numbers[e.operand]),
                                                        operand_index(numbers[e.operand]))
        vec = rule(v, e.attr_dict, operand) if rule else None
        if vec is None:
            break
        v = vec
        rest.pop(0)
    stmts: list = [VStore(array, index, v)]
    if rest:
        lane = Var("el")
        loads = {pos: Load(operand_array(k), operand_index(k) + lane)
                 for pos, k in numbers.items()}
        stmts.append(Loop("el", Const(8), apply_epilogue(
            Load(array, index + lane), rest, loads, var="ev")
            + [Store(array, index + lane, Var("ev"))]))
    return stmts
