"""Detection post-processing: box IoU, YOLO grid decoding with anchor boxes, and non-maximum
suppression (seed 000's YOLO walk: grid cells, anchors, IoU, NMS).

Boxes are two opposite corners ``(x1, y1, x2, y2)``, in either order along each axis (as ONNX's
``NonMaxSuppression`` takes them with ``center_point_box=0``; its ``(y1, x1, y2, x2)`` order is
the same to IoU, which is symmetric in the two axes).

- ``iou(a, b)``: the intersection over union of every box of ``a [B, 4]`` with every box of
  ``b [M, 4]``, ``[B, M]``. A box of no area overlaps nothing (IoU 0), as ONNX Runtime treats
  it. ``box_iou`` is the one place the formula is written: the NMS, the mAP of
  ``runtime/detection.py`` and the dataset's matching all call it.
- ``yolo_decode(anchors, classes, format)``: a YOLO-style head ``[A (5 + C), S, T]`` to one
  row per cell and anchor, ``[S T A, 4 + C]`` in the order (row, column, anchor): the box's
  corners as fractions of the image, then the C class scores. The 5 + C channels of an
  anchor are, with ``format=yolo`` (YOLOv2), ``tx, ty, tw, th, to`` then C class logits; with
  ``format=localization`` seed 004's localization output (``compiler/ops/loss.py``, per cell:
  what the ``localization`` loss trains), C + 1 class scores of which class 0 is "nothing",
  then the box ``tx, ty, th, tw`` (its x, y, h, w). For cell (i, j) and anchor (w_a, h_a) in
  grid cells:

      centre = ((j + sigmoid(tx)) / T, (i + sigmoid(ty)) / S)
      size   = (w_a exp(tw) / T, h_a exp(th) / S)
      score_c = sigmoid(to) softmax(logits)_c        (yolo)
      score_c = softmax(scores)_(c + 1)               (localization: class c + 1 of the labels)

  ``encode_box`` is the inverse of the box formulas: the cell and targets a training label
  holds.

- ``nms(iou, score, top_k, max_boxes)``: per image and class, the boxes whose score is above
  ``score`` in order of decreasing score (ties: the lower index first), each kept unless its
  IoU with a box kept before it is above ``iou``, at most ``top_k`` per class (ONNX's
  ``max_output_boxes_per_class``); then every kept box of every class by decreasing score
  (ties: class, then index), at most ``max_boxes``. Input: ``yolo_decode``'s rows ``[B, 4 + C]``,
  or ONNX's two tensors, boxes ``[B, 4]`` and scores ``[C, B]``. Thresholds are compared in
  float32, as the scores are.

A variable-length result in a compiled model: ``nms`` writes a padded array ``[max_boxes, 7]``
per image, rows ``(x1, y1, x2, y2, score, class, index)`` by decreasing score, then padding rows
of class and index -1 (and zeros). ``detections`` turns it into the list of boxes per image
(``CompiledModel.__call__`` does so for an output ``nms`` makes). The three ops run as host
steps after the generated kernels (``LowerCtx.host_step``): their work is a few thousand boxes
against the network's millions of multiply-accumulates, and NMS's greedy loop depends on the
data; each computes its float64 reference on the float32 values it reads and rounds once.

ONNX mapping: ``NonMaxSuppression`` (``runtime/onnx/handlers/detect.py``) is ``nms`` on the two
tensors, ``top_k`` its ``max_output_boxes_per_class`` and ``max_boxes`` C times that (nothing
is dropped); its ``selected_indices`` ``(batch, class, box)`` are the image, class and index of
the padded rows. Checked against ONNX Runtime in tests/ops/test_detect.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..types import TensorType
from . import (
    EPS32,
    TRANSCENDENTAL,
    Arrays,
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ShapeError,
    as_choice,
    as_float,
    as_int,
    exact_bound,
    no_macs,
    register,
    show_value,
)

#: The columns of a box: two opposite corners.
BOX = 4
#: The columns of a detection row of ``nms``: the box, its score, class and index.
ROW = BOX + 3
#: The class (and index) of a padding row.
PADDING = -1.0
#: The score threshold meaning "none" (ONNX's absent ``score_threshold``): the lowest float32.
NO_THRESHOLD = float(np.finfo(np.float32).min)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a [..., B, 4]`` with every box of
    ``b [..., M, 4]``: ``[..., B, M]`` in float64. Corners in either order; a box of no area
    (or two boxes that do not overlap) give 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo_a, hi_a = np.minimum(a[..., :2], a[..., 2:]), np.maximum(a[..., :2], a[..., 2:])
    lo_b, hi_b = np.minimum(b[..., :2], b[..., 2:]), np.maximum(b[..., :2], b[..., 2:])
    area_a = np.prod(hi_a - lo_a, axis=-1)[..., :, None]
    area_b = np.prod(hi_b - lo_b, axis=-1)[..., None, :]
    lo = np.maximum(lo_a[..., :, None, :], lo_b[..., None, :, :])
    hi = np.minimum(hi_a[..., :, None, :], hi_b[..., None, :, :])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    union = area_a + area_b - inter
    overlap = (area_a > 0) & (area_b > 0) & (inter > 0)
    return np.divide(inter, union, out=np.zeros(inter.shape), where=overlap)


def _require_boxes(t: TensorType, op: str, what: str) -> int:
    if t.rank != 2 or t.shape[1] < BOX:
        raise ShapeError(f"{op} needs {what} [boxes, 4 + ...] (two corners per row), got {t}")
    return t.shape[0]


# -- iou ----------------------------------------------------------------------------------------

def _iou_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    a, b = in_types
    for t, what in ((a, "first boxes"), (b, "second boxes")):
        if t.rank != 2 or t.shape[1] != BOX:
            raise ShapeError(f"iou needs {what} [B, 4] (x1, y1, x2, y2), got {t}")
    return a.with_shape(a.shape[0], b.shape[0])


def _iou_reference(inputs: Arrays, attrs: dict[str, Any]) -> np.ndarray:
    return box_iou(inputs[0], inputs[1])


# -- yolo_decode --------------------------------------------------------------------------------

def _anchor_pairs(value: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, (tuple, list)) or not value:
        raise AttrError(f"anchors must be a list of widths and heights [w1, h1, w2, h2, ...] "
                        f"in grid cells, got {show_value(value)}", "anchors")
    numbers = [as_float(v, "anchors") for v in value]
    if len(numbers) % 2:
        raise AttrError(f"anchors takes pairs (width, height); got {len(numbers)} numbers",
                        "anchors")
    if min(numbers) <= 0:
        raise AttrError(f"anchors must be positive, got {min(numbers):g}", "anchors")
    return tuple((numbers[k], numbers[k + 1]) for k in range(0, len(numbers), 2))


FORMATS = ("yolo", "localization")


def _decode_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    return {"anchors": _anchor_pairs(attrs["anchors"]),
            "classes": as_int(attrs["classes"], "classes", 1),
            "format": as_choice(attrs["format"], "format", FORMATS)}


def _decode_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = in_types[0]
    anchors, classes = len(attrs["anchors"]), attrs["classes"]
    if x.rank != 3 or x.channels != anchors * (5 + classes):
        raise ShapeError(f"yolo_decode: {anchors} anchors of 5 + {classes} classes need a grid "
                         f"of {anchors * (5 + classes)} channels x rows x columns, got {x}")
    return x.with_shape(x.height * x.width * anchors, BOX + classes)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def encode_box(box: np.ndarray, grid: tuple[int, int], anchor: tuple[float, float],
               margin: float = 1e-3) -> tuple[int, int, np.ndarray]:
    """The inverse of ``yolo_decode``'s box formulas for a box (x1, y1, x2, y2) as fractions
    of the image: the cell (i, j) its centre falls in and the targets (tx, ty, tw, th) that
    decode to it there with ``anchor`` (the centre's offset kept ``margin`` inside the cell,
    where the sigmoid's inverse is finite)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    rows, cols = grid
    cx, cy = (x1 + x2) / 2 * cols, (y1 + y2) / 2 * rows
    i, j = min(max(int(cy), 0), rows - 1), min(max(int(cx), 0), cols - 1)
    ox = min(max(cx - j, margin), 1 - margin)
    oy = min(max(cy - i, margin), 1 - margin)
    targets = [np.log(ox / (1 - ox)), np.log(oy / (1 - oy)),
               np.log((x2 - x1) * cols / anchor[0]), np.log((y2 - y1) * rows / anchor[1])]
    return i, j, np.array(targets)


def _decode_reference(inputs: Arrays, attrs: dict[str, Any]) -> np.ndarray:
    x = np.asarray(inputs[0], np.float64)
    n, _, rows, cols = x.shape
    anchors = np.asarray(attrs["anchors"], np.float64)  # [A, 2]: width, height in cells
    a, c = len(anchors), attrs["classes"]
    t = x.reshape(n, a, 5 + c, rows, cols).transpose(0, 3, 4, 1, 2)  # [N, S, T, A, 5 + C]
    if attrs["format"] == "yolo":
        tx, ty, tw, th = (t[..., k] for k in range(4))
        scores = _sigmoid(t[..., 4])[..., None] * _softmax(t[..., 5:])
    else:  # the localization output: C + 1 class scores (0: nothing), then x, y, h, w
        tx, ty, th, tw = (t[..., c + 1 + k] for k in range(4))
        scores = _softmax(t[..., :c + 1])[..., 1:]
    i = np.arange(rows).reshape(1, rows, 1, 1)
    j = np.arange(cols).reshape(1, 1, cols, 1)
    cx = (j + _sigmoid(tx)) / cols
    cy = (i + _sigmoid(ty)) / rows
    w = anchors[:, 0] * np.exp(tw) / cols
    h = anchors[:, 1] * np.exp(th) / rows
    rows_out = np.concatenate([np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1),
                               scores], axis=-1)
    return rows_out.reshape(n, rows * cols * a, BOX + c)


