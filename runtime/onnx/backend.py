"""cnnc as an ONNX backend (`onnx.backend.base.Backend`), so ONNX's own backend test runner can
run against it.

`CnncBackend.prepare(model)` imports the model (`convert.import_onnx`) and returns a
`CnncBackendRep`; its `run(inputs)` evaluates the imported network with the float64 reference
interpreter (outputs cast to the model's declared types), or with the compiled kernels when
prepared with `compiled=True` (slow to compile: meant for a handful of models).

Weights that arrive as graph inputs without an initializer (as ONNX's node tests pass them) are
bound as parameters at run time: the importer says which input it needs as a constant, the
value given for that input becomes an initializer, and the model is imported again. Imports are
cached by the bound values, so running the same weights twice imports once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...compiler.ops.detect import selected_indices
from ...dsl.builder import load_network
from ..reference import run_reference
from .convert import import_onnx
from .errors import OnnxImportError, require_onnx
from .load import load_model

onnx = require_onnx("the ONNX backend")
from onnx.backend.base import Backend, BackendRep  # noqa: E402


class _Imported:
    """One import of the model: the graph, its weights, and which ONNX inputs feed it."""

    def __init__(self, model: Any, bound: Mapping[str, np.ndarray], compiled: bool) -> None:
        self.text, self.weights = import_onnx(_with_initializers(model, bound))
        self.graph = load_network(self.text)
        inits = {t.name for t in model.graph.initializer} | set(bound)
        onnx_inputs = [i.name for i in model.graph.input if i.name not in inits]
        # The importer keeps the inputs' order (their names may have become identifiers).
        self.feeds = dict(zip(onnx_inputs, self.graph.inputs))
        self.model = None
        if compiled:
            from ..model import compile as compile_model  # (Numba: loaded only when compiled)

            self.model = compile_model(self.graph, weights=self.weights)

    def run(self, values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs in graph order, as ONNX gives them: an ``nms`` output (an imported
        NonMaxSuppression) as its selected indices rather than cnnc's padded rows."""
        feeds = {ours: _float(values[theirs]) for theirs, ours in self.feeds.items()}
        if self.model is not None:
            feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()}
            outputs = self.model.run(feeds)
        else:
            outputs = run_reference(self.graph, feeds, self.weights)
        return [selected_indices(value) if self.graph.node(self.graph.outputs[name]).op == "nms"
                else value for name, value in outputs.items()]


def _float(x: Any) -> np.ndarray:
    """An input as cnnc takes it: float16 is widened to float32 (the model's arithmetic)."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _with_initializers(model: Any, bound: Mapping[str, np.ndarray]) -> Any:
    """A copy of `model` in which the graph inputs in `bound` have initializers (their
    values); the original is returned when nothing is bound."""
    if not bound:
        return model
    from onnx import numpy_helper

    copy = type(model)()
    copy.CopyFrom(model)
    for name, value in bound.items():
        copy.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    if copy.ir_version < 4:  # (before IR 4 every initializer must also be a graph input)
        copy.ir_version = 4
    return copy


def _key(bound: Mapping[str, np.ndarray]) -> tuple:
    return tuple(sorted((k, v.dtype.str, v.shape, hashlib.sha1(
        np.ascontiguousarray(v).tobytes()).hexdigest()) for k, v in bound.items()))


class CnncBackendRep(BackendRep):
    """A prepared model: `run(inputs)` with the inputs in graph order (those without an
    initializer) or by name; returns the outputs in graph order."""

    def __init__(self, model: Any, compiled: bool = False) -> None:
        self.onnx_model = model
        self.compiled = compiled
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.output_types = [_np_type(o) for o in model.graph.output]
        self._cache: dict[tuple, _Imported] = {}
        # Import now when no input needs binding; otherwise the first run binds them.
        try:
            self._imported({})
        except OnnxImportError as e:
            if getattr(e, "constant", None) not in self.input_names:
                raise

    def _imported(self, values: Mapping[str, np.ndarray]) -> _Imported:
        """The import for these run-time values, binding as parameters every graph input the
        importer needs as a constant."""
        bound: dict[str, np.ndarray] = {}
        while True:
            key = _key(bound)
            if key in self._cache:
                return self._cache[key]
            try:
                imported = _Imported(self.onnx_model, bound, self.compiled)
            except OnnxImportError as e:
                name = getattr(e, "constant", None)
                if name in values and name not in bound:
                    bound[name] = np.asarray(values[name])
                    continue
                raise
            self._cache[key] = imported
            return imported

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            values = dict(inputs)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(inputs) != len(self.input_names):
                raise OnnxImportError(f"the model takes {len(self.input_names)} inputs "
                                      f"({', '.join(self.input_names)}), got {len(inputs)}")
            values = dict(zip(self.input_names, inputs))
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise OnnxImportError(f"no value for input{'s' * (len(missing) > 1)} "
                                  f"{', '.join(missing)}")
        imported = self._imported(values)
        outputs = imported.run(values)
        return tuple(np.asarray(y).astype(t, copy=False) for y, t in
                     zip(outputs, self.output_types))


def _np_type(value_info: Any) -> Any:
    from onnx import TensorProto, helper

    t = value_info.type.tensor_type.elem_type or TensorProto.FLOAT
    return helper.tensor_dtype_to_np_dtype(t)


class CnncBackend(Backend):
    """cnnc behind ONNX's backend interface. `prepare(model, compiled=True)` runs compiled
    kernels instead of the float64 reference."""

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> CnncBackendRep:
        if not cls.supports_device(device):
            raise OnnxImportError(f"cnnc runs on the CPU, not on {device}")
        model, _ = load_model(model)
        return CnncBackendRep(model, compiled=bool(kwargs.get("compiled", False)))

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper().split(":")[0] == "CPU"


prepare = CnncBackend.prepare
run_model = CnncBackend.run_model
supports_device = CnncBackend.supports_device

__all__ = ["CnncBackend", "CnncBackendRep", "prepare", "run_model", "supports_device"]
