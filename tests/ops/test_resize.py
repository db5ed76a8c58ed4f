"""Resizing's float64 reference (``compiler/ops/resize.py``) against two implementations of
ONNX's Resize written by others: ONNX's own reference (``onnx.reference``, next to the spec)
and ONNX Runtime, on drawn shapes, scales or sizes, modes, coordinate transformations,
roundings, cubic coefficients, exclusion, antialiasing and crop regions.

Where they disagree with each other, the drawn case is left out (``assume``), each for the
reason given. ONNX's reference takes the unrounded length in x scale where ONNX Runtime and
cnnc take the output's (align_corners and tf_crop_and_resize divide by it less 1,
pytorch_half_pixel tells a single output by it; the importer refuses such scales), and samples
pytorch_half_pixel's single output at -1/2 (ONNX's text and ONNX Runtime at 0: the same pixels
for nearest and unstretched bilinear, not for bicubic or antialiasing). ONNX
Runtime computes in float32, so nearest roundings and crop ranges within float32's reach of a
boundary go either way; it leaves an axis whose size does not change untouched whatever its
scale or crop region, and stretches its antialiasing filter by the output/input ratio rather
than the scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import AttrError, get_op
from cnnc.compiler.ops.resize import source_coordinates
from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError

ONNX_MODE = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic"}
# (as float32 holds them: ONNX's scales, roi and attributes are float32)
SCALES = [float(np.float32(s)) for s in (0.25, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)]
ROIS = [tuple(float(np.float32(v)) for v in roi) for roi in (
    (0.0, 0.0, 1.0, 1.0), (0.25, 0.1, 0.9, 1.3), (-0.2, 0.3, 0.6, 1.0), (0.5, -0.25, 1.2, 0.75))]
CUBIC_A = [float(np.float32(a)) for a in (-0.75, -0.5, -0.6)]


@st.composite
def cases(draw) -> dict[str, Any]:
    """A per-sample shape and the op's DSL attributes, with ``scale`` or ``size``."""
    mode = draw(st.sampled_from(["nearest", "bilinear", "bicubic"]))
    case: dict[str, Any] = {
        "shape": (draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))),
        "mode": mode,
        "coordinates": draw(st.sampled_from(["half_pixel", "half_pixel_symmetric",
                                             "pytorch_half_pixel", "align_corners",
                                             "asymmetric", "tf_crop_and_resize"]))}
    if draw(st.booleans()):
        case["scale"] = (draw(st.sampled_from(SCALES)), draw(st.sampled_from(SCALES)))
    else:
        case["size"] = (draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    if mode == "nearest":
        case["rounding"] = draw(st.sampled_from(["floor", "ceil", "round_prefer_floor",
                                                 "round_prefer_ceil"]))
    else:
        case["antialias"] = draw(st.booleans())
        case["exclude_outside"] = draw(st.booleans())
        if mode == "bicubic":
            case["cubic_a"] = draw(st.sampled_from(CUBIC_A))
    if case["coordinates"] == "tf_crop_and_resize":
        case["roi"] = draw(st.sampled_from(ROIS))
        case["extrapolation"] = draw(st.sampled_from([0.0, 2.5]))
    return case


def canonical(case: dict[str, Any]) -> dict[str, Any]:
    op = get_op("upsample")
    raw = {k: v for k, v in case.items() if k != "shape"}
    full = {a.name: raw.pop(a.name) if a.name in raw else a.default for a in op.signature}
    return op.canonicalize(full, [TensorType(case["shape"])])


def onnx_model(case: dict[str, Any], batch: int = 2, opset: int = 19) -> Any:
    """The case as one Resize node, written with onnx.helper (no cnnc code)."""
    attrs: dict[str, Any] = {"mode": ONNX_MODE[case["mode"]],
                             "coordinate_transformation_mode": case["coordinates"]}
    if "rounding" in case:
        attrs["nearest_mode"] = case["rounding"]
    if case.get("antialias"):
        attrs["antialias"] = 1
    # (ONNX Runtime takes exclude_outside for cubic and antialiased linear only: elsewhere
    # reading the edge pixel and leaving it out give the same numbers)
    if case.get("exclude_outside") and (case["mode"] == "bicubic" or case.get("antialias")):
        attrs["exclude_outside"] = 1
    if "cubic_a" in case:
        attrs["cubic_coeff_a"] = case["cubic_a"]
    if "extrapolation" in case:
        attrs["extrapolation_value"] = case["extrapolation"]
    c, h, w = case["shape"]
    inits = {"roi": np.array([0, 0, *case["roi"][:2], 1, 1, *case["roi"][2:]], np.float32)
             if "roi" in case else np.array([], np.float32)}
    if "scale" in case:
        inits["scales"] = np.array([1, 1, *case["scale"]], np.float32)
        inputs = ["x", "roi", "scales"]
    else:
        inits["sizes"] = np.array([batch, c, *case["size"]], np.int64)
        inputs = ["x", "roi", "", "sizes"]
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], **attrs)], "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=10)


