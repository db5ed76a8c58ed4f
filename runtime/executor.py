"""The executor: binds a compiler plan once, then runs it, on the CPU (Numba kernels) or a
GPU (CUDA kernels through CuPy, or their CPU emulation).

Memory: the arena, the packed constants and the inputs of a call live where the plan's kernels
read them (``plan.memory``, the backend's: NumPy's for Numba, a GPU's for CUDA); the executor
uploads constants when parameters are set and inputs at each call, downloads a value when it is
read, and otherwise only slices the buffers and hands them to kernels. In NumPy's memory the
uploads and downloads are the arrays themselves.

Parameters: whenever they are set, the plan's parameter-time nodes (derived parameters such as
folded batch-norm weights, folded constants) are evaluated from the source parameters (in
float64 where they compute, on the float32 values as they are where they only move them), and
each step's packer turns those values into its flat float32 constants. A caller that says
which parameters changed (``set_params(..., changed=)``: a training step after its update) has
only the nodes and constants that depend on them made again, packings into the memory of the
last ones (``OpDef.reference_into``). On a GPU, a training model's parameters live in a device
buffer that its optimizer updates there (``gather_on_device``): a step's constants that only
move parameters' values (packing, transposes, slicing: every op on the way ``moves_values``)
are then copied out of that buffer by one gather kernel on the device, through an index made
once by packing the parameters' float positions in place of their values, and need no round
trip through the host.

Calls: every batch size gets an arena (one flat float32 buffer per slot of the plan's buffer
plan, plus the scratch buffers), and every kernel call's arguments are resolved to arrays and
integers once for that arena; new parameters only replace the constant arguments. On the CPU
the generated kernels' calls are bound into one task program (``backends/numba/tasks.py``): a
call then only patches the caller's input arrays into it and runs it, one call of a compiled
loop for every run of consecutive kernels, with no Python between them. The caller may hand
in the buffers of whole-batch slots (the training model's flat gradient buffer): every arena
uses them.

Collective steps (``Step.collective``: ``allreduce_mean``): after their kernels, their output
is averaged over the data-parallel replicas the executor is given (``set_replicas``), one
Python call in the list of calls; with none the kernels' copy is the value.

Small calls run on one thread: a call of fewer than ``SERIAL_WORK`` multiply-accumulates
(LeNet-5 at batch 1 has 0.42 million) runs every kernel's tasks in order on the calling thread
(``TaskProgram.run``'s ``serial``), because waking the other threads costs more than they save
there, and on a loaded machine threads waiting for work spin against the other processes
(LeNet-5 at batch 1 beside two busy processes on 2 cores: p99 272 ms on two threads, 8 ms on
one; bench/RESULTS.md). No parallel region is started at all: one costs 1-2 us even on one
thread (LeNet-5's eleven kernels: 45 -> 35 us a call), and Numba's pool is left as it is.

The one-array call (``Arena.run_input``): a caller that has checked its array (the compiled
model's ``__call__``: one NumPy float32 C-contiguous input of the expected shape) has its
address written straight into the task blocks, with no per-argument checks, and the calls run
(bench/RESULTS.md: ``model(x)`` of one trivial kernel 17 -> 5 us).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..compiler.backends import Memory
from ..compiler.backends.numba.tasks import TaskKernel, TaskProgram
from ..compiler.ir import Graph
from ..compiler.ops import count_macs, evaluate, get_op
from ..compiler.plan import Arg, Plan, Step
from .replicas import Replicas

__all__ = ["Executor", "Arena", "SERIAL_WORK", "TaskRange", "PythonCall", "DeviceConstants",
           "flat_input"]

#: Multiply-accumulates of a whole call below which its kernels run on one thread.
SERIAL_WORK = 4_000_000


@dataclass(frozen=True)
class TaskRange:
    """Calls ``first`` to ``last - 1`` of an arena's task program."""

    first: int
    last: int


@dataclass(frozen=True)
class PythonCall:
    """``fn(*args)`` with the caller's inputs patched in at ``patches`` ((position, node))."""

    fn: Callable[..., Any]
    args: list[Any]
    patches: list[tuple[int, int]]


Item = TaskRange | PythonCall

