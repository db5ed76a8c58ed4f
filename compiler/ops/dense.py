"""Fully connected layer: y = x W^T + b, W of shape (out_features, in_features) as in PyTorch.

ONNX: Gemm(x, W, b, transB=1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.backward import dense_weight_grad_kernel
from ..kernels.common import Sizes
from ..kernels.conv_geometry import ConvGeometry
from ..kernels.elementwise import dense_kernel
from ..kernels.gpu_conv import dense_gemm_kernel
from ..types import BLOCKED, PLAIN, TensorType, in_every_blocked_layout
from . import (
    EPS32,
    Attr,
    LoweringError,
    OpDef,
    ParamSpec,
    ShapeError,
    as_bool,
    as_int,
    get_op,
    register,
    sum_bound,
)
from .conv.gradient import implicit_weight_grad_step


def _features(t: TensorType) -> int:
    if t.rank != 1:
        raise ShapeError(f"dense needs a feature vector, got {t}; add `flatten` before it")
    return t.shape[0]


def _canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    _features(in_types[0])
    bias = attrs["bias"]
    return {"out_features": as_int(attrs["out_features"], "out_features", 1),
            "bias": True if isinstance(bias, np.ndarray) else as_bool(bias, "bias")}


def _params(attrs: dict[str, Any], in_types: list[TensorType]) -> list[ParamSpec]:
    n_in, n_out = _features(in_types[0]), attrs["out_features"]
    specs = [ParamSpec("weight", (n_out, n_in), "auto", fan_in=n_in, fan_out=n_out)]
    if attrs["bias"]:
        specs.append(ParamSpec("bias", (n_out,), "zeros"))
    return specs


def _infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    n_in = _features(in_types[0])
    if len(in_types) > 1 and in_types[1].shape != (attrs["out_features"], n_in):
        raise ShapeError(f"dense: weight has shape {in_types[1]}, expected "
                         f"{attrs['out_features']}x{n_in}")
    return in_types[0].with_shape(attrs["out_features"])


def _reference(inputs, attrs):
    y = np.asarray(inputs[0], np.float64) @ np.asarray(inputs[1], np.float64).T
    if len(inputs) > 2:
        y = y + np.asarray(inputs[2], np.float64)
    return y


def _layouts(node, in_types):
    """NCHW features, or a channel-blocked tensor flattened in its storage order (``flatten``
    of channel-blocked storage: the weights are permuted to match, see ``_lower``)."""
    return in_every_blocked_layout(((PLAIN, PLAIN), (BLOCKED, PLAIN)))


def storage_order(shape: tuple[int, ...], storage) -> np.ndarray:
    """Where feature ``c * H * W + h * W + w`` of a ``C x H x W`` tensor lies in its
    channel-blocked storage, flattened (``storage.floats`` per image)."""
    c, h, w = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return storage.index(c, h, w).ravel()


def scatter_weight(weight: np.ndarray, features: tuple[int, ...], storage) -> np.ndarray:
    """A dense weight ``[out, C*H*W]`` over a flattened channel-blocked tensor: each feature's
    column moved to where the feature lies in the storage (``storage.floats`` columns), zero
    elsewhere (halo and padding lanes)."""
    weight = np.asarray(weight)
    scattered = np.zeros((weight.shape[0], storage.floats), weight.dtype)
    scattered[:, storage_order(features, storage)] = weight
    return scattered


def _pack_rule(graph, node, x_store, y_store):
    """Over a flattened blocked tensor the weights are scattered to the features' places
    (``dense_pack``); over a plain one the kernel reads them as they are."""
    if x_store is None:
        return None
    features = graph.node(graph.node(node.inputs[0]).inputs[0]).type.shape
    return "dense_pack", [node.inputs[1]], {"features": tuple(features), "storage": x_store}


def _lower(ctx, node):
    """The dense kernel; weights and bias by value, activations fused. Over a flattened
    blocked tensor it reads every float of the storage (halo and padding lanes are zeros,
    a convolution's padding block finite), the weights scattered to the features' places and
    zero elsewhere (``dense_pack``, the node's last input, ``packed``)."""

    w, *b = ctx.param_inputs
    x = ctx.tensor_inputs[0]
    storage = ctx.storage(x)
    n_in = ctx.in_shapes[0][0] if storage is None else storage.floats
    sz = Sizes()
    if ctx.backend.thread_blocks and storage is None:  # a GPU's: the tiled GEMM
        k = dense_gemm_kernel(ctx.kname, bool(b), ctx.epilogue, ctx.comment)
        sz.values.update(NI=n_in, NO=node.attrs["out_features"])
    else:
        k = dense_kernel(ctx.kname, n_in, node.attrs["out_features"], bool(b), ctx.epilogue,
                         ctx.comment, sz)
    weight = w
    if storage is not None:
        packed = ctx.graph.node(node.inputs[-1])
        if not node.attrs.get("packed") or packed.attrs.get("storage") != storage:
            raise LoweringError(f"{ctx.kname}: the weights over its blocked input "
                                f"{storage} are not packed for it")
        weight = packed.id

    def pack(values):
        return {"c_w": values[weight], **({"c_b": values[b[0]]} if b else {})}
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values, pack=pack)


def _dense_pack_infer(in_types, attrs):
    return in_types[0].with_shape(in_types[0].shape[0], attrs["storage"].floats)


def _dense_pack_reference(inputs, attrs):
    return scatter_weight(np.asarray(inputs[0]), attrs["features"], attrs["storage"])


register(OpDef(
    name="dense_pack", family="dense", signature=(), infer=_dense_pack_infer,
    reference=_dense_pack_reference, macs=lambda ts, out, a: 0, internal=True,
    new_activations=False, made_for_user=True, moves_values=True,
    doc="a dense weight scattered over the channel-blocked storage of its flattened input"))


register(OpDef(
    name="dense", family="dense", lower=_lower, takes_epilogue="unary",
    signature=(Attr("out_features", "int"), Attr("bias", "bool", True),
               Attr("weights", "tensor", None)),
    canonicalize=_canonicalize, params=_params, infer=_infer, reference=_reference,
    macs=lambda ts, out, a: _features(ts[0]) * a["out_features"],
    aliases=("linear", "fc"), doc="fully connected layer", layout_rule=_layouts,
    pack=_pack_rule,
    error_bound=sum_bound(),  # in_features products per output (macs), bias, weights
))


def _conv_weight_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    k, c, r, s = in_types[0].shape
    if (r, s) != (1, 1):
        raise ShapeError(f"dense_weight_of_conv: a 1x1 kernel's weight, got {in_types[0]}")
    return in_types[0].with_shape(k, c)


register(OpDef(
    name="dense_weight_of_conv", family="dense", signature=(), arity=1, internal=True,
    infer=_conv_weight_infer, macs=lambda ts, out, a: 0, new_activations=False,
    moves_values=True,
    reference=lambda inputs, a: np.asarray(inputs[0]).reshape(inputs[0].shape[0], -1),
    doc="a 1x1 convolution's weight [K, C, 1, 1] as a dense layer's [K, C] (conv_as_dense)"))


def _dense_weight_as_conv_infer(in_types: list[TensorType], attrs: dict[str, Any]
                                ) -> TensorType:
    k, features = in_types[0].shape
    c, h, w = attrs["features"]
    if features != c * h * w:
        raise ShapeError(f"conv_weight_of_dense: a dense weight over {c}x{h}x{w} = "
                         f"{c * h * w} features, got {in_types[0]}")
    return in_types[0].with_shape(k, c, h, w)


register(OpDef(
    name="conv_weight_of_dense", family="dense", signature=(Attr("features", "shape"),),
    arity=1, internal=True, infer=_dense_weight_as_conv_infer, macs=lambda ts, out, a: 0,
    new_activations=False, moves_values=True,
    reference=lambda inputs, a: np.asarray(inputs[0]).reshape(inputs[0].shape[0],
                                                              *a["features"]),
    doc="a dense weight [K, C*h*w] over a flattened C x h x w map as a convolution's "
        "[K, C, h, w] (convolutionalize)"))


# -- gradients ----------------------------------------------------------------------------------
# y = x W^T + b:  dx = dy W = dense(dy, transpose_weight(W)),  dW = dy^T x summed over the batch
# (dense_weight_grad),  db = channel_sum(dy).

def _dense_gradient(d):
    x, w = d.input(0), d.input(1)
    grads: list[int | None] = [None] * len(d.node.inputs)
    if d.needs(0):
        wt = d.add("transpose_weight", [w], what="weight_t")
        grads[0] = d.add("dense", [d.dy, wt], {"out_features": d.type(x).shape[0],
                                               "bias": False}, what="input")
    if d.needs(1):
        grads[1] = d.add("dense_weight_grad", [x, d.dy], what="weight")
    if len(d.node.inputs) > 2 and d.needs(2):
        grads[2] = d.add("channel_sum", [d.dy], what="bias")
    return grads


get_op("dense").gradient = _dense_gradient


def _lower_weight_grad(ctx, node):
    """One parallel iteration per output feature; on a GPU the convolution's weight gradient
    (implicit GEMM) of a 1x1 kernel over 1x1 images: ``dy^T x`` summed over the images."""
    (n_in,), (n_out,) = ctx.in_shapes
    if ctx.backend.thread_blocks:
        return implicit_weight_grad_step(ctx, node, ConvGeometry(
            C=n_in, H=1, W=1, K=n_out, R=1, S=1, sh=1, sw=1, pt=0, pl=0, pb=0, pr=0, dh=1,
            dw=1, groups=1, bias=False, activation=None))
    sz = Sizes()
    k = dense_weight_grad_kernel(ctx.kname, n_in, n_out, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)

def _transpose_into(inputs, attrs: dict[str, Any], out: np.ndarray) -> None:
    out[...] = np.asarray(inputs[0]).T


register(OpDef(
    name="transpose_weight", family="dense", signature=(), arity=1, internal=True,
    infer=lambda ts, a: ts[0].with_shape(*ts[0].shape[::-1]), macs=lambda ts, out, a: 0,
    new_activations=False, moves_values=True, reference_into=_transpose_into,
    reference=lambda inputs, a: np.ascontiguousarray(np.asarray(inputs[0]).T),
    doc="a dense weight [out, in] transposed (the weight of its input gradient)"))


def _weight_grad_infer(in_types, attrs):
    x, dy = in_types
    return TensorType((dy.shape[0], x.shape[0]), x.dtype, batched=False)


register(OpDef(
    name="dense_weight_grad", family="dense", signature=(), arity=2, pass_made=True, backward=True,
    infer=_weight_grad_infer, macs=lambda ts, out, a: ts[0].shape[0] * ts[1].shape[0],
    new_activations=False, lower=_lower_weight_grad,
    reference=lambda inputs, a: np.asarray(inputs[1], np.float64).T @
    np.asarray(inputs[0], np.float64),
    error_bound=lambda ctx: (len(ctx.inputs[0]) + 2) * EPS32 * ctx.absolute(),
    doc="a dense layer's weight gradient dy^T x, summed over the batch (autodiff)"))
