"""Dead-code elimination.

    x -> f   (no graph output depends on f)   =>   (f erased)

Nodes that no output depends on are erased, parameters they alone used included. Inputs are
kept: they are part of the network's signature even when unused.
"""

from __future__ import annotations

from ..ir import Graph
from .manager import PassContext


def eliminate_dead_code(graph: Graph, ctx: PassContext) -> bool:
    before = {n.id: n for n in graph.nodes()}
    changed = graph.remove_dead()
    for nid, node in before.items():
        if nid not in graph and node.op != "param":
            ctx.note(f"removed unused {node.op} {node.name or '%' + str(nid)}", node)
    return changed
