"""Memory planning, the last analysis of the compiler: which arena slot holds each value.

Every step output that is not a view gets a slot of the arena; views alias their base. Slots
are reused once their value is dead (liveness over the step order), and a step whose kernels
read each element of an input before writing the same element of the output (``Step.inplace``:
element-wise kernels, convolutions that pack their input first) may write over an input that
dies at that step and has the output's size (plain) or its very storage (channel-blocked). A
channel-blocked value (``Step.storage``) with a halo or padding lanes shares a slot only with
values of exactly the same storage, so the zero halo a convolution reads as its padding is
never overwritten; one whose every float its producer writes shares slots with plain values.
Sizes are float32 elements per image; the executor multiplies by the batch size, except for
whole-batch values (a loss, a parameter's gradient: ``Step.batched`` False), which get slots of
their own, never shared with per-image values; the whole-batch values listed ``together`` share
one slot, one after another in that order (a training graph's parameter gradients: the flat
gradient buffer the optimizer reads, filled by the kernels themselves). Graph inputs are the
caller's arrays and are never written.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir import Graph
from ..ops import LoweringError, writes_whole_blocks
from ..plan import BufferPlan, Step


def plan_memory(graph: Graph, steps: list[Step], reuse: bool = True,
                together: Sequence[int] = ()) -> BufferPlan:
    plan = BufferPlan()
    plan.offset = _offsets_together(graph, steps, together)
    # A concatenation done in place owns a buffer its producers write their ranges of; it may
    # itself be a part of an outer one (DenseNet: each concatenation a prefix of the next).
    # The outermost owner's slot holds them all, and lives as long as any of them.
    for s in steps:
        if s.view and not s.owner:
            plan.alias[s.output] = s.inputs[0]
            if s.storage is not None:  # a channel range of blocked storage (a slice)
                plan.storage[s.output] = s.storage
    owners = {s.output: s for s in steps if s.owner}
    # A member is a value written into the buffer: an input of the concatenation, or for a
    # channel slice (the first input after a ``prefix``) the convolution it is a range of.
    member_of = {plan.root(i): c for c, s in owners.items() for i in s.inputs}

    def top(v: int) -> int:
        while v in member_of:
            v = member_of[v]
        return v
    outputs = {plan.root(o) for o in graph.outputs.values()}
    inputs = set(graph.inputs.values())
    last_use: dict[int, int] = {}
    for i, s in enumerate(steps):
        for v in s.inputs:
            last_use[top(plan.root(v))] = i
    free: list[int] = []
    kind: dict[int, object] = {}  # slot -> the storage of its values (None: plain NCHW)
    for i, s in enumerate(steps):
        if s.view:
            continue
        if s.storage is not None:
            plan.storage[s.output] = s.storage
        owner = owners.get(top(s.output)) if s.output in member_of else None
        target = owner if owner is not None else s
        if target.output in plan.slot_of:  # a later producer of an in-place concatenation
            plan.slot_of[s.output] = plan.slot_of[target.output]
        else:
            slot = _choose_slot(plan, graph, target, s, i, reuse, free, kind, last_use, outputs)
            plan.slot_of[target.output] = plan.slot_of[s.output] = slot
            if owner is not None:
                plan.storage[owner.output] = owner.storage
        slot = plan.slot_of[s.output]
        if not reuse:
            continue
        for v in {top(plan.root(u)) for u in s.inputs}:
            if (last_use.get(v) == i and v in plan.slot_of and v not in outputs
                    and v not in inputs and plan.slot_of[v] != slot
                    and plan.slot_of[v] not in plan.unbatched):
                free.append(plan.slot_of[v])
    for o in owners:  # nested owners: a range of the outermost one's slot
        if o in member_of and top(o) in plan.slot_of:
            plan.slot_of[o] = plan.slot_of[top(o)]
            plan.storage[o] = owners[o].storage
    return plan


def _choose_slot(plan: BufferPlan, graph: Graph, target: Step, step: Step, i: int, reuse: bool,
                 free: list[int], kind: dict[int, object], last_use: dict[int, int],
                 outputs: set[int]) -> int:
    """A slot for ``target``'s value (``step`` computes it, or its first range): in place over
    an input that dies here, else a free slot of the same storage, else a new one."""
    need = target.out_size
    if target.output in plan.offset:  # one of the values placed together: their slot
        placed = next((plan.slot_of[v] for v in plan.offset if v in plan.slot_of), None)
        if placed is not None:
            return placed
        need = sum(graph.node(v).type.size for v in plan.offset)
    if not target.batched:  # a whole-batch value: a slot of its own
        plan.slot_sizes.append(need)
        plan.unbatched.add(len(plan.slot_sizes) - 1)
        kind[len(plan.slot_sizes) - 1] = None
        return len(plan.slot_sizes) - 1
    if reuse and step.inplace:
        roots = [plan.root(v) for v in step.inputs]
        for r in roots:
            if (r in plan.slot_of and r not in outputs and last_use.get(r) == i
                    and roots.count(r) == 1 and _same_storage(plan, graph, r, target)
                    and kind[plan.slot_of[r]] == _kind(graph, target)):
                return plan.slot_of[r]
    usable = [f for f in free if kind[f] == _kind(graph, target)]
    if reuse and usable:
        fits = [f for f in usable if plan.slot_sizes[f] >= need]
        slot = min(fits, key=lambda f: plan.slot_sizes[f]) if fits else \
            max(usable, key=lambda f: plan.slot_sizes[f])
        free.remove(slot)
        plan.slot_sizes[slot] = max(plan.slot_sizes[slot], need)
        return slot
    plan.slot_sizes.append(need)
    kind[len(plan.slot_sizes) - 1] = _kind(graph, target)
    return len(plan.slot_sizes) - 1


def _same_storage(plan: BufferPlan, graph: Graph, value: int, target: Step) -> bool:
    """Whether ``target``'s output can lie exactly where ``value`` lies: both plain and of one
    size, or both in the same channel-blocked storage (halo, padding lanes and all: an
    element-wise kernel over blocked storage, such as the squeeze-and-excitation gate's
    ``mul``, then writes each float over the one it has just read, in the cache lines it has
    just loaded, instead of into a second buffer)."""
    if target.storage is None:
        return value not in plan.storage and graph.node(value).type.size == target.out_size
    return plan.storage.get(value) == target.storage


def _offsets_together(graph: Graph, steps: list[Step],
                      together: Sequence[int]) -> dict[int, int]:
    """The float offset of each value of ``together`` in the slot they share (each must be a
    step's own whole-batch, plain output: a kernel writes it where it lies)."""
    made = {s.output: s for s in steps}
    offsets: dict[int, int] = {}
    for v in together:
        step = made.get(v)
        if step is None or step.view or step.batched or step.storage is not None \
                or v in offsets:
            raise LoweringError(f"%{v} cannot be placed with the values it is listed with: "
                                "not a kernel's own whole-batch output, or listed twice")
        offsets[v] = sum(graph.node(u).type.size for u in offsets)
    return offsets


def _kind(graph: Graph, step: Step) -> object:
    """What a slot must have held before to hold ``step``'s value: its exact storage when that
    has a zero halo or zero lanes to keep; None (any slot of plain values or of such dense
    storage) when the producer writes every float of it: no halo, whole 8-channel blocks, its
    own buffer (DenseNet's batch-norm outputs of many channel counts then share slots); a
    convolution's output whose halo the kernel zeroes every call (``zero_halo``); or a
    concatenation's buffer after a ``prefix``, written whole and its halo zeroed every call."""
    st = step.storage
    node = graph.node(step.output)
    if st is None or "prefix" in node.attrs:
        return None  # plain, or a buffer whose merged 1x1 convolution zeroes its halo
    if st.first_block == 0 and writes_whole_blocks(graph, node) and (
            node.attrs.get("zero_halo") or not any(node.attrs.get("halo", (0, 0, 0, 0)))):
        return None  # every lane of every block written, and the halo zeroed if it has one
    c, h, w = graph.node(step.output).type.shape
    dense = (st.height, st.width, st.top, st.left, st.first_block) == (h, w, 0, 0, 0) \
        and c % 8 == 0
    return None if dense else st
