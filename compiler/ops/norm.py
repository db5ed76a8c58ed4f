"""Normalization: batch norm (inference statistics; in a training graph the batch's, by its
training form: ``batch_mean``, ``batch_var``, ``batchnorm_train`` and the running statistics'
``running_update``), group norm, instance norm, and local response normalization (AlexNet),
with their gradient rules.

LRN sums squares over a window of `size` channels centred on each channel, as ONNX defines it:
from c - floor((size-1)/2) to c + ceil((size-1)/2) (PyTorch puts the odd extra channel before,
not after; the two agree for the odd sizes every published network uses).

ONNX mapping (checked against ONNX Runtime in tests/ops/test_ops_vs_onnxruntime.py):
- batchnorm = BatchNormalization (inference: running statistics), epsilon = eps.
- groupnorm = GroupNormalization of opset 21 (scale and bias per channel, as here and in
  PyTorch; opset 18's version took them per group).
- instance_norm = InstanceNormalization(epsilon = eps), scale and bias per channel.
- lrn = LRN(size, alpha, beta, bias = k). ONNX Runtime rejects even sizes; for those the tests
  use the spec's window written as a loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..kernels.backward import (
    batch_stat_grad_kernel,
    batch_stat_kernel,
    batchnorm_train_kernel,
    bn_channel_grad_kernel,
    bn_grad_input_kernel,
    bn_grad_param_kernel,
    bn_grad_sums_kernel,
    bn_input_grad_kernel,
    running_update_kernel,
)
from ..kernels.common import Sizes
from ..kernels.elementwise import (
    channel_affine_kernel,
    groupnorm_input_grad_kernel,
    groupnorm_kernel,
    groupnorm_weight_grad_kernel,
    lrn_blocked_kernel,
    lrn_grad_kernel,
    lrn_kernel,
)
from ..kernels.kernel_ir import Expr
from ..types import TensorType
from . import (
    EPS32,
    EPS64,
    Attr,
    AttrError,
    BoundCtx,
    LoweringError,
    OpDef,
    ParamSpec,
    ShapeError,
    as_float,
    as_int,
    elementwise_layouts,
    get_op,
    no_macs,
    register,
    same_shape,
)
from .lowering import lower_elementwise, operand_arrays


def _channels(in_types: list[TensorType], op: str) -> int:
    x = in_types[0]
    if x.rank not in (1, 3):
        raise ShapeError(f"{op} needs a channels x height x width or a feature input, got {x}")
    return x.channels


def _bn_canonicalize(attrs, in_types):
    _channels(in_types, "batchnorm")
    eps = as_float(attrs["eps"], "eps")
    if eps <= 0:
        raise AttrError(f"eps must be positive, got {eps}", "eps")
    return {"eps": eps, "momentum": as_float(attrs["momentum"], "momentum")}


def _bn_params(attrs, in_types):
    c = _channels(in_types, "batchnorm")
    return [ParamSpec("weight", (c,), "ones"), ParamSpec("bias", (c,), "zeros"),
            ParamSpec("running_mean", (c,), "zeros", trainable=False),
            ParamSpec("running_var", (c,), "ones", trainable=False)]


def _channel_view(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def batchnorm_scale_shift(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as one affine map per channel: ``y = x * scale + shift`` with
    ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale`` (float64). The one
    place this algebra is written: the reference, the folding into a convolution and the
    standalone kernel's constants all use it."""
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _bn_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    scale, shift = batchnorm_scale_shift(*inputs[1:5], attrs["eps"])
    return x * _channel_view(scale, x.ndim) + _channel_view(shift, x.ndim)


def _bn_bound(ctx: BoundCtx):
    """The kernel computes ``x * scale + shift`` with both rounded to float32: a relative
    EPS32 in the scale and in the product (2 EPS32 |x scale|), one in the shift and one in the
    sum; an input error is scaled by |scale|."""
    x = ctx.inputs[0]
    scale, shift = (_channel_view(v, x.ndim) for v in
                    batchnorm_scale_shift(*ctx.inputs[1:5], ctx.attrs["eps"]))
    return ctx.err_in * np.abs(scale) + EPS32 * (
        2 * np.abs(x * scale) + np.abs(shift) + np.abs(ctx.out))


def _params_match(in_types, attrs, op):
    c = _channels(in_types, op)
    for t in in_types[1:]:
        if t.shape != (c,):
            raise ShapeError(f"{op}: parameter of shape {t} for {c} channels")
    return in_types[0]


