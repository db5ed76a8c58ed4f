"""Normalization: BatchNormalization (inference), InstanceNormalization, GroupNormalization,
LRN."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..importer import Handler, Importer, f32_literal, node_attrs, refuse


def _batchnorm(imp: Importer, node: Any, i: int) -> None:
    a = node_attrs(node)
    if a.get("training_mode", 0):
        raise refuse(node, imp.opset, "training mode is not supported (inference only)")
    imp.only_first_output(node)
    x = imp.dyn(node)
    scale, bias, mean, var = (imp.const(node, k) for k in range(1, 5))
    imp.add(node, "batchnorm", {"eps": f32_literal(a.get("epsilon", 1e-5))}, [x],
            {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var})


def _instance_norm(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    eps = f32_literal(node_attrs(node).get("epsilon", 1e-5))
    imp.add(node, "instance_norm", {"eps": eps}, [x],
            {"weight": imp.const(node, 1), "bias": imp.const(node, 2)})


def _group_norm(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    a = node_attrs(node)
    g, c = int(a["num_groups"]), imp.shapes[x][0]
    scale, bias = imp.const(node, 1), imp.const(node, 2)
    if imp.opset < 21 and scale.shape == (g,) and g != c:
        # GroupNormalization-18 scales per group; cnnc (and opset 21) per channel.
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    imp.add(node, "groupnorm", {"groups": g, "eps": f32_literal(a.get("epsilon", 1e-5))},
            [x], {"weight": scale, "bias": bias})


def _lrn(imp: Importer, node: Any, i: int) -> None:
    a = node_attrs(node)
    args = {"size": int(a["size"]), "alpha": f32_literal(a.get("alpha", 1e-4)),
            "beta": f32_literal(a.get("beta", 0.75)), "k": f32_literal(a.get("bias", 1.0))}
    imp.add(node, "lrn", args, [imp.dyn(node)])


HANDLERS: dict[str, Handler] = {
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instance_norm,
    "GroupNormalization": _group_norm,
    "LRN": _lrn,
}
