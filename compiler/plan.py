"""The plan: what the compiler hands an executor.

A plan lists the steps of one call in order. A step computes one IR node (its fused epilogue
included) by calling one or more compiled kernels; every argument of every kernel call is bound
here, once, as an :class:`Arg` that says where the value comes from (a tensor value, a scratch
buffer, a packed constant, a literal integer or the batch size). An executor resolves the
arguments to arrays once per batch size and then only calls functions.

The compiler never imports the runtime: the executor (``runtime/executor.py``) reads this
module's dataclasses and nothing else of the compiler's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import HOST, Memory
from .ir import Graph
from .types import BLOCKED, BLOCKED16, NHWC, PLAIN, Storage  # re-exported for executors

__all__ = ["Arg", "Call", "Step", "BufferPlan", "Plan", "Storage", "BLOCKED", "BLOCKED16",
           "NHWC", "PLAIN"]


@dataclass(frozen=True)
class Arg:
    """One kernel argument.

    ``kind``:
    - ``value``: the flat float32 buffer of tensor ``ref`` (a node id: a graph input, a step's
      output, or a view of one);
    - ``output``: the step's own output buffer;
    - ``scratch``: the shared scratch buffer named ``ref`` (sized per image, times the batch);
    - ``const``: the packed constant ``ref`` of this step (prepared when parameters are set);
    - ``int``: the literal integer ``ref``;
    - ``batch``: the batch size of the call (``ref`` 1 instead for a kernel whose inputs and
      output are all whole-batch values: it runs once, not once per image).
    """

    kind: str
    ref: Any = None


@dataclass
class Call:
    """``fn(*args)``: one compiled kernel call. ``kernel`` names it for listings; ``ir`` is
    the kernel IR of a generated per-model kernel until the compiler has loaded it into
    ``fn`` (kernels of their own cached modules, such as convolutions, come with ``fn``)."""

    fn: Callable[..., Any] | None
    args: tuple[Arg, ...]
    kernel: str = ""
    ir: Any = None


Packer = Callable[[Mapping[int, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Step:
    """One IR node lowered: its kernel calls, and how its constants come from parameters.

    ``pack`` maps parameter values by node id (float64: source parameters and the derived ones
    evaluated at parameter time) to this step's constants (``const`` arguments); it runs when
    parameters are set, never per call.
    """

    node: int
    name: str
    op: str
    inputs: list[int]
    out_size: int
    calls: list[Call] = field(default_factory=list)
    pack: Packer | None = None
    scratch: dict[str, int] = field(default_factory=dict)
    lowering: str = "kernel"
    view: bool = False
    inplace: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    storage: Storage | None = None  # the output's channel-blocked storage, None for NCHW
    # A concatenation done in place: its inputs were written into its buffer, which it owns
    # (``view`` is then set too: it runs no kernel).
    owner: bool = False
    # False for a value of the whole batch (``TensorType.batched``: a loss, a parameter's
    # gradient): ``out_size`` floats in all, not per image.
    batched: bool = True
    # The output is then averaged over the data-parallel replicas by the executor, which is
    # given them (``allreduce_mean``: its kernels copy, the executor communicates).
    collective: bool = False

    @property
    def output(self) -> int:
        return self.node


@dataclass
class BufferPlan:
    """Where every value lives: graph inputs are the caller's arrays, views alias their base,
    every other step output is a slot of the arena (float32 elements per image)."""

    slot_of: dict[int, int] = field(default_factory=dict)
    slot_sizes: list[int] = field(default_factory=list)
    alias: dict[int, int] = field(default_factory=dict)
    storage: dict[int, Storage] = field(default_factory=dict)  # blocked values by node id
    # Slots of whole-batch values (``Step.batched`` False): their size is not per image.
    unbatched: set[int] = field(default_factory=set)
    # Whole-batch values placed one after another in one slot (a training graph's parameter
    # gradients: the flat gradient buffer), by node id: the float where each begins.
    offset: dict[int, int] = field(default_factory=dict)

    def root(self, value: int) -> int:
        while value in self.alias:
            value = self.alias[value]
        return value

    @property
    def floats_per_image(self) -> int:
        return sum(s for i, s in enumerate(self.slot_sizes) if i not in self.unbatched)

    @property
    def whole_batch_floats(self) -> int:
        """Floats of the whole-batch slots (independent of the batch size)."""
        return sum(self.slot_sizes[i] for i in self.unbatched)


@dataclass
class Plan:
    """Everything an executor needs to run a compiled graph.

    ``param_nodes`` are the parameter-time nodes (derived parameters, folded constants) in
    topological order: the executor evaluates them in float64 (``compiler.ops.evaluate``)
    from the source parameters whenever parameters are set, before calling the packers.
    """

    graph: Graph
    steps: list[Step]
    buffers: BufferPlan
    scratch: dict[str, int]
    param_nodes: list[int]
    listing: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    cache_path: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    listing_file: str = ""  # the listing's file name (a CUDA model's is its one module)
    memory: Memory = HOST  # where the kernels' arrays live (the backend's)

    @property
    def kernel_calls(self) -> int:
        return sum(len(s.calls) for s in self.steps)

    def memory_notes(self) -> dict[int, str]:
        """Where each value of the graph lives, by node id: an arena slot (and the float where
        a channel range of a concatenation's buffer starts), a view of another value, the
        caller's array, or a parameter-time constant."""
        b = self.buffers
        notes = {nid: "the caller's array" for nid in self.graph.inputs.values()}
        notes.update({nid: "evaluated when parameters are set" for nid in self.param_nodes})
        for step in self.steps:
            v = step.output
            root = b.root(v)
            where = f"arena slot {b.slot_of[root]}" if root in b.slot_of else "the caller's array"
            storage = b.storage.get(v, step.storage)
            first = storage.offset if storage is not None else b.offset.get(v, 0)
            start = f", from float {first}" if first else ""
            notes[v] = (f"{where}{start}" if root == v else f"view of %{root} in {where}{start}")
        return notes

    def dump(self) -> str:
        """The optimized graph with the memory plan: each value's arena slot."""
        sizes = ", ".join(f"{i}: {n}" for i, n in enumerate(self.buffers.slot_sizes))
        return (self.graph.dump(self.memory_notes()) +
                f"\n  # arena slots (floats per image) {{{sizes}}}")
