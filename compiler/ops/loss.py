"""Losses: the scalar a training step minimizes, averaged over the batch as PyTorch's defaults
do (``reduction="mean"``). Each takes the network's output and a ``labels`` input
(``compiler/autodiff.attach_loss``); ``extra["labels_type"]`` gives the labels' type for an
output type.

- ``cross_entropy``: softmax cross-entropy over the classes (axis 0) of logits ``[K]``, or per
  pixel of ``[K, H, W]`` (segmentation: averaged over every pixel of the batch, as PyTorch's
  ``CrossEntropyLoss`` averages over N x H x W); integer class labels held as floats
  (exact below 2^24). ``label_smoothing`` e mixes the one-hot target with the uniform one:
  q = (1 - e) onehot + e / K (PyTorch's definition). Computed stably from log-softmax.
  Gradient: (softmax(z) - q) / (N x pixels).
- ``mse``: mean of (y - t)^2 over every element of the batch (PyTorch's ``MSELoss``).
  Gradient: 2 (y - t) / (N x size).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.backward import (
    cross_entropy_grad_kernel,
    cross_entropy_kernel,
    mse_grad_kernel,
    mse_kernel,
)
from ..kernels.common import Sizes
from ..types import TensorType
from . import (
    EPS32,
    TRANSCENDENTAL,
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ShapeError,
    as_float,
    no_macs,
    register,
)


def _ce_labels_type(out: TensorType) -> TensorType:
    if out.rank not in (1, 3):
        raise ShapeError(f"cross_entropy needs class scores [K] or per-pixel scores "
                         f"[K, H, W], got {out}")
    return TensorType(out.shape[1:])


def _ce_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    e = as_float(attrs.get("label_smoothing", 0.0), "label_smoothing")
    if not 0.0 <= e <= 1.0:
        raise AttrError(f"label_smoothing must be in [0, 1], got {e}", "label_smoothing")
    return {"label_smoothing": e}


def _ce_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    z, labels = in_types
    want = _ce_labels_type(z)
    if labels.shape != want.shape:
        raise ShapeError(f"cross_entropy: labels of shape {labels} for scores {z}; expected "
                         f"{want}")
    if z.shape[0] < 2:
        raise ShapeError(f"cross_entropy needs at least two classes, got scores {z}")
    return TensorType((), batched=False)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _targets(z: np.ndarray, labels: np.ndarray, smoothing: float) -> np.ndarray:
    """q: the one-hot targets over axis 1, mixed with the uniform distribution."""
    k = z.shape[1]
    classes = np.arange(k).reshape((1, k) + (1,) * (z.ndim - 2))
    onehot = (np.asarray(labels)[:, None] == classes).astype(np.float64)
    return (1.0 - smoothing) * onehot + smoothing / k


def check_labels(labels: np.ndarray, classes: int) -> None:
    """Class labels must be integers in 0..classes-1 (a clear message otherwise)."""
    labels = np.asarray(labels)
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= classes)
    if np.any(bad):
        first = labels[bad].ravel()[0]
        raise ShapeError(f"labels must be class indices 0..{classes - 1}; got {first:g} "
                         f"({int(bad.sum())} of {labels.size} out of range)")


def _ce_reference(inputs, attrs):
    z, labels = (np.asarray(v, np.float64) for v in inputs)
    check_labels(labels, z.shape[1])
    q = _targets(z, labels, attrs["label_smoothing"])
    per_pixel = -(q * _log_softmax(z)).sum(axis=1)
    return np.asarray(per_pixel.mean())


def _ce_grad_reference(inputs, attrs):
    z, labels = (np.asarray(v, np.float64) for v in inputs)
    q = _targets(z, labels, attrs["label_smoothing"])
    count = z.shape[0] * int(np.prod(z.shape[2:]))
    return (np.exp(_log_softmax(z)) - q) / count


def _ce_gradient(d):
    if d.dy is not None:
        raise ShapeError("cross_entropy: cnnc differentiates a loss only as the root of the "
                         "training graph")
    return [d.add("cross_entropy_grad", list(d.node.inputs), dict(d.attrs)), None]


def _lower_ce(ctx, node):
    """The loss (one serial loop: a scalar) or its gradient (per image and pixel)."""
    sz = Sizes()
    build = cross_entropy_kernel if node.op == "cross_entropy" else cross_entropy_grad_kernel
    k = build(ctx.kname, ctx.in_shapes[0], node.attrs["label_smoothing"], ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _ce_bound(ctx: BoundCtx) -> np.ndarray:
    """Log-softmax per sample (``softmax``'s analysis: exp and log calls, a sum of K terms),
    then a mean of N x pixels values."""
    z = ctx.inputs[0]
    terms = z.shape[1] + z.shape[0] * int(np.prod(z.shape[2:]))
    return (terms + 2 * TRANSCENDENTAL) * EPS32 * (np.abs(ctx.out) + np.abs(z).max())


register(OpDef(
    name="cross_entropy", family="loss",
    signature=(Attr("label_smoothing", "float", 0.0),), canonicalize=_ce_canonicalize,
    infer=_ce_infer, reference=_ce_reference, macs=no_macs, arity=2, pass_made=True,
    new_activations=False, gradient=_ce_gradient, error_bound=_ce_bound, lower=_lower_ce,
    extra={"labels_type": _ce_labels_type},
    doc="softmax cross-entropy of class scores against integer labels, batch mean"))
register(OpDef(
    name="cross_entropy_grad", family="loss", signature=(Attr("label_smoothing", "float"),),
    infer=lambda ts, a: ts[0], reference=_ce_grad_reference, macs=no_macs, arity=2,
    pass_made=True, backward=True, new_activations=False, lower=_lower_ce,
    error_bound=lambda ctx: (ctx.inputs[0].shape[1] + 2 * TRANSCENDENTAL) * EPS32 *
    (np.abs(ctx.out) + 1.0 / ctx.inputs[0].shape[0]),
    doc="(softmax(z) - q) / count: the gradient of cross_entropy with respect to the scores"))


# -- mean squared error ---------------------------------------------------------------------------

def _mse_infer(in_types, attrs):
    y, t = in_types
    if y.shape != t.shape:
        raise ShapeError(f"mse: targets of shape {t} for outputs {y}; they must agree")
    return TensorType((), batched=False)


def _mse_reference(inputs, attrs):
    y, t = (np.asarray(v, np.float64) for v in inputs)
    return np.asarray(((y - t) ** 2).mean())


def _mse_gradient(d):
    if d.dy is not None:
        raise ShapeError("mse: cnnc differentiates a loss only as the root of the training "
                         "graph")
    return [d.add("mse_grad", list(d.node.inputs)), None]


def _lower_mse(ctx, node):
    """The loss (one serial loop: a scalar) or its gradient (per image)."""
    sz = Sizes()
    build = mse_kernel if node.op == "mse" else mse_grad_kernel
    k = build(ctx.kname, int(np.prod(ctx.in_shapes[0])), ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="mse", family="loss", lower=_lower_mse, signature=(), infer=_mse_infer,
    reference=_mse_reference,
    macs=no_macs, arity=2, pass_made=True, new_activations=False, gradient=_mse_gradient,
    error_bound=lambda ctx: (ctx.inputs[0].size + 3) * EPS32 * np.abs(ctx.out),
    extra={"labels_type": lambda out: out},
    doc="mean squared error over every element of the batch"))
register(OpDef(
    name="mse_grad", family="loss", signature=(), lower=_lower_mse,
    infer=lambda ts, a: ts[0], arity=2,
    reference=lambda inputs, a: 2.0 * (np.asarray(inputs[0], np.float64) -
                                       np.asarray(inputs[1], np.float64)) / np.size(inputs[0]),
    macs=no_macs, pass_made=True, backward=True, new_activations=False,
    error_bound=lambda ctx: 3 * EPS32 * np.abs(ctx.out),
    doc="2 (y - t) / count: the gradient of mse with respect to the outputs"))
