"""Losses: the scalar a training step minimizes, averaged over the batch as PyTorch's defaults
do (``reduction="mean"``). Each takes the network's output (the triplet loss: three outputs)
and, except the triplet loss, a labels input (``compiler/autodiff.attach_loss``);
``extra["labels_type"]`` gives the labels' type for an output type (None: no labels),
``extra["check_labels"]`` refuses labels a loss cannot read (a clear message), ``extra["reads"]``
how many outputs the loss reads (1 unless given).

- ``cross_entropy``: softmax cross-entropy over the classes (axis 0) of logits ``[K]``, or per
  pixel of ``[K, H, W]`` (segmentation: averaged over every pixel of the batch, as PyTorch's
  ``CrossEntropyLoss`` averages over N x H x W); integer class labels held as floats
  (exact below 2^24). ``label_smoothing`` e mixes the one-hot target with the uniform one:
  q = (1 - e) onehot + e / K (PyTorch's definition). Computed stably from log-softmax.
  Gradient: (softmax(z) - q) / (N x pixels).
- ``mse``: mean of (y - t)^2 over every element of the batch (PyTorch's ``MSELoss``).
  Gradient: 2 (y - t) / (N x size).
- ``bce_with_logits``: mean over every element of ``max(x, 0) - x t + log(1 + exp(-|x|))``,
  PyTorch's stable form of ``-t log sigmoid(x) - (1 - t) log(1 - sigmoid(x))``, targets t in
  [0, 1] of the output's shape (``BCEWithLogitsLoss``). Gradient: (sigmoid(x) - t) / count.
- ``triplet``: seed 004's eq. 6.27 as PyTorch's ``TripletMarginLoss`` (p = 2) computes it:
  the batch mean of ``max(||a - p + eps|| - ||a - n + eps|| + margin, 0)`` over embeddings
  of any equal shapes (flattened per sample). The seed writes squared distances; the frameworks
  use the distances themselves, and so does cnnc (``eps`` 1e-6 as PyTorch's
  ``pairwise_distance`` adds it). Gradient, where the hinge is open: a: u / dp - v / dn,
  p: -u / dp, n: v / dn, over N (u = a - p + eps, v = a - n + eps).
- ``contrastive``: Hadsell, Chopra and LeCun's loss (CVPR 2006) over a pair's distance d (the
  siamese network's ``distance`` output) and label Y, 0 for a similar pair and 1 for a
  dissimilar one (their convention): the mean of ``(1 - Y) d^2 / 2 + Y max(margin - d, 0)^2 /
  2``. Gradient: ((1 - Y) d - Y max(margin - d, 0)) / count.
- ``localization``: seed 004's object localization loss, ``C_classification + gamma (1 -
  y_1) C_localization``: outputs ``[K + 4]`` are K class scores (logits; class 0 is the seed's
  "nothing") then the box (x, y, h, w); labels ``[5]`` are the class index c then the box. Per
  sample: cross-entropy of the scores against c, plus ``box_weight`` (gamma, default 1) times
  the mean squared error of the four box values where c != 0 (the seed's labels (1, 0, 0, *)
  and (0, 1, 0, box) are c = 0 and c = 1 with the box: its "do not care" values are never
  read); batch mean. On a grid ``[K + 4, S, T]`` with labels ``[5, S, T]`` (a YOLO-style
  detector: seed 000's grid cells, each localizing the object whose centre falls in it) the
  same per cell, averaged over N x S x T as cross-entropy averages over pixels.
- ``weighted_sum``: ``sum over the batch of sum_i w_i y_i`` with weights w of the output's
  shape (its labels). Not a loss to train on but the objective the explanations ascend
  (``runtime/explain``): its gradient with respect to y is w itself, so it seeds a backward
  pass with any chosen gradient (seed 002: "set the gradient of the interested neuron to 1.0,
  and all other neurons of the layer to 0.0"; DeepDream's "equal to the activations"; a
  style loss's gradient with respect to a layer). A class score is w one-hot. Gradient: w dy.
- ``loss_sum``: ``sum_i w_i L_i``, the weighted sum of several terms (GoogLeNet's auxiliary
  heads weigh 0.3), the root of a training graph with several heads.

A loss is the root of the training graph (where the gradient reaching it is 1 and its gradient
op reads no more than the loss did), or a term of a ``loss_sum``: its gradient op then reads
``dy``, the whole-batch scalar gradient reaching it, as one more input (``loss_weight``: w at
the root, as PyTorch seeds ``backward`` with ``ones_like(loss)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.backward import (
    bce_with_logits_grad_kernel,
    bce_with_logits_kernel,
    contrastive_grad_kernel,
    contrastive_kernel,
    cross_entropy_grad_kernel,
    cross_entropy_kernel,
    localization_grad_kernel,
    localization_kernel,
    loss_sum_kernel,
    loss_weight_kernel,
    mse_grad_kernel,
    mse_kernel,
    triplet_grad_kernel,
    triplet_kernel,
    weighted_sum_grad_kernel,
    weighted_sum_kernel,
)
from ..kernels.common import Sizes
from ..types import TensorType
from . import (
    EPS32,
    EPS64,
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


def _split_upstream(inputs, count: int) -> tuple[list[np.ndarray], float]:
    """A loss gradient op's inputs: the loss's own ``count`` (float64) and the factor ``dy``
    (its last input when it has one more, else 1: the root)."""
    own = [np.asarray(v, np.float64) for v in inputs[:count]]
    return own, _scalar(inputs[count]) if len(inputs) > count else 1.0


def _scalar(value: Any) -> float:
    """A whole-batch scalar (a loss, or the gradient reaching one) as a float."""
    return float(np.asarray(value, np.float64).reshape(()))


def loss_gradient(grad_op: str):
    """The gradient rule of a one-output loss: ``grad_op`` over the loss's inputs with the same
    attributes, and ``dy`` as a last input unless the loss is the root (the module
    docstring); the labels get none."""
    def rule(d):
        upstream = [d.dy] if d.dy is not None else []
        grad = d.add(grad_op, [*d.node.inputs, *upstream], dict(d.attrs)) if d.needs(0) else None
        return [grad] + [None] * (len(d.node.inputs) - 1)
    return rule


def _upstream_index(ctx, count: int) -> int | None:
    """Where a gradient kernel finds ``dy`` among its inputs (None at the root)."""
    return count if len(ctx.tensor_inputs) > count else None


def _float64_bound(ctx: BoundCtx) -> np.ndarray:
    """The kernel computes in float64 from the float32 values it reads and rounds once at the
    store (2 EPS32 of |y|, doubled for slack); float64's own rounding, where a difference
    cancels (``max(x, 0) - x t``, ``lse - z_c``), is below 16 EPS64 of the largest input."""
    largest = max((float(np.abs(v).max()) for v in ctx.inputs if np.size(v)), default=0.0)
    return 4 * EPS32 * np.abs(ctx.out) + 16 * EPS64 * largest


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
    (z, labels), dy = _split_upstream(inputs, 2)
    q = _targets(z, labels, attrs["label_smoothing"])
    count = z.shape[0] * int(np.prod(z.shape[2:]))
    return dy * (np.exp(_log_softmax(z)) - q) / count


def _ce_check_labels(labels: np.ndarray, out: TensorType) -> None:
    check_labels(labels, out.shape[0])


def _lower_ce(ctx, node):
    """The loss (one serial loop: a scalar) or its gradient (per image and pixel)."""
    sz = Sizes()
    smoothing = node.attrs["label_smoothing"]
    if node.op == "cross_entropy":
        k = cross_entropy_kernel(ctx.kname, ctx.in_shapes[0], smoothing, ctx.comment, sz)
    else:
        k = cross_entropy_grad_kernel(ctx.kname, ctx.in_shapes[0], smoothing,
                                      _upstream_index(ctx, 2), ctx.comment, sz)
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
    new_activations=False, gradient=loss_gradient("cross_entropy_grad"),
    error_bound=_ce_bound, lower=_lower_ce,
    extra={"labels_type": _ce_labels_type, "check_labels": _ce_check_labels},
    doc="softmax cross-entropy of class scores against integer labels, batch mean"))
register(OpDef(
    name="cross_entropy_grad", family="loss", signature=(Attr("label_smoothing", "float"),),
    infer=lambda ts, a: ts[0], reference=_ce_grad_reference, macs=no_macs, arity=None,
    pass_made=True, backward=True, new_activations=False, lower=_lower_ce,
    error_bound=lambda ctx: (ctx.inputs[0].shape[1] + 2 * TRANSCENDENTAL) * EPS32 *
    (np.abs(ctx.out) + _split_upstream(ctx.inputs, 2)[1] / ctx.inputs[0].shape[0]),
    doc="dy (softmax(z) - q) / count: the gradient of cross_entropy with respect to the scores"))


# -- mean squared error ---------------------------------------------------------------------------

def _mse_infer(in_types, attrs):
    y, t = in_types
    if y.shape != t.shape:
        raise ShapeError(f"mse: targets of shape {t} for outputs {y}; they must agree")
    return TensorType((), batched=False)


def _mse_reference(inputs, attrs):
    y, t = (np.asarray(v, np.float64) for v in inputs)
    return np.asarray(((y - t) ** 2).mean())


def _mse_grad_reference(inputs, attrs):
    (y, t), dy = _split_upstream(inputs, 2)
    return dy * 2.0 * (y - t) / y.size


def _elementwise_loss_lowering(op: str, loss_kernel, grad_kernel):
    """The lowering of a loss over two same-shaped tensors, ``op``, and of its gradient op:
    the loss (one serial loop: a scalar) or its gradient (per image)."""

    def lower(ctx, node):
        sz = Sizes()
        size = int(np.prod(ctx.in_shapes[0]))
        if node.op == op:
            k = loss_kernel(ctx.kname, size, ctx.comment, sz)
        else:
            k = grad_kernel(ctx.kname, size, _upstream_index(ctx, 2), ctx.comment, sz)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)
    return lower


_lower_mse = _elementwise_loss_lowering("mse", mse_kernel, mse_grad_kernel)


register(OpDef(
    name="mse", family="loss", lower=_lower_mse, signature=(), infer=_mse_infer,
    reference=_mse_reference,
    macs=no_macs, arity=2, pass_made=True, new_activations=False,
    gradient=loss_gradient("mse_grad"),
    error_bound=lambda ctx: (ctx.inputs[0].size + 3) * EPS32 * np.abs(ctx.out),
    extra={"labels_type": lambda out: out},
    doc="mean squared error over every element of the batch"))
register(OpDef(
    name="mse_grad", family="loss", signature=(), lower=_lower_mse,
    infer=lambda ts, a: ts[0], arity=None, reference=_mse_grad_reference,
    macs=no_macs, pass_made=True, backward=True, new_activations=False,
    error_bound=lambda ctx: 3 * EPS32 * np.abs(ctx.out),
    doc="dy 2 (y - t) / count: the gradient of mse with respect to the outputs"))


# -- binary cross-entropy with logits -------------------------------------------------------------

def _same_shape_labels(name: str):
    """The shape rule of a loss whose labels have the output's shape."""
    def infer(in_types, attrs):
        y, t = in_types
        if y.shape != t.shape:
            raise ShapeError(f"{name}: labels of shape {t} for outputs {y}; they must agree")
        return TensorType((), batched=False)
    return infer


