"""Elementwise activations and the channel softmax.

Defaults follow PyTorch: leaky_relu slope 0.01, hard_sigmoid = relu6(x + 3) / 6 (alpha 1/6,
beta 1/2; ONNX's HardSigmoid defaults to alpha 0.2 and the exporter writes ours explicitly),
gelu exact (erf) unless `approximate=tanh`.

ONNX mapping (checked against ONNX Runtime in tests/ops/test_ops_vs_onnxruntime.py): Relu,
LeakyRelu(alpha), relu6 = Clip(min=0, max=6), Sigmoid, HardSigmoid(alpha, beta written out: the
ONNX default alpha is 0.2), Tanh, swish = x * Sigmoid(x), HardSwish, Gelu (opset 20,
approximate "none" | "tanh"), Abs; softmax / log_softmax = Softmax / LogSoftmax (opset 13+,
a single axis) with axis = our axis + 1, since our axes exclude the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..kernels.backward import (
    prelu_input_grad_kernel,
    prelu_slope_grad_kernel,
    softmax_grad_kernel,
)
from ..kernels.common import Sizes
from ..kernels.elementwise import channel_prelu_kernel, softmax_kernel
from ..kernels.kernel_ir import (
    BinOp,
    Const,
    Expr,
    Select,
    VBin,
    VSplat,
    VUnary,
    VZero,
    call,
    cmp,
    div,
)
from ..types import TensorType
from . import (
    EPS32,
    EPS64,
    TRANSCENDENTAL,
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ParamSpec,
    ShapeError,
    as_choice,
    as_float,
    as_int,
    elementwise_layouts,
    get_op,
    no_macs,
    one_input,
    pointwise_bound,
    register,
    same_shape,
    show_value,
)
from .lowering import lower_binary_epilogue, lower_elementwise, operand_arrays

_erf = np.frompyfunc(math.erf, 1, 1)


def _f64(fn: Callable[[np.ndarray, dict[str, Any]], np.ndarray]):
    return one_input(lambda x, a: fn(np.asarray(x, np.float64), a))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Two branches so that neither overflows: exp of a non-positive number only.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _gelu(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    if a["approximate"] == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _hard_sigmoid(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    return np.clip(a["alpha"] * x + a["beta"], 0.0, 1.0)


def _floats(*names: str):
    def canon(attrs, in_types):
        return {n: as_float(attrs[n], n) for n in names}
    return canon


# -- epilogue rules: each activation as a kernel-IR expression of its input ``x`` (a variable:
# it may appear twice), applied at the store of whichever kernel produces ``x``.
ONE, ZERO = Const(1.0), Const(0.0)


def _fmax(a: Expr, b: Expr) -> Expr:
    return BinOp("max", a, b)


def _fmin(a: Expr, b: Expr) -> Expr:
    return BinOp("min", a, b)


def _gelu_expr(x: Expr, a: dict[str, Any]) -> Expr:
    if a.get("approximate", "none") == "tanh":
        inner = Const(math.sqrt(2.0 / math.pi)) * (x + Const(0.044715) * x * x * x)
        return Const(0.5) * x * (ONE + call("tanh", inner))
    return Const(0.5) * x * (ONE + call("erf", x * Const(1.0 / math.sqrt(2.0))))


def _lower_unary(ctx, node):
    """A standalone activation: the element-wise kernel with the op as its first epilogue."""

    return lower_elementwise(ctx, node, "copy")


def _vmax(a: Expr, b: Expr) -> Expr:
    return VBin("max", a, b)


def _vmin(a: Expr, b: Expr) -> Expr:
    return VBin("min", a, b)


def _vleaky(x: Expr, a: dict[str, Any]) -> Expr | None:
    # max(x, alpha * x) is x for x >= 0 and alpha * x below only when 0 <= alpha <= 1
    alpha = float(a["alpha"])
    return _vmax(x, VBin("mul", x, VSplat(Const(alpha)))) if 0.0 <= alpha <= 1.0 else None


def _vsigmoid_of(x: Expr, numerator: Expr) -> Expr:
    """``numerator / (1 + e ** -x)`` on a vector (the scalar rule's formula)."""
    one = VSplat(Const(1.0))
    e = VUnary("exp", VBin("mul", x, VSplat(Const(-1.0))))
    return VBin("div", numerator, VBin("add", one, e))


VECTOR = {
    "relu": lambda x, a: _vmax(x, VZero()),
    "sigmoid": lambda x, a: _vsigmoid_of(x, VSplat(Const(1.0))),
    "swish": lambda x, a: _vsigmoid_of(x, x),
    "tanh": lambda x, a: VUnary("tanh", x),
    "relu6": lambda x, a: _vmin(_vmax(x, VZero()), VSplat(Const(6.0))),
    "leaky_relu": _vleaky,
    "hard_sigmoid": lambda x, a: _vmin(_vmax(VBin("add", VBin("mul", x, VSplat(Const(float(
        a["alpha"])))), VSplat(Const(float(a["beta"])))), VZero()), VSplat(Const(1.0))),
    "hard_swish": lambda x, a: VBin("mul", VBin("mul", x, _vmin(_vmax(VBin(
        "add", x, VSplat(Const(3.0))), VZero()), VSplat(Const(6.0)))), VSplat(Const(1.0 / 6.0))),
}


# -- error bounds (``pointwise_bound``): the Lipschitz constant max |f'| carries an error of
# the input through f (relu 1; sigmoid 1/4; swish 1.0998 at x = 2.4; gelu 1.129 at x = 2.4;
# hard_swish 3/2 at x = 3), ``rel`` counts f's roundings (in EPS32: a constant such as alpha
# rounded to float32 counts too) and transcendental calls (TRANSCENDENTAL each) relative to
# |f(x)|; gelu's 0.5 x (1 + erf(x / sqrt 2)) cancels for
# x << 0, so erf's error counts relative to |x| (``rel_in``).
T = TRANSCENDENTAL
BOUNDS = {
    "relu": pointwise_bound(),
    "leaky_relu": pointwise_bound(lambda a: max(1.0, abs(a["alpha"])), rel=2.0),
    "relu6": pointwise_bound(),
    "sigmoid": pointwise_bound(0.25, rel=T + 2),
    # alpha, its product, beta (|beta| <= |y| + |alpha x| unclipped) and the sum
    "hard_sigmoid": pointwise_bound(lambda a: abs(a["alpha"]), rel=2.0,
                                    rel_in=lambda a: 3 * abs(a["alpha"])),
    "tanh": pointwise_bound(1.0, rel=T),
    "swish": pointwise_bound(1.1, rel=T + 2),
    "hard_swish": pointwise_bound(1.5, rel=4.0),
    "gelu": pointwise_bound(1.13, rel=4.0, rel_in=T + 4),
    "abs": pointwise_bound(),
    # alpha * expm1(x) below 0 (x itself above): expm1's call, alpha and the product; selu's
    # gamma and its product; softplus: exp, log1p and the sum; mish: softplus, then tanh
    # (whose relative error never grows a relative error of its argument) and the product.
    # Lipschitz: elu max(1, alpha), selu gamma max(1, alpha), softplus 1, mish 1.09 (x ~ 1.2).
    "elu": pointwise_bound(lambda a: max(1.0, abs(a["alpha"])), rel=T + 2),
    "selu": pointwise_bound(lambda a: abs(a["gamma"]) * max(1.0, abs(a["alpha"])), rel=T + 4),
    "softplus": pointwise_bound(1.0, rel=2 * T + 1),
    "mish": pointwise_bound(1.1, rel=3 * T + 2),
}


def _unary(name: str, fn, expr, doc: str, signature=(), canonicalize=None, aliases=()):
    vec = VECTOR.get(name)
    register(OpDef(name=name, family="activation", signature=signature,
                   canonicalize=canonicalize, infer=same_shape, reference=_f64(fn),
                   macs=no_macs, doc=doc, aliases=aliases, new_activations=False,
                   error_bound=BOUNDS[name],
                   epilogue=lambda x, a, operand: expr(x, a), lower=_lower_unary,
                   vector_epilogue=(lambda x, a, operand: vec(x, a)) if vec else None,
                   takes_epilogue="any", inplace=True, layout_rule=elementwise_layouts))


_unary("relu", lambda x, a: np.maximum(x, 0.0), lambda x, a: _fmax(x, ZERO), "max(x, 0)")
_unary("leaky_relu", lambda x, a: np.where(x >= 0, x, a["alpha"] * x),
       lambda x, a: Select(cmp(">=", x, ZERO), x, x * Const(float(a["alpha"]))),
       "x if x >= 0 else alpha * x", signature=(Attr("alpha", "float", 0.01),),
       canonicalize=_floats("alpha"), aliases=("leakyrelu",))
_unary("relu6", lambda x, a: np.clip(x, 0.0, 6.0), lambda x, a: _fmin(_fmax(x, ZERO), Const(6.0)),
       "min(max(x, 0), 6) (MobileNet)")
_unary("sigmoid", lambda x, a: _sigmoid(x), lambda x, a: div(ONE, ONE + call("exp", ZERO - x)),
       "1 / (1 + exp(-x))")
_unary("hard_sigmoid", _hard_sigmoid,
       lambda x, a: _fmin(_fmax(x * Const(float(a["alpha"])) + Const(float(a["beta"])), ZERO),
                          ONE),
       "clip(alpha * x + beta, 0, 1)",
       signature=(Attr("alpha", "float", 1.0 / 6.0), Attr("beta", "float", 0.5)),
       canonicalize=_floats("alpha", "beta"), aliases=("hardsigmoid",))
_unary("tanh", lambda x, a: np.tanh(x), lambda x, a: call("tanh", x), "hyperbolic tangent")
_unary("swish", lambda x, a: x * _sigmoid(x), lambda x, a: div(x, ONE + call("exp", ZERO - x)),
       "x * sigmoid(x) (SiLU, EfficientNet)", aliases=("silu",))
_unary("hard_swish", lambda x, a: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
       lambda x, a: x * _fmin(_fmax(x + Const(3.0), ZERO), Const(6.0)) * Const(1.0 / 6.0),
       "x * relu6(x + 3) / 6 (MobileNetV3)", aliases=("hardswish",))
_unary("gelu", _gelu, _gelu_expr, "x * Phi(x), exact or tanh-approximated",
       signature=(Attr("approximate", "choice", "none", choices=("none", "tanh")),),
       canonicalize=lambda a, t: {"approximate": as_choice(a["approximate"], "approximate",
                                                           ("none", "tanh"))})
_unary("abs", lambda x, a: np.abs(x), lambda x, a: call("abs", x), "|x|")


# -- exponential-linear and smooth activations ------------------------------------------------
# ONNX: Elu(alpha), Selu(alpha, gamma), Softplus, Mish (opset 18). x <= 0 takes the exponential
# branch in all of them (the two branches agree at 0). expm1 keeps alpha * (e^x - 1) accurate
# near 0; the fused rule evaluates only the branch it takes (``Select`` is lazy), so a large x
# never reaches exp.

#: ONNX's Selu defaults (float32 values of the self-normalizing constants of Klambauer et al.).
SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _elu_expr(x: Expr, alpha: float) -> Expr:
    return Select(cmp(">", x, ZERO), x, Const(alpha) * call("expm1", x))


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) as max(x, 0) + log1p(e^-|x|): exact algebra, and exp never overflows.

    ONNX Runtime computes this form; PyTorch returns x itself above its threshold (x > 20), which
    differs from it by log1p(e^-x) < 2.1e-9 * x, below float32's resolution there."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _softplus_expr(x: Expr) -> Expr:
    return _fmax(x, ZERO) + call("log1p", call("exp", ZERO - call("abs", x)))