def coordinates(case: dict[str, Any], attrs: dict[str, Any]) -> list[np.ndarray]:
    """Each axis's source coordinates (to leave out cases on a boundary, never to compare)."""
    return [source_coordinates(n, m, s, attrs["coordinates"], (attrs["roi"][k],
                                                                attrs["roi"][k + 2]))
            for k, (n, m, s) in enumerate(zip(case["shape"][1:], attrs["size"], attrs["scale"]))]


def near(values: np.ndarray, points: np.ndarray, margin: float, exact_too: bool) -> bool:
    """Whether a value lies within ``margin`` of one of ``points`` (on it counts only with
    ``exact_too``)."""
    gap = np.abs(values[:, None] - points[None, :])
    return bool(np.any((gap < margin) & ((gap > 0) | exact_too)))


def outside_onnx_ambiguities(case: dict[str, Any], attrs: dict[str, Any]) -> bool:
    coords = attrs["coordinates"]
    for n, m, s in zip(case["shape"][1:], attrs["size"], attrs["scale"]):
        if n * s != m and (coords == "tf_crop_and_resize" or coords == "align_corners" and m > 1
                           or coords == "pytorch_half_pixel" and m == 1):
            return False  # ONNX's reference: the length in x scale
        if coords == "pytorch_half_pixel" and m == 1 and case["mode"] != "nearest":
            return False  # ONNX's reference: -1/2
    return True


def clear_of_boundaries(case: dict[str, Any], attrs: dict[str, Any], margin: float,
                        float32: bool = False) -> bool:
    """No coordinate within ``margin`` of a whole or half number without being on it, and
    none on it either where the other side's arithmetic may miss it: a crop region (the others
    compute it in float32), or with ``float32`` a scale of size / in (float32's differs) or
    half_pixel_symmetric's offset."""
    exact_too = attrs["coordinates"] == "tf_crop_and_resize" or float32 and "size" in case
    for k, (n, x) in enumerate(zip(case["shape"][1:], coordinates(case, attrs))):
        # half_pixel_symmetric's offset, centre x (1 - size / (in x scale)), is a hair from 0
        # where in x scale is not the size exactly (a float32 scale): ONNX Runtime then reads
        # a coordinate that is whole in exact arithmetic just below it
        shifted = float32 and attrs["coordinates"] == "half_pixel_symmetric" and \
            n * attrs["scale"][k] != attrs["size"][k]
        # (ONNX's reference places its taps by x plus a padding width, whose float addition
        # may round a coordinate a hair from a whole number onto it: it then reads the pixels
        # one to the left)
        if near(x, np.arange(-4, 2 * n + 6) / 2, margin, exact_too or shifted):
            return False
        if attrs["coordinates"] == "tf_crop_and_resize" and \
                near(x, np.array([0, n - 1]), margin, True):
            return False
    return True


def assert_close(ours: np.ndarray, theirs: np.ndarray, tol: float, what: Any) -> None:
    assert ours.shape == theirs.shape, what
    scale = max(1.0, float(np.abs(ours).max(initial=0.0)))
    err = float(np.abs(ours - np.asarray(theirs, np.float64)).max(initial=0.0))
    assert err <= tol * scale, f"error {err:.3g} for {what}"


@given(case=cases(), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_reference_matches_onnx_reference_implementation(case, seed):
    attrs = canonical(case)
    assume(outside_onnx_ambiguities(case, attrs))
    assume(clear_of_boundaries(case, attrs, 1e-6))
    x = np.random.default_rng(seed).standard_normal((2, *case["shape"])).astype(np.float32)
    (theirs,) = ReferenceEvaluator(onnx_model(case)).run(None, {"x": x})
    ours = get_op("upsample").reference([x], attrs)
    assert_close(ours, theirs, 1e-5, case)


@given(case=cases(), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_reference_matches_onnx_runtime(case, seed):
    attrs = canonical(case)
    assume(outside_onnx_ambiguities(case, attrs))
    assume(clear_of_boundaries(case, attrs, 1e-4, float32=True))
    for n, m, s in zip(case["shape"][1:], attrs["size"], attrs["scale"]):
        # ONNX Runtime leaves an axis of unchanged length as it is, scale and crop aside
        assume(m != n or (s == 1 and attrs["coordinates"] != "tf_crop_and_resize"))
        assume(not attrs["antialias"] or n * s == m)  # it stretches by m / n
    x = np.random.default_rng(seed).standard_normal((2, *case["shape"])).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(onnx_model(case).SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"x": x})
    ours = get_op("upsample").reference([x], attrs)
    assert_close(ours, theirs, 1e-4, case)


def test_tf_half_pixel_for_nn_matches_onnx_runtime():
    """Opset 11's nearest-only transformation (x = (i + 1/2) / scale), gone from opset 13 and
    from ONNX's reference."""
    case = {"shape": (2, 3, 5), "mode": "nearest", "coordinates": "tf_half_pixel_for_nn",
            "scale": (2.0, 0.6), "rounding": "round_prefer_floor"}
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 5)).astype(np.float32)
    session = ort.InferenceSession(onnx_model(case, opset=11).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {"x": x})
    assert_close(get_op("upsample").reference([x], canonical(case)), theirs, 0.0, case)