def _decode_bound(ctx: BoundCtx) -> np.ndarray:
    """Computed in float64 from the float32 inputs and rounded once: half an ulp of each
    output, doubled, and the float64 exp and sums (far below float32's, counted as a few
    transcendental calls of float32 for slack)."""
    return ctx.err_in + (2 + TRANSCENDENTAL) * EPS32 * np.abs(ctx.out)


# -- nms ----------------------------------------------------------------------------------------

def _nms_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    iou = as_float(attrs["iou"], "iou")
    if not 0.0 <= iou <= 1.0:
        raise AttrError(f"iou must be in [0, 1], got {iou:g}", "iou")
    top_k = as_int(attrs["top_k"], "top_k", 1)
    max_boxes = top_k if attrs["max_boxes"] is None else as_int(attrs["max_boxes"],
                                                                "max_boxes", 1)
    # the scores are float32: so is the threshold they are compared with
    return {"iou": float(np.float32(iou)),
            "score": float(np.float32(as_float(attrs["score"], "score"))),
            "top_k": top_k, "max_boxes": max_boxes}


def _nms_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if len(in_types) == 1:
        rows = in_types[0]
        if rows.rank != 2 or rows.shape[1] <= BOX:
            raise ShapeError(f"nms needs detection rows [boxes, 4 + classes] (yolo_decode's), "
                             f"got {rows}")
    elif len(in_types) == 2:
        boxes, scores = in_types
        count = _require_boxes(boxes, "nms", "boxes")
        if boxes.shape[1] != BOX or scores.rank != 2 or scores.shape[1] != count:
            raise ShapeError(f"nms takes boxes [B, 4] and scores [classes, B]; got boxes "
                             f"{boxes} and scores {scores}")
    else:
        raise ShapeError(f"nms takes detection rows, or boxes and scores; got "
                         f"{len(in_types)} inputs")
    return in_types[0].with_shape(attrs["max_boxes"], ROW)


