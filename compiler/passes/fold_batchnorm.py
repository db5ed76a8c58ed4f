"""Batch-norm folding into the preceding convolution or dense layer (inference only).

    conv(x, w, b) -> batchnorm(gamma, beta, mean, var)
        =>  conv(x, w * s, b * s + beta - mean * s),   s = gamma / sqrt(var + eps)

(``b`` is 0 for a convolution without bias; dense layers fold the same way.) The folded weight
and bias are derived parameters (``bn_fold_weight``, ``bn_fold_bias``): nodes over the source
parameters that the executor evaluates in float64 whenever parameters are set, so loading new
weights after compiling still gives the right numbers.

Preconditions: the producer is a ``conv`` or ``dense`` without a fused epilogue; its output
has no other user and is not a graph output (the unnormalized value must not be needed); the
pipeline is for inference (training normalizes with batch statistics).
"""

from __future__ import annotations

from ..ir import Graph
from ..ops import epilogue_of
from .common import fold_into_layer, layer, sole_user
from .manager import PassContext

FOLDS_INTO = ("conv", "dense")


def fold_batchnorm(graph: Graph, ctx: PassContext) -> bool:
    if ctx.training:
        return False
    changed = False
    for bn in graph.topo_order():
        if bn.op != "batchnorm" or bn.id not in graph:
            continue
        ctx.at(bn)
        prod = graph.node(bn.inputs[0])
        if prod.op not in FOLDS_INTO or epilogue_of(prod.attrs) or sole_user(graph, prod) is None:
            continue
        if prod.op == "conv" and len(bn.type.shape) != 3:
            continue
        gamma, beta, mean, var = bn.inputs[1:5]
        eps = bn.attrs["eps"]
        x, w, *bias = prod.inputs
        wname = graph.node(w).name
        w2 = graph.add("bn_fold_weight", [w, gamma, var], {"eps": eps},
                       name=f"{wname}@{layer(bn)}", span=bn.span)
        b2 = graph.add("bn_fold_bias", [gamma, beta, mean, var, *bias], {"eps": eps},
                       name=f"{prod.name}.bias@{layer(bn)}", span=bn.span)
        fold_into_layer(graph, prod, bn, [x, w2.id, b2.id])
        ctx.note(f"folded {layer(bn)} into {layer(prod)}", bn)
        changed = True
    return changed
