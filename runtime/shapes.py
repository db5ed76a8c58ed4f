"""A synthetic detection dataset the project generates: coloured squares, discs and triangles
on noise (``cnnc train --data shapes``), seeded, so a detector can be trained and measured
(mAP at IoU 0.5, ``runtime/detection.py``) without downloading anything.

Each image is ``size`` x ``size`` RGB in [0, 1]: per-pixel uniform noise in [0, 0.5) on every
channel, then one to ``max_objects`` shapes of sides ``min_side`` to ``max_side`` pixels, each
filled with a colour whose brightest channel is at least 0.6 above the noise's mean, placed
wholly inside the image and overlapping no earlier shape's box by more than IoU 0.1. A shape
covers the pixels whose centres fall inside it: a square's box is its own, a disc's the square
around it, an upright triangle's the square its base and apex span. Boxes are (x1, y1, x2, y2)
in pixels, classes 0 (square), 1 (disc), 2 (triangle): a detector's class index, one less than
the ``localization`` loss's label (class 0 there is "nothing").

The same ``seed`` gives the same images and boxes; the training and test splits come from
different streams of it, so the test images are never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compiler.ops.detect import box_iou

#: The shapes, by class index.
CLASSES = ("square", "disc", "triangle")


@dataclass
class DetectionSet:
    """Images ``[N, 3, size, size]`` float32 and, per image, its objects ``[k, 5]``: class,
    then the box (x1, y1, x2, y2) in pixels."""

    images: np.ndarray
    objects: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def shape_mask(kind: int, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """Which pixel centres of a ``size`` x ``size`` image the shape covers, its box's top-left
    corner at (x0, y0)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    u, v = xx - x0, yy - y0  # in the box
    inside = (u >= 0) & (u < side) & (v >= 0) & (v < side)
    if kind == 0:
        return inside
    if kind == 1:
        r = side / 2
        return (u - r) ** 2 + (v - r) ** 2 <= r * r
    # an upright triangle: apex at the top middle, base along the bottom
    return inside & (np.abs(u - side / 2) <= v / 2)


def make_shapes(count: int, size: int = 64, seed: int = 0, max_objects: int = 3,
                min_side: int = 10, max_side: int = 24) -> DetectionSet:
    """``count`` images drawn from ``seed`` (the module docstring says how)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), np.float32)
    objects = []
    for n in range(count):
        image = rng.uniform(0.0, 0.5, (3, size, size))
        boxes: list[tuple[float, ...]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _try in range(20):
                side = float(rng.integers(min_side, max_side + 1))
                x0, y0 = rng.uniform(0, size - side, 2)
                box = (x0, y0, x0 + side, y0 + side)
                if not boxes or box_iou(np.array([box]), np.array([b[1:] for b in boxes])
                                        ).max() <= 0.1:
                    break
            else:
                continue
            kind = int(rng.integers(0, len(CLASSES)))
            colour = rng.uniform(0.0, 1.0, 3)
            colour[rng.integers(0, 3)] = rng.uniform(0.85, 1.0)  # one bright channel
            mask = shape_mask(kind, x0, y0, side, size)
            image[:, mask] = colour[:, None]
            boxes.append((kind, *box))
        images[n] = image
        objects.append(np.array(boxes, np.float64).reshape(-1, 5))
    return DetectionSet(images, objects)


def shapes_split(train: int = 1600, test: int = 400, size: int = 64, seed: int = 0
                 ) -> tuple[DetectionSet, DetectionSet]:
    """The training and held-out sets: two independent streams of ``seed``."""
    first, second = np.random.SeedSequence(seed).spawn(2)
    return (make_shapes(train, size, int(first.generate_state(1)[0])),
            make_shapes(test, size, int(second.generate_state(1)[0])))
