"""RoI pooling (compiler/ops/roi.py): the float64 references against ONNX Runtime's MaxRoiPool
and RoiAlign on hypothesis-drawn regions (outside the map, of one pixel, on quarter pixels so
float32 and float64 agree on every bin edge and sample position); the compiled kernels against
the references (the gradients: tests/training/test_roi_gradients.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

import cnnc
from cnnc.compiler.ops import get_op


def run_ort(node, opset: int, feeds: dict[str, np.ndarray]) -> np.ndarray:
    inputs = [helper.make_tensor_value_info(k, TensorProto.INT64 if v.dtype == np.int64 else
                                            TensorProto.FLOAT, list(v.shape))
              for k, v in feeds.items()]
    graph = helper.make_graph([node], "roi", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@st.composite
def roi_cases(draw):
    """A map, and regions per image on quarter pixels of the image (spatial_scale maps them
    onto the map) reaching up to 3 pixels past every edge, some of one pixel."""
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    r = draw(st.integers(1, 3))
    coord = st.integers(-12, int(4 * (max(h, w) / scale + 3))).map(lambda q: q / 4)
    boxes = []
    for _ in range(n * r):
        x1, y1 = draw(coord), draw(coord)
        if draw(st.booleans()):  # a box of one pixel, or a point
            x2, y2 = x1 + draw(st.sampled_from([0.0, 1.0])), y1 + draw(st.sampled_from([0.0, 1.0]))
        else:
            x2, y2 = draw(coord), draw(coord)
        boxes.append((x1, y1, x2, y2))
    seed = draw(st.integers(0, 2 ** 31))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    rois = np.array(boxes, np.float32).reshape(n, r, 4)
    out = (draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([1, 2, 3])))
    return x, rois, scale, out


def with_batch_index(rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, r = rois.shape[:2]
    index = np.repeat(np.arange(n), r)
    return rois.reshape(-1, 4), index


@given(roi_cases())
def test_roi_maxpool_matches_onnxruntime(case):
    x, rois, scale, out = case
    flat, index = with_batch_index(rois)
    node = helper.make_node("MaxRoiPool", ["x", "rois"], ["y"], pooled_shape=list(out),
                            spatial_scale=scale)
    want = run_ort(node, 13, {"x": x, "rois": np.concatenate(
        [index[:, None].astype(np.float32), flat], axis=1)})
    op = get_op("roi_maxpool")
    attrs = op.canonicalize({"output": out, "spatial_scale": scale}, [])
    got = op.reference([x, rois], attrs)
    np.testing.assert_array_equal(got.reshape(want.shape), want)


@given(roi_cases(), st.sampled_from([1, 2]), st.sampled_from([10, 16]))
def test_roi_align_matches_onnxruntime(case, ratio, opset):
    """Opset 16's half-pixel coordinates and opset 10's (``output_half_pixel``)."""
    x, rois, scale, (ph, pw) = case
    pw = {3: 4}.get(pw, pw)  # bins of dyadic sizes: exact sample positions in float32
    flat, index = with_batch_index(rois)
    coordinates = "half_pixel" if opset == 16 else "output_half_pixel"
    extra = {"coordinate_transformation_mode": coordinates} if opset == 16 else {}
    node = helper.make_node("RoiAlign", ["x", "rois", "index"], ["y"], mode="avg",
                            output_height=ph, output_width=pw, sampling_ratio=ratio,
                            spatial_scale=scale, **extra)
    want = run_ort(node, opset, {"x": x, "rois": flat, "index": index.astype(np.int64)})
    op = get_op("roi_align")
    attrs = op.canonicalize({"output": (ph, pw), "spatial_scale": scale,
                             "sampling_ratio": ratio, "coordinates": coordinates}, [])
    got = op.reference([x, rois], attrs)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


def test_roi_align_adaptive_sampling_by_hand():
    """A 2 x 4 region at cells [0, 4) x [0, 2) (legacy coordinates) in one bin: ceil(2) x
    ceil(4) = 8 samples at the centres (0.5 + i, 0.5 + j), each the mean of its 2 x 2 cells
    ... of a map that is its column index: the mean of the x positions, 2.0."""
    x = np.tile(np.arange(5.0), (1, 1, 3, 1))
    attrs = get_op("roi_align").canonicalize(
        {"output": 1, "spatial_scale": 1.0, "sampling_ratio": 0,
         "coordinates": "output_half_pixel"}, [])
    got = get_op("roi_align").reference([x, np.array([[[0.0, 0.0, 4.0, 2.0]]])], attrs)
    assert got.shape == (1, 1, 1, 1, 1)
    assert got[0, 0, 0, 0, 0] == pytest.approx(2.0, abs=1e-15)


ROI = """network roi
input image: 3 x 12 x 10
input rois: 5 x 4
f = image -> conv(4, 3, pad=1)
f -> roi_maxpool(rois, output=(2, 3), spatial_scale=0.5) -> output m
f -> roi_align(rois, output=2, spatial_scale=0.5, sampling_ratio=2) -> output a
f -> roi_align(rois, output=(3, 2), spatial_scale=0.5, coordinates=output_half_pixel) -> output b
"""


@pytest.fixture(scope="module")
def roi_model():
    graph = cnnc.load(ROI)
    return graph, cnnc.compile(graph)


def test_compiled_kernels_equal_the_references(roi_model):
    """Regions inside, across the edges, far outside and of one pixel."""
    graph, model = roi_model
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    rois = rng.uniform(-6, 16, (2, 5, 4)).astype(np.float32)
    rois[0, 0] = (3, 4, 3, 4)  # one pixel
    rois[1, 1] = (30, 30, 40, 40)  # outside the image
    feed = {"image": x, "rois": rois}
    got = model.run(feed)
    want = cnnc.reference(graph, feed, model.params)
    for name in ("m", "a", "b"):
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert np.all(got["m"][1, 1] == 0) and np.all(got["a"][1, 1] == 0)  # nothing there


def test_shape_errors():
    with pytest.raises(cnnc.dsl.errors.DslError, match=r"roi_align needs regions \[R, 4\]"):
        cnnc.load("network t\ninput x: 2 x 7 x 6\ninput rois: 3 x 5\n"
                  "x -> roi_align(rois, output=2) -> output y\n")
    with pytest.raises(cnnc.dsl.errors.DslError, match="spatial_scale must be positive"):
        cnnc.load("network t\ninput x: 2 x 7 x 6\ninput rois: 3 x 4\n"
                  "x -> roi_maxpool(rois, output=2, spatial_scale=0) -> output y\n")
