"""Kernel IR builders for window ops: max/min/avg/Lp pooling, global pooling, upsampling.

One parallel iteration per (image, channel, output row); window, stride, padding and dilation
are literals. Window taps outside the input are skipped (max/min/Lp) or counted in the divisor
as the op says (avg: ``count_include_pad`` counts the declared padding, never the cells
``ceil_mode`` adds past it), exactly as the float64 references in ``compiler/ops/``. Where a
window can see only padding (``may_miss_input``), max/min pooling give the lowest/highest
float32 there and average pooling without counted cells gives 0, as the references define it;
otherwise the kernels skip that bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import N_BATCH, Sizes, as_f64, fmax, fmin, rows_kernel, unflatten
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
    VBin,
    VHalf,
    VLoad,
    VSplat,
    VStore,
    VZero,
    call,
    cmp,
    const,
    div,
)
from .tiles import BLOCKED_INTS, StorageIndex


def _in_range(v: Expr, lo: ExprLike, hi: ExprLike) -> Expr:
    return cmp("and", cmp(">=", v, lo), cmp("<", v, hi))


def may_miss_input(attrs: dict[str, Any]) -> bool:
    """Whether some window could see only padding. Not when undilated with every pad smaller
    than the window: the first window then reaches the input, and every window starts before
    its far edge (ceil mode drops a window starting in the trailing padding)."""
    (R, S), (pt, pl, pb, pr) = attrs["kernel"], attrs["pads"]
    if tuple(attrs.get("dilation", (1, 1))) != (1, 1):
        return True
    return max(pt, pb) >= R or max(pl, pr) >= S


def average_divisor(attrs: dict[str, Any], H: ExprLike, W: ExprLike) -> list[Stmt]:
    """Lets computing ``cnt``, the divisor of the average pooling window at ``h0, w0``: its
    taps on input cells and, with ``count_include_pad``, on the declared padding (never the
    cells ceil mode adds). Without ``may_miss_input`` the window clipped to the counted region
    is a rectangle: rows x columns; else the taps are counted (and ``cnt`` may be 0)."""
    (R, S), (pt, pl, pb, pr) = attrs["kernel"], attrs["pads"]
    dh, dw = attrs.get("dilation", (1, 1))
    lo_h, hi_h = (-pt, H + pb) if attrs["count_include_pad"] else (0, H)
    lo_w, hi_w = (-pl, W + pr) if attrs["count_include_pad"] else (0, W)
    if not may_miss_input(attrs):
        return [Let("rows", fmin(Var("h0") + R, hi_h) - fmax(Var("h0"), lo_h)),
                Let("cols", fmin(Var("w0") + S, hi_w) - fmax(Var("w0"), lo_w)),
                Let("cnt", Var("rows") * Var("cols"))]
    return _count_taps("rows", "r", Var("h0"), R, dh, lo_h, hi_h) + \
        _count_taps("cols", "s", Var("w0"), S, dw, lo_w, hi_w) + \
        [Let("cnt", Var("rows") * Var("cols"))]


def lp_term(x: Expr, p: float) -> Expr:
    """One tap's ``|x|^p`` of Lp pooling (``x * x`` for p = 2)."""
    return x * x if p == 2.0 else call("pow", call("abs", x), Const(p))


def lp_root(acc: Expr, p: float) -> Expr:
    """Lp pooling's ``acc^(1/p)`` of its window's sum (``sqrt`` for p = 2)."""
    return call("sqrt", acc) if p == 2.0 else call("pow", acc, Const(1.0 / p))


def picks_rows(op: str, thread_scratch: bool) -> bool:
    """Whether :func:`pool_grad_kernel` picks each output row's window taps into a row of
    per-thread scratch first: max and min pooling, where the target has per-thread scratch
    (the CPU's; a GPU kernel picks and adds window by window)."""
    return op in ("maxpool", "minpool") and thread_scratch


def pool_grad_arrays(op: str, thread_scratch: bool = True) -> list[str]:
    """The array parameters of :func:`pool_grad_kernel` for the gradient of ``op``: x, dy,
    dx, and where it picks rows (:func:`picks_rows`) ``work``, one output row's window picks
    per thread (:func:`pool_grad_scratch`)."""
    return ["x0", "x1", "y"] + (["work"] if picks_rows(op, thread_scratch) else [])


def pool_grad_scratch(op: str, out_hw: tuple[int, int], threads: int,
                      thread_scratch: bool = True) -> int:
    """Floats of :func:`pool_grad_kernel`'s ``work`` for ``threads`` threads (0: none)."""
    return threads * out_hw[1] if picks_rows(op, thread_scratch) else 0


