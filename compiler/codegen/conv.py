"""Convolution kernel builders (kernel IR) and the Python-level convolution API.

Two lowerings, both cross-correlation as in PyTorch:

``direct``
    The register-tiled micro-kernel of PERF-NOTES.md over channel-blocked tensors. Input
    ``[N, g*Cgb, Hp, Wp, CB]`` (pre-padded, each group's channels zero-padded to a multiple of the
    channel block ``CB``: 8, or ``Cg`` itself when a group has fewer than 8 channels, e.g. the
    3-channel stem); weights ``[g*Kgb, Cgb, R, S, CB, 16]``; output ``[N, g*Kgb*2, P, Q, 8]``
    (each group's output channels zero-padded to a multiple of 16). A tile is 6 output pixels x
    16 output channels: 12 ``<8 x float>`` accumulators + 2 weight vectors + 1 broadcast. One
    flattened ``prange`` over (n, k-block, output row), row fastest so a thread keeps one
    k-block's weights in cache; q-tiles of 6 plus one unrolled tail tile for ``Q % 6``; then
    c-block, r, s and the ``CB`` lanes. Strides and dilations only change literal offsets.
    Depthwise convolutions (``groups == C == K``) use a simpler kernel whose 8 lanes are 8
    channels: ``[N, C8, Hp, Wp, 8]`` x ``[C8, R, S, 8]``.

``im2col``
    NCHW. ``im2col`` writes, per image and group, the matrix ``col[Cg*R*S, PQp]`` (``PQp`` =
    ``P*Q`` rounded up to 16, zero columns; stored as 16-column panels), then a blocked GEMM
    ``W[Kgp, Cg*R*S] @ col`` with a 6 x 16 register tile on the same vector intrinsics (the
    epilogue fused into its stores), and a crop kernel copies the valid part to
    ``[N, K, P, Q]``. We use our own GEMM rather than BLAS sgemm:
    scipy is not a runtime dependency, two thread pools (Numba's and BLAS's) fight unless BLAS
    is pinned to one thread, and the GEMM goes through the same printers as every other kernel
    (so a CUDA printer gets it for free). PERF-NOTES measured im2col + BLAS at 18-71% of peak,
    below the direct kernel everywhere; this lowering is the simple, general fallback.

Every kernel takes its sizes as runtime integers: the layout kernels (conversion, im2col, the
crop) entirely; the compute kernels keep literal only what shapes their unrolled inner loops
(channel block, kernel size, stride, dilation, tile structure), while channel-block counts,
spatial sizes, the Q % 6 tail (a runtime branch between unrolled tail tiles) and the fused ReLU
(a runtime flag) are arguments. Each is compiled once per kind and cached, shared by every layer
and model (ResNet-18 needs four direct-convolution kernels). The bias is always added (zeros
for a convolution without one).
Weights and biases are repacked with NumPy (once per weight set, not per inference).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import cache
from .kernel_ir import (
    BinOp,
    Comment,
    Const,
    Epilogue,
    Expr,
    ExprLike,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Select,
    Store,
    Var,
    VBin,
    VBroadcast,
    VFma,
    VLoad,
    VSplat,
    VStore,
    VZero,
    cmp,
)
from .numba_printer import print_expr, print_module, sanitize_comment

__all__ = [
    "ConvGeometry",
    "ConvKernel",
    "compile_conv",
    "conv_output_size",
    "normalize_attrs",
    "direct_conv_kernel",
    "depthwise_conv_kernel",
    "gemm_kernel",
    "layout_kernels",
    "TILE_Q",
    "TILE_K",
]

#: Output pixels per register tile of the direct kernel.
TILE_Q = 6
#: Output channels per register tile (two 8-lane vectors).
TILE_K = 16
#: Pixels per tile of the depthwise kernel (one accumulator per pixel).
TILE_DW = 8
#: GEMM register tile: rows (output channels) x columns (pixels).
GEMM_M, GEMM_N = 6, 16


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_output_size(size: int, pad_before: int, pad_after: int, kernel: int, stride: int,
                     dilation: int) -> int:
    """Output extent: ``(size + before + after - dilation*(kernel-1) - 1) // stride + 1``."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(x) for x in v)
    if len(t) != 2:
        raise ValueError(f"conv attribute {name!r} must be an int or a pair, got {v!r}")
    return t


def normalize_attrs(attrs: dict) -> dict:
    """Canonical conv attributes with defaults (kernel/stride/dilation pairs, 4 pads)."""
    a = dict(attrs)
    out = {
        "out_channels": int(a["out_channels"]),
        "kernel": _pair(a["kernel"], "kernel"),
        "stride": _pair(a.get("stride", 1), "stride"),
        "dilation": _pair(a.get("dilation", 1), "dilation"),
        "groups": int(a.get("groups", 1)),
        "bias": bool(a.get("bias", False)),
        "activation": a.get("activation"),
    }
    pads = a.get("pads", 0)
    if isinstance(pads, (int, np.integer)):
        pads = (int(pads),) * 4
    pads = tuple(int(p) for p in pads)
    if len(pads) == 2:  # (vertical, horizontal)
        pads = (pads[0], pads[1], pads[0], pads[1])
    if len(pads) != 4:
        raise ValueError(f"conv pads must be (top, left, bottom, right), got {a.get('pads')!r}")
    out["pads"] = pads
    if out["activation"] not in (None, "relu"):
        raise ValueError(f"unsupported conv activation {out['activation']!r}")
    return out


