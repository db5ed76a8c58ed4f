"""The compiled model: a graph lowered to generated Numba kernels, with a buffer arena.

    model = compile("resnet18")             # zoo name, .cnn path, DSL text, Graph or .onnx
    y = model(x)                            # NCHW float32, any batch size
    outs = model({"image": x})              # a dict when the network has several outputs

Compiling runs the pass pipeline over a copy of the graph (``compiler/passes``), lowers it to
a plan (``compiler/lower/driver.py``) and hands the plan to the CPU executor
(``runtime/executor.py``). Each batch size gets its own arena (allocated on the first call with
that batch size): one flat float32 buffer per slot of the compiler's buffer plan plus the
scratch space convolutions need. A call then allocates nothing but the returned outputs (copies;
pass ``copy=False`` to ``run`` for views into the arena, valid until the next call).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compiler.backends.numba import warm as numba_warm
from ..compiler.ir import Graph, node_location
from ..compiler.lower import lower_graph
from ..compiler.ops.detect import detections
from ..compiler.passes import LoweringError, PassContext, PassRecord, optimize
from ..compiler.passes.convolutionalize import fully_convolutional as convolutionalized
from ..compiler.passes.manager import DumpFolderError, OptionError, write_memory_plan
from ..compiler.plan import Plan
from ..compiler.target import Target, resolve_target
from ..compiler.types import LAYOUT_CHOICES
from ..dsl.errors import DslError
from ..dsl.source import read_source
from . import compile_cache
from .autotune import Autotuner
from .executor import Arena, Executor, flat_input
from .memory import available_memory, fmt_bytes
from .reference import InputError, check_finite, check_inputs
from .weights import check_parameter_memory, check_weights, init_params, load_weights, save_weights

if TYPE_CHECKING:  # for the annotations: the training runtime is imported when one is asked for
    from .train import TrainingModel

__all__ = ["compile", "cuda_sources", "CompiledModel", "ModelError", "NumericsError",
           "available_memory"]


class ModelError(InputError):
    """A model that cannot be built or run as asked (a target we lack, a batch size whose
    buffers would not fit in memory). An InputError so the CLI reports it as a user error."""


class NumericsError(ModelError):
    """``run(..., check_numerics=True)`` found a step whose output holds NaN or Inf: the first
    one in execution order. ``layer`` (with the names of the ops fused into it), ``op``,
    ``where`` (``file:line`` of its DSL, or ""), ``nan``, ``inf`` and ``size`` (elements of the
    output, batch included) say which and how many."""

    def __init__(self, layer: str, op: str, where: str, nan: int, inf: int, size: int,
                 fused: bool) -> None:
        self.layer, self.op, self.where = layer, op, where
        self.nan, self.inf, self.size = nan, inf, size
        at = f" at {where}" if where else ""
        note = ("; its kernel also computes the fused ops, compile with -O0 to see each alone"
                if fused else "")
        super().__init__(f"first non-finite values: layer {layer} ({op}){at} produced {nan:,} "
                         f"NaN and {inf:,} Inf of {size:,} values{note}")


def _load_graph(src: Any) -> tuple[Graph, dict[str, np.ndarray] | None]:
    """A Graph from a Graph, a zoo name, a .cnn path, DSL text or an .onnx file."""
    if isinstance(src, Graph):
        return src, None
    text = str(src)
    if "\n" not in text and text.lower().endswith(".onnx"):
        from .onnx import import_onnx  # written separately; imported only when needed

        dsl, weights = import_onnx(text)
        from ..dsl.builder import load_network

        return load_network(dsl), weights
    from ..dsl.builder import load_network

    return load_network(src), None


class CompiledModel:
    """A network compiled to generated kernels. Call it on NCHW float32 arrays.

    ``graph`` is the network as written (parameters are named and checked against it);
    ``plan.graph`` is the optimized graph the kernels compute; ``passes`` records what each
    pass did (``cnnc compile --explain``).
    """

    def __init__(self, graph: Graph, plan: Plan,
                 params: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]],
                 *, compile_seconds: float = 0.0, passes: list[PassRecord] | None = None,
                 opt_level: int = 2, packed: list[dict[str, np.ndarray]] | None = None) -> None:
        """``packed``: the steps' constants already packed from ``params`` (by an equal plan:
        ``runtime/compile_cache.py``), bound as they are instead of packed again; ``params``
        may then be the function that makes them, called when they are first asked for (the
        kernels need only the packed constants)."""
        self.graph = graph
        self.plan = plan
        self.steps = plan.steps
        self.passes = passes or []
        self.opt_level = opt_level
        self.executor = Executor(plan)
        self.compile_seconds = compile_seconds
        self._params: dict[str, np.ndarray] | None = None
        self._make_params = params if callable(params) else None
        if packed is None:
            self.set_params(params() if callable(params) else params)
        else:
            if not callable(params):
                self._params = self._checked(params)
            self.executor.set_packed(packed)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters by name (float32, read-only: change them with ``set_params``)."""
        return dict(self._values())

    def _values(self) -> dict[str, np.ndarray]:
        """The parameters, made first where they were left to be made when asked for."""
        if self._params is None:
            assert self._make_params is not None
            self._params = self._checked(self._make_params())
            self._make_params = None
        return self._params

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace the parameters (all of them, checked by name and shape); derived parameters
        (folded batch norms) are recomputed and every kernel's constants repacked."""
        self._params = self._checked(values)
        self.executor.set_params(self._params)

    def _checked(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float32 copies of ``values`` checked against the network, the literal weights its
        definition fixes put in, each read-only."""
        values = {k: np.array(v, dtype=np.float32) for k, v in values.items()}
        check_weights(self.graph, values)
        for node in self.graph.params():  # literal weights come from the network definition
            if node.attrs.get("init") == "literal":
                values[node.name] = np.asarray(node.attrs["value"], np.float32)
        for v in values.values():
            v.setflags(write=False)
        return values

    def save_weights(self, path: str | Path) -> None:
        save_weights(self._values(), path)

    def load_weights(self, path: str | Path) -> None:
        self.set_params(load_weights(self.graph, path))

    # -- memory -------------------------------------------------------------------------------
    def bytes_needed(self, batch: int) -> int:
        """Bytes of the arena for ``batch`` images (activations and scratch)."""
        return self.executor.bytes_needed(batch)

    def memory_available(self) -> int:
        """Bytes a new arena may take where the kernels run (a GPU's memory, or the host's)."""
        free = self.executor.memory.free_bytes()
        return available_memory() if free is None else free

    def _check_memory(self, n: int) -> None:
        if n in self.executor.arenas:
            return
        need = self.bytes_needed(n)
        avail = self.memory_available()
        if need > avail:
            raise ModelError(
                f"network {self.graph.name!r} at batch size {n} needs "
                f"{fmt_bytes(need)} of buffers, but only {fmt_bytes(avail)} of memory is "
                f"available; use a smaller batch (batch 1 needs "
                f"{fmt_bytes(self.bytes_needed(1))})")

    # -- running ------------------------------------------------------------------------------
    def _as_inputs(self, x: Any) -> dict[str, np.ndarray]:
        if isinstance(x, Mapping):
            return dict(x)
        names = list(self.graph.inputs)
        if len(names) != 1:
            raise InputError(f"network {self.graph.name!r} has {len(names)} inputs "
                             f"({', '.join(names)}); call it with a dict keyed by input name")
        return {names[0]: x}

    def run(self, inputs: Mapping[str, np.ndarray], *, copy: bool = True,
            check_numerics: bool = False) -> dict[str, Any]:
        """Run on named inputs; returns every output by name.

        On a GPU target (``cuda``) an input may be a CuPy array: the kernels read it on the
        device where it lies (checked for shape and dtype, not scanned for NaN). If any input
        is, the outputs are CuPy arrays on the device too (copies, or with ``copy=False`` views
        of the model's buffers, valid until its next call); otherwise NumPy arrays.

        ``check_numerics``: look at every step's output as it is produced and raise
        :class:`NumericsError` at the first one (in execution order) holding NaN or Inf, naming
        its layer, op, DSL location and the count of bad values. Off by default, and then it
        costs nothing: the plain run never looks at the values."""
        memory = self.executor.memory
        n = check_inputs(self.graph, inputs, dtypes=(np.float32,),
                         device=None if memory.host else memory.owns)
        self._check_memory(n)
        graph = self.plan.graph
        flat = {nid: flat_input(inputs[name]) for name, nid in graph.inputs.items()}
        on_device = not memory.host and any(memory.owns(v) for v in flat.values())
        if check_numerics:
            arena = self.executor.run_watched(flat, n, lambda i, a: self._raise_nonfinite(
                self.steps[i], a, flat))
        else:
            arena = self.executor.run(flat, n)
        result = {}
        for name, nid in graph.outputs.items():
            shape = (n,) + graph.node(nid).type.shape
            if on_device:
                result[name] = self._device_output(arena, flat, nid, shape, copy)
                continue
            v = self.executor.output(arena, flat, nid).reshape(shape)
            # a device's value is downloaded: a copy already
            result[name] = v.copy() if copy and memory.host else v
        self._remember_arena(n)
        return result

    def _device_output(self, arena: Any, flat: Mapping[int, Any], nid: int,
                       shape: tuple[int, ...], copy: bool) -> Any:
        """Output ``nid`` as an array of the GPU's memory, of ``shape``: its plain buffer as
        it lies (a copy unless ``copy`` is False), or a graph input as given."""
        buf = arena.value(self.plan, nid)
        if buf is None:
            return flat[self.plan.buffers.root(nid)].reshape(shape)
        if self.plan.buffers.storage.get(nid) is not None:  # not plain NCHW: moved through
            host = self.executor.value(arena, flat, nid)
            return self.executor.memory.upload(host).reshape(shape)
        v = buf[: int(np.prod(shape))].reshape(shape)
        return v.copy() if copy else v

    def _raise_nonfinite(self, step: Any, arena: Any, flat: Mapping[int, np.ndarray]) -> bool:
        """Raise NumericsError when ``step``'s output holds NaN or Inf (views: never)."""
        if step.view:
            return False
        value = self.executor.value(arena, flat, step.output)
        if np.isfinite(value).all():
            return False
        where = node_location(self.plan.graph, self.plan.graph.node(step.output))
        nan = int(np.isnan(value).sum())
        raise NumericsError(step.name, step.op, where, nan, int((~np.isfinite(value)).sum()) - nan,
                            int(value.size), fused="+" in step.op)

    def __call__(self, x: Any) -> Any:
        """``model(x)`` or ``model({"name": x})``: an array for one output, else a dict (NumPy
        arrays, or CuPy arrays where a CuPy array went in: ``run``). An output ``nms`` makes
        comes back as its list of boxes per image (``detections``: the padded rows without the
        padding); ``run`` returns the padded array."""
        out = self._one_array_call(x)
        if out is not None:
            return out
        out = self.run(self._as_inputs(x))
        for name, nid in self.graph.outputs.items():
            if self.graph.node(nid).op == "nms":
                value = out[name]
                if not isinstance(value, np.ndarray):  # a device's: boxes are host lists
                    value = self.executor.memory.download(value)
                out[name] = detections(value)
        return next(iter(out.values())) if len(out) == 1 else out

    def _one_array_call(self, x: Any) -> np.ndarray | None:
        """``model(x)`` for the common call, with only the checks it needs: one NumPy
        float32 C-contiguous array of the expected shape at a batch size run before, a
        network of one input and one plain output on the host (``_fast``), kernels that are
        one task range. None for anything else: ``run`` then checks it (with its clear
        errors) and runs it. The output is a copy: the arena's buffer is the next call's."""
        fast = self._fast
        if fast is None or type(x) is not np.ndarray or x.dtype != np.float32 or \
                x.shape[1:] != fast.shape or not x.flags.c_contiguous:
            return None
        found = fast.arenas.get(x.shape[0])
        if found is None:
            return None
        arena, out = found
        check_finite(fast.name, x)
        arena.run_input(fast.node, x.reshape(-1), self.executor.serial(x.shape[0]))
        return out.copy()

    @cached_property
    def _fast(self) -> OneArrayCall | None:
        """What ``_one_array_call`` needs of this model, or None where it does not apply."""
        graph = self.plan.graph
        if not self.executor.memory.host or len(graph.inputs) != 1 or \
                len(graph.outputs) != 1:
            return None
        (name, node), = graph.inputs.items()
        output = next(iter(graph.outputs.values()))
        t = graph.node(node).type
        if not t.batched or t.dtype != "float32" or graph.node(output).op == "nms" or \
                self.plan.buffers.storage.get(output) is not None:
            return None
        return OneArrayCall(name, node, t.shape, output, graph.node(output).type.shape)

    def _remember_arena(self, n: int) -> None:
        """After a call at batch ``n`` through ``run``: the arena and its output's view for
        ``_one_array_call``, where its calls are one task range and the output has a buffer
        of its own (not the input itself)."""
        fast = self._fast
        if fast is None or n in fast.arenas:
            return
        arena = self.executor.arenas.get(n)
        if arena is None or arena.whole is None:
            return
        buf = arena.value(self.plan, fast.output)
        if buf is None:
            return
        fast.arenas[n] = (arena, buf[: n * int(np.prod(fast.out_shape))].reshape(
            (n,) + fast.out_shape))

    def warm_up(self) -> None:
        """Get every kernel compiled (or loaded) for calls at batch 1. On the host, where
        batch 1's calls are one range of task functions: bind its arena (which compiles or
        loads each of them) and start the task loop on no call (which loads it), without
        computing the network on zeros (ResNet-50: 0.1 s of CPU of a cached compile's 1.0);
        otherwise (a host step between kernels, a device's modules) run once on zeros."""
        if self.executor.memory.host:
            arena = self.executor.arena(1)
            if arena.whole is not None:
                arena.program.run(0, 0)
                self._remember_arena(1)
                return
        self.run({name: np.zeros((1,) + self.graph.node(nid).type.shape, np.float32)
                  for name, nid in self.graph.inputs.items()})

    # -- statistics ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """What one call does, after the passes (``cnnc compile --stats``)."""
        from ..compiler.ops import count_macs

        macs = count_macs(self.plan.graph)
        transforms = sum(1 for s in self.steps for c in s.calls
                         if any(t in c.kernel for t in LAYOUT_TRANSFORMS))
        return {"kernels per call": self.plan.kernel_calls,
                "layout transforms per call": transforms,
                "arena bytes per image": self.bytes_needed(1),
                "multiply-accumulates per image": macs}

    # -- generated code -----------------------------------------------------------------------
    def sources(self) -> dict[str, str]:
        """Every generated source file of the model (file name -> text)."""
        # the listing (Numba: kernels run from shared modules; CUDA: the model's one module)
        name = self.plan.listing_file or f"model_{self.graph.name}.py"
        return {**self.plan.sources, name: self.plan.listing}

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
        kernels = sum(1 for s in self.steps if not s.view)
        return (f"CompiledModel({self.graph.name!r}, -O{self.opt_level}, {kernels} kernel "
                f"steps, inputs {list(self.graph.inputs)}, outputs {list(self.graph.outputs)})")


@dataclass
class OneArrayCall:
    """A model's one float32 input (``name``, graph node, shape per image) and one plain
    output (node, shape per image), with the arena of each batch size seen and its output's
    view: what ``CompiledModel._one_array_call`` reads."""

    name: str
    node: int
    shape: tuple[int, ...]
    output: int
    out_shape: tuple[int, ...]
    arenas: dict[int, tuple[Arena, np.ndarray]] = field(default_factory=dict)


#: Kernels that only change how a tensor is laid out in memory (NCHW <-> blocked, im2col).
LAYOUT_TRANSFORMS = ("pack_nchw_blocked", "unpack", "im2col", "crop")


class CompileProgress:
    """A progress bar (kernels compiled / total) on stderr for a cold compile; nothing for a
    warm one. Drawn when asked (``enabled=True``), or by default only on a terminal and once
    the compile has taken a second; it stays on its line when done, ending with a newline,
    so what follows starts on a line of its own."""

    def __init__(self, enabled: bool | None = None, delay: float = 1.0) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self.delay = 0.0 if enabled else delay
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.perf_counter() - self.start < self.delay:
                return
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="compiling kernels", unit="kernel",
                            file=sys.stderr, leave=True)
        self.bar.n = done
        self.bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _target(target: str | Target) -> Target:
    try:
        return resolve_target(target)
    except ValueError as e:
        raise ModelError(str(e)) from None


class _Front:
    """Where a program's front-end cache entry is (``path``, ``key``) and what it holds
    (``entry``: None on a miss)."""

    def __init__(self, path: Path, key: str, entry: compile_cache.Frontend | None,
                 onnx: str | None = None) -> None:
        self.path, self.key, self.entry = path, key, entry
        #: an ONNX file's path and the text that stands for it (its weights are its own)
        self.onnx = onnx
        self.onnx_text: str | None = None


def _cached_front(src: Any, cpu: Target, *, opt_level: int, lowering: str | Mapping[str, str],
                  layout: str, cache_dir: str | Path | None) -> _Front | None:
    """The front-end cache entry of a program given as a zoo name, a .cnn path, DSL text or
    an ONNX file (None for a Graph, or a program that imports files or external data: no
    entry is kept)."""
    if isinstance(src, Graph):
        return None
    text = str(src)
    onnx = None
    if "\n" not in text and text.lower().endswith(".onnx"):
        try:
            found = compile_cache.onnx_text(Path(text).read_bytes())
        except OSError:
            return None  # reported by the import, as without the cache
        if found is None:
            return None
        # the file by its absolute path: its weights may be read later, from another folder
        onnx = file = str(Path(text).resolve())
        text = found
    else:
        try:
            text, file = read_source(src)
        except DslError:
            return None  # reported by the parse, as without the cache
        if not compile_cache.frontend_cacheable(text):
            return None
    key = compile_cache.frontend_key(text, file, cpu, opt_level, lowering, layout)
    path = compile_cache.entry_path(compile_cache.FRONTEND, key, cache_dir)
    front = _Front(path, key, compile_cache.load_frontend(path, key), onnx)
    if onnx is not None:
        front.onnx_text = text
    return front


def _onnx_weights(path: str, text: str) -> dict[str, np.ndarray]:
    """The weights of the ONNX file at ``path``, which its front-end entry was keyed under
    ``text`` (:func:`compile_cache.onnx_text`): refused if it has changed since."""
    from .onnx import import_onnx  # imported only when needed (onnx's import: 0.3 s and more)

    try:
        same = compile_cache.onnx_text(Path(path).read_bytes()) == text
    except OSError:
        same = False
    if not same:
        raise ModelError(f"{path} has changed since this model was compiled from it; compile "
                         "it again to read its weights")
    return import_onnx(path)[1]


def _lower(graph: Graph, cpu: Target, *, lowering: str | Mapping[str, str],
           cache_dir: str | Path | None, opt_level: int, layout: str,
           dump_ir: str | Path | None, force: bool, progress: bool | None, autotune: bool,
           device: str | None = None, warm: bool = True,
           front: _Front | None = None) -> tuple[Plan, list[PassRecord]]:
    """The optimized copy of ``graph`` lowered for ``cpu`` (its kernels loaded, except a CUDA
    module printed for ``device="none"``), and the pass records. ``front``: the program's
    front-end cache entry: its optimized graph used where it has one, else stored there."""
    if opt_level not in (0, 1, 2):
        raise ModelError(f"opt_level must be 0, 1 or 2, got {opt_level!r}")
    if layout not in LAYOUT_CHOICES:
        raise ModelError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {layout!r}")
    if autotune and cpu.cuda:
        raise ModelError(f"autotune measures CPU kernels; target {cpu} has none")
    if front is not None and front.entry is not None:
        optimized, records = front.entry.optimized, front.entry.records
    else:
        optimized = graph.copy()
        try:
            measure = (Autotuner(compile, cpu, layout=layout, opt_level=opt_level,
                                 cache_dir=cache_dir) if autotune else None)
            records = optimize(optimized, opt_level,
                               ctx=PassContext(lowering=lowering, layout=layout,
                                               measure=measure, target=cpu,
                                               replace_dump=force),
                               dump_dir=dump_ir)
        except (LoweringError, DumpFolderError) as e:
            raise ModelError(str(e)) from None
        if front is not None:  # the graphs as the passes left them
            compile_cache.store_frontend(front.path, front.key,
                                         compile_cache.Frontend(graph, optimized, records))
    backend = None
    if cpu.cuda:
        # imported here, for start-up cost: a CPU target never loads the CUDA backend
        from ..compiler.backends.cuda.loader import CudaBackend

        root = Path(cache_dir) if cache_dir is not None else None
        backend = CudaBackend(root, f"model_{graph.name}", device=device or (
            "gpu" if cpu.backend == "cuda" else "emulate"))
    bar = CompileProgress(progress)
    try:
        plan = lower_graph(optimized, cache_dir=cache_dir, progress=bar, backend=backend,
                           warm=warm)
    except LoweringError as e:
        if not cpu.cuda:  # on the CPU every op lowers: a bug, with its traceback
            raise
        raise ModelError(f"target {cpu}: {e}") from None  # an op CUDA lacks, by name
    finally:
        bar.close()
    if dump_ir is not None:
        write_memory_plan(Path(dump_ir), len(records), plan.dump())
    return plan, records


def cuda_sources(source_or_graph_or_path: Any, lowering: str | Mapping[str, str] = "auto",
                 *, opt_level: int = 2, layout: str = "auto") -> dict[str, str]:
    """The CUDA module of a network (file name -> source), printed without a GPU: what
    ``compile(..., target="cuda")`` would load."""
    graph, _ = _load_graph(source_or_graph_or_path)
    plan, _ = _lower(graph, _target("cuda"), lowering=lowering, cache_dir=None,
                     opt_level=opt_level, layout=layout, dump_ir=None, force=False,
                     progress=False, autotune=False, device="none")
    return {plan.listing_file: plan.listing}


def compile(source_or_graph_or_path: Any, target: str | Target = "cpu",  # noqa: A001 - public API
            weights: None | Mapping[str, np.ndarray] | str | Path = None, seed: int = 0,
            lowering: str | Mapping[str, str] = "auto", cache_dir: str | Path | None = None,
            *, opt_level: int = 2, layout: str = "auto", warm: bool = True,
            dump_ir: str | Path | None = None, force: bool = False,
            progress: bool | None = None, autotune: bool = False, mode: str = "infer",
            fully_convolutional: bool = False, input_size: tuple[int, int] | None = None,
            **training: Any) -> CompiledModel | TrainingModel:
    """Compile a network to Numba kernels (or CUDA ones).

    ``target``: ``cpu`` (this machine's CPU: 16-lane kernels with AVX-512, else 8-lane), or
    ``avx2`` / ``avx512`` to choose (``compiler/target.py``; the numbers are the same);
    ``cuda-emu``: the model's CUDA module run on the CPU by the emulation (slow: for checking
    the CUDA kernels); ``cuda``: an NVIDIA GPU through CuPy (without one, refused with what was
    looked for and found; ``cuda_sources`` prints the module without a GPU).
    ``weights``: None (deterministic initialization from ``seed``; an ONNX file's own), a
    dict by parameter name, or an .npz path (for a network of a million parameters or more,
    the packed constants of each are kept in the compile cache: ``runtime/compile_cache.py``).
    ``opt_level``: 0 (no optimizing pass), 1 (folding and fusion) or 2 (everything;
    ``compiler/passes/pipelines.py``). ``lowering``: ``auto`` (the pipeline
    chooses), ``direct`` or ``im2col`` for every convolution, or a dict from layer name to one
    of those. ``layout``: ``auto`` (activations stay channel-blocked where the rules allow, at
    -O2, in blocks of 8 or 16 channels as a cost model picks per region), ``NCHW`` (every
    activation plain), ``NCHW8c``, ``NCHW16c`` or ``NHWC`` (every blocked region in that
    storage where each of its kernels has that form, else NCHW8c; NHWC: channels padded to
    whole 8-channel blocks). ``cache_dir`` overrides the kernel cache
    (default ``$CNNC_CACHE_DIR`` or ``~/.cache/cnnc``). ``dump_ir``: a folder to write the IR
    after each pass to: a new or empty one, unless ``force`` (an earlier dump there is
    replaced), and, last, the lowered graph with each value's arena slot. With ``warm``
    (default) every kernel is compiled (or loaded from the disk cache) before this returns;
    without it each kernel compiles on its first call (a model only inspected compiles none).
    ``progress``: a progress bar on stderr while kernels compile (True: always, from the
    start; None: only when stderr is a terminal and the compile takes over a second).
    ``autotune``: time each convolution's algorithms once, compiled for this target,
    optimization level and layout (the winner is cached per shape, attributes, those options
    and CPU), instead of trusting the cost model.

    ``fully_convolutional``: the network built as declared, with its weights, then run on
    ``input_size`` (height, width) images: its ``flatten -> dense`` heads become convolutions
    over the same weights, so a classifier returns a grid of scores, one per window of the size
    it was declared at (``compiler/passes/convolutionalize.py``); ``model.graph`` is the
    rewritten network (its input of the new size, its parameters those of the declared one).

    ``mode="train"``: a :class:`~cnnc.runtime.train.TrainingModel` (the loss attached, the
    backward graph generated, an optimizer over the trainable parameters); ``training`` takes
    ``runtime.train.compile_training``'s options: ``loss`` (``cross_entropy``, ``mse``,
    ``bce_with_logits``, ``triplet``, ``contrastive``, ``localization``, or a list of
    ``(output, loss[, weight[, options]])`` terms summed), ``output``, ``loss_options`` (the
    loss's own: ``margin``, ``box_weight``...), ``optimizer`` (``sgd``, ``adam``, ``adamw``),
    ``lr``, ``momentum``,
    ``nesterov``, ``weight_decay``, ``betas``, ``eps``, ``clip_norm``, ``label_smoothing``,
    ``freeze`` (parameter name patterns).
    """
    t0 = time.perf_counter()
    cpu = _target(target)
    if cpu.backend == "cuda":
        # imported here, for start-up cost: a CPU target never loads the CUDA backend
        from ..compiler.backends.cuda.loader import gpu_problem

        problem = gpu_problem()
        if problem is not None:
            raise ModelError(problem)
    front = None
    if mode == "infer" and not autotune and dump_ir is None and not fully_convolutional:
        front = _cached_front(source_or_graph_or_path, cpu, opt_level=opt_level,
                              lowering=lowering, layout=layout, cache_dir=cache_dir)
    # Workers for the kernels a cold compile will compile, started now so that they get
    # ready while this process parses, optimizes and lowers (``warm``): only for a program
    # the compile cache has not seen (its kernels are then likely missing too; a graph
    # object, which that cache does not key, starts its workers when its kernels are known).
    helpers = None
    if warm and not cpu.cuda and front is not None and front.entry is None:
        helpers = numba_warm.Helpers.prestart()
    try:
        if front is not None and front.entry is not None:
            graph, onnx_weights = front.entry.graph, None
        else:
            graph, onnx_weights = _load_graph(source_or_graph_or_path)
        # an ONNX file's own weights, where its front-end entry stands for them: read from the
        # file only if the cache of packed constants lacks them or they are asked for
        from_file = weights is None and onnx_weights is None and front is not None and \
            front.onnx is not None
        # the seeded initial values are made after lowering, where they may come from the cache
        # of packed constants (runtime/compile_cache.py) with the kernels' constants
        # (not a network made fully convolutional: its values are the declared network's)
        seeded = weights is None and onnx_weights is None and not fully_convolutional and \
            not from_file
        params: dict[str, np.ndarray] = {}
        if seeded or from_file:
            check_parameter_memory(graph)  # refused before anything is compiled
        elif weights is None:
            params = onnx_weights if onnx_weights is not None else init_params(graph, seed)
        elif isinstance(weights, (str, Path)):
            params = load_weights(graph, weights)
        else:
            check_weights(graph, dict(weights))  # refuses strings, complex, NaN before converting
            params = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        if mode not in ("infer", "train"):
            raise ModelError(f"mode must be 'infer' or 'train', got {mode!r}")
        if fully_convolutional != (input_size is not None):
            raise ModelError("fully_convolutional=True and input_size=(height, width) go together")
        if fully_convolutional:
            if mode == "train":
                raise ModelError("fully_convolutional runs a trained classifier on larger images; "
                                 "it takes no mode='train'")
            try:
                graph = convolutionalized(graph, input_size)
            except OptionError as e:
                raise ModelError(str(e)) from None
        if mode == "train":
            if autotune:
                raise ModelError("mode='train' takes no autotune option yet")
            if layout not in LAYOUT_CHOICES:
                raise ModelError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got "
                                 f"{layout!r}")
            # imported here, for start-up cost: an inference compile never loads the training
            # runtime
            from .train import compile_training

            if seeded:
                params = init_params(graph, seed)

            bar = CompileProgress(progress)
            try:
                tm = compile_training(graph, params, target=cpu, opt_level=opt_level,
                                      lowering=lowering, layout=layout, dump_ir=dump_ir,
                                      replace_dump=force,
                                      cache_dir=cache_dir, progress=bar, compile_inference=compile,
                                      **training)
            except TypeError as e:
                raise ModelError(f"mode='train': {e}") from None
            except DumpFolderError as e:
                raise ModelError(str(e)) from None
            finally:
                bar.close()
            tm.compile_seconds = time.perf_counter() - t0
            return tm
        if training:
            raise ModelError(f"{', '.join(sorted(training))}: training options need mode='train'")
        plan, records = _lower(graph, cpu, lowering=lowering, cache_dir=cache_dir,
                               opt_level=opt_level, layout=layout, dump_ir=dump_ir, force=force,
                               progress=progress, autotune=autotune, warm=warm and cpu.cuda,
                               front=front)
        # On the CPU the kernels compile (in the workers, and here in ``finish``) while this
        # process makes and packs the parameters, which need none of them.
        warming = None
        if warm and not cpu.cuda:
            warming = numba_warm.start(numba_warm.jobs_for(plan.steps), helpers=helpers)
        elif helpers is not None:
            helpers.close()
        helpers = None
        front_key = None if front is None else front.key
        if seeded:
            model = _model(graph, plan, records, opt_level, lambda: init_params(graph, seed),
                           seed, cpu, autotune, cache_dir, front_key)
        elif front is not None and front.onnx is not None and weights is None:
            # the file's own weights: keyed by its front-end key, which hashes them
            path, text = front.onnx, front.onnx_text or ""
            model = _model(graph, plan, records, opt_level,
                           params if onnx_weights is not None else
                           (lambda: _onnx_weights(path, text)),
                           "onnx", cpu, autotune, cache_dir, front_key)
        else:
            model = _model(graph, plan, records, opt_level, params, None, cpu, autotune,
                           cache_dir, front_key)
        if warming is not None:
            bar = CompileProgress(progress)
            try:
                warming.finish(bar)
            finally:
                bar.close()
        if model.bytes_needed(1) > model.memory_available():
            raise ModelError(f"network {graph.name!r} needs {fmt_bytes(model.bytes_needed(1))} "
                             f"of buffers at batch 1, more than the "
                             f"{fmt_bytes(model.memory_available())} available")
        if warm:
            model.warm_up()
        model.compile_seconds = time.perf_counter() - t0
        return model
    except BaseException:
        if helpers is not None:
            helpers.kill()
        raise


