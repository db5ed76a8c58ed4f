"""Detection around a compiled model: which outputs of a network are its grid and its
detections, the grid labels the ``localization`` loss trains the grid on, mean average precision
at an IoU threshold (``cnnc train``'s measure), and boxes drawn on an image (``cnnc run
--draw``).

A detector is a network whose output ``nms`` makes from ``yolo_decode``'s rows of a grid that
is itself an output (``zoo/shapes_detector.cnn``): the grid is trained, the detections are
measured and drawn. Detections are rows (x1, y1, x2, y2, score, class, index) as fractions of
the image (``compiler/ops/detect.py``); ground truth is rows (class, x1, y1, x2, y2) in pixels,
classes 0..C-1 in both (a grid label's class is one more: 0 there is "nothing").
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compiler.ir import Graph
from ..compiler.ops.detect import box_iou, encode_box


class DetectionError(Exception):
    """A network that is not a detector where one is needed (the message says what is
    missing)."""


@dataclass(frozen=True)
class Detector:
    """The outputs of a detector and how its grid is decoded."""

    grid: str  # the output the loss trains: [A (5 + C), S, T]
    detections: str  # the output nms makes
    anchors: tuple[tuple[float, float], ...]
    classes: int
    cells: tuple[int, int]  # S x T
    format: str  # yolo_decode's: yolo | localization


def find_detector(graph: Graph) -> Detector:
    """The detector's outputs in ``graph``; DetectionError naming what is missing."""
    for name, nid in graph.outputs.items():
        nms = graph.node(nid)
        if nms.op != "nms":
            continue
        decode = graph.node(nms.inputs[0])
        if decode.op != "yolo_decode":
            raise DetectionError(f"output {name!r} is nms of {decode.op}, not of yolo_decode")
        grids = [k for k, v in graph.outputs.items() if v == decode.inputs[0]]
        if not grids:
            raise DetectionError(f"the grid yolo_decode reads ({graph.node(decode.inputs[0]).name})"
                                 " is not an output of the network: name it (`-> output grid`)"
                                 " so that the loss can train it")
        a = decode.attrs
        return Detector(grids[0], name, a["anchors"], a["classes"],
                        graph.node(decode.inputs[0]).type.shape[1:], a["format"])
    raise DetectionError(f"network {graph.name!r} has no output made by nms (a detector ends in "
                         "`-> yolo_decode(...) -> nms(...) -> output detections`)")


def grid_labels(objects: list[np.ndarray], detector: Detector, image_size: tuple[int, int]
                ) -> np.ndarray:
    """The ``localization`` loss's labels ``[N, 5, S, T]`` for a detector of one anchor in the
    localization format: per cell, the class + 1 of the object whose centre falls in it (the
    largest where several do; 0: nothing) and its box targets (``encode_box``) in the loss's
    order (x, y, h, w)."""
    if len(detector.anchors) != 1 or detector.format != "localization":
        raise DetectionError("training a grid with the localization loss needs yolo_decode "
                             "with one anchor and format=localization")
    rows, cols = detector.cells
    height, width = image_size
    labels = np.zeros((len(objects), 5, rows, cols))
    for n, found in enumerate(objects):
        area = np.zeros((rows, cols))
        for kind, x1, y1, x2, y2 in found:
            box = np.array([x1 / width, y1 / height, x2 / width, y2 / height])
            i, j, (tx, ty, tw, th) = encode_box(box, (rows, cols), detector.anchors[0])
            size = (x2 - x1) * (y2 - y1)
            if size > area[i, j]:
                area[i, j] = size
                labels[n, :, i, j] = (kind + 1, tx, ty, th, tw)
    return labels


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """The area under the precision-recall curve with precision made monotone from the right
    (PASCAL VOC's all-point interpolation, from 2010 on)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(detections: list[np.ndarray], truths: list[np.ndarray],
                           classes: int, iou: float = 0.5) -> float:
    """mAP at ``iou``: per class, every image's detections by decreasing score, each a true
    positive when its IoU with a not yet matched object of its class in its image is at least
    ``iou`` (the best such object), else a false positive; the average precision of that
    ranking over the class's objects; the mean over the classes that have objects.
    ``detections``: per image rows (x1, y1, x2, y2, score, class, ...) in the units of
    ``truths``' rows (class, x1, y1, x2, y2)."""
    precisions = []
    for c in range(classes):
        objects = [t[t[:, 0] == c, 1:5] for t in truths]
        total = sum(len(o) for o in objects)
        if total == 0:
            continue
        ranked = sorted(((float(d[4]), image, d[:4]) for image, rows in enumerate(detections)
                         for d in rows if int(d[5]) == c), key=lambda r: -r[0])
        matched = [np.zeros(len(o), bool) for o in objects]
        hits = np.zeros(len(ranked))
        for k, (_, image, box) in enumerate(ranked):
            if not len(objects[image]):
                continue
            overlaps = box_iou(box[None], objects[image])[0]
            overlaps[matched[image]] = -1.0
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou:
                matched[image][best] = True
                hits[k] = 1.0
        found = np.cumsum(hits)
        recall = found / total
        precision = found / np.arange(1, len(ranked) + 1)
        precisions.append(average_precision(recall, precision))
    return float(np.mean(precisions)) if precisions else 0.0


def in_pixels(rows: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Detection rows with their boxes from fractions of the image to pixels."""
    height, width = image_size
    out = np.array(rows, np.float64, copy=True).reshape(-1, rows.shape[-1] if len(rows) else 7)
    out[:, [0, 2]] *= width
    out[:, [1, 3]] *= height
    return out


#: Box colours by class (RGB), repeating.
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


def draw_detections(image: np.ndarray, rows: np.ndarray, names: tuple[str, ...] = (),
                    scale: int = 4) -> Any:
    """A Pillow image of ``image`` (C x H x W in [0, 1]) enlarged ``scale`` times with each
    detection's box (rows in pixels of ``image``) outlined in its class's colour and labelled
    with its class name (or index) and score."""
    from PIL import Image, ImageDraw  # Pillow: only when drawing

    pixels = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    picture = Image.fromarray((pixels[:3].transpose(1, 2, 0) * 255).round().astype(np.uint8))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    pen = ImageDraw.Draw(picture)
    for x1, y1, x2, y2, score, c, *_ in rows:
        colour = PALETTE[int(c) % len(PALETTE)]
        box = [x1 * scale, y1 * scale, x2 * scale, y2 * scale]
        pen.rectangle(box, outline=colour, width=2)
        name = names[int(c)] if int(c) < len(names) else str(int(c))
        pen.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=colour)
    return picture


def png_bytes(picture: Any) -> bytes:
    """The PNG file of a drawing (``write_files`` writes it)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
