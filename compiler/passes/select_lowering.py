"""Lowering selection: which algorithm computes each convolution.

    conv(x, w)  =>  conv(x, w; lowering=direct | im2col)

Every candidate the op lists (its ``algorithms`` rule) computes the same numbers within float32
rounding; the choice only changes the time. The user's ``--lowering`` wins (for every layer, or
per layer name); otherwise, with ``--autotune``, the candidates are measured (once per shape,
attributes, target and CPU: the winner is kept in the kernel cache); otherwise, at -O2, the cost
model of ``ops.conv.estimate_cost`` (padded work of each kernel's tiling divided by the
fraction of peak it reaches) picks the cheaper one, and at -O0/-O1 the default (``direct``) is
taken. Winograd is the next candidate (a slot in ``conv``'s algorithm list).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..ir import Graph
from ..ops import get_op, own_attrs
from ..ops.conv import estimate_cost
from .common import layer
from .manager import OptionError, PassContext

CHOICES = ("auto", "direct", "im2col")


class LoweringError(OptionError):
    """A lowering option that does not fit the graph (unknown layer name or lowering): a user
    error, reported as such."""


def parse_choice(lowering: str | Mapping[str, str], graph: Graph) -> tuple[str, dict[str, str]]:
    """``(default, per layer name)`` from the user's option, validated against the graph."""
    if isinstance(lowering, str):
        default, per_name = lowering, {}
    else:
        default, per_name = "auto", dict(lowering)
    names = {n.name for n in graph.nodes()}
    for name, choice in [("(all)", default), *per_name.items()]:
        if choice not in CHOICES:
            raise LoweringError(f"lowering for {name} must be one of {', '.join(CHOICES)}, "
                                f"got {choice!r}")
        if name != "(all)" and name not in names:
            raise LoweringError(f"--lowering names layer {name!r}, which the network does not "
                                "have")
    return default, per_name


def select_lowering(graph: Graph, ctx: PassContext) -> bool:
    default, per_name = parse_choice(ctx.lowering, graph)
    changed = False
    for node in graph.topo_order():
        algorithms = get_op(node.op).algorithms
        if not algorithms:
            continue
        ctx.at(node)
        choice = per_name.get(node.name, default)
        if choice == "auto" and ctx.measure is not None and len(algorithms) > 1:
            choice = ctx.measure(graph, node, algorithms)
            ctx.note(f"{layer(node)}: {choice} (measured)", node)
        if choice == "auto":
            choice = algorithms[0]
            if ctx.opt_level >= 2 and len(algorithms) > 1:
                x = graph.node(node.inputs[0]).type.shape
                costs = {a: estimate_cost(node.op, own_attrs(node.attrs), x, a,
                                          ctx.target.lanes) for a in algorithms}
                choice = min(algorithms, key=lambda a: costs[a])
                if choice != algorithms[0]:
                    ctx.note(f"{layer(node)}: {choice} (cost model: "
                             + ", ".join(f"{a} {c:.3g}" for a, c in costs.items()) + ")", node)
        if node.attrs.get("lowering") != choice:
            node.attrs["lowering"] = choice
            changed = True
    return changed