#: A parameter float's position ``i`` in the flat buffer is traced through the packers as the
#: float32 pair ``((i + 1) // SPLIT, (i + 1) % SPLIT)``: both exact in float32 (below 2^24)
#: for buffers of up to 2^36 floats; 0 stands for a zero the packing wrote.
SPLIT = 4096


@dataclass
class DeviceConstants:
    """Steps whose constants are gathered on the device from a flat parameter buffer
    (:meth:`Executor.gather_on_device`)."""

    flat: Any  # the parameters, flat, in the plan's memory
    offsets: dict[str, int]  # where each parameter begins in ``flat``
    gather: Callable[..., None]  # the gather_constants kernel: (p, index, out, n) by name
    steps: frozenset[int] = frozenset()  # the steps whose constants are gathered
    buffer: Any = None  # their constants one after another (each a flat view of it)
    index: Any = None  # for each float of ``buffer`` its position in ``flat`` (-1: zero)
    host_reads: frozenset[str] = frozenset()  # device parameters packed on the host still


def _extend(items: list[Item], item: Item) -> None:
    """Append ``item``, merging a task range into the one it continues."""
    last = items[-1] if items else None
    if isinstance(item, TaskRange) and isinstance(last, TaskRange) and last.last == item.first:
        items[-1] = TaskRange(last.first, item.last)
    else:
        items.append(item)


