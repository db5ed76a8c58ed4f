"""cnnc behind ONNX's backend interface, run by ONNX's own backend test runner.

The runner's node tests of the operators cnnc imports, its PyTorch-converted and PyTorch-operator
tests, and three of the light model zoo models: every test named in the lists below must pass
(a listed test that fails, fails the suite); the runner leaves every other test out. That the
others are refused cleanly (3-D or 5-D inputs, integer tensors, MaxPool's indices, ...; see
the README) is checked over every node test whose operators cnnc imports or folds, with their
expected outputs, by `test_every_node_test_passes_or_is_refused_cleanly`. The float64 reference
runs them; a few models also run compiled.
"""

from __future__ import annotations

import re
import unittest
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.backend.test import BackendTest  # noqa: E402

from cnnc.runtime.onnx import OnnxImportError  # noqa: E402
from cnnc.runtime.onnx.backend import CnncBackend  # noqa: E402
from cnnc.runtime.onnx.fold import FOLDERS  # noqa: E402
from cnnc.runtime.onnx.handlers import HANDLERS  # noqa: E402
from cnnc.runtime.reference import InputError  # noqa: E402

# Node tests cnnc passes (test_<name>_cpu).
NODE = [
    "averagepool_2d_ceil", "averagepool_2d_ceil_last_window_starts_on_pad",
    "averagepool_2d_default", "averagepool_2d_precomputed_pads",
    "averagepool_2d_precomputed_pads_count_include_pad", "averagepool_2d_precomputed_same_upper",
    "averagepool_2d_precomputed_strides", "averagepool_2d_same_lower", "averagepool_2d_same_upper",
    "averagepool_2d_strides", "basic_conv_with_padding", "basic_conv_without_padding",
    "batchnorm_epsilon", "batchnorm_example", "concat_2d_axis_1", "concat_2d_axis_negative_1",
    "constant_pad", "constant_pad_axes", "constant_pad_negative_axes", "conv_with_autopad_same",
    "conv_with_strides_and_asymmetric_padding", "conv_with_strides_no_padding",
    "conv_with_strides_padding", "convtranspose", "convtranspose_dilations",
    "convtranspose_group_2", "convtranspose_group_2_image_3", "convtranspose_pad",
    "convtranspose_pads", "flatten_axis1", "flatten_default_axis", "flatten_negative_axis3",
    "gemm_alpha", "gemm_beta", "gemm_default_no_bias", "gemm_default_scalar_bias",
    "gemm_default_single_elem_vector_bias", "gemm_default_vector_bias", "gemm_default_zero_bias",
    "gemm_transposeB", "globalaveragepool", "globalaveragepool_precomputed", "globalmaxpool",
    "globalmaxpool_precomputed", "group_normalization_epsilon", "group_normalization_example",
    "identity", "instancenorm_epsilon", "instancenorm_example", "logsoftmax_example_1",
    "logsoftmax_large_number", "lppool_2d_default", "lppool_2d_same_lower", "lppool_2d_same_upper",
    "lppool_2d_strides", "lrn", "lrn_default", "matmul_2d", "maxpool_2d_ceil",
    "maxpool_2d_ceil_output_size_reduce_by_one", "maxpool_2d_default", "maxpool_2d_dilations",
    "maxpool_2d_precomputed_pads", "maxpool_2d_precomputed_same_upper",
    "maxpool_2d_precomputed_strides", "maxpool_2d_same_lower", "maxpool_2d_same_upper",
    "maxpool_2d_strides", "resize_downsample_scales_linear", "resize_upsample_scales_linear",
    "resize_upsample_scales_linear_align_corners", "resize_upsample_scales_nearest",
    "resize_upsample_scales_nearest_axes_2_3", "resize_upsample_scales_nearest_axes_3_2",
    "resize_upsample_sizes_nearest", "resize_upsample_sizes_nearest_axes_2_3",
    "resize_upsample_sizes_nearest_axes_3_2", "softmax_example", "softmax_large_number",
    "squeeze_negative_axes", "unsqueeze_negative_axes", "upsample_nearest",
]
# PyTorch-converted and PyTorch-operator tests.
CONVERTED = [
    "AvgPool2d", "AvgPool2d_stride", "BatchNorm2d_eval", "BatchNorm2d_momentum_eval",
    "ConstantPad2d", "Conv2d", "Conv2d_depthwise", "Conv2d_depthwise_padded",
    "Conv2d_depthwise_strided", "Conv2d_depthwise_with_multiplier", "Conv2d_dilated",
    "Conv2d_groups", "Conv2d_groups_thnn", "Conv2d_no_bias", "Conv2d_padding", "Conv2d_strided",
    "ConvTranspose2d", "ConvTranspose2d_no_bias", "Linear", "Linear_no_bias", "LogSoftmax",
    "MaxPool2d", "MaxPool2d_stride_padding_dilation", "ReLU", "Sigmoid", "Softmax", "Tanh",
    "ZeroPad2d", "log_softmax_dim3", "log_softmax_lastdim", "operator_add_broadcast",
    "operator_add_size1_broadcast", "operator_add_size1_right_broadcast", "operator_addconstant",
    "operator_concat2", "operator_conv", "operator_convtranspose", "operator_flatten",
    "operator_mm", "operator_symbolic_override", "single_relu_model", "softmax_functional_dim3",
    "softmax_lastdim",
    # the operators of issue 9: PReLU (one slope, and PRelu-6's slope per channel), padding by
    # reflection and replication, Softplus, SELU
    "PReLU_2d", "PReLU_2d_multiparam", "ReflectionPad2d", "ReplicationPad2d", "Softplus",
    "operator_pad", "operator_selu",
]

