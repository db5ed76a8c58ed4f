"""Reading an ONNX model: the file or bytes parsed and checked, the opset read (or brought up
with onnx's version converter), and tensors turned into arrays with their dims checked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OnnxImportError, require_onnx

# Opsets read directly: from 7 (the handlers know every change since) to the newest the
# installed onnx package defines (22 and later only added types to the ops cnnc maps, and
# Cast-28's round_mode concerns 8-bit floats). Older models are brought up to UPGRADE_TO with
# onnx's version converter first.
MIN_OPSET, UPGRADE_TO = 7, 7
# Elements of a ConstantOfShape: it is folded lazily (one value broadcast, no memory), but the
# weight it may become is real memory (the light zoo models fill VGG's fc6, 103M, this way).
MAX_CONSTANT = 1 << 28


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


def model_opset(model: Any) -> int:
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