class Arena:
    """Buffers of one batch size and the calls bound to them."""

    def __init__(self, executor: Executor, n: int) -> None:
        plan = executor.plan
        self.n = n
        # zeroed once: channel-blocked values keep a zero halo (their padding) for good
        whole = plan.buffers.unbatched
        memory = self.memory = plan.memory
        # on a device (``replay``): whether the module has run a call, the calls captured,
        # and the buffers the capture reads the graph inputs from
        self.warm = False
        self.graph: Callable[[], None] | None = None
        self.staged: dict[int, Any] = {}
        # every call a kernel launch: no host step, whose Python a capture would not replay
        self.replayable = not memory.host and all(s.lowering != "host" for s in plan.steps)
        self.slots = [executor.slots[i] if i in executor.slots else
                      memory.zeros(size if i in whole else n * size)
                      for i, size in enumerate(plan.buffers.slot_sizes)]
        self.scratch = {k: memory.empty(n * v) for k, v in plan.scratch.items()}
        self.values: dict[int, Any] = {}
        for step in plan.steps:
            if step.output not in plan.buffers.slot_of:
                continue  # a view of another value, or a graph input
            slot = self.slots[plan.buffers.slot_of[step.output]]
            if step.storage is not None:  # maybe a channel range of a concatenation's buffer
                start = step.storage.offset
                self.values[step.output] = slot[start: n * step.storage.floats]
            else:  # whole-batch values placed together begin at their offset
                start = plan.buffers.offset.get(step.output, 0)
                size = (n if step.batched else 1) * step.out_size
                self.values[step.output] = slot[start: start + size]
        self.bind(executor)

    def value(self, plan: Plan, node: int) -> Any:
        """The buffer of a tensor value in the plan's memory, from its first element on (None
        for a graph input: the caller's array). A slice of blocked storage starts later in its
        base's buffer."""
        root = plan.buffers.root(node)
        buf = self.values.get(root)
        storage = plan.buffers.storage.get(node)
        if buf is None or storage is None or node == root:
            return buf
        return buf[storage.offset - plan.buffers.storage[root].offset:]

    def bind(self, executor: Executor) -> None:
        """Resolve every argument of every call (constants are bound by reference: new
        parameters replace them, ``bind_consts``). In the host's memory the generated kernels'
        calls are bound into one :class:`TaskProgram` and consecutive ones run as one range of
        it, with no Python between them; other calls (host steps, the replicas' averaging, a
        device's launches) are Python calls between the ranges."""
        plan = executor.plan
        host = executor.memory.host
        self.graph = None
        tasks: list[tuple[TaskKernel, list[Any]]] = []
        # per task call: where its graph inputs go; per constant: where it is bound
        self.task_patches: list[tuple[int, int, int]] = []
        self.const_args: list[tuple[int | list[Any], int, int, str]] = []
        self.step_items: list[list[Item]] = []
        for index, (step, consts) in enumerate(zip(plan.steps, executor.consts)):
            items: list[Item] = []
            for call in step.calls:
                args = [self._resolve(plan, step, consts, a) for a in call.args]
                patches = [(pos, plan.buffers.root(a.ref)) for pos, a in enumerate(call.args)
                           if args[pos] is None]  # graph inputs: patched in per call
                is_task = host and isinstance(call.fn, TaskKernel)
                if is_task:
                    at = len(tasks)
                    tasks.append((call.fn, args))
                    self.task_patches += [(at, pos, nid) for pos, nid in patches]
                    _extend(items, TaskRange(at, at + 1))
                else:
                    items.append(PythonCall(call.fn, args, patches))
                self.const_args += [(at if is_task else args, pos, index, a.ref)
                                    for pos, a in enumerate(call.args) if a.kind == "const"]
            if step.collective and executor.replicas is not None:
                items.append(PythonCall(executor.replicas.average,
                                        [self.values[step.output]], []))
            self.step_items.append(items)
        self.program = TaskProgram(tasks)
        self.items: list[Item] = []
        for items in self.step_items:
            for item in items:
                _extend(self.items, item)
        # where each graph input's address and size go in the task blocks (``run_input``)
        self.input_words = [(at, pos, self.program.blocks[at], tasks[at][0].offsets[pos], nid)
                            for at, pos, nid in self.task_patches]
        # one task range and no Python call: what ``run_input`` runs
        whole = self.items[0] if len(self.items) == 1 else None
        self.whole: TaskRange | None = whole if isinstance(whole, TaskRange) else None

    def bind_consts(self, executor: Executor) -> None:
        """Replace the constant arguments of every call by the executor's current ones."""
        for where, pos, index, name in self.const_args:
            value = executor.consts[index][name]
            if isinstance(where, int):
                self.program.set(where, pos, value)
            else:
                if where[pos] is not value:  # a capture holds the old array's address
                    self.graph = None
                where[pos] = value

    def replay(self, inputs: Mapping[int, Any]) -> None:
        """Run every call on a device (kernel launches, and host steps' Python), the caller's
        flat input arrays (NumPy's or the device's) by graph-input node id. The first call
        runs as it comes: the module is compiled and its kernels fetched at their first
        launch, which no capture may hold. The next captures the calls (``Memory.capture``:
        a CUDA graph on a GPU) reading the inputs from buffers of the arena's own, and every
        call from then on copies its inputs there and replays the capture: one launch from
        the host in place of one per kernel (and of Python's per-launch checks). New
        constant arrays (``bind_consts``, ``bind``) have the next call capture again. Only
        where every call is a launch (``replayable``: a host step runs Python between
        them)."""
        if not self.warm or not self.replayable:
            self.call(self.items, in_memory(self.memory, inputs))
            self.warm = True
            return
        memory = self.memory
        if self.graph is None:  # the buffers are this call's inputs' copies
            self.staged = {k: v.copy() if memory.owns(v) else memory.upload(v)
                           for k, v in inputs.items()}
            self.graph = memory.capture(partial(self.call, self.items, self.staged))
        else:
            for k, v in inputs.items():
                if memory.owns(v):
                    memory.copy(self.staged[k], v)
                else:
                    memory.write(self.staged[k], np.asarray(v))
        self.graph()

    def call(self, items: list[Item], inputs: Mapping[int, Any], serial: bool = False) -> None:
        """Run ``items`` in order, the caller's input arrays patched into their places;
        ``serial``: each kernel's tasks in order on this thread, no parallel region started
        (``TaskProgram.run``)."""
        self._patch(items, inputs)
        for item in items:
            if isinstance(item, TaskRange):
                self.program.run(item.first, item.last, serial)
            else:
                self._python_call(item, inputs)

    def run_input(self, node: int, flat: np.ndarray, serial: bool) -> None:
        """Run every call on the one graph input ``node``: ``flat``, a flat C-contiguous
        float32 NumPy array of this arena's batch, checked by the caller (its address is
        written into the blocks as it is: a wrong array here reads out of bounds). Only for
        an arena of host kernels whose calls are one task range (``whole``)."""
        assert self.whole is not None
        address, size = flat.ctypes.data, flat.size
        for at, pos, block, word, nid in self.input_words:
            if nid == node:
                block[word] = address
                block[word + 1] = size
                self.program.args[at][pos] = flat  # held while the blocks point to it
        self.program.run(self.whole.first, self.whole.last, serial)

    def calls_of(self, index: int, inputs: Mapping[int, Any]) -> list[Callable[[], None]]:
        """Step ``index``'s calls one by one, each a function that runs it (a profiler times
        them apart: a convolution's packing, compute and unpacking)."""
        items = self.step_items[index]
        self._patch(items, inputs)
        runs: list[Callable[[], None]] = []
        for item in items:
            if isinstance(item, TaskRange):
                runs += [partial(self.program.run, i, i + 1) for i in range(item.first, item.last)]
            else:
                runs.append(partial(self._python_call, item, inputs))
        return runs

    def _patch(self, items: list[Item], inputs: Mapping[int, Any]) -> None:
        """Patch the caller's input arrays into the task calls of ``items``."""
        whole = items is self.items
        ranges = [] if whole else [item for item in items if isinstance(item, TaskRange)]
        for at, pos, nid in self.task_patches:
            if whole or any(r.first <= at < r.last for r in ranges):
                self.program.set(at, pos, inputs[nid])

    @staticmethod
    def _python_call(item: PythonCall, inputs: Mapping[int, Any]) -> None:
        args = item.args
        if item.patches:
            args = list(args)
            for pos, nid in item.patches:
                args[pos] = inputs[nid]
        item.fn(*args)

    def _resolve(self, plan: Plan, step: Step, consts: dict[str, Any], a: Arg) -> Any:
        if a.kind == "value":
            return self.value(plan, a.ref)
        if a.kind == "output":
            return self.values[step.output]
        if a.kind == "scratch":
            return self.scratch[a.ref][: self.n * plan.scratch[a.ref]]
        if a.kind == "const":
            return consts[a.ref]
        if a.kind == "int":
            return int(a.ref)
        if a.kind == "batch":
            return int(self.n) if a.ref is None else int(a.ref)
        raise ValueError(f"unknown argument kind {a.kind!r}")


