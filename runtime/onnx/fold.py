"""Constant folding: constant values (initializers, Constant nodes, and the shape arithmetic
exporters write: Shape, Gather, Cast, Slice, Concat, Unsqueeze, ...) computed with NumPy.
`Shape` of a tensor gives its static per-sample shape behind a stand-in for the batch size
(`BATCH`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .importer import BATCH, Importer, axes_arg, axis_in_range, node_attrs, refuse
from .load import MAX_CONSTANT, tensor_array


def _np_dtype(onnx_type: int) -> Any:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(onnx_type)


def _fold_slice(imp: Importer, node: Any, ins: list[np.ndarray | None],
                attrs: dict[str, Any]) -> np.ndarray:
    x = ins[0]
    if imp.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = [int(v) for v in ins[1]], [int(v) for v in ins[2]]
        axes = [int(v) for v in ins[3]] if len(ins) > 3 and ins[3] is not None else None
        steps = [int(v) for v in ins[4]] if len(ins) > 4 and ins[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a] = slice(s, e, st)
    return x[tuple(index)]


def fold_squeeze(imp, node, ins, attrs):
    axes = axes_arg(imp, node, attrs, 1)
    x = ins[0]
    return np.squeeze(x, axis=tuple(axes)) if axes is not None else np.squeeze(x)


def fold_unsqueeze(imp, node, ins, attrs):
    axes = axes_arg(imp, node, attrs, 1)
    x = ins[0]
    rank = x.ndim + len(axes)
    for a in sorted(axis_in_range(imp, node, a, rank) for a in axes):
        x = np.expand_dims(x, a)
    return x


def _fold_reshape(imp, node, ins, attrs):
    x, shape = ins[0], [int(d) for d in ins[1]]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _fold_constant_of_shape(imp, node, ins, attrs):
    shape = [int(d) for d in ins[0]]
    if BATCH in shape:
        raise refuse(node, imp.opset, "a constant the size of the batch is not supported")
    value = attrs.get("value")

    fill = tensor_array(value, f"the value of {node.op_type} {node.name or node.output[0]!r}") \
        .reshape(-1)[0] if value is not None else np.float32(0)
    if any(d < 0 for d in shape):
        raise refuse(node, imp.opset, f"a constant of negative shape {shape}")
    if math.prod(shape) > MAX_CONSTANT:
        raise refuse(node, imp.opset, f"a constant of shape {shape} has more than "
                     f"{MAX_CONSTANT:,} elements")
    # A read-only broadcast of the one value: memory is spent only if it becomes a weight.
    return np.broadcast_to(np.asarray(fill), tuple(shape))


def _fold_div(imp, node, ins, attrs):
    a, b = ins
    if np.issubdtype(a.dtype, np.integer):
        return (np.trunc(a / b)).astype(a.dtype)
    return a / b


def _binary(fn):
    return lambda imp, node, ins, attrs: fn(ins[0], ins[1]).astype(
        np.result_type(ins[0], ins[1]))


FOLDERS = {
    "Identity": lambda imp, node, ins, attrs: ins[0],
    "Cast": lambda imp, node, ins, attrs: ins[0].astype(_np_dtype(attrs["to"])),
    "Gather": lambda imp, node, ins, attrs: np.take(ins[0], ins[1].astype(np.int64),
                                                    axis=attrs.get("axis", 0)),
    "Concat": lambda imp, node, ins, attrs: np.concatenate(ins, axis=attrs["axis"]),
    "Transpose": lambda imp, node, ins, attrs: np.transpose(ins[0], attrs.get("perm")),
    "Shape": lambda imp, node, ins, attrs: np.array(
        ins[0].shape[attrs.get("start", 0):attrs.get("end", None)], np.int64),
    "Size": lambda imp, node, ins, attrs: np.array(ins[0].size, np.int64),
    "Slice": _fold_slice,
    "Squeeze": fold_squeeze,
    "Unsqueeze": fold_unsqueeze,
    "Reshape": _fold_reshape,
    "ConstantOfShape": _fold_constant_of_shape,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _fold_div,
    "Min": _binary(np.minimum),
    "Max": _binary(np.maximum),
    "Equal": lambda imp, node, ins, attrs: np.equal(ins[0], ins[1]),
    "Where": lambda imp, node, ins, attrs: np.where(ins[0], ins[1], ins[2]),
    "Neg": lambda imp, node, ins, attrs: -ins[0],
    "Floor": lambda imp, node, ins, attrs: np.floor(ins[0]),
    "Ceil": lambda imp, node, ins, attrs: np.ceil(ins[0]),
    "Sqrt": lambda imp, node, ins, attrs: np.sqrt(ins[0]),
    "Range": lambda imp, node, ins, attrs: np.arange(
        ins[0], ins[1], ins[2])[:_capped(imp, node, math.ceil((ins[1] - ins[0]) / ins[2]))]
    .astype(ins[0].dtype),
    "Expand": lambda imp, node, ins, attrs: _fold_expand(imp, node, ins),
}


def _capped(imp: Importer, node: Any, count: float) -> int:
    """An element count a fold may make, refused above MAX_CONSTANT (bounded memory)."""
    if count > MAX_CONSTANT:
        raise refuse(node, imp.opset, f"a constant of {count:,.0f} elements (more than "
                     f"{MAX_CONSTANT:,})")
    return max(int(count), 0)


def _fold_expand(imp: Importer, node: Any, ins: list[np.ndarray]) -> np.ndarray:
    shape = np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1]))
    _capped(imp, node, math.prod(shape))
    return np.broadcast_to(ins[0], shape)


def constant_value(node: Any, opset: int) -> np.ndarray:
    """The value of a Constant node (a tensor, or one of the numeric attribute forms)."""
    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return tensor_array(attrs["value"].t, f"the value of Constant "
                            f"{node.name or node.output[0]!r}")
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64),
                       ("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(node_attrs(node)[key], dtype)
    raise refuse(node, opset, "only dense numeric constants are supported")
