"""ONNX model -> readable DSL source and a weights dictionary.

The importer walks the ONNX nodes in order. Constant values (initializers, Constant nodes,
and the shape arithmetic exporters write: Shape, Gather, Cast, Slice, Concat, Unsqueeze, ...)
are folded with NumPy; `Shape` of a tensor gives its static per-sample shape behind a stand-in
for the batch size (`BATCH`). Every other node becomes a cnnc layer whose attributes are DSL
values, checked with the op's own canonicalize and shape rule as it is created. Finally the
layers are printed as chains, one per straight run, with `as` labels on layers that own
parameters, so the weights' keys (`<label>.weight`) are the names the builder gives them.
Anything without an exact cnnc equivalent is refused with the operator, node and opset.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.ir import TensorType
from ..compiler.ops import REQUIRED, AttrError, ShapeError, all_names, get_op
from .onnx_io import OnnxImportError, OnnxImportNote, require_onnx

# Opsets read directly: from 7 (the handlers know every change since) to the newest the
# installed onnx package defines (22 and later only added types to the ops cnnc maps, and
# Cast-28's round_mode concerns 8-bit floats). Older models are brought up to UPGRADE_TO with
# onnx's version converter first.
MIN_OPSET, UPGRADE_TO = 7, 7
BATCH = 1 << 40  # stands for the batch dimension in folded shape arithmetic
# Elements of a ConstantOfShape: it is folded lazily (one value broadcast, no memory), but the
# weight it may become is real memory (the light zoo models fill VGG's fc6, 103M, this way).
MAX_CONSTANT = 1 << 28
MAX_SIDE = 1 << 24  # pixels per side of a resized image (the importer checks index maps)
# Elements per sample of a Reshape-Transpose-Reshape matched against the rearranging ops on
# its indices (a few float64 copies: 128 MiB each at most).
MAX_MATCHED = 1 << 24
KEYWORDS = {"network", "input", "output", "block", "shared", "return", "import", "from", "true",
            "false", "in"}


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


def _refuse(node: Any, opset: int, why: str = "") -> OnnxImportError:
    where = f"node {node.name!r}" if node.name else f"the node producing {node.output[0]!r}"
    if why:
        return OnnxImportError(f"{node.op_type} ({where}, opset {opset}): {why}")
    return OnnxImportError(
        f"unsupported ONNX operator {node.op_type} ({where}, opset {opset}); cnnc imports "
        f"{', '.join(sorted(HANDLERS))}, and folds constant shape arithmetic "
        f"({', '.join(sorted(FOLDERS))})")


def _attrs(node: Any) -> dict[str, Any]:
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


# -- loading ----------------------------------------------------------------------------------

def load_model(path_or_model: Any) -> tuple[Any, str]:
    """(ModelProto, source description); a clean error for files that are not ONNX."""
    onnx = require_onnx("ONNX import")
    from google.protobuf.message import DecodeError

    if isinstance(path_or_model, onnx.ModelProto):
        model, source = path_or_model, "a ModelProto"
    else:
        if isinstance(path_or_model, (bytes, bytearray)):
            data, source = bytes(path_or_model), "bytes"
        else:
            p = Path(path_or_model)
            if not p.is_file():
                raise OnnxImportError(f"no such ONNX file: {p}")
            data, source = p.read_bytes(), p.name
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except (DecodeError, ValueError, RuntimeError) as e:
            raise OnnxImportError(f"{source} is not an ONNX model (or is damaged): "
                                  f"{str(e) or type(e).__name__}") from None
        if not isinstance(path_or_model, (bytes, bytearray)):
            try:
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(model, str(Path(path_or_model).parent))
            except (OSError, ValueError) as e:
                raise OnnxImportError(f"{source}: cannot load its external weights: {e}") \
                    from None
    if not model.HasField("graph") or not model.graph.output:
        raise OnnxImportError(f"{source} is not an ONNX model (or is damaged): it has no graph "
                              "outputs")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # the checker raises several types, all meaning "invalid model"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"{source} is not a valid ONNX model: {first}") from None
    return model, source


def max_opset() -> int:
    """The newest default-domain opset the installed onnx package defines."""
    from onnx import defs

    return int(defs.onnx_opset_version())


def _opset(model: Any) -> int:
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if "ai.onnx" not in versions:
        raise OnnxImportError("the model does not import the default ONNX operator set")
    v = versions["ai.onnx"]
    if not MIN_OPSET <= v <= max_opset():
        raise OnnxImportError(f"the model uses opset {v}; cnnc imports opsets 1 to "
                              f"{max_opset()} (those before {MIN_OPSET} through onnx's version "
                              "converter)")
    return v


def upgrade(model: Any, source: str) -> tuple[Any, list[str]]:
    """The model at an opset the importer reads, and a one-line note for each conversion:
    opsets before MIN_OPSET go through `onnx.version_converter`; an opset newer than the
    installed onnx package knows is refused."""
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    v = versions.get("ai.onnx")
    if v is None:
        raise OnnxImportError("the model does not import the default ONNX operator set")
    if v > max_opset():
        raise OnnxImportError(f"the model uses opset {v}, newer than the installed onnx "
                              f"package defines ({max_opset()}); upgrade onnx to read it")
    if v >= MIN_OPSET:
        return model, []
    from onnx import version_converter

    # The converter's broadcasting adapters need integer dimensions: a symbolic batch is fixed
    # to 1 for the conversion and given back to the inputs and outputs afterwards.
    fixed = type(model)()
    fixed.CopyFrom(model)
    symbolic: dict[tuple[str, int], str] = {}
    for kind, values in (("in", fixed.graph.input), ("out", fixed.graph.output),
                         ("info", fixed.graph.value_info)):
        for value in values:
            for k, d in enumerate(value.type.tensor_type.shape.dim):
                if not d.HasField("dim_value"):
                    if kind != "info":
                        symbolic[(value.name, k)] = d.dim_param
                    d.dim_value = 1
    try:
        converted = version_converter.convert_version(fixed, UPGRADE_TO)
        for value in list(converted.graph.input) + list(converted.graph.output):
            for k, d in enumerate(value.type.tensor_type.shape.dim):
                if (value.name, k) in symbolic:
                    d.dim_param = symbolic[(value.name, k)] or "N"
    except Exception as e:  # the converter raises RuntimeError and its own C++ errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"{source} uses opset {v}; onnx's version converter cannot "
                              f"bring it to opset {UPGRADE_TO}: {first}") from None
    return converted, [f"converted from opset {v} to opset {UPGRADE_TO} with "
                       "onnx.version_converter"]


# -- names ------------------------------------------------------------------------------------

def tidy(name: str) -> str:
    """A short identifier-ish form of an ONNX name: '/layer1/layer1.0/conv1/Conv' ->
    'layer1_0_conv1' (the op type and repeated path prefixes dropped)."""
    parts = [p for p in re.split(r"[/:]", name) if p]
    if len(parts) > 1 and re.fullmatch(r"[A-Z][A-Za-z]*(_\d+)?(_output_\d+)?", parts[-1]):
        parts.pop()
    parts = [p for i, p in enumerate(parts)
             if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    s = re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(parts))
    s = re.sub(r"_+", "_", s).strip("_")
    if s and s[0].isdigit():
        s = "n" + s
    return s


class Names:
    """Unique DSL identifiers that cannot be mistaken for layers or keywords. Labels also avoid
    the builder's automatic names (relu1, maxpool2, ...) of the ops in `auto_ops`: a label the
    builder has already given away automatically is an error."""

    def __init__(self, auto_ops: set[str] | frozenset[str] = frozenset(),
                 layer_names: bool = True) -> None:
        self.taken: set[str] = set()
        self.reserved = (set(all_names()) if layer_names else set()) | KEYWORDS
        ops = sorted(auto_ops, key=len, reverse=True)
        self.auto = re.compile(r"(" + "|".join(map(re.escape, ops)) + r")\d+") if ops else None

    def make(self, raw: str, fallback: str) -> str:
        base = tidy(raw) or fallback
        if base in self.reserved or (self.auto and self.auto.fullmatch(base)):
            base += "_"
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


# -- constant folding -------------------------------------------------------------------------

def tensor_array(t: Any, what: str) -> np.ndarray:
    """A TensorProto as an array; a clean error naming it when its dims disagree with its data
    (which onnx's checker accepts), its type is unknown, or it is too large."""
    from onnx import numpy_helper

    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise OnnxImportError(f"{what} has negative dimensions {dims}")
    if math.prod(dims) > MAX_CONSTANT:
        raise OnnxImportError(f"{what} has {math.prod(dims):,} elements, more than cnnc reads "
                              f"({MAX_CONSTANT:,})")
    try:
        value = numpy_helper.to_array(t)
    except Exception as e:  # ValueError (size), TypeError/KeyError (type), OSError (external)
        raise OnnxImportError(f"{what} cannot be read: its data does not match its type and "
                              f"dims {dims} ({str(e).splitlines()[0] if str(e) else e!r})"
                              ) from None
    if list(value.shape) != dims:
        raise OnnxImportError(f"{what} has dims {dims} but data of shape {list(value.shape)}")
    return value


def _np_dtype(onnx_type: int) -> Any:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(onnx_type)


def _axes_arg(imp: Importer, node: Any, attrs: dict[str, Any], idx: int) -> list[int] | None:
    """Axes as an attribute (older opsets) or an optional input (newer ones)."""
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(node.input) > idx and node.input[idx]:
        return [int(a) for a in imp.const(node, idx)]
    return None


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


def _fold_squeeze(imp, node, ins, attrs):
    axes = _axes_arg(imp, node, attrs, 1)
    x = ins[0]
    return np.squeeze(x, axis=tuple(axes)) if axes is not None else np.squeeze(x)


def _fold_unsqueeze(imp, node, ins, attrs):
    axes = _axes_arg(imp, node, attrs, 1)
    x = ins[0]
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
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
        raise _refuse(node, imp.opset, "a constant the size of the batch is not supported")
    value = attrs.get("value")

    fill = tensor_array(value, f"the value of {node.op_type} {node.name or node.output[0]!r}") \
        .reshape(-1)[0] if value is not None else np.float32(0)
    if any(d < 0 for d in shape):
        raise _refuse(node, imp.opset, f"a constant of negative shape {shape}")
    if math.prod(shape) > MAX_CONSTANT:
        raise _refuse(node, imp.opset, f"a constant of shape {shape} has more than "
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
    "Squeeze": _fold_squeeze,
    "Unsqueeze": _fold_unsqueeze,
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
        raise _refuse(node, imp.opset, f"a constant of {count:,.0f} elements (more than "
                      f"{MAX_CONSTANT:,})")
    return max(int(count), 0)


def _fold_expand(imp: Importer, node: Any, ins: list[np.ndarray]) -> np.ndarray:
    shape = np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1]))
    _capped(imp, node, math.prod(shape))
    return np.broadcast_to(ins[0], shape)