def _model(graph: Graph, plan: Plan, records: list[PassRecord], opt_level: int,
           params: dict[str, np.ndarray] | Callable[[], dict[str, np.ndarray]],
           origin: int | str | None, cpu: Target, autotune: bool,
           cache_dir: str | Path | None, front: str | None) -> CompiledModel:
    """The compiled model of ``plan`` with ``params`` (or the function that makes them: the
    seeded initial values, an ONNX file's), the kernels' constants read from the cache of
    packed constants where this plan's are there for those values (the values then made
    only when asked for), else packed and stored there. ``origin``: what the values are,
    for the key (a seed, ``"onnx"`` for an ONNX file's under its front-end key; None: given
    values, by their digest). ``front``: the front-end key the graphs came under."""
    def values() -> dict[str, np.ndarray]:
        return params() if callable(params) else params

    if not compile_cache.constants_cacheable(graph, plan, cpu, autotune):
        return CompiledModel(graph, plan, values(), passes=records, opt_level=opt_level)
    if origin is None:
        origin = compile_cache.weights_digest(values())
    key = compile_cache.constants_key(graph, plan, origin, cpu, front)
    path = compile_cache.entry_path(compile_cache.CONSTANTS, key, cache_dir)
    consts = compile_cache.load_constants(path, key, plan)
    if consts is not None:
        return CompiledModel(graph, plan, params, passes=records, opt_level=opt_level,
                             packed=consts)
    model = CompiledModel(graph, plan, values(), passes=records, opt_level=opt_level)
    compile_cache.store_constants(path, key, plan, model.executor.consts)
    return model