_unary("elu", lambda x, a: _elu(x, a["alpha"]), lambda x, a: _elu_expr(x, float(a["alpha"])),
       "x if x > 0 else alpha * (exp(x) - 1)", signature=(Attr("alpha", "float", 1.0),),
       canonicalize=_floats("alpha"))
_unary("selu", lambda x, a: a["gamma"] * _elu(x, a["alpha"]),
       lambda x, a: Const(float(a["gamma"])) * _elu_expr(x, float(a["alpha"])),
       "gamma * (x if x > 0 else alpha * (exp(x) - 1)) (self-normalizing)",
       signature=(Attr("alpha", "float", SELU_ALPHA), Attr("gamma", "float", SELU_GAMMA)),
       canonicalize=_floats("alpha", "gamma"))
_unary("softplus", lambda x, a: _softplus(x), lambda x, a: _softplus_expr(x),
       "log(1 + exp(x)), computed without overflow")
_unary("mish", lambda x, a: x * np.tanh(_softplus(x)),
       lambda x, a: x * call("tanh", _softplus_expr(x)), "x * tanh(softplus(x)) (YOLOv4)")


# -- prelu: a learned slope per channel ----------------------------------------------------------
# ONNX PRelu(x, slope) broadcasts the slope unidirectionally, right-aligned: per channel of an
# N x C x H x W tensor is a slope of shape [C, 1, 1]; [1] is one slope for all. The parameter is
# stored as PyTorch's PReLU.weight, of shape [num_parameters] (the exporter reshapes it).
# PyTorch's default is num_parameters=1; here it is one per channel, as CNNs use it.
#
# Not fused into the producing kernel's store: the slope is a parameter, and fused epilogue
# operands are activation buffers (a residual, a per-sample gate), not packed constants. Its
# own kernel takes the following activations as its epilogue, as batch norm's does.


