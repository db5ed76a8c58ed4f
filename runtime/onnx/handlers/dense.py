"""Fully connected layers: Gemm and MatMul with a constant weight."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..importer import Handler, Importer, need_rank, node_attrs, refuse
from .arithmetic import per_channel


def _gemm(imp: Importer, node: Any, i: int) -> None:
    a = node_attrs(node)
    x = imp.dyn(node)
    need_rank(imp, node, x, 1, "N x features")
    if a.get("transA", 0):
        raise refuse(node, imp.opset, "transA=1 is not supported")
    for key in ("alpha", "beta"):
        if not math.isfinite(float(a.get(key, 1.0))):
            raise refuse(node, imp.opset, f"{key} = {a[key]} is not finite")
    w = imp.const(node, 1)
    if w.ndim != 2:
        raise refuse(node, imp.opset, "the weight must be a 2-D constant")
    w = w if a.get("transB", 0) else w.T
    c = imp.opt_const(node, 2)
    with np.errstate(all="ignore"):  # (an overflow to inf is refused by `add`, named)
        w = w * np.float32(a.get("alpha", 1.0))
        weights = {"weight": w}
        if c is not None:
            bias = per_channel(imp, node, c, w.shape[0], 2)
            weights["bias"] = bias * np.float32(a.get("beta", 1.0))
    imp.add(node, "dense", {"out_features": int(w.shape[0]), "bias": c is not None}, [x],
            weights)


def _matmul(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    need_rank(imp, node, x, 1, "N x features")
    w = imp.const(node, 1)
    if w.ndim != 2:
        raise refuse(node, imp.opset, "the weight must be a 2-D constant")
    imp.add(node, "dense", {"out_features": int(w.shape[1]), "bias": False}, [x],
            {"weight": w.T})


HANDLERS: dict[str, Handler] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
}