def _bn_padded(channels: int, storage) -> int:
    """Constants of a standalone batch norm's kernel: one per channel, or whole vectors of the
    channel-blocked storage it runs over (zeros past the channels: the padding lanes)."""
    return channels if storage is None else -(-channels // storage.lanes) * storage.lanes


def _bn_pack_rule(graph, node, x_store, y_store):
    """``bn_scale_shift`` over the statistics: the kernel's scale and shift."""
    channels = node.type.shape[0]
    return "bn_scale_shift", list(node.inputs[1:5]), {
        "eps": node.attrs["eps"], "padded": _bn_padded(channels, x_store)}


def _lower_bn(ctx, node):
    """A batch norm not folded into a producer: one multiply-add per element with the scale
    and shift of ``batchnorm_scale_shift`` (the ``bn_scale_shift`` node, its last input,
    ``packed``), activations fused."""

    source = ctx.storage(ctx.tensor_inputs[0])
    padded = _bn_padded(node.type.shape[0], source)
    packed = ctx.graph.node(node.inputs[-1])
    if not node.attrs.get("packed") or packed.attrs.get("padded") != padded:
        raise LoweringError(f"{ctx.kname}: its scale and shift are not packed for its kernel "
                            f"({padded} channels)")

    def pack(values):
        flat = values[packed.id]
        return {"c_scale": flat[:padded], "c_shift": flat[padded:]}

    if source is not None:  # NCHW8c in and out (the layout rule)

        return lower_elementwise(ctx, node, "affine", pack=pack)
    sz = Sizes()
    k = channel_affine_kernel(ctx.kname, ctx.in_shapes[0], ctx.epilogue, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values, pack=pack)


def _scale_shift_reference(inputs, attrs):
    scale, shift = batchnorm_scale_shift(*inputs, attrs["eps"])
    padded = np.zeros((2, attrs["padded"]))
    padded[0, :scale.size], padded[1, :shift.size] = scale, shift
    return padded.ravel()


register(OpDef(
    name="bn_scale_shift", family="norm", signature=(),
    infer=lambda ts, a: ts[0].with_shape(2 * a["padded"]), reference=_scale_shift_reference,
    macs=no_macs, arity=4, internal=True, new_activations=False, made_for_user=True,
    doc="a standalone batch norm's scale, then shift (batchnorm_scale_shift), each padded "
        "with zeros to the channels its kernel reads"))


register(OpDef(
    name="batchnorm", family="norm",
    signature=(Attr("eps", "float", 1e-5), Attr("momentum", "float", 0.1)),
    canonicalize=_bn_canonicalize, params=_bn_params,
    infer=lambda ts, a: _params_match(ts, a, "batchnorm"),
    reference=_bn_reference, macs=no_macs, aliases=("batch_norm", "bn"), new_activations=False,
    lower=lambda ctx, node: _lower_bn(ctx, node), takes_epilogue="unary", inplace=True,
    pack=_bn_pack_rule,
    layout_rule=elementwise_layouts, error_bound=_bn_bound,
    doc="batch normalization with running statistics (inference form)",
))


def _gn_canonicalize(attrs, in_types):
    c = _channels(in_types, "groupnorm")
    g = as_int(attrs["groups"], "groups", 1)
    if c % g:
        raise AttrError(f"{c} channels are not divisible by groups={g}", "groups")
    return {"groups": g, "eps": as_float(attrs["eps"], "eps")}


def group_normalized(x: np.ndarray, groups: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(xhat, rstd) of group norm, each ``[N, groups, values per group]``: every group of each
    sample less its mean, times rstd = 1 / sqrt(its biased variance + eps)."""
    xg = np.asarray(x, np.float64).reshape(x.shape[0], groups, -1)
    rstd = 1.0 / np.sqrt(xg.var(axis=2, keepdims=True) + eps)
    return (xg - xg.mean(axis=2, keepdims=True)) * rstd, rstd


def _gn_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    y = group_normalized(x, attrs["groups"], attrs["eps"])[0].reshape(x.shape)
    return y * _channel_view(inputs[1], x.ndim) + _channel_view(inputs[2], x.ndim)


def _gn_bound(ctx: BoundCtx, groups: int | None = None):
    """Mean, variance (two passes) and the per-channel affine map are float64 in the kernel
    (``groupnorm_kernel``), the result is rounded once to float32: ``EPS32 |y|`` plus float64
    rounding of M-term sums (M = channels per group x H x W), amplified by gamma / sigma."""
    x = ctx.inputs[0]
    n, g = x.shape[0], ctx.attrs["groups"] if groups is None else groups
    xg = x.reshape(n, g, -1)
    rstd = 1.0 / np.sqrt(xg.var(axis=2, keepdims=True) + ctx.attrs["eps"])
    scale = np.abs(xg).mean(axis=2, keepdims=True) * rstd  # |mean| / sigma bounds
    spread = ((np.abs(xg - xg.mean(axis=2, keepdims=True)) * rstd + scale)
              .reshape(x.shape) * np.abs(_channel_view(ctx.inputs[1], x.ndim)))
    m = xg.shape[2]
    return EPS32 * np.abs(ctx.out) + 4 * (m + 8) * EPS64 * (
        spread + np.abs(_channel_view(ctx.inputs[2], x.ndim)))


def _lower_gn(ctx, node):

    w, b = ctx.param_inputs
    sz = Sizes()
    k = groupnorm_kernel(ctx.kname, ctx.in_shapes[0], node.attrs["groups"], node.attrs["eps"],
                         ctx.comment, sz=sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values,
                       pack=lambda values: {"c_weight": values[w], "c_bias": values[b]})


register(OpDef(
    name="groupnorm", family="norm",
    signature=(Attr("groups", "int"), Attr("eps", "float", 1e-5)),
    canonicalize=_gn_canonicalize,
    params=lambda a, ts: [ParamSpec("weight", (ts[0].channels,), "ones"),
                          ParamSpec("bias", (ts[0].channels,), "zeros")],
    infer=lambda ts, a: _params_match(ts, a, "groupnorm"),
    reference=_gn_reference, macs=no_macs, aliases=("group_norm",), new_activations=False,
    lower=lambda ctx, node: _lower_gn(ctx, node), error_bound=_gn_bound,
    doc="normalize each group of channels per sample, then scale and shift",
))


# -- instance norm: group norm with one channel per group ----------------------------------------
# ONNX InstanceNormalization(x, scale, B, epsilon): per sample and channel, the mean and the
# (biased) variance over the spatial axes, then the channel's scale and shift. It is group norm
# with as many groups as channels, so the reference and the kernel are group norm's. The scale
# and shift always exist, as in ONNX; PyTorch's InstanceNorm2d has none by default
# (affine=False), which is this op with its initial weights (1 and 0). Statistics are always
# the sample's own (PyTorch's default track_running_stats=False).


def _in_canonicalize(attrs, in_types):
    x = in_types[0]
    if x.rank != 3:
        raise ShapeError(f"instance_norm needs a channels x height x width input (it "
                         f"normalizes each channel over its pixels), got {x}")
    eps = as_float(attrs["eps"], "eps")
    if eps <= 0:
        raise AttrError(f"eps must be positive, got {eps}", "eps")
    return {"eps": eps}


def _in_reference(inputs, attrs):
    return _gn_reference(inputs, {"groups": inputs[0].shape[1], "eps": attrs["eps"]})


def _lower_in(ctx, node):
    """Group norm's kernel with a group per channel: one parallel iteration per (image,
    channel) plane, two float64 passes for the mean and variance; activations fused."""

    w, b = ctx.param_inputs
    shape = ctx.in_shapes[0]
    sz = Sizes()
    k = groupnorm_kernel(ctx.kname, shape, shape[0], node.attrs["eps"], ctx.comment,
                         epilogue=ctx.epilogue, sz=sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values,
                       pack=lambda values: {"c_weight": values[w], "c_bias": values[b]})


register(OpDef(
    name="instance_norm", family="norm",
    signature=(Attr("eps", "float", 1e-5),),
    canonicalize=_in_canonicalize,
    params=lambda a, ts: [ParamSpec("weight", (ts[0].channels,), "ones"),
                          ParamSpec("bias", (ts[0].channels,), "zeros")],
    infer=lambda ts, a: _params_match(ts, a, "instance_norm"),
    reference=_in_reference, macs=no_macs, aliases=("instancenorm",), new_activations=False,
    lower=_lower_in, takes_epilogue="unary",
    error_bound=lambda ctx: _gn_bound(ctx, groups=ctx.inputs[0].shape[1]),  # group norm's kernel
    doc="normalize each channel of each sample over its pixels, then scale and shift",
))


def _lrn_canonicalize(attrs, in_types):
    if in_types[0].rank != 3:
        raise ShapeError(f"lrn needs a channels x height x width input, got {in_types[0]}")
    return {"size": as_int(attrs["size"], "size", 1), "alpha": as_float(attrs["alpha"], "alpha"),
            "beta": as_float(attrs["beta"], "beta"), "k": as_float(attrs["k"], "k")}


def _channel_window_sum(v: np.ndarray, before: int, after: int) -> np.ndarray:
    """sum of v over channels c - before .. c + after for each channel c (zeros past the
    ends)."""
    padded = np.pad(v, ((0, 0), (before, after), (0, 0), (0, 0)))
    c = v.shape[1]
    return sum(padded[:, i:i + c] for i in range(before + after + 1))


def _lrn_divisor(x: np.ndarray, attrs) -> np.ndarray:
    """D = k + alpha / size * (sum of x^2 over the window of each channel); y = x / D^beta."""
    size = attrs["size"]
    window = _channel_window_sum(x * x, (size - 1) // 2, size // 2)
    return attrs["k"] + attrs["alpha"] / size * window


def _lrn_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    return x / _lrn_divisor(x, attrs) ** attrs["beta"]


def _lower_lrn(ctx, node):

    a = node.attrs
    window = (a["size"], a["alpha"], a["beta"], a["k"])
    source = ctx.storage(ctx.tensor_inputs[0])
    if source is not None:  # NCHW8c or NCHW16c in and out (the layout rule)
        c, h, w = ctx.out_shape
        ints = {"C": c, "C8": -(-c // source.lanes), "P": h, "Q": w}
        ints.update(zip(("XB", "XH", "XW", "XT", "XL"), source.ints()))
        ints.update(zip(("YB", "YH", "YW", "YT", "YL"), ctx.out_storage.ints()))
        k = lrn_blocked_kernel(ctx.kname, *window, ctx.comment, source.lanes, source.nhwc)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=ints)
    sz = Sizes()
    k = lrn_kernel(ctx.kname, ctx.in_shapes[0], *window, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="lrn", family="norm",
    signature=(Attr("size", "int", 5), Attr("alpha", "float", 1e-4),
               Attr("beta", "float", 0.75), Attr("k", "float", 1.0)),
    canonicalize=_lrn_canonicalize, infer=same_shape, reference=_lrn_reference, macs=no_macs,
    lower=lambda ctx, node: _lower_lrn(ctx, node), layout_rule=elementwise_layouts,
    # the vector kernel (kernels/elementwise.lrn_blocked_kernel): float32 sum of `size`
    # squares (positive: a relative `size` EPS32), alpha / size rounded and the fused
    # multiply-add (2 more), raised to beta (scales the relative error by beta) with square
    # roots and a product (3.5 EPS32 for beta = 0.75), the division (1). The float64 `pow`
    # path of the other kernels stays well inside it.
    error_bound=lambda ctx: EPS32 * np.abs(ctx.out) * (
        abs(ctx.attrs["beta"]) * (ctx.attrs["size"] + 2) + 5),
    aliases=("local_response_norm",),
    doc="local response normalization across channels (AlexNet)",
))


# -- derived parameters of batch-norm folding (parameter-time ops, not in the DSL) -----------
# conv(x, w) + b -> batchnorm(gamma, beta, mean, var)
#   =>  conv(x, w * scale) + (b * scale + shift)        (scale, shift: batchnorm_scale_shift)
# The fold pass (compiler/passes/fold_batchnorm.py) inserts these nodes; the executor evaluates
# them in float64 whenever parameters are set, so loading new weights re-folds them.


def _bn_fold_weight_reference(inputs, attrs):
    w, gamma, var = (np.asarray(v, np.float64) for v in inputs)
    scale, _ = batchnorm_scale_shift(gamma, np.zeros_like(gamma), np.zeros_like(gamma), var,
                                     attrs["eps"])
    return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))


def _bn_fold_bias_reference(inputs, attrs):
    scale, shift = batchnorm_scale_shift(*inputs[:4], attrs["eps"])
    bias = np.asarray(inputs[4], np.float64) if len(inputs) > 4 else 0.0
    return bias * scale + shift


def _fold_infer(in_types, attrs, op):
    """Every statistic (and a bias) has one value per output channel of the result."""
    k = in_types[0].shape[0]
    if any(t.shape != (k,) for t in in_types[1:]):
        raise ShapeError(f"{op}: per-channel inputs {', '.join(map(str, in_types[1:]))} do not "
                         f"match {k} output channels")
    return in_types[0]


register(OpDef(
    name="bn_fold_weight", family="norm", signature=(Attr("eps", "float"),),
    infer=lambda ts, a: _fold_infer(ts, a, "bn_fold_weight"),
    reference=_bn_fold_weight_reference, macs=no_macs, arity=3, internal=True,
    new_activations=False,
    doc="w * gamma / sqrt(var + eps) per output channel (batch norm folded into a weight)"))
register(OpDef(
    name="bn_fold_bias", family="norm", signature=(Attr("eps", "float"),),
    infer=lambda ts, a: _fold_infer(ts, a, "bn_fold_bias"), reference=_bn_fold_bias_reference,
    macs=no_macs, arity=None, internal=True, new_activations=False,
    doc="b * scale + beta - mean * scale (batch norm folded into a bias)"))


# -- derived parameters of batch-norm folding into the *following* layer ---------------------
# batchnorm(x) -> conv(w, b, groups g, no padding)   (or dense: one group, no window)
#   =>  conv(x, w') + b',   w'[o, c, ...] = w[o, c, ...] * scale[ch(o, c)],
#                           b'[o] = b[o] + sum_{c, ...} w[o, c, ...] * shift[ch(o, c)]
# where ch(o, c) = (o // (K / g)) * (C / g) + c is the input channel that weight row o, column c
# reads (compiler/passes/fold_batchnorm_into_consumer.py inserts these nodes).


def _input_channels(w: np.ndarray, groups: int) -> np.ndarray:
    """ch(o, c) for every (output channel, input column) of ``w`` [K, C/g, ...], shaped
    [K, C/g] + (1,) * window rank, to broadcast against ``w``."""
    k, cg = w.shape[:2]
    ch = (np.arange(k) // (k // groups))[:, None] * cg + np.arange(cg)[None, :]
    return ch.reshape(ch.shape + (1,) * (w.ndim - 2))


def _bn_fold_input_weight_reference(inputs, attrs):
    w, gamma, var = (np.asarray(v, np.float64) for v in inputs)
    scale, _ = batchnorm_scale_shift(gamma, np.zeros_like(gamma), np.zeros_like(gamma), var,
                                     attrs["eps"])
    return w * scale[_input_channels(w, attrs["groups"])]


def _bn_fold_input_bias_reference(inputs, attrs):
    w = np.asarray(inputs[0], np.float64)
    _, shift = batchnorm_scale_shift(*inputs[1:5], attrs["eps"])
    contribution = (w * shift[_input_channels(w, attrs["groups"])]).reshape(w.shape[0], -1)
    bias = np.asarray(inputs[5], np.float64) if len(inputs) > 5 else 0.0
    return bias + contribution.sum(axis=1)


def _fold_input_infer(in_types, attrs, op):
    """The statistics have one value per input channel the weight reads; the bias one per
    output channel."""
    w = in_types[0].shape
    channels = w[1] * attrs["groups"]
    stats = in_types[1:3] if op == "bn_fold_input_weight" else in_types[1:5]
    if any(t.shape != (channels,) for t in stats) or \
            any(t.shape != (w[0],) for t in in_types[1 + len(stats):]):
        raise ShapeError(f"{op}: inputs {', '.join(map(str, in_types[1:]))} do not match a "
                         f"weight {in_types[0]} reading {channels} channels")
    return in_types[0] if op == "bn_fold_input_weight" else in_types[0].with_shape(w[0])


register(OpDef(
    name="bn_fold_input_weight", family="norm",
    signature=(Attr("eps", "float"), Attr("groups", "int", 1)),
    infer=lambda ts, a: _fold_input_infer(ts, a, "bn_fold_input_weight"),
    reference=_bn_fold_input_weight_reference, macs=no_macs, arity=3, internal=True,
    new_activations=False,
    doc="w * gamma / sqrt(var + eps) per input channel (batch norm folded into the next layer)"))
register(OpDef(
    name="bn_fold_input_bias", family="norm",
    signature=(Attr("eps", "float"), Attr("groups", "int", 1)),
    infer=lambda ts, a: _fold_input_infer(ts, a, "bn_fold_input_bias"),
    reference=_bn_fold_input_bias_reference, macs=no_macs, arity=None, internal=True,
    new_activations=False,
    doc="b + sum of w * (beta - mean * scale) (batch norm folded into the next layer's bias)"))


# -- training mode --------------------------------------------------------------------------------
# In a training graph batch norm normalizes with the batch's statistics, as PyTorch's train mode
# (``batchnorm``'s training form):
#
#     mean = batch_mean(x), var = batch_var(x)       (per channel over N, H, W; var biased)
#     y = batchnorm_train(x, gamma, beta, mean, var) (the inference algebra with these)
#     update:<running_mean> = (1 - momentum) running_mean + momentum mean
#     update:<running_var>  = (1 - momentum) running_var + momentum var M / (M - 1)
#
# with M = N x H x W values per channel (the running variance takes the unbiased estimate).
# The statistics are ops of their own, each with its own gradient, so the chain rule composes
# the batch-norm backward: batchnorm_train's partial derivatives for x, gamma, beta, mean and
# var (mean and var as if independent inputs), then the statistics' own:
#
#     d batch_mean / dx = dmean / M,   d batch_var / dx = dvar 2 (x - mean(x)) / M
#
# and the three meet at x, summed: gamma rstd (dy - sum(dy) / M - xhat sum(dy xhat) / M), the
# closed form (checked against PyTorch in tests/training). Why not one fused op from the
# start: the batch's statistics are needed anyway as values of the graph (the running updates
# read them) and every op keeps a true derivative of its own (checked alone by finite
# differences). At -O1 and -O2 the ``fuse_batchnorm_backward`` pass then rewrites the pieces
# into the closed form's three ops below (one pass of sums, one for dx).


def _stat_axes(x: np.ndarray) -> tuple[int, ...]:
    """Every axis but the channels' (1): the batch and the pixels."""
    return (0,) + tuple(range(2, x.ndim))


def batch_count(x: np.ndarray) -> int:
    """M: the values per channel in a batch (N x H x W); PyTorch refuses one."""
    m = x.size // x.shape[1]
    if m < 2:
        raise ShapeError(f"batchnorm in training needs more than one value per channel, got "
                         f"a batch of {x.shape[0]} x {'x'.join(map(str, x.shape[2:])) or '1'}")
    return m


def _stat_infer(in_types, attrs, op):
    x = in_types[0]
    _channels(in_types, op)
    if not x.batched:
        raise ShapeError(f"{op} reads a batch of values, got {x}")
    if op == "batch_var" and (len(in_types) != 2 or in_types[1].shape != (x.channels,)
                              or in_types[1].batched):
        raise ShapeError(f"batch_var reads x and the batch mean of its {x.channels} channels, "
                         f"got {', '.join(map(str, in_types))}")
    return TensorType((x.channels,), x.dtype, batched=False)


def _batch_mean_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    batch_count(x)
    return x.mean(axis=_stat_axes(x))


def _batch_var_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    batch_count(x)
    return x.var(axis=_stat_axes(x))


def _batch_mean_bound(ctx: BoundCtx):
    """A float32 sum of M terms, divided by M."""
    x = ctx.inputs[0]
    return (x.size // x.shape[1] + 2) * EPS32 * np.abs(x).mean(axis=_stat_axes(x))


def _batch_var_bound(ctx: BoundCtx):
    """The kernel's one pass of float64 sums about the float32 mean m it reads (the shift):
    d = x - m (exact, or within EPS64 |d|), s1 = sum d, s2 = sum d^2, var = s2 / M - (s1 /
    M)^2. Each sum of M terms is within about M EPS64 of its terms' absolute sum, and |s1| / M
    and sum |d| / M are at most sqrt(s2 / M), so var is within (3 M + 10) EPS64 s2 / M before
    the float32 store (EPS32 |var|). s2 / M = var + (mean - m)^2, m within float32 rounding
    of the mean: no cancellation however far the values lie from 0."""
    x, shift = ctx.inputs[0], _channel_view(ctx.inputs[1], ctx.inputs[0].ndim)
    m = x.size // x.shape[1]
    second_moment = ((x - shift) ** 2).mean(axis=_stat_axes(x))
    return EPS32 * np.abs(ctx.out) + (3 * m + 10) * EPS64 * second_moment


def _batch_stat_gradient(d):
    """dx of the statistic; batch_var's second input, the mean it is taken about, moves
    nothing (the variance of x is the same about any shift)."""
    dx = d.add("batch_stat_grad", [d.input(0), d.dy], {"of": d.node.op[len("batch_"):]})
    return [dx] + [None] * (len(d.node.inputs) - 1)


def _batch_stat_grad_reference(inputs, attrs):
    """dx = dmean / M, or dvar 2 (x - mean(x)) / M, per channel."""
    x, dstat = (np.asarray(v, np.float64) for v in inputs)
    m = batch_count(x)
    per_channel = _channel_view(dstat, x.ndim)
    if attrs["of"] == "mean":
        return np.broadcast_to(per_channel / m, x.shape).copy()
    centred = x - x.mean(axis=_stat_axes(x), keepdims=True)
    return 2.0 * centred * per_channel / m


def _batch_stat_grad_infer(in_types, attrs):
    x, dstat = in_types
    if dstat.shape != (x.channels,) or dstat.batched:
        raise ShapeError(f"batch_stat_grad: gradient {dstat} for the statistics of {x}")
    return x


def _normalized_shape(ctx) -> tuple[int, ...]:
    """The per-image shape of the normalized input x (every training op's first input but
    batchnorm_train's own gradient for x, whose dy has that shape too)."""
    return ctx.graph.node(ctx.node.inputs[0]).type.shape


def _lower_batch_stat(ctx, node):
    """One parallel iteration per channel over every image (float64 sums; on a GPU a block of
    threads per channel)."""
    sz = Sizes()
    if node.op == "batch_stat_grad":
        k = batch_stat_grad_kernel(ctx.kname, _normalized_shape(ctx), node.attrs["of"],
                                   ctx.comment, sz)
    else:
        k = batch_stat_kernel(ctx.kname, _normalized_shape(ctx), node.op[len("batch_"):],
                              ctx.comment, sz, blocks=ctx.backend.thread_blocks)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _lower_bn_training(ctx, node):
    """batchnorm_train and its gradients: parameters as packed constants, statistics and
    activations as values (``operand_arrays``)."""
    sz = Sizes()
    names, pack = operand_arrays(ctx)
    shape, a = _normalized_shape(ctx), node.attrs
    if node.op == "batchnorm_train":
        k = batchnorm_train_kernel(ctx.kname, shape, a["eps"], names, ctx.comment, sz,
                                   ctx.epilogue, blocks=ctx.backend.thread_blocks)
    elif node.op == "bn_input_grad":
        k = bn_input_grad_kernel(ctx.kname, shape, a["eps"], names, ctx.comment, sz)
    elif node.op == "bn_channel_grad":
        k = bn_channel_grad_kernel(ctx.kname, shape, a["eps"], a["wrt"], names, ctx.comment, sz)
    elif node.op == "bn_grad_sums":
        k = bn_grad_sums_kernel(ctx.kname, shape, names, ctx.comment, sz, _gate_rule(node),
                                blocks=ctx.backend.thread_blocks)
    elif node.op == "bn_grad_input":
        k = bn_grad_input_kernel(ctx.kname, shape, a["eps"], names, ctx.comment, sz,
                                 _gate_rule(node), blocks=ctx.backend.thread_blocks)
    else:  # running_update: x (its third input) is read for its size only
        k = running_update_kernel(ctx.kname, ctx.graph.node(node.inputs[2]).type.shape,
                                  a["momentum"], a["unbiased"], names[:2], ctx.comment, sz,
                                  a["replicas"])
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values, pack=pack)


for _of, _ref, _bound in (("mean", _batch_mean_reference, _batch_mean_bound),
                          ("var", _batch_var_reference, _batch_var_bound)):
    register(OpDef(
        name=f"batch_{_of}", family="norm", signature=(),
        infer=lambda ts, a, op=f"batch_{_of}": _stat_infer(ts, a, op), reference=_ref,
        macs=no_macs, pass_made=True, new_activations=False, gradient=_batch_stat_gradient,
        error_bound=_bound, lower=_lower_batch_stat,
        doc=f"the {'mean' if _of == 'mean' else 'biased variance'} of each channel over the "
            "batch and its pixels (batch norm in training)" + (
                "; its second input is the batch mean, the shift of its one pass of sums"
                if _of == "var" else "")))

register(OpDef(
    name="batch_stat_grad", family="norm", signature=(Attr("of", "choice", choices=("mean",
                                                                                    "var")),),
    infer=_batch_stat_grad_infer, reference=_batch_stat_grad_reference, macs=no_macs, arity=2,
    pass_made=True, backward=True, new_activations=False, lower=_lower_batch_stat,
    error_bound=lambda ctx: 6 * EPS32 * np.abs(ctx.out) + 4 * EPS32 * np.abs(
        ctx.inputs[0]) * np.abs(_channel_view(ctx.inputs[1], ctx.inputs[0].ndim)) / max(
        1, ctx.inputs[0].size // ctx.inputs[0].shape[1]),
    doc="the input gradient of batch_mean or batch_var (`of`) from the statistic's gradient"))


def _bn_training_form(graph, node, updates: dict[int, int]) -> None:
    """batchnorm -> batchnorm_train over batch_mean and batch_var of its input, and the running
    statistics' updates (the section comment)."""
    x, gamma, beta, running_mean, running_var = node.inputs[:5]
    layer = node.name or f"%{node.id}"

    def add(op: str, inputs: list[int], attrs: dict, what: str) -> int:
        return graph.add(op, inputs, attrs, name=f"{layer}.{what}", span=node.span).id

    mean = add("batch_mean", [x], {}, "batch_mean")
    var = add("batch_var", [x, mean], {}, "batch_var")  # one pass about the mean
    train = graph.add("batchnorm_train", [x, gamma, beta, mean, var],
                      {"eps": node.attrs["eps"]}, name=node.name, span=node.span)
    graph.replace_all_uses(node.id, train.id)
    graph.erase(node.id)
    for param, stat, unbiased in ((running_mean, mean, False), (running_var, var, True)):
        updates[param] = add("running_update", [updates.get(param, param), stat, x],
                             {"momentum": node.attrs["momentum"], "unbiased": unbiased,
                              "replicas": 1},
                             "update_" + graph.node(param).name.rsplit(".", 1)[-1])


get_op("batchnorm").training_form = _bn_training_form


def _bn_train_infer(in_types, attrs):
    x, *_, mean, var = in_types
    if mean.batched or var.batched:
        raise ShapeError(f"batchnorm_train: statistics {mean} and {var} must be the batch's")
    return _params_match(in_types, attrs, "batchnorm_train")


def _bn_train_gradient(d):
    """The partial derivatives of y = (x - mean) rstd gamma + beta, rstd = (var + eps)^-1/2:
    dx = dy gamma rstd, dgamma = sum dy xhat, dbeta = sum dy, dmean = -gamma rstd sum dy,
    dvar = -gamma rstd^3 / 2 sum dy (x - mean) (sums over the batch and the pixels)."""
    x, gamma, _, mean, var = d.node.inputs
    eps = {"eps": d.attrs["eps"]}
    grads: list[int | None] = [None] * 5
    if d.needs(0):
        grads[0] = d.add("bn_input_grad", [d.dy, gamma, var], eps, what="input")
    for index, wrt in ((1, "weight"), (3, "mean"), (4, "var")):
        if d.needs(index):
            grads[index] = d.add("bn_channel_grad", [x, gamma, mean, var, d.dy],
                                 {**eps, "wrt": wrt}, what=wrt)
    if d.needs(2):
        grads[2] = d.add("channel_sum", [d.dy], what="bias")
    return grads


# The partial derivatives are the same whether mean and var are the batch's statistics or the
# running ones: the inference form differentiates by the same rule (the explanations
# differentiate the network as it classifies; training replaces it by batchnorm_train first).
get_op("batchnorm").gradient = _bn_train_gradient

register(OpDef(
    name="batchnorm_train", family="norm", signature=(Attr("eps", "float"),),
    infer=_bn_train_infer, reference=_bn_reference, macs=no_macs, arity=5, pass_made=True,
    new_activations=False, gradient=_bn_train_gradient, error_bound=_bn_bound,
    lower=_lower_bn_training, takes_epilogue="unary",
    doc="batch normalization with the batch's statistics (batchnorm's training form)"))


def _bn_input_grad_reference(inputs, attrs):
    dy, gamma, var = (np.asarray(v, np.float64) for v in inputs)
    return dy * _channel_view(gamma / np.sqrt(var + attrs["eps"]), dy.ndim)


def _bn_channel_grad_reference(inputs, attrs):
    x, gamma, mean, var, dy = (np.asarray(v, np.float64) for v in inputs)
    rstd = 1.0 / np.sqrt(var + attrs["eps"])
    axes = _stat_axes(x)
    centred_sum = (dy * (x - _channel_view(mean, x.ndim))).sum(axis=axes)
    if attrs["wrt"] == "weight":
        return centred_sum * rstd
    if attrs["wrt"] == "mean":
        return -gamma * rstd * dy.sum(axis=axes)
    return -0.5 * gamma * rstd ** 3 * centred_sum


def _bn_channel_grad_bound(ctx: BoundCtx):
    """A float32 sum of M products per channel, scaled by per-channel factors (a few roundings
    and a square root)."""
    x, gamma, mean, var, dy = ctx.inputs
    m = x.size // x.shape[1]
    rstd = 1.0 / np.sqrt(var + ctx.attrs["eps"])
    axes = _stat_axes(x)
    if ctx.attrs["wrt"] == "mean":  # -gamma rstd sum dy
        return (m + 8) * EPS32 * np.abs(gamma) * rstd * np.abs(dy).sum(axis=axes)
    # sum dy (x - mean), times rstd (weight) or gamma rstd^3 / 2 (var)
    spread = (np.abs(dy) * (np.abs(x) + np.abs(_channel_view(mean, x.ndim)))).sum(axis=axes)
    scale = rstd if ctx.attrs["wrt"] == "weight" else 0.5 * np.abs(gamma) * rstd ** 3
    return (m + 8) * EPS32 * scale * spread


register(OpDef(
    name="bn_input_grad", family="norm", signature=(Attr("eps", "float"),),
    infer=lambda ts, a: ts[0], reference=_bn_input_grad_reference, macs=no_macs, arity=3,
    pass_made=True, backward=True, new_activations=False, lower=_lower_bn_training,
    error_bound=lambda ctx: 6 * EPS32 * np.abs(ctx.out),
    doc="dy gamma / sqrt(var + eps): batchnorm_train's gradient for x, statistics held"))
register(OpDef(
    name="bn_channel_grad", family="norm",
    signature=(Attr("eps", "float"), Attr("wrt", "choice", choices=("weight", "mean", "var"))),
    infer=lambda ts, a: TensorType((ts[0].channels,), batched=False),
    reference=_bn_channel_grad_reference,
    macs=no_macs, arity=5, pass_made=True, backward=True, new_activations=False,
    error_bound=_bn_channel_grad_bound, lower=_lower_bn_training,
    doc="batchnorm_train's gradient for its scale, mean or variance (`wrt`): a per-channel sum "
        "over the batch and the pixels"))


# -- the fused batch-norm backward (``fuse_batchnorm_backward``) ---------------------------------
# The closed form the chain rule composes above, in three ops: one pass over x and dy for both
# sums, one pass for dx, and the parameters' gradients from the sums:
#
#     s0 = sum dy,  s1 = sum dy (x - mean)                        (bn_grad_sums, [2, C])
#     dx = gamma rstd (dy - s0 / M - (x - mean) rstd^2 s1 / M)     (bn_grad_input)
#     dgamma = s1 rstd,  dbeta = s0                                (bn_grad_param)


#: The activations whose gradient the fused batch-norm backward applies as it reads dy (its
#: ``gate``, where that gradient feeds only the batch norm's backward): their derivative at
#: their output is an exact 0/1 mask, so the gated dy equals ``activation_grad``'s value bit
#: for bit and the bounds below hold as they are, with the gated dy.
GATES = ("relu", "relu6")
GATE = Attr("gate", "choice", "none", choices=("none",) + GATES,
            doc="dy is read through this activation's gradient at the last input, the "
                "activation's output (fuse_batchnorm_backward)")


def gated(inputs, attrs) -> list[np.ndarray]:
    """The float64 inputs of a fused batch-norm backward op, dy (the second) read through its
    ``gate``: ``activation_grad``'s own rule at the last input, which is then dropped."""
    values = [np.asarray(v, np.float64) for v in inputs]
    if attrs.get("gate", "none") == "none":
        return values
    *values, y = values
    values[1] = get_op("activation_grad").reference([y, values[1]], {"of": attrs["gate"]})
    return values


def _gate_rule(node) -> Callable[[Expr, Expr], Expr] | None:
    """The gate as the kernels apply it, (y, dy) -> gated dy: ``activation_grad``'s
    epilogue rule."""
    gate = node.attrs.get("gate", "none")
    if gate == "none":
        return None
    rule = get_op("activation_grad").epilogue
    return lambda y, dy: rule(y, {"of": gate}, dy)


def _bn_grad_sums_reference(inputs, attrs):
    x, dy, mean = gated(inputs, attrs)
    axes = _stat_axes(x)
    return np.stack([dy.sum(axis=axes), (dy * (x - _channel_view(mean, x.ndim))).sum(axis=axes)])


def _bn_grad_sums_bound(ctx: BoundCtx):
    """Float32 sums of M terms (products of a difference, for s1)."""
    x, dy, mean = gated(ctx.inputs, ctx.attrs)
    m, axes = x.size // x.shape[1], _stat_axes(x)
    spread = (np.abs(dy) * (np.abs(x) + np.abs(_channel_view(mean, x.ndim)))).sum(axis=axes)
    return (m + 8) * EPS32 * np.stack([np.abs(dy).sum(axis=axes), spread])


def _bn_grad_input_reference(inputs, attrs):
    x, dy, gamma, mean, var, sums = gated(inputs, attrs)
    m = batch_count(x)
    rstd = 1.0 / np.sqrt(var + attrs["eps"])
    centred = x - _channel_view(mean, x.ndim)
    return _channel_view(gamma * rstd, x.ndim) * (
        dy - _channel_view(sums[0] / m, x.ndim)
        - centred * _channel_view(rstd ** 2 * sums[1] / m, x.ndim))


def _bn_grad_input_bound(ctx: BoundCtx):
    """A few float64 operations on float32 values: a few roundings of the largest term."""
    x, dy, gamma, mean, var, sums = gated(ctx.inputs, ctx.attrs)
    m = x.size // x.shape[1]
    rstd = 1.0 / np.sqrt(var + ctx.attrs["eps"])
    terms = np.abs(dy) + _channel_view(np.abs(sums[0]) / m, x.ndim) + np.abs(
        x - _channel_view(mean, x.ndim)) * _channel_view(rstd ** 2 * np.abs(sums[1]) / m, x.ndim)
    return 8 * EPS32 * _channel_view(np.abs(gamma) * rstd, x.ndim) * terms


def _bn_grad_param_reference(inputs, attrs):
    sums = np.asarray(inputs[0], np.float64)
    if attrs["wrt"] == "bias":
        return sums[0]
    return sums[1] / np.sqrt(np.asarray(inputs[1], np.float64) + attrs["eps"])


def _lower_bn_grad_param(ctx, node):
    sz = Sizes()
    names, pack = operand_arrays(ctx)
    k = bn_grad_param_kernel(ctx.kname, node.type.shape[0], node.attrs["eps"],
                             node.attrs["wrt"], names, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values, pack=pack)


register(OpDef(
    name="bn_grad_sums", family="norm", signature=(GATE,),
    infer=lambda ts, a: TensorType((2, ts[0].channels), batched=False),
    reference=_bn_grad_sums_reference, macs=no_macs, arity=None, pass_made=True, backward=True,
    new_activations=False, error_bound=_bn_grad_sums_bound, lower=_lower_bn_training,
    doc="sum dy and sum dy (x - mean) per channel over the batch and the pixels, in one pass "
        "(the fused batch-norm backward; dy through a ReLU's gradient where `gate` says)"))
register(OpDef(
    name="bn_grad_input", family="norm", signature=(Attr("eps", "float"), GATE),
    infer=lambda ts, a: ts[0], reference=_bn_grad_input_reference, macs=no_macs, arity=None,
    pass_made=True, backward=True, new_activations=False, error_bound=_bn_grad_input_bound,
    lower=_lower_bn_training,
    doc="batch norm's whole input gradient in training, through the batch statistics too, "
        "from bn_grad_sums"))
register(OpDef(
    name="bn_grad_param", family="norm",
    signature=(Attr("eps", "float"), Attr("wrt", "choice", choices=("weight", "bias"))),
    infer=lambda ts, a: TensorType((ts[0].shape[1],), batched=False),
    reference=_bn_grad_param_reference, macs=no_macs, arity=None, pass_made=True,
    backward=True, new_activations=False,
    error_bound=lambda ctx: 4 * EPS32 * np.abs(ctx.out), lower=_lower_bn_grad_param,
    doc="batch norm's scale (s1 rstd) or shift (s0) gradient from bn_grad_sums"))


def _running_update_reference(inputs, attrs):
    running, stat, x = (np.asarray(v, np.float64) for v in inputs)
    if attrs["unbiased"]:
        m = batch_count(x) * attrs["replicas"]
        stat = stat * m / (m - 1)
    return (1.0 - attrs["momentum"]) * running + attrs["momentum"] * stat


def _running_update_infer(in_types, attrs):
    running, stat, x = in_types
    if running.shape != stat.shape or running.shape != (x.channels,) or stat.batched:
        raise ShapeError(f"running_update: running statistic {running} and batch statistic "
                         f"{stat} of {x} disagree")
    return stat


register(OpDef(
    name="running_update", family="norm",
    signature=(Attr("momentum", "float"), Attr("unbiased", "bool"), Attr("replicas", "int", 1)),
    infer=_running_update_infer, reference=_running_update_reference, macs=no_macs, arity=3,
    pass_made=True, new_activations=False, lower=_lower_bn_training,
    error_bound=lambda ctx: 6 * EPS32 * (np.abs(ctx.out) + np.abs(ctx.inputs[0])),
    doc="(1 - momentum) running + momentum batch statistic (unbiased: the variance times "
        "M / (M - 1), M the values per channel in `replicas` batches like x, which is read "
        "for M only)"))


# -- group norm, instance norm and LRN gradients --------------------------------------------------
# Group norm, y = xhat gamma + beta with xhat normalized per group of each sample (M values):
#     dxhat = dy gamma,  dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))  (per group)
#     dgamma = sum dy xhat,  dbeta = sum dy   (over the batch and the pixels)
# Instance norm is group norm with a group per channel. LRN, y_c = x_c D_c^-beta with
# D_c = k + alpha / size sum_{c' in window(c)} x_c'^2: x_j is in the windows of the channels c
# from j - after to j + before (the window mirrored), so
#     dx_j = dy_j D_j^-beta - 2 beta alpha / size x_j sum_{c: j in window(c)} dy_c x_c D_c^-beta-1


def _norm_gradient(d, groups: int):
    x, gamma = d.input(0), d.input(1)
    a = {"groups": groups, "eps": d.attrs["eps"]}
    return [d.add("groupnorm_input_grad", [x, gamma, d.dy], a, what="input")
            if d.needs(0) else None,
            d.add("groupnorm_weight_grad", [x, d.dy], a, what="weight") if d.needs(1) else None,
            d.add("channel_sum", [d.dy], what="bias") if d.needs(2) else None]


def _groupnorm_input_grad_reference(inputs, attrs):
    x, gamma, dy = (np.asarray(v, np.float64) for v in inputs)
    xhat, rstd = group_normalized(x, attrs["groups"], attrs["eps"])
    dxhat = (dy * _channel_view(gamma, x.ndim)).reshape(xhat.shape)
    dx = rstd * (dxhat - dxhat.mean(axis=2, keepdims=True) -
                 xhat * (dxhat * xhat).mean(axis=2, keepdims=True))
    return dx.reshape(x.shape)


def _groupnorm_weight_grad_reference(inputs, attrs):
    x, dy = (np.asarray(v, np.float64) for v in inputs)
    xhat = group_normalized(x, attrs["groups"], attrs["eps"])[0].reshape(x.shape)
    return (dy * xhat).sum(axis=_stat_axes(x))


def _group_grad_bound(ctx: BoundCtx):
    """Float32 sums over a group (M values) for the statistics and the means, and over the
    batch and the pixels for the scale's gradient: each a sum's bound over |terms|."""
    x, dy = ctx.inputs[0], ctx.inputs[-1]
    xhat, rstd = group_normalized(x, ctx.attrs["groups"], ctx.attrs["eps"])
    m = xhat.shape[2] + 8
    if len(ctx.inputs) == 2:  # the scale's gradient, per channel
        terms = np.abs(dy * xhat.reshape(x.shape))
        return (m + terms.size // x.shape[1]) * EPS32 * terms.sum(axis=_stat_axes(x))
    dxhat = np.abs(dy * _channel_view(ctx.inputs[1], x.ndim)).reshape(xhat.shape)
    spread = rstd * (dxhat + dxhat.mean(axis=2, keepdims=True) +
                     np.abs(xhat) * (dxhat * np.abs(xhat)).mean(axis=2, keepdims=True))
    return m * EPS32 * spread.reshape(x.shape)


def _lower_group_grad(ctx, node):
    a = node.attrs
    sz = Sizes()
    if node.op == "groupnorm_weight_grad":
        k = groupnorm_weight_grad_kernel(ctx.kname, ctx.in_shapes[0], a["groups"], a["eps"],
                                         ctx.comment, sz)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)
    names, pack = operand_arrays(ctx)
    k = groupnorm_input_grad_kernel(ctx.kname, ctx.in_shapes[0], a["groups"], a["eps"], names,
                                    ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values, pack=pack)


get_op("groupnorm").gradient = lambda d: _norm_gradient(d, d.attrs["groups"])
get_op("instance_norm").gradient = lambda d: _norm_gradient(d, d.type(d.input(0)).channels)

register(OpDef(
    name="groupnorm_input_grad", family="norm",
    signature=(Attr("groups", "int"), Attr("eps", "float")),
    infer=lambda ts, a: ts[0], reference=_groupnorm_input_grad_reference, macs=no_macs,
    arity=3, pass_made=True, backward=True, new_activations=False,
    error_bound=_group_grad_bound, lower=_lower_group_grad,
    doc="the input gradient of group norm (instance norm: a group per channel)"))
register(OpDef(
    name="groupnorm_weight_grad", family="norm",
    signature=(Attr("groups", "int"), Attr("eps", "float")),
    infer=lambda ts, a: TensorType((ts[0].channels,), batched=False),
    reference=_groupnorm_weight_grad_reference, macs=no_macs, arity=2, pass_made=True,
    backward=True, new_activations=False, error_bound=_group_grad_bound,
    lower=_lower_group_grad,
    doc="the scale gradient of group norm: sum of dy xhat over the batch and the pixels"))


def _lrn_gradient(d):
    return [d.add("lrn_grad", [d.input(0), d.dy], dict(d.attrs))]


def _lrn_grad_reference(inputs, attrs):
    x, dy = (np.asarray(v, np.float64) for v in inputs)
    size, beta = attrs["size"], attrs["beta"]
    divisor = _lrn_divisor(x, attrs)
    through = _channel_window_sum(dy * x * divisor ** (-beta - 1), size // 2, (size - 1) // 2)
    return dy * divisor ** -beta - 2 * beta * attrs["alpha"] / size * x * through


get_op("lrn").gradient = _lrn_gradient


def _lower_lrn_grad(ctx, node):
    sz = Sizes()
    k = lrn_grad_kernel(ctx.kname, ctx.in_shapes[0],
                        *(node.attrs[n] for n in ("size", "alpha", "beta", "k")), ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="lrn_grad", family="norm",
    signature=(Attr("size", "int"), Attr("alpha", "float"), Attr("beta", "float"),
               Attr("k", "float")),
    infer=lambda ts, a: ts[0], reference=_lrn_grad_reference, macs=no_macs, arity=2,
    pass_made=True, backward=True, new_activations=False,
    lower=lambda ctx, node: _lower_lrn_grad(ctx, node),
    # the forward's powers and window sums (its bound's analysis), twice, and a difference
    error_bound=lambda ctx: EPS32 * (np.abs(ctx.out) + np.abs(ctx.inputs[1])) * (
        2 * abs(ctx.attrs["beta"]) * (ctx.attrs["size"] + 2) + 12),
    doc="the input gradient of local response normalization"))