# -- the importer -----------------------------------------------------------------------------

class Importer:
    def __init__(self, model: Any, source: str, declared_opset: int | None = None):

        self.model = model
        self.source = source
        self.opset = _opset(model)
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
        if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]):
            shown = " x ".join("?" if d is None else str(d) for d in dims) or "unknown"
            raise OnnxImportError(
                f"input {inp.name!r} has shape {shown}; cnnc needs N x C x H x W or N x F with "
                "every dimension but the batch fixed")
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

    def const(self, node: Any, idx: int) -> np.ndarray:
        name = self.name_of(node.input[idx])
        if name not in self.consts:
            err = _refuse(node, self.opset, f"input {idx + 1} ({name!r}) must be a constant")
            err.constant = name  # which tensor, for a backend that binds weights late
            raise err
        return self.consts[name]

    def opt_const(self, node: Any, idx: int) -> np.ndarray | None:
        if len(node.input) > idx and node.input[idx]:
            return self.const(node, idx)
        return None

    def dyn(self, node: Any, idx: int = 0) -> str:
        name = self.name_of(node.input[idx])
        if name in self.bad_inputs:
            raise self.bad_inputs[name]
        if name not in self.shapes:
            raise _refuse(node, self.opset, f"input {idx + 1} ({name!r}) must be a tensor "
                          "computed from the network's inputs")
        return name

    def used(self, name: str) -> bool:
        return bool(self.consumers.get(name)) or name in self.graph_outputs

    def only_first_output(self, node: Any) -> None:
        for extra in node.output[1:]:
            if extra and self.used(extra):
                raise _refuse(node, self.opset, f"its extra output {extra!r} is used; cnnc "
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
            raise _refuse(node, self.opset, f"as cnnc {op}: {e}") from None
        except ShapeError as e:  # already starts with the op's name
            raise _refuse(node, self.opset, f"as cnnc {e}") from None
        for k, v in args.items():
            values = v if isinstance(v, tuple) else (v,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                raise _refuse(node, self.opset, f"as cnnc {op}: {k} = {v} is not finite")
        try:
            weights = {k: np.ascontiguousarray(v, np.float32)
                       for k, v in (weights or {}).items()}
        except (TypeError, ValueError) as e:  # strings, objects
            raise _refuse(node, self.opset, f"its weights are not numbers: {e}") from None
        for k, v in weights.items():
            if not np.all(np.isfinite(v)):
                raise _refuse(node, self.opset, f"its {k} (from {self.source}) contains NaN "
                              "or infinity (or values beyond float32)")
        for spec in specs:
            w = weights.get(spec.suffix)
            if w is None or w.shape != spec.shape:
                got = "missing" if w is None else "x".join(map(str, w.shape))
                raise _refuse(node, self.opset, f"{spec.suffix} of shape {got}, cnnc {op} "
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

    def run(self) -> None:
        for i, node in enumerate(self.model.graph.node):
            if i in self.skip:
                continue
            if not node.output or not node.output[0]:
                raise OnnxImportError(f"{node.op_type} node {node.name!r} has no output")
            try:
                self.node(i, node)
            except OnnxImportError:
                raise
            except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as e:
                # A malformed node (an attribute of the wrong type or length, an input
                # missing) that no check anticipated: still named, never a traceback.
                raise _refuse(node, self.opset, f"malformed node ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None

    def node(self, i: int, node: Any) -> None:
        """Fold one node or turn it into layers."""
        if node.domain not in ("", "ai.onnx"):
            raise _refuse(node, self.opset, f"operator domain {node.domain!r} is not "
                          "supported (only the default ONNX domain)")
        if node.op_type == "Constant":
            self.consts[node.output[0]] = _constant_value(node, self.opset)
            return
        present = [self.name_of(n) for n in node.input if n]
        if node.op_type == "Shape" and present and present[0] in self.shapes:
            attrs = _attrs(node)
            full = (BATCH, *self.shapes[present[0]])
            self.consts[node.output[0]] = np.array(
                full[attrs.get("start", 0):attrs.get("end", None)], np.int64)
            return
        if all(self.is_const(n) for n in present) and node.op_type in FOLDERS:
            self.fold(node)
            return
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            raise _refuse(node, self.opset)
        handler(self, node, i)

    def fold(self, node: Any) -> None:
        ins = [self.consts[self.name_of(n)] if n else None for n in node.input]
        try:
            value = FOLDERS[node.op_type](self, node, ins, _attrs(node))
        except OnnxImportError:
            raise
        except Exception as e:  # NumPy's errors for inconsistent shape arithmetic
            raise _refuse(node, self.opset, f"cannot fold its constant inputs: {e}") from None
        self.consts[node.output[0]] = value if isinstance(value, np.ndarray) else \
            np.asarray(value)


def _constant_value(node: Any, opset: int) -> np.ndarray:

    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return tensor_array(attrs["value"].t, f"the value of Constant "
                            f"{node.name or node.output[0]!r}")
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64),
                       ("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(_attrs(node)[key], dtype)
    raise _refuse(node, opset, "only dense numeric constants are supported")


# -- handlers: ONNX node -> cnnc layer --------------------------------------------------------

HANDLERS: dict[str, Any] = {}


def handles(*ops: str):
    def deco(fn):
        for op in ops:
            HANDLERS[op] = fn
        return fn
    return deco


def _spatial_pads(imp: Importer, node: Any, attrs: dict[str, Any], x: str,
                  kernel: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from `pads` or `auto_pad` (ONNX's order is the same)."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise _refuse(node, imp.opset, "only 2-D windows are supported")
        return tuple(int(p) for p in pads)
    if auto == "VALID":
        return (0, 0, 0, 0)
    begin, end = [], []
    for size, k, s, d in zip(imp.shapes[x][1:], kernel, stride, dilation):
        out = -(-size // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return (begin[0], begin[1], end[0], end[1])


def _pair_attr(imp: Importer, node: Any, attrs: dict[str, Any], key: str,
               default: int = 1) -> tuple[int, int]:
    v = attrs.get(key, [default, default])
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise _refuse(node, imp.opset, f"attribute {key} must give 2 values (height, width), "
                      f"got {v!r}")
    return (int(v[0]), int(v[1]))


def _need_rank(imp: Importer, node: Any, x: str, rank: int, what: str) -> None:
    if len(imp.shapes[x]) != rank:
        raise _refuse(node, imp.opset, f"needs a {what} input, got per-sample shape "
                      f"{'x'.join(map(str, imp.shapes[x]))}")


@handles("Conv")
def _conv(imp: Importer, node: Any, i: int) -> None:
    x, w, b = imp.dyn(node), imp.const(node, 1), imp.opt_const(node, 2)
    if w.ndim != 4:
        raise _refuse(node, imp.opset, "only 2-D convolutions are supported")
    _need_rank(imp, node, x, 3, "C x H x W")
    a = _attrs(node)
    kernel = (int(w.shape[2]), int(w.shape[3]))
    stride, dilation = _pair_attr(imp, node, a, "strides"), _pair_attr(imp, node, a, "dilations")
    pads = _spatial_pads(imp, node, a, x, kernel, stride, dilation)
    args = {"out_channels": int(w.shape[0]), "kernel": kernel, "stride": stride, "pad": pads,
            "dilation": dilation, "groups": int(a.get("group", 1)), "bias": b is not None}
    weights = {"weight": w} | ({"bias": b} if b is not None else {})
    imp.add(node, "conv", args, [x], weights)


@handles("ConvTranspose")
def _conv_transpose(imp: Importer, node: Any, i: int) -> None:
    x, w, b = imp.dyn(node), imp.const(node, 1), imp.opt_const(node, 2)
    if w.ndim != 4:
        raise _refuse(node, imp.opset, "only 2-D transposed convolutions are supported")
    _need_rank(imp, node, x, 3, "C x H x W")
    a = _attrs(node)
    g = int(a.get("group", 1))
    kernel = (int(w.shape[2]), int(w.shape[3]))
    stride, dilation = _pair_attr(imp, node, a, "strides"), _pair_attr(imp, node, a, "dilations")
    out_pad = _pair_attr(imp, node, a, "output_padding", 0)
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto not in ("NOTSET", "", "VALID"):
        raise _refuse(node, imp.opset, "output_shape and auto_pad SAME are not supported; "
                      "give explicit pads")
    pads = (0, 0, 0, 0) if auto == "VALID" else tuple(int(p) for p in a.get("pads", [0] * 4))
    args = {"out_channels": int(w.shape[1]) * g, "kernel": kernel, "stride": stride,
            "pad": pads, "output_padding": out_pad, "dilation": dilation, "groups": g,
            "bias": b is not None}
    weights = {"weight": w} | ({"bias": b} if b is not None else {})
    imp.add(node, "conv_transpose", args, [x], weights)


@handles("BatchNormalization")
def _batchnorm(imp: Importer, node: Any, i: int) -> None:
    a = _attrs(node)
    if a.get("training_mode", 0):
        raise _refuse(node, imp.opset, "training mode is not supported (inference only)")
    imp.only_first_output(node)
    x = imp.dyn(node)
    scale, bias, mean, var = (imp.const(node, k) for k in range(1, 5))
    imp.add(node, "batchnorm", {"eps": _f(a.get("epsilon", 1e-5))}, [x],
            {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var})


@handles("InstanceNormalization")
def _instance_norm(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    eps = _f(_attrs(node).get("epsilon", 1e-5))
    imp.add(node, "instance_norm", {"eps": eps}, [x],
            {"weight": imp.const(node, 1), "bias": imp.const(node, 2)})


@handles("GroupNormalization")
def _group_norm(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    a = _attrs(node)
    g, c = int(a["num_groups"]), imp.shapes[x][0]
    scale, bias = imp.const(node, 1), imp.const(node, 2)
    if imp.opset < 21 and scale.shape == (g,) and g != c:
        # GroupNormalization-18 scales per group; cnnc (and opset 21) per channel.
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    imp.add(node, "groupnorm", {"groups": g, "eps": _f(a.get("epsilon", 1e-5))},
            [x], {"weight": scale, "bias": bias})


@handles("LRN")
def _lrn(imp: Importer, node: Any, i: int) -> None:
    a = _attrs(node)
    args = {"size": int(a["size"]), "alpha": _f(a.get("alpha", 1e-4)),
            "beta": _f(a.get("beta", 0.75)), "k": _f(a.get("bias", 1.0))}
    imp.add(node, "lrn", args, [imp.dyn(node)])


def _f(v: float) -> float:
    """An attribute float (stored as float32) as the shortest decimal that rounds to it."""
    return float(str(np.float32(v)))


def _unary(op: str, **fixed: Any):
    def handle(imp: Importer, node: Any, i: int) -> None:
        a = _attrs(node)
        args = {k: (fn(a) if callable(fn) else fn) for k, fn in fixed.items()}
        imp.add(node, op, args, [imp.dyn(node)])
    return handle


HANDLERS.update({
    "Relu": _unary("relu"),
    "LeakyRelu": _unary("leaky_relu", alpha=lambda a: _f(a.get("alpha", 0.01))),
    "Sigmoid": _unary("sigmoid"),
    "HardSigmoid": _unary("hard_sigmoid", alpha=lambda a: _f(a.get("alpha", 0.2)),
                          beta=lambda a: _f(a.get("beta", 0.5))),
    "HardSwish": _unary("hard_swish"),
    "Tanh": _unary("tanh"),
    "Abs": _unary("abs"),
    "Softplus": _unary("softplus"),
    "Mish": _unary("mish"),
    "GlobalAveragePool": _unary("globalavgpool"),
    "GlobalMaxPool": _unary("globalmaxpool"),
})


@handles("Elu", "Selu")
def _elu(imp: Importer, node: Any, i: int) -> None:
    # Attributes are float32 in ONNX: one equal to cnnc's default (in float32) is left out, so
    # an exported model comes back as `selu`, not `selu(alpha=1.6732632, ...)`.
    op = node.op_type.lower()
    a = _attrs(node)
    args = {}
    for attr in get_op(op).signature:
        if attr.name in a and np.float32(a[attr.name]) != np.float32(attr.default):
            args[attr.name] = _f(a[attr.name])
    imp.add(node, op, args, [imp.dyn(node)])


@handles("PRelu")
def _prelu(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    slope = imp.const(node, 1)
    shape = imp.shapes[x]
    # ONNX broadcasts the slope unidirectionally, right-aligned against N x C x ...: it is per
    # channel only as [C, 1, 1] (or [C] for N x C), and one for all when it has one element.
    # Before opset 7 (PRelu-6 and older) a 1-D slope of C values was one per channel, and the
    # version converter keeps it as it is.
    full = (1,) * (len(shape) + 1 - slope.ndim) + tuple(slope.shape)
    if slope.size == 1 and slope.ndim <= len(shape) + 1:
        args: dict[str, Any] = {} if shape[0] == 1 else {"num_parameters": 1}
    elif len(full) == len(shape) + 1 and full[1] == shape[0] and \
            all(d == 1 for k, d in enumerate(full) if k != 1):
        args = {}
    elif imp.declared_opset < 7 and slope.shape == (shape[0],):
        args = {}
    else:
        dims = "[C, 1, 1]" if len(shape) == 3 else "[C]"
        raise _refuse(node, imp.opset, f"slope of shape {list(slope.shape)} against an input "
                      f"of per-sample shape {list(shape)}: ONNX broadcasts it along axes other "
                      f"than the channels; cnnc's prelu takes one slope per channel ({dims}) "
                      "or one for all ([1])")
    imp.add(node, "prelu", args, [x], {"weight": slope.reshape(-1)})


@handles("Gelu")
def _gelu(imp: Importer, node: Any, i: int) -> None:
    approximate = _attrs(node).get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise _refuse(node, imp.opset, f"approximate={approximate!r} (none or tanh)")
    imp.add(node, "gelu", {} if approximate == "none" else {"approximate": "tanh"},
            [imp.dyn(node)])


@handles("Clip")
def _clip(imp: Importer, node: Any, i: int) -> None:
    a = _attrs(node)
    if imp.opset < 11:
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    else:
        lo_c, hi_c = imp.opt_const(node, 1), imp.opt_const(node, 2)
        for c in (lo_c, hi_c):
            if c is not None and c.size != 1:
                raise _refuse(node, imp.opset, f"min and max must be scalars, got shape "
                              f"{list(c.shape)}")
        lo = -np.inf if lo_c is None else float(lo_c.reshape(-1)[0])
        hi = np.inf if hi_c is None else float(hi_c.reshape(-1)[0])
    if lo == 0 and hi == 6:
        imp.add(node, "relu6", {}, [imp.dyn(node)])
    elif lo == 0 and hi == np.inf:
        imp.add(node, "relu", {}, [imp.dyn(node)])
    else:
        raise _refuse(node, imp.opset, f"Clip to [{lo}, {hi}] has no cnnc layer; only "
                      "[0, 6] (relu6) and [0, inf) (relu)")


@handles("Softmax", "LogSoftmax")
def _softmax(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    shape = imp.shapes[x]
    rank = len(shape) + 1
    axis = int(_attrs(node).get("axis", 1 if imp.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if axis < 1 or axis >= rank:
        raise _refuse(node, imp.opset, f"axis {axis} is the batch or out of range")
    if imp.opset < 13 and any(d != 1 for d in shape[axis:]):
        # Before opset 13 the op normalizes over all axes from `axis` on.
        raise _refuse(node, imp.opset, f"normalizing over axes {axis}.. of "
                      f"{'x'.join(map(str, shape))} together is not supported")
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    imp.add(node, op, {} if axis == 1 else {"axis": axis - 1}, [x])


def _pool_common(imp: Importer, node: Any, x: str) -> dict[str, Any]:
    _need_rank(imp, node, x, 3, "C x H x W")
    a = _attrs(node)
    kernel = tuple(int(k) for k in a["kernel_shape"])
    if len(kernel) != 2:
        raise _refuse(node, imp.opset, "only 2-D pooling is supported")
    stride, dilation = _pair_attr(imp, node, a, "strides"), _pair_attr(imp, node, a, "dilations")
    args = {"kernel": kernel, "stride": stride,
            "pad": _spatial_pads(imp, node, a, x, kernel, stride, dilation),
            "ceil_mode": bool(a.get("ceil_mode", 0)), "dilation": dilation}
    return args


@handles("MaxPool")
def _maxpool(imp: Importer, node: Any, i: int) -> None:
    imp.only_first_output(node)
    x = imp.dyn(node)
    args = _pool_common(imp, node, x)
    imp.add(node, "maxpool", args, [x])


@handles("AveragePool")
def _avgpool(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    args = _pool_common(imp, node, x)
    args["count_include_pad"] = bool(_attrs(node).get("count_include_pad", 0))
    imp.add(node, "avgpool", args, [x])


@handles("LpPool")
def _lppool(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    args = _pool_common(imp, node, x)
    args["p"] = float(_attrs(node).get("p", 2))
    imp.add(node, "lppool", args, [x])


@handles("Neg")
def _neg(imp: Importer, node: Any, i: int) -> None:
    """Only as min pooling: Neg -> MaxPool -> Neg (how cnnc exports minpool)."""
    g = imp.model.graph.node
    users = imp.consumers.get(node.output[0], [])
    if len(users) == 1 and g[users[0]].op_type == "MaxPool" and \
            node.output[0] not in imp.graph_outputs:
        pool = g[users[0]]
        after = imp.consumers.get(pool.output[0], [])
        if len(after) == 1 and g[after[0]].op_type == "Neg" and \
                pool.output[0] not in imp.graph_outputs and not any(
                    o and imp.used(o) for o in pool.output[1:]):
            x = imp.dyn(node)
            args = _pool_common(imp, pool, x)
            imp.add(pool, "minpool", args, [x], output=g[after[0]].output[0])
            imp.skip |= {users[0], after[0]}
            return
    raise _refuse(node, imp.opset, "negation is supported only around MaxPool (min pooling)")


@handles("Gemm")
def _gemm(imp: Importer, node: Any, i: int) -> None:
    a = _attrs(node)
    x = imp.dyn(node)
    _need_rank(imp, node, x, 1, "N x features")
    if a.get("transA", 0):
        raise _refuse(node, imp.opset, "transA=1 is not supported")
    for key in ("alpha", "beta"):
        if not math.isfinite(float(a.get(key, 1.0))):
            raise _refuse(node, imp.opset, f"{key} = {a[key]} is not finite")
    w = imp.const(node, 1)
    w = w if a.get("transB", 0) else w.T
    c = imp.opt_const(node, 2)
    with np.errstate(all="ignore"):  # (an overflow to inf is refused by `add`, named)
        w = w * np.float32(a.get("alpha", 1.0))
        weights = {"weight": w}
        if c is not None:
            bias = _per_channel(imp, node, c, w.shape[0], 2)
            weights["bias"] = bias * np.float32(a.get("beta", 1.0))
    imp.add(node, "dense", {"out_features": int(w.shape[0]), "bias": c is not None}, [x],
            weights)


@handles("MatMul")
def _matmul(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    _need_rank(imp, node, x, 1, "N x features")
    w = imp.const(node, 1)
    if w.ndim != 2:
        raise _refuse(node, imp.opset, "the weight must be a 2-D constant")
    imp.add(node, "dense", {"out_features": int(w.shape[1]), "bias": False}, [x],
            {"weight": w.T})


def _per_channel(imp: Importer, node: Any, c: np.ndarray, channels: int,
                 rank: int) -> np.ndarray:
    """A constant that broadcasts against N x C (x H x W) as one value per channel."""
    c = np.asarray(c, np.float32)
    if c.ndim > rank:
        raise _refuse(node, imp.opset, f"constant of shape {c.shape} has too many axes")
    full = (1,) * (rank - c.ndim) + c.shape
    if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, channels):
        raise _refuse(node, imp.opset, f"a constant of shape {c.shape} is supported only as "
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
        raise _refuse(node, imp.opset, "a constant operand needs a C x H x W or feature input")
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
        bias = _per_channel(imp, node, c, channels, len(imp.shapes[x]) + 1)
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


@handles("Add", "Sub", "Mul", "Div")
def _arith(imp: Importer, node: Any, i: int) -> None:
    a_name, b_name = (imp.name_of(n) for n in node.input[:2])
    a_dyn, b_dyn = a_name in imp.shapes, b_name in imp.shapes
    op = node.op_type
    if a_dyn and b_dyn:
        if op == "Div":
            raise _refuse(node, imp.opset, "division of two tensors is not supported")
        if len(imp.shapes[a_name]) != len(imp.shapes[b_name]):
            raise _refuse(node, imp.opset, "operands of different ranks broadcast differently "
                          "in ONNX and cnnc; reshape one first")
        if op == "Mul" and _swish(imp, node, a_name, b_name):
            return
        imp.add(node, op.lower(), {}, [a_name, b_name])
        return
    if not (a_dyn or b_dyn):
        for name in (a_name, b_name):
            if name in imp.bad_inputs:
                raise imp.bad_inputs[name]
        raise _refuse(node, imp.opset, "operands are neither constants nor tensors")
    x = a_name if a_dyn else b_name
    c = imp.const(node, 1 if a_dyn else 0)
    shape = imp.shapes[x]
    if op == "Add" and _absorb_bias(imp, node, x, c):
        return
    v = _per_channel(imp, node, c, shape[0], len(shape) + 1)
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
        raise _refuse(node, imp.opset, "dividing a constant by a tensor is not supported")


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


@handles("Sum", "Mean")
def _sum(imp: Importer, node: Any, i: int) -> None:
    """Sum of tensors (Caffe2's residual add) as a chain of adds; Mean as the sum scaled by
    1/n per channel (a depthwise 1x1 convolution: cnnc has no scaling layer)."""
    xs = [imp.name_of(n) for n in node.input if n]
    for k, x in enumerate(xs):
        if x in imp.consts:
            raise _refuse(node, imp.opset, f"input {k + 1} ({x!r}) is a constant; only sums "
                          "of tensors computed from the network's inputs are supported")
    xs = [imp.dyn(node, k) for k, n in enumerate(node.input) if n]
    if any(imp.shapes[x] != imp.shapes[xs[0]] for x in xs):
        raise _refuse(node, imp.opset, "operands of different shapes (broadcasting) are not "
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


@handles("Transpose")
def _transpose(imp: Importer, node: Any, i: int) -> None:
    """The identity permutation, or a Reshape -> Transpose -> Reshape that is one of cnnc's
    rearranging ops: ShuffleNet's channel shuffle (Reshape to [N, g, C/g, H, W], perm 0, 2, 1,
    3, 4), and DepthToSpace / SpaceToDepth written out (PyTorch's PixelShuffle, ONNX's
    expanded function bodies)."""
    x = imp.dyn(node)
    rank = len(imp.shapes[x]) + 1
    perm = [int(p) for p in _attrs(node).get("perm", list(range(rank))[::-1])]
    if perm == list(range(rank)):
        imp.alias[node.output[0]] = x
        return
    layer = imp.producer.get(x)
    g = imp.model.graph.node
    users = imp.consumers.get(node.output[0], [])
    if layer is not None and layer.op == "reshape" and len(imp.shapes[layer.inputs[0]]) == 3 \
            and users and all(g[u].op_type == "Reshape" for u in users) \
            and node.output[0] not in imp.graph_outputs \
            and len(imp.consumers.get(x, [])) == 1 and x not in imp.graph_outputs \
            and sorted(perm) == list(range(rank)) and perm[0] == 0:
        source = layer.inputs[0]
        found = _rearrangement(imp.shapes[source], layer.args["shape"], perm)
        if found is not None:
            # The transposed tensor read in C order is that op's output: its Reshape users
            # see the op's output, so any target they give stays right.
            layer.removed = True
            imp.add(node, found[0], found[1], [source])
            return
    raise _refuse(node, imp.opset, f"transposing a tensor (perm {perm}) is not supported; "
                  "only the identity permutation, or a Reshape-Transpose-Reshape that is a "
                  "channel shuffle, DepthToSpace or SpaceToDepth")


def _rearrangement(shape: tuple[int, ...], split: tuple[int, ...], perm: list[int]
                   ) -> tuple[str, dict[str, Any]] | None:
    """The cnnc op (and attributes) whose output, read in C order, is a C x H x W tensor
    reshaped to ``split`` per sample and transposed by ``perm``; None when none is. Checked
    on the element indices themselves, so the match is exact."""
    size = math.prod(shape)
    if size > MAX_MATCHED:
        return None
    index = np.arange(size, dtype=np.float64).reshape(1, *shape)
    moved = index.reshape(1, *split).transpose(perm).reshape(-1)
    candidates: list[tuple[str, dict[str, Any]]] = [("channel_shuffle", {"groups": split[0]})]
    for b in sorted(set(split)):
        for mode in ("DCR", "CRD"):
            candidates += [("depth_to_space", {"block": b, "mode": mode}),
                           ("space_to_depth", {"block": b, "mode": mode})]
    for op, args in candidates:
        opdef = get_op(op)
        try:
            attrs = opdef.canonicalize(args, [TensorType(shape)])
        except (AttrError, ShapeError):
            continue
        if np.array_equal(opdef.reference([index], attrs).reshape(-1), moved):
            return op, args
    return None


@handles("Concat")
def _concat(imp: Importer, node: Any, i: int) -> None:
    xs = [imp.dyn(node, k) for k in range(len(node.input))]
    rank = len(imp.shapes[xs[0]]) + 1
    axis = int(_attrs(node)["axis"])
    axis = axis + rank if axis < 0 else axis
    if axis < 1:
        raise _refuse(node, imp.opset, "concatenation along the batch is not supported")
    imp.add(node, "concat", {"axis": axis - 1} if axis != 1 else {}, xs)


@handles("Flatten")
def _flatten(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    rank = len(imp.shapes[x]) + 1
    axis = int(_attrs(node).get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0 and imp.literal_batch == 1 and imp.static_batch:
        axis = 1  # (1, N*C*H*W) is (N, C*H*W) for the model's declared batch of 1
    if axis != 1:
        raise _refuse(node, imp.opset, f"only axis 1 (keep the batch) is supported, got {axis}")
    if len(imp.shapes[x]) == 1:
        imp.alias[node.output[0]] = x
    else:
        imp.add(node, "flatten", {}, [x])


def _reshape_to(imp: Importer, node: Any, x: str, target: list[int]) -> None:
    """Reshape a tensor to a full target shape (batch included, 0 and -1 resolved already
    except the batch)."""
    shape = imp.shapes[x]
    size = int(np.prod(shape))
    rest = target[1:]
    if imp.literal_batch and target[0] == imp.literal_batch and target[0] != BATCH:
        target = [BATCH, *rest]
    if target[0] not in (BATCH, 0, -1) or (target[0] == -1 and -1 in rest):
        raise _refuse(node, imp.opset, f"the target shape {target} does not keep the batch "
                      "dimension first")
    known = int(np.prod([d for d in rest if d != -1]))
    if -1 in rest:
        if known == 0 or size % known:
            raise _refuse(node, imp.opset, f"cannot reshape {shape} to {rest}")
        rest[rest.index(-1)] = size // known
    if int(np.prod(rest)) != size:
        raise _refuse(node, imp.opset, f"cannot reshape {'x'.join(map(str, shape))} to "
                      f"{'x'.join(map(str, rest))} per sample (the batch must stay first)")
    if tuple(rest) == shape:
        imp.alias[node.output[0]] = x
    elif len(rest) == 1:
        imp.add(node, "flatten", {}, [x])
    else:
        imp.add(node, "reshape", {"shape": tuple(rest)}, [x])


@handles("Reshape")
def _reshape(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    target = [int(d) for d in imp.const(node, 1)]
    allowzero = _attrs(node).get("allowzero", 0)
    full = (BATCH, *imp.shapes[x])
    if not allowzero:
        target = [full[k] if d == 0 and k < len(full) else d for k, d in enumerate(target)]
    _reshape_to(imp, node, x, target)


@handles("Squeeze", "Unsqueeze")
def _squeeze(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    # A batch of 2 (touching the batch axis shows); a broadcast view, whatever the size.
    probe = np.broadcast_to(np.empty(()), (2, *imp.shapes[x]))
    axes = _axes_arg(imp, node, _attrs(node), 1)
    if node.op_type == "Squeeze" and axes is None:
        axes = [k for k, d in enumerate(probe.shape) if d == 1]
    fold = _fold_squeeze if node.op_type == "Squeeze" else _fold_unsqueeze
    try:
        out = fold(imp, node, [probe], {"axes": axes}).shape
    except ValueError as e:
        raise _refuse(node, imp.opset, str(e)) from None
    if out[0] != 2:
        raise _refuse(node, imp.opset, "the batch axis must stay first")
    _reshape_to(imp, node, x, [BATCH, *out[1:]])


@handles("Dropout")
def _dropout(imp: Importer, node: Any, i: int) -> None:
    imp.only_first_output(node)
    x = imp.dyn(node)
    if imp.opset < 12:
        rate = float(_attrs(node).get("ratio", 0.5))
    else:
        r = imp.opt_const(node, 1)
        rate = 0.5 if r is None else float(r)
    imp.add(node, "dropout", {"rate": _f(rate)}, [x])


@handles("Slice")
def _slice(imp: Importer, node: Any, i: int) -> None:
    """Whole-axis reversals of height and/or width (cnnc's flip), or a range of channels with
    step 1 (cnnc's channel_slice)."""
    x = imp.dyn(node)
    full = (2, *imp.shapes[x])
    if imp.opset < 10:
        raise _refuse(node, imp.opset, "slicing tensors is not supported")
    starts, ends = imp.const(node, 1), imp.const(node, 2)
    axes = imp.opt_const(node, 3)
    steps = imp.opt_const(node, 4)
    axes = list(range(len(starts))) if axes is None else [int(a) % len(full) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    flipped = set()
    channels = None
    for a, start, end, step in zip(axes, starts, ends, steps):
        whole = range(full[a])[slice(int(start), int(end), step)]
        if list(whole) == list(range(full[a]))[::step] and step in (1, -1):
            if step == -1 and full[a] > 1:
                flipped.add(a)
            continue
        if a == 1 and step == 1 and len(full) == 4 and len(whole) > 0:
            channels = (whole.start, whole.stop)
            continue
        raise _refuse(node, imp.opset, "only reversing whole axes (a flip) or a range of "
                      "channels is supported")
    if channels is not None:
        if flipped:
            raise _refuse(node, imp.opset, "a channel range and a flip in one Slice")
        imp.add(node, "channel_slice", {"start": channels[0], "stop": channels[1]}, [x])
        return
    if not flipped:
        imp.alias[node.output[0]] = x
        return
    if len(full) != 4 or not flipped <= {2, 3}:
        raise _refuse(node, imp.opset, "only height and width can be flipped")
    axis = "both" if flipped == {2, 3} else ("vertical" if flipped == {2} else "horizontal")
    imp.add(node, "flip", {"axis": axis}, [x])


@handles("Split")
def _split(imp: Importer, node: Any, i: int) -> None:
    """A split of the channels (axis 1 of N x C x H x W) into channel_slice layers: sizes from
    the `split` attribute (opsets 2-12), the `split` input (13 and later), `num_outputs` (18
    and later: ceil(C / n) each, the last smaller), or equal parts, one per output."""
    x = imp.dyn(node)
    a = _attrs(node)
    full = (2, *imp.shapes[x])
    axis = int(a.get("axis", 0))
    axis = axis + len(full) if axis < 0 else axis
    if len(full) != 4 or axis != 1:
        raise _refuse(node, imp.opset, f"only a split of the channels (axis 1 of N x C x H x W)"
                      f" is supported, got axis {axis} of a rank-{len(full)} tensor")
    c, n_out = full[1], len(node.output)
    if "split" in a:
        sizes = [int(v) for v in a["split"]]
    elif imp.opset >= 13 and len(node.input) > 1 and node.input[1]:
        sizes = [int(v) for v in imp.const(node, 1)]
    elif "num_outputs" in a:
        n = int(a["num_outputs"])
        if n != n_out or n < 1:
            raise _refuse(node, imp.opset, f"num_outputs = {n} but the node has {n_out} outputs")
        part = -(-c // n)
        sizes = [min(part, c - k * part) for k in range(n)]
    else:
        if c % n_out:
            raise _refuse(node, imp.opset, f"{c} channels cannot be split into {n_out} equal "
                          "parts")
        sizes = [c // n_out] * n_out
    if len(sizes) != n_out or sum(sizes) != c or any(s < 0 for s in sizes):
        raise _refuse(node, imp.opset, f"split sizes {sizes} do not divide {c} channels into "
                      f"{n_out} outputs")
    start = 0
    for size, out in zip(sizes, node.output):
        if out and imp.used(out):
            if size == 0:
                raise _refuse(node, imp.opset, f"output {out!r} is empty (a split of size 0)")
            if size == c:
                imp.alias[out] = x
            else:
                imp.add(node, "channel_slice", {"start": start, "stop": start + size}, [x],
                        output=out)
        start += size


@handles("DepthToSpace", "SpaceToDepth")
def _depth_space(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    _need_rank(imp, node, x, 3, "C x H x W")
    a = _attrs(node)
    # (SpaceToDepth has a mode from opset 28; both default to DCR)
    args: dict[str, Any] = {"block": int(a["blocksize"]), "mode": str(a.get("mode", "DCR"))}
    op = "depth_to_space" if node.op_type == "DepthToSpace" else "space_to_depth"
    imp.add(node, op, args, [x])


@handles("Cast")
def _cast(imp: Importer, node: Any, i: int) -> None:
    from onnx import TensorProto

    if _attrs(node)["to"] not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
        raise _refuse(node, imp.opset, "only casts between float types are supported")
    imp.alias[node.output[0]] = imp.dyn(node)


@handles("Identity")
def _identity(imp: Importer, node: Any, i: int) -> None:
    imp.alias[node.output[0]] = imp.dyn(node)


@handles("Pad")
def _pad(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    a = _attrs(node)
    mode = a.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise _refuse(node, imp.opset, f"mode {mode!r}; cnnc pads in modes constant, reflect "
                      "and edge")
    rank = len(imp.shapes[x]) + 1
    if imp.opset < 11:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = [int(p) for p in imp.const(node, 1)]
        v = imp.opt_const(node, 2)
        value = 0.0 if v is None or v.size == 0 else float(v.reshape(-1)[0])
    axes = _axes_arg(imp, node, {}, 3) if imp.opset >= 18 else None
    axes = [ax % rank for ax in axes] if axes is not None else list(range(rank))
    per_axis = {ax: (pads[k], pads[k + len(axes)]) for k, ax in enumerate(axes)}
    if rank != 4 or any(per_axis.get(ax, (0, 0)) != (0, 0) for ax in (0, 1)):
        raise _refuse(node, imp.opset, "only padding of height and width is supported")
    (t, b), (l, r) = per_axis.get(2, (0, 0)), per_axis.get(3, (0, 0))
    if min(t, l, b, r) < 0:
        raise _refuse(node, imp.opset, "negative padding (cropping) is not supported")
    args: dict[str, Any] = {"pad": (t, l, b, r)}
    if mode != "constant":
        args["mode"] = mode  # (ONNX ignores the value in these modes)
    elif value:
        args["value"] = _f(value)
    imp.add(node, "pad", args, [x])


def _onnx_nearest(n_in: int, n_out: int, scale: float, coord: str, rounding: str) -> np.ndarray:
    """ONNX Resize's nearest source index for each output index (the spec's formulas)."""
    i = np.arange(n_out, dtype=np.float64)
    if coord == "asymmetric":
        src = i / scale
    elif coord in ("half_pixel", "pytorch_half_pixel"):
        src = (i + 0.5) / scale - 0.5
        if coord == "pytorch_half_pixel" and n_out == 1:
            src = np.zeros_like(i)
    elif coord == "align_corners":
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(i)
    else:  # tf_half_pixel_for_nn
        src = (i + 0.5) / scale
    if rounding == "floor":
        idx = np.floor(src)
    elif rounding == "ceil":
        idx = np.ceil(src)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(src + 0.5)
    else:  # round_prefer_floor
        idx = np.ceil(src - 0.5)
    return np.clip(idx, 0, n_in - 1).astype(int)


def _onnx_linear(n_in: int, n_out: int, scale: float, coord: str,
                 from_scales: bool) -> np.ndarray:
    """ONNX Resize's linear source coordinate for each output index (the spec's formulas;
    with scales given, align_corners divides by the unrounded length in * scale)."""
    i = np.arange(n_out, dtype=np.float64)
    if coord == "align_corners":
        length = n_in * scale if from_scales else n_out
        return i * (n_in - 1) / (length - 1) if length != 1 else np.zeros_like(i)
    if coord == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(i)
    if coord == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if coord == "asymmetric":
        return i / scale
    return np.full(n_out, np.nan)  # other modes: never equal to cnnc's


@handles("Resize", "Upsample")
def _resize(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    _need_rank(imp, node, x, 3, "C x H x W")
    a = _attrs(node)
    full = (1, *imp.shapes[x])
    mode = a.get("mode", "nearest")
    if node.op_type == "Upsample":
        coord, rounding = "asymmetric", "floor"
        scales = a.get("scales") if imp.opset < 9 else imp.const(node, 1)
        sizes = None
    else:
        if imp.opset < 11:
            coord, rounding = "asymmetric", "floor"
            scales, sizes = imp.const(node, 1), None
        else:
            coord = a.get("coordinate_transformation_mode", "half_pixel")
            rounding = a.get("nearest_mode", "round_prefer_floor")
            scales, sizes = imp.opt_const(node, 2), imp.opt_const(node, 3)
        axes = a.get("axes")
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise _refuse(node, imp.opset, "keep_aspect_ratio_policy is not supported")
        if axes is not None:
            axes = [ax % 4 for ax in axes]
            if scales is not None and scales.size:
                s = np.ones(4)
                s[axes] = scales
                scales = s
            if sizes is not None and sizes.size:
                z = np.array(full, np.int64)
                z[axes] = sizes
                sizes = z
    if scales is not None and np.size(scales):
        scales = [float(s) for s in np.asarray(scales, np.float32)]
        out = [int(np.floor(d * s)) for d, s in zip(full, scales)]
    elif sizes is not None and np.size(sizes):
        out = [int(s) for s in sizes]
        scales = [o / d for o, d in zip(out, full)]
    else:
        raise _refuse(node, imp.opset, "needs constant scales or sizes")
    if any(o > MAX_SIDE or o < 1 for o in out[2:]):
        raise _refuse(node, imp.opset, f"an output of {out[2]} x {out[3]} pixels (1 to "
                      f"{MAX_SIDE:,} per side)")
    # (A constant `sizes` holds some batch size: only the channels must stay.)
    if len(scales) != 4 or out[1] != full[1] or (sizes is None and out[0] != 1):
        raise _refuse(node, imp.opset, "only height and width may be resized")
    if mode == "cubic":
        raise _refuse(node, imp.opset, "cubic interpolation is not supported")
    if a.get("antialias", 0) and min(scales[2:]) < 1:
        raise _refuse(node, imp.opset, "antialiased downsampling is not supported")
    scale = (scales[2], scales[3])
    if mode == "nearest":
        for axis in (2, 3):
            cnnc = np.minimum(np.floor(np.arange(out[axis]) / scales[axis]),
                              full[axis] - 1).astype(int)
            if not np.array_equal(cnnc, _onnx_nearest(full[axis], out[axis], scales[axis],
                                                      coord, rounding)):
                raise _refuse(node, imp.opset, f"nearest resizing with "
                              f"coordinate_transformation_mode={coord} and nearest_mode="
                              f"{rounding} picks other pixels than cnnc's floor(i / scale) "
                              f"for scale {scales[axis]:g}")
        args: dict[str, Any] = {"scale": scale}
    else:
        from ..compiler.ops.resize import _source_coords

        align = None
        for candidate in (coord == "align_corners", coord != "align_corners"):
            if all(np.allclose(
                    np.clip(_onnx_linear(full[ax], out[ax], scales[ax], coord, sizes is None),
                            0, full[ax] - 1),
                    np.clip(sum(_source_coords(full[ax], out[ax], scales[ax], "bilinear",
                                               candidate)[::2]), 0, full[ax] - 1),
                    atol=1e-6) for ax in (2, 3)):
                align = candidate
                break
        if align is None:
            raise _refuse(node, imp.opset, f"linear resizing with coordinate_transformation_"
                          f"mode={coord} samples other points than cnnc's bilinear upsample "
                          f"for scales {scales[2]:g}, {scales[3]:g}")
        args = {"scale": scale, "mode": "bilinear", "align_corners": align}
    layer = imp.add(node, "upsample", args, [x])
    if list(imp.shapes[layer.output][1:]) != out[2:]:
        raise _refuse(node, imp.opset, f"output size {out[2:]} is not floor(input size x "
                      "scale) as cnnc computes it")


@handles("ReduceL2", "ReduceL1")
def _reduce(imp: Importer, node: Any, i: int) -> None:
    """Only as a distance: Sub(a, b) -> Flatten -> ReduceL2/L1 over axis 1, keepdims."""
    x = imp.dyn(node)
    a = _attrs(node)
    axes = _axes_arg(imp, node, a, 1) if imp.opset >= 18 else a.get("axes")
    chain = []  # the Sub layer, possibly behind a Flatten (absent for feature vectors)
    layer = imp.producer.get(x)
    while layer is not None and layer.op in ("flatten", "sub") and \
            len(imp.consumers.get(layer.output, [])) == 1:
        chain.append(layer)
        if layer.op == "sub":
            break
        layer = imp.producer.get(layer.inputs[0])
    sub = chain[-1] if chain and chain[-1].op == "sub" else None
    if sub is not None and axes in ([1], [-1]) and a.get("keepdims", 1):
        for la in chain:
            la.removed = True
        p = 2.0 if node.op_type == "ReduceL2" else 1.0
        imp.add(node, "distance", {} if p == 2.0 else {"p": p}, list(sub.inputs))
        return
    raise _refuse(node, imp.opset, "supported only as the distance between two embeddings "
                  "(Sub -> Flatten -> reduce over axis 1 with keepdims)")


@handles("ReduceMean", "ReduceMax")
def _global_reduce(imp: Importer, node: Any, i: int) -> None:
    """A mean or maximum over height and width (how PyTorch's dynamo exporter writes global
    pooling): globalavgpool / globalmaxpool, followed by a flatten when keepdims=0."""
    x = imp.dyn(node)
    a = _attrs(node)
    axes = _axes_arg(imp, node, a, 1) if imp.opset >= 18 else a.get("axes")
    rank = len(imp.shapes[x]) + 1
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            imp.alias[node.output[0]] = x
            return
        axes = list(range(rank))
    axes = sorted({int(ax) % rank for ax in axes}) if rank else []
    if rank != 4 or axes != [2, 3]:
        raise _refuse(node, imp.opset, f"reducing over axes {axes} of a rank-{rank} tensor has "
                      "no cnnc layer; only over height and width (axes 2, 3: global pooling)")
    op = "globalavgpool" if node.op_type == "ReduceMean" else "globalmaxpool"
    if a.get("keepdims", 1):
        imp.add(node, op, {}, [x])
        return
    pooled = imp.add(node, op, {}, [x], output=node.output[0] + "/pooled")
    imp.add(node, "flatten", {}, [pooled.output])


# -- printing the DSL -------------------------------------------------------------------------

COMPACT = {"kernel", "stride", "pad", "dilation", "output_padding", "scale"}


def _fmt(v: Any, compact: bool = False) -> str:
    """A DSL literal. With `compact`, window pairs and pads are shortened: (3, 3) -> 3,
    (1, 2, 1, 2) -> (1, 2)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return f"{v:.1f}"
        return repr(v)
    if isinstance(v, str):
        return v
    if isinstance(v, tuple):
        items = list(v)
        if compact and len(items) == 4 and items[:2] == items[2:]:
            items = items[:2]
        if compact and len(items) == 2 and items[0] == items[1]:
            return _fmt(items[0])
        return "(" + ", ".join(_fmt(i) for i in items) + ")"
    raise TypeError(f"cannot print {v!r} as a DSL value")


def _call(layer: Layer, extra_inputs: list[str], shared_def: bool = False) -> str:
    """`conv(64, 3, stride=2, pad=1) as stem` for a layer; tensor inputs after the first are
    leading positional arguments. An application of a shared layer is its name; `shared_def`
    gives the call of its `shared` statement."""
    if layer.shared and not shared_def:
        return layer.label
    opdef = get_op(layer.op)
    parts = list(extra_inputs)
    positional = True
    for attr in opdef.signature:
        if attr.name not in layer.args:
            positional = False
            continue
        value = layer.args[attr.name]
        if attr.default is REQUIRED and positional:
            parts.append(_fmt(value, attr.name in COMPACT))
            continue
        positional = False
        if attr.default is not REQUIRED and _same(value, attr.default):
            continue
        parts.append(f"{attr.name}={_fmt(value, attr.name in COMPACT)}")
    text = layer.op + (f"({', '.join(parts)})" if parts else "")
    return text + (f" as {layer.label}" if layer.label and not shared_def else "")


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(_same(v, default) for v in value)
    return type(value) is type(default) and value == default or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and
        isinstance(default, (int, float)) and not isinstance(default, bool) and
        value == default)


def _same_weights(a: Layer, b: Layer) -> bool:
    return a.op == b.op and a.args == b.args and a.weights.keys() == b.weights.keys() and all(
        np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)


def _comment(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)


def _live(imp: Importer) -> list[Layer]:
    """The layers some output depends on, in order."""
    live: set[str] = set()
    stack = [imp.name_of(o) for o in imp.graph_outputs]
    while stack:
        v = stack.pop()
        if v in live:
            continue
        live.add(v)
        layer = imp.producer.get(v)
        if layer is not None:
            stack.extend(layer.inputs)
    return [la for la in imp.layers if not la.removed and la.output in live]


class Printer:
    """Layers -> DSL statements: one chain per straight run of layers."""

    def __init__(self, imp: Importer):
        self.imp = imp
        self.layers = _live(imp)
        self.values = Names()
        self.labels = Names({la.op for la in self.layers if not la.weights})
        self.var: dict[str, str] = {}  # ONNX tensor -> DSL value name
        self.uses: dict[str, int] = {}
        self.first_use: dict[str, Layer] = {}
        self.outputs: dict[str, list[str]] = {}
        for layer in self.layers:
            for k, x in enumerate(layer.inputs):
                self.uses[x] = self.uses.get(x, 0) + 1
                if k == 0:
                    self.first_use.setdefault(x, layer)
        for o in imp.graph_outputs:
            self.outputs.setdefault(imp.name_of(o), []).append(o)

    def continues(self, value: str) -> bool:
        """Whether `value` flows straight into the next layer of its chain."""
        return (value in self.imp.producer and self.uses.get(value, 0) == 1 and
                value not in self.outputs and value in self.first_use)

    def render(self, title: str, network: str) -> str:
        imp = self.imp
        lines = [f"# {_comment(title)}"]
        for name in imp.inputs:
            self.var[name] = self.values.make(name, "input")
        outs = Names(layer_names=False)  # (an output may be called `distance`)
        out_names = {o: outs.make(o, "output") for o in imp.graph_outputs}
        shared: dict[tuple, list[Layer]] = {}
        self.labels.taken |= set(self.var.values())  # a shared layer's name is a stage
        for layer in self.layers:
            if not layer.weights:
                continue
            group = shared.get(layer.share) if layer.share else None
            if group and _same_weights(group[0], layer) and [
                    self.imp.shapes[x] for x in layer.inputs] == [
                    self.imp.shapes[x] for x in group[0].inputs]:
                group.append(layer)
                layer.label = group[0].label
                continue
            layer.label = self.labels.make(layer.hint, layer.op)
            if layer.share:
                shared.setdefault(layer.share, [layer])
        shared_defs = []
        for group in shared.values():
            if len(group) > 1:
                for layer in group:
                    layer.shared = True
                self.values.taken.add(group[0].label)
                shared_defs.append(f"shared {group[0].label} = {_call(group[0], [], True)}")
        renamed = [(o, n) for o, n in list(zip(imp.inputs, [self.var[i] for i in imp.inputs]))
                   + list(out_names.items()) if o != n]
        if renamed:
            lines.append("# renamed: " + _comment(", ".join(f"{o!r} -> {n}" for o, n in
                                                          renamed)))
        lines.append(f"network {network}")
        for name in imp.inputs:
            dims = " x ".join(str(d) for d in imp.shapes[name])
            lines.append(f"input {self.var[name]}: {dims}")
        lines.append("")
        lines += shared_defs
        for layer in self.layers:
            if not self.continues(layer.output) and layer.output in self.uses:
                producer_hint = layer.label or layer.hint
                self.var[layer.output] = self.values.make(producer_hint, "v")
        chains = self.chains()
        # Outputs end their chains when that keeps the model's order of outputs; otherwise
        # they are declared at the end, in order.
        inline_order = [o for run in chains for o in self.outputs.get(run[-1].output, [])]
        inline_order += [o for v, outs in self.outputs.items() if v in imp.inputs for o in outs]
        inline = inline_order == imp.graph_outputs
        if not inline:
            for value in self.outputs:
                if value not in self.var:
                    self.var[value] = self.values.make(self.imp.producer[value].hint, "y")
        for chain in chains:
            lines.append(self.chain_text(chain, out_names if inline else None))
        for o in imp.graph_outputs:
            value = imp.name_of(o)
            if not inline or value in imp.inputs:
                lines.append(f"{self.var[value]} -> output {out_names[o]}")
        return "\n".join(lines) + "\n"

    def chains(self) -> list[list[Layer]]:
        """Straight runs of layers, ordered so that every name is defined before its use."""
        starts = [la for la in self.layers if not self.continues(la.inputs[0])]
        runs = []
        for layer in starts:
            run = [layer]
            while self.continues(run[-1].output):
                run.append(self.first_use[run[-1].output])
            runs.append(run)
        defined = set(self.imp.inputs)
        ordered: list[list[Layer]] = []
        pending = runs
        while pending:
            rest = []
            for run in pending:
                needs = {x for la in run for x in la.inputs} - {la.output for la in run}
                if needs <= defined:
                    ordered.append(run)
                    defined.add(run[-1].output)
                else:
                    rest.append(run)
            if len(rest) == len(pending):  # pragma: no cover - the ONNX graph is a DAG
                raise OnnxImportError("internal error: cyclic dependencies between chains")
            pending = rest
        return ordered

    def chain_text(self, run: list[Layer], out_names: dict[str, str] | None) -> str:
        first = run[0]
        if first.op in ("add", "sub", "mul") and len(first.inputs) == 2:
            sym = {"add": "+", "sub": "-", "mul": "*"}[first.op]
            head = f"{self.var[first.inputs[0]]} {sym} {self.var[first.inputs[1]]}"
            stages = []
        else:
            head = self.var[first.inputs[0]]
            stages = [_call(first, [self.var[x] for x in first.inputs[1:]])]
        for layer in run[1:]:
            stages.append(_call(layer, [self.var[x] for x in layer.inputs[1:]]))
        end = run[-1].output
        if out_names is not None:
            stages += [f"output {out_names[o]}" for o in self.outputs.get(end, [])]
        target = f"{self.var[end]} = " if end in self.var else ""
        one_line = target + " -> ".join([head] + stages)
        if len(one_line) <= 100 or not stages:
            return one_line
        # Long chains: one stage per line, the arrows under the first one.
        indent = " " * (len(target) + len(head) + 1)
        return target + head + " -> " + stages[0] + "".join(f"\n{indent}-> {s}"
                                                          for s in stages[1:])


# -- entry ------------------------------------------------------------------------------------

def import_model(path_or_model: Any, name: str | None = None
                 ) -> tuple[str, dict[str, np.ndarray]]:
    model, source = load_model(path_or_model)
    declared = {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx")
    model, notes = upgrade(model, source)
    for note in notes:
        warnings.warn(f"{source}: {note}", OnnxImportNote, stacklevel=2)
    imp = Importer(model, source, declared)
    imp.run()
    for err in imp.bad_inputs.values():  # (unused, or used only where any value would do)
        raise err
    for o in imp.graph_outputs:
        if imp.name_of(o) not in imp.shapes:
            raise OnnxImportError(f"output {o!r} is a constant, not computed from the inputs")
    if not imp.inputs:
        raise OnnxImportError("the model has no tensor inputs")
    printer = Printer(imp)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    title = (f"Imported from {source} by `cnnc import` (opset {imp.opset}"
             f"{', producer ' + producer if producer else ''}, {len(model.graph.node)} nodes)")
    network = Names().make(name or model.graph.name or Path(source).stem, "imported")
    title += "".join(f"; {note}" for note in notes)
    text = printer.render(title, network)
    weights = {f"{la.label}.{k}": v for la in printer.layers for k, v in la.weights.items()}
    _verify(text, weights)
    return text, weights


def _verify(text: str, weights: dict[str, np.ndarray]) -> None:
    """The generated source must build and take exactly these weights."""
    from ..dsl.builder import load_network
    from ..dsl.errors import DslError, LimitError
    from .weights import WeightsError, check_weights

    try:
        graph = load_network(text)
        check_weights(graph, weights, "imported weights")
    except LimitError as e:  # the model's sizes, not the importer's mistake
        raise OnnxImportError(f"the model is beyond cnnc's limits: {e.message}") from None
    except (DslError, WeightsError) as e:
        raise OnnxImportError(f"internal error: the generated network does not build:\n{e}\n"
                              f"--- generated source ---\n{text}") from None
