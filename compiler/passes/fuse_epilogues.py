"""Epilogue fusion: element-wise ops applied at the store of the kernel that produces their
input, instead of in a kernel of their own.

    p = f(...) -> act          =>  p = f(...; epilogue=[act])
    p = f(...); add(p, r)      =>  p = f(..., r; epilogue=[add(r)])      (residual add)
    p = f(...); mul(p, g)      =>  p = f(..., g; epilogue=[mul(g)])      (gate, broadcast)
    p = f(...); sub(p, r)      =>  p = f(..., r; epilogue=[sub(r)])

A unary op also fuses through a reshape or flatten of the producer's value (an element-wise
op commutes with a view): ``act(reshape(p = f(...)))  =>  reshape(p = f(...; epilogue=[act]))``
(the dense layers ``conv_as_dense`` makes of squeeze-excitation convolutions).

Repeated, so ``conv -> add(shortcut) -> relu`` becomes one convolution with the epilogue
``[add(%in3), relu]`` and an element-wise chain becomes one kernel. The second operand of a
binary op becomes an extra input of the producer (after its own inputs): a residual of the
producer's shape, a per-channel gate (C x 1 x 1) or one value per sample (``ops.operand_kind``).

Preconditions: the producer's op takes epilogues of that kind (its ``takes_epilogue`` rule:
``unary`` or ``any``); its value has no other user and is not a graph output; it is computed
per call (not a parameter-time constant). For a binary op with two candidate producers the
later one (largest id) takes the epilogue, so the other operand is ready before it runs.
In a training graph the same preconditions keep every value the backward pass reads: a value
read by a gradient op has another user, so it stays. What fuses there: a ReLU into the
convolution, batch norm or residual add under it (its gradient reads the ReLU's output, not
its input), and the sum of two gradients into the input-gradient convolution computing one.
"""

from __future__ import annotations

from ..decisions import EpilogueOp, epilogue_of, operand_kind
from ..ir import Graph, Node
from ..ops import get_op, is_constant
from .common import layer, sole_user
from .manager import PassContext

BINARY = ("add", "sub", "mul")
#: Views an element-wise op commutes with (the same floats, another shape).
RESHAPES = ("reshape", "flatten")


def _origin(node: Node, ctx: PassContext) -> str:
    return f"{ctx.where(node)} {layer(node)}".lstrip()


def _accepts(graph: Graph, prod: Node, user: Node, kind: str) -> bool:
    if prod.op in ("input", "param") or is_constant(graph, prod):
        return False
    takes = get_op(prod.op).takes_epilogue
    if takes == "none" or (kind == "binary" and takes != "any"):
        return False
    return sole_user(graph, prod) is user


def _fuse(graph: Graph, prod: Node, user: Node, ops: list[EpilogueOp], operands: list[int],
          ctx: PassContext, result: Node | None = None) -> None:
    """Apply ``ops`` at ``prod``'s store; ``user``'s readers read ``result`` (``prod``, or the
    view of it the user read)."""
    prod.attrs["epilogue"] = epilogue_of(prod.attrs) + tuple(ops)
    graph.set_inputs(prod.id, prod.inputs + operands)
    graph.replace_all_uses(user.id, (result or prod).id)
    graph.erase(user.id)
    what = ", ".join(str(o) for o in ops)
    ctx.note(f"fused {user.op} {layer(user)} into {layer(prod)} as epilogue {what}", user)


def fuse_epilogues(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for user in graph.topo_order():
        if user.id not in graph or get_op(user.op).epilogue is None:
            continue
        ctx.at(user)
        attrs = tuple(sorted(user.attrs.items()))
        if user.op not in BINARY:
            prod, view = graph.node(user.inputs[0]), None
            if prod.op in RESHAPES and sole_user(graph, prod) is user:
                prod, view = graph.node(prod.inputs[0]), prod
            if _accepts(graph, prod, view or user, "unary"):
                _fuse(graph, prod, user, [EpilogueOp(user.op, attrs, origin=_origin(user, ctx))],
                      [], ctx, result=view)
                changed = True
            continue
        if any(is_constant(graph, graph.node(i)) for i in user.inputs):
            continue
        candidates = user.inputs[:1] if user.op == "sub" else user.inputs
        fits = [graph.node(i) for i in dict.fromkeys(candidates)
                if graph.node(i).type.shape == user.type.shape
                and _accepts(graph, graph.node(i), user, "binary")]
        if not fits:
            continue
        prod = max(fits, key=lambda n: n.id)
        others = list(user.inputs)
        others.remove(prod.id)
        if any(operand_kind(graph.node(o).type.shape, prod.type.shape) is None for o in others):
            continue
        first = len(prod.inputs)
        ops = [EpilogueOp(user.op, (), first + k, origin=_origin(user, ctx))
               for k in range(len(others))]
        _fuse(graph, prod, user, ops, others, ctx)
        changed = True
    return changed