def _check_between(low: float, high: float, what: str):
    """A labels check: every value in [low, high]."""
    def check(labels: np.ndarray, out: TensorType) -> None:
        labels = np.asarray(labels, np.float64)
        bad = ~((labels >= low) & (labels <= high))  # NaN is bad too
        if np.any(bad):
            raise ShapeError(f"{what}; got {labels[bad].ravel()[0]:g} ({int(bad.sum())} of "
                             f"{labels.size} outside)")
    return check


def _check_zero_one(labels: np.ndarray, out: TensorType) -> None:
    labels = np.asarray(labels, np.float64)
    bad = (labels != 0) & (labels != 1)
    if np.any(bad):
        raise ShapeError(f"contrastive labels must be 0 (a similar pair) or 1 (a dissimilar "
                         f"one); got {labels[bad].ravel()[0]:g} ({int(bad.sum())} of "
                         f"{labels.size} neither)")


def _bce_reference(inputs, attrs):
    x, t = (np.asarray(v, np.float64) for v in inputs)
    return np.asarray((np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).mean())


def _bce_grad_reference(inputs, attrs):
    (x, t), dy = _split_upstream(inputs, 2)
    return dy * (1.0 / (1.0 + np.exp(-x)) - t) / x.size


def _lower_bce(ctx, node):
    sz = Sizes()
    size = int(np.prod(ctx.in_shapes[0]))
    if node.op == "bce_with_logits":
        k = bce_with_logits_kernel(ctx.kname, size, ctx.comment, sz)
    else:
        k = bce_with_logits_grad_kernel(ctx.kname, size, _upstream_index(ctx, 2), ctx.comment,
                                        sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="bce_with_logits", family="loss", signature=(), infer=_same_shape_labels(
        "bce_with_logits"), reference=_bce_reference, macs=no_macs, arity=2, pass_made=True,
    new_activations=False, gradient=loss_gradient("bce_with_logits_grad"), lower=_lower_bce,
    error_bound=_float64_bound,
    extra={"labels_type": lambda out: out,
           "check_labels": _check_between(0.0, 1.0, "bce_with_logits targets must be in "
                                                    "[0, 1]")},
    doc="binary cross-entropy of logits against targets in [0, 1], mean over every element"))
