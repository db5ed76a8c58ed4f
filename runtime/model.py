"""The compiled model: a graph lowered to generated Numba kernels, with a buffer arena.

    model = compile("resnet18")             # zoo name, .cnn path, DSL text, Graph or .onnx
    y = model(x)                            # NCHW float32, any batch size
    outs = model({"image": x})              # a dict when the network has several outputs

Each batch size gets its own arena (allocated on the first call with that batch size): one
flat float32 buffer per slot of the liveness plan (``compiler/schedule.py``) plus the scratch
space convolutions need. A call then allocates nothing but the returned outputs (copies; pass
``copy=False`` to ``run`` for views into the arena, valid until the next call).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.codegen.lower import Lowered, LoweringError, lower_graph
from ..compiler.ir import Graph
from ..compiler.schedule import BufferPlan, plan_buffers
from .reference import InputError, check_inputs
from .weights import check_weights, init_params, load_weights, save_weights

__all__ = ["compile", "CompiledModel", "ModelError", "available_memory"]


class ModelError(InputError):
    """A model that cannot be built or run as asked (a target we lack, a batch size whose
    buffers would not fit in memory). An InputError so the CLI reports it as a user error."""


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _load_graph(src: Any) -> tuple[Graph, dict[str, np.ndarray] | None]:
    """A Graph from a Graph, a zoo name, a .cnn path, DSL text or an .onnx file."""
    if isinstance(src, Graph):
        return src, None
    text = str(src)
    if "\n" not in text and text.lower().endswith(".onnx"):
        from .onnx_io import import_onnx  # written separately; imported only when needed

        dsl, weights = import_onnx(text)
        from ..dsl.builder import load_network

        return load_network(dsl), weights
    from ..dsl.builder import load_network

    return load_network(src), None


class _Arena:
    """Buffers for one batch size."""

    def __init__(self, plan: BufferPlan, scratch: dict[str, int], n: int) -> None:
        self.n = n
        self.slots = [np.empty(n * size, np.float32) for size in plan.slot_sizes]
        self.scratch = {k: np.empty(n * v, np.float32) for k, v in scratch.items()}


class CompiledModel:
    """A network compiled to generated kernels. Call it on NCHW float32 arrays."""

    def __init__(self, graph: Graph, lowered: Lowered, params: dict[str, np.ndarray],
                 *, compile_seconds: float = 0.0, reuse_buffers: bool = True) -> None:
        self.graph = graph
        self.lowered = lowered
        self.steps = lowered.steps
        self.plan = plan_buffers(graph, [s.group for s in self.steps], reuse=reuse_buffers)
        self.scratch_sizes: dict[str, int] = {}
        for s in self.steps:
            for k, v in s.scratch().items():
                self.scratch_sizes[k] = max(self.scratch_sizes.get(k, 0), v)
        self.compile_seconds = compile_seconds
        self._arenas: dict[int, _Arena] = {}
        self._params: dict[str, np.ndarray] = {}
        self._consts: list[dict[str, np.ndarray]] = []
        self.set_params(params)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters by name (float32, read-only: change them with ``set_params``)."""
        return dict(self._params)

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace the parameters (all of them, checked by name and shape) and repack."""
        values = {k: np.array(v, dtype=np.float32) for k, v in values.items()}
        check_weights(self.graph, values)
        for node in self.graph.params():  # literal weights come from the network definition
            if node.attrs.get("init") == "literal":
                values[node.name] = np.asarray(node.attrs["value"], np.float32)
        for v in values.values():
            v.setflags(write=False)
        self._params = values
        self._consts = [s.pack(values) for s in self.steps]

    def save_weights(self, path: str | Path) -> None:
        save_weights(self._params, path)

    def load_weights(self, path: str | Path) -> None:
        self.set_params(load_weights(self.graph, path))

    # -- memory -------------------------------------------------------------------------------
    def bytes_needed(self, batch: int) -> int:
        """Bytes of the arena for ``batch`` images (activations and scratch)."""
        floats = self.plan.floats_per_image + sum(self.scratch_sizes.values())
        return 4 * batch * floats

    def _arena(self, n: int) -> _Arena:
        arena = self._arenas.get(n)
        if arena is None:
            need = self.bytes_needed(n)
            avail = available_memory()
            if need > avail:
                raise ModelError(
                    f"network {self.graph.name!r} at batch size {n} needs "
                    f"{_fmt_bytes(need)} of buffers, but only {_fmt_bytes(avail)} of memory is "
                    f"available; use a smaller batch (batch 1 needs "
                    f"{_fmt_bytes(self.bytes_needed(1))})")
            arena = _Arena(self.plan, self.scratch_sizes, n)
            self._arenas[n] = arena
        return arena

    # -- running ------------------------------------------------------------------------------
    def _as_inputs(self, x: Any) -> dict[str, np.ndarray]:
        if isinstance(x, Mapping):
            return dict(x)
        names = list(self.graph.inputs)
        if len(names) != 1:
            raise InputError(f"network {self.graph.name!r} has {len(names)} inputs "
                             f"({', '.join(names)}); call it with a dict keyed by input name")
        return {names[0]: x}

    def run(self, inputs: Mapping[str, np.ndarray], *, copy: bool = True) -> dict[str, Any]:
        """Run on named inputs; returns every output by name."""
        n = check_inputs(self.graph, inputs, dtypes=(np.float32,))
        arena = self._arena(n)
        values: dict[int, np.ndarray] = {}
        for name, nid in self.graph.inputs.items():
            values[nid] = np.ascontiguousarray(inputs[name]).reshape(-1)
        plan = self.plan
        for step, consts in zip(self.steps, self._consts):
            if step.lowering == "view":
                values[step.output] = values[step.inputs[0]]
                continue
            out = arena.slots[plan.slot_of[step.output]][: n * step.out_size]
            step.run([values[i] for i in step.inputs], out, consts, arena.scratch, n)
            values[step.output] = out
        result = {}
        for name, nid in self.graph.outputs.items():
            shape = (n,) + self.graph.node(nid).type.shape
            v = values[nid].reshape(shape)
            result[name] = v.copy() if copy else v
        return result

    def __call__(self, x: Any) -> Any:
        """``model(x)`` or ``model({"name": x})``: an array for one output, else a dict."""
        out = self.run(self._as_inputs(x))
        return next(iter(out.values())) if len(out) == 1 else out

    def warm_up(self) -> None:
        """Run once at batch 1 on zeros, so every kernel is compiled (or loaded)."""
        self.run({name: np.zeros((1,) + self.graph.node(nid).type.shape, np.float32)
                  for name, nid in self.graph.inputs.items()})

    # -- generated code -----------------------------------------------------------------------
    def sources(self) -> dict[str, str]:
        """Every generated source file of the model (file name -> text)."""
        name = f"model_{self.graph.name}.py"  # a listing; kernels run from shared modules
        return {name: self.lowered.source, **self.lowered.extra_sources}

    def emit(self, directory: str | Path) -> list[Path]:
        """Write the generated sources to ``directory``; returns the files written."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in self.sources().items():
            p = d / name
            p.write_text(text, encoding="utf-8")
            written.append(p)
        return written

    def __repr__(self) -> str:
        kernels = sum(1 for s in self.steps if s.lowering != "view")
        return (f"CompiledModel({self.graph.name!r}, {kernels} kernel steps, "
                f"inputs {list(self.graph.inputs)}, outputs {list(self.graph.outputs)})")


