"""RoI pooling kernels (``compiler/ops/roi.py`` holds the semantics): max pooling over each
region's bins (Fast R-CNN, ONNX's MaxRoiPool) and RoI Align's averages of bilinear samples
(ONNX's RoiAlign), and their input gradients.

One parallel task per (image, channel) plane: it walks every region and bin of that plane, so a
gradient task adds into its own plane of ``dx`` only (regions overlap: no two tasks write the
same cell). ``x0`` is the C x H x W map, ``x1`` the regions [R, 4] (x1, y1, x2, y2 in image
pixels), ``x2`` (gradients) the output gradient [R, C, PH, PW]. Bin edges of max pooling are
computed in float32 as ONNX Runtime (and Caffe) compute them, so the windows agree at exact
boundaries; RoI Align's sample positions, weights and sums in float64, rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .common import Sizes, fmax, fmin, rows_kernel, unflatten
from .kernel_ir import (
    F64,
    Const,
    Expr,
    ExprLike,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Select,
    Stmt,
    Store,
    Var,
    call,
    cmp,
    const,
    div,
)


def _round(v: Expr) -> Expr:
    """C's round (half away from zero) of a float, as an integer."""
    return Select(cmp(">=", v, F64(0.0)), call("floor", v + F64(0.5)),
                  Const(0) - call("floor", F64(0.5) - v))


def _ceil(v: Expr) -> Expr:
    return Const(0) - call("floor", Const(0) - v)


def _clip(v: Expr, hi: ExprLike) -> Expr:
    return fmin(fmax(v, 0), hi)


def _plane(C: ExprLike, R: ExprLike) -> list[Stmt]:
    """The task's image ``n`` and channel ``c``, and where its regions begin."""
    return unflatten(Var("t"), [("n", Var("n_batch")), ("c", C)]) + [
        Let("rb0", Var("n") * (R * 4))]


def _max_bins(R: ExprLike, C: ExprLike, PH: ExprLike, PW: ExprLike, H: ExprLike, W: ExprLike,
              scale: float, per_bin: list[Stmt]) -> list[Stmt]:
    """Loops over regions and bins with the bin's window [hs, he) x [ws, we) (clipped) and
    ``ob``, its output index, then ``per_bin``."""
    corner = [Let(v, _round(call("f32", Load("x1", Var("rb") + k)) * Const(scale)))
              for k, v in enumerate(("rx1", "ry1", "rx2", "ry2"))]
    region = [Let("rb", Var("rb0") + Var("r") * 4), *corner,
              Let("bh", div(call("f32", fmax(Var("ry2") - Var("ry1") + 1, 1)), call("f32", PH))),
              Let("bw", div(call("f32", fmax(Var("rx2") - Var("rx1") + 1, 1)), call("f32", PW)))]
    row = [Let("hs", _clip(call("floor", call("f32", Var("i")) * Var("bh")) + Var("ry1"), H)),
           Let("he", _clip(_ceil(call("f32", Var("i") + 1) * Var("bh")) + Var("ry1"), H))]
    col = [Let("ws", _clip(call("floor", call("f32", Var("j")) * Var("bw")) + Var("rx1"), W)),
           Let("we", _clip(_ceil(call("f32", Var("j") + 1) * Var("bw")) + Var("rx1"), W)),
           Let("ob", (((Var("n") * R + Var("r")) * C + Var("c")) * PH + Var("i")) * PW +
               Var("j")),
           *per_bin]
    return [Loop("r", const(R), region + [Loop("i", const(PH), row + [
        Loop("j", const(PW), col)])])]


def _argmax(W: ExprLike) -> list[Stmt]:
    """``best``: the window's first largest cell (row-major), ``acc`` its value."""
    x = Load("x0", Var("xb") + Var("h") * W + Var("w"))
    return [Let("best", Var("xb") + Var("hs") * W + Var("ws")), Let("acc", Load("x0", Var("best"))),
            Loop("h", Var("he") - Var("hs"), [Loop("w", Var("we") - Var("ws"), [
                If(cmp(">", x, Var("acc")), [Let("acc", x),
                                             Let("best", Var("xb") + Var("h") * W + Var("w"))])
            ], start=Var("ws"))], start=Var("hs"))]


def _filled() -> Expr:
    """Whether the bin's window holds a cell of the map."""
    return cmp("and", cmp(">", Var("he"), Var("hs")), cmp(">", Var("we"), Var("ws")))