register(OpDef(
    name="bce_with_logits_grad", family="loss", signature=(), infer=lambda ts, a: ts[0],
    reference=_bce_grad_reference, macs=no_macs, arity=None, pass_made=True, backward=True,
    new_activations=False, lower=_lower_bce, error_bound=_float64_bound,
    doc="dy (sigmoid(x) - t) / count: the gradient of bce_with_logits"))


# -- triplet loss -------------------------------------------------------------------------------

TRIPLET_ROLES = ("anchor", "positive", "negative")


def _non_negative_floats(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    out = {}
    for name, value in attrs.items():
        out[name] = as_float(value, name)
        if out[name] < 0:
            raise AttrError(f"{name} must be at least 0, got {out[name]:g}", name)
    return out


def _triplet_infer(in_types, attrs):
    a, p, n = in_types
    if not a.shape == p.shape == n.shape:
        raise ShapeError(f"triplet: anchor {a}, positive {p} and negative {n} embeddings must "
                         "have one shape")
    return TensorType((), batched=False)


def _triplet_parts(inputs, eps: float):
    """u = a - p + eps, v = a - n + eps per sample (flattened) and their lengths."""
    a, p, n = (np.asarray(v, np.float64).reshape(len(v), -1) for v in inputs)
    u, v = a - p + eps, a - n + eps
    return u, v, np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)


