"""Residual kernels shared: a convolution whose fused epilogue is a residual add (and a ReLU
after it) and the convolutions of the same kernel without an epilogue run one compiled kernel,
the residual a runtime choice.

    conv(x, w; epilogue=[])               =>  conv(x, w; residual=runtime)
    conv(x, w, r; epilogue=[add(r)])      =>  conv(x, w, r; epilogue=[add(r)], residual=runtime)
    conv(x, w, r; epilogue=[add(r), relu]) => (the same, residual=runtime)

when, among the convolutions whose compute kernels are otherwise the same (algorithm, register
tile, window, stride, dilation, groups, the input's and output's layouts), both forms occur:
ResNet's block ends and the convolutions before them, MobileNetV2's projections with and
without the shortcut. A leading ReLU of either epilogue stays the kernel's ``relu`` argument.
The kernel then adds the residual operand and applies the ReLU after it when its ``residual``
argument says so (``kernels.tiles.residual_store``): the numbers are those of the fused
epilogue, and each compiled kernel fewer is 1-4 s of a cold compile. Where only one form
occurs nothing changes (the kernel without the runtime choice is the smaller one).

Preconditions: the algorithm takes a runtime residual (``ConvAlgorithm.runtime_residual``:
direct, Winograd); the output is channel-blocked (its epilogue is applied by the compute
kernel, not by an output kernel), no pooling prologue, and a residual operand of the output's
shape. Runs after layout selection and prologue fusion, -O2 inference only, CPU targets only.
"""

from __future__ import annotations

from collections import defaultdict

from ..decisions import epilogue_of, operand_kind, own_attrs, prologue_of
from ..ir import Graph, Node
from ..kernels.tiles import RESIDUAL_CODES
from ..ops.conv import by_name
from ..types import BLOCK_LANES
from .common import layer
from .manager import PassContext


def residual_form(graph: Graph, node: Node) -> str | None:
    """``"plain"`` or ``"residual"`` for a convolution whose kernel could take the residual
    as a runtime choice (see the preconditions), else None."""
    a = node.attrs
    if node.op != "conv" or "lowering" not in a or prologue_of(a) or \
            BLOCK_LANES.get(a.get("layout")) is None:
        return None
    if not by_name(a["lowering"]).runtime_residual:
        return None
    ops = list(epilogue_of(a))
    if ops and ops[0].op == "relu":  # the kernel's own relu argument
        ops = ops[1:]
    if tuple(e.op for e in ops) not in RESIDUAL_CODES:
        return None
    for e in ops:
        if e.operand is not None and operand_kind(
                graph.node(node.inputs[e.operand]).type.shape, node.type.shape) != "full":
            return None
    return "residual" if ops else "plain"


def _kernel_key(graph: Graph, node: Node) -> tuple:
    """What the compute kernel's code depends on besides the epilogue."""
    a = node.attrs
    own = own_attrs(a)
    x = graph.node(node.inputs[0])
    c = x.type.shape[0]
    return (a["lowering"], a.get("tile"), tuple(own["kernel"]), tuple(own["stride"]),
            tuple(own["dilation"]), own["groups"], c // own["groups"] >= 8,
            x.attrs.get("layout"), a.get("layout"))


def share_residual_kernels(graph: Graph, ctx: PassContext) -> bool:
    if ctx.opt_level < 2 or ctx.training or ctx.target.cuda:
        return False
    groups: dict[tuple, list[tuple[Node, str]]] = defaultdict(list)
    for node in graph.topo_order():
        form = residual_form(graph, node)
        if form is not None:
            groups[_kernel_key(graph, node)].append((node, form))
    changed = False
    for members in groups.values():
        if {form for _, form in members} != {"plain", "residual"}:
            continue
        for node, _ in members:
            ctx.at(node)
            if node.attrs.get("residual") != "runtime":
                node.attrs["residual"] = "runtime"
                changed = True
        ctx.note(f"{len(members)} convolutions share a kernel with a runtime residual: "
                 + ", ".join(layer(n) for n, _ in members[:4])
                 + (" ..." if len(members) > 4 else ""))
    return changed
