"""Packed weights as derived parameters: each lowered convolution reads its weights packed for
its compute kernel from a parameter-time node.

    conv(x, w, b; lowering=a, tile=t)  =>  conv(x, w, b, conv_pack(w, b; a, t, lanes); packed)

The packing depends on decisions made before: the algorithm (``select_lowering``), the
register tile (``select_tile``) and the block width of the storage the kernel reads
(``select_layout``), so this pass runs last. ``conv_pack`` is evaluated when parameters are set
(never per call), the dump shows it with those decisions, and the convolution's own inputs stay
``w`` and ``b``: its shape rule, reference and gradients do not change. A convolution already
packed is left alone.
"""

from __future__ import annotations

from ..decisions import own_input_count
from ..ir import Graph
from ..ops.conv import pack_attrs
from ..types import BLOCK_LANES
from .common import layer
from .manager import PassContext

CONVOLUTIONS = ("conv", "conv_transpose")


def pack_weights(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.topo_order():
        if node.op not in CONVOLUTIONS or "lowering" not in node.attrs \
                or node.attrs.get("packed"):
            continue
        ctx.at(node)
        in_types = [graph.node(i).type for i in node.inputs]
        x_lanes = BLOCK_LANES.get(graph.node(node.inputs[0]).attrs.get("layout"))
        y_lanes = BLOCK_LANES.get(node.attrs.get("layout"))
        weights = node.inputs[1:own_input_count(len(node.inputs), node.attrs)]  # w[, b]
        packed = graph.add("conv_pack", weights, pack_attrs(node, in_types, x_lanes, y_lanes),
                           name=f"{layer(node)}.packed", span=node.span)
        node.attrs["packed"] = True
        graph.set_inputs(node.id, [*node.inputs, packed.id])
        changed = True
    return changed