def _triplet_reference(inputs, attrs):
    _, _, dp, dn = _triplet_parts(inputs, attrs["eps"])
    return np.asarray(np.maximum(dp - dn + attrs["margin"], 0.0).mean())


def _triplet_grad_reference(inputs, attrs):
    own, dy = _split_upstream(inputs, 3)
    u, v, dp, dn = _triplet_parts(own, attrs["eps"])
    g = dy * (dp - dn + attrs["margin"] >= 0) / len(u)  # PyTorch's clamp_min passes at 0
    gp = np.divide(g, dp, out=np.zeros_like(dp), where=dp > 0)[:, None]
    gn = np.divide(g, dn, out=np.zeros_like(dn), where=dn > 0)[:, None]
    grad = {"anchor": u * gp - v * gn, "positive": -u * gp, "negative": v * gn}[attrs["wrt"]]
    return grad.reshape(own[0].shape)


def _triplet_gradient(d):
    upstream = [d.dy] if d.dy is not None else []
    return [d.add("triplet_grad", [*d.node.inputs, *upstream], {**d.attrs, "wrt": role},
                  what=role) if d.needs(k) else None
            for k, role in enumerate(TRIPLET_ROLES)]


def _lower_triplet(ctx, node):
    sz = Sizes()
    size, margin, eps = int(np.prod(ctx.in_shapes[0])), node.attrs["margin"], node.attrs["eps"]
    if node.op == "triplet":
        k = triplet_kernel(ctx.kname, size, margin, eps, ctx.comment, sz)
    else:
        k = triplet_grad_kernel(ctx.kname, size, margin, eps, node.attrs["wrt"],
                                _upstream_index(ctx, 3), ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="triplet", family="loss",
    signature=(Attr("margin", "float", 1.0), Attr("eps", "float", 1e-6)),
    canonicalize=_non_negative_floats, infer=_triplet_infer, reference=_triplet_reference,
    macs=no_macs, arity=3, pass_made=True, new_activations=False, gradient=_triplet_gradient,
    lower=_lower_triplet, error_bound=_float64_bound,
    extra={"labels_type": lambda out: None, "reads": 3},
    doc="triplet margin loss of anchor, positive and negative embeddings (L2), batch mean"))
