"""Channel moves composed into one gather: shuffles, and the concatenations and slices around
them (ShuffleNet's units), become one ``channel_gather`` that reads the chain's sources.

Each of these ops only moves channels: output channel ``o`` is channel ``c`` of input ``i``,

    channel_shuffle(x, g)[o]    = x[(o % g) * (C / g) + o // g]
    channel_slice(x, s, e)[o]   = x[s + o]
    concat(x_0, x_1, ...)[o]    = x_i[o - (channels of x_0 .. x_(i-1))]
    channel_gather(x_0, ...)[o] = x_i[c]      with (i, c) = channels[o]

so a chain of them is one such table (compose: look each source channel up in the table of
the gather it reads). A ShuffleNet unit,

    u = channel_shuffle(concat(kept, f(changed)), 2),  kept, changed = halves of the last u

becomes ``u = channel_gather(sources of kept, f(changed))``: the kept half is read where
its producers wrote it, and only ``changed`` (a convolution's input) is ever copied, instead
of a concatenation, a shuffle and two slices per unit.

Which nodes: every channel shuffle; every concatenation or slice that reads a gather; a
concatenation of an input that does not end at an 8-channel block boundary, or a slice that
does not start at one (as gathers they run channel-blocked: any channel to any lane). An
aligned concatenation (written in place) or slice (a view) of other values stays as it is.
A composition that would read more than ``MAX_SOURCES`` tensors keeps the inner gather as
one input (the kernels take at most that many).

Numbers: copies only, exact in every layout. Inference and training alike (the gradient of a
gather is a scatter: the training issue's slot).
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops import is_constant
from .common import layer
from .manager import PassContext

#: The most inputs a gather reads (``kernels.rearrange.GATHER_ARITIES``).
MAX_SOURCES = 16

Table = list[tuple[int, int]]


def _table(graph: Graph, node: Node) -> Table | None:
    """The (input, channel) of each output channel of a channel move to rewrite, else None."""
    inputs = [graph.node(i) for i in node.inputs]
    if node.op == "channel_shuffle":
        g, c = node.attrs["groups"], node.type.shape[0]
        return [(0, (o % g) * (c // g) + o // g) for o in range(c)]
    if node.op == "channel_slice":
        start, stop = node.attrs["start"], node.attrs["stop"]
        if start % 8 == 0 and inputs[0].op != "channel_gather":
            return None  # a view of whole blocks
        return [(0, c) for c in range(start, stop)]
    if _channel_concat(node):
        ragged = any(x.type.shape[0] % 8 for x in inputs[:-1])
        if not ragged and all(x.op != "channel_gather" for x in inputs):
            return None  # whole blocks: written in place or copied block by block
        return [(i, c) for i, x in enumerate(inputs) for c in range(x.type.shape[0])]
    return None


def _channel_concat(node: Node) -> bool:
    return node.op == "concat" and node.attrs.get("axis") == 0 and len(node.type.shape) == 3


def _compose(graph: Graph, inputs: list[int], table: Table) -> tuple[list[int], Table]:
    """The sources and table of ``table`` over ``inputs`` with every input that is itself a
    gather, a slice or a concatenation replaced by its own sources, unless that reads more
    than MAX_SOURCES tensors."""
    sources: list[int] = []

    def source(nid: int) -> int:
        if nid not in sources:
            sources.append(nid)
        return sources.index(nid)

    composed = []
    for i, c in table:
        x = graph.node(inputs[i])
        if x.op == "channel_gather":
            j, c = x.attrs["channels"][c]
            composed.append((source(x.inputs[j]), c))
        elif x.op == "channel_slice":  # a view: read its base
            composed.append((source(x.inputs[0]), x.attrs["start"] + c))
        elif _channel_concat(x):  # read the part that holds channel c
            for part in x.inputs:
                size = graph.node(part).type.shape[0]
                if c < size:
                    break
                c -= size
            composed.append((source(part), c))
        else:
            composed.append((source(x.id), c))
    if len(sources) <= MAX_SOURCES:
        return sources, composed
    plain: list[int] = list(dict.fromkeys(inputs))
    return plain, [(plain.index(inputs[i]), c) for i, c in table]


def fold_channel_moves(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.topo_order():
        if node.id not in graph or is_constant(graph, node):
            continue
        table = _table(graph, node)
        if table is None:
            continue
        ctx.at(node)
        sources, channels = _compose(graph, list(node.inputs), table)
        gather = graph.add("channel_gather", sources, {"channels": tuple(channels)},
                           name=node.name, span=node.span)
        graph.replace_all_uses(node.id, gather.id)
        graph.erase(node.id)
        names = ", ".join(layer(graph.node(s)) for s in sources)
        ctx.note(f"{layer(node)}: {node.op} as a channel gather of {len(channels)} channels "
                 f"from {names}", node)
        changed = True
    return changed
