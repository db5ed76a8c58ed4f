"""Detection post-processing (compiler/ops/detect.py): IoU against counting the unit cells two
integer boxes share (an independent computation), YOLO decoding against a torch transcription
of YOLOv2's formulas, NMS against ONNX Runtime's NonMaxSuppression on hypothesis-drawn boxes
(ties, empty results, every box suppressed, one class), imported from ONNX and compiled, and
the DSL chain `-> yolo_decode(...) -> nms(...)` compiled against the float64 reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import cnnc
from cnnc.compiler.backends.cuda.emulate import compiler_path
from cnnc.compiler.ops import get_op
from cnnc.compiler.ops.detect import (
    PADDING,
    box_iou,
    detections,
    encode_box,
    selected_indices,
)
from cnnc.dsl.errors import DslError
from cnnc.runtime.onnx.errors import OnnxImportError

# -- IoU ----------------------------------------------------------------------------------------


def cells(box) -> set[tuple[int, int]]:
    """The unit cells an integer box covers (corners in either order)."""
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))
    return {(x, y) for x in range(x1, x2) for y in range(y1, y2)}


def test_iou_of_a_hand_checked_pair():
    """[0, 2] x [0, 2] and [1, 3] x [1, 3] share one unit of 4 + 4 - 1 = 7."""
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0], [3.0, 3.0, 1.0, 1.0], [2.0, 0.0, 4.0, 2.0]])
    np.testing.assert_array_equal(box_iou(a, b), [[1 / 7, 1 / 7, 0.0]])


integer_box = st.lists(st.integers(0, 9), min_size=4, max_size=4)


@given(st.lists(integer_box, min_size=1, max_size=5), st.lists(integer_box, min_size=1,
                                                                  max_size=5))
def test_iou_counts_the_shared_cells(a, b):
    """IoU = shared cells / cells of either; a box of no area overlaps nothing."""
    got = get_op("iou").reference([np.array([a], float), np.array([b], float)], {})[0]
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            cp, cq = cells(p), cells(q)
            want = len(cp & cq) / len(cp | cq) if cp and cq else 0.0
            assert got[i, j] == pytest.approx(want, abs=1e-15)


# -- YOLO decoding ------------------------------------------------------------------------------

def torch_decode(x: np.ndarray, anchors: list[tuple[float, float]], classes: int,
                 fmt: str) -> np.ndarray:
    """YOLOv2's decoding, written out per anchor in torch (float64); the localization format
    permuted into YOLOv2's first (its box's h and w swapped, its class 0's share of the
    probability as the objectness: sigmoid(log(sum_{c>0} e^s_c) - s_0) softmax(s_{1..}) =
    softmax(s)_{1..})."""
    t = torch.tensor(x, dtype=torch.float64)
    n, _, rows, cols = t.shape
    out = torch.zeros(n, rows, cols, len(anchors), 4 + classes, dtype=torch.float64)
    gy, gx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    for a, (aw, ah) in enumerate(anchors):
        p = t[:, a * (5 + classes):(a + 1) * (5 + classes)]
        if fmt == "localization":
            s, box = p[:, :classes + 1], p[:, classes + 1:]
            objectness = torch.logsumexp(s[:, 1:], dim=1, keepdim=True) - s[:, :1]
            p = torch.cat([box[:, [0, 1, 3, 2]], objectness, s[:, 1:]], dim=1)
        cx = (gx + torch.sigmoid(p[:, 0])) / cols
        cy = (gy + torch.sigmoid(p[:, 1])) / rows
        w = aw * torch.exp(p[:, 2]) / cols
        h = ah * torch.exp(p[:, 3]) / rows
        out[..., a, 0], out[..., a, 1] = cx - w / 2, cy - h / 2
        out[..., a, 2], out[..., a, 3] = cx + w / 2, cy + h / 2
        probs = torch.softmax(p[:, 5:], dim=1).permute(0, 2, 3, 1)
        out[..., a, 4:] = torch.sigmoid(p[:, 4])[..., None] * probs
    return out.reshape(n, -1, 4 + classes).numpy()


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3),
       st.sampled_from(["yolo", "localization"]), st.integers(0, 2 ** 31))
def test_yolo_decode_matches_torch(anchors, classes, rows, cols, fmt, seed):
    rng = np.random.default_rng(seed)
    pairs = [tuple(rng.uniform(0.5, 4.0, 2)) for _ in range(anchors)]
    x = rng.standard_normal((2, anchors * (5 + classes), rows, cols)) * 3
    op = get_op("yolo_decode")
    attrs = op.canonicalize({"anchors": tuple(v for p in pairs for v in p),
                             "classes": classes, "format": fmt}, [])
    np.testing.assert_allclose(op.reference([x], attrs),
                               torch_decode(x, pairs, classes, fmt), rtol=1e-11,
                               atol=1e-14)


@given(st.floats(0.02, 0.6), st.floats(0.02, 0.6), st.floats(0, 0.4), st.floats(0, 0.4),
       st.sampled_from(["yolo", "localization"]))
def test_encode_box_is_decoded_back(w, h, left, top, fmt):
    """A box encoded into its cell's targets (``encode_box``) and written into a grid in the
    format's channels decodes to itself."""
    box = np.array([left, top, left + w, top + h])
    for centre, cells in ((left + w / 2, 5), (top + h / 2, 4)):  # a margin inside the cell
        assume(1e-3 < centre * cells % 1 < 1 - 1e-3)
    anchor = (1.5, 2.0)
    i, j, (tx, ty, tw, th) = encode_box(box, (4, 5), anchor)
    grid = np.zeros((1, 5 + 2, 4, 5))
    channels = [0, 1, 2, 3] if fmt == "yolo" else [3, 4, 6, 5]
    grid[0, channels, i, j] = tx, ty, tw, th
    op = get_op("yolo_decode")
    attrs = op.canonicalize({"anchors": anchor, "classes": 2, "format": fmt}, [])
    np.testing.assert_allclose(op.reference([grid], attrs)[0, i * 5 + j, :4], box, atol=1e-12)


