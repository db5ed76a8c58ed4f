"""The detection pieces around a compiled model (runtime/shapes.py, runtime/detection.py): the
synthetic dataset (seeded, its boxes those of the pixels drawn), mAP on cases checked by hand,
grid labels that decode back to their boxes, drawing, `cnnc run --draw` and `cnnc train
--data shapes`'s refusals. (Training the zoo detector to mAP >= 0.8 takes minutes: not here;
README.md gives the command and its time.)"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cnnc
from cnnc.compiler.ops import get_op
from cnnc.compiler.ops.detect import box_iou
from cnnc.runtime.cli import main
from cnnc.runtime.detection import (
    PALETTE,
    DetectionError,
    average_precision,
    draw_detections,
    find_detector,
    grid_labels,
    mean_average_precision,
)
from cnnc.runtime.shapes import CLASSES, make_shapes, shape_mask, shapes_split

# -- the dataset --------------------------------------------------------------------------------


def test_shapes_are_seeded():
    a, b, c = make_shapes(6, 32, seed=3), make_shapes(6, 32, seed=3), make_shapes(6, 32, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert all(np.array_equal(p, q) for p, q in zip(a.objects, b.objects))
    assert not np.array_equal(a.images, c.images)
    train, test = shapes_split(8, 4, 32, seed=1)
    assert len(train) == 8 and len(test) == 4
    assert not any(np.array_equal(t, u) for t in train.images for u in test.images)


def test_each_box_bounds_the_pixels_drawn():
    """A shape's box (to the pixel) is the extent of its pixels: the pixels of its colour
    inside the box, and none of the box's rows or columns empty."""
    data = make_shapes(30, 48, seed=5)
    for objects in data.objects:
        assert 1 <= len(objects) <= 3
        assert set(objects[:, 0]) <= {0, 1, 2}
        boxes = objects[:, 1:]
        assert np.all(boxes >= 0) and np.all(boxes <= 48)
        overlaps = box_iou(boxes, boxes) - np.eye(len(boxes))
        assert overlaps.max() <= 0.1
        for kind, x1, y1, x2, y2 in objects:
            mask = shape_mask(int(kind), x1, y1, x2 - x1, 48)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert rows.min() >= np.floor(y1) and rows.max() <= np.ceil(y2)
            assert cols.min() >= np.floor(x1) and cols.max() <= np.ceil(x2)
            assert rows.max() - rows.min() + 1 >= (y2 - y1) - 2
            assert cols.max() - cols.min() + 1 >= (x2 - x1) - 2


def test_shape_masks_by_hand():
    """A 4-pixel square at (1, 1) covers 16 pixels; a disc of diameter 4 at (0, 0) the 12
    pixel centres within 2 of (2, 2); a triangle of side 4 at (0, 0) is 1 + 1 + 2 ... wide,
    widening downwards: rows of 0, 2, 2, 4 pixels (centres |u - 2| <= v / 2)."""
    assert shape_mask(0, 1, 1, 4, 8).sum() == 16
    assert shape_mask(1, 0, 0, 4, 8).sum() == 12
    triangle = shape_mask(2, 0, 0, 4, 8)
    assert triangle[:4, :4].sum(axis=1).tolist() == [0, 2, 2, 4]


# -- mean average precision ---------------------------------------------------------------------

def test_average_precision_by_hand():
    """Ranked hits, miss, hit of two objects: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1;
    made monotone: 1 up to recall 1/2, 2/3 after: AP = 1/2 + 1/2 * 2/3 = 5/6."""
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1, 0.5, 2 / 3])) == \
        pytest.approx(5 / 6)


