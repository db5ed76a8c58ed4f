"""A transposed convolution as one stride-1 convolution per output phase.

    y = conv_transpose(x, w[C, K/g, R, S], b; stride s, pads)
        =>  y = depth_to_space(concat(conv(x, w_00, b), conv(x, w_01, b), ...), s, DCR)

Output pixel ``(s*a + i, s*c + j)`` only receives the taps ``r = i + top (mod s)``, ``q = j +
left (mod s)`` of the kernel, so phase ``(i, j)`` is a stride-1 convolution of ``x`` with that
sub-kernel, flipped and transposed (``phase_filter``, a derived parameter), with its own
padding (``ops/conv.transposed_phases``, where the algebra is); ``depth_to_space`` in mode DCR
interleaves the ``s^2`` phase outputs, in phase order, back into the image. The lowering of a
transposed convolution otherwise convolves the zero-stuffed input, where ``s^2 - 1`` of every
``s^2`` products are zeros (U-Net's 2x2 stride-2 up-convolutions: 4x the work).

When every phase has the same kernel and padding (``R`` and the top and left padding
multiples of ``s``; U-Net's, where each phase is a 1x1 convolution), and one group, the phases
are one convolution of ``s^2 K`` filters (``stack_filters``): one kernel, no concatenation.

With stride 1 there is one phase: the convolution of the flipped kernel, padded by ``R - 1 -
top`` (no depth_to_space; the zero-stuffed lowering would copy the input into a padded buffer).

A phase no tap reaches is zero when the transposed convolution has no bias (the input gradient
of a 1x1 stride-2 convolution: one phase of four has taps): the computed phases' outputs carry
the zero phases beside them as zero channels (``channel_pad``) into the concatenation,

    y = depth_to_space(channel_pad(conv(x, w_00), after=3 K), 2, DCR)

Preconditions: a square stride, no dilation, the output a multiple of the stride
in both axes, every phase a convolution with non-negative padding (no crop; a tap-less phase
only without a bias),
no fused epilogue, at most 16 phases unless they are one convolution, and a weight that is a
parameter or derived from parameters (its phase filters are evaluated when parameters are
set). Otherwise the node stays, and ``--explain`` says why.
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops import epilogue_of, is_constant
from ..ops.conv import transposed_phases
from .common import layer
from .manager import PassContext

#: The most separate phase convolutions a transposed convolution becomes (stride 4).
MAX_PHASES = 16


def _uniform(phases: list[dict]) -> bool:
    return all(p["kernel"] is not None and p["kernel"] == phases[0]["kernel"]
               and p["pads"] == phases[0]["pads"] for p in phases)


def _with_zero_phases(graph: Graph, node: Node, phases: list[dict],
                      convs: dict[int, int]) -> list[int]:
    """The pieces of the phases' concatenation, in phase order: each computed phase's
    convolution, with the runs of tap-less phases around it as zero channels
    (``channel_pad``)."""
    runs: list[list[int]] = []  # [convolution, zero phases before, zero phases after]
    before = 0
    for k, phase in enumerate(phases):
        if phase["kernel"] is not None:
            runs.append([convs[k], before, 0])
            before = 0
        elif runs:
            runs[-1][2] += 1
        else:
            before += 1
    k_out = node.attrs["out_channels"]
    return [conv if not (b or a) else graph.add(
        "channel_pad", [conv], {"before": b * k_out, "after": a * k_out},
        name=f"{graph.node(conv).name}.zeros", span=node.span).id for conv, b, a in runs]


def conv_transpose_as_phases(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.topo_order():
        if node.op != "conv_transpose" or node.id not in graph or epilogue_of(node.attrs) \
                or is_constant(graph, node):
            continue
        x, w, *bias = node.inputs
        if not is_constant(graph, graph.node(w)):
            continue
        a = node.attrs
        phases = transposed_phases(a, graph.node(x).type.shape, node.type.shape)
        if isinstance(phases, str):
            ctx.note(f"{layer(node)}: kept as a zero-stuffed convolution ({phases})", node)
            continue
        merge = _uniform(phases) and a["groups"] == 1
        if not merge and len(phases) > MAX_PHASES:
            ctx.note(f"{layer(node)}: kept as a zero-stuffed convolution ({len(phases)} "
                     f"different phases, more than {MAX_PHASES})", node)
            continue
        ctx.at(node)
        s = a["stride"][0]
        if all(p["kernel"] is None for p in phases):
            ctx.note(f"{layer(node)}: kept as a zero-stuffed convolution (no tap reaches any "
                     "output phase)", node)
            continue
        filters = [graph.add("phase_filter", [w], {"groups": a["groups"], "stride": a["stride"],
                                                   "start": p["start"]},
                             name=f"{layer(node)}.phase{k}.weight", span=node.span).id
                   if p["kernel"] is not None else -1 for k, p in enumerate(phases)]
        conv_attrs = {"out_channels": a["out_channels"], "stride": (1, 1),
                      "dilation": (1, 1), "groups": a["groups"], "bias": a["bias"]}
        if a.get("folded"):
            conv_attrs["folded"] = a["folded"]
        if len(phases) == 1:
            stacked = graph.add("conv", [x, filters[0], *bias],
                                {**conv_attrs, "kernel": phases[0]["kernel"],
                                 "pads": phases[0]["pads"]}, name=node.name, span=node.span)
        elif merge:
            weight = graph.add("stack_filters", filters, name=f"{layer(node)}.phases.weight",
                               span=node.span)
            ins = [x, weight.id]
            if bias:
                ins.append(graph.add("stack_filters", bias * len(phases),
                                     name=f"{layer(node)}.phases.bias", span=node.span).id)
            attrs = {**conv_attrs, "out_channels": a["out_channels"] * len(phases),
                     "kernel": phases[0]["kernel"], "pads": phases[0]["pads"]}
            stacked = graph.add("conv", ins, attrs, name=f"{layer(node)}.phases",
                                span=node.span)
            how = f"one convolution of {len(phases)} x {a['out_channels']} " \
                  f"{phases[0]['kernel'][0]}x{phases[0]['kernel'][1]} filters"
        else:
            convs = {k: graph.add("conv", [x, f, *bias],
                                  {**conv_attrs, "kernel": p["kernel"], "pads": p["pads"]},
                                  name=f"{layer(node)}.phase{k}", span=node.span).id
                     for k, (f, p) in enumerate(zip(filters, phases)) if p["kernel"] is not None}
            pieces = _with_zero_phases(graph, node, phases, convs)
            stacked = graph.node(pieces[0]) if len(pieces) == 1 else graph.add(
                "concat", pieces, {"axis": 0}, name=f"{layer(node)}.phases", span=node.span)
            kernels = sorted({f"{p['kernel'][0]}x{p['kernel'][1]}" for p in phases
                              if p["kernel"] is not None})
            how = f"{len(convs)} convolutions ({', '.join(kernels)} kernels)"
            if len(convs) < len(phases):
                how += f" and {len(phases) - len(convs)} phases no tap reaches (zeros)"
        if s == 1:  # one phase: the convolution itself
            graph.replace_all_uses(node.id, stacked.id)
            graph.erase(node.id)
            ctx.note(f"{layer(node)}: a stride-1 transposed convolution as the convolution "
                     "of its flipped kernel (no padded copy of the input)", node)
            changed = True
            continue
        shuffle = graph.add("depth_to_space", [stacked.id], {"block": s, "mode": "DCR"},
                            name=node.name, span=node.span)
        graph.replace_all_uses(node.id, shuffle.id)
        graph.erase(node.id)
        ctx.note(f"{layer(node)}: a stride-{s} transposed convolution as {how}, interleaved "
                 "by depth_to_space (no zero-stuffed input)", node)
        changed = True
    return changed
