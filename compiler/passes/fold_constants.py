"""Constant folding.

    f(c1, c2, ...)  with every ci a parameter or a folded constant
        =>  f marked parameter-time: evaluated in float64 when parameters are set

Such a node does not depend on the network's inputs, so it is computed once per weight set by
the executor (like the derived parameters of batch-norm folding) and read by its users as a
constant; no kernel is generated for it. The decision is the node attribute
``parameter_time=True``, shown by the IR dump.
"""

from __future__ import annotations

from ..ir import Graph
from ..ops import is_constant
from .common import layer
from .manager import PassContext


def fold_constants(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.topo_order():
        if node.op in ("input", "param") or is_constant(graph, node) or not node.inputs:
            continue
        if all(is_constant(graph, graph.node(i)) for i in node.inputs):
            ctx.at(node)
            node.attrs["parameter_time"] = True
            ctx.note(f"{node.op} {layer(node)} depends only on parameters: evaluated when "
                     "parameters are set", node)
            changed = True
    return changed
