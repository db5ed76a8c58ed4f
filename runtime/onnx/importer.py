"""The importer's state while it walks an ONNX graph: constants and tensors by name, the cnnc
layers made so far (each checked with the op's own canonicalize and shape rule as it is
created), and the helpers every handler uses to read a node (its attributes, its constant and
tensor inputs, its windows) and to refuse it, naming the operator, node and opset."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...compiler.ir import TensorType
from ...compiler.ops import REQUIRED, AttrError, ShapeError, get_op
from ...compiler.ops.conv.padding import same_pads
from ...dsl.limits import MAX_INT
from .errors import OnnxImportError
from .load import model_opset, tensor_array

BATCH = 1 << 40  # stands for the batch dimension in folded shape arithmetic


@dataclass
class Layer:
    """One cnnc layer: op, DSL attribute values, tensor inputs (ONNX names), its output."""

    op: str
    args: dict[str, Any]
    inputs: list[str]
    output: str
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    hint: str = ""  # where a label comes from: the ONNX node name
    label: str = ""
    removed: bool = False
    # Which ONNX constants (and node attributes) the weights come from: layers with the same
    # key and equal weights are one shared layer applied several times (as cnnc exports one).
    share: tuple | None = None
    shared: bool = False


def node_place(node: Any) -> str:
    """How an error names a node: by its name, else by its first output."""
    return f"node {node.name!r}" if node.name else f"the node producing {node.output[0]!r}"


def refuse(node: Any, opset: int, why: str) -> OnnxImportError:
    """The error for a node cnnc cannot import, naming its operator, node and opset."""
    return OnnxImportError(f"{node.op_type} ({node_place(node)}, opset {opset}): {why}")


def node_attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        where = f"{node.op_type} {node.name or (node.output[0] if node.output else '')!r}"
        try:
            v = helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        except (ValueError, UnicodeDecodeError) as e:  # an unknown type, a string not UTF-8
            raise OnnxImportError(f"attribute {a.name!r} of {where} cannot be read: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                  ) from None
        if a.name in FLAGS and out[a.name] not in (0, 1):
            # (Runtimes disagree on what keepdims=7 means: refuse rather than guess.)
            raise OnnxImportError(f"attribute {a.name!r} of {where} must be 0 or 1, got "
                                  f"{out[a.name]!r}")
    return out


FLAGS = {"ceil_mode", "count_include_pad", "keepdims", "transA", "transB", "training_mode",
         "noop_with_empty_axes", "allowzero", "antialias", "is_test", "spatial", "broadcast",
         "select_last_index"}


def f32_literal(v: float) -> float:
    """An attribute float (stored as float32) as the shortest decimal that rounds to it."""
    return float(str(np.float32(v)))


class Importer:
    """What is known while the nodes are read: constants, tensors' per-sample shapes, aliases,
    the layers made, and the graph's consumers of each tensor (for multi-node patterns)."""

    def __init__(self, model: Any, source: str, declared_opset: int | None = None):
        self.model = model
        self.source = source
        self.opset = model_opset(model)
        # The opset the file declared, before onnx's version converter (which leaves some
        # changes of meaning to the importer: PRelu's slope before opset 7).
        self.declared_opset = declared_opset or self.opset
        g = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: tensor_array(t, f"initializer {t.name!r}") for t in g.initializer}
        self.shapes: dict[str, tuple[int, ...]] = {}  # dynamic tensors: per-sample shapes
        self.alias: dict[str, str] = {}
        self.layers: list[Layer] = []
        self.producer: dict[str, Layer] = {}
        self.inputs: list[str] = []
        self.skip: set[int] = set()
        # Consumers of each tensor (node indices), to check that extra outputs are unused and
        # to recognise multi-node patterns.
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(g.node):
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.graph_outputs = [o.name for o in g.output]
        self.literal_batch: int | None = None
        self.static_batch = True  # every input declares a number for its batch
        # Inputs cnnc cannot take as network inputs; the error is raised when one is used as
        # a tensor (a backend may bind it as a weight when the importer asks for a constant).
        self.bad_inputs: dict[str, OnnxImportError] = {}
        for inp in g.input:
            if inp.name in self.consts:
                continue
            try:
                self.declare_input(inp)
            except OnnxImportError as e:
                self.bad_inputs[inp.name] = e

    # -- values -------------------------------------------------------------------------------
    def declare_input(self, inp: Any) -> None:
        from onnx import TensorProto

        t = inp.type.tensor_type
        if not inp.type.HasField("tensor_type") or t.elem_type not in (
                TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            raise OnnxImportError(f"input {inp.name!r}: cnnc networks take float tensors")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        # (N x B x 4 and N x C x B: the boxes and scores of NonMaxSuppression)
        if len(dims) not in (2, 3, 4) or any(d is None or d < 1 for d in dims[1:]):
            shown = " x ".join("?" if d is None else str(d) for d in dims) or "unknown"
            raise OnnxImportError(
                f"input {inp.name!r} has shape {shown}; cnnc needs N x C x H x W, N x B x 4 "
                "or N x F with every dimension but the batch fixed")
        self.shapes[inp.name] = tuple(dims[1:])
        self.inputs.append(inp.name)
        # A leading literal in a Reshape target that equals the declared batch (1 where the
        # batch is symbolic) stands for the batch: exporters write `[1, 1024]` for batch 1.
        batch = dims[0] if dims and dims[0] is not None and dims[0] >= 1 else 1
        self.static_batch = self.static_batch and dims[0] is not None
        if self.literal_batch is None or self.literal_batch == batch:
            self.literal_batch = batch
        else:  # inputs that disagree on the batch: no literal stands for it
            self.literal_batch = 0

    def name_of(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def input_name(self, node: Any, idx: int) -> str:
        """The tensor a node reads as its input `idx` (aliases resolved); refused when the node
        has no such input."""
        if idx >= len(node.input) or not node.input[idx]:
            raise refuse(node, self.opset, f"input {idx + 1} is missing")
        return self.name_of(node.input[idx])

    def const(self, node: Any, idx: int) -> np.ndarray:
        name = self.input_name(node, idx)
        if name not in self.consts:
            err = refuse(node, self.opset, f"input {idx + 1} ({name!r}) must be a constant")
            err.constant = name  # which tensor, for a backend that binds weights late
            raise err
        return self.consts[name]

    def opt_const(self, node: Any, idx: int) -> np.ndarray | None:
        if len(node.input) > idx and node.input[idx]:
            return self.const(node, idx)
        return None

    def const_ints(self, node: Any, idx: int) -> list[int]:
        """A constant input that lists integers (axes, pads, a shape, starts, sizes): 1-D and
        of an integer type, as ONNX requires; refused, naming it, otherwise."""
        value = self.const(node, idx)
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise refuse(node, self.opset, f"input {idx + 1} ({node.input[idx]!r}) must be a "
                         f"1-D list of integers, got {value.dtype} of shape {list(value.shape)}")
        return [int(v) for v in value]

    def const_scalar(self, node: Any, idx: int) -> float:
        """A constant input that holds one number (a scalar or a one-element tensor)."""
        value = self.const(node, idx)
        if value.size != 1 or value.dtype.kind not in "iuf":
            raise refuse(node, self.opset, f"input {idx + 1} ({node.input[idx]!r}) must be "
                         f"one number, got {value.dtype} of shape {list(value.shape)}")
        return float(value.reshape(-1)[0])

    def dyn(self, node: Any, idx: int = 0) -> str:
        name = self.input_name(node, idx)
        if name in self.bad_inputs:
            raise self.bad_inputs[name]
        if name not in self.shapes:
            raise refuse(node, self.opset, f"input {idx + 1} ({name!r}) must be a tensor "
                         "computed from the network's inputs")
        return name

    def used(self, name: str) -> bool:
        return bool(self.consumers.get(name)) or name in self.graph_outputs

    def only_first_output(self, node: Any) -> None:
        for extra in node.output[1:]:
            if extra and self.used(extra):
                raise refuse(node, self.opset, f"its extra output {extra!r} is used; cnnc "
                             "computes only the first (inference) output")

    # -- layers -------------------------------------------------------------------------------
    def add(self, node: Any, op: str, args: dict[str, Any], inputs: list[str],
            weights: dict[str, np.ndarray] | None = None, output: str | None = None) -> Layer:
        """Create a layer, checking its attributes and computing its shape with cnnc's op."""
        opdef = get_op(op)
        raw = {a.name: a.default for a in opdef.signature if a.default is not REQUIRED}
        raw.update(args)
        in_types = [TensorType(self.shapes[i]) for i in inputs]
        try:
            attrs = opdef.canonicalize(raw, in_types) if opdef.canonicalize else dict(raw)
            specs = opdef.param_specs(attrs, in_types)
            out_type = opdef.infer(in_types, attrs)
        except AttrError as e:  # names the attribute only: add the op
            raise refuse(node, self.opset, f"as cnnc {op}: {e}") from None
        except ShapeError as e:  # already starts with the op's name
            raise refuse(node, self.opset, f"as cnnc {e}") from None
        for k, v in args.items():
            values = v if isinstance(v, tuple) else (v,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                raise refuse(node, self.opset, f"as cnnc {op}: {k} = {v} is not finite")
            if any(isinstance(x, int) and abs(x) > MAX_INT for x in values):
                raise refuse(node, self.opset, f"as cnnc {op}: {k} = {v} is beyond the "
                             "integers a network may hold (at most 2^53)")
        try:
            weights = {k: np.ascontiguousarray(v, np.float32)
                       for k, v in (weights or {}).items()}
        except (TypeError, ValueError) as e:  # strings, objects
            raise refuse(node, self.opset, f"its weights are not numbers: {e}") from None
        for k, v in weights.items():
            if not np.all(np.isfinite(v)):
                raise refuse(node, self.opset, f"its {k} (from {self.source}) contains NaN "
                             "or infinity (or values beyond float32)")
        for spec in specs:
            w = weights.get(spec.suffix)
            if w is None or w.shape != spec.shape:
                got = "missing" if w is None else "x".join(map(str, w.shape))
                raise refuse(node, self.opset, f"{spec.suffix} of shape {got}, cnnc {op} "
                             f"needs {'x'.join(map(str, spec.shape))}")
        layer = Layer(op, args, inputs, output or node.output[0], weights, hint=node.name or
                      node.output[0], share=self.share_key(node) if weights else None)
        self.layers.append(layer)
        self.producer[layer.output] = layer
        self.shapes[layer.output] = out_type.shape
        return layer

    def share_key(self, node: Any) -> tuple | None:
        """What a node's weights are made of: its type, attributes and constant inputs by
        position (None when a constant has no name to share)."""
        from onnx import helper

        consts = tuple(n if n in self.consts else None for n in node.input)
        if not any(consts):
            return None
        attrs = tuple(sorted((a.name, repr(helper.get_attribute_value(a)))
                             for a in node.attribute))
        return (node.op_type, attrs, consts)


#: A handler: (importer, ONNX node, its index in the graph) -> the node's layers added.
Handler = Callable[[Importer, Any, int], None]


# -- reading nodes ----------------------------------------------------------------------------

def axes_arg(imp: Importer, node: Any, attrs: dict[str, Any], idx: int) -> list[int] | None:
    """Axes as an attribute (older opsets) or an optional input (newer ones)."""
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(node.input) > idx and node.input[idx]:
        return imp.const_ints(node, idx)
    return None


def axis_in_range(imp: Importer, node: Any, axis: int, rank: int) -> int:
    """An ONNX axis of a rank-`rank` tensor (negative ones count from the end) as 0 to
    rank - 1; refused out of that range (a malformed node: ONNX Runtime refuses it too)."""
    if not -rank <= axis < rank:
        raise refuse(node, imp.opset, f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def spatial_pads(imp: Importer, node: Any, attrs: dict[str, Any], x: str,
                 kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from `pads` or `auto_pad` (ONNX's order is the same)."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise refuse(node, imp.opset, "only 2-D windows are supported")
        return tuple(int(p) for p in pads)
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise refuse(node, imp.opset, f"auto_pad {auto!r} is not an ONNX padding mode")
    return same_pads(tuple(imp.shapes[x][1:3]), kernel, stride, dilation,
                     upper=auto == "SAME_UPPER")


def pair_attr(imp: Importer, node: Any, attrs: dict[str, Any], key: str,
              default: int = 1) -> tuple[int, int]:
    v = attrs.get(key, [default, default])
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise refuse(node, imp.opset, f"attribute {key} must give 2 values (height, width), "
                     f"got {v!r}")
    return (int(v[0]), int(v[1]))


def need_rank(imp: Importer, node: Any, x: str, rank: int, what: str) -> None:
    if len(imp.shapes[x]) != rank:
        raise refuse(node, imp.opset, f"needs a {what} input, got per-sample shape "
                     f"{'x'.join(map(str, imp.shapes[x]))}")