def pool_grad_kernel(name: str, op: str, shape: Sequence[int], out_hw: tuple[int, int],
                     attrs: dict[str, Any], comment: str = "", sz: Sizes | None = None,
                     thread_scratch: bool = True, gpu: bool = False) -> Kernel:
    """The input gradient of ``maxpool``, ``minpool``, ``avgpool`` or ``lppool``
    (``pool_grad``): one parallel iteration per (image, channel) plane, which it zeroes and then
    adds each window's share of ``dy`` (``x1``) into: max (min) pooling all of it to the
    window's first largest (smallest) input cell of ``x0``, as the forward scans it; average
    pooling ``dy / cnt`` to every tap on an input cell; Lp pooling ``dy (|x| / y)^(p-1)
    sign(x)``, its window's ``y`` computed again as the forward does (nothing where y = 0).

    Max (min) pooling does each output row in two loops: the first picks every window's tap
    (``r S + s`` as a float, -1 for a window of only padding) into the running thread's row
    of ``work``, with float selects only, which LLVM vectorizes as it does the forward's
    maximum (an integer pick, of another width than the compare, it did not); the second adds
    each window's ``dy`` onto its pick. In one loop the pick was a data-dependent branch per
    tap beside the scatter, and ResNet-18's stem pooling gradient took 34 ms where the two
    loops take 11 (one thread, batch 8). ``work`` is indexed by ``thread_id``, which only the
    CPU has: without ``thread_scratch`` (a GPU target) each window's pick is added at once, in
    one loop (:func:`picks_rows`).

    With ``gpu`` (max, min and average pooling) each input cell gathers instead of each
    window scattering: per (image, channel, input row), a loop over the row's cells, each
    summing the shares of the windows that cover it (a max (min) window's ``dy`` where its
    pick, found as above, is this cell): a GPU runs a thread per cell (``gpu_schedule``), where
    windows scattering onto shared cells would race."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W = (sz(n, d) for n, d in zip("CHW", shape))
    P, Q = sz("P", out_hw[0]), sz("Q", out_hw[1])
    (R, S), (sh, sw) = attrs["kernel"], attrs["stride"]
    pt, pl, _, _ = attrs["pads"]
    dh, dw = attrs.get("dilation", (1, 1))
    ih = Var("h0") + Var("r") * dh
    iw = Var("w0") + Var("s") * dw
    at = Var("xb") + ih * W + iw
    body: list[Stmt] = [Let("xb", Var("t") * (H * W)), Let("yb", Var("t") * (P * Q)),
                        Loop("i", const(H * W), [Store("y", Var("xb") + Var("i"), Const(0.0))])]
    q_body: list[Stmt] = [Let("w0", Var("q") * sw - pl),
                          Let("g", Load("x1", Var("yb") + Var("p") * Q + Var("q")))]
    if op in ("maxpool", "minpool"):
        better = ">" if op == "maxpool" else "<"
        keep = fmax if op == "maxpool" else fmin  # never takes a NaN tap, as the compare
        x = Load("x0", at)
        pick = [
            Let("w0", Var("q") * sw - pl),
            Let("acc", Const(float("-inf") if op == "maxpool" else float("inf"))),
            Let("best", Const(-1.0)),
            Loop("r", Const(R), [If(_in_range(ih, 0, H), [Loop("s", Const(S), [
                If(_in_range(iw, 0, W), [
                    Let("v", x),
                    Let("best", Select(cmp(better, Var("v"), Var("acc")),
                                       call("f32", Var("r") * S + Var("s")), Var("best"))),
                    Let("acc", keep(Var("acc"), Var("v")))])])])]),
            Store("work", Var("wb") + Var("q"), Var("best"))]
        tap = Var("tap")
        scatter = [
            Let("tap", call("int", Load("work", Var("wb") + Var("q")))),
            If(cmp(">=", tap, 0), [
                Let("at", Var("xb") + (Var("h0") + tap // S * dh) * W + Var("q") * sw - pl
                    + tap % S * dw),
                Store("y", Var("at"), Load("y", Var("at"))
                      + Load("x1", Var("yb") + Var("p") * Q + Var("q")))])]
        params = [Param(n) for n in pool_grad_arrays(op, thread_scratch)]
        if gpu:
            return _gather_grad(name, params, (C, H, W, P, Q), attrs, pick[:-1], comment, sz)
        if not picks_rows(op, thread_scratch):  # the pick, then its window's dy added at once
            add = [Let("tap", call("int", Var("best")))] + scatter[1:]
            body.append(Loop("p", const(P), [Let("h0", Var("p") * sh - pt),
                                              Loop("q", const(Q), pick[:-1] + add)]))
            return rows_kernel(name, params, C, body, comment, sz)
        body.insert(0, Let("wb", call("thread_id") * Q))
        body.append(Loop("p", const(P), [Let("h0", Var("p") * sh - pt),
                                          Loop("q", const(Q), pick),
                                          Loop("q", const(Q), scatter)]))
        return rows_kernel(name, params, C, body, comment, sz)
    if op == "avgpool" and gpu:
        window = [Let("w0", Var("q") * sw - pl), *average_divisor(attrs, H, W)]
        return _gather_grad(name, [Param(n) for n in pool_grad_arrays(op)], (C, H, W, P, Q),
                            attrs, window, comment, sz)
    if op == "avgpool":
        q_body += average_divisor(attrs, H, W)
        q_body += [If(cmp(">", Var("cnt"), 0), [
            Let("share", div(Var("g"), Var("cnt"))),
            Loop("r", Const(R), [If(_in_range(ih, 0, H), [Loop("s", Const(S), [
                If(_in_range(iw, 0, W), [Store("y", at, Load("y", at) + Var("share"))])])])])])]
    elif op == "lppool":
        p = float(attrs["p"])
        x = Load("x0", at)
        share = div(x, Var("yw")) if p == 2.0 else call("pow", div(call("abs", x), Var("yw")),
                                                         Const(p - 1.0)) * Select(
            cmp(">", x, Const(0.0)), Const(1.0), Select(cmp("<", x, Const(0.0)), Const(-1.0),
                                                          Const(0.0)))
        q_body += [
            Let("acc", Const(0.0)),
            Loop("r", Const(R), [If(_in_range(ih, 0, H), [Loop("s", Const(S), [
                If(_in_range(iw, 0, W), [Let("acc", Var("acc") + lp_term(x, p))])])])]),
            Let("yw", lp_root(Var("acc"), p)),
            If(cmp(">", Var("yw"), Const(0.0)), [
                Loop("r", Const(R), [If(_in_range(ih, 0, H), [Loop("s", Const(S), [
                    If(_in_range(iw, 0, W), [Store("y", at, Load("y", at) + Var("g") * share)])
                ])])])])]
    else:
        raise ValueError(f"pool_grad_kernel: no kernel for the gradient of {op}")
    body.append(Loop("p", const(P), [Let("h0", Var("p") * sh - pt),
                                      Loop("q", const(Q), q_body)]))
    return rows_kernel(name, [Param(n) for n in pool_grad_arrays(op)], C, body, comment, sz)


def _gather_grad(name: str, params: list[Param], sizes: tuple[ExprLike, ...],
                 attrs: dict[str, Any], window: list[Stmt], comment: str,
                 sz: Sizes) -> Kernel:
    """:func:`pool_grad_kernel`'s gather form: per (plane, input row ``ch``), each input cell
    ``cw`` adds, over the taps ``(rr, ss)`` of the windows ``(p, q)`` that cover it, what the
    window gives it: ``window`` (statements of ``h0``, ``q`` and ``p``) computes the window's
    max (min) pick ``best`` (the tap ``r S + s`` as a float) or its average's divisor
    ``cnt``."""
    C, H, W, P, Q = sizes
    (R, S), (sh, sw) = attrs["kernel"], attrs["stride"]
    pt, pl, _, _ = attrs["pads"]
    dh, dw = attrs.get("dilation", (1, 1))
    pn, qn = Var("pn"), Var("qn")
    dy = Load("x1", Var("yb") + Var("p") * Q + Var("q"))
    if any(isinstance(s, Let) and s.var == "best" for s in window):
        share: list[Stmt] = [If(cmp("==", Var("best"), call("f32", Var("rr") * S + Var("ss"))), [
            Let("g", Var("g") + dy)])]
    else:
        share = [If(cmp(">", Var("cnt"), 0), [Let("g", Var("g") + div(dy, Var("cnt")))])]
    taps = Loop("rr", Const(R), [
        Let("pn", Var("ch") + pt - Var("rr") * dh),
        If(cmp("and", cmp(">=", pn, 0), cmp("and", cmp("==", pn % sh, 0),
                                             cmp("<", pn // sh, P))), [
            Let("p", pn // sh), Let("h0", Var("p") * sh - pt),
            Loop("ss", Const(S), [
                Let("qn", Var("cw") + pl - Var("ss") * dw),
                If(cmp("and", cmp(">=", qn, 0), cmp("and", cmp("==", qn % sw, 0),
                                                     cmp("<", qn // sw, Q))), [
                    Let("q", qn // sw), *window, *share])])])])
    body: list[Stmt] = unflatten(Var("t"), [("nc", N_BATCH * C), ("ch", H)])
    body += [Let("xb", Var("nc") * (H * W)), Let("yb", Var("nc") * (P * Q)),
             Loop("cw", const(W), [Let("g", Const(0.0)), taps,
                                   Store("y", Var("xb") + Var("ch") * W + Var("cw"), Var("g"))])]
    return rows_kernel(name, params, C * H, body, comment, sz)


def _count_taps(var: str, loop: str, start: Expr, k: int, d: int, lo: ExprLike,
                hi: ExprLike) -> list[Stmt]:
    """``var`` = how many of the ``k`` taps ``start + i * d`` lie in ``[lo, hi)``."""
    tap = start + Var(loop) * d
    return [Let(var, Const(0)),
            Loop(loop, Const(k), [If(_in_range(tap, lo, hi), [Let(var, Var(var) + 1)])])]


def pool_kernel(name: str, op: str, shape: Sequence[int], out_hw: tuple[int, int],
                attrs: dict[str, Any], comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``maxpool``, ``minpool``, ``avgpool`` or ``lppool`` of a C x H x W sample. Window,
    stride, padding and dilation are literal; the sizes are runtime arguments (``sz``)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W = (sz(n, d) for n, d in zip("CHW", shape))
    P, Q = sz("P", out_hw[0]), sz("Q", out_hw[1])
    (R, S), (sh, sw) = attrs["kernel"], attrs["stride"]
    pt, pl, pb, pr = attrs["pads"]
    dh, dw = attrs.get("dilation", (1, 1))
    body: list[Stmt] = unflatten(Var("t"), [("nc", N_BATCH * C), ("p", P)])
    body += [Let("h0", Var("p") * sh - pt), Let("xb", Var("nc") * (H * W)),
             Let("yb", Var("t") * Q)]
    ih = Var("h0") + Var("r") * dh
    iw = Var("w0") + Var("s") * dw
    x = Load("x0", Var("xb") + ih * W + iw)
    if op in ("maxpool", "minpool"):
        init: Expr = Const(float("-inf") if op == "maxpool" else float("inf"))
        update: Expr = (fmax if op == "maxpool" else fmin)(Var("acc"), x)
    elif op == "avgpool":
        init, update = Const(0.0), Var("acc") + x
    else:  # lppool
        init, update = Const(0.0), Var("acc") + lp_term(x, float(attrs["p"]))
    miss = may_miss_input(attrs)
    track = miss and op in ("maxpool", "minpool")  # did the window see an input cell?
    hit = [Let("hit", Const(1))] if track else []
    taps = Loop("r", Const(R), [If(_in_range(ih, 0, H), [
        Loop("s", Const(S), [If(_in_range(iw, 0, W), [Let("acc", update)] + hit)])])])
    q_body: list[Stmt] = [Let("w0", Var("q") * sw - pl), Let("acc", init)]
    q_body += [Let("hit", Const(0)), taps] if track else [taps]
    if track:
        lowest = float(np.finfo(np.float32).min)
        q_body.append(If(cmp("==", Var("hit"), 0), [
            Let("acc", Const(lowest if op == "maxpool" else -lowest))]))
    result: Expr = Var("acc")
    if op == "avgpool":
        q_body += average_divisor(attrs, H, W)
        result = Select(cmp(">", Var("cnt"), 0), div(Var("acc"), Var("cnt")), Const(0.0)) \
            if miss else div(Var("acc"), Var("cnt"))
    elif op == "lppool":
        result = lp_root(Var("acc"), float(attrs["p"]))
    q_body.append(Store("y", Var("yb") + Var("q"), result))
    body.append(Loop("q", const(Q), q_body))
    return rows_kernel(name, [Param("x0"), Param("y")], C * P, body, comment, sz)


def global_pool_kernel(name: str, op: str, shape: Sequence[int], comment: str = "",
                       sz: Sizes | None = None) -> Kernel:
    """Mean (float64 sum) or maximum over each channel's H x W plane."""
    sz = sz if sz is not None else Sizes(literal=True)
    hw_n = 1
    for d in shape[1:]:
        hw_n *= int(d)
    C, hw = sz("C", shape[0]), sz("L", hw_n)
    x = Load("x0", Var("xb") + Var("j"))
    if op == "globalavgpool":
        body: list[Stmt] = [Let("xb", Var("t") * hw), Let("acc", call("f64", Const(0))),
                            Loop("j", const(hw), [Let("acc", Var("acc") + x)]),
                            Store("y", Var("t"), div(Var("acc"), call("f64", hw)))]
    else:
        body = [Let("xb", Var("t") * hw), Let("acc", Load("x0", Var("xb"))),
                Loop("j", const(hw - 1), [Let("acc", fmax(Var("acc"), x))], start=Const(1)),
                Store("y", Var("t"), Var("acc"))]
    return rows_kernel(name, [Param("x0"), Param("y")], C, body, comment, sz)


