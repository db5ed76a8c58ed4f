"""Guided backpropagation and the deconvnet as a rewrite of the network's activations.

    f(x)  =>  modified_backward(x; of=f, rule)      for each monotone activation f

The forward values are unchanged (the new op computes f, ``compiler/ops/activation.py``); only
the gradient rule autodiff finds on the node changes, to the seed's guided-backprop or
deconvnet rule. The explanations apply it to a copy of the network before attaching their
objective, so ``autodiff`` differentiates it like any graph. It must run before ``autodiff``
(it does: it is not a pipeline pass, and the training pipelines fuse no epilogues, so every
activation is still a node of its own here).

Preconditions: the activation is one of ``MONOTONE`` (f' >= 0, so the rules keep their sign
meaning) and has no fused epilogue.
"""

from __future__ import annotations

from ..ir import Graph
from ..ops import epilogue_of
from ..ops.activation import BACKWARD_RULES, MONOTONE


def modify_backward(graph: Graph, rule: str) -> int:
    """Replace every monotone activation of ``graph`` by its ``rule`` form (``guided`` or
    ``deconvnet``); returns how many were replaced."""
    if rule not in BACKWARD_RULES:
        raise ValueError(f"backward rule must be one of {', '.join(BACKWARD_RULES)}, got "
                         f"{rule!r}")
    count = 0
    for node in graph.topo_order():
        if node.op not in MONOTONE or epilogue_of(node.attrs):
            continue
        modified = graph.add("modified_backward", list(node.inputs),
                             {"of": node.op, "rule": rule, **node.attrs}, type=node.type,
                             name=node.name, span=node.span)
        graph.replace_all_uses(node.id, modified.id)
        graph.erase(node.id)
        count += 1
    return count
