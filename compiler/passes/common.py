"""Use-def helpers the passes share."""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops import is_constant


def tensor_inputs(graph: Graph, node: Node) -> list[int]:
    """The node's inputs that are activations (not parameters or constants)."""
    return [i for i in node.inputs if not is_constant(graph, graph.node(i))]


def sole_user(graph: Graph, node: Node) -> Node | None:
    """The only user of ``node``, if it has exactly one, uses it once and ``node`` is not a
    graph output (its value must then survive on its own)."""
    if graph.is_output(node.id):
        return None
    users = graph.users(node.id)
    if len(users) != 1 or users[0].inputs.count(node.id) != 1:
        return None
    return users[0]


def layer(node: Node) -> str:
    return node.name or f"%{node.id}"


def fold_into_layer(graph: Graph, target: Node, bn: Node, inputs: list[int]) -> Node:
    """Replace ``target`` (a conv or dense) and the batch norm ``bn`` next to it (before or
    after it) by one layer of ``target``'s kind over ``inputs`` (its folded weight and bias),
    recording the batch norm in the layer's ``folded`` attribute. The readers of whichever of
    the two comes last read the new layer."""
    attrs = {**target.attrs, "bias": True,
             "folded": tuple(target.attrs.get("folded", ())) + (layer(bn),)}
    folded = graph.add(target.op, inputs, attrs, name=target.name, span=target.span)
    first, last = (target, bn) if bn.inputs[0] == target.id else (bn, target)
    graph.replace_all_uses(last.id, folded.id)
    graph.erase(last.id)
    graph.erase(first.id)
    return folded