# -- NMS against ONNX Runtime -------------------------------------------------------------------

def onnx_nms(boxes: int, classes: int, top_k: int, iou: float, score: float | None
             ) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array([top_k], np.int64), "top_k"),
             numpy_helper.from_array(np.array([iou], np.float32), "iou")]
    names = ["boxes", "scores", "top_k", "iou"]
    if score is not None:
        inits.append(numpy_helper.from_array(np.array([score], np.float32), "score"))
        names.append("score")
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", names, ["selected"], name="nms")], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", boxes, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, boxes])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["S", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def ort_selected(model: onnx.ModelProto, boxes: np.ndarray, scores: np.ndarray) -> list:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return [tuple(int(v) for v in row) for row in sess.run(None, {"boxes": boxes,
                                                                 "scores": scores})[0]]


def selected_of(padded: np.ndarray) -> list:
    """ONNX's selected indices of ``padded`` rows (``selected_indices``), as tuples."""
    return [tuple(int(v) for v in row) for row in selected_indices(padded)]


@st.composite
def nms_cases(draw):
    """Integer corners (IoU exact enough that float32 and float64 agree at a threshold),
    scores from ten values (ties), thresholds that keep all, some or none."""
    n, boxes, classes = draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 3))
    corners = draw(st.lists(st.integers(0, 12), min_size=n * boxes * 4,
                            max_size=n * boxes * 4))
    levels = draw(st.lists(st.integers(1, 10), min_size=n * classes * boxes,
                           max_size=n * classes * boxes))
    b = np.array(corners, np.float32).reshape(n, boxes, 4)
    s = (np.array(levels, np.float32) / 10).reshape(n, classes, boxes)
    iou = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
    score = draw(st.sampled_from([None, 0.0, 0.45, 1.0]))  # 1.0: every box below it
    return b, s, draw(st.integers(1, 5)), iou, score


@given(nms_cases())
def test_nms_reference_matches_onnxruntime(case):
    boxes, scores, top_k, iou, score = case
    classes = scores.shape[1]
    want = ort_selected(onnx_nms(boxes.shape[1], classes, top_k, iou, score), boxes, scores)
    attrs = get_op("nms").canonicalize({"iou": iou, "score": -3.4e38 if score is None else score,
                                        "top_k": top_k, "max_boxes": top_k * classes}, [])
    padded = get_op("nms").reference([boxes, scores], attrs)
    assert selected_of(padded) == want
    for image, rows in enumerate(detections(padded)):  # rows hold the boxes and scores
        k, c = rows[:, 6].astype(int), rows[:, 5].astype(int)
        np.testing.assert_array_equal(rows[:, :4], boxes[image, k])
        np.testing.assert_array_equal(rows[:, 4], scores[image, c, k])
        assert np.all(np.diff(rows[:, 4]) <= 0)  # best first
    assert np.all(padded[:, :, 5:][padded[:, :, 5] == PADDING] == PADDING)


@pytest.mark.parametrize("case, iou, score, kept", [
    ("every box suppressed by the first", 0.5, None, 1),  # one box of four, per class
    ("every score below the threshold", 0.5, 0.95, 0),
    ("nothing overlaps at IoU 1", 1.0, None, 4),
])
def test_nms_edge_cases_match_onnxruntime(case, iou, score, kept):
    """Four equal boxes (two of them with corners swapped) of scores 0.9, 0.9, 0.8, 0.7 in
    two classes."""
    boxes = np.array([[[1, 1, 5, 5], [5, 5, 1, 1], [1, 5, 5, 1], [1, 1, 5, 5]]], np.float32)
    scores = np.array([[[0.9, 0.9, 0.8, 0.7], [0.7, 0.8, 0.9, 0.9]]], np.float32)
    want = ort_selected(onnx_nms(4, 2, 4, iou, score), boxes, scores)
    attrs = get_op("nms").canonicalize({"iou": iou, "score": -3.4e38 if score is None else score,
                                        "top_k": 4, "max_boxes": 8}, [])
    got = selected_of(get_op("nms").reference([boxes, scores], attrs))
    assert got == want and len(got) == 2 * kept, case


