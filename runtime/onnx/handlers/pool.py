"""Pooling: MaxPool, AveragePool, LpPool, global pooling, and min pooling written as
Neg -> MaxPool -> Neg."""

from __future__ import annotations

from typing import Any

from ..importer import Handler, Importer, need_rank, node_attrs, pair_attr, refuse, spatial_pads
from .activation import unary


def _pool_common(imp: Importer, node: Any, x: str) -> dict[str, Any]:
    need_rank(imp, node, x, 3, "C x H x W")
    a = node_attrs(node)
    kernel = tuple(int(k) for k in a["kernel_shape"])
    if len(kernel) != 2:
        raise refuse(node, imp.opset, "only 2-D pooling is supported")
    stride, dilation = pair_attr(imp, node, a, "strides"), pair_attr(imp, node, a, "dilations")
    args = {"kernel": kernel, "stride": stride,
            "pad": spatial_pads(imp, node, a, x, kernel, stride, dilation),
            "ceil_mode": bool(a.get("ceil_mode", 0)), "dilation": dilation}
    return args


def _maxpool(imp: Importer, node: Any, i: int) -> None:
    imp.only_first_output(node)
    x = imp.dyn(node)
    args = _pool_common(imp, node, x)
    imp.add(node, "maxpool", args, [x])


def _avgpool(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    args = _pool_common(imp, node, x)
    args["count_include_pad"] = bool(node_attrs(node).get("count_include_pad", 0))
    imp.add(node, "avgpool", args, [x])


def _lppool(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    args = _pool_common(imp, node, x)
    args["p"] = float(node_attrs(node).get("p", 2))
    imp.add(node, "lppool", args, [x])


def _neg(imp: Importer, node: Any, i: int) -> None:
    """Only as min pooling: Neg -> MaxPool -> Neg (how cnnc exports minpool)."""
    g = imp.model.graph.node
    users = imp.consumers.get(node.output[0], [])
    if len(users) == 1 and g[users[0]].op_type == "MaxPool" and \
            node.output[0] not in imp.graph_outputs:
        pool = g[users[0]]
        after = imp.consumers.get(pool.output[0], [])
        if len(after) == 1 and g[after[0]].op_type == "Neg" and \
                pool.output[0] not in imp.graph_outputs and not any(
                    o and imp.used(o) for o in pool.output[1:]):
            x = imp.dyn(node)
            args = _pool_common(imp, pool, x)
            imp.add(pool, "minpool", args, [x], output=g[after[0]].output[0])
            imp.skip |= {users[0], after[0]}
            return
    raise refuse(node, imp.opset, "negation is supported only around MaxPool (min pooling)")


HANDLERS: dict[str, Handler] = {
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "LpPool": _lppool,
    "Neg": _neg,
    "GlobalAveragePool": unary("globalavgpool"),
    "GlobalMaxPool": unary("globalmaxpool"),
}
