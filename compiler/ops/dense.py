"""Fully connected layer: y = x W^T + b, W of shape (out_features, in_features) as in PyTorch.

ONNX: Gemm(x, W, b, transB=1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import TensorType
from . import Attr, OpDef, ParamSpec, ShapeError, as_bool, as_int, register, sum_bound


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


def _lower(ctx, node):
    """The dense kernel; weights and bias by value (no repacking), activations fused."""
    from ..codegen.elementwise import dense_kernel
    from ..codegen.lowering import kernel_step

    w, *b = ctx.param_inputs
    k = dense_kernel(ctx.kname, ctx.in_shapes[0][0], node.attrs["out_features"], bool(b),
                     ctx.epilogue, ctx.comment)

    def pack(values):
        return {"c_w": values[w], **({"c_b": values[b[0]]} if b else {})}
    return kernel_step(ctx, k, inputs=ctx.tensor_inputs, pack=pack)


register(OpDef(
    name="dense", family="dense", lower=_lower, takes_epilogue="unary",
    signature=(Attr("out_features", "int"), Attr("bias", "bool", True),
               Attr("weights", "tensor", None)),
    canonicalize=_canonicalize, params=_params, infer=_infer, reference=_reference,
    macs=lambda ts, out, a: _features(ts[0]) * a["out_features"],
    aliases=("linear", "fc"), doc="fully connected layer",
    error_bound=sum_bound(),  # in_features products per output (macs), bias, weights
))