def _sizes(sz: Sizes, shape: Sequence[int], regions: int, out: tuple[int, int]):
    C, H, W = (sz(n, d) for n, d in zip("CHW", shape))
    return C, H, W, sz("R", regions), sz("PH", out[0]), sz("PW", out[1])


def roi_maxpool_kernel(name: str, shape: Sequence[int], regions: int, attrs: dict[str, Any],
                       comment: str = "", sz: Sizes | None = None) -> Kernel:
    """The largest value of each bin of each region (0 for a bin outside the map)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W, R, PH, PW = _sizes(sz, shape, regions, attrs["output"])
    body = _plane(C, R) + [Let("xb", Var("t") * (H * W))]
    body += _max_bins(R, C, PH, PW, H, W, attrs["spatial_scale"], [
        If(_filled(), _argmax(W) + [Store("y", Var("ob"), Var("acc"))],
           [Store("y", Var("ob"), Const(0.0))])])
    return rows_kernel(name, [Param("x0"), Param("x1"), Param("y")], C, body, comment, sz)


def _zero_plane(H: ExprLike, W: ExprLike) -> list[Stmt]:
    return [Let("xb", Var("t") * (H * W)),
            Loop("k", H * W, [Store("y", Var("xb") + Var("k"), Const(0.0))])]


def _add(index: Expr, value: Expr) -> Store:
    return Store("y", index, Load("y", index) + value)


def roi_maxpool_grad_kernel(name: str, shape: Sequence[int], regions: int,
                            attrs: dict[str, Any], comment: str = "",
                            sz: Sizes | None = None) -> Kernel:
    """Each bin's gradient added to the bin's first largest cell."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W, R, PH, PW = _sizes(sz, shape, regions, attrs["output"])
    body = _plane(C, R) + _zero_plane(H, W)
    body += _max_bins(R, C, PH, PW, H, W, attrs["spatial_scale"], [
        If(_filled(), _argmax(W) + [
            _add(Var("best"), Load("x2", Var("ob")))])])
    return rows_kernel(name, [Param("x0"), Param("x1"), Param("x2"), Param("y")], C, body,
                       comment, sz)


def _align_samples(R: ExprLike, C: ExprLike, PH: ExprLike, PW: ExprLike, H: ExprLike,
                   W: ExprLike, attrs: dict[str, Any], per_sample: list[Stmt],
                   before: list[Stmt], after: list[Stmt]) -> list[Stmt]:
    """Loops over regions, bins and their sampling grids: ``before`` and ``after`` each bin,
    ``per_sample`` at each sample inside the map, with its four cells (``c00`` ... ``c11``,
    flat indices) and bilinear weights (``w00`` ... ``w11``), and ``count``."""
    offset = 0.5 if attrs["coordinates"] == "half_pixel" else 0.0
    scale, ratio = attrs["spatial_scale"], attrs["sampling_ratio"]
    edge = [Let(v, call("f64", Load("x1", Var("rb") + k)) * F64(scale) - F64(offset))
            for k, v in enumerate(("sx", "sy", "ex", "ey"))]
    size_h: Expr = Var("ey") - Var("sy")
    size_w: Expr = Var("ex") - Var("sx")
    if attrs["coordinates"] != "half_pixel":  # legacy: at least one pixel
        size_h, size_w = fmax(size_h, F64(1.0)), fmax(size_w, F64(1.0))
    region = [Let("rb", Var("rb0") + Var("r") * 4), *edge, Let("rh", size_h), Let("rw", size_w),
              Let("bh", div(Var("rh"), call("f64", PH))), Let("bw", div(Var("rw"),
                                                                      call("f64", PW)))]
    if ratio > 0:
        region += [Let("gh", Const(ratio)), Let("gw", Const(ratio))]
    else:  # adaptive: ceil(region / bins) samples per bin and axis
        region += [Let("gh", call("int", _ceil(div(Var("rh"), call("f64", PH))))),
                   Let("gw", call("int", _ceil(div(Var("rw"), call("f64", PW)))))]
    region.append(Let("count", call("f64", fmax(Var("gh") * Var("gw"), 1))))
    y = Var("sy") + call("f64", Var("i")) * Var("bh") + \
        div((call("f64", Var("iy")) + F64(0.5)) * Var("bh"), call("f64", Var("gh")))
    x = Var("sx") + call("f64", Var("j")) * Var("bw") + \
        div((call("f64", Var("ix")) + F64(0.5)) * Var("bw"), call("f64", Var("gw")))
    inside = cmp("and", cmp("and", cmp(">=", Var("py"), F64(-1.0)),
                            cmp("<=", Var("py"), call("f64", H))),
                 cmp("and", cmp(">=", Var("px"), F64(-1.0)),
                     cmp("<=", Var("px"), call("f64", W))))
    sample: list[Stmt] = [Let("py", y), Let("px", x), If(inside, [
        *_axis("py", H), *_axis("px", W),
        Let("c00", Var("xb") + Var("pylo") * W + Var("pxlo")),
        Let("c01", Var("xb") + Var("pylo") * W + Var("pxhi")),
        Let("c10", Var("xb") + Var("pyhi") * W + Var("pxlo")),
        Let("c11", Var("xb") + Var("pyhi") * W + Var("pxhi")),
        Let("w00", (F64(1.0) - Var("lpy")) * (F64(1.0) - Var("lpx"))),
        Let("w01", (F64(1.0) - Var("lpy")) * Var("lpx")),
        Let("w10", Var("lpy") * (F64(1.0) - Var("lpx"))),
        Let("w11", Var("lpy") * Var("lpx")),
        *per_sample])]
    grid = Loop("iy", Var("gh"), [Loop("ix", Var("gw"), sample)])
    return [Loop("r", const(R), region + [Loop("i", const(PH), [Loop("j", const(PW), [
        Let("ob", (((Var("n") * R + Var("r")) * C + Var("c")) * PH + Var("i")) * PW + Var("j")),
        *before, grid, *after])])])]


