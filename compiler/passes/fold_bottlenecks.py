"""1x1 bottleneck folding: sibling 1x1 convolutions that read the same tensor become one.

    a = conv1x1(x, wa, ba), b = conv1x1(x, wb, bb)
        =>  m = conv1x1(x, stack_filters(wa, wb), stack_filters(ba, bb));
            a = channel_slice(m, 0, Ka), b = channel_slice(m, Ka, Ka + Kb)

One kernel reads ``x`` once instead of once per branch (the reduce convolutions of an
inception module). The stacked filters are derived parameters (evaluated when parameters are
set); the slices start at whole 8-channel blocks, so in channel-blocked storage they are views
of the merged output (no copy). Multiply-accumulates are unchanged: the saving is in kernels and
in reads of ``x``.

Preconditions: stride 1, no padding or dilation, one group; the same fused epilogue (unary ops
only) and all with a bias or all without; each has a multiple of 8 output channels; none is a
graph output; a sibling whose only user is a channel concatenation stays separate (it can write
straight into the concatenation's buffer, which a range of the merged output could not).
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops import epilogue_of, own_input_count
from .common import layer
from .manager import PassContext


def _mergeable(graph: Graph, node: Node) -> bool:
    a = node.attrs
    if node.op != "conv" or a["kernel"] != (1, 1) or a["stride"] != (1, 1) or \
            a["pads"] != (0, 0, 0, 0) or a["dilation"] != (1, 1) or a["groups"] != 1:
        return False
    if any(e.operand is not None for e in epilogue_of(a)) or a["out_channels"] % 8:
        return False
    if graph.is_output(node.id) or own_input_count(len(node.inputs), a) != len(node.inputs):
        return False
    users = graph.users(node.id)
    return not (len(users) == 1 and users[0].op == "concat")


def _key(node: Node) -> tuple:
    return (node.inputs[0], len(node.inputs), epilogue_of(node.attrs))


def fold_bottlenecks(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    groups: dict[tuple, list[Node]] = {}
    for node in graph.topo_order():
        if _mergeable(graph, node):
            groups.setdefault(_key(node), []).append(node)
    for siblings in groups.values():
        if len(siblings) < 2:
            continue
        first = siblings[0]
        ctx.at(first)
        x = first.inputs[0]
        weights = graph.add("stack_filters", [s.inputs[1] for s in siblings],
                            name="+".join(layer(s) for s in siblings) + ".weight",
                            span=first.span)
        ins = [x, weights.id]
        if len(first.inputs) > 2:
            ins.append(graph.add("stack_filters", [s.inputs[2] for s in siblings],
                                 name="+".join(layer(s) for s in siblings) + ".bias",
                                 span=first.span).id)
        attrs = {**first.attrs, "out_channels": sum(s.attrs["out_channels"] for s in siblings),
                 "folded": tuple(f for s in siblings for f in s.attrs.get("folded", ()))}
        merged = graph.add("conv", ins, attrs, name="+".join(layer(s) for s in siblings),
                           span=first.span)
        start = 0
        for s in siblings:
            stop = start + s.attrs["out_channels"]
            piece = graph.add("channel_slice", [merged.id], {"start": start, "stop": stop},
                              name=s.name, span=s.span)
            graph.replace_all_uses(s.id, piece.id)
            graph.erase(s.id)
            start = stop
        ctx.note(f"merged {len(siblings)} sibling 1x1 convolutions "
                 f"({', '.join(layer(s) for s in siblings)}) reading %{x} into one", first)
        changed = True
    return changed
