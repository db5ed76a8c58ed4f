"""1x1 bottleneck folding: sibling 1x1 convolutions that read the same tensor become one.

    a = conv1x1(x, wa, ba), b = conv1x1(x, wb, bb)
        =>  m = conv1x1(x, stack_filters(wa, wb), stack_filters(ba, bb));
            a = channel_slice(m, 0, Ka), b = channel_slice(m, Ka, Ka + Kb)

One kernel reads ``x`` once instead of once per branch (the reduce convolutions of an
inception module). The stacked filters are derived parameters (evaluated when parameters are
set); the slices start at whole 8-channel blocks, so in channel-blocked storage they are views
of the merged output (no copy). Multiply-accumulates are unchanged: the saving is in kernels and
in reads of ``x``.

A sibling whose only user is a channel concatenation, as its first input (an inception
module's 1x1 branch), joins as the last range:

    m = conv1x1(x, [wa; wb; wc]);  concat(channel_slice(m, Ka + Kb, K), y, ...)

so that layout selection can put the concatenation's buffer right after the other ranges: the
merged convolution writes its first ranges and the concatenation's first input in one pass
(``select_layout``: the concatenation's ``prefix``). At most one such sibling per group.

Preconditions: stride 1, no padding or dilation, one group; the same fused epilogue (unary ops
only) and all with a bias or all without; each has a multiple of 8 output channels; none is a
graph output; a sibling used by a channel concatenation is its only user and the
concatenation's first input.
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops import epilogue_of, own_input_count
from .common import layer, sole_user
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
    return not any(u.op == "concat" for u in graph.users(node.id)) or \
        _feeds_concat_first(graph, node)


def _feeds_concat_first(graph: Graph, node: Node) -> bool:
    """Whether ``node``'s only use is as the first input of a channel concatenation."""
    user = sole_user(graph, node)
    return user is not None and user.op == "concat" and user.inputs[0] == node.id


def _key(node: Node) -> tuple:
    return (node.inputs[0], len(node.inputs), epilogue_of(node.attrs))


def fold_bottlenecks(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    groups: dict[tuple, list[Node]] = {}
    for node in graph.topo_order():
        if _mergeable(graph, node):
            groups.setdefault(_key(node), []).append(node)
    for siblings in groups.values():
        # one concatenation's first input, last, so that its range can begin the buffer
        feeders = [s for s in siblings if _feeds_concat_first(graph, s)]
        siblings = [s for s in siblings if s not in feeders] + feeders[-1:]
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
