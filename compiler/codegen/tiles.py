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