@dataclass(frozen=True)
class FilterAxis:
    """How bilinear or bicubic resizing samples one axis: ``taps`` input positions per output,
    weighted by the filter at ``stretch`` x distance (``stretch`` < 1: antialiased)."""

    taps: int
    stretch: float = 1.0


def _coordinate(i: Expr, n_in: ExprLike, n_out: ExprLike, single: bool, scale: float,
                coordinates: str, roi: tuple[float, float]) -> Expr:
    """ONNX's source coordinate of output index ``i`` along one axis (``single``: the axis has
    one output), in float64 and in the order of operations of
    ``compiler/ops/resize.source_coordinates`` (so rounding to the nearest pixel and the
    tf_crop_and_resize range test agree with it bit for bit); the sizes may be runtime
    integers."""
    half = F64(0.5)
    if coordinates in ("half_pixel", "pytorch_half_pixel"):
        if coordinates == "pytorch_half_pixel" and single:
            return F64(0.0)
        return div(i + half, F64(scale)) - half
    if coordinates == "half_pixel_symmetric":
        offset = div(as_f64(n_in), F64(2.0)) * (
            F64(1.0) - div(as_f64(n_out), as_f64(n_in) * F64(scale)))
        return offset + div(i + half, F64(scale)) - half
    if coordinates == "align_corners":
        return F64(0.0) if single else div(i * (n_in - 1), as_f64(n_out - 1))
    if coordinates == "asymmetric":
        return div(i, F64(scale))
    if coordinates == "tf_half_pixel_for_nn":
        return div(i + half, F64(scale))
    if coordinates == "tf_crop_and_resize":
        start, end = roi
        if single:
            return F64(0.5 * (start + end)) * as_f64(n_in - 1)
        return div((F64(start) * (n_out - 1 - i) + F64(end) * i) * (n_in - 1),
                   as_f64(n_out - 1))
    raise ValueError(f"unknown coordinate transformation {coordinates!r}")