def test_mean_average_precision_by_hand():
    """Class 0: the hit, miss, hit ranking above (the miss a second box on an object already
    found: a duplicate); class 1: its one object found once (AP 1); class 2: no object, not
    counted. mAP = (5/6 + 1) / 2."""
    truths = [np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]]),
              np.array([[0, 5, 5, 15, 15]])]
    detections = [np.array([[0, 0, 10, 10, 0.9, 0, 0], [1, 1, 10, 10, 0.8, 0, 1],
                            [20, 20, 30, 31, 0.95, 1, 2], [0, 0, 5, 5, 0.1, 2, 3]]),
                  np.array([[5, 5, 15, 14, 0.7, 0, 0]])]
    assert mean_average_precision(detections, truths, 3) == pytest.approx((5 / 6 + 1) / 2)
    # at IoU 0.95 the class-1 box (IoU 10/11) misses, and so does the last class-0 one (0.9)
    assert mean_average_precision(detections, truths, 3, iou=0.95) == pytest.approx(
        (0.5 * 1.0 + 0) / 2)


# -- grid labels decode back --------------------------------------------------------------------

def test_grid_labels_decode_to_their_boxes():
    """Labels [class + 1, x, y, h, w] per cell, as the detector's scores and box (a large score
    for the class), decoded by yolo_decode: every object's box and class."""
    graph = cnnc.load("shapes_detector")
    detector = find_detector(graph)
    data = make_shapes(4, 64, seed=2)
    labels = grid_labels(data.objects, detector, (64, 64))
    assert labels.shape == (4, 5, 8, 8)
    grid = np.zeros((4, 8, 8, 8))
    for k in range(1, 4):
        grid[:, k] = np.where(labels[:, 0] == k, 30.0, 0.0)
    grid[:, 4:] = labels[:, 1:]
    op = get_op("yolo_decode")
    rows = op.reference([grid], graph.node(graph.node(graph.outputs["detections"]).inputs[0])
                        .attrs)
    for n, objects in enumerate(data.objects):
        kept = rows[n][rows[n, :, 4:].max(axis=1) > 0.99]
        assert len(kept) == len(objects)  # no two centres in one cell in these images
        for kind, *box in objects:
            match = np.abs(kept[:, :4] * 64 - box).max(axis=1) < 1e-6
            assert match.sum() == 1 and kept[match, 4:].argmax() == kind


# -- drawing ------------------------------------------------------------------------------------

def test_drawing_outlines_each_box_in_its_class_colour():
    image = np.zeros((3, 16, 16))
    picture = draw_detections(image, np.array([[2, 3, 10, 12, 0.9, 1, 0]]), CLASSES, scale=4)
    assert picture.size == (64, 64)
    pixels = np.asarray(picture)
    assert tuple(pixels[12 * 4, 6 * 4]) == PALETTE[1]  # on the bottom edge
    assert tuple(pixels[30, 60]) == (0, 0, 0)  # outside the box


def test_run_draws_the_detections(tmp_path, capsys):
    data = make_shapes(1, 64, seed=7)
    path = tmp_path / "shapes.png"
    Image.fromarray((data.images[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(path)
    out = tmp_path / "boxes.png"
    # the float64 reference: the same detections without compiling (tests/ops/test_detect.py
    # compiles yolo_decode and nms)
    args = ["run", "shapes_detector", "--param", "size=32", "--input", str(path), "--draw",
            str(out), "--reference"]  # (the image resized to 32 x 32)
    assert main(args) == 0
    assert "image 0: " in capsys.readouterr().out
    assert Image.open(out).size == (128, 128)
    assert main(args) == 2  # not over the user's file without --force
    assert "--force" in capsys.readouterr().err
    assert main(["run", "lenet5", "--input", str(path), "--draw", str(out), "--force"]) == 2
    assert "--draw needs a detector" in capsys.readouterr().err


def test_detector_refusals(capsys):
    with pytest.raises(DetectionError, match="has no output made by nms"):
        find_detector(cnnc.load("lenet5"))
    assert main(["train", "lenet5", "--data", "shapes", "--epochs", "1"]) == 2
    assert "--data shapes trains a detector" in capsys.readouterr().err
    assert main(["train", "shapes_detector", "--data", "shapes", "--mirror"]) == 2
    assert "would move the shapes but not their boxes" in capsys.readouterr().err
    assert main(["train", "shapes_detector", "--data", "shapes", "--param", "classes=4"]) == 2
    assert "--data shapes has 3 classes" in capsys.readouterr().err