def compile(source_or_graph_or_path: Any, target: str = "cpu",  # noqa: A001 - public API name
            weights: None | Mapping[str, np.ndarray] | str | Path = None, seed: int = 0,
            lowering: str | Mapping[str, str] = "auto", cache_dir: str | Path | None = None,
            *, fuse: bool = True, warm: bool = True) -> CompiledModel:
    """Compile a network to Numba kernels.

    ``weights``: None (deterministic initialization from ``seed``), a dict by parameter name,
    or an .npz path. ``lowering``: ``auto``, ``direct`` or ``im2col`` for every convolution, or
    a dict from layer name to one of those. ``cache_dir`` overrides the kernel cache
    (default ``$CNNC_CACHE_DIR`` or ``~/.cache/cnnc``). With ``warm`` (default) every kernel is
    compiled (or loaded from the disk cache) before this returns.
    """
    t0 = time.perf_counter()
    if target != "cpu":
        raise ModelError(f"target {target!r} is not available; the only target is 'cpu'")
    graph, onnx_weights = _load_graph(source_or_graph_or_path)
    if weights is None:
        params = onnx_weights if onnx_weights is not None else init_params(graph, seed)
    elif isinstance(weights, (str, Path)):
        params = load_weights(graph, weights)
    else:
        params = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        check_weights(graph, params)
    try:
        lowered = lower_graph(graph, lowering, fuse=fuse, cache_dir=cache_dir)
    except LoweringError as e:
        raise ModelError(str(e)) from None
    model = CompiledModel(graph, lowered, params)
    if model.bytes_needed(1) > available_memory():
        raise ModelError(f"network {graph.name!r} needs {_fmt_bytes(model.bytes_needed(1))} "
                         f"of buffers at batch 1, more than the "
                         f"{_fmt_bytes(available_memory())} available")
    if warm:
        model.warm_up()
    model.compile_seconds = time.perf_counter() - t0
    return model

