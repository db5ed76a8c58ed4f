"""Normalization: batch norm (inference statistics), group norm, instance norm, and local
response normalization (AlexNet).

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

import numpy as np

from ..kernels.common import Sizes
from ..kernels.elementwise import (
    channel_affine_kernel,
    groupnorm_kernel,
    lrn_blocked_kernel,
    lrn_kernel,
)
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
    no_macs,
    register,
    same_shape,
)
from .lowering import lower_elementwise


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


def _gn_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    n, c = x.shape[:2]
    g = attrs["groups"]
    xg = x.reshape(n, g, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = xg.var(axis=2, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + attrs["eps"])).reshape(x.shape)
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
    k = groupnorm_kernel(ctx.kname, ctx.in_shapes[0], node.attrs["groups"], node.attrs["eps"],
                         ctx.comment)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs,
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
    k = groupnorm_kernel(ctx.kname, shape, shape[0], node.attrs["eps"], ctx.comment,
                         epilogue=ctx.epilogue)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs,
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


def _lrn_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    size = attrs["size"]
    before, after = (size - 1) // 2, size // 2
    sq = np.pad(x * x, ((0, 0), (before, after), (0, 0), (0, 0)))
    c = x.shape[1]
    window = sum(sq[:, i:i + c] for i in range(size))
    return x / (attrs["k"] + attrs["alpha"] / size * window) ** attrs["beta"]


def _lower_lrn(ctx, node):

    a = node.attrs
    window = (a["size"], a["alpha"], a["beta"], a["k"])
    source = ctx.storage(ctx.tensor_inputs[0])
    if source is not None:  # NCHW8c or NCHW16c in and out (the layout rule)
        c, h, w = ctx.out_shape
        ints = {"C8": -(-c // source.lanes), "P": h, "Q": w}
        ints.update(zip(("XB", "XH", "XW", "XT", "XL"), source.ints()))
        ints.update(zip(("YB", "YH", "YW", "YT", "YL"), ctx.out_storage.ints()))
        k = lrn_blocked_kernel(ctx.kname, c, *window, ctx.comment, source.lanes, source.nhwc)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=ints)
    k = lrn_kernel(ctx.kname, ctx.in_shapes[0], *window, ctx.comment)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs)


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