def _axis(v: str, size: ExprLike) -> list[Stmt]:
    """A sample coordinate clamped at 0, its cell below (``<v>lo``) and above (``<v>hi``),
    both the last cell past it, and its fraction ``l<v>`` towards the upper cell."""
    lo0, last = f"{v}0", const(size) - 1
    top = cmp(">=", Var(lo0), last)
    return [Let(f"{v}c", fmax(Var(v), F64(0.0))), Let(lo0, call("int", Var(f"{v}c"))),
            Let(f"{v}lo", Select(top, last, Var(lo0))),
            Let(f"{v}hi", Select(top, last, Var(lo0) + 1)),
            Let(f"l{v}", Select(top, F64(0.0), Var(f"{v}c") - call("f64", Var(lo0))))]


def roi_align_kernel(name: str, shape: Sequence[int], regions: int, attrs: dict[str, Any],
                     comment: str = "", sz: Sizes | None = None) -> Kernel:
    """Each bin: the mean of its grid of bilinear samples (outside the map: 0)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W, R, PH, PW = _sizes(sz, shape, regions, attrs["output"])
    body = _plane(C, R) + [Let("xb", Var("t") * (H * W))]
    weighted = [Var(f"w{k}") * call("f64", Load("x0", Var(f"c{k}")))
                for k in ("00", "01", "10", "11")]
    body += _align_samples(R, C, PH, PW, H, W, attrs, [
        Let("acc", Var("acc") + weighted[0] + weighted[1] + weighted[2] + weighted[3])],
        [Let("acc", F64(0.0))], [Store("y", Var("ob"), div(Var("acc"), Var("count")))])
    return rows_kernel(name, [Param("x0"), Param("x1"), Param("y")], C, body, comment, sz)


def roi_align_grad_kernel(name: str, shape: Sequence[int], regions: int,
                          attrs: dict[str, Any], comment: str = "",
                          sz: Sizes | None = None) -> Kernel:
    """Each bin's gradient over its sample count, spread over each sample's four cells by
    their bilinear weights."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W, R, PH, PW = _sizes(sz, shape, regions, attrs["output"])
    body = _plane(C, R) + _zero_plane(H, W)
    body += _align_samples(R, C, PH, PW, H, W, attrs, [
        _add(Var(f"c{k}"), Var("g") * Var(f"w{k}")) for k in ("00", "01", "10", "11")],
        [Let("g", div(call("f64", Load("x2", Var("ob"))), Var("count")))], [])
    return rows_kernel(name, [Param("x0"), Param("x1"), Param("x2"), Param("y")], C, body,
                       comment, sz)