def _boxes_and_scores(inputs: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """``[N, B, 4]`` boxes and ``[N, C, B]`` scores, from rows or from ONNX's two tensors."""
    if len(inputs) == 1:
        rows = np.asarray(inputs[0], np.float64)
        return rows[..., :BOX], rows[..., BOX:].transpose(0, 2, 1)
    return np.asarray(inputs[0], np.float64), np.asarray(inputs[1], np.float64)


def select_boxes(boxes: np.ndarray, scores: np.ndarray, iou: float, score: float,
                 top_k: int) -> np.ndarray:
    """Greedy NMS of one class of one image: the indices of the kept boxes, best first."""
    candidates = np.flatnonzero(scores > score)
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    overlaps = box_iou(boxes[order], boxes[order])
    kept: list[int] = []
    for k in range(len(order)):
        if len(kept) == top_k:
            break
        if not kept or overlaps[k, kept].max() <= iou:
            kept.append(k)
    return order[kept]


def _nms_reference(inputs: Arrays, attrs: dict[str, Any]) -> np.ndarray:
    boxes, scores = _boxes_and_scores(inputs)
    n, classes = scores.shape[:2]
    out = np.zeros((n, attrs["max_boxes"], ROW))
    out[:, :, BOX + 1:] = PADDING
    for image in range(n):
        found = [(c, k) for c in range(classes)
                 for k in select_boxes(boxes[image], scores[image, c], attrs["iou"],
                                       attrs["score"], attrs["top_k"])]
        found.sort(key=lambda ck: (-scores[image, ck[0], ck[1]], ck[0], ck[1]))
        for r, (c, k) in enumerate(found[:attrs["max_boxes"]]):
            out[image, r] = (*boxes[image, k], scores[image, c, k], c, k)
    return out


def detections(padded: np.ndarray) -> list[np.ndarray]:
    """``nms``'s padded output ``[N, max_boxes, 7]`` as a list of ``[k, 7]`` arrays, one per
    image: its rows ``(x1, y1, x2, y2, score, class, index)`` without the padding."""
    padded = np.asarray(padded)
    return [rows[rows[:, BOX + 1] != PADDING] for rows in padded]


def selected_indices(padded: np.ndarray) -> np.ndarray:
    """``nms``'s padded output as ONNX's ``NonMaxSuppression`` gives it: ``[S, 3]`` int64 rows
    ``(image, class, box index)``, by image, then class, then best first (ONNX Runtime's
    order)."""
    out = []
    for image, rows in enumerate(detections(padded)):
        for c in sorted({int(r[BOX + 1]) for r in rows}):
            out += [(image, c, int(r[BOX + 2])) for r in rows if int(r[BOX + 1]) == c]
    return np.array(out, np.int64).reshape(-1, 3)


# -- lowering: host steps -----------------------------------------------------------------------

def host_function(reference: Callable[[Arrays, dict[str, Any]], np.ndarray],
                  in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...],
                  attrs: dict[str, Any]) -> Callable[..., None]:
    """``fn(x0, ..., y, n_batch)`` over flat float32 buffers: ``reference`` on the float32
    inputs (in float64), rounded once into ``y``."""
    def run(*args: Any) -> None:
        *flat, y, n = args
        inputs = [x[: n * int(np.prod(s))].reshape((n, *s)) for x, s in zip(flat, in_shapes)]
        y[: n * int(np.prod(out_shape))] = reference(inputs, attrs).reshape(-1)
    return run