def _clamp(v: ExprLike, n: ExprLike) -> Expr:
    return fmin(fmax(v, 0), n - 1)


def _floor(v: Expr) -> Expr:
    return call("int", call("floor", v))


def _nearest(p: str, rounding: str, n_in: ExprLike) -> list[Stmt]:
    """``{p}i``: input pixel round(``{p}x``) as ``rounding`` rounds (ceil(v) is floor(v), plus
    one where v is above it), clamped to the input."""
    x = Var(f"{p}x")
    if rounding in ("floor", "round_prefer_ceil"):  # round half up: floor(x + 1/2)
        return [Let(f"{p}i", _clamp(_floor(x if rounding == "floor" else x + F64(0.5)),
                                     n_in))]
    v = x if rounding == "ceil" else x - F64(0.5)  # round half down: ceil(x - 1/2)
    return [Let(f"{p}v", v), Let(f"{p}fl", _floor(Var(f"{p}v"))),
            Let(f"{p}i", _clamp(Select(cmp(">", Var(f"{p}v"), Var(f"{p}fl")),
                                       Var(f"{p}fl") + 1, Var(f"{p}fl")), n_in))]


def _tent(p: str, x: Expr, n_in: ExprLike) -> list[Stmt]:
    """The two taps of unstretched bilinear sampling at ``x``: ``{p}lo``, ``{p}hi`` and the
    weight ``{p}f`` of ``{p}hi``. Reading the edge pixel past either end is what clamping the
    coordinate to [0, n - 1] gives."""
    return [Let(f"{p}src", fmax(x, F64(0.0))),
            Let(f"{p}lo", fmin(_floor(Var(f"{p}src")), n_in - 1)),
            Let(f"{p}hi", fmin(Var(f"{p}lo") + 1, n_in - 1)),
            Let(f"{p}f", Var(f"{p}src") - Var(f"{p}lo"))]


