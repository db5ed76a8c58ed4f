"""Batch-norm folding into the *following* convolution or dense layer (inference only).

    batchnorm(x; gamma, beta, mean, var) -> conv(w, b; groups g, no padding)
        =>  conv(x, w') + b'
        w'[o, c, r, s] = w[o, c, r, s] * scale[ch(o, c)]
        b'[o]          = b[o] + sum_{c, r, s} w[o, c, r, s] * shift[ch(o, c)]

with ``scale, shift = batchnorm_scale_shift(...)`` and ``ch(o, c) = (o // (K/g)) * (C/g) + c``
the input channel that weight row ``o``, column ``c`` reads: the convolution is linear in its
input, so an affine map per input channel moves into its weights and bias. A dense layer after a
batch norm of a feature vector folds the same way (one group, no window). The new weight and
bias are derived parameters (``bn_fold_input_weight``, ``bn_fold_input_bias``), re-evaluated
whenever parameters are set.

Preconditions: the batch norm's output has this layer as its only user and is not a graph
output; the convolution has no padding (a padded border reads zeros of the *normalized* value,
which the folded layer would see as ``x = 0`` and shift); its weight is a parameter (not an
activation); the pipeline is for inference. It runs after ``fold_batchnorm``, which folds a
batch norm into its producer where it can (that needs no condition on padding).
"""

from __future__ import annotations

from ..ir import Graph
from ..ops import is_constant
from .common import fold_into_layer, layer, sole_user
from .manager import PassContext


def fold_batchnorm_into_consumer(graph: Graph, ctx: PassContext) -> bool:
    if ctx.training:
        return False
    changed = False
    for bn in graph.topo_order():
        if bn.op != "batchnorm" or bn.id not in graph:
            continue
        ctx.at(bn)
        user = sole_user(graph, bn)
        if user is None or user.op not in ("conv", "dense") or user.inputs[0] != bn.id \
                or len(user.inputs) < 2 or not is_constant(graph, graph.node(user.inputs[1])):
            continue
        if user.op == "conv" and (len(bn.type.shape) != 3 or any(user.attrs["pads"])):
            continue
        if user.op == "dense" and len(bn.type.shape) != 1:
            continue
        x, gamma, beta, mean, var = bn.inputs[:5]
        _, w, *bias = user.inputs
        attrs = {"eps": bn.attrs["eps"], "groups": user.attrs.get("groups", 1)}
        w2 = graph.add("bn_fold_input_weight", [w, gamma, var], attrs,
                       name=f"{graph.node(w).name}@{layer(bn)}", span=bn.span)
        b2 = graph.add("bn_fold_input_bias", [w, gamma, beta, mean, var, *bias], attrs,
                       name=f"{user.name}.bias@{layer(bn)}", span=bn.span)
        fold_into_layer(graph, user, bn, [x, w2.id, b2.id])
        ctx.note(f"folded {layer(bn)} into the following {layer(user)}", bn)
        changed = True
    return changed