# -- the DSL's forms ----------------------------------------------------------------------------

def test_pytorch_defaults_are_onnx_transformations():
    """``coordinates=pytorch`` (the default) is PyTorch's interpolate: nearest samples i / scale
    and floors it, bilinear and bicubic half_pixel, or align_corners with the flag."""
    t = [TensorType((3, 4, 5))]
    op = get_op("upsample")
    base = {a.name: a.default for a in op.signature}
    picked = {(mode, align): op.canonicalize(base | {"mode": mode, "align_corners": align},
                                             t)["coordinates"]
              for mode in ("nearest", "bilinear", "bicubic") for align in (False, True)
              if mode != "nearest" or not align}
    assert picked == {("nearest", False): "asymmetric", ("bilinear", False): "half_pixel",
                      ("bilinear", True): "align_corners", ("bicubic", False): "half_pixel",
                      ("bicubic", True): "align_corners"}
    default = op.canonicalize(base, t)
    assert (default["scale"], default["size"], default["rounding"]) == ((2.0, 2.0), (8, 10),
                                                                         "floor")


@pytest.mark.parametrize("raw,attr,words", [
    ({"align_corners": True}, "align_corners", "coordinates=align_corners"),
    ({"mode": "bilinear", "align_corners": True, "coordinates": "half_pixel"},
     "align_corners", "leave it out"),
    ({"antialias": True}, "antialias", "bilinear and bicubic"),
    ({"roi": (0, 0, 1, 1)}, "roi", "tf_crop_and_resize"),
    ({"coordinates": "tf_crop_and_resize", "roi": (0, 0, 1)}, "roi", "four numbers"),
    ({"scale": (2, -1)}, "scale", "positive"),
    ({"coordinates": "half"}, "coordinates", "half_pixel"),
])
def test_attribute_errors_name_the_attribute(raw, attr, words):
    op = get_op("upsample")
    full = {a.name: raw.get(a.name, a.default) for a in op.signature}
    with pytest.raises(AttrError) as e:
        op.canonicalize(full, [TensorType((3, 4, 4))])
    assert e.value.attr == attr and words in str(e.value)


def test_size_sets_the_output_and_the_scale():
    g = load_network("input x: 3 x 4 x 6\n"
                     "x -> upsample(size=(7, 3), mode=bicubic, antialias=true) -> output y\n")
    (node,) = [n for n in g.nodes() if n.op == "upsample"]
    assert node.type.shape == (3, 7, 3)
    assert node.attrs["scale"] == (7 / 4, 3 / 6)
    with pytest.raises(DslError, match="align_corners"):
        load_network("input x: 3 x 4 x 6\nx -> upsample(2, align_corners=true) -> output y\n")


@pytest.mark.parametrize("a,degree", [(-0.6, 0), (-0.75, 0), (-0.5, 2)])
def test_cubic_reproduces_polynomials_inside(a, degree):
    """Keys' cubic reproduces constants for any a (its weights sum to 1) and, with a = -1/2,
    polynomials up to degree 2 (Keys 1981): away from the edges, such a signal resized is the
    signal sampled at the source coordinates."""
    case = {"shape": (1, 1, 12), "mode": "bicubic", "coordinates": "half_pixel",
            "scale": (1.0, 1.75), "cubic_a": a}
    attrs = canonical(case)
    poly = np.polynomial.Polynomial([3.0, -0.5, 0.25][:degree + 1])
    x = poly(np.arange(12, dtype=np.float64)).reshape(1, 1, 1, 12)
    y = get_op("upsample").reference([x], attrs)[0, 0, 0]
    src = source_coordinates(12, attrs["size"][1], 1.75, "half_pixel")
    inside = (src >= 1) & (src <= 10)
    assert inside.sum() >= 15
    np.testing.assert_allclose(y[inside], poly(src[inside]), rtol=0, atol=1e-12)
