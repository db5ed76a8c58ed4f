"""Canonicalization: forms that compute nothing are removed, so later passes see one spelling.

    dropout(x)  =>  x          (inference: dropout is the identity)
    identity(x) =>  x
    reshape(x) / flatten(x) to x's own shape  =>  x
    reshape(reshape(x))  =>  reshape(x)       (flatten counts as a reshape)

A node is kept when removing it would make a graph output the same node as a graph input or as
another output (each output keeps its own buffer).
"""

from __future__ import annotations

from ..ir import Graph
from .common import layer
from .manager import PassContext

_RESHAPES = ("reshape", "flatten")


def _removable(graph: Graph, node_id: int, src: int) -> bool:
    if not graph.is_output(node_id):
        return True
    return src not in graph.inputs.values() and not graph.is_output(src)


def canonicalize(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.topo_order():
        if node.op in ("input", "param") or len(node.inputs) != 1:
            continue
        ctx.at(node)
        src = graph.node(node.inputs[0])
        same_shape = node.type.shape == src.type.shape
        if node.op in ("identity", "dropout") or (node.op in _RESHAPES and same_shape):
            if not _removable(graph, node.id, src.id):
                continue
            graph.replace_all_uses(node.id, src.id)
            graph.erase(node.id)
            ctx.note(f"removed {node.op} {layer(node)} (computes nothing)", node)
            changed = True
        elif node.op in _RESHAPES and src.op in _RESHAPES and len(graph.users(src.id)) == 1 \
                and not graph.is_output(src.id):
            new = graph.add("reshape", [src.inputs[0]], {"shape": node.type.shape},
                            name=node.name, span=node.span)
            graph.replace_all_uses(node.id, new.id)
            graph.erase(node.id)
            graph.erase(src.id)
            ctx.note(f"{src.op} -> {node.op} {layer(node)}: one reshape", node)
            changed = True
    return changed
