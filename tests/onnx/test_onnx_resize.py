"""ONNX Resize imported and compiled: one model of several Resize nodes (every path of the
generated kernel: nearest with each rounding, bilinear in closed form, bicubic and antialiased
filters, tf_crop_and_resize's extrapolation), on drawn shapes, run by the generated kernels
against ONNX Runtime and, element by element, against the float64 reference within each
kernel's error bound (``cnnc check``). Few examples: each shape compiles its own kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnc.dsl.builder import load_network  # noqa: E402
from cnnc.runtime.check import check_model, format_rows  # noqa: E402
from cnnc.runtime.model import compile as compile_model  # noqa: E402
from cnnc.runtime.onnx import import_onnx  # noqa: E402

CROP = [-0.25, 0.25, 1.25, 0.75]  # (top, left) to (bottom, right): past the input both ways


def resize_branches(c: int, h: int, w: int) -> list[tuple[str, dict[str, Any], dict]]:
    """(output, Resize attributes, constant inputs) for one input of c x 2h x 2w (even, so
    antialiasing by 1/2 has whole lengths, as ONNX Runtime needs to agree; 2h <= 8 and
    2w <= 10). None of them samples within float32's reach of a rounding or crop boundary
    without being on it, nor keeps an axis's length (ONNX Runtime would leave it as it is)."""
    H, W = 2 * h, 2 * w
    return [
        ("nearest_floor", dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                               nearest_mode="floor"), {"scales": [1, 1, 2, 3]}),
        ("nearest_half_up", dict(mode="nearest", nearest_mode="round_prefer_ceil"),
         {"scales": [1, 1, 2, 0.5]}),
        ("bilinear", dict(mode="linear"), {"sizes": [H + 3, 2 * W]}),
        ("bicubic_align", dict(mode="cubic", coordinate_transformation_mode="align_corners"),
         {"sizes": [2 * H + 1, W + 2]}),
        ("bicubic_antialias", dict(mode="cubic", antialias=1, exclude_outside=1,
                                   cubic_coeff_a=-0.5), {"scales": [1, 1, 0.5, 0.5]}),
        ("bilinear_antialias", dict(mode="linear", antialias=1), {"sizes": [h, W + 1]}),
        # (m - 1 = 8 and 13: no output lands on the input's edge)
        ("bilinear_crop", dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize",
                               extrapolation_value=2.5), {"roi": CROP, "sizes": [9, 14]}),
    ]


def resize_model(c: int, h: int, w: int) -> Any:
    nodes, inits = [], []
    for name, attrs, consts in resize_branches(c, h, w):
        inputs = ["x", "", "", ""]
        if "roi" in consts:
            inits.append(numpy_helper.from_array(np.array(consts["roi"], np.float32),
                                                 f"{name}_roi"))
            inputs[1] = f"{name}_roi"
        if "scales" in consts:
            inits.append(numpy_helper.from_array(np.array(consts["scales"], np.float32),
                                                 f"{name}_scales"))
            inputs[2] = f"{name}_scales"
            axes = {}
        else:
            inits.append(numpy_helper.from_array(np.array(consts["sizes"], np.int64),
                                                 f"{name}_sizes"))
            inputs[3] = f"{name}_sizes"
            axes = {"axes": [2, 3]}
        while not inputs[-1]:
            inputs.pop()
        nodes.append(helper.make_node("Resize", inputs, [name], name=name, **attrs, **axes))
    graph = helper.make_graph(
        nodes, "resizes", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["N", c, 2 * h, 2 * w])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", c, None, None])
         for name, _, _ in resize_branches(c, h, w)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)


@settings(max_examples=2, derandomize=True, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 5))
def test_compiled_resizes_match_onnx_runtime_and_the_reference(c, h, w):
    model = resize_model(c, h, w)
    text, weights = import_onnx(model)
    graph = load_network(text)
    compiled = compile_model(graph, weights=weights)
    x = np.random.default_rng(c * 100 + h * 10 + w).standard_normal(
        (3, c, 2 * h, 2 * w)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    theirs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    ours = compiled.run({next(iter(graph.inputs)): x})
    assert len(ours) == len(theirs) == 7
    for (name, got), want in zip(ours.items(), theirs.values()):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    rows = check_model(compiled, batch=2)
    assert len(rows) == 7 and all(r.ok for r in rows), format_rows(rows, 1.0)
    assert max(r.fraction for r in rows) > 0.1  # the bounds are not vacuous
