"""Memory planning, the last analysis of the compiler: which arena slot holds each value.

Every step output that is not a view gets a slot of the arena; views alias their base. Slots
are reused once their value is dead (liveness over the step order), and a step whose kernels
read each element of an input before writing the same element of the output (``Step.inplace``:
element-wise kernels, convolutions that pack their input first) may write over an input that
dies at that step and has the output's size. A channel-blocked value (``Step.storage``) shares
a slot only with values of exactly the same storage, so the zero halo a convolution reads as its
padding is never overwritten. Sizes are float32 elements per image; the executor multiplies by
the batch size. Graph inputs are the caller's arrays and are never written.
"""

from __future__ import annotations

from ..ir import Graph
from ..plan import BufferPlan, Step


def plan_memory(graph: Graph, steps: list[Step], reuse: bool = True) -> BufferPlan:
    plan = BufferPlan()
    for s in steps:
        if s.view:
            plan.alias[s.output] = s.inputs[0]
    outputs = {plan.root(o) for o in graph.outputs.values()}
    inputs = set(graph.inputs.values())
    last_use: dict[int, int] = {}
    for i, s in enumerate(steps):
        for v in s.inputs:
            last_use[plan.root(v)] = i
    free: list[int] = []
    kind: dict[int, object] = {}  # slot -> the storage of its values (None: plain NCHW)
    for i, s in enumerate(steps):
        if s.view:
            continue
        if s.storage is not None:
            plan.storage[s.output] = s.storage
        need = s.out_size
        slot = None
        if reuse and s.inplace:
            roots = [plan.root(v) for v in s.inputs]
            for r in roots:
                if (r in plan.slot_of and r not in outputs and last_use.get(r) == i
                        and graph.node(r).type.size == need and roots.count(r) == 1
                        and s.storage is None and kind[plan.slot_of[r]] is None):
                    slot = plan.slot_of[r]
                    break
        usable = [f for f in free if kind[f] == s.storage]
        if slot is None and reuse and usable:
            fits = [f for f in usable if plan.slot_sizes[f] >= need]
            slot = min(fits, key=lambda f: plan.slot_sizes[f]) if fits else \
                max(usable, key=lambda f: plan.slot_sizes[f])
            free.remove(slot)
            plan.slot_sizes[slot] = max(plan.slot_sizes[slot], need)
        if slot is None:
            slot = len(plan.slot_sizes)
            plan.slot_sizes.append(need)
            kind[slot] = s.storage
        plan.slot_of[s.output] = slot
        if not reuse:
            continue
        for v in {plan.root(u) for u in s.inputs}:
            if (last_use.get(v) == i and v in plan.slot_of and v not in outputs
                    and v not in inputs and plan.slot_of[v] != slot):
                free.append(plan.slot_of[v])
    return plan
