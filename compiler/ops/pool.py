"""Pooling: max, average, min and Lp (L2) windows, and the global poolings.

Attributes as in PyTorch: `stride` defaults to the kernel, `ceil_mode` rounds the output size up
(a last window starting in the trailing padding is dropped), and average pooling counts the zero
padding in its divisor unless `count_include_pad=false` (PyTorch's default is true; ONNX's is
false; the exporter writes it explicitly). Every window op takes a `dilation`.

Padding may be as large as ONNX allows (any size; PyTorch allows at most half the window, ONNX
Runtime less than the window), so a window may see only padding (large pads, or a dilated
window that steps over a small input). What such a window gives, as ONNX Runtime computes it:
- maxpool: the lowest float32, -3.4028235e38 (ONNX Runtime starts its maximum there); minpool
  the highest, +3.4028235e38 (what its export, -maxpool(-x), gives);
- avgpool with count_include_pad=false: 0 (no cell counted; ONNX Runtime writes 0); with
  count_include_pad=true the zero padding is counted, so the mean is 0 too;
- lppool: 0 (padding counts as 0).

ONNX mapping (checked against ONNX Runtime in tests/ops/test_ops_vs_onnxruntime.py and
tests/ops/test_pool_padding.py):
- maxpool = MaxPool(kernel_shape, strides, pads, dilations, ceil_mode); padding counts as -inf.
- minpool = Neg -> MaxPool -> Neg (ONNX has no MinPool); padding counts as +inf.
- avgpool = AveragePool with count_include_pad written out (ONNX default 0, ours 1). The divisor
  counts the window's taps on input cells and, with count_include_pad, on the declared padding
  (never the cells ceil mode adds past it), as PyTorch and ONNX Runtime do; dilations from
  opset 19.
- lppool = LpPool (ONNX's p is an integer; ours is a float); padding counts as 0; dilations
  from opset 18.
- The output size with ceil_mode agrees with ONNX Runtime, including the dropped last window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.backward import global_pool_grad_kernel
from ..kernels.common import Sizes
from ..kernels.pool import (
    avgpool_blocked_ok,
    global_pool_blocked_kernel,
    global_pool_kernel,
    pool_grad_arrays,
    pool_grad_kernel,
    pool_grad_scratch,
    pool_kernel,
    window_pool_blocked_kernel,
)
from ..plan import Arg, Call, Step
from ..types import BLOCKED, PLAIN, TensorType, in_every_blocked_layout, spatial_out
from . import (
    EPS32,
    TRANSCENDENTAL,
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ShapeError,
    as_bool,
    as_float,
    as_pair,
    exact_bound,
    get_op,
    no_macs,
    one_input,
    own_attrs,
    register,
    require_rank,
    sum_bound,
)
from .conv import resolve_pads, window_check

POOL_PAD_WORDS = ("same", "valid", "full")
# The value of a max (min) pool window that sees only padding, as ONNX Runtime gives it.
LOWEST = float(np.finfo(np.float32).min)


def _pool_canonicalize(op: str, has_divisor: bool, has_p: bool = False):
    def canon(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
        require_rank(in_types[0], 3, op)
        kernel = as_pair(attrs["kernel"], "kernel")
        stride = kernel if attrs["stride"] is None else as_pair(attrs["stride"], "stride")
        dilation = as_pair(attrs["dilation"], "dilation")
        x = in_types[0]
        pads = resolve_pads(attrs["pad"], kernel, stride, dilation, (x.height, x.width),
                            words=POOL_PAD_WORDS)
        out: dict[str, Any] = {"kernel": kernel, "stride": stride, "pads": pads,
                               "ceil_mode": as_bool(attrs["ceil_mode"], "ceil_mode"),
                               "dilation": dilation}
        if has_divisor:
            out["count_include_pad"] = as_bool(attrs["count_include_pad"], "count_include_pad")
        if has_p:
            p = as_float(attrs["p"], "p")
            if p <= 0:
                raise AttrError(f"p must be positive, got {p}", "p")
            out["p"] = p
        return out
    return canon


def _pool_infer(op: str):
    def infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        x = in_types[0]
        require_rank(x, 3, op)
        kernel, stride, pads = attrs["kernel"], attrs["stride"], attrs["pads"]
        dilation = attrs.get("dilation", (1, 1))
        window_check(op, (x.height, x.width), pads, kernel, dilation)
        p = spatial_out(x.height, kernel[0], stride[0], pads[0], pads[2], dilation[0],
                        attrs["ceil_mode"])
        q = spatial_out(x.width, kernel[1], stride[1], pads[1], pads[3], dilation[1],
                        attrs["ceil_mode"])
        return x.with_shape(x.channels, p, q)
    return infer


def pool_windows(x: np.ndarray, attrs: dict[str, Any], fill: float,
                 extra_fill: float | None = None) -> np.ndarray:
    """All windows of x as an array [N, C, P, Q, R*S], the padding filled with `fill`.

    Ceil mode may need cells past the declared padding: those hold `extra_fill` (default
    `fill`).
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (t, l, b, r) = attrs["kernel"], attrs["stride"], attrs["pads"]
    dh, dw = attrs.get("dilation", (1, 1))
    ceil = attrs["ceil_mode"]
    p = spatial_out(h, kh, sh, t, b, dh, ceil)
    q = spatial_out(w, kw, sw, l, r, dw, ceil)
    extra_h = max((p - 1) * sh + dh * (kh - 1) + 1 - (h + t + b), 0)
    extra_w = max((q - 1) * sw + dw * (kw - 1) + 1 - (w + l + r), 0)
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=fill)
    xp = np.pad(xp, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)),
                constant_values=fill if extra_fill is None else extra_fill)
    taps = [xp[:, :, i * dh: i * dh + (p - 1) * sh + 1: sh, j * dw: j * dw + (q - 1) * sw + 1: sw]
            for i in range(kh) for j in range(kw)]
    return np.stack(taps, axis=-1)