@dataclass(frozen=True)
class ConvGeometry:
    """Every size a convolution kernel needs (batch excluded), validated."""

    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    dh: int
    dw: int
    groups: int
    bias: bool
    activation: str | None

    @classmethod
    def from_attrs(cls, attrs: dict, in_shape: tuple[int, int, int]) -> ConvGeometry:
        a = normalize_attrs(attrs)
        C, H, W = (int(d) for d in in_shape)
        g = cls(C, H, W, a["out_channels"], *a["kernel"], *a["stride"], *a["pads"],
                *a["dilation"], a["groups"], a["bias"], a["activation"])
        g.validate()
        return g

    def validate(self) -> None:
        if min(self.C, self.H, self.W, self.K, self.R, self.S) < 1:
            raise ValueError(f"conv sizes must be positive: {self}")
        if min(self.sh, self.sw, self.dh, self.dw, self.groups) < 1:
            raise ValueError(f"conv stride, dilation and groups must be >= 1: {self}")
        if min(self.pt, self.pl, self.pb, self.pr) < 0:
            raise ValueError(f"conv pads must be >= 0: {self}")
        if self.C % self.groups or self.K % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels={self.C} and "
                             f"out_channels={self.K}")
        if self.P < 1 or self.Q < 1:
            raise ValueError(f"conv output would be empty ({self.P}x{self.Q}): {self}")

    @property
    def P(self) -> int:
        return conv_output_size(self.H, self.pt, self.pb, self.R, self.sh, self.dh)

    @property
    def Q(self) -> int:
        return conv_output_size(self.W, self.pl, self.pr, self.S, self.sw, self.dw)

    @property
    def Cg(self) -> int:
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        return self.K // self.groups

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.C == self.K

    @property
    def Hp(self) -> int:
        # Only rows the kernel reads: (P-1)*sh + (R-1)*dh + 1 <= H + pt + pb.
        return (self.P - 1) * self.sh + (self.R - 1) * self.dh + 1

    @property
    def Wp(self) -> int:
        return (self.Q - 1) * self.sw + (self.S - 1) * self.dw + 1

    # Blocking of the direct kernel -----------------------------------------------------------
    @property
    def CB(self) -> int:
        """Channel block: 8, or the group's channel count when smaller (3-channel stem)."""
        return 8 if self.depthwise else min(8, self.Cg)

    @property
    def Cgb(self) -> int:
        """Channel blocks per group (direct kernel)."""
        return _ceil_div(self.C, 8) if self.depthwise else _ceil_div(self.Cg, self.CB)

    @property
    def Kgb(self) -> int:
        """16-channel output blocks per group (direct kernel)."""
        return _ceil_div(self.Kg, TILE_K)

    @property
    def flops_per_image(self) -> int:
        return 2 * self.K * self.Cg * self.R * self.S * self.P * self.Q

    def describe(self) -> str:
        return (f"conv {self.C}x{self.H}x{self.W} -> {self.K}x{self.P}x{self.Q} "
                f"k{self.R}x{self.S} s{self.sh}x{self.sw} d{self.dh}x{self.dw} "
                f"pads{(self.pt, self.pl, self.pb, self.pr)} g{self.groups}"
                f"{' bias' if self.bias else ''}{' ' + self.activation if self.activation else ''}")

    def tag(self) -> str:
        """A short identifier-safe name built from numbers only."""
        return (f"c{self.C}_{self.H}x{self.W}_k{self.K}_{self.R}x{self.S}_s{self.sh}{self.sw}"
                f"_p{self.pt}{self.pl}{self.pb}{self.pr}_d{self.dh}{self.dw}_g{self.groups}")


# ----------------------------------------------------------------------------------------------
# Helpers to build IR
# ----------------------------------------------------------------------------------------------


def _unflatten(t: Expr, dims: list[tuple[str, ExprLike]]) -> list[Let]:
    """Lets that split a flattened index ``t`` over ``dims`` (outermost first, last fastest)."""
    lets = []
    stride: ExprLike = 1
    for i in range(len(dims) - 1, -1, -1):
        name, extent = dims[i]
        v = t // stride if i == 0 else (t // stride) % extent
        lets.append(Let(name, v))
        stride = stride * extent
    return lets[::-1]


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


# ----------------------------------------------------------------------------------------------
# Direct convolution
# ----------------------------------------------------------------------------------------------


#: Weight bytes per group up to which ``order="auto"`` iterates k-blocks fastest (weights stay
#: in L2 while consecutive tasks share input rows). L2 is 2 MiB per core on the target machine.
WEIGHTS_IN_L2 = 1 << 20


def _ints(*names: str) -> list[Param]:
    return [Param(n, "int") for n in names]


#: Runtime integer arguments of each compute kernel, in order (after the arrays ``x``/``col``,
#: ``w``, ``bias``, ``y``/``c``; then ``relu`` and ``n_batch``).
DIRECT_INTS = ("NB", "Cgb", "KB", "Kgb", "P", "Q", "Hp", "Wp")
DEPTHWISE_INTS = ("C8", "P", "Q", "Hp", "Wp")
GEMM_INTS = ("M", "Kd", "Nc", "G")


def _overlap_tail(Q: Expr, full: int, tile) -> list:
    """Tiles for the last ``Q % full`` pixels of a row whose length ``Q`` is a runtime value.

    Instead of one unrolled tile per possible tail width (long compiles), the tail is covered
    by a full-width tile that ends at the last pixel and overlaps pixels already written (it
    writes the same values again: same operands, same order); a row shorter than ``full`` runs
    one-pixel tiles. Only two tile bodies are generated beside the main one.
    """
    return [
        If(cmp("and", cmp(">", Var("tail"), 0), cmp(">", Var("nfull"), 0)),
           tile(full, Q - full)),
        If(cmp("==", Var("nfull"), 0), [Loop("q1", Q, tile(1, Var("q1")))]),
    ]