def test_nms_of_one_class_with_ties_keeps_the_lower_index(tmp_path):
    """Two equal boxes of equal score: the first is kept, the second suppressed; a disjoint
    third survives; imported from ONNX and compiled, the same as ONNX Runtime."""
    boxes = np.array([[[0, 0, 4, 4], [0, 0, 4, 4], [5, 5, 9, 9]]], np.float32)
    scores = np.array([[[0.5, 0.5, 0.4]]], np.float32)
    model = onnx_nms(3, 1, 3, 0.5, 0.1)
    path = tmp_path / "nms.onnx"
    onnx.save(model, path)
    want = ort_selected(model, boxes, scores)
    assert want == [(0, 0, 0), (0, 0, 2)]
    compiled = cnnc.compile(str(path))
    padded = compiled.run({"boxes": boxes, "scores": scores})["selected"]
    assert selected_of(padded) == want
    assert len(detections(padded)[0]) == 2 and padded[0, 2, 5] == PADDING


def test_nms_refusals(tmp_path):
    model = onnx_nms(3, 1, 0, 0.5, None)  # max_output_boxes_per_class 0: selects nothing
    onnx.save(model, tmp_path / "none.onnx")
    with pytest.raises(OnnxImportError, match="max_output_boxes_per_class is absent or 0"):
        cnnc.compile(str(tmp_path / "none.onnx"))
    with pytest.raises(DslError, match=r"nms: iou must be in \[0, 1\], got 1.5"):
        cnnc.load(DETECTOR.replace("iou=0.5", "iou=1.5"))
    with pytest.raises(DslError, match="anchors takes pairs"):
        cnnc.load(DETECTOR.replace("[1, 1.5, 2.5, 2]", "[1, 1.5, 2.5]"))
    with pytest.raises(DslError, match="yolo_decode: 2 anchors of 5 \\+ 4 classes need a grid "
                                       "of 18 channels"):
        cnnc.load(DETECTOR.replace("classes=classes", "classes=4"))


# -- the DSL chain, compiled --------------------------------------------------------------------

DETECTOR = """network det(classes = 3)
input image: 3 x 16 x 16
image -> conv(8, 3, stride=2, pad=1) -> relu -> conv(2 * (5 + classes), 1) as head
      -> yolo_decode(anchors=[1, 1.5, 2.5, 2], classes=classes)
      -> nms(iou=0.5, score=0.05, top_k=6, max_boxes=10) -> output dets
"""


def test_yolo_decode_and_nms_compiled_equal_the_reference():
    """The host steps compute the float64 reference on the float32 values the kernels give:
    the same detections, boxes and scores within float32 rounding; a call returns a list of
    boxes per image."""
    graph = cnnc.load(DETECTOR)
    model = cnnc.compile(graph)
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = model.run({"image": x})["dets"]
    want = cnnc.reference(graph, {"image": x}, model.params)["dets"]
    assert got.shape == (3, 10, 7)
    np.testing.assert_array_equal(got[..., 5:], want[..., 5:])  # the same classes and boxes
    np.testing.assert_allclose(got[..., :5], want[..., :5], rtol=1e-5, atol=1e-6)
    boxes = model(x)
    assert isinstance(boxes, list) and len(boxes) == 3
    for rows, padded in zip(boxes, got):
        assert rows.shape == (int((padded[:, 5] >= 0).sum()), 7)


@pytest.mark.skipif(compiler_path() is None, reason="no C++ compiler for the CUDA emulation")
def test_detection_host_steps_run_on_a_gpu_target():
    """On a GPU target (emulated) the decoding and suppression are host steps between the
    CUDA kernels: their inputs downloaded, their outputs written back to the device; such a
    call is never captured as a CUDA graph (a replay would skip the host's Python), so its
    third call, on new images, still gives the CPU target's detections."""
    graph = cnnc.load(DETECTOR)
    gpu = cnnc.compile(graph, target="cuda-emu", seed=1)
    cpu = cnnc.compile(graph, seed=1)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
        got, want = gpu.run({"image": x})["dets"], cpu.run({"image": x})["dets"]
        np.testing.assert_array_equal(got[..., 5:], want[..., 5:])
        np.testing.assert_allclose(got[..., :5], want[..., :5], rtol=1e-5, atol=1e-6)
    assert gpu.executor.arena(2).graph is None