# The rearranging ops (DepthToSpace / SpaceToDepth, also written out as Reshape-Transpose-
# Reshape) and pooling with padding beyond half the window or dilated average and Lp windows.
NODE += [
    "averagepool_2d_dilations", "averagepool_2d_pads", "averagepool_2d_pads_count_include_pad",
    "lppool_2d_dilations", "lppool_2d_pads", "maxpool_2d_pads",
    "depthtospace_crd_mode_example", "depthtospace_crd_mode_example_expanded",
    "depthtospace_example", "depthtospace_example_expanded", "spacetodepth",
    "spacetodepth_crd_mode_example", "spacetodepth_crd_mode_example_expanded",
    "spacetodepth_dcr_mode_example", "spacetodepth_dcr_mode_example_expanded",
    "spacetodepth_example", "spacetodepth_example_expanded", "spacetodepth_expanded",
]
CONVERTED += ["PixelShuffle"]

# ConvTranspose with output_shape or auto_pad SAME (pads derived from ONNX's formulas).
NODE += ["convtranspose_autopad_same", "convtranspose_kernel_shape", "convtranspose_output_shape"]

# Resize as ONNX defines it: every coordinate transformation, downsampling, bicubic
# (cubic_coeff_a, exclude_outside), antialiasing, tf_crop_and_resize, keep_aspect_ratio_policy.
NODE += [
    "resize_downsample_scales_cubic", "resize_downsample_scales_cubic_A_n0p5_exclude_outside",
    "resize_downsample_scales_cubic_antialias", "resize_downsample_scales_linear_antialias",
    "resize_downsample_scales_linear_half_pixel_symmetric", "resize_downsample_scales_nearest",
    "resize_downsample_sizes_cubic", "resize_downsample_sizes_cubic_antialias",
    "resize_downsample_sizes_linear_antialias", "resize_downsample_sizes_linear_pytorch_half_pixel",
    "resize_downsample_sizes_nearest", "resize_downsample_sizes_nearest_not_larger",
    "resize_downsample_sizes_nearest_not_smaller", "resize_tf_crop_and_resize",
    "resize_tf_crop_and_resize_axes_2_3", "resize_tf_crop_and_resize_axes_3_2",
    "resize_tf_crop_and_resize_extrapolation_value", "resize_upsample_scales_cubic",
    "resize_upsample_scales_cubic_A_n0p5_exclude_outside",
    "resize_upsample_scales_cubic_align_corners", "resize_upsample_scales_cubic_asymmetric",
    "resize_upsample_scales_linear_half_pixel_symmetric", "resize_upsample_sizes_cubic",
    "resize_upsample_sizes_nearest_ceil_half_pixel",
    "resize_upsample_sizes_nearest_floor_align_corners", "resize_upsample_sizes_nearest_not_larger",
    "resize_upsample_sizes_nearest_not_smaller",
    "resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric",
]