def _prelu_canonicalize(attrs, in_types):
    x = in_types[0]
    if x.rank not in (1, 3):
        raise ShapeError(f"prelu needs a channels x height x width or a feature input, got {x}")
    n = attrs["num_parameters"]
    if isinstance(n, str) and n != "channels":
        raise AttrError(f"num_parameters must be 'channels' or 1, got {show_value(n)}",
                        "num_parameters")
    n = x.channels if n == "channels" else as_int(n, "num_parameters", 1)
    if n not in (1, x.channels):
        raise AttrError(f"num_parameters must be 1 (one slope) or the {x.channels} channels "
                        f"(one slope each), got {n}", "num_parameters")
    return {"num_parameters": n}


def _prelu_params(attrs, in_types):
    # PyTorch initializes every slope to 0.25 (init kind "prelu" in runtime/weights.py).
    return [ParamSpec("weight", (attrs["num_parameters"],), "prelu")]


def _prelu_infer(in_types, attrs):
    x = in_types[0]
    for slope in in_types[1:]:  # (callers that check attributes pass the input alone)
        if slope.shape != (attrs["num_parameters"],):
            raise ShapeError(f"prelu: slope of shape {slope} for num_parameters="
                             f"{attrs['num_parameters']} on {x}")
    return x


def _prelu_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    slope = np.asarray(inputs[1], np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, slope * x)


