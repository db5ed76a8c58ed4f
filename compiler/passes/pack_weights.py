"""Packed weights as derived parameters: each kernel that reads its constants packed, padded
or transformed reads them from a parameter-time node, evaluated when parameters are set.

    conv(x, w, b; lowering=a, tile=t)  =>  conv(x, w, b, conv_pack(w, b; a, t, lanes); packed)
    dense(flatten(x), w, b)            =>  dense(.., w, b, dense_pack(w; x's storage); packed)
    batchnorm(x, g, b, m, v; eps)      =>  batchnorm(.., bn_scale_shift(g, b, m, v; eps,
                                                                   padded); packed)

Each op says what its kernel needs (``OpDef.pack``), given the storage of its input and output:
what is packed depends on decisions made before (the algorithm, the register tile, the layouts
and halos of ``select_layout``), so this pass runs last. The dump shows every packing, and the
node's own inputs stay what they were: its shape rule, reference and gradients do not change;
a backward pass sees through the packing to the parameters. A node already packed is left alone.
"""

from __future__ import annotations

from ..ir import Graph
from ..lower.driver import blocked_storage
from ..ops import get_op
from .common import layer
from .manager import PassContext


def pack_weights(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.topo_order():
        rule = get_op(node.op).pack
        if rule is None or node.attrs.get("packed"):
            continue
        ctx.at(node)
        made = rule(graph, node, blocked_storage(graph, graph.node(node.inputs[0])),
                    blocked_storage(graph, node))
        if made is None:
            continue
        op, inputs, attrs = made
        packed = graph.add(op, inputs, attrs, name=f"{layer(node)}.packed", span=node.span)
        node.attrs["packed"] = True
        graph.set_inputs(node.id, [*node.inputs, packed.id])
        changed = True
    return changed