def _lower_host(reference: Callable[[Arrays, dict[str, Any]], np.ndarray]):
    def lower(ctx, node):
        fn = host_function(reference, ctx.in_shapes, ctx.out_shape, dict(node.attrs))
        return ctx.host_step(fn, inputs=ctx.tensor_inputs)
    return lower


register(OpDef(
    name="iou", family="detect", signature=(), infer=_iou_infer, reference=_iou_reference,
    macs=no_macs, arity=2, lower=_lower_host(_iou_reference),
    # one float64 division of exact float32 products, rounded once
    error_bound=lambda ctx: ctx.err_in + 2 * EPS32 * np.abs(ctx.out),
    doc="intersection over union of every box of the first input with every box of the second"))

register(OpDef(
    name="yolo_decode", family="detect",
    signature=(Attr("anchors", "any", doc="[w1, h1, w2, h2, ...] in grid cells"),
               Attr("classes", "int"),
               Attr("format", "choice", "yolo", choices=FORMATS,
                    doc="the channels of an anchor: YOLOv2's, or the localization loss's")),
    canonicalize=_decode_canonicalize, infer=_decode_infer, reference=_decode_reference,
    macs=no_macs, lower=_lower_host(_decode_reference), error_bound=_decode_bound,
    doc="a YOLO grid with anchor boxes to one row per cell and anchor: corners, class scores"))

register(OpDef(
    name="nms", family="detect",
    signature=(Attr("iou", "float", 0.5), Attr("score", "float", 0.25),
               Attr("top_k", "int", 100), Attr("max_boxes", "int", None)),
    canonicalize=_nms_canonicalize, infer=_nms_infer, reference=_nms_reference, macs=no_macs,
    arity=None, lower=_lower_host(_nms_reference), error_bound=exact_bound(),
    aliases=("non_max_suppression",),
    doc="non-maximum suppression per class: padded rows (x1, y1, x2, y2, score, class, index)"))