def _input_taps(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """How many taps of each window fall on input cells, [1, 1, P, Q]."""
    return pool_windows(np.ones((1, 1) + x.shape[2:]), attrs, 0.0).sum(axis=-1)


def _max_ref(x, attrs):
    """The maximum over each window's input cells; LOWEST where it sees only padding."""
    x = np.asarray(x, np.float64)
    y = pool_windows(x, attrs, -np.inf).max(axis=-1)
    return np.where(_input_taps(x, attrs) > 0, y, LOWEST)


def _min_ref(x, attrs):
    """The minimum over each window's input cells; -LOWEST where it sees only padding."""
    x = np.asarray(x, np.float64)
    y = pool_windows(x, attrs, np.inf).min(axis=-1)
    return np.where(_input_taps(x, attrs) > 0, y, -LOWEST)


def _avg_ref(x, attrs):
    """Window sums over a divisor that counts the taps on input cells of each window and, with
    count_include_pad, on the declared padding too (never the cells ceil mode adds); 0 where
    nothing is counted (a window of only padding without count_include_pad)."""
    x = np.asarray(x, np.float64)
    sums = pool_windows(x, attrs, 0.0).sum(axis=-1)
    ones = np.ones((1, 1) + x.shape[2:])
    pad_counts = 1.0 if attrs["count_include_pad"] else 0.0
    counts = pool_windows(ones, attrs, pad_counts, extra_fill=0.0).sum(axis=-1)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def _lp_ref(x, attrs):
    x = np.abs(np.asarray(x, np.float64))
    p = attrs["p"]
    return (pool_windows(x, attrs, 0.0) ** p).sum(axis=-1) ** (1.0 / p)


_WINDOW = (
    Attr("kernel", "ints"),
    Attr("stride", "ints", None),
    Attr("pad", "pads", 0, choices=POOL_PAD_WORDS),
    Attr("ceil_mode", "bool", False),
)


def _keeps_blocked(node, in_types):
    """Max pooling has NCHW8c, NCHW16c and NHWC kernels (every padding and dilation),
    average pooling where its divisor is the window size: blocked in, blocked out."""

    if node.op == "maxpool" or (node.op == "avgpool" and avgpool_blocked_ok(own_attrs(
            node.attrs))):
        return in_every_blocked_layout(((PLAIN, PLAIN), (BLOCKED, BLOCKED)))
    return ((PLAIN, PLAIN),)


def _reads_blocked(node, in_types):
    """Global pooling reads channel-blocked storage and writes the plain C x 1 x 1 result
    (whole 8-lane vectors: the channels a multiple of 8)."""
    if in_types[0].channels % 8:
        return ((PLAIN, PLAIN),)
    return in_every_blocked_layout(((PLAIN, PLAIN), (BLOCKED, PLAIN)))


def _lower_window(ctx, node):

    src = ctx.storage(ctx.tensor_inputs[0])
    if src is not None:  # NCHW8c in and out (the layout rule)
        out = ctx.out_storage
        c, h, w = ctx.in_shapes[0]
        ints = {"C8": -(-c // src.lanes), "H": h, "W": w, "P": ctx.out_shape[1],
                "Q": ctx.out_shape[2]}
        ints.update(zip(("XB", "XH", "XW", "XT", "XL"), src.ints()))
        ints.update(zip(("YB", "YH", "YW", "YT", "YL"), out.ints()))
        k = window_pool_blocked_kernel(ctx.kname, node.op, node.attrs, ctx.comment, src.lanes,
                                       src.nhwc)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=ints)
    sz = Sizes()
    k = pool_kernel(ctx.kname, node.op, ctx.in_shapes[0], ctx.out_shape[1:], node.attrs,
                    ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _lower_global(ctx, node):

    src = ctx.storage(ctx.tensor_inputs[0])
    if src is not None:  # reads NCHW8c, writes the plain C x 1 x 1 result
        c, h, w = ctx.in_shapes[0]
        ints = {"C8": -(-c // src.lanes), "H": h, "W": w, "C": c}
        ints.update(zip(("XB", "XH", "XW", "XT", "XL"), src.ints()))
        k = global_pool_blocked_kernel(ctx.kname, node.op, ctx.comment, src.lanes, src.nhwc)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=ints)
    sz = Sizes()
    k = global_pool_kernel(ctx.kname, node.op, ctx.in_shapes[0], ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _window(ctx: BoundCtx) -> int:
    return ctx.attrs["kernel"][0] * ctx.attrs["kernel"][1]


def _lp_bound(ctx: BoundCtx):
    """K = kh x kw terms |x|^p (a rounding, or a pow call, each) summed in float32 (a relative
    K EPS32: the terms are positive), then the root, which scales that relative error by 1/p
    and adds its own call."""
    p = ctx.attrs["p"]
    own = 1.0 if p == 2.0 else TRANSCENDENTAL
    return EPS32 * np.abs(ctx.out) * (max(1.0, 1.0 / p) * (_window(ctx) + own) + TRANSCENDENTAL)


# Error bounds: max and min choose an input (exact); the average is a float32 sum of the
# window's taps over a count, one division (``sum_bound``).
_BOUNDS = {"maxpool": exact_bound(), "minpool": exact_bound(),
           "avgpool": sum_bound(terms=_window, extra=1)}

for _name, _ref, _div, _doc in (
    ("maxpool", _max_ref, False, "maximum over each window"),
    ("minpool", _min_ref, False, "minimum over each window"),
    ("avgpool", _avg_ref, True, "mean over each window"),
):
    # (dilation after count_include_pad: positional arguments keep their order)
    _sig = _WINDOW + ((Attr("count_include_pad", "bool", True),) if _div else ()) + (
        Attr("dilation", "ints", 1),)
    register(OpDef(name=_name, family="pool", signature=_sig,
                   canonicalize=_pool_canonicalize(_name, _div),
                   infer=_pool_infer(_name), reference=one_input(_ref), macs=no_macs, doc=_doc,
                   lower=_lower_window, layout_rule=_keeps_blocked, error_bound=_BOUNDS[_name],
                   aliases=(_name.replace("pool", "_pool"),)))

register(OpDef(name="lppool", family="pool",
               signature=_WINDOW + (Attr("p", "float", 2.0), Attr("dilation", "ints", 1)),
               canonicalize=_pool_canonicalize("lppool", False, has_p=True),
               infer=_pool_infer("lppool"), reference=one_input(_lp_ref), macs=no_macs,
               lower=_lower_window, error_bound=_lp_bound,
               aliases=("l2pool", "lp_pool"),
               doc="(sum |x|^p)^(1/p) over each window; p = 2 is L2 pooling"))


# -- global pooling ---------------------------------------------------------------------------

def _global_infer(op: str):
    def infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        x = in_types[0]
        if x.rank != 3:
            raise ShapeError(f"{op} needs a channels x height x width input, got {x}")
        return x.with_shape(x.channels, 1, 1)
    return infer


register(OpDef(name="globalavgpool", family="pool", signature=(),
               infer=_global_infer("globalavgpool"),
               reference=one_input(lambda x, a: np.asarray(x, np.float64)
                                   .mean(axis=(2, 3), keepdims=True)),
               macs=no_macs, aliases=("global_avgpool", "gap"), lower=_lower_global,
               # H x W values summed: in float64 by the NCHW kernel, but in float32 vectors by
               # the NCHW8c one, then scaled by a rounded 1 / (H x W): the float32 bound
               error_bound=sum_bound(terms=lambda ctx: ctx.inputs[0][0, 0].size, extra=2),
               layout_rule=_reads_blocked,
               doc="mean over height and width (C x 1 x 1)"))
register(OpDef(name="globalmaxpool", family="pool", signature=(),
               infer=_global_infer("globalmaxpool"),
               reference=one_input(lambda x, a: np.asarray(x, np.float64)
                                   .max(axis=(2, 3), keepdims=True)),
               macs=no_macs, aliases=("global_maxpool",), lower=_lower_global,
               error_bound=exact_bound(),
               layout_rule=_reads_blocked,
               doc="maximum over height and width (C x 1 x 1)"))


# -- gradients ----------------------------------------------------------------------------------
# pool_grad(x, dy; of=op, op's attributes) is the adjoint of the window op at x: each window's
# output gradient spread over its taps (``window_scatter``, the adjoint of ``pool_windows``):
# max (min) pooling routes all of it to the window's largest (smallest) input cell, the first
# in row-major window order on a tie (PyTorch's CPU kernels: a later equal value does not
# replace the maximum); a window of only padding passes nothing on. Average pooling gives each
# tap dy / divisor (the forward's divisor, ``count_include_pad`` and ceil mode included; taps on
# padding go nowhere); Lp pooling dy * (|x| / y)^(p-1) * sign(x) (0 where y = 0).

def window_scatter(taps: np.ndarray, attrs: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The adjoint of ``pool_windows``: per-tap values ``[N, C, P, Q, R*S]`` added back onto
    the cells of an ``[N, C, H, W]`` input they were read from (padding dropped)."""
    n, c, h, w = shape
    (kh, kw), (sh, sw), (t, l, b, r) = attrs["kernel"], attrs["stride"], attrs["pads"]
    dh, dw = attrs.get("dilation", (1, 1))
    p, q = taps.shape[2:4]
    full_h = max(h + t + b, (p - 1) * sh + dh * (kh - 1) + 1)
    full_w = max(w + l + r, (q - 1) * sw + dw * (kw - 1) + 1)
    xp = np.zeros((n, c, full_h, full_w))
    for k, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
        xp[:, :, i * dh: i * dh + (p - 1) * sh + 1: sh,
           j * dw: j * dw + (q - 1) * sw + 1: sw] += taps[..., k]
    return xp[:, :, t:t + h, l:l + w]


def _pool_of(attrs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return attrs["of"], {k: v for k, v in attrs.items() if k != "of"}


def pool_grad_reference(inputs, attrs):
    of, a = _pool_of(attrs)
    x, dy = (np.asarray(v, np.float64) for v in inputs)
    if of in ("maxpool", "minpool"):
        windows = pool_windows(x, a, -np.inf if of == "maxpool" else np.inf)
        pick = (np.argmax if of == "maxpool" else np.argmin)(windows, axis=-1)
        onehot = np.arange(windows.shape[-1]) == pick[..., None]
        seen = _input_taps(x, a)[..., None] > 0
        taps = np.where(onehot & seen, dy[..., None], 0.0)
    elif of == "avgpool":
        counts = pool_windows(np.ones((1, 1) + x.shape[2:]), a,
                              1.0 if a["count_include_pad"] else 0.0,
                              extra_fill=0.0).sum(axis=-1)
        share = np.divide(dy, counts, out=np.zeros_like(dy), where=counts > 0)
        taps = np.broadcast_to(share[..., None], dy.shape + (a["kernel"][0] * a["kernel"][1],))
    else:  # lppool
        p = a["p"]
        windows = pool_windows(x, a, 0.0)
        y = _lp_ref(x, a)[..., None]
        ratio = np.divide(np.abs(windows), y, out=np.zeros_like(windows), where=y > 0)
        taps = dy[..., None] * ratio ** (p - 1) * np.sign(windows)
    return window_scatter(taps, a, x.shape)


def _pool_gradient(d):
    return [d.add("pool_grad", [d.input(0), d.dy], {"of": d.node.op, **d.attrs})]


def _pool_grad_bound(ctx: BoundCtx) -> np.ndarray:
    """Each input cell sums the shares of the windows covering it (at most kh x kw x the
    overlap), each a product or quotient: a float32 sum's bound over |shares|."""
    of, a = _pool_of(ctx.attrs)
    cover = -(-a["kernel"][0] // a["stride"][0]) * -(-a["kernel"][1] // a["stride"][1])
    if of in ("maxpool", "minpool"):
        return ctx.err_in + cover * EPS32 * ctx.absolute()
    return ctx.err_in + (cover + TRANSCENDENTAL + 3) * EPS32 * ctx.absolute()


def _lower_pool_grad(ctx, node):
    """Max, min, average and Lp pooling's gradients (``pool_grad_kernel``); max and min
    pooling's kernel picks each row's taps into a row of ``pool_picks`` scratch per thread
    where the target has per-thread scratch (the CPU's)."""
    of, attrs = _pool_of(node.attrs)
    sz = Sizes()
    x, dy = ctx.in_shapes
    scratch = ctx.thread_scratch
    k = pool_grad_kernel(ctx.kname, of, x, dy[1:], attrs, ctx.comment, sz, scratch,
                         gpu=ctx.backend.thread_blocks)
    work = pool_grad_scratch(of, dy[1:], ctx.threads, scratch)
    if not work:
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)
    arrays = dict(zip(pool_grad_arrays(of, scratch),
                      (*(Arg("value", i) for i in ctx.tensor_inputs), Arg("output"),
                       Arg("scratch", "pool_picks"))))
    args = [arrays[p.name] if p.name in arrays else Arg("batch") if p.name == "n_batch"
            else Arg("int", int(sz.values[p.name])) for p in k.params]
    # scratch is sized per image: a batch's arena holds more rows than there are threads
    return Step(node.id, ctx.step_name, ctx.step_ops, list(dict.fromkeys(ctx.tensor_inputs)),
                node.type.size, [Call(None, tuple(args), k.name, k)],
                scratch={"pool_picks": work})


def _lower_global_grad(ctx, node):
    sz = Sizes()
    k = global_pool_grad_kernel(ctx.kname, node.attrs["of"], ctx.in_shapes[0], ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _global_grad_reference(inputs, attrs):
    x, dy = (np.asarray(v, np.float64) for v in inputs)
    if attrs["of"] == "globalavgpool":
        return np.broadcast_to(dy / (x.shape[2] * x.shape[3]), x.shape).copy()
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    onehot = np.arange(flat.shape[-1]) == np.argmax(flat, axis=-1)[..., None]
    return (onehot * dy.reshape(dy.shape[0], dy.shape[1], 1)).reshape(x.shape)


def _global_gradient(d):
    return [d.add("global_pool_grad", [d.input(0), d.dy], {"of": d.node.op})]


for _name in ("maxpool", "minpool", "avgpool", "lppool"):
    get_op(_name).gradient = _pool_gradient
for _name in ("globalavgpool", "globalmaxpool"):
    get_op(_name).gradient = _global_gradient

register(OpDef(name="pool_grad", family="pool", signature=(Attr("of", "any"),),
               infer=lambda ts, a: ts[0], reference=pool_grad_reference, macs=no_macs, arity=2,
               pass_made=True, backward=True, new_activations=False, error_bound=_pool_grad_bound,
               lower=_lower_pool_grad,
               doc="the input gradient of window pooling `of` (autodiff)"))
register(OpDef(name="global_pool_grad", family="pool", signature=(Attr("of", "any"),),
               infer=lambda ts, a: ts[0], reference=_global_grad_reference, macs=no_macs,
               arity=2, pass_made=True, backward=True, new_activations=False,
               lower=_lower_global_grad,
               error_bound=lambda ctx: ctx.err_in + 2 * EPS32 * ctx.absolute(),
               doc="the input gradient of global pooling `of` (autodiff)"))
