"""Activations: the one-input ones (Relu, Sigmoid, Tanh, ...), Elu and Selu, PRelu, Gelu,
Clip as relu or relu6, Softmax and LogSoftmax."""

from __future__ import annotations

from typing import Any

import numpy as np

from ....compiler.ops import get_op
from ..importer import Handler, Importer, f32_literal, node_attrs, refuse


def unary(op: str, **fixed: Any) -> Handler:
    """The handler of a one-input ONNX operator that is the cnnc layer `op`; `fixed` gives its
    attributes, each a value or a function of the node's ONNX attributes."""

    def handle(imp: Importer, node: Any, i: int) -> None:
        a = node_attrs(node)
        args = {k: (fn(a) if callable(fn) else fn) for k, fn in fixed.items()}
        imp.add(node, op, args, [imp.dyn(node)])
    return handle


def _elu(imp: Importer, node: Any, i: int) -> None:
    # Attributes are float32 in ONNX: one equal to cnnc's default (in float32) is left out, so
    # an exported model comes back as `selu`, not `selu(alpha=1.6732632, ...)`.
    op = node.op_type.lower()
    a = node_attrs(node)
    args = {}
    for attr in get_op(op).signature:
        if attr.name in a and np.float32(a[attr.name]) != np.float32(attr.default):
            args[attr.name] = f32_literal(a[attr.name])
    imp.add(node, op, args, [imp.dyn(node)])


def _prelu(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    slope = imp.const(node, 1)
    shape = imp.shapes[x]
    # ONNX broadcasts the slope unidirectionally, right-aligned against N x C x ...: it is per
    # channel only as [C, 1, 1] (or [C] for N x C), and one for all when it has one element.
    # Before opset 7 (PRelu-6 and older) a 1-D slope of C values was one per channel, and the
    # version converter keeps it as it is.
    full = (1,) * (len(shape) + 1 - slope.ndim) + tuple(slope.shape)
    if slope.size == 1 and slope.ndim <= len(shape) + 1:
        args: dict[str, Any] = {} if shape[0] == 1 else {"num_parameters": 1}
    elif len(full) == len(shape) + 1 and full[1] == shape[0] and \
            all(d == 1 for k, d in enumerate(full) if k != 1):
        args = {}
    elif imp.declared_opset < 7 and slope.shape == (shape[0],):
        args = {}
    else:
        dims = "[C, 1, 1]" if len(shape) == 3 else "[C]"
        raise refuse(node, imp.opset, f"slope of shape {list(slope.shape)} against an input "
                     f"of per-sample shape {list(shape)}: ONNX broadcasts it along axes other "
                     f"than the channels; cnnc's prelu takes one slope per channel ({dims}) "
                     "or one for all ([1])")
    imp.add(node, "prelu", args, [x], {"weight": slope.reshape(-1)})


def _gelu(imp: Importer, node: Any, i: int) -> None:
    approximate = node_attrs(node).get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise refuse(node, imp.opset, f"approximate={approximate!r} (none or tanh)")
    imp.add(node, "gelu", {} if approximate == "none" else {"approximate": "tanh"},
            [imp.dyn(node)])


def _clip(imp: Importer, node: Any, i: int) -> None:
    a = node_attrs(node)
    if imp.opset < 11:
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    else:
        lo_c, hi_c = imp.opt_const(node, 1), imp.opt_const(node, 2)
        for c in (lo_c, hi_c):
            if c is not None and c.size != 1:
                raise refuse(node, imp.opset, f"min and max must be scalars, got shape "
                             f"{list(c.shape)}")
        lo = -np.inf if lo_c is None else float(lo_c.reshape(-1)[0])
        hi = np.inf if hi_c is None else float(hi_c.reshape(-1)[0])
    if lo == 0 and hi == 6:
        imp.add(node, "relu6", {}, [imp.dyn(node)])
    elif lo == 0 and hi == np.inf:
        imp.add(node, "relu", {}, [imp.dyn(node)])
    else:
        raise refuse(node, imp.opset, f"Clip to [{lo}, {hi}] has no cnnc layer; only "
                     "[0, 6] (relu6) and [0, inf) (relu)")


def _softmax(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    shape = imp.shapes[x]
    rank = len(shape) + 1
    axis = int(node_attrs(node).get("axis", 1 if imp.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if axis < 1 or axis >= rank:
        raise refuse(node, imp.opset, f"axis {axis} is the batch or out of range")
    if imp.opset < 13 and any(d != 1 for d in shape[axis:]):
        # Before opset 13 the op normalizes over all axes from `axis` on.
        raise refuse(node, imp.opset, f"normalizing over axes {axis}.. of "
                     f"{'x'.join(map(str, shape))} together is not supported")
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    imp.add(node, op, {} if axis == 1 else {"axis": axis - 1}, [x])


HANDLERS: dict[str, Handler] = {
    "Relu": unary("relu"),
    "LeakyRelu": unary("leaky_relu", alpha=lambda a: f32_literal(a.get("alpha", 0.01))),
    "Sigmoid": unary("sigmoid"),
    "HardSigmoid": unary("hard_sigmoid", alpha=lambda a: f32_literal(a.get("alpha", 0.2)),
                         beta=lambda a: f32_literal(a.get("beta", 0.5))),
    "HardSwish": unary("hard_swish"),
    "Tanh": unary("tanh"),
    "Abs": unary("abs"),
    "Softplus": unary("softplus"),
    "Mish": unary("mish"),
    "Elu": _elu,
    "Selu": _elu,
    "PRelu": _prelu,
    "Gelu": _gelu,
    "Clip": _clip,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
}