def _weight(p: str, tap: Expr, axis: FilterAxis, attrs: dict[str, Any],
            n_in: ExprLike) -> list[Stmt]:
    """Lets leaving in ``{p}w`` the weight of input position ``{p}t`` = ``tap``: the filter at
    ``stretch`` x (``{p}t`` - ``{p}x``), the tent or Keys' cubic (the op's formulas, in the same
    order); 0 outside the input with ``exclude_outside``."""
    t, u = Var(f"{p}t"), Var(f"{p}u")
    lets: list[Stmt] = [Let(f"{p}t", tap),
                        Let(f"{p}u", call("abs", F64(axis.stretch) * (t - Var(f"{p}x"))))]
    if attrs["mode"] == "bilinear":
        w: Expr = fmax(F64(0.0), F64(1.0) - u)
    else:
        a = float(attrs["cubic_a"])
        inner = (F64(a + 2) * u - F64(a + 3)) * u * u + F64(1.0)
        outer = ((F64(a) * u - F64(5 * a)) * u + F64(8 * a)) * u - F64(4 * a)
        w = Select(cmp("<=", u, F64(1.0)), inner,
                   Select(cmp("<", u, F64(2.0)), outer, F64(0.0)))
    if attrs["exclude_outside"]:
        w = Select(_in_range(t, 0, n_in), w, F64(0.0))
    return lets + [Let(f"{p}w", w)]