def _lower_prelu(ctx, node):
    """One kernel: ``x if x >= 0 else c_slope[c] * x``, the slope broadcast to every channel
    (so one kernel serves both forms), the following activations fused."""

    (slope,) = ctx.param_inputs
    c = ctx.in_shapes[0][0]
    sz = Sizes()
    k = channel_prelu_kernel(ctx.kname, ctx.in_shapes[0], ctx.epilogue, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values, pack=lambda values: {
        "c_slope": np.broadcast_to(np.asarray(values[slope], np.float64).reshape(-1), (c,))})


register(OpDef(name="prelu", family="activation",
               signature=(Attr("num_parameters", "int", "channels"),),
               canonicalize=_prelu_canonicalize, params=_prelu_params, infer=_prelu_infer,
               reference=_prelu_reference, macs=no_macs, new_activations=False,
               lower=_lower_prelu, takes_epilogue="unary", inplace=True,
               # never an epilogue (no incoming error): the slope rounded to float32, the product
               error_bound=lambda ctx: 2 * EPS32 * np.abs(ctx.out),
               doc="x if x >= 0 else slope * x, a learned slope per channel (or one for all)"))


# -- softmax over channels --------------------------------------------------------------------

def _softmax_canonicalize(attrs, in_types):
    axis, rank = attrs["axis"], in_types[0].rank
    if axis == "channels":
        return {"axis": 0}
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or \
            not 0 <= axis < rank:
        raise AttrError(f"axis must be 'channels' or 0..{rank - 1} (batch excluded), got "
                        f"{show_value(axis)}", "axis")
    return {"axis": int(axis)}


