"""The lowering driver: an optimized graph becomes a :class:`~cnnc.compiler.plan.Plan`.

Every compute node (its fused epilogue included) becomes one plan step through its op's
``lower`` rule (in ``compiler/ops/<family>.py``), which is handed a :class:`LowerCtx`: the
node, its storage, its fused epilogue resolved to the ops' rules, and the means to make steps
(``kernel_step``, ``view_step``, ``concat_view_step``, ``host_step`` for a host function
run between the kernels: detection post-processing) and to load the kernels it compiles on
its own (``load_tasked``, ``layout_kernel``) through the target's backend. Op rules import
nothing of this module. The lowering reads the decisions the passes recorded on the nodes
(``epilogue``, ``lowering``, ``layout``, ``tile``) and decides nothing itself. Parameter-time
nodes (derived parameters, folded constants) get no step: the executor evaluates them when
parameters are set.

Then the distinct generated kernels are deduplicated, each loaded by the backend from its
shared cached module (compiled in parallel workers on a cold cache), every call's function
bound, and the buffers planned (``memory.plan_memory``, the last analysis).

Kernel and argument identifiers derive from node ids (``n12_maxpool``); text from the DSL
(file names, layer names) reaches generated source only through ``sanitize_comment``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Backend, KernelRefused, Memory
from ..backends.numba.loader import NumbaBackend
from ..decisions import EpilogueOp, epilogue_of, own_input_count, prologue_of
from ..ir import Graph, Node, model_folder
from ..kernels.common import FusedOp
from ..kernels.kernel_ir import Kernel
from ..ops import LoweringError, get_op, is_constant
from ..plan import Arg, Call, Plan, Step, Storage
from ..types import BLOCK_LANES, NHWC, shown_path
from .memory import plan_memory

__all__ = ["LowerCtx", "lower_graph", "load_kernel", "describe_node", "step_name",
           "step_ops"]


def describe_node(node: Node, folder: str | None = None) -> str:
    """``file:line layer (op)`` for a header comment (the backend sanitizes it); the file
    relative to ``folder``, the model's (never an absolute path of this machine)."""
    where = f"{shown_path(node.span.file, folder)}:{node.span.line} " if node.span else ""
    return f"{where}{node.name or '%' + str(node.id)} ({node.op})"


def resolve(e: EpilogueOp) -> FusedOp:
    """A fused op with its op's scalar and vector rules, as the kernel builders apply it."""
    op = get_op(e.op)
    return FusedOp(e.op, e.attrs, e.operand, e.origin, op.epilogue, op.vector_epilogue)


def on_host(fn: Callable[..., None], memory: Memory) -> Callable[..., None]:
    """A host step's ``fn(x0, ..., y, n_batch)`` called with arrays of ``memory``: as it is
    in the host's; on a device, the inputs downloaded, ``fn`` run into a host buffer, that
    written into ``y``."""
    if memory.host:
        return fn

    def run(*args: Any) -> None:
        *xs, y, n = args
        out = np.zeros(y.size, np.float32)
        fn(*(memory.download(x) for x in xs), out, n)
        memory.write(y, out)
    return run