# The light zoo models take 2-20 s each on the float64 reference: the quickest run here.
LIGHT = ["squeezenet", "inception_v1"]
LIGHT += ["shufflenet"]  # ShuffleNet v1: its channel shuffles (under a second)


@pytest.fixture(scope="module", autouse=True)
def _onnx_home(tmp_path_factory):
    """The runner writes the light models' generated inputs under $ONNX_HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ONNX_HOME", str(tmp_path_factory.mktemp("onnx_home")))
    yield
    mp.undo()


WANTED = {f"test_{name}_cpu" for name in NODE + CONVERTED + LIGHT}
backend_test = BackendTest(CnncBackend, __name__)
for _name in sorted(WANTED):
    backend_test.include(f"^{re.escape(_name)}$")
# Only the listed tests are collected (the runner would report thousands of others skipped).
_FOUND: set[str] = set()
for _case_name, _case in backend_test.test_cases.items():
    _tests = {n: getattr(_case, n) for n in dir(_case) if n in WANTED}
    _FOUND |= set(_tests)
    globals()[_case_name] = type(_case_name, (unittest.TestCase,), _tests)
del _case, _case_name, _tests  # (pytest would collect the runner's full class)


def test_every_listed_test_exists():
    """A misspelt or renamed entry would silently run nothing."""
    assert sorted(WANTED - _FOUND) == []


# -- every node test: the right numbers or a clean refusal ------------------------------------

# What the importer's refusals start with: the operator, or the graph input or output, or the
# attribute it cannot use (each names what the user has to change).
REFUSAL = re.compile(r"(?:unsupported ONNX operator )?(?P<op>[A-Z]\w*) \((?:node |the node )"
                     r"|(?:input|output) '(?P<value>[^']*)'"
                     r"|attribute '[^']*' of (?P<attr_op>[A-Z]\w*) ")
TOL = 1e-4  # float32 tolerance: max |ours - expected| <= TOL * max(1, max |expected|)


def _refusal_names_the_model(message: str, model: onnx.ModelProto) -> bool:
    found = REFUSAL.match(message)
    if found is None:
        return False
    ops = {n.op_type for n in model.graph.node}
    values = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    return (found["op"] or found["attr_op"]) in ops or found["value"] in values


def _node_test_outcome(case: Any) -> tuple[str, str]:
    """('pass' | 'refused' | 'FAILED', detail) for one node test, run as ONNX's runner runs it
    (prepare, then run each data set; weights given as inputs are bound at run time) on the
    float64 reference."""
    try:
        rep = CnncBackend.prepare(case.model)
        for inputs, expected in case.data_sets:
            got = rep.run([_array(x) for x in inputs])
            expected = [_array(y) for y in expected]
            if len(got) != len(expected):
                return "FAILED", f"{len(got)} outputs, expected {len(expected)}"
            for k, (ours, theirs) in enumerate(zip(got, expected)):
                if ours.shape != theirs.shape:
                    return "FAILED", f"output {k}: shape {ours.shape}, expected {theirs.shape}"
                theirs = np.asarray(theirs, np.float64)
                err = float(np.max(np.abs(ours - theirs), initial=0.0))
                scale = max(1.0, float(np.max(np.abs(theirs), initial=0.0)))
                if not err <= TOL * scale:
                    return "FAILED", f"output {k}: a wrong number (error {err:.3g})"
    except OnnxImportError as e:
        message = str(e)
        if _refusal_names_the_model(message, case.model):
            return "refused", message
        return "FAILED", f"refused without naming the operator: {message}"
    except InputError as e:  # the float64 reference takes finite inputs only
        if "NaN or infinity" in str(e):
            return "refused", f"input refused by the reference: {e}"
        return "FAILED", f"InputError: {e}"
    except Exception as e:  # noqa: BLE001 - what this test looks for
        return "FAILED", f"{type(e).__name__}: {e}"
    return "pass", ""


def _array(x: Any) -> Any:
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x


def test_every_node_test_passes_or_is_refused_cleanly():
    """The README's claim, over every node test of the installed onnx package whose operators
    the importer maps or folds (not only the listed ones): each gives the expected outputs
    within float32 tolerance, or is refused with an OnnxImportError that names its operator
    (or the input, output or attribute), never a wrong number and never another exception.
    Inputs holding NaN or infinity are refused by the float64 reference instead."""
    from onnx.backend.test.loader import load_model_tests

    imported = set(HANDLERS) | set(FOLDERS) | {"Constant"}
    outcomes = {case.name: _node_test_outcome(case) for case in load_model_tests(kind="node")
                if {n.op_type for n in case.model.graph.node} <= imported}
    failed = [f"{name}: {detail}" for name, (kind, detail) in outcomes.items()
              if kind == "FAILED"]
    assert not failed, "\n".join(failed)
    passed = {name for name, (kind, _) in outcomes.items() if kind == "pass"}
    assert {f"test_{name}" for name in NODE} <= passed  # the listed ones, by this measure too


def test_resize_node_tests_refused_are_where_onnx_is_ambiguous():
    """Of ONNX's Resize node tests, two stay refused: align_corners with a scale whose length
    in x scale is not whole, where ONNX's reference (which wrote their expected outputs) and
    ONNX Runtime place the samples differently; the refusal says so."""
    from onnx.backend.test.loader import load_model_tests

    outcomes = {case.name: _node_test_outcome(case) for case in load_model_tests(kind="node")
                if case.name.startswith(("test_resize", "test_upsample"))}
    refused = {name: detail for name, (kind, detail) in outcomes.items() if kind != "pass"}
    assert sorted(refused) == ["test_resize_downsample_scales_cubic_align_corners",
                               "test_resize_downsample_scales_linear_align_corners"]
    assert all(outcomes[name][0] == "refused" and "align_corners with a scale" in detail
               and "place the samples differently" in detail for name, detail in refused.items())


# -- the backend's own behaviour --------------------------------------------------------------

def _conv_model(weights_as_inputs: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(
        np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])]
    inits = []
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]),
                   helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])]
    else:
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "conv", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32), "w": w, "b": b}


def _conv_expected(v: dict[str, np.ndarray]) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    model, _ = _conv_model(False)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(v["w"], "w"))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(v["b"], "b"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": v["x"]})[0]


def test_weights_given_as_inputs_are_bound_at_run_time():
    """Conv's weight and bias as graph inputs: bound as parameters, re-imported when they change
    (and not when they stay)."""
    model, v = _conv_model(True)
    rep = CnncBackend.prepare(model)
    (y,) = rep.run([v["x"], v["w"], v["b"]])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _conv_expected(v), rtol=1e-5, atol=1e-5)
    rep.run({"x": v["x"] * 2, "w": v["w"], "b": v["b"]})
    assert len(rep._cache) == 1
    v2 = dict(v, w=-v["w"])
    (y2,) = rep.run([v2["x"], v2["w"], v2["b"]])
    np.testing.assert_allclose(y2, _conv_expected(v2), rtol=1e-5, atol=1e-5)
    assert len(rep._cache) == 2


def test_compiled_path():
    """prepare(..., compiled=True) runs the generated kernels: the same numbers."""
    model, v = _conv_model(False)
    (ref,) = CnncBackend.run_model(model, [v["x"]])
    (comp,) = CnncBackend.prepare(model, compiled=True).run([v["x"]])
    np.testing.assert_allclose(comp, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref, _conv_expected(v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["test_basic_conv_with_padding", "test_maxpool_2d_strides",
                                  "test_gemm_default_vector_bias",
                                  "test_resize_downsample_scales_cubic_antialias",
                                  "test_resize_tf_crop_and_resize_extrapolation_value"])
def test_compiled_node_tests(name):
    """A few of ONNX's node tests through the compiled kernels (weights as inputs included)."""
    from onnx.backend.test.loader import load_model_tests

    (case,) = [t for t in load_model_tests(kind="node") if t.name == name]
    rep = CnncBackend.prepare(case.model, compiled=True)
    for inputs, expected in case.data_sets:
        outputs = rep.run([numpy_helper.to_array(x) if not isinstance(x, np.ndarray) else x
                           for x in inputs])
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_devices_and_refusals():
    assert CnncBackend.supports_device("CPU") and not CnncBackend.supports_device("CUDA")
    model, v = _conv_model(False)
    with pytest.raises(OnnxImportError, match="CPU"):
        CnncBackend.prepare(model, "CUDA")
    with pytest.raises(OnnxImportError, match="1 inputs"):
        CnncBackend.prepare(model).run([v["x"], v["x"]])
    sin = helper.make_model(helper.make_graph(
        [helper.make_node("Sin", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxImportError, match="Sin"):
        CnncBackend.prepare(sin)