register(OpDef(
    name="triplet_grad", family="loss",
    signature=(Attr("margin", "float"), Attr("eps", "float"),
               Attr("wrt", "choice", choices=TRIPLET_ROLES)),
    infer=lambda ts, a: ts[0], reference=_triplet_grad_reference, macs=no_macs, arity=None,
    pass_made=True, backward=True, new_activations=False, lower=_lower_triplet,
    error_bound=_float64_bound,
    doc="the gradient of the triplet loss with respect to the anchors, positives or negatives"))


# -- contrastive loss ---------------------------------------------------------------------------

def _contrastive_reference(inputs, attrs):
    d, y = (np.asarray(v, np.float64) for v in inputs)
    h = np.maximum(attrs["margin"] - d, 0.0)
    return np.asarray((0.5 * ((1 - y) * d ** 2 + y * h ** 2)).mean())


def _contrastive_grad_reference(inputs, attrs):
    (d, y), dy = _split_upstream(inputs, 2)
    return dy * ((1 - y) * d - y * np.maximum(attrs["margin"] - d, 0.0)) / d.size


def _lower_contrastive(ctx, node):
    sz = Sizes()
    size, margin = int(np.prod(ctx.in_shapes[0])), node.attrs["margin"]
    if node.op == "contrastive":
        k = contrastive_kernel(ctx.kname, size, margin, ctx.comment, sz)
    else:
        k = contrastive_grad_kernel(ctx.kname, size, margin, _upstream_index(ctx, 2),
                                    ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="contrastive", family="loss", signature=(Attr("margin", "float", 1.0),),
    canonicalize=_non_negative_floats, infer=_same_shape_labels("contrastive"),
    reference=_contrastive_reference, macs=no_macs, arity=2, pass_made=True,
    new_activations=False, gradient=loss_gradient("contrastive_grad"),
    lower=_lower_contrastive, error_bound=_float64_bound,
    extra={"labels_type": lambda out: out, "check_labels": _check_zero_one},
    doc="contrastive loss of pair distances, labels 0 similar and 1 dissimilar, batch mean"))
register(OpDef(
    name="contrastive_grad", family="loss", signature=(Attr("margin", "float"),),
    infer=lambda ts, a: ts[0], reference=_contrastive_grad_reference, macs=no_macs,
    arity=None, pass_made=True, backward=True, new_activations=False,
    lower=_lower_contrastive, error_bound=_float64_bound,
    doc="dy ((1 - Y) d - Y max(margin - d, 0)) / count: the gradient of contrastive"))


# -- localization (seed 004: class scores, and the box where an object is present) ----------------

#: The box's components (x, y, h, w) after the class scores of a localization output.
BOX = 4


def _localization_labels_type(out: TensorType) -> TensorType:
    if out.rank not in (1, 3) or out.shape[0] < BOX + 2:
        raise ShapeError(f"localization needs outputs [K + {BOX}] or a grid [K + {BOX}, S, T]: "
                         f"K >= 2 class scores then the box (x, y, h, w); got {out}")
    return TensorType((1 + BOX, *out.shape[1:]))