@dataclass
class LowerCtx:
    """What an op's lowering rule sees of one node, and how it makes its step."""

    graph: Graph
    node: Node
    backend: Backend

    @property
    def kname(self) -> str:
        return f"n{self.node.id}_{self.node.op}"

    @property
    def comment(self) -> str:
        comment = self.backend.comment
        lines = [comment(describe_node(self.node, model_folder(self.graph)))]
        lines += [comment(f"{p.origin} ({p.op}, fused prologue)")
                  for p in prologue_of(self.node.attrs)]
        lines += [comment(f"{e.origin} ({e.op}, fused)") for e in self.epilogue]
        return "\n".join(lines)

    @property
    def own_inputs(self) -> list[int]:
        return self.node.inputs[:own_input_count(len(self.node.inputs), self.node.attrs)]

    @property
    def tensor_inputs(self) -> list[int]:
        """The op's own activation inputs (parameters and constants excluded)."""
        return [i for i in self.own_inputs if not is_constant(self.graph, self.graph.node(i))]

    @property
    def param_inputs(self) -> list[int]:
        """The op's own constant inputs (weights, biases, statistics), by node id."""
        return [i for i in self.own_inputs if is_constant(self.graph, self.graph.node(i))]

    @property
    def in_shapes(self) -> list[tuple[int, ...]]:
        return [self.graph.node(i).type.shape for i in self.tensor_inputs]

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.node.type.shape

    @cached_property
    def epilogue(self) -> tuple[FusedOp, ...]:
        """The node's fused epilogue, each op resolved to its rules (``resolve``)."""
        return tuple(resolve(e) for e in epilogue_of(self.node.attrs))

    resolve = staticmethod(resolve)

    @property
    def step_name(self) -> str:
        """The step's name: its layer and the layers fused into it (``step_name``)."""
        return step_name(self.node)

    @property
    def step_ops(self) -> str:
        """The ops the step computes, fused ones included (``step_ops``)."""
        return step_ops(self.node)

    def operand(self, e: EpilogueOp | FusedOp) -> int:
        """The node id of a binary epilogue op's second operand."""
        assert e.operand is not None
        return self.node.inputs[e.operand]

    @property
    def operands(self) -> list[int]:
        return [self.operand(e) for e in self.epilogue if e.operand is not None]

    def storage(self, node_id: int) -> Storage | None:
        """The channel-blocked storage of a value (None when it is plain NCHW)."""
        return blocked_storage(self.graph, self.graph.node(node_id))

    @property
    def out_storage(self) -> Storage | None:
        return self.storage(self.node.id)

    def operand_geometry(self, operand: int) -> tuple[int, ...]:
        """The geometry integers of a fused operand of a kernel writing channel-blocked
        storage: its storage, or for a plain per-channel gate ``[N, C]`` its blocks of the
        output storage's lanes."""
        storage = self.storage(operand)
        if storage is not None:
            return storage.ints()
        out = self.out_storage
        lanes = out.lanes if out is not None else 8
        return (self.graph.node(operand).type.shape[0] // lanes, 1, 1, 0, 0)

    def kernel_step(self, kernel: Kernel, *, inputs: list[int],
                    ints: dict[str, int] | None = None,
                    pack: Callable[[Any], dict[str, np.ndarray]] | None = None) -> Step:
        """A step of one generated kernel, its arguments bound by the builders' parameter names
        (once, here): ``x<k>`` is ``inputs[k]``, ``y`` the output, ``c_*`` a packed constant,
        ``n_batch`` the batch size, other integers the literal ``ints``."""
        ints = ints or {}
        args = []
        node = self.node
        whole_batch = not node.type.batched and not any(
            self.graph.node(i).type.batched for i in inputs)
        for p in kernel.params:
            if p.name == "y":
                args.append(Arg("output"))
            elif p.name == "n_batch":
                args.append(Arg("batch", 1) if whole_batch else Arg("batch"))
            elif p.kind == "int":
                args.append(Arg("int", int(ints[p.name])))
            elif p.name.startswith("c_"):
                args.append(Arg("const", p.name))
            elif p.name.startswith("x") and p.name[1:].isdigit():
                args.append(Arg("value", inputs[int(p.name[1:])]))
            else:
                raise LoweringError(f"kernel {kernel.name}: cannot bind parameter {p.name!r}")
        op = get_op(node.op)
        storage = self.out_storage
        out_size = storage.floats if storage is not None else node.type.size
        return Step(node.id, step_name(node), step_ops(node), list(dict.fromkeys(inputs)),
                    out_size, [Call(None, tuple(args), kernel.name, kernel)], pack=pack,
                    inplace=op.inplace, storage=storage,
                    batched=node.type.batched)

    def host_step(self, fn: Callable[..., None], *, inputs: list[int]) -> Step:
        """A step run by a host function instead of a generated kernel: ``fn(x0, ..., y,
        n_batch)`` over the flat float32 buffers of ``inputs`` and of the output (detection
        post-processing, ``compiler/ops/detect.py``: little work, and a loop whose length
        depends on the data). No kernel: a CUDA module has none for it either; where the
        backend's arrays live on a device, the inputs are downloaded for it and its output
        written back (:func:`on_host`)."""
        node = self.node
        args = (*(Arg("value", i) for i in inputs), Arg("output"), Arg("batch"))
        return Step(node.id, step_name(node), step_ops(node), list(dict.fromkeys(inputs)),
                    node.type.size, [Call(on_host(fn, self.backend.memory), args,
                                          f"host {node.op}")], lowering="host")

    def concat_view_step(self) -> Step:
        """A concatenation whose inputs were written into its channel-blocked buffer: no kernel;
        it owns the buffer (``plan_memory`` gives its producers their ranges of it)."""
        node = self.node
        storage = self.out_storage
        return Step(node.id, step_name(node), node.op, self.tensor_inputs, storage.floats,
                    lowering="in place", view=True, storage=storage, owner=True)

    def view_step(self) -> Step:
        """An op whose output aliases its input buffer (no kernel)."""
        node = self.node
        storage = self.out_storage
        return Step(node.id, step_name(node), node.op, self.tensor_inputs,
                    storage.floats if storage is not None else node.type.size,
                    lowering="view", view=True, storage=storage)

    def load_tasked(self, kernel: Kernel, tag: str,
                    header: str) -> tuple[Callable[..., Any], str, str]:
        """A compute kernel compiled in a cached module of its own (``tag``) by the backend:
        ``(function, source file name, source)``."""
        return self.backend.load_tasked(kernel, tag, header)

    def layout_kernel(self, name: str) -> Callable[..., Any]:
        """One of the layout kernels every convolution shares (``kernels.layout``), loaded."""
        return self.backend.layout_kernel(name)

    @property
    def threads(self) -> int:
        """Threads of the parallel loops (for per-thread scratch buffers)."""
        return self.backend.threads

    @property
    def thread_scratch(self) -> bool:
        """Whether kernels may index scratch by the running thread (``thread_id``: the CPU)."""
        return self.backend.thread_scratch


def blocked_storage(graph: Graph, node: Node) -> Storage | None:
    """How a value ``select_layout`` kept channel-blocked is stored: as many blocks of its
    layout's lanes as its producer's kernel writes (``OpDef.out_blocks``: a direct convolution
    pads its output channels to a multiple of 16), and the ``halo`` the pass chose around it."""
    lanes = BLOCK_LANES.get(node.attrs.get("layout"))
    if lanes is None:
        return None
    if node.op == "flatten":  # the same floats, read in storage order (by a dense layer)
        return blocked_storage(graph, graph.node(node.inputs[0]))
    if node.op == "channel_slice":  # a view of whole blocks of its input's storage
        whole = blocked_storage(graph, graph.node(node.inputs[0]))
        return replace(whole, channels=node.type.shape[0],
                       first_block=whole.first_block + node.attrs["start"] // lanes)
    for piece in graph.users(node.id):  # its last channels begin a concatenation's buffer
        if piece.op != "channel_slice":
            continue
        starts = [c for c in graph.users(piece.id) if c.attrs.get("in_place")
                  and "prefix" in c.attrs and c.inputs[0] == piece.id]
        if starts:
            whole = blocked_storage(graph, starts[0])
            return replace(whole, channels=node.type.shape[0],
                           first_block=whole.first_block - piece.attrs["start"] // lanes)
    owners = [u for u in graph.users(node.id) if u.op == "concat" and u.attrs.get("in_place")]
    if owners:  # written straight into its channel range of the (one) concatenation
        concat = owners[0]
        whole = blocked_storage(graph, concat)
        before = sum(graph.node(i).type.shape[0] for i in
                     concat.inputs[:concat.inputs.index(node.id)])
        return replace(whole, channels=node.type.shape[0],
                       first_block=whole.first_block + before // lanes)
    c, h, w = node.type.shape
    rule = get_op(node.op).out_blocks
    blocks = rule(node, [graph.node(i).type for i in node.inputs], lanes) if rule else \
        -(-c // lanes)
    t, l, b, r = node.attrs.get("halo", (0, 0, 0, 0))
    prefix = node.attrs.get("prefix", 0)  # blocks of a merged convolution before a concat
    return Storage(c, prefix + blocks, h + t + b, w + l + r, t, l, first_block=prefix,
                   lanes=lanes, nhwc=node.attrs["layout"] == NHWC)


def step_name(node: Node) -> str:
    names = [p.origin.split(" ")[-1] for p in prologue_of(node.attrs) if p.origin]
    names += [node.name or f"%{node.id}", *node.attrs.get("folded", ())]
    names += [e.origin.split(" ")[-1] for e in epilogue_of(node.attrs) if e.origin]
    return "+".join(names)


def step_ops(node: Node) -> str:
    folded = ["batchnorm"] * len(node.attrs.get("folded", ()))
    return "+".join([p.op for p in prologue_of(node.attrs)] + [node.op, *folded] +
                    [e.op for e in epilogue_of(node.attrs)])


# ---------------------------------------------------------------------------------------------
# Whole graphs
# ---------------------------------------------------------------------------------------------


def _schedule_key(graph: Graph) -> Callable[[Node], tuple[int, int]]:
    """The order steps run in: by node id among ready nodes, except that a node made for its
    user (``OpDef.made_for_user``: packed weights) sorts just before that user, so that adding
    it does not move the user later."""
    def key(node: Node) -> tuple[int, int]:
        if get_op(node.op).made_for_user:
            return (min(u.id for u in graph.users(node.id)), 0)
        return (node.id, 1)
    return key


def _dedup(kernels: list[Kernel],
           backend: Backend) -> tuple[list[Kernel], dict[str, str]]:
    """Kernels with identical code are compiled once; the survivor's comment lists every
    layer that uses it. Returns the kernels to print and a map kernel name -> survivor name."""
    first: dict[str, Kernel] = {}
    names: dict[str, str] = {}
    comments: dict[str, list[str]] = {}
    order: list[str] = []
    for k in kernels:
        key = backend.dedup_key(k)
        if key not in first:
            first[key] = k
            order.append(key)
            comments[key] = [k.comment]
        else:
            comments[key].append(k.comment)
        names[k.name] = first[key].name
    out = []
    for key in order:
        lines = "\n".join(comments[key]).split("\n")
        if len(lines) > 12:
            lines = lines[:11] + [f"... and {len(lines) - 11} more"]
        out.append(replace(first[key], comment="\n".join(lines)))
    return out, names


def lower_node(ctx: LowerCtx) -> Step:
    op = get_op(ctx.node.op)
    if op.view:
        return ctx.view_step()
    if op.lower is None:
        raise LoweringError(f"no lowering for op {ctx.node.op!r} (layer {ctx.node.name!r})")
    return op.lower(ctx, ctx.node)


def checked_lowering(ctx: LowerCtx) -> Step:
    """``lower_node``, each kernel of the step checked printable by the target's backend: a
    kernel the target has no form for is refused here, naming the node and its DSL line."""
    try:
        step = lower_node(ctx)
        for c in step.calls:
            if c.ir is not None:
                ctx.backend.check(c.ir)
    except KernelRefused as e:
        raise LoweringError(f"{describe_node(ctx.node, model_folder(ctx.graph))}: "
                            f"{e}") from None
    ctx.backend.note_users(step.calls, ctx.comment)  # CUDA's one module names them
    return step


def lower_graph(graph: Graph, *, cache_dir: str | Path | None = None,
                reuse_buffers: bool = True,
                progress: Callable[[int, int], None] | None = None,
                backend: Backend | None = None,
                together: Sequence[int] = (), warm: bool = True) -> Plan:
    """Lower every compute node, load each distinct kernel from its shared cached module, bind
    the calls and plan the buffers. ``progress(done, total)`` follows a cold compile; without
    ``warm`` the kernels missing from the cache are not compiled ahead (each compiles on its
    first call).
    ``backend``: the target's (default: Numba's, caching under ``cache_dir``). ``together``:
    whole-batch values to place one after another in one slot (``plan_memory``)."""
    if backend is None:
        backend = NumbaBackend(Path(cache_dir) if cache_dir is not None else None)
    steps: list[Step] = []
    param_nodes: list[int] = []
    for node in graph.compute_nodes(key=_schedule_key(graph)):
        if is_constant(graph, node):
            param_nodes.append(node.id)
            continue
        steps.append(checked_lowering(LowerCtx(graph, node, backend)))
    generated = [c.ir for s in steps for c in s.calls if c.ir is not None]
    kernels, names = _dedup(generated, backend)
    header = f"network {graph.name}: {len(kernels)} kernels (listing; each runs from its " \
             "shared module)"
    listing_file = f"model_{graph.name}{backend.listing_suffix}"
    listing = backend.listing(kernels, header) + _module_map(steps, backend, listing_file)
    funcs: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for k in kernels:
        fn, file_name, src = backend.load_shared(k)
        funcs[k.name] = fn
        sources[file_name] = src
    for s in steps:
        for c in s.calls:
            if c.ir is not None:
                c.fn = funcs[names[c.ir.name]]
        sources.update(s.sources)
    if warm:
        backend.warm(steps, progress=progress)
    buffers = plan_memory(graph, steps, reuse=reuse_buffers, together=together)
    scratch: dict[str, int] = {}
    for s in steps:
        for k, v in s.scratch.items():
            scratch[k] = max(scratch.get(k, 0), v)
    return Plan(graph, steps, buffers, scratch, param_nodes, listing, sources,
                backend.cache_path, listing_file=listing_file, memory=backend.memory)


def load_kernel(kernel: Kernel, *, cache_dir: str | Path | None = None,
                backend: Backend | None = None) -> Callable[..., Any]:
    """A kernel that is no node of a graph (the optimizer's updates of the flat parameter
    buffer), loaded like a per-model kernel from its shared cached module by the backend
    (default: Numba's, caching under ``cache_dir``); Numba compiles it at its first call. A
    CUDA backend puts it in its module (before the module is printed)."""
    if backend is None:
        backend = NumbaBackend(Path(cache_dir) if cache_dir is not None else None)
    return backend.load_shared(kernel)[0]


def _module_map(steps: list[Step], backend: Backend,
                listing_file: str) -> str:
    """Comment lines naming, per convolution layer, the cached module that runs it (none
    where every kernel runs from the listing's module, as CUDA's do)."""
    lines = [f"# {backend.comment(s.name)} ({s.op}) -> {s.lowering} "
             f"{backend.comment(', '.join(s.sources))}" for s in steps
             if set(s.sources) - {listing_file}]
    if not lines:
        return ""
    return "\n\n# Convolutions run by kernels of their own cached modules:\n" + \
        "\n".join(lines) + "\n"