class Executor:
    """Runs a :class:`~cnnc.compiler.plan.Plan` with its kernels, in the plan's memory."""

    def __init__(self, plan: Plan, slots: Mapping[int, np.ndarray] | None = None) -> None:
        """``slots``: the caller's float32 buffers of whole-batch slots, by slot index, in the
        plan's memory (NumPy arrays, or a GPU's: the training model's flat gradients)."""
        self.plan = plan
        self.memory = plan.memory
        self.macs_per_image = count_macs(plan.graph)  # small calls run on one thread
        self.consts: list[dict[str, Any]] = [{} for _ in plan.steps]
        self.arenas: dict[int, Arena] = {}
        self.slots = dict(slots or {})
        self.replicas: Replicas | None = None
        # the last parameter values by node id (kept where a later set_params says they did
        # not change), and the source parameters each constant node depends on
        self.values: dict[int, np.ndarray] = {}
        self.sources = parameter_sources(plan.graph, plan.param_nodes)
        # the source parameters each step's packer may read: its node's constant inputs'
        self.step_sources = [sources_of(plan.graph, plan.graph.node(step.node).inputs,
                                        self.sources) for step in plan.steps]
        self.device: DeviceConstants | None = None
        # the parameter-time nodes the host still evaluates (None: all)
        self.host_nodes: frozenset[int] | None = None
        for i, buf in self.slots.items():
            if isinstance(buf, np.ndarray) != self.memory.host:
                raise ValueError(f"slot {i}: a {type(buf).__name__}, not an array of the memory "
                                 "this plan's kernels run in")
            if i not in plan.buffers.unbatched or buf.dtype != np.float32 or \
                    buf.shape != (plan.buffers.slot_sizes[i],) or \
                    (self.memory.host and not buf.flags.c_contiguous):
                raise ValueError(f"slot {i}: a buffer of {plan.buffers.slot_sizes[i]} float32 "
                                 f"for a whole-batch slot, got {buf.dtype} {buf.shape}")

    def bytes_needed(self, batch: int) -> int:
        """Bytes of the arena for ``batch`` images (activations and scratch)."""
        floats = self.plan.buffers.floats_per_image + sum(self.plan.scratch.values())
        return 4 * (batch * floats + self.plan.buffers.whole_batch_floats)

    def parameter_values(self, params: Mapping[str, np.ndarray],
                         changed: Collection[str] | None = None,
                         reuse: bool = False) -> dict[int, np.ndarray]:
        """Every constant of the plan's graph by node id: the source parameters by name as
        they are, then the parameter-time nodes evaluated from them: in float64 where the
        node computes (batch-norm folds), on the values as they are where it only moves them
        (``OpDef.moves_values``: packing, transposes; exact in float32, and no float64 copy of
        every weight at each training step). With ``changed`` (names of the parameters that
        changed since the last call), a node that depends on none of them keeps its value
        of the last :meth:`set_params`. ``reuse``: an op that can (``OpDef.reference_into``:
        packing) writes its new value into the memory of its last value (so into the
        kernels' constants)."""
        graph = self.plan.graph
        values: dict[int, np.ndarray] = {}
        for node in graph.params():
            values[node.id] = np.asarray(params[node.name])
        stale = None if changed is None or not self.values else set(changed)
        last = self.values if reuse else {}
        needed = self.host_nodes if stale is not None else None
        for nid in self.plan.param_nodes:  # topological order
            if needed is not None and nid not in needed:
                continue  # only gathered constants read it: made on the device
            if stale is None or nid not in self.values or \
                    not self.sources[nid].isdisjoint(stale):
                values[nid] = _evaluate(graph, values, last, nid)
            else:
                values[nid] = self.values[nid]
        return values

    def set_params(self, params: Mapping[str, np.ndarray],
                   changed: Collection[str] | None = None) -> None:
        """Pack every step's constants from ``params`` (by name) and bind them in every arena.
        A packer's value that is already writable contiguous float32 is bound as it is, not
        copied: a source parameter passed so (the training model's flat parameter buffer) is
        read by the kernels where it lies, and must be set again after the caller changes it.
        ``changed``: the names of the parameters that changed since the last call (None:
        any); the constants of steps that read none of them are kept as they are."""
        device = self.device
        tracing = device is not None and device.index is None
        kept = self.consts if changed is not None and self.values and not tracing else None
        values = self.parameter_values(params, None if tracing else changed, reuse=True)
        self.values = values
        stale = set(changed or ())
        gathered = frozenset() if device is None else device.steps
        consts, regather = [], False
        for index, step in enumerate(self.plan.steps):
            fresh = kept is None or not self.step_sources[index].isdisjoint(stale)
            if index in gathered:  # views of the device buffer
                consts.append(self.consts[index])
                regather |= fresh
                continue
            if not fresh:
                consts.append(kept[index])
                continue
            packed = step.pack(values) if step.pack else {}
            # writable contiguous float32 (a read-only array would be a second Numba
            # signature), copied only where a packer's value is not that already
            consts.append({k: self.memory.upload(np.require(v, np.float32, ["C", "W"]))
                           for k, v in packed.items()})
        self.consts = consts
        if tracing:
            self._find_gathered(params)
        elif regather:
            device.gather(p=device.flat, index=device.index, out=device.buffer,
                          n=device.buffer.size)
        for arena in self.arenas.values():
            arena.bind_consts(self)

    def gather_on_device(self, flat: Any, offsets: Mapping[str, int],
                         gather: Callable[..., None]) -> None:
        """Have the steps whose constants only move values of the parameters held in ``flat``
        (a flat float32 buffer in the plan's memory, parameter ``name`` from
        ``offsets[name]`` on) make them on the device: ``gather`` (the ``gather_constants``
        kernel, called with ``p``, ``index``, ``out``, ``n``) copies them out of ``flat`` when
        a :meth:`set_params` says those parameters changed, instead of packing the host's
        values and uploading them; :meth:`reads_parameters` then says when a call still reads
        them. The steps are found at the next :meth:`set_params`, which reads every parameter:
        each packer is run on the float32 pair that numbers each parameter float (``SPLIT``),
        and a step is gathered where every one of its constants comes out as positions in
        ``flat`` (or zeros) through ops that only move values, and gathering the values of
        the parameters given reproduces its host packing exactly."""
        self.device = DeviceConstants(flat, dict(offsets), gather)

    def reads_parameters(self, changed: Collection[str]) -> bool:
        """Whether :meth:`set_params` with ``changed`` reads the values of parameters held on
        the device (:meth:`gather_on_device`) from its ``params`` (always, without one)."""
        device = self.device
        return device is None or device.index is None or not device.host_reads.isdisjoint(changed)

    def _find_gathered(self, params: Mapping[str, np.ndarray]) -> None:
        """The steps whose constants ``gather_on_device`` gathers (see there), their constants
        rebound to views of one device buffer, filled by a first gather."""
        device = self.device
        graph = self.plan.graph
        flat_size = int(device.flat.size)
        host_flat = np.zeros(flat_size, np.float32)
        halves: tuple[dict[int, np.ndarray], dict[int, np.ndarray]] = ({}, {})
        for node in graph.params():
            if node.name in device.offsets:
                start = device.offsets[node.name]
                host_flat[start: start + node.type.size] = np.ravel(params[node.name])
                code = np.arange(start + 1, start + 1 + node.type.size).reshape(node.type.shape)
                halves[0][node.id] = (code // SPLIT).astype(np.float32)
                halves[1][node.id] = (code % SPLIT).astype(np.float32)
        for nid in self.plan.param_nodes:  # topological order
            node = graph.node(nid)
            if get_op(node.op).moves_values and all(i in halves[0] for i in node.inputs):
                for half in halves:
                    half[nid] = evaluate(node.op, [half[i] for i in node.inputs], node.attrs)
        chosen: dict[int, dict[str, np.ndarray]] = {}
        for index, step in enumerate(self.plan.steps):
            sources = self.step_sources[index]
            if not step.pack or not sources or not sources <= device.offsets.keys():
                continue
            try:
                high, low = step.pack(halves[0]), step.pack(halves[1])
            except KeyError:  # it reads a value that is not only moved parameters
                continue
            found = {}
            for name, packed in self.consts[index].items():
                position = _positions(high.get(name), low.get(name), flat_size)
                if position is None or not np.array_equal(
                        np.where(position >= 0, host_flat[position], 0),
                        self.memory.download(packed).reshape(position.shape), equal_nan=True):
                    break
                found[name] = position
            else:
                chosen[index] = found
        host_steps = [i for i, step in enumerate(self.plan.steps) if step.pack and i not in chosen]
        device.host_reads = frozenset().union(
            *(self.step_sources[i] for i in host_steps)) & device.offsets.keys()
        self.host_nodes = _ancestors(graph, [i for s in host_steps
                                             for i in graph.node(self.plan.steps[s].node).inputs],
                                     frozenset(self.plan.param_nodes))
        positions = [p.reshape(-1) for found in chosen.values() for p in found.values()]
        index_array = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        device.index = self.memory.upload(index_array)
        device.buffer = self.memory.zeros(max(index_array.size, 1))
        start = 0
        for index, found in chosen.items():
            for name, position in found.items():
                self.consts[index][name] = device.buffer[start: start + position.size]
                start += position.size
        device.steps = frozenset(chosen)
        device.gather(p=device.flat, index=device.index, out=device.buffer,
                      n=int(index_array.size))

    def set_packed(self, consts: list[dict[str, np.ndarray]]) -> None:
        """Bind constants packed before (``set_params``' ``consts`` of an equal plan, read back
        from ``runtime/compile_cache.py``): one writable contiguous float32 array per name,
        per step, bound as they are."""
        if len(consts) != len(self.plan.steps):
            raise ValueError(f"{len(consts)} steps of constants for a plan of "
                             f"{len(self.plan.steps)}")
        self.values = {}  # the next set_params evaluates every parameter-time node
        self.consts = [{k: self.memory.upload(np.require(v, np.float32, ["C", "W"]))
                        for k, v in step.items()} for step in consts]
        for arena in self.arenas.values():
            arena.bind_consts(self)

    def set_replicas(self, replicas: Replicas | None) -> None:
        """The replicas the collective steps average over (None: none, the value as it is);
        they average host arrays, so only a plan whose kernels run in the host's memory."""
        if replicas is not None and not self.memory.host:
            raise ValueError("data-parallel replicas average host arrays; this plan's kernels "
                             "run in another memory")
        self.replicas = replicas
        for arena in self.arenas.values():
            arena.bind(self)

    def arena(self, n: int) -> Arena:
        arena = self.arenas.get(n)
        if arena is None:
            arena = Arena(self, n)
            self.arenas[n] = arena
        return arena

    def uploaded(self, inputs: Mapping[int, np.ndarray]) -> Mapping[int, Any]:
        """The caller's flat input arrays in the plan's memory (:func:`in_memory`)."""
        return in_memory(self.memory, inputs)

    def run(self, inputs: Mapping[int, np.ndarray], n: int) -> Arena:
        """Run every step on flat float32 inputs by graph-input node id; the outputs are in
        the returned arena (``output`` and ``value`` read them)."""
        arena = self.arena(n)
        if self.memory.host:
            arena.call(arena.items, inputs, self.serial(n))
        else:
            arena.replay(inputs)
        return arena

    def serial(self, n: int) -> bool:
        """Whether a call at batch ``n`` runs its kernels' tasks in order on the calling
        thread (fewer than ``SERIAL_WORK`` multiply-accumulates: the module's docstring)."""
        return self.macs_per_image * n < SERIAL_WORK

    def run_watched(self, inputs: Mapping[int, np.ndarray], n: int,
                    after: Callable[[int, Arena], bool],
                    each_call: Callable[[int, int, Callable[[], None]], None] | None = None
                    ) -> Arena:
        """Run the steps in order like :meth:`run`, calling ``after(index, arena)`` after each;
        stop early when it returns True (``check_numerics``: the first non-finite output).
        With ``each_call``, step ``index``'s calls are handed to it one by one,
        ``each_call(index, position, run)``, to be run (``run()``) and timed."""
        arena = self.arena(n)
        device_inputs = self.uploaded(inputs)
        for index in range(len(self.plan.steps)):
            if each_call is None:
                arena.call(arena.step_items[index], device_inputs)
            else:
                for position, run in enumerate(arena.calls_of(index, device_inputs)):
                    each_call(index, position, run)
            if after(index, arena):
                break
        return arena

    def value(self, arena: Arena, inputs: Mapping[int, np.ndarray], node: int) -> np.ndarray:
        """A tensor value as an NCHW ``[n, *shape]`` array (a view of plain storage; read out of
        channel-blocked storage, halo and padding channels left out)."""
        flat = self.output(arena, inputs, node)
        shape = self.plan.graph.node(node).type.shape
        if not self.plan.graph.node(node).type.batched:
            return flat[: int(np.prod(shape))].reshape(shape)
        storage = self.plan.buffers.storage.get(node)
        if storage is not None and len(shape) == 1:  # a flattened blocked tensor
            source = self.plan.graph.node(node).inputs[0]
            return self.value(arena, inputs, source).reshape(arena.n, -1)
        if storage is not None:
            return storage.load(flat, arena.n, shape)
        return flat[: arena.n * int(np.prod(shape))].reshape((arena.n,) + shape)

    def run_step(self, arena: Arena, index: int, inputs: Mapping[int, np.ndarray]) -> None:
        """Run step ``index`` alone (``cnnc check``); its tensor inputs must be in their
        buffers already (``store``), or in ``inputs`` for graph inputs."""
        arena.call(arena.step_items[index], self.uploaded(inputs))

    def store(self, arena: Arena, node: int, value: np.ndarray) -> None:
        """Write an NCHW ``[n, *shape]`` (or whole-batch) float32 value into the buffer of
        ``node`` in ``arena``, in its storage (``cnnc check`` feeds each step so)."""
        buffers = self.plan.buffers
        buf = arena.value(self.plan, node)
        storage = buffers.storage.get(node) or buffers.storage.get(buffers.root(node))
        if storage is None:
            self.memory.write(buf, value.reshape(-1))
            return
        if value.ndim == 2:  # a flattened blocked tensor: store the tensor itself
            source = self.plan.graph.node(node).inputs[0]
            value = value.reshape((arena.n,) + self.plan.graph.node(source).type.shape)
        host = self.memory.download(buf)  # the halo and the other channels stay as they are
        storage.store(value, host)
        self.memory.write(buf, host)

    def output(self, arena: Arena, inputs: Mapping[int, np.ndarray], node: int) -> np.ndarray:
        """The flat buffer of a value, as a host array (in NumPy's memory: the arena's buffer
        itself, a view; a graph input: the caller's array)."""
        buf = arena.value(self.plan, node)
        if buf is None:
            return inputs[self.plan.buffers.root(node)]
        return self.memory.download(buf)


def in_memory(memory: Memory, inputs: Mapping[int, Any]) -> Mapping[int, Any]:
    """The caller's flat input arrays in ``memory`` (an array already there, a caller's CuPy
    array, is read where it lies; in the host's, every NumPy array is)."""
    if memory.host:
        return inputs
    return {k: v if memory.owns(v) else memory.upload(v) for k, v in inputs.items()}


def flat_input(a: Any) -> Any:
    """A caller's input array as the flat contiguous array the kernels index: a view where it
    is contiguous (a NumPy array, or a GPU's array, which stays on its device)."""
    if isinstance(a, np.ndarray):
        return np.ascontiguousarray(a).reshape(-1)
    return a.reshape(-1)


def _positions(high: Any, low: Any, size: int) -> np.ndarray | None:
    """The flat buffer positions (-1: zero) a constant traced as ``high`` and ``low``
    (``SPLIT``) holds, as int64 of its shape; None where they are not such positions."""
    if high is None or low is None:
        return None
    high, low = np.asarray(high, np.float64), np.asarray(low, np.float64)
    if high.shape != low.shape or not (np.isfinite(high).all() and np.isfinite(low).all()):
        return None
    code = high * SPLIT + low
    if not (np.array_equal(code, np.round(code)) and (low >= 0).all() and (low < SPLIT).all()
            and (code >= 0).all() and (code <= size).all()):
        return None
    return code.astype(np.int64) - 1


def _ancestors(graph: Graph, inputs: list[int], param_nodes: frozenset[int]) -> frozenset[int]:
    """The parameter-time nodes among ``inputs`` and their inputs, recursively."""
    found: set[int] = set()
    stack = [i for i in inputs if i in param_nodes]
    while stack:
        nid = stack.pop()
        if nid not in found:
            found.add(nid)
            stack += [i for i in graph.node(nid).inputs if i in param_nodes]
    return frozenset(found)


def _evaluate(graph: Graph, values: Mapping[int, np.ndarray], last: Mapping[int, np.ndarray],
              nid: int) -> np.ndarray:
    """A parameter-time node's value from its inputs' (see ``Executor.parameter_values``),
    written into ``last[nid]`` where that is a writable contiguous float32 array of its shape
    and the op can (``evaluate``'s ``out``)."""
    node = graph.node(nid)
    exact = get_op(node.op).moves_values
    out = last.get(nid)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.writeable
            and out.flags.c_contiguous and out.shape == node.type.shape):
        out = None
    return evaluate(node.op, [values[i] if exact else np.asarray(values[i], np.float64)
                              for i in node.inputs], node.attrs, out)


def parameter_sources(graph: Graph, param_nodes: list[int]) -> dict[int, frozenset[str]]:
    """The names of the source parameters each parameter-time node depends on."""
    sources: dict[int, frozenset[str]] = {}
    for nid in param_nodes:  # topological order
        sources[nid] = sources_of(graph, graph.node(nid).inputs, sources)
    return sources


def sources_of(graph: Graph, inputs: list[int],
               sources: Mapping[int, frozenset[str]]) -> frozenset[str]:
    """The source parameters ``inputs`` depend on: a parameter itself, a parameter-time
    node's ``sources``, nothing for a tensor computed per call."""
    names: set[str] = set()
    for i in inputs:
        node = graph.node(i)
        names |= {node.name} if node.op == "param" else sources.get(i, frozenset())
    return frozenset(names)