def _localization_infer(in_types, attrs):
    out, labels = in_types
    want = _localization_labels_type(out)
    if labels.shape != want.shape:
        raise ShapeError(f"localization: labels of shape {labels} for outputs {out}; expected "
                         f"{want} (the class, then the box)")
    return TensorType((), batched=False)


def _localization_parts(inputs):
    """Per image and cell (one cell for a whole-image output), rows of: scores [., K], the box
    [., 4], class labels [.], target boxes [., 4], object mask [., 1]."""
    out, labels = (np.asarray(v, np.float64) for v in inputs)
    rows = np.moveaxis(out.reshape(len(out), out.shape[1], -1), 1, 2).reshape(-1, out.shape[1])
    truth = np.moveaxis(labels.reshape(len(labels), 1 + BOX, -1), 1, 2).reshape(-1, 1 + BOX)
    classes = truth[:, 0]
    return rows[:, :-BOX], rows[:, -BOX:], classes, truth[:, 1:], (classes != 0)[:, None]


def _localization_reference(inputs, attrs):
    scores, box, classes, target, present = _localization_parts(inputs)
    check_labels(classes, scores.shape[1])
    ce = -(_targets(scores, classes, 0.0) * _log_softmax(scores)).sum(axis=1)
    sq = (present * (box - target) ** 2).mean(axis=1)
    return np.asarray((ce + attrs["box_weight"] * sq).mean())


def _localization_grad_reference(inputs, attrs):
    own, dy = _split_upstream(inputs, 2)
    scores, box, classes, target, present = _localization_parts(own)
    d_scores = np.exp(_log_softmax(scores)) - _targets(scores, classes, 0.0)
    d_box = attrs["box_weight"] * present * 2.0 * (box - target) / BOX
    rows = dy * np.concatenate([d_scores, d_box], axis=1) / len(scores)
    out = own[0]  # the rows back to [N, K + 4, cells...]
    cells = rows.reshape(len(out), -1, out.shape[1])
    return np.moveaxis(cells, 2, 1).reshape(out.shape)


def _localization_check_labels(labels: np.ndarray, out: TensorType) -> None:
    check_labels(np.asarray(labels)[:, 0], out.shape[0] - BOX)


def _lower_localization(ctx, node):
    sz = Sizes()
    width, *grid = ctx.in_shapes[0]
    classes, weight, cells = width - BOX, node.attrs["box_weight"], int(np.prod(grid))
    if node.op == "localization":
        k = localization_kernel(ctx.kname, classes, BOX, weight, cells, ctx.comment, sz)
    else:
        k = localization_grad_kernel(ctx.kname, classes, BOX, weight, _upstream_index(ctx, 2),
                                     cells, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="localization", family="loss", signature=(Attr("box_weight", "float", 1.0),),
    canonicalize=_non_negative_floats,
    infer=_localization_infer, reference=_localization_reference, macs=no_macs, arity=2,
    pass_made=True, new_activations=False, gradient=loss_gradient("localization_grad"),
    lower=_lower_localization, error_bound=_float64_bound,
    extra={"labels_type": _localization_labels_type,
           "check_labels": _localization_check_labels},
    doc="seed 004's localization loss: class cross-entropy plus the box's mse where an object "
        "is present, batch mean"))
register(OpDef(
    name="localization_grad", family="loss", signature=(Attr("box_weight", "float"),),
    infer=lambda ts, a: ts[0], reference=_localization_grad_reference, macs=no_macs,
    arity=None, pass_made=True, backward=True, new_activations=False,
    lower=_lower_localization, error_bound=_float64_bound,
    doc="the gradient of the localization loss with respect to the scores and the box"))


# -- a chosen gradient: the weighted sum of an output ---------------------------------------------

def _weighted_sum_reference(inputs, attrs):
    y, w = (np.asarray(v, np.float64) for v in inputs)
    return np.asarray((y * w).sum())


def _weighted_sum_grad_reference(inputs, attrs):
    (_, w), dy = _split_upstream(inputs, 2)
    return dy * w


_lower_weighted_sum = _elementwise_loss_lowering("weighted_sum", weighted_sum_kernel,
                                                 weighted_sum_grad_kernel)


