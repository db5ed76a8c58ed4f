"""Schedule: which IR nodes run together in one kernel, and which buffer each value lives in.

Fusion groups (``fuse_groups``), each a list of nodes whose last node's value is the group's
output and whose other nodes have exactly one user (the next node of the group) and are not
graph outputs:

- ``conv`` [-> ``batchnorm``] [-> ``relu``]: batch norm is folded into the convolution's weights
  and bias, ReLU is the kernel's epilogue;
- ``add`` / ``sub`` / ``mul`` / ``batchnorm`` / ``dense`` / an activation, followed by a chain
  of activations: applied at the store of the first node's kernel;
- views (``flatten``, ``reshape``, ``dropout``, ``identity``) alias their input: no kernel;
- anything else is a group of one.

Buffers (``plan_buffers``): every group output that is not a view gets a slot of the arena;
slots are reused once their value is dead (liveness over the group order), and an elementwise
group may write over an input that dies at that group (in place). Sizes are per image (float32
elements); the runtime multiplies by the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ir import Graph, Node

VIEW_OPS = ("flatten", "reshape", "dropout", "identity")
ACTIVATION_OPS = ("relu", "leaky_relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "swish",
                  "hard_swish", "gelu", "abs")
EPILOGUE_ANCHORS = ("add", "sub", "mul", "batchnorm", "dense") + ACTIVATION_OPS
INPLACE_OPS = ("add", "sub", "mul", "batchnorm") + ACTIVATION_OPS


@dataclass
class Group:
    """Nodes computed by one step; ``nodes[0]`` is the anchor whose tensor inputs feed it."""

    nodes: list[Node]
    inputs: list[int]

    @property
    def anchor(self) -> Node:
        return self.nodes[0]

    @property
    def output(self) -> int:
        return self.nodes[-1].id

    @property
    def is_view(self) -> bool:
        return self.anchor.op in VIEW_OPS

    @property
    def name(self) -> str:
        return "+".join(n.name or f"%{n.id}" for n in self.nodes)


def tensor_inputs(graph: Graph, node: Node) -> list[int]:
    """The node's inputs that are tensors (not parameters)."""
    return [i for i in node.inputs if graph.node(i).op != "param"]


def _sole_user(graph: Graph, node: Node) -> Node | None:
    """The only user of ``node`` if it has exactly one and is not a graph output."""
    if node.id in graph.outputs.values():
        return None
    users = graph.users(node.id)
    if len(users) != 1:
        return None
    user = users[0]
    if tensor_inputs(graph, user) != [node.id]:
        return None
    return user


def fuse_groups(graph: Graph, fuse: bool = True) -> list[Group]:
    """Fusion groups in topological order (see the module docstring)."""
    groups: list[Group] = []
    taken: set[int] = set()
    for node in graph.compute_nodes():
        if node.id in taken:
            continue
        nodes = [node]
        if fuse and node.op == "conv":
            nxt = _sole_user(graph, node)
            if nxt is not None and nxt.op == "batchnorm" and len(nxt.type.shape) == 3:
                nodes.append(nxt)
                nxt = _sole_user(graph, nxt)
            if nxt is not None and nxt.op == "relu":
                nodes.append(nxt)
        elif fuse and node.op in EPILOGUE_ANCHORS:
            nxt = _sole_user(graph, node)
            while nxt is not None and nxt.op in ACTIVATION_OPS:
                nodes.append(nxt)
                nxt = _sole_user(graph, nxt)
        taken.update(n.id for n in nodes)
        groups.append(Group(nodes, tensor_inputs(graph, node)))
    return groups


@dataclass
class BufferPlan:
    """Where every value lives: graph inputs are the caller's arrays, views alias their base,
    everything else is a slot of the arena."""

    slot_of: dict[int, int] = field(default_factory=dict)
    slot_sizes: list[int] = field(default_factory=list)
    alias: dict[int, int] = field(default_factory=dict)

    def root(self, value: int) -> int:
        while value in self.alias:
            value = self.alias[value]
        return value

    @property
    def floats_per_image(self) -> int:
        return sum(self.slot_sizes)


def plan_buffers(graph: Graph, groups: list[Group], reuse: bool = True) -> BufferPlan:
    """Assign arena slots by liveness (see the module docstring)."""
    plan = BufferPlan()
    for g in groups:
        if g.is_view:
            plan.alias[g.output] = g.inputs[0]
    outputs = {plan.root(o) for o in graph.outputs.values()}
    inputs = set(graph.inputs.values())
    last_use: dict[int, int] = {}
    for i, g in enumerate(groups):
        for v in g.inputs:
            last_use[plan.root(v)] = i
    free: list[int] = []
    for i, g in enumerate(groups):
        if g.is_view:
            continue
        need = g.nodes[-1].type.size
        slot = None
        if reuse and g.anchor.op in INPLACE_OPS:
            for v in g.inputs:
                r = plan.root(v)
                if (r in plan.slot_of and r not in outputs and last_use.get(r) == i
                        and graph.node(r).type.size == need
                        and sum(plan.root(u) == r for u in g.inputs) == 1):
                    slot = plan.slot_of[r]
                    break
        if slot is None and reuse and free:
            fits = [s for s in free if plan.slot_sizes[s] >= need]
            slot = min(fits, key=lambda s: plan.slot_sizes[s]) if fits else \
                max(free, key=lambda s: plan.slot_sizes[s])
            free.remove(slot)
            plan.slot_sizes[slot] = max(plan.slot_sizes[slot], need)
        if slot is None:
            slot = len(plan.slot_sizes)
            plan.slot_sizes.append(need)
        plan.slot_of[g.output] = slot
        if not reuse:
            continue
        for v in {plan.root(u) for u in g.inputs}:
            if (last_use.get(v) == i and v in plan.slot_of and v not in outputs
                    and v not in inputs and plan.slot_of[v] != slot):
                free.append(plan.slot_of[v])
    return plan
