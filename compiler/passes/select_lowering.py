"""Lowering selection: which algorithm computes each convolution.

    conv(x, w)  =>  conv(x, w; lowering=direct | channelwise | im2col | winograd_f4 |
                                  winograd_f2 | implicit_gemm)

The candidates are the algorithms of the op (``OpDef.algorithms``) that compute the node
(``applies_to``: the channel-wise kernel takes depthwise and narrow-group shapes, the direct
one the others, Winograd 3x3 stride-1 ones; only those that run on the target: not
``cpu_only`` ones on a GPU target, not ``gpu_only`` ones (the implicit GEMM) on a CPU; the
cost model and ``--autotune`` not, in a training graph, one that is not
``auto_in_training``); each computes the same numbers within float32 rounding (within its own error
bound: Winograd's is larger), so the choice only changes the time, and the node records it.
The user's ``--lowering`` wins (for every layer, where it computes the layer: the others are
chosen as without it; or per layer name, refused where it cannot, saying why), naming an
algorithm (by its own name first: a weight gradient's ``direct`` is its ``direct`` kernel, not
``direct_out``) or its family (``direct`` is the direct or the channel-wise kernel, whichever
computes the layer; ``winograd`` the cheaper of F(4x4, 3x3) and F(2x2, 3x3) by the cost
model); otherwise, with ``--autotune``, the candidates are measured (once per shape,
attributes, target, -O level, layout and CPU: the winner is kept in the kernel cache);
otherwise, at -O2, each algorithm's cost model (``estimate``: padded work of its tiling
divided by the fraction of peak it reaches, plus the floats its layout kernels move) picks the
cheapest, and at -O0/-O1 the first candidate is taken. On a
GPU target the algorithms written for a GPU (the implicit GEMM) are the only automatic
candidates where they compute the layer. A ``--lowering`` naming an algorithm that does not
run on the target is refused, saying which targets it runs on.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..ir import Graph
from ..ops import get_op
from ..ops.conv import ALGORITHMS
from .common import layer
from .manager import OptionError, PassContext

#: What a user may ask for: ``auto``, an algorithm's family or its name.
CHOICES = ("auto", *dict.fromkeys(n for a in ALGORITHMS for n in (a.family, a.name)))


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
        in_types = [graph.node(i).type for i in node.inputs]
        applies = [a for a in algorithms if a.applies_to(node, in_types)]
        candidates = [a for a in applies if a.runs_on(ctx.target)]
        choice = per_name.get(node.name, default)
        elsewhere = [a for a in algorithms if a.is_named(choice) and not a.runs_on(ctx.target)]
        if elsewhere and not any(a.is_named(choice) for a in candidates):
            runs = "GPU" if elsewhere[0].gpu_only else "CPU"
            raise LoweringError(f"lowering {choice} runs on {runs} targets only, not "
                                f"{ctx.target}")
        if node.name not in per_name and not any(a.is_named(choice) for a in candidates):
            choice = "auto"  # a choice for every layer holds where it computes the layer
        # what the cost model and --autotune choose among (in a training graph, not
        # Winograd: its filter transform is made again after every update; on a GPU target,
        # a GPU's own algorithm over the CPU's schedules printed for it)
        automatic = [a for a in candidates if a.auto_in_training or not ctx.training]
        automatic = [a for a in automatic if a.gpu_only] or automatic
        if choice == "auto" and ctx.measure is not None and len(automatic) > 1:
            choice = ctx.measure(graph, node, tuple(a.name for a in automatic))
            ctx.note(f"{layer(node)}: {choice} (measured)", node)
        if choice == "auto":
            chosen = automatic[0]
            if ctx.opt_level >= 2 and len(automatic) > 1:
                costs = {a.name: a.estimate(node, in_types, ctx.target.lanes,
                                              ctx.target.caches)
                         for a in automatic}
                chosen = min(automatic, key=lambda a: costs[a.name])
                if chosen is not automatic[0]:
                    ctx.note(f"{layer(node)}: {chosen.name} (cost model: "
                             + ", ".join(f"{a} {c:.3g}" for a, c in costs.items()) + ")", node)
        else:
            named = [a for a in candidates if a.is_named(choice)]
            if not named:
                why = "; ".join(dict.fromkeys(
                    a.refusal for a in algorithms if a.is_named(choice) and a.refusal))
                raise LoweringError(
                    f"lowering {choice} does not compute {layer(node)} ({node.op})"
                    f"{': ' + why if why else ''}; it can use "
                    f"{', '.join(a.name for a in candidates)}")
            # an algorithm's own name takes it; a family of several (winograd: F(4x4) and
            # F(2x2)) the cheaper for this layer
            exact = [a for a in named if a.name == choice]
            chosen = exact[0] if exact else \
                min(named, key=lambda a: a.estimate(node, in_types, ctx.target.lanes,
                                                    ctx.target.caches))
        if node.attrs.get("lowering") != chosen.name:
            node.attrs["lowering"] = chosen.name
            changed = True
    return changed
