"""Arithmetic: Add, Sub, Mul and Div of two tensors, or of a tensor and a per-channel constant
(a per-channel affine layer, or the bias of the layer before); x * sigmoid(x) as swish; Sum
and Mean of tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OnnxImportError
from ..importer import Handler, Importer, refuse


def per_channel(imp: Importer, node: Any, c: np.ndarray, channels: int,
                rank: int) -> np.ndarray:
    """A constant that broadcasts against N x C (x H x W) as one value per channel."""
    c = np.asarray(c, np.float32)
    if c.ndim > rank:
        raise refuse(node, imp.opset, f"constant of shape {c.shape} has too many axes")
    full = (1,) * (rank - c.ndim) + c.shape
    if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, channels):
        raise refuse(node, imp.opset, f"a constant of shape {c.shape} is supported only as "
                     f"one value per channel (shape {channels}x1x1 or a scalar)")
    return np.broadcast_to(c.reshape(-1), (channels,)).copy()


def _affine(imp: Importer, node: Any, x: str, scale: np.ndarray,
            shift: np.ndarray | None) -> None:
    """y = x * scale + shift per channel, as a depthwise 1x1 convolution (or a diagonal dense
    layer on feature vectors): cnnc has no layer for a constant operand."""
    shape = imp.shapes[x]
    c = shape[0]
    if len(shape) == 3:
        args = {"out_channels": c, "kernel": 1, "groups": c, "bias": shift is not None}
        weights = {"weight": scale.reshape(c, 1, 1, 1)}
        op = "conv"
    elif len(shape) == 1:
        args = {"out_features": c, "bias": shift is not None}
        weights = {"weight": np.diag(scale)}
        op = "dense"
    else:
        raise refuse(node, imp.opset, "a constant operand needs a C x H x W or feature input")
    if shift is not None:
        weights["bias"] = shift
    imp.add(node, op, args, [x], weights)


def _absorb_bias(imp: Importer, node: Any, x: str, c: np.ndarray) -> bool:
    """Add(conv or dense without bias, per-channel constant) -> the layer's bias (how older
    exporters write MatMul + Add)."""
    layer = imp.producer.get(x)
    if layer is None or layer.op not in ("conv", "dense") or layer.args.get("bias") or \
            len(imp.consumers.get(x, [])) != 1 or x in imp.graph_outputs:
        return False
    channels = imp.shapes[x][0]
    try:
        bias = per_channel(imp, node, c, channels, len(imp.shapes[x]) + 1)
    except OnnxImportError:
        return False
    layer.args["bias"] = True
    layer.weights["bias"] = bias
    key = imp.share_key(node)
    layer.share = (layer.share, key) if layer.share and key else None
    del imp.producer[x]
    layer.output = node.output[0]
    imp.producer[layer.output] = layer
    imp.shapes[layer.output] = imp.shapes[x]
    return True


def _arith(imp: Importer, node: Any, i: int) -> None:
    a_name, b_name = (imp.name_of(n) for n in node.input[:2])
    a_dyn, b_dyn = a_name in imp.shapes, b_name in imp.shapes
    op = node.op_type
    if a_dyn and b_dyn:
        if op == "Div":
            raise refuse(node, imp.opset, "division of two tensors is not supported")
        if len(imp.shapes[a_name]) != len(imp.shapes[b_name]):
            raise refuse(node, imp.opset, "operands of different ranks broadcast differently "
                         "in ONNX and cnnc; reshape one first")
        if op == "Mul" and _swish(imp, node, a_name, b_name):
            return
        imp.add(node, op.lower(), {}, [a_name, b_name])
        return
    if not (a_dyn or b_dyn):
        for name in (a_name, b_name):
            if name in imp.bad_inputs:
                raise imp.bad_inputs[name]
        raise refuse(node, imp.opset, "operands are neither constants nor tensors")
    x = a_name if a_dyn else b_name
    c = imp.const(node, 1 if a_dyn else 0)
    shape = imp.shapes[x]
    if op == "Add" and _absorb_bias(imp, node, x, c):
        return
    v = per_channel(imp, node, c, shape[0], len(shape) + 1)
    one = np.ones_like(v)
    if op == "Add":
        _affine(imp, node, x, one, v)
    elif op == "Sub":
        _affine(imp, node, x, one, -v) if a_dyn else _affine(imp, node, x, -one, v)
    elif op == "Mul":
        _affine(imp, node, x, v, None)
    elif a_dyn:
        _affine(imp, node, x, 1.0 / v, None)
    else:
        raise refuse(node, imp.opset, "dividing a constant by a tensor is not supported")


def _swish(imp: Importer, node: Any, a: str, b: str) -> bool:
    """x * sigmoid(x), the sigmoid used only here, is swish (SiLU)."""
    for x, s in ((a, b), (b, a)):
        layer = imp.producer.get(s)
        if layer is not None and layer.op == "sigmoid" and layer.inputs[0] == x and \
                len(imp.consumers.get(s, [])) == 1 and s not in imp.graph_outputs:
            layer.removed = True
            imp.add(node, "swish", {}, [x])
            return True
    return False


def _sum(imp: Importer, node: Any, i: int) -> None:
    """Sum of tensors (Caffe2's residual add) as a chain of adds; Mean as the sum scaled by
    1/n per channel (a depthwise 1x1 convolution: cnnc has no scaling layer)."""
    xs = [imp.name_of(n) for n in node.input if n]
    for k, x in enumerate(xs):
        if x in imp.consts:
            raise refuse(node, imp.opset, f"input {k + 1} ({x!r}) is a constant; only sums "
                         "of tensors computed from the network's inputs are supported")
    xs = [imp.dyn(node, k) for k, n in enumerate(node.input) if n]
    if any(imp.shapes[x] != imp.shapes[xs[0]] for x in xs):
        raise refuse(node, imp.opset, "operands of different shapes (broadcasting) are not "
                     "supported")
    if len(xs) == 1:
        imp.alias[node.output[0]] = xs[0]
        return
    mean = node.op_type == "Mean"
    total = xs[0]
    for k, x in enumerate(xs[1:], start=2):
        last = k == len(xs) and not mean
        layer = imp.add(node, "add", {}, [total, x],
                        output=None if last else f"{node.output[0]}/sum{k}")
        total = layer.output
    if mean:
        c = imp.shapes[total][0]
        scale = np.full(c, 1.0 / len(xs), np.float32)
        _affine(imp, node, total, scale, None)


HANDLERS: dict[str, Handler] = {
    "Add": _arith,
    "Sub": _arith,
    "Mul": _arith,
    "Div": _arith,
    "Sum": _sum,
    "Mean": _sum,
}