def _weighted_sum_bound(ctx: BoundCtx) -> np.ndarray:
    """A float64 sum of float32 products, rounded once: the float64 rounding of the terms
    (one EPS64 each of the sum of |terms|) and the final rounding to float32."""
    y, w = ctx.inputs
    return np.asarray(2 * EPS32 * np.abs(ctx.out) + (y.size + 2) * EPS64 * np.abs(y * w).sum())


register(OpDef(
    name="weighted_sum", family="loss", signature=(), infer=_same_shape_labels("weighted_sum"),
    reference=_weighted_sum_reference, macs=no_macs, arity=2, pass_made=True,
    new_activations=False, gradient=loss_gradient("weighted_sum_grad"),
    lower=_lower_weighted_sum, error_bound=_weighted_sum_bound,
    extra={"labels_type": lambda out: out},
    doc="sum over the batch of the output times weights of its shape: an objective whose "
        "gradient is the weights (explanations)"))
register(OpDef(
    name="weighted_sum_grad", family="loss", signature=(), infer=lambda ts, a: ts[0],
    reference=_weighted_sum_grad_reference, macs=no_macs, arity=None, pass_made=True,
    backward=True, new_activations=False, lower=_lower_weighted_sum,
    error_bound=lambda ctx: 2 * EPS32 * np.abs(ctx.out),
    doc="dy w: the gradient of weighted_sum with respect to the output"))


# -- several heads: a weighted sum of losses ----------------------------------------------------

def _loss_sum_infer(in_types, attrs):
    if len(in_types) != len(attrs["weights"]):
        raise ShapeError(f"loss_sum: {len(in_types)} losses for {len(attrs['weights'])} "
                         "weights")
    for t in in_types:
        if t.shape != () or t.batched:
            raise ShapeError(f"loss_sum adds whole-batch scalar losses, not {t}")
    return TensorType((), batched=False)


def _loss_sum_reference(inputs, attrs):
    return np.asarray(sum(w * _scalar(v) for w, v in zip(attrs["weights"], inputs)), np.float64)


def _loss_sum_gradient(d):
    """d(sum w_i L_i) / d L_i = w_i dy (at the root, w_i: ``loss_weight`` of L_i alone)."""
    upstream = [d.dy] if d.dy is not None else []
    return [d.add("loss_weight", [i, *upstream], {"weight": w}, what=f"term{k}")
            if d.needs(k) else None
            for k, (i, w) in enumerate(zip(d.node.inputs, d.attrs["weights"]))]


def _loss_weight_reference(inputs, attrs):
    dy = _scalar(inputs[1]) if len(inputs) > 1 else 1.0
    return np.asarray(attrs["weight"] * dy, np.float64)


def _lower_loss_weight(ctx, node):
    dy = 1 if len(ctx.tensor_inputs) > 1 else None
    k = loss_weight_kernel(ctx.kname, node.attrs["weight"], dy, ctx.comment)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs)


register(OpDef(
    name="loss_sum", family="loss", signature=(Attr("weights", "any"),),
    infer=_loss_sum_infer, reference=_loss_sum_reference, macs=no_macs, arity=None,
    pass_made=True, new_activations=False, gradient=_loss_sum_gradient,
    lower=lambda ctx, node: ctx.kernel_step(
        loss_sum_kernel(ctx.kname, node.attrs["weights"], ctx.comment),
        inputs=ctx.tensor_inputs),
    error_bound=lambda ctx: np.asarray(4 * EPS32 * sum(abs(w * _scalar(v)) for w, v in zip(
        ctx.attrs["weights"], ctx.inputs))),
    doc="sum_i w_i L_i: the weighted sum of several heads' losses"))
register(OpDef(
    name="loss_weight", family="loss", signature=(Attr("weight", "float"),),
    infer=lambda ts, a: ts[-1], reference=_loss_weight_reference, macs=no_macs, arity=None,
    pass_made=True, backward=True, new_activations=False, lower=_lower_loss_weight,
    error_bound=lambda ctx: 2 * EPS32 * np.abs(ctx.out),
    doc="w (times dy): the gradient of loss_sum with respect to one term; its first input, "
        "that term's loss, only orders it"))
