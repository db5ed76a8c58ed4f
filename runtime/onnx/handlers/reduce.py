"""Reductions: ReduceMean / ReduceMax over height and width (global pooling), ReduceL2 /
ReduceL1 of a difference (the distance between two embeddings)."""

from __future__ import annotations

from typing import Any

from ..importer import Handler, Importer, axes_arg, axis_in_range, node_attrs, refuse


def _reduce(imp: Importer, node: Any, i: int) -> None:
    """Only as a distance: Sub(a, b) -> Flatten -> ReduceL2/L1 over axis 1, keepdims."""
    x = imp.dyn(node)
    a = node_attrs(node)
    axes = axes_arg(imp, node, a, 1) if imp.opset >= 18 else a.get("axes")
    chain = []  # the Sub layer, possibly behind a Flatten (absent for feature vectors)
    layer = imp.producer.get(x)
    while layer is not None and layer.op in ("flatten", "sub") and \
            len(imp.consumers.get(layer.output, [])) == 1:
        chain.append(layer)
        if layer.op == "sub":
            break
        layer = imp.producer.get(layer.inputs[0])
    sub = chain[-1] if chain and chain[-1].op == "sub" else None
    if sub is not None and axes in ([1], [-1]) and a.get("keepdims", 1):
        for la in chain:
            la.removed = True
        p = 2.0 if node.op_type == "ReduceL2" else 1.0
        imp.add(node, "distance", {} if p == 2.0 else {"p": p}, list(sub.inputs))
        return
    raise refuse(node, imp.opset, "supported only as the distance between two embeddings "
                 "(Sub -> Flatten -> reduce over axis 1 with keepdims)")


def _global_reduce(imp: Importer, node: Any, i: int) -> None:
    """A mean or maximum over height and width (how PyTorch's dynamo exporter writes global
    pooling): globalavgpool / globalmaxpool, followed by a flatten when keepdims=0."""
    x = imp.dyn(node)
    a = node_attrs(node)
    axes = axes_arg(imp, node, a, 1) if imp.opset >= 18 else a.get("axes")
    rank = len(imp.shapes[x]) + 1
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            imp.alias[node.output[0]] = x
            return
        axes = list(range(rank))
    axes = sorted({axis_in_range(imp, node, int(ax), rank) for ax in axes})
    if rank != 4 or axes != [2, 3]:
        raise refuse(node, imp.opset, f"reducing over axes {axes} of a rank-{rank} tensor has "
                     "no cnnc layer; only over height and width (axes 2, 3: global pooling)")
    op = "globalavgpool" if node.op_type == "ReduceMean" else "globalmaxpool"
    if a.get("keepdims", 1):
        imp.add(node, op, {}, [x])
        return
    pooled = imp.add(node, op, {}, [x], output=node.output[0] + "/pooled")
    imp.add(node, "flatten", {}, [pooled.output])


HANDLERS: dict[str, Handler] = {
    "ReduceL2": _reduce,
    "ReduceL1": _reduce,
    "ReduceMean": _global_reduce,
    "ReduceMax": _global_reduce,
}