def _direct_tail(Q: Expr, tile) -> list:
    """The tail of a direct-convolution row (``tail = Q % 6``), with the row length a runtime
    value: a 2-pixel tile ending at the last pixel for tails of 1-2, a 4-pixel one for 3-4 (two
    for 5), overlapping pixels already written (they write the same values again: same
    operands, same order); rows of 1 or 3 pixels run one-pixel tiles. One unrolled tile per
    tail width made the kernel compile several times slower; a single 4-pixel tail tile cost
    15-20% on rows of 14 (ResNet's 14x14 layers)."""
    t = Var("tail")
    n4 = Select(cmp("==", t, 5), Const(2), Const(1))
    return [
        If(cmp("and", cmp(">", t, 0), cmp("and", cmp("<=", t, 2), cmp(">=", Q, 2))),
           tile(2, Q - 2)),
        If(cmp("and", cmp(">=", t, 3), cmp(">=", Q, 4)), [
            Let("n4", n4),
            Loop("q4", Var("n4"), tile(4, Var("q4") + (Q - 3 - Var("n4"))))]),
        If(cmp("or", cmp("==", Q, 1), cmp("==", Q, 3)), [Loop("q1", Q, tile(1, Var("q1")))]),
    ]


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


def direct_conv_kernel(g: ConvGeometry, name: str = "conv_direct", comment: str = "",
                       order: Literal["auto", "rows", "kblocks"] = "rows") -> Kernel:
    """The register-tiled NCHW8c direct convolution (not depthwise).

    Literal: the channel block ``CB``, kernel size, stride, dilation and the 6 x 16 tile
    structure (they shape the unrolled inner loops). Runtime integers (:data:`DIRECT_INTS`):
    channel-block counts, output and padded input sizes, and ``relu`` (fuse a ReLU or not); the
    bias is always added (zeros for a convolution without one). So one compiled kernel serves
    every layer with the same ``CB``, ``R x S``, stride and dilation.

    ``order`` picks the fastest dimension of the flattened parallel loop: ``"rows"`` (n, k-block,
    row), the PERF-NOTES order and the default, or ``"kblocks"`` (n, row, k-block).
    """
    if g.depthwise:
        raise ValueError("use depthwise_conv_kernel for groups == C == K")
    CB, R, S = g.CB, g.R, g.S
    NB, Cgb, KB, Kgb, P, Q, Hp, Wp = (Var(v) for v in DIRECT_INTS)
    K8 = KB * 2
    n, kb, p = Var("n"), Var("kb"), Var("p")
    t = Var("t")

    def tile(T: int, q0: ExprLike) -> list:
        l = Var("l")
        xs, ws = Var("xs"), Var("ws")
        lane: list = [Let("w0", VLoad("w", ws + l * TILE_K)),
                      Let("w1", VLoad("w", ws + l * TILE_K + 8))]
        for i in range(T):
            lane.append(Let("xb", VBroadcast("x", xs + (i * g.sw * CB) + l)))
            for h in range(2):
                acc = f"acc_{i}_{h}"
                lane.append(Let(acc, VFma(Var("xb"), Var(f"w{h}"), Var(acc))))
        inner = [Loop("cb", Cgb, [
            Let("xc", Var("xq") + Var("cb") * Var("xplane")),
            Let("wc", Var("wk") + Var("cb") * (R * S * CB * TILE_K)),
            Loop("r", Const(R), [
                Let("xr", Var("xc") + Var("r") * Var("xrstep")),
                Let("wr", Var("wc") + Var("r") * (S * CB * TILE_K)),
                Loop("s", Const(S), [
                    Let("xs", Var("xr") + Var("s") * (g.dw * CB)),
                    Let("ws", Var("wr") + Var("s") * (CB * TILE_K)),
                    Loop("l", Const(CB), lane),
                ]),
            ]),
        ])]

        def stores_for(epi: Epilogue) -> list:
            out = []
            for i in range(T):
                for h in range(2):
                    idx = Var("yrow") + (q0 + i) * 8 + h * Var("yplane")
                    val = _floored(epi.apply_vec(Var(f"acc_{i}_{h}"), kb * TILE_K + h * 8))
                    out.append(VStore("y", idx, val))
            return out

        return [Let("xq", Var("xrow") + q0 * (g.sw * CB))] + \
            _tile_stmts(T, 2, inner, _epilogue_stores(stores_for))

    gi = kb // Kgb
    if order == "auto":
        wbytes = g.Kgb * TILE_K * g.Cgb * CB * R * S * 4
        order = "kblocks" if wbytes <= WEIGHTS_IN_L2 else "rows"
    if order == "rows":
        body = _unflatten(t, [("n", Var("n_batch")), ("kb", KB), ("p", P)])
    else:
        body = _unflatten(t, [("n", Var("n_batch")), ("p", P), ("kb", KB)])
    body += [
        Let("xrow", ((n * NB + gi * Cgb) * Hp + p * g.sh) * (Wp * CB)),
        Let("wk", kb * (Cgb * (R * S * CB * TILE_K))),
        Let("yrow", ((n * K8 + kb * 2) * P + p) * (Q * 8)),
        Let("nfull", Q // TILE_Q),
        Let("tail", Q % TILE_Q),
    ]
    body += [Loop("qt", Var("nfull"), tile(TILE_Q, Var("qt") * TILE_Q)),
             Comment("tail: the last Q % 6 output pixels of the row (overlapping tiles)")]
    body += _direct_tail(Q, tile)
    # Loop-invariant strides, computed once (runtime sizes).
    pre = [_floor_let(), Let("xplane", Hp * Wp * CB), Let("xrstep", Wp * (g.dh * CB)),
           Let("yplane", P * Q * 8)]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + _ints(*DIRECT_INTS) + \
        _ints("relu", "n_batch")
    loop = Loop("t", Var("n_batch") * (KB * P), body, kind="parallel")
    return Kernel(name, params, pre + [loop], comment)


def depthwise_conv_kernel(g: ConvGeometry, name: str = "conv_depthwise",
                          comment: str = "") -> Kernel:
    """Depthwise convolution: the 8 lanes are 8 channels; a tile is 8 output pixels. Literal:
    kernel size, stride, dilation; runtime: :data:`DEPTHWISE_INTS` and ``relu``."""
    R, S = g.R, g.S
    C8, P, Q, Hp, Wp = (Var(v) for v in DEPTHWISE_INTS)
    n, cb, p = Var("n"), Var("cb"), Var("p")

    def tile(T: int, q0: ExprLike) -> list:
        xs = Var("xs")
        upd: list = [Let("wv", VLoad("w", ((cb * R + Var("r")) * S + Var("s")) * 8))]
        for i in range(T):
            acc = f"acc_{i}_0"
            upd.append(Let(acc, VFma(VLoad("x", xs + i * g.sw * 8), Var("wv"), Var(acc))))
        inner = [Loop("r", Const(R), [Loop("s", Const(S), [
            Let("xs", Var("xq") + Var("r") * Var("xrstep") + Var("s") * (g.dw * 8)),
            *upd])])]

        def stores_for(epi: Epilogue) -> list:
            return [VStore("y", Var("yrow") + (q0 + i) * 8,
                           _floored(epi.apply_vec(Var(f"acc_{i}_0"), cb * 8)))
                    for i in range(T)]

        return [Let("xq", Var("xrow") + q0 * (g.sw * 8))] + \
            _tile_stmts(T, 1, inner, _epilogue_stores(stores_for))

    body = _unflatten(Var("t"), [("n", Var("n_batch")), ("cb", C8), ("p", P)])
    body += [Let("xrow", ((n * C8 + cb) * Hp + p * g.sh) * (Wp * 8)),
             Let("yrow", ((n * C8 + cb) * P + p) * (Q * 8)),
             Let("nfull", Q // TILE_DW),
             Let("tail", Q % TILE_DW)]
    body += [Loop("qt", Var("nfull"), tile(TILE_DW, Var("qt") * TILE_DW)),
             Comment("tail: the last Q % 8 output pixels of the row (overlapping tile)")]
    body += _overlap_tail(Q, TILE_DW, tile)
    pre = [_floor_let(), Let("xrstep", Wp * (g.dh * 8))]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + _ints(*DEPTHWISE_INTS) + \
        _ints("relu", "n_batch")
    loop = Loop("t", Var("n_batch") * (C8 * P), body, kind="parallel")
    return Kernel(name, params, pre + [loop], comment)


# ----------------------------------------------------------------------------------------------
# im2col + GEMM
# ----------------------------------------------------------------------------------------------


def gemm_kernel(name: str = "gemm", comment: str = "") -> Kernel:
    """``c[b] = w[b % G] @ col[b]`` for ``b < n_batch * G``, blocked 6 x 16; every size is a
    runtime integer (:data:`GEMM_INTS`), so one compiled GEMM serves every layer.

    ``w`` is ``[G, M, Kd]`` (``M`` a multiple of 6, the weights of each group); ``col`` is
    ``[n_batch * G, Nc/16, Kd, 16]``: the ``[Kd, Nc]`` im2col matrices stored as 16-column
    panels (``Nc`` a multiple of 16); ``c`` is ``[n_batch * G, M, Nc]``. One task per
    (matrix, panel): the panel (``Kd`` x 64 bytes) stays in L1/L2 while every 6-row tile of
    ``w`` (kept in L2) passes over it. The epilogue bias is per row
    (``bias[(b % G) * M + m]``); ``relu`` fuses a ReLU.
    """
    M, Kd, Nc, G = (Var(v) for v in GEMM_INTS)
    jt_count = Var("jtn")
    b, mt, jt = Var("b"), Var("mt"), Var("jt")
    ga = b % G
    kk = Var("kk")
    upd: list = [Let("b0", VLoad("col", Var("panel") + kk * GEMM_N)),
                 Let("b1", VLoad("col", Var("panel") + kk * GEMM_N + 8))]
    for i in range(GEMM_M):
        upd.append(Let("av", VBroadcast("w", Var("arow") + i * Kd + kk)))
        for h in range(2):
            acc = f"acc_{i}_{h}"
            upd.append(Let(acc, VFma(Var("av"), Var(f"b{h}"), Var(acc))))

    def stores_for(epi: Epilogue) -> list:
        out = []
        for i in range(GEMM_M):
            for h in range(2):
                val = _floored(epi.apply_vec(Var(f"acc_{i}_{h}"), ga * M + mt * GEMM_M + i,
                                             same_channel=True))
                out.append(VStore("c", Var("crow") + i * Nc + h * 8, val))
        return out

    mt_body = [Let("arow", (ga * M + mt * GEMM_M) * Kd),
               Let("crow", (b * M + mt * GEMM_M) * Nc + jt * GEMM_N)] + \
        _tile_stmts(GEMM_M, 2, [Loop("kk", Kd, upd)], _epilogue_stores(stores_for))
    body = _unflatten(Var("t"), [("b", Var("n_batch") * G), ("jt", jt_count)])
    body += [Let("panel", (b * jt_count + jt) * (Kd * GEMM_N)),
             Loop("mt", M // GEMM_M, mt_body)]
    params = [Param("col"), Param("w"), Param("bias"), Param("c")] + _ints(*GEMM_INTS) + \
        _ints("relu", "n_batch")
    loop = Loop("t", Var("n_batch") * (G * jt_count), body, kind="parallel")
    return Kernel(name, params, [_floor_let(), Let("jtn", Nc // GEMM_N), loop], comment)


# ----------------------------------------------------------------------------------------------
# Shared layout kernels (sizes are runtime arguments)
# ----------------------------------------------------------------------------------------------


def layout_kernels() -> list[Kernel]:
    """Kernels shared by all layers; every size is a runtime integer argument.

    - ``pack_nchw_blocked(x, xp, ...)``: NCHW ``[N, C, H, W]`` -> padded, channel-blocked
      ``[N, NB, Hp, Wp, CB]`` where block ``b`` holds channels ``(b // Cgb) * Cg + (b % Cgb) *
      CB + lane`` (zero where that exceeds the group, and in the padding).
    - ``unpack_blocked_nchw(y, out, ...)``: ``[N, K8, P, Q, 8]`` -> ``[N, K, P, Q]``, channel
      ``k`` being at position ``(k // Kg) * KgPad + k % Kg`` of the blocked channel axis.
    - ``im2col(x, col, ...)``: NCHW -> ``[N, g, PQp/16, Cg*R*S, 16]``: per image and group the
      matrix ``[Cg*R*S, PQp]`` (zero beyond ``P*Q``) stored as 16-column panels, so the GEMM
      reads each panel contiguously.
    - ``crop_gemm(c, out, ...)``: ``[N, g, Kgp, PQp]`` -> ``[N, K, P*Q]`` (the GEMM already
      applied the epilogue).
    """
    N, C, H, W = Var("N"), Var("C"), Var("H"), Var("W")
    Hp, Wp, pt, pl = Var("Hp"), Var("Wp"), Var("pt"), Var("pl")
    NB, CB, Cg, Cgb = Var("NB"), Var("CB"), Var("Cg"), Var("Cgb")
    n, b, hp, wp, l = Var("n"), Var("b"), Var("hp"), Var("wp"), Var("l")

    # ---- pack: NCHW -> padded NCHWc. Per padded row and lane: zeros left of the image, a
    # contiguous read of one input row, zeros right of it (no per-element bounds test).
    cin = (b % Cgb) * CB + l  # channel within the group
    src = ((n * C + (b // Cgb) * Cg + cin) * H + Var("ih")) * W - pl
    wl, wr = Var("wl"), Var("wr")
    zero_row = [Loop("wp", Wp, [Store("xp", Var("dst") + wp * CB + l, Const(0.0))])]
    pack_body = _unflatten(Var("t"), [("n", N), ("b", NB), ("hp", Hp)]) + [
        Let("ih", hp - pt),
        Let("dst", ((n * NB + b) * Hp + hp) * Wp * CB),
        # [0, wl) left padding, [wl, wr) image columns, [wr, Wp) right padding
        Let("wl", BinOp("min", pl, Wp)),
        Let("wr", BinOp("max", wl, BinOp("min", Wp, pl + W))),
        Loop("l", CB, [
            If(cmp("and", cmp("and", cmp(">=", Var("ih"), 0), cmp("<", Var("ih"), H)),
                   cmp("<", cin, Cg)),
               [Let("src", src),
                Loop("wp", wl, [Store("xp", Var("dst") + wp * CB + l, Const(0.0))]),
                Loop("wp", wr - wl, [Store("xp", Var("dst") + wp * CB + l,
                                           Load("x", Var("src") + wp))], start=wl),
                Loop("wp", Wp - wr, [Store("xp", Var("dst") + wp * CB + l, Const(0.0))],
                     start=wr)],
               zero_row),
        ]),
    ]
    pack = Kernel("pack_nchw_blocked",
                  [Param("x"), Param("xp")] + _ints("N", "C", "H", "W", "Hp", "Wp", "pt", "pl",
                                                    "NB", "CB", "Cg", "Cgb"),
                  [Loop("t", N * NB * Hp, pack_body, kind="parallel")],
                  "NCHW -> zero-padded channel-blocked NCHWc")

    # ---- unpack: NCHW8c -> NCHW
    K, P, Q, Kg, KgPad, K8 = (Var(s) for s in ("K", "P", "Q", "Kg", "KgPad", "K8"))
    k, p, q = Var("k"), Var("p"), Var("q")
    unpack_body = _unflatten(Var("t"), [("n", N), ("k", K), ("p", P)]) + [
        Let("cpos", (k // Kg) * KgPad + k % Kg),
        Let("src", ((n * K8 + Var("cpos") // 8) * P + p) * Q * 8 + Var("cpos") % 8),
        Let("dst", ((n * K + k) * P + p) * Q),
        Loop("q", Q, [Store("out", Var("dst") + q, Load("y", Var("src") + q * 8))]),
    ]
    unpack = Kernel("unpack_blocked_nchw",
                    [Param("y"), Param("out")] + _ints("N", "K", "P", "Q", "Kg", "KgPad", "K8"),
                    [Loop("t", N * K * P, unpack_body, kind="parallel")],
                    "channel-blocked NCHW8c -> NCHW")

    # ---- im2col: NCHW -> [N, g, PQp/16, Cg*R*S, 16]
    G, R, S, sh, sw, dh, dw, PQp = (Var(s) for s in ("G", "R", "S", "sh", "sw", "dh", "dw",
                                                     "PQp"))
    row, gi = Var("row"), Var("gi")
    CRS = Cg * R * S
    iw = q * sw - pl + Var("s") * dw
    im_src = ((n * C + gi * Cg + Var("c")) * H + Var("ih")) * W + iw
    ok = cmp("and", Var("rowok"), cmp("and", cmp(">=", iw, 0), cmp("<", iw, W)))
    im_body = _unflatten(Var("t"), [("n", N), ("gi", G), ("row", CRS)]) + [
        Let("c", row // (R * S)),
        Let("r", (row // S) % R),
        Let("s", row % S),
        # element (row, j) of the matrix lives in panel j // 16 at row * 16 + j % 16
        Let("dst", (n * G + gi) * CRS * PQp + row * GEMM_N),
        Loop("p", P, [
            Let("ih", p * sh - pt + Var("r") * dh),
            Let("rowok", cmp("and", cmp(">=", Var("ih"), 0), cmp("<", Var("ih"), H))),
            Loop("q", Q, [
                Let("j", p * Q + q),
                Store("col", Var("dst") + (Var("j") // GEMM_N) * (CRS * GEMM_N)
                      + Var("j") % GEMM_N, Select(ok, Load("x", im_src), Const(0.0)))]),
        ]),
        Loop("j", PQp - P * Q, [Store("col", Var("dst") + (Var("j") // GEMM_N) * (CRS * GEMM_N)
                                       + Var("j") % GEMM_N, Const(0.0))], start=P * Q),
    ]
    im2col = Kernel("im2col",
                    [Param("x"), Param("col")] + _ints("N", "C", "H", "W", "G", "Cg", "R", "S",
                                                       "P", "Q", "sh", "sw", "dh", "dw", "pt",
                                                       "pl", "PQp"),
                    [Loop("t", N * G * CRS, im_body, kind="parallel")],
                    "im2col: NCHW -> per image and group [Cg*R*S, P*Q padded to 16], "
                    "in 16-column panels")

    # ---- crop: [N, g, Kgp, PQp] -> [N, K, PQ]
    PQ, Kgp = Var("PQ"), Var("Kgp")
    j = Var("j")
    crop_body = _unflatten(Var("t"), [("n", N), ("k", K)]) + [
        Let("src", ((n * (K // Kg) + k // Kg) * Kgp + k % Kg) * PQp),
        Let("dst", (n * K + k) * PQ),
        Loop("j", PQ, [Store("out", Var("dst") + j, Load("c", Var("src") + j))]),
    ]
    crop = Kernel("crop_gemm", [Param("c"), Param("out")] + _ints("N", "K", "Kg", "Kgp", "PQ",
                                                                  "PQp"),
                  [Loop("t", N * K, crop_body, kind="parallel")],
                  "GEMM output [N, g, Kg padded, PQ padded] -> NCHW")
    return [pack, unpack, im2col, crop]


_LAYOUT_MODULE = None


def _layout_module():
    """The compiled shared layout kernels (one cached module for the whole process)."""
    global _LAYOUT_MODULE
    if _LAYOUT_MODULE is None:
        src = print_module(layout_kernels(), header="shared layout kernels", fastmath=False)
        _LAYOUT_MODULE = cache.load_module(src, "layout")
    return _LAYOUT_MODULE


# ----------------------------------------------------------------------------------------------
# Python-level API
# ----------------------------------------------------------------------------------------------


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class ConvKernel:
    """A compiled convolution: ``kernel(x, w, b) -> y`` on NCHW float32 arrays.

    The pieces are also exposed for a runtime that keeps activations in the blocked layout
    (``pack_input`` / ``pack_weights`` / ``run`` / ``unpack_output``), and the generated source
    (``source``) and its file (``path``) for ``--emit`` and debugging.
    """

    def __init__(self, geometry: ConvGeometry, lowering: str, module, source: str,
                 kernel_name: str, comment: str = "") -> None:
        self.geometry = geometry
        self.lowering = lowering
        self.module = module
        self.source = source
        self.comment = comment  # the layer this instance is for (the module is shared)
        self.path = getattr(module, "__file__", None)
        self.kernel = getattr(module, kernel_name)
        self.layout = _layout_module()
        self.int_args = kernel_int_args(geometry, lowering)
        self.relu = int(geometry.activation == "relu")
        self._zero_bias: np.ndarray | None = None

    # -- shapes ------------------------------------------------------------------------------
    @property
    def out_shape_per_image(self) -> tuple[int, int, int]:
        g = self.geometry
        return (g.K, g.P, g.Q)

    def _check(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> None:
        g = self.geometry
        if x.ndim != 4 or tuple(x.shape[1:]) != (g.C, g.H, g.W):
            raise ValueError(f"conv input must be [N, {g.C}, {g.H}, {g.W}], got {x.shape}")
        if tuple(w.shape) != (g.K, g.Cg, g.R, g.S):
            raise ValueError(f"conv weight must be {(g.K, g.Cg, g.R, g.S)}, got {w.shape}")
        if g.bias and (b is None or tuple(b.shape) != (g.K,)):
            raise ValueError(f"conv bias must be [{g.K}], got "
                             f"{None if b is None else b.shape}")
        if not g.bias and b is not None:
            raise ValueError("this conv was compiled without bias, but a bias was given")

    # -- packing -----------------------------------------------------------------------------
    def pack_weights(self, w: np.ndarray, b: np.ndarray | None = None):
        """Weights (and bias) in the kernel's layout, flat float32: ``(wp, bp or None)``."""
        g = self.geometry
        w = np.asarray(w, dtype=np.float32)
        G, Kg, Cg, R, S = g.groups, g.Kg, g.Cg, g.R, g.S
        if self.lowering == "im2col":
            Kgp = _ceil_div(Kg, GEMM_M) * GEMM_M
            wp = np.zeros((G, Kgp, Cg * R * S), np.float32)
            wp[:, :Kg] = w.reshape(G, Kg, Cg * R * S)
            bp = None
            if b is not None:
                bp = np.zeros((G, Kgp), np.float32)
                bp[:, :Kg] = np.asarray(b, np.float32).reshape(G, Kg)
            return wp.ravel(), (None if bp is None else bp.ravel())
        if g.depthwise:
            C8 = _ceil_div(g.C, 8)
            wp = np.zeros((C8 * 8, R, S), np.float32)
            wp[: g.C] = w[:, 0]
            wp = wp.reshape(C8, 8, R, S).transpose(0, 2, 3, 1)
            bp = None
            if b is not None:
                bp = np.zeros(C8 * 8, np.float32)
                bp[: g.C] = b
            return _f32(wp).ravel(), bp
        CB, Cgb, Kgb = g.CB, g.Cgb, g.Kgb
        wpad = np.zeros((G, Kgb * TILE_K, Cgb * CB, R, S), np.float32)
        wpad[:, :Kg, :Cg] = w.reshape(G, Kg, Cg, R, S)
        # [G, Kgb, 16, Cgb, CB, R, S] -> [G, Kgb, Cgb, R, S, CB, 16]
        wp = wpad.reshape(G, Kgb, TILE_K, Cgb, CB, R, S).transpose(0, 1, 3, 5, 6, 4, 2)
        bp = None
        if b is not None:
            bp = np.zeros((G, Kgb * TILE_K), np.float32)
            bp[:, :Kg] = np.asarray(b, np.float32).reshape(G, Kg)
            bp = bp.ravel()
        return _f32(wp).ravel(), bp

    def in_blocked_size(self, N: int) -> int:
        """Floats of the packed input of ``N`` images (im2col: the col matrices)."""
        g = self.geometry
        if self.lowering == "im2col":
            return N * g.groups * g.Cg * g.R * g.S * _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        if g.depthwise:
            return N * _ceil_div(g.C, 8) * g.Hp * g.Wp * 8
        return N * g.groups * g.Cgb * g.Hp * g.Wp * g.CB

    def pack_input(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """NCHW input -> the kernel's input layout (flat). For im2col: the col matrices.

        ``out``, if given, is a flat float32 buffer of at least ``in_blocked_size(N)``.
        """
        g = self.geometry
        x = _f32(x)
        N = x.shape[0]
        size = self.in_blocked_size(N)
        xp = np.empty(size, np.float32) if out is None else out[:size]
        if self.lowering == "im2col":
            PQp = _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
            self.layout.im2col(x.ravel(), xp, N, g.C, g.H, g.W, g.groups, g.Cg, g.R, g.S,
                               g.P, g.Q, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, PQp)
            return xp
        if g.depthwise:
            NB, CB, Cg, Cgb = _ceil_div(g.C, 8), 8, g.C, _ceil_div(g.C, 8)
        else:
            NB, CB, Cg, Cgb = g.groups * g.Cgb, g.CB, g.Cg, g.Cgb
        self.layout.pack_nchw_blocked(x.ravel(), xp, N, g.C, g.H, g.W, g.Hp, g.Wp, g.pt, g.pl,
                                      NB, CB, Cg, Cgb)
        return xp

    def out_blocked_size(self, N: int) -> int:
        """Floats of the packed output of ``N`` images."""
        g = self.geometry
        if self.lowering == "im2col":
            Kgp = _ceil_div(g.Kg, GEMM_M) * GEMM_M
            return N * g.groups * Kgp * _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        k8 = _ceil_div(g.C, 8) if g.depthwise else 2 * g.groups * g.Kgb
        return N * k8 * g.P * g.Q * 8

    _out_blocked_size = out_blocked_size  # former name, kept for callers

    def run(self, xp: np.ndarray, wp: np.ndarray, bp: np.ndarray | None, N: int,
            out: np.ndarray | None = None) -> np.ndarray:
        """Run the compute kernel on packed operands; returns the packed (flat) output."""
        if out is None:
            out = np.empty(self.out_blocked_size(N), np.float32)
        if bp is None:  # the kernel always adds a bias (shared with biased layers)
            if self._zero_bias is None:
                self._zero_bias = np.zeros(self.bias_size(), np.float32)
            bp = self._zero_bias
        self.kernel(xp, wp, bp, out, *self.int_args, self.relu, int(N))
        return out

    def bias_size(self) -> int:
        """Floats of the packed bias."""
        g = self.geometry
        if self.lowering == "im2col":
            return g.groups * _ceil_div(g.Kg, GEMM_M) * GEMM_M
        if g.depthwise:
            return _ceil_div(g.C, 8) * 8
        return g.groups * g.Kgb * TILE_K

    def signature(self) -> tuple[str, ...]:
        """Argument kinds of the compute kernel (``array`` or ``int``), for ahead-of-time
        compilation (``warm.py``)."""
        return ("array",) * 4 + ("int",) * (len(self.int_args) + 2)

    def unpack_output(self, yp: np.ndarray, N: int, out: np.ndarray | None = None) -> np.ndarray:
        """Packed output -> NCHW ``[N, K, P, Q]`` (into ``out`` if given: C-contiguous)."""
        g = self.geometry
        if out is None:
            out = np.empty((N, g.K, g.P, g.Q), np.float32)
        if self.lowering == "im2col":
            Kgp = _ceil_div(g.Kg, GEMM_M) * GEMM_M
            PQp = _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
            self.layout.crop_gemm(yp, out.reshape(-1), N, g.K, g.Kg, Kgp, g.P * g.Q, PQp)
        elif g.depthwise:
            C8 = _ceil_div(g.C, 8)
            self.layout.unpack_blocked_nchw(yp, out.reshape(-1), N, g.K, g.P, g.Q, g.K, C8 * 8,
                                            C8)
        else:
            self.layout.unpack_blocked_nchw(yp, out.reshape(-1), N, g.K, g.P, g.Q, g.Kg,
                                            g.Kgb * TILE_K, 2 * g.groups * g.Kgb)
        return out

    def inspect_asm(self) -> str:
        """Machine code of the compute kernel.

        Numba cannot show the assembly of code loaded from its disk cache, so the kernel's
        Python function is compiled once more here, without the cache, with the same options.
        """
        import numba
        from numba import types

        opts = dict(self.kernel.targetoptions)
        opts.pop("cache", None)
        opts.pop("nopython", None)
        # the tile code lives in the serial task function (see print_tasked)
        task = getattr(self.module, self.kernel.py_func.__name__ + "_task", None)
        py_func = task.py_func if task is not None else self.kernel.py_func
        opts = dict(task.targetoptions) if task is not None else opts
        opts.pop("cache", None)
        opts.pop("nopython", None)
        fresh = numba.njit(**opts)(py_func)
        kinds = self.signature() + (("int",) if task is not None else ())
        sig = tuple(types.int64 if k == "int" else types.float32[::1] for k in kinds)
        fresh.compile(sig)
        return fresh.inspect_asm(sig)

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x)
        w = np.asarray(w)
        b = None if b is None else np.asarray(b)
        self._check(x, w, b)
        N = x.shape[0]
        wp, bp = self.pack_weights(w, b)
        return self.unpack_output(self.run(self.pack_input(x), wp, bp, N), N)


def kernel_int_args(g: ConvGeometry, lowering: str) -> tuple[int, ...]:
    """The runtime size arguments of the compute kernel of ``g`` (see ``*_INTS``)."""
    if lowering == "im2col":
        Kgp = _ceil_div(g.Kg, GEMM_M) * GEMM_M
        PQp = _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        return (Kgp, g.Cg * g.R * g.S, PQp, g.groups)
    if g.depthwise:
        return (_ceil_div(g.C, 8), g.P, g.Q, g.Hp, g.Wp)
    return (g.groups * g.Cgb, g.Cgb, g.groups * g.Kgb, g.Kgb, g.P, g.Q, g.Hp, g.Wp)


def build_conv_kernels(g: ConvGeometry, lowering: str) -> tuple[Kernel, str, str]:
    """The compute kernel of a convolution (kernel IR), its function name and a cache tag.

    The kernel depends only on what stays literal (lowering, channel block, kernel size,
    stride, dilation), so layers and models that share those share one compiled kernel.
    """
    rs = f"{g.R}x{g.S}_s{g.sh}x{g.sw}_d{g.dh}x{g.dw}"
    if lowering == "direct":
        if g.depthwise:
            note = f"depthwise convolution, kernel {g.R}x{g.S}, stride {g.sh}x{g.sw}, " \
                   f"dilation {g.dh}x{g.dw}; sizes are runtime arguments"
            return depthwise_conv_kernel(g, comment=note), "conv_depthwise", f"depthwise_{rs}"
        note = f"direct NCHW{g.CB}c convolution, kernel {g.R}x{g.S}, stride {g.sh}x{g.sw}, " \
               f"dilation {g.dh}x{g.dw}; sizes are runtime arguments"
        return direct_conv_kernel(g, comment=note), "conv_direct", f"direct_cb{g.CB}_{rs}"
    if lowering == "im2col":
        note = "im2col GEMM, 6 x 16 register tile; sizes are runtime arguments"
        return gemm_kernel(comment=note), "gemm", "gemm"
    raise ValueError(f"unknown conv lowering {lowering!r} (expected 'direct' or 'im2col')")


def print_tasked(kernel: Kernel, header: str) -> str:
    """Module source for a compute kernel whose body is one flattened ``prange`` loop, split in
    two functions: ``<name>_task`` (serial: the loop body for one task ``t``) and ``<name>``,
    a parallel loop calling it.

    Numba's parallel passes grow much faster than linearly with the size of a ``prange`` body;
    with the runtime-sized tails the unrolled tiles made a single-function kernel compile 4-5x
    slower. Outlined, the task compiles as an ordinary function (the call per output row costs
    nothing measurable).
    """
    *pre, loop = kernel.body
    assert isinstance(loop, Loop) and loop.kind == "parallel", kernel.name
    task = Kernel(f"{kernel.name}_task", kernel.params + [Param(loop.var, "int")],
                  pre + loop.body, kernel.comment)
    src = print_module([task], header=header, parallel=False, fastmath=False)
    names = [p.name for p in kernel.params]
    args = ", ".join(names)
    extent = print_expr(loop.extent)
    used = {st.var for st in pre
            if isinstance(st, Let) and re.search(rf"\b{st.var}\b", extent)}
    return src + "\n".join([
        "",
        "",
        "@njit(parallel=True, fastmath=False, cache=True, nogil=True)",
        f"def {kernel.name}({args}):",
        *(f"    {st.var} = {print_expr(st.value)}" for st in pre
          if isinstance(st, Let) and st.var in used),
        f"    for {loop.var} in prange({print_expr(loop.extent)}):",
        f"        {task.name}({args}, {loop.var})",
        "",
    ])


def compile_conv(attrs: dict, in_shape: tuple[int, int, int],
                 lowering: Literal["direct", "im2col"] = "direct", *, comment: str = "",
                 parallel: bool = True) -> ConvKernel:
    """Generate, cache and load the kernels of one convolution.

    ``attrs`` are the canonical conv attributes (``out_channels``, ``kernel``, ``stride``,
    ``pads`` = (top, left, bottom, right), ``dilation``, ``groups``, ``bias``, ``activation``);
    ``in_shape`` is ``(C, H, W)`` (the batch size is chosen at call time). ``comment`` is
    free text (e.g. ``"model.cnn:12 conv1"``); it is sanitized and kept as
    ``ConvKernel.comment`` (the module is shared by every layer of the same kind, so it holds
    no layer text). Kernels compile on first call (or load from the disk cache).
    """
    g = ConvGeometry.from_attrs(attrs, in_shape)
    kernel, name, tag = build_conv_kernels(g, lowering)
    if parallel:
        src = print_tasked(kernel, "convolution kernel")
    else:
        src = print_module([kernel], header="convolution kernel", parallel=False,
                           fastmath=False)
    mod = cache.load_module(src, tag)
    note = sanitize_comment(f"{comment + ': ' if comment else ''}{g.describe()}")
    return ConvKernel(g, lowering, mod, src, name, note)


def gflops(g: ConvGeometry, N: int, seconds: float) -> float:
    """GFLOP/s of one convolution of batch ``N`` that took ``seconds``."""
    return g.flops_per_image * N / seconds / 1e9 if seconds > 0 else math.inf
