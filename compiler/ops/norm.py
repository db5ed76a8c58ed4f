"""Normalization: batch norm (inference statistics), group norm, and local response
normalization (AlexNet).

LRN sums squares over a window of `size` channels centred on each channel, as ONNX defines it:
from c - floor((size-1)/2) to c + ceil((size-1)/2) (PyTorch puts the odd extra channel before,
not after; the two agree for the odd sizes every published network uses).

ONNX mapping (checked against ONNX Runtime in tests/ops/test_ops_vs_onnxruntime.py):
- batchnorm = BatchNormalization (inference: running statistics), epsilon = eps.
- groupnorm = GroupNormalization of opset 21 (scale and bias per channel, as here and in
  PyTorch; opset 18's version took them per group).
- lrn = LRN(size, alpha, beta, bias = k). ONNX Runtime rejects even sizes; for those the tests
  use the spec's window written as a loop.
"""

from __future__ import annotations

import numpy as np

from ..ir import TensorType
from . import (
    Attr,
    AttrError,
    OpDef,
    ParamSpec,
    ShapeError,
    as_float,
    as_int,
    no_macs,
    register,
    same_shape,
)


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


def _bn_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    w, b, mean, var = (_channel_view(v, x.ndim) for v in inputs[1:5])
    return (x - mean) / np.sqrt(var + attrs["eps"]) * w + b


def _params_match(in_types, attrs, op):
    c = _channels(in_types, op)
    for t in in_types[1:]:
        if t.shape != (c,):
            raise ShapeError(f"{op}: parameter of shape {t} for {c} channels")
    return in_types[0]


register(OpDef(
    name="batchnorm", family="norm",
    signature=(Attr("eps", "float", 1e-5), Attr("momentum", "float", 0.1)),
    canonicalize=_bn_canonicalize, params=_bn_params,
    infer=lambda ts, a: _params_match(ts, a, "batchnorm"),
    reference=_bn_reference, macs=no_macs, aliases=("batch_norm", "bn"), new_activations=False,
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


register(OpDef(
    name="groupnorm", family="norm",
    signature=(Attr("groups", "int"), Attr("eps", "float", 1e-5)),
    canonicalize=_gn_canonicalize,
    params=lambda a, ts: [ParamSpec("weight", (ts[0].channels,), "ones"),
                          ParamSpec("bias", (ts[0].channels,), "zeros")],
    infer=lambda ts, a: _params_match(ts, a, "groupnorm"),
    reference=_gn_reference, macs=no_macs, aliases=("group_norm",), new_activations=False,
    doc="normalize each group of channels per sample, then scale and shift",
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


register(OpDef(
    name="lrn", family="norm",
    signature=(Attr("size", "int", 5), Attr("alpha", "float", 1e-4),
               Attr("beta", "float", 0.75), Attr("k", "float", 1.0)),
    canonicalize=_lrn_canonicalize, infer=same_shape, reference=_lrn_reference, macs=no_macs,
    aliases=("local_response_norm",),
    doc="local response normalization across channels (AlexNet)",
))
