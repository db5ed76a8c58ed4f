"""Common-subexpression elimination.

    a = f(x; attrs), b = f(x; attrs)   =>   b replaced by a

Two compute nodes with the same op, the same inputs in the same order and equal attributes
compute the same value; the later one is replaced by the earlier. Parameters are never merged
(two layers with equal initial weights are still two layers). Repeats until nothing merges, so
whole duplicated chains collapse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Graph
from .common import layer
from .manager import PassContext


def _key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    return value


def eliminate_common_subexpressions(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    seen: dict[Any, int] = {}
    for node in graph.topo_order():
        if node.op in ("input", "param"):
            continue
        ctx.at(node)
        key = (node.op, tuple(node.inputs), _key(node.attrs))
        first = seen.get(key)
        if first is None:
            seen[key] = node.id
            continue
        if graph.is_output(node.id) and graph.is_output(first):
            continue  # two outputs keep two buffers
        keep = graph.node(first)
        graph.replace_all_uses(node.id, first)
        if not graph.is_output(node.id):
            graph.erase(node.id)
        ctx.note(f"{layer(node)} computes the same as {layer(keep)}: merged", node)
        changed = True
    return changed
