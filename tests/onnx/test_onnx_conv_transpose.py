"""ONNX ConvTranspose with ``output_shape`` or auto_pad SAME_UPPER / SAME_LOWER: the importer
derives explicit pads (and output padding) from ONNX's formulas; drawn shapes, strides,
dilations, kernels, output paddings and requested outputs, against ONNX Runtime on the float64
reference, and one compiled."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnc.compiler.ops.conv.transpose import transpose_out  # noqa: E402
from cnnc.dsl.builder import load_network  # noqa: E402
from cnnc.runtime.model import compile as compile_model  # noqa: E402
from cnnc.runtime.onnx import OnnxImportError, import_onnx  # noqa: E402
from cnnc.runtime.reference import run_reference  # noqa: E402


def conv_transpose_model(c: int, hw: tuple[int, int], w: np.ndarray, **attrs: Any) -> Any:
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)], "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, *hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1], None, None])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def onnx_runtime(model: Any, x: np.ndarray) -> np.ndarray | None:
    """ONNX Runtime's output, or None where it refuses the node."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), so,
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]
    except Exception:  # noqa: BLE001 - an invalid node (output too large for the stride)
        return None


def cnnc_reference(model: Any, x: np.ndarray) -> np.ndarray:
    text, weights = import_onnx(model)
    graph = load_network(text)
    (y,) = run_reference(graph, {next(iter(graph.inputs)): x}, weights).values()
    return y


@st.composite
def cases(draw) -> tuple[int, tuple[int, int], np.ndarray, dict[str, Any]]:
    c, k = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    hw = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    out_pad = tuple(draw(st.integers(0, s - 1)) for s in stride)
    attrs: dict[str, Any] = {"strides": list(stride), "dilations": list(dilation),
                             "output_padding": list(out_pad)}
    auto = draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER"]))
    if auto != "NOTSET":
        attrs["auto_pad"] = auto
    if auto == "NOTSET" or draw(st.booleans()):
        full = [transpose_out(n, r, s, d, 0, 0, p)
                for n, r, s, d, p in zip(hw, kernel, stride, dilation, out_pad)]
        attrs["output_shape"] = [draw(st.integers(1, f + 2)) for f in full]
    if draw(st.booleans()):
        attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(4)]  # ignored by both rules
    seed = draw(st.integers(0, 2**16))
    w = np.random.default_rng(seed).standard_normal((c, k, *kernel)).astype(np.float32)
    return c, hw, w, attrs


@given(case=cases())
@settings(max_examples=60, deadline=None)
def test_requested_outputs_match_onnx_runtime(case):
    c, hw, w, attrs = case
    if "auto_pad" in attrs:
        attrs.pop("pads", None)  # (ONNX forbids both)
    model = conv_transpose_model(c, hw, w, **attrs)
    x = np.random.default_rng(1).standard_normal((2, c, *hw)).astype(np.float32)
    theirs = onnx_runtime(model, x)
    assume(theirs is not None)
    try:
        ours = cnnc_reference(model, x)
    except OnnxImportError as e:
        # the one case ONNX Runtime takes and cnnc refuses: its reference disagrees
        assert "larger than the full one" in str(e) and "auto_pad" in attrs, str(e)
        return
    assert ours.shape == theirs.shape, attrs
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4, err_msg=str(attrs))


@pytest.mark.parametrize("attrs,words", [
    ({"auto_pad": "SAME_LOWER", "strides": [3, 3], "output_shape": [14, 14]},
     "larger than the full one"),
    ({"output_shape": [7]}, "output_shape [7] must give a height and a width"),
    ({"output_shape": [1, 1, 9, 9]}, "(the batch and channels left out)"),
    ({"kernel_shape": [2, 3]}, "kernel_shape [2, 3] is not the weight's 3 x 3"),
    ({"auto_pad": "SAME"}, "auto_pad 'SAME' is not an ONNX padding mode"),
    ({"strides": [2, 2], "output_shape": [15, 15]}, "output_padding"),
])
def test_refusals_name_the_attribute(attrs, words):
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(OnnxImportError) as e:
        import_onnx(conv_transpose_model(1, (4, 4), w, **attrs))
    assert str(e.value).startswith("ConvTranspose (") and words in str(e.value)


def test_output_shape_and_same_lower_compiled():
    """Pads from output_shape (its odd padding before the input) and from SAME_LOWER with
    dilation: asymmetric pads, run by the generated kernels."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    x = rng.standard_normal((2, 2, 4, 5)).astype(np.float32)
    for attrs in ({"strides": [2, 3], "output_shape": [8, 13]},
                  {"strides": [2, 2], "dilations": [1, 2], "auto_pad": "SAME_LOWER"}):
        model = conv_transpose_model(2, (4, 5), w, **attrs)
        theirs = onnx_runtime(model, x)
        assert theirs is not None
        text, weights = import_onnx(model)
        compiled = compile_model(load_network(text), weights=weights)
        (ours,) = compiled.run({"x": x}).values()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4, err_msg=str(attrs))