def upsample_kernel(name: str, shape: Sequence[int], out_hw: tuple[int, int],
                    attrs: dict[str, Any], axes: tuple[FilterAxis, FilterAxis] | None = None,
                    comment: str = "", sz: Sizes | None = None) -> Kernel:
    """Resizing of a C x H x W sample (``compiler/ops/resize.py``: coordinates, rounding,
    filters), one parallel iteration per output row, in float64 rounded once at the store.
    Nearest reads one pixel; bilinear without antialiasing two per axis in closed form;
    otherwise (bicubic, antialiased) each output sums ``axes[0].taps x axes[1].taps`` weighted
    pixels and divides by the weights' sums. tf_crop_and_resize's outputs from outside the
    input are the extrapolation value. The sizes (``C H W``, the output's ``P Q``) are runtime
    integers recorded in ``sz`` (literals without one); the scales, the filters' taps and the
    attributes stay in the code."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W = (sz(n, int(d)) for n, d in zip("CHW", shape))
    OH, OW = sz("P", int(out_hw[0])), sz("Q", int(out_hw[1]))
    mode, coords = attrs["mode"], attrs["coordinates"]
    roi = attrs["roi"]
    crop = coords == "tf_crop_and_resize"
    plain = mode == "bilinear" and axes is not None and \
        all(ax.taps == 2 and ax.stretch == 1.0 for ax in axes)

    def axis_lets(p: str, i: Expr, n_in: ExprLike, n_out: ExprLike, k: int) -> list[Stmt]:
        x = _coordinate(i, n_in, n_out, int(out_hw[k]) == 1, attrs["scale"][k], coords,
                        (roi[k], roi[k + 2]))
        if plain and not crop:
            return _tent(p, x, n_in)
        lets: list[Stmt] = [Let(f"{p}x", x)]
        if crop:
            lets.append(Let(f"{p}out", cmp("or", cmp("<", Var(f"{p}x"), F64(0.0)),
                                           cmp(">", Var(f"{p}x"), as_f64(n_in - 1)))))
        if mode == "nearest":
            return lets + _nearest(p, attrs["rounding"], n_in)
        if plain:
            return lets + _tent(p, Var(f"{p}x"), n_in)
        taps = axes[k].taps  # type: ignore[index]
        return lets + [Let(f"{p}t0", _floor(Var(f"{p}x")) - (taps // 2 - 1))]

    body: list[Stmt] = unflatten(Var("t"), [("nc", N_BATCH * C), ("oh", OH)])
    body += axis_lets("r", Var("oh"), H, OH, 0)
    body += [Let("xb", Var("nc") * (H * W)), Let("yb", Var("t") * OW)]
    col = axis_lets("c", Var("j"), W, OW, 1)

    def at(r: ExprLike, c: ExprLike) -> Expr:
        return Load("x0", Var("xb") + r * W + c)

    if mode == "nearest":
        value: Expr = at(Var("ri"), Var("ci"))
    elif plain:
        one = F64(1.0)
        top = at(Var("rlo"), Var("clo")) * (one - Var("rf")) + \
            at(Var("rhi"), Var("clo")) * Var("rf")
        bot = at(Var("rlo"), Var("chi")) * (one - Var("rf")) + \
            at(Var("rhi"), Var("chi")) * Var("rf")
        value = top * (one - Var("cf")) + bot * Var("cf")
    else:
        rows, cols = axes  # type: ignore[misc]
        col_weight = _weight("c", Var("ct0") + Var("b"), cols, attrs, W)
        zero = call("f64", Const(0))
        col += [Let("csum", zero),
                Loop("b", Const(cols.taps), col_weight + [Let("csum", Var("csum") + Var("cw"))]),
                Let("acc", zero), Let("rsum", zero),
                Loop("a", Const(rows.taps), _weight("r", Var("rt0") + Var("a"), rows, attrs, H) + [
                    Let("ri", _clamp(Var("rt"), H)),
                    Let("racc", zero),
                    Loop("b", Const(cols.taps), col_weight + [Let("racc", Var("racc") + Var(
                        "cw") * at(Var("ri"), _clamp(Var("ct"), W)))]),
                    Let("acc", Var("acc") + Var("rw") * Var("racc")),
                    Let("rsum", Var("rsum") + Var("rw"))]),
                Let("wsum", Var("rsum") * Var("csum"))]
        value = Select(cmp("!=", Var("wsum"), F64(0.0)), div(Var("acc"), Var("wsum")),
                       F64(0.0))
    if crop:
        value = Select(cmp("or", Var("rout"), Var("cout")), Const(float(attrs["extrapolation"])),
                       value)
    body.append(Loop("j", const(OW), col + [Store("y", Var("yb") + Var("j"), value)]))
    return rows_kernel(name, [Param("x0"), Param("y")], C * OH, body, comment, sz)


# -- channel-blocked (NCHW8c) variants: 8 channels per vector ---------------------------------

def blocked_window(op: str, attrs: dict[str, Any], x: str, xb: Expr, q: Expr,
                   H: ExprLike, W: ExprLike, storage: StorageIndex,
                   lanes: int | None = None) -> list[Stmt]:
    """Statements leaving in ``acc`` the max or average pool (``lanes`` channels a vector: the
    storage's block, or its first 8 channels from ``xb`` on) of output column ``q`` of the row
    whose window starts at input row ``win_r`` (a local the caller sets), over the block of
    ``x`` stored from ``xb`` (a ``block_start`` of the ``H x W`` tensor in ``storage``). Taps
    outside the tensor are skipped (never its zero halo: a window of negative values must not
    see a 0); average pooling only where its divisor is the window size
    (``avgpool_blocked_ok``). Shared by the pooling kernel and the convolution that computes
    its input's pool as a prologue."""
    (R, S), sw = attrs["kernel"], attrs["stride"][1]
    pl = attrs["pads"][1]
    dh, dw = attrs.get("dilation", (1, 1))
    ih, iw = Var("win_r") + Var("r") * dh, Var("win_c") + Var("s") * dw
    lanes = lanes or storage.lanes
    tap = VLoad(x, storage.tap(xb, ih, iw), lanes)
    if op == "avgpool":
        if not avgpool_blocked_ok(attrs):
            raise ValueError("this average pool's divisor is not its window size")
        init: Expr = VZero(lanes)
        update: Expr = VBin("add", Var("acc"), tap)
        track = False
    elif op == "maxpool":
        init, update = VSplat(Const(float("-inf")), lanes), VBin("max", Var("acc"), tap)
        track = may_miss_input(attrs)  # a window of only padding gives the lowest float32
    else:
        raise ValueError(f"no channel-blocked window kernel for {op!r}")
    hit = [Let("hit", Const(1))] if track else []
    stmts: list[Stmt] = [
        Let("win_c", q * sw - pl),
        Let("acc", init),
        *([Let("hit", Const(0))] if track else []),
        Loop("r", Const(R), [If(_in_range(ih, 0, H), [
            Loop("s", Const(S), [If(_in_range(iw, 0, W), [Let("acc", update)] + hit)])])]),
    ]
    if track:
        stmts.append(If(cmp("==", Var("hit"), 0), [
            Let("acc", VSplat(Const(float(np.finfo(np.float32).min)), lanes))]))
    if op == "avgpool":
        stmts.append(Let("acc", VBin("mul", Var("acc"), VSplat(Const(1.0 / (R * S)), lanes))))
    return stmts


def window_pool_blocked_kernel(name: str, op: str, attrs: dict[str, Any],
                               comment: str = "", lanes: int = 8, nhwc: bool = False) -> Kernel:
    """Max or average pooling of channel-blocked storage into channel-blocked storage,
    ``lanes`` channels a block and a vector (the window: ``blocked_window``). Input geometry
    ``X*`` and output geometry ``Y*`` are ``(blocks, stored height, stored width, top,
    left)``; window, stride, padding and dilation are literal."""
    sh, pt = attrs["stride"][0], attrs["pads"][0]
    C8, H, W, P, Q = (Var(v) for v in ("C8", "H", "W", "P", "Q"))
    x, y = StorageIndex.named("X", lanes, nhwc), StorageIndex.named("Y", lanes, nhwc)
    n, cb, p, q = Var("n"), Var("cb"), Var("p"), Var("q")
    q_body = blocked_window(op, attrs, "x0", Var("xb"), q, H, W, x)
    q_body.append(VStore("y", Var("yb") + q * y.pixel, Var("acc")))
    body: list[Stmt] = unflatten(Var("t"), y.tasks(("n", N_BATCH), ("cb", C8), ("p", P))) + [
        Let("win_r", p * sh - pt),
        Let("xb", x.block_start(n, cb)),
        Let("yb", y.row(n, cb, p)),
        Loop("q", Q, q_body),
    ]
    ints = ["C8", "H", "W", "P", "Q"] + ["X" + s for s in BLOCKED_INTS] + \
        ["Y" + s for s in BLOCKED_INTS]
    return Kernel(name, [Param("x0"), Param("y")] + [Param(i, "int") for i in ints]
                  + [Param("n_batch", "int")],
                  [Loop("t", N_BATCH * (C8 * P), body, kind="parallel")], comment)


def avgpool_blocked_ok(attrs: dict[str, Any]) -> bool:
    """Whether an average pool divides every window by its size, so the blocked kernel (which
    skips the taps off the input and multiplies by ``1 / (R*S)``) computes it: no ceil-mode
    cells past the padding, and either no padding or padding that counts
    (``count_include_pad``; DenseNet's transitions, Inception's 3x3 average pools)."""
    if attrs.get("ceil_mode"):
        return False
    return bool(attrs.get("count_include_pad", True)) or not any(attrs["pads"])


#: Independent accumulators of the channel-blocked global pool: its adds (maxima) over a plane
#: are one dependent chain otherwise, a vector every 3 cycles (the add's latency) where two
#: units could take two a cycle.
GLOBAL_POOL_CHAINS = 4


def global_pool_blocked_kernel(name: str, op: str, comment: str = "", lanes: int = 8,
                               nhwc: bool = False) -> Kernel:
    """Mean or maximum over each channel's H x W plane of channel-blocked storage (``lanes``
    channels a block), written as the plain ``[N, C]`` result (``C`` a multiple of 8: with 16
    lanes the last block may hold 8 channels, and only its low half is stored); the mean sums
    in float32 vectors, each row's pixels in turn into :data:`GLOBAL_POOL_CHAINS` accumulators
    (pixel ``w`` into ``w % 4``; a row's last ``W % 4`` pixels into the first), added pairwise
    at the end."""
    C8, H, W = Var("C8"), Var("H"), Var("W")
    x = StorageIndex.named("X", lanes, nhwc)
    n, cb = Var("n"), Var("cb")
    k = GLOBAL_POOL_CHAINS

    def tap(w: ExprLike) -> Expr:
        return VLoad("x0", Var("xr") + w * x.pixel, lanes)

    if op == "globalavgpool":
        init: Expr = VZero(lanes)
        kind = "add"
    else:
        init = VSplat(Const(float("-inf")), lanes)
        kind = "max"
    chains = [Let(f"acc{j}", VBin(kind, Var(f"acc{j}"), tap(Var("w4") * k + j)))
              for j in range(k)]
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("cb", C8)]) + [
        Let("xb", x.block_start(n, cb)),
        *(Let(f"acc{j}", init) for j in range(k)),
        Loop("h", H, [
            Let("xr", x.tap(Var("xb"), Var("h"), 0)),
            Loop("w4", W // k, chains),
            Loop("w", W % k, [Let("acc0", VBin(kind, Var("acc0"), tap(Var("w"))))],
                 start=W - W % k),
        ]),
        Let("acc", VBin(kind, VBin(kind, Var("acc0"), Var("acc1")),
                        VBin(kind, Var("acc2"), Var("acc3")))),
    ]
    if op == "globalavgpool":
        final: Expr = VBin("mul", Var("acc"), VSplat(div(Const(1.0), call("f32", H * W)), lanes))
    else:
        final = Var("acc")
    ints = ["C8", "H", "W"] + ["X" + s for s in BLOCKED_INTS]
    if lanes == 8:
        body.append(VStore("y", (n * C8 + cb) * lanes, final))
    else:
        C = Var("C")
        body += [Let("acc", final), If(cmp("<=", (cb + 1) * lanes, C), [
            VStore("y", n * C + cb * lanes, Var("acc"))], [
            VStore("y", n * C + cb * lanes, VHalf(Var("acc"), False))])]
        ints.append("C")
    return Kernel(name, [Param("x0"), Param("y")] + [Param(i, "int") for i in ints]
                  + [Param("n_batch", "int")],
                  [Loop("t", N_BATCH * C8, body, kind="parallel")], comment)