def _log_softmax(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    axis = a["axis"] + 1
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _softmax_bound(log: bool):
    """The kernel (``softmax_kernel``) rounds ``z = x - max`` to float32 (an error of
    EPS32 |z|) and does the rest in float64: each exp(z) is off by a relative EPS32 |z|, so
    their sum by the softmax-weighted mean of those; the result is rounded once to float32.
    Softmax: ``|y| (EPS32 (|z| + mean |z| + 1) + 4 L EPS64)``; log-softmax adds the errors
    (``z - log sum``, absolute): ``EPS32 (|z| + mean |z| + |y|) + 4 L EPS64 (1 + |log sum|)``
    (L the length of the axis)."""

    def rule(ctx: BoundCtx) -> np.ndarray:
        x, y = ctx.inputs[0], ctx.out
        axis = ctx.attrs["axis"] + 1
        shifted = x - x.max(axis=axis, keepdims=True)
        z = np.abs(shifted)
        mean_z = ((np.exp(y) if log else y) * z).sum(axis=axis, keepdims=True)
        length = x.shape[axis]
        if log:
            log_sum = np.abs(shifted - y)
            return EPS32 * (z + mean_z + np.abs(y)) + 4 * length * EPS64 * (1 + log_sum)
        return np.abs(y) * (EPS32 * (z + mean_z + 1) + 4 * length * EPS64)
    return rule


def _lower_softmax(ctx, node):

    sz = Sizes()
    k = softmax_kernel(ctx.kname, ctx.in_shapes[0], node.attrs["axis"],
                       node.op == "log_softmax", ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


for _name, _fn, _doc in (
    ("softmax", lambda x, a: np.exp(_log_softmax(x, a)),
     "softmax over channels (per pixel for segmentation maps)"),
    ("log_softmax", _log_softmax, "log of the channel softmax, computed stably"),
):
    register(OpDef(name=_name, family="activation",
                   signature=(Attr("axis", "int", "channels"),),
                   canonicalize=_softmax_canonicalize, infer=same_shape,
                   reference=_f64(_fn), macs=no_macs, doc=_doc, new_activations=False,
                   error_bound=_softmax_bound(_name == "log_softmax"),
                   lower=lambda ctx, node: _lower_softmax(ctx, node),
                   aliases=("logsoftmax",) if _name == "log_softmax" else ()))


# -- gradients ----------------------------------------------------------------------------------
# An activation's gradient is one element-wise op of its input x and the output gradient dy:
#     activation_grad(x, dy; of=f, f's attributes) = f'(x) * dy
# lowered as the element-wise kernel with f' * dy as its epilogue (``lower_binary_epilogue``).
# Where f is not differentiable, PyTorch's choice: relu'(0) = 0, leaky_relu'(0) = alpha,
# relu6' = 0 at 0 and 6, abs'(0) = 0, hard_sigmoid' = 0 at the kinks, hard_swish'(3) = 1.5.

def _sigmoid_expr(x: Expr) -> Expr:
    return div(ONE, ONE + call("exp", ZERO - x))


def _softplus_grad(x: np.ndarray) -> np.ndarray:
    return _sigmoid(x)


def _mish_grad(x: np.ndarray) -> np.ndarray:
    t = np.tanh(_softplus(x))
    return t + x * (1.0 - t * t) * _sigmoid(x)


def _gelu_grad(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    if a["approximate"] == "tanh":
        k = math.sqrt(2.0 / math.pi)
        t = np.tanh(k * (x + 0.044715 * x ** 3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
    return cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _gelu_grad_expr(x: Expr, a: dict[str, Any]) -> Expr:
    if a.get("approximate", "none") == "tanh":
        k = math.sqrt(2.0 / math.pi)
        t = call("tanh", Const(k) * (x + Const(0.044715) * x * x * x))
        return Const(0.5) * (ONE + t) + Const(0.5) * x * (ONE - t * t) * Const(k) * (
            ONE + Const(3 * 0.044715) * x * x)
    cdf = Const(0.5) * (ONE + call("erf", x * Const(1.0 / math.sqrt(2.0))))
    return cdf + x * call("exp", Const(-0.5) * x * x) * Const(1.0 / math.sqrt(2.0 * math.pi))


def _step(condition, inside: Expr, outside: Expr = ZERO) -> Expr:
    return Select(condition, inside, outside)


def _elu_grad(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


#: name -> (f'(x) in float64, f'(x) as a kernel-IR expression of the variable x)
DERIVATIVES: dict[str, tuple[Callable[..., np.ndarray], Callable[..., Expr]]] = {
    "relu": (lambda x, a: (x > 0).astype(np.float64),
             lambda x, a: _step(cmp(">", x, ZERO), ONE)),
    "leaky_relu": (lambda x, a: np.where(x > 0, 1.0, a["alpha"]),
                   lambda x, a: _step(cmp(">", x, ZERO), ONE, Const(float(a["alpha"])))),
    "relu6": (lambda x, a: ((x > 0) & (x < 6)).astype(np.float64),
              lambda x, a: _step(cmp(">", x, ZERO), _step(cmp("<", x, Const(6.0)), ONE))),
    "sigmoid": (lambda x, a: _sigmoid(x) * (1.0 - _sigmoid(x)),
                lambda x, a: _sigmoid_expr(x) * (ONE - _sigmoid_expr(x))),
    "hard_sigmoid": (
        lambda x, a: np.where((a["alpha"] * x + a["beta"] > 0) &
                              (a["alpha"] * x + a["beta"] < 1), a["alpha"], 0.0),
        lambda x, a: _step(cmp(">", x * Const(float(a["alpha"])) + Const(float(a["beta"])),
                               ZERO),
                           _step(cmp("<", x * Const(float(a["alpha"])) +
                                     Const(float(a["beta"])), ONE), Const(float(a["alpha"]))))),
    "tanh": (lambda x, a: 1.0 - np.tanh(x) ** 2,
             lambda x, a: ONE - call("tanh", x) * call("tanh", x)),
    "swish": (lambda x, a: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x))),
              lambda x, a: _sigmoid_expr(x) * (ONE + x * (ONE - _sigmoid_expr(x)))),
    "hard_swish": (lambda x, a: np.where(x < -3, 0.0, np.where(x <= 3, (2 * x + 3) / 6, 1.0)),
                   lambda x, a: _step(cmp("<", x, Const(-3.0)), ZERO, _step(
                       cmp("<=", x, Const(3.0)), (x * Const(2.0) + Const(3.0)) *
                       Const(1.0 / 6.0), ONE))),
    "gelu": (_gelu_grad, _gelu_grad_expr),
    "abs": (lambda x, a: np.sign(x),
            lambda x, a: _step(cmp(">", x, ZERO), ONE, _step(cmp("<", x, ZERO), Const(-1.0)))),
    "elu": (lambda x, a: _elu_grad(x, a["alpha"]),
            lambda x, a: _step(cmp(">", x, ZERO), ONE,
                               Const(float(a["alpha"])) * call("exp", x))),
    "selu": (lambda x, a: a["gamma"] * _elu_grad(x, a["alpha"]),
             lambda x, a: Const(float(a["gamma"])) * _step(
                 cmp(">", x, ZERO), ONE, Const(float(a["alpha"])) * call("exp", x))),
    "softplus": (lambda x, a: _softplus_grad(x), lambda x, a: _sigmoid_expr(x)),
    "mish": (lambda x, a: _mish_grad(x),
             lambda x, a: call("tanh", _softplus_expr(x)) + x * (
                 ONE - call("tanh", _softplus_expr(x)) * call("tanh", _softplus_expr(x))) *
             _sigmoid_expr(x)),
}


def _of(attrs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The activation an ``activation_grad`` node differentiates, and its attributes."""
    return attrs["of"], {k: v for k, v in attrs.items() if k != "of"}


def _activation_grad_reference(inputs, attrs):
    of, a = _of(attrs)
    x, dy = (np.asarray(v, np.float64) for v in inputs)
    return DERIVATIVES[of][0](x, a) * dy


def _activation_grad_infer(in_types, attrs):
    if in_types[0].shape != in_types[1].shape:
        raise ShapeError(f"activation_grad: input {in_types[0]} and gradient {in_types[1]} "
                         "differ")
    return in_types[0]


def _activation_grad_bound(ctx: BoundCtx) -> np.ndarray:
    """f'(x) in float32, times dy. The derivatives cancel: tanh's 1 - t^2, sigmoid's s (1 - s),
    swish's and mish's x (1 - ...) lose digits where the subtracted term nears 1, so their
    float32 error is absolute, of the size of EPS32 (1 + |x|) per transcendental call and
    rounding (at most three calls and eight roundings), not relative to f'(x); an error already
    in x (a fused producer's) moves f'(x) by at most about (1 + |f'|) times it."""
    x, dy = ctx.inputs[0], np.abs(ctx.inputs[1])
    slope = np.abs(DERIVATIVES[_of(ctx.attrs)[0]][0](x, _of(ctx.attrs)[1]))
    return dy * (ctx.err_in * (1 + slope) + (3 * TRANSCENDENTAL + 8) * EPS32 *
                 (1 + np.abs(x) + slope)) + 2 * EPS32 * np.abs(ctx.out)


#: Activations whose derivative is the same at their output as at their input (f'(f(x)) =
#: f'(x): relu' is 1 exactly where relu(x) > 0, relu6' where 0 < relu6(x) < 6): their gradient
#: reads the output, which the next layer's weight gradient keeps anyway, so the input (a batch
#: norm's output, say) is free once the activation has run.
SAME_SLOPE_AT_OUTPUT = ("relu", "relu6")


def _activation_gradient(d):
    """dx = f'(x) * dy, f'(x) read as f'(f(x)) where that is the same
    (:data:`SAME_SLOPE_AT_OUTPUT`)."""
    at = d.node.id if d.node.op in SAME_SLOPE_AT_OUTPUT else d.input(0)
    return [d.add("activation_grad", [at, d.dy], {"of": d.node.op, **d.attrs})]


for _name in DERIVATIVES:
    get_op(_name).gradient = _activation_gradient

register(OpDef(
    name="activation_grad", family="activation", signature=(Attr("of", "any"),),
    infer=_activation_grad_infer, reference=_activation_grad_reference, macs=no_macs,
    arity=2, pass_made=True, backward=True, new_activations=False,
    epilogue=lambda x, a, dy: DERIVATIVES[a["of"]][1](x, _of(a)[1]) * dy,
    lower=lower_binary_epilogue,
    error_bound=_activation_grad_bound,
    doc="f'(x) * dy: the input gradient of activation `of` (autodiff)"))


# -- softmax and log-softmax: the Jacobian-vector products over the axis, from the output y
#     softmax:      dx = y * (dy - sum(dy * y))        log_softmax:  dx = dy - exp(y) * sum(dy)

def _softmax_grad_reference(inputs, attrs):
    y, dy = (np.asarray(v, np.float64) for v in inputs)
    axis = attrs["axis"] + 1
    if attrs["log"]:
        return dy - np.exp(y) * dy.sum(axis=axis, keepdims=True)
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def _softmax_gradient(d):
    return [d.add("softmax_grad", [d.node.id, d.dy],
                  {"axis": d.attrs["axis"], "log": d.node.op == "log_softmax"})]


get_op("softmax").gradient = _softmax_gradient
get_op("log_softmax").gradient = _softmax_gradient


def _lower_softmax_grad(ctx, node):
    sz = Sizes()
    k = softmax_grad_kernel(ctx.kname, ctx.in_shapes[0], node.attrs["axis"], node.attrs["log"],
                            ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _softmax_grad_bound(ctx: BoundCtx) -> np.ndarray:
    """A sum over the axis (L products) per element, then one product and one difference."""
    y, dy = np.abs(ctx.inputs[0]), np.abs(ctx.inputs[1])
    axis = ctx.attrs["axis"] + 1
    length = y.shape[axis]
    scale = np.exp(ctx.inputs[0]) if ctx.attrs["log"] else y
    total = (dy * (1 if ctx.attrs["log"] else y)).sum(axis=axis, keepdims=True)
    return (length + 4) * EPS32 * (np.abs(scale) * total + dy * (1 if ctx.attrs["log"] else y)) \
        + TRANSCENDENTAL * EPS32 * np.abs(scale) * total


register(OpDef(
    name="softmax_grad", family="activation",
    signature=(Attr("axis", "int"), Attr("log", "bool")),
    infer=_activation_grad_infer, reference=_softmax_grad_reference, macs=no_macs, arity=2,
    pass_made=True, backward=True, new_activations=False, error_bound=_softmax_grad_bound,
    lower=_lower_softmax_grad,
    doc="the input gradient of softmax (log: of log_softmax) from its output y and dy"))


# -- prelu: dx = dy where x > 0, else slope dy (PyTorch's choice at 0: the slope's side);
#    dslope = the sum of dy x where x <= 0 over the batch and the pixels (and the channels, for
#    one slope shared by all)

def _prelu_gradient(d):
    x, slope = d.input(0), d.input(1)
    return [d.add("prelu_input_grad", [x, slope, d.dy], what="input") if d.needs(0) else None,
            d.add("prelu_slope_grad", [x, d.dy], {"num_parameters": d.attrs["num_parameters"]},
                  what="slope") if d.needs(1) else None]


def _prelu_input_grad_reference(inputs, attrs):
    x, slope, dy = (np.asarray(v, np.float64) for v in inputs)
    return np.where(x > 0, dy, slope.reshape((1, -1) + (1,) * (x.ndim - 2)) * dy)


def _slope_sum(terms: np.ndarray, num_parameters: int) -> np.ndarray:
    per_channel = terms.reshape(terms.shape[0], terms.shape[1], -1).sum(axis=(0, 2))
    return per_channel if num_parameters > 1 else per_channel.sum(keepdims=True)


def _prelu_slope_grad_reference(inputs, attrs):
    x, dy = (np.asarray(v, np.float64) for v in inputs)
    return _slope_sum(np.where(x > 0, 0.0, x * dy), attrs["num_parameters"])


def _prelu_slope_grad_bound(ctx: BoundCtx) -> np.ndarray:
    """A float32 sum of the N x pixels (x channels) terms of each slope."""
    x, dy = ctx.inputs
    return (x.size // ctx.out.size + 2) * EPS32 * _slope_sum(
        np.where(x > 0, 0.0, np.abs(x * dy)), ctx.attrs["num_parameters"])


def _lower_prelu_grad(ctx, node):
    sz = Sizes()
    shape = ctx.graph.node(node.inputs[0]).type.shape
    if node.op == "prelu_slope_grad":
        k = prelu_slope_grad_kernel(ctx.kname, shape, node.attrs["num_parameters"], ctx.comment,
                                    sz)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)
    names, pack = operand_arrays(ctx)
    shared = ctx.graph.node(node.inputs[1]).type.shape == (1,)
    k = prelu_input_grad_kernel(ctx.kname, shape, shared, names, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values, pack=pack)


get_op("prelu").gradient = _prelu_gradient

register(OpDef(
    name="prelu_input_grad", family="activation", signature=(),
    infer=lambda ts, a: ts[0], reference=_prelu_input_grad_reference, macs=no_macs, arity=3,
    pass_made=True, backward=True, new_activations=False, lower=_lower_prelu_grad,
    error_bound=lambda ctx: 2 * EPS32 * np.abs(ctx.out),  # the slope rounded, one product
    doc="the input gradient of prelu: dy where x > 0, else slope dy"))
register(OpDef(
    name="prelu_slope_grad", family="activation", signature=(Attr("num_parameters", "int"),),
    infer=lambda ts, a: TensorType((a["num_parameters"],), batched=False),
    reference=_prelu_slope_grad_reference, macs=no_macs, arity=2, pass_made=True,
    backward=True, new_activations=False, lower=_lower_prelu_grad,
    error_bound=_prelu_slope_grad_bound,
    doc="the slope gradient of prelu: dy x where x <= 0, summed over the batch and the "
        "pixels (and the channels, for one slope)"))


# -- guided backpropagation and the deconvnet: an activation's backward pass changed ----------
# Seed 002, "Visualize activations" by a single backward pass from a chosen neuron:
#   guided backprop: "only let the gradients of the neurons with +ve activations and +ve
#       gradients pass": dx = relu'(x) * max(dy, 0)  (Springenberg et al. 2015);
#   deconvnet: "change the backward pass of ReLU: only let the gradients of the neurons with
#       +ve gradients pass": dx = max(dy, 0), whatever x was  (Zeiler and Fergus 2014).
# ``modified_backward`` computes activation ``of`` forward and takes one of these rules as
# its gradient; the explanations put it in place of each activation of the network
# (``compiler/passes/modify_backward.py``), so autodiff itself knows no modes. On the other
# monotone activations the rules read the same way: guided keeps f'(x) and zeroes the
# negative gradients, f'(x) * max(dy, 0); the deconvnet rectifies the gradient alone.

#: The activations whose backward pass the rules can change: non-decreasing ones, f' >= 0.
MONOTONE = ("relu", "leaky_relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "elu", "selu",
            "softplus")
BACKWARD_RULES = ("guided", "deconvnet")


def _inner(attrs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The activation a modified node computes, and its own attributes."""
    return attrs["of"], {k: v for k, v in attrs.items() if k not in ("of", "rule")}


def _modified_reference(inputs, attrs):
    of, a = _inner(attrs)
    return get_op(of).reference(inputs, a)


def _modified_epilogue(x: Expr, attrs: dict[str, Any], operand: Any) -> Expr:
    of, a = _inner(attrs)
    return get_op(of).epilogue(x, a, operand)


def _modified_bound(ctx: BoundCtx) -> np.ndarray:
    of, a = _inner(ctx.attrs)
    return get_op(of).error_bound(BoundCtx(ctx.inputs, a, ctx.out, ctx.err_in, ctx.terms,
                                           ctx.reference))


def _modified_gradient(d):
    return [d.add("modified_backward_grad", [d.input(0), d.dy], dict(d.attrs))]


def _modified_grad_reference(inputs, attrs):
    of, a = _inner(attrs)
    x, dy = (np.asarray(v, np.float64) for v in inputs)
    passed = np.maximum(dy, 0.0)
    return DERIVATIVES[of][0](x, a) * passed if attrs["rule"] == "guided" else passed


def _modified_grad_epilogue(x: Expr, attrs: dict[str, Any], dy: Expr) -> Expr:
    of, a = _inner(attrs)
    passed = _fmax(dy, ZERO)
    return DERIVATIVES[of][1](x, a) * passed if attrs["rule"] == "guided" else passed


def _modified_grad_bound(ctx: BoundCtx) -> np.ndarray:
    """Guided: the activation gradient's bound with the rectified dy; the deconvnet's max is
    exact, and the store rounds nothing more."""
    of, a = _inner(ctx.attrs)
    if ctx.attrs["rule"] != "guided":
        return 2 * EPS32 * np.abs(ctx.out)
    x, dy = ctx.inputs
    return _activation_grad_bound(BoundCtx([x, np.maximum(dy, 0.0)], {"of": of, **a}, ctx.out,
                                           ctx.err_in, ctx.terms, ctx.reference))


register(OpDef(
    name="modified_backward", family="activation",
    signature=(Attr("of", "choice", choices=MONOTONE),
               Attr("rule", "choice", choices=BACKWARD_RULES)),
    infer=same_shape, reference=_modified_reference, macs=no_macs, new_activations=False,
    pass_made=True, error_bound=_modified_bound, epilogue=_modified_epilogue,
    lower=_lower_unary, takes_epilogue="any", inplace=True, layout_rule=elementwise_layouts,
    gradient=_modified_gradient,
    doc="activation `of` forward, the guided-backprop or deconvnet rule backward "
        "(explanations)"))
register(OpDef(
    name="modified_backward_grad", family="activation",
    signature=(Attr("of", "choice", choices=MONOTONE),
               Attr("rule", "choice", choices=BACKWARD_RULES)),
    infer=_activation_grad_infer, reference=_modified_grad_reference, macs=no_macs, arity=2,
    pass_made=True, backward=True, new_activations=False, epilogue=_modified_grad_epilogue,
    lower=lower_binary_epilogue, error_bound=_modified_grad_bound,
    doc="guided: f'(x) max(dy, 0); deconvnet: max(dy, 0): the modified input gradient of "
        "activation `of`"))
