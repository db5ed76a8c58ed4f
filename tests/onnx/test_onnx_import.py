"""ONNX import: models built here with `onnx.helper` (independently of cnnc's exporter), run by
ONNX Runtime, imported to DSL + weights, built with `load_network`, and run by cnnc's float64
reference. Outputs must agree within float32 tolerance: max |ref - ORT| <= 1e-4 * max(1, |ref|).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnc.dsl.builder import load_network  # noqa: E402
from cnnc.runtime.cli import main  # noqa: E402
from cnnc.runtime.onnx import OnnxImportError, export_onnx, import_onnx  # noqa: E402
from cnnc.runtime.reference import run_reference  # noqa: E402

RNG = np.random.default_rng(1234)


def _so() -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def make_model(nodes: list, inputs: dict[str, tuple], inits: dict[str, np.ndarray] | None = None,
               opset: int = 17, outputs: tuple[str, ...] = ("y",), name: str = "g") -> Any:
    """A model whose inputs have a symbolic batch: `inputs` maps name -> per-sample shape."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["batch", *s])
         for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k)
                     for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    # Output types from ONNX's own shape inference (the checker wants their shapes).
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             + list(inferred.graph.input)}
    for k, out in enumerate(model.graph.output):
        if known.get(out.name) is not None and known[out.name].type.tensor_type.HasField("shape"):
            out.type.CopyFrom(known[out.name].type)
        else:  # ops shape inference does not cover: ask ONNX Runtime for the rank
            session = ort.InferenceSession(model.SerializeToString(), _so(),
                                           providers=["CPUExecutionProvider"])
            feeds = {k: np.zeros((2, *s), np.float32) for k, s in inputs.items()}
            rank = session.run(None, feeds)[k].ndim
            out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT,
                                                       ["batch"] + [None] * (rank - 1)))
    onnx.checker.check_model(model)
    return model


def roundtrip(model: Any, batch: int = 2, tol: float = 1e-4) -> tuple[str, dict]:
    """Import `model`, run both sides on the same random input, compare every output."""
    text, weights = import_onnx(model)
    graph = load_network(text)
    session = ort.InferenceSession(model.SerializeToString(), _so(),
                                   providers=["CPUExecutionProvider"])
    onnx_inputs = [i.name for i in session.get_inputs()]
    feeds = {name: rand(batch, *graph.node(nid).type.shape) for name, nid in graph.inputs.items()}
    theirs = session.run(None, {o: feeds[n] for o, n in zip(onnx_inputs, graph.inputs)})
    ours = run_reference(graph, feeds, weights)
    assert len(ours) == len(theirs)
    for (name, mine), other in zip(ours.items(), theirs):
        assert mine.shape == other.shape, (name, mine.shape, other.shape, text)
        scale = max(1.0, float(np.max(np.abs(mine))))
        err = float(np.max(np.abs(mine - other)))
        assert err <= tol * scale, f"{name}: error {err:.3g} (scale {scale:.3g})\n{text}"
    return text, weights


def node(op: str, inputs: list[str], output: str = "y", **attrs: Any) -> Any:
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


def single(op: str, shape: tuple, inits: dict | None = None, opset: int = 17,
           extra: list[str] = (), **attrs: Any) -> Any:
    return make_model([node(op, ["x", *extra], **attrs)], {"x": shape}, inits, opset)


# -- one operator at a time -------------------------------------------------------------------

CONV_W = rand(6, 3, 3, 3)
GROUP_W = rand(6, 2, 3, 2)

SINGLE_OPS = [
    ("conv", lambda: single("Conv", (3, 9, 8), {"w": CONV_W, "b": rand(6)}, extra=["w", "b"],
                            pads=[1, 0, 2, 1], strides=[2, 1])),
    ("conv_same_upper", lambda: single("Conv", (3, 9, 8), {"w": CONV_W}, extra=["w"],
                                       auto_pad="SAME_UPPER", strides=[2, 2])),
    ("conv_same_lower", lambda: single("Conv", (3, 8, 8), {"w": CONV_W}, extra=["w"],
                                       auto_pad="SAME_LOWER", strides=[1, 2])),
    ("conv_groups", lambda: single("Conv", (6, 7, 7), {"w": GROUP_W}, extra=["w"], group=3,
                                   kernel_shape=[3, 2])),
    ("conv_transpose", lambda: single("ConvTranspose", (3, 5, 4), {"w": rand(3, 4, 3, 3),
                                                                   "b": rand(4)},
                                      extra=["w", "b"], strides=[2, 2], pads=[1, 0, 1, 1],
                                      output_padding=[1, 0])),
    ("batchnorm", lambda: single("BatchNormalization", (4, 3, 3),
                                 {"s": rand(4), "b": rand(4), "m": rand(4),
                                  "v": np.abs(rand(4)) + 0.5},
                                 extra=["s", "b", "m", "v"], epsilon=1e-3)),
    ("batchnorm_features", lambda: single("BatchNormalization", (5,),
                                          {"s": rand(5), "b": rand(5), "m": rand(5),
                                           "v": np.abs(rand(5)) + 0.5},
                                          extra=["s", "b", "m", "v"])),
    ("instancenorm", lambda: single("InstanceNormalization", (4, 3, 5),
                                    {"s": rand(4), "b": rand(4)}, extra=["s", "b"])),
    ("groupnorm21", lambda: single("GroupNormalization", (4, 3, 5), {"s": rand(4), "b": rand(4)},
                                   opset=21, extra=["s", "b"], num_groups=2)),
    ("relu", lambda: single("Relu", (3, 4, 4))),
    ("leaky_relu", lambda: single("LeakyRelu", (3, 4, 4), alpha=0.3)),
    ("leaky_relu_default", lambda: single("LeakyRelu", (3, 4, 4))),
    ("sigmoid", lambda: single("Sigmoid", (7,))),
    ("hard_sigmoid", lambda: single("HardSigmoid", (3, 4, 4))),
    ("hard_swish", lambda: single("HardSwish", (3, 4, 4), opset=14)),
    ("tanh", lambda: single("Tanh", (3, 4, 4))),
    ("abs", lambda: single("Abs", (3, 4, 4))),
    ("gelu", lambda: single("Gelu", (3, 4, 4), opset=20)),
    ("gelu_tanh", lambda: single("Gelu", (3, 4, 4), opset=20, approximate="tanh")),
    ("clip11", lambda: make_model([node("Clip", ["x", "lo", "hi"])], {"x": (3, 4, 4)},
                                  {"lo": np.float32(0), "hi": np.float32(6)}, opset=11)),
    ("clip13_relu", lambda: make_model([node("Clip", ["x", "lo"])], {"x": (3, 4, 4)},
                                       {"lo": np.float32(0)}, opset=13)),
    ("softmax11_2d", lambda: single("Softmax", (7,), opset=11)),
    ("softmax13_channels", lambda: single("Softmax", (5, 2, 3), opset=13, axis=1)),
    ("log_softmax13_2d", lambda: single("LogSoftmax", (7,), opset=13)),
    ("log_softmax_width", lambda: single("LogSoftmax", (5, 2, 3), opset=17, axis=-1)),
    ("maxpool", lambda: single("MaxPool", (3, 9, 8), kernel_shape=[3, 3], strides=[2, 2],
                               pads=[1, 1, 1, 1], ceil_mode=1)),
    ("maxpool_dilated", lambda: single("MaxPool", (3, 9, 8), kernel_shape=[2, 2],
                                       dilations=[2, 2])),
    ("maxpool_same", lambda: single("MaxPool", (3, 9, 8), kernel_shape=[3, 3], strides=[2, 2],
                                    auto_pad="SAME_UPPER")),
    ("avgpool_exclude_pad", lambda: single("AveragePool", (3, 7, 7), kernel_shape=[3, 3],
                                           strides=[2, 2], pads=[1, 1, 1, 1])),
    ("avgpool_include_pad", lambda: single("AveragePool", (3, 7, 7), kernel_shape=[2, 3],
                                           pads=[1, 1, 0, 1], count_include_pad=1)),
    ("lppool", lambda: single("LpPool", (3, 6, 6), kernel_shape=[2, 2], strides=[2, 2], p=3)),
    ("global_avg", lambda: single("GlobalAveragePool", (3, 5, 4))),
    ("global_max", lambda: single("GlobalMaxPool", (3, 5, 4))),
    ("gemm", lambda: single("Gemm", (6,), {"w": rand(4, 6), "c": rand(4)}, extra=["w", "c"],
                            transB=1)),
    ("gemm_alpha_beta", lambda: single("Gemm", (6,), {"w": rand(6, 4), "c": rand(1, 4)},
                                       extra=["w", "c"], alpha=0.5, beta=2.0)),
    ("gemm_no_bias", lambda: single("Gemm", (6,), {"w": rand(4, 6)}, extra=["w"], transB=1)),
    ("matmul_add", lambda: make_model([node("MatMul", ["x", "w"], "h"),
                                       node("Add", ["h", "b"])], {"x": (6,)},
                                      {"w": rand(6, 3), "b": rand(3)})),
    ("flatten", lambda: single("Flatten", (3, 2, 2))),
    ("lrn", lambda: single("LRN", (6, 3, 3), size=3, alpha=0.01, beta=0.6, bias=2.0)),
    ("lrn_defaults", lambda: single("LRN", (6, 3, 3), size=5)),
    ("identity", lambda: single("Identity", (3, 2, 2))),
    ("dropout11", lambda: single("Dropout", (3, 2, 2), opset=11, ratio=0.3)),
    ("dropout13", lambda: make_model([node("Dropout", ["x", "r"])], {"x": (3, 2, 2)},
                                     {"r": np.float32(0.2)}, opset=13)),
    ("min_pool", lambda: make_model([node("Neg", ["x"], "n"),
                                     node("MaxPool", ["n"], "m", kernel_shape=[2, 2]),
                                     node("Neg", ["m"], "y")], {"x": (3, 4, 4)})),
]


@pytest.mark.parametrize("name,build", SINGLE_OPS, ids=[c[0] for c in SINGLE_OPS])
def test_single_op(name, build):
    roundtrip(build())


# -- Flatten's axis: rows of the dimensions before it --------------------------------------------

@pytest.mark.parametrize("shape,axis", [
    ((3, 4, 5), 1), ((3, 4, 5), -3), ((1, 4, 5), 2), ((1, 4, 5), -2), ((1, 1, 5), 3),
    ((1, 1, 1), 4), ((1, 1, 1), -1), ((6,), 1), ((1,), 2), ((1,), -1),
])
def test_flatten_axis_after_dimensions_of_size_one(shape, axis):
    """(N x the dimensions before the axis, the rest): one row per sample where those are 1."""
    text, _ = roundtrip(single("Flatten", shape, opset=13, axis=axis))
    assert "flatten" in text or len(shape) == 1


def test_flatten_axis_0_where_the_batch_is_declared_1():
    graph = helper.make_graph(
        [node("Flatten", ["x"], axis=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    text, _ = roundtrip(model, batch=1)
    assert "flatten" in text


@pytest.mark.parametrize("shape,axis,words", [
    ((3, 4, 5), 0, "axis 0 folds the batch into the features"),
    ((3, 4, 5), 2, "axis 2 folds each sample's first 1 dimension (3) into the batch"),
    ((3, 4, 5), -1, "axis -1 (3) folds each sample's first 2 dimensions (3x4)"),
    ((1, 4, 5), 3, "first 2 dimensions (1x4)"),
    ((6,), 2, "first 1 dimension (6)"),
    ((3, 4, 5), 5, "axis 5 is out of range for a rank-4 tensor (-4 to 4)"),
    ((3, 4, 5), -5, "axis -5 is out of range"),
])
def test_flatten_that_folds_samples_into_the_batch_is_refused(shape, axis, words):
    with pytest.raises(OnnxImportError) as e:
        import_onnx(single("Flatten", shape, opset=13, axis=axis) if abs(axis) <= 4 else
                    _unchecked([node("Flatten", ["x"], axis=axis)], {}, 13, shape))
    assert str(e.value).startswith("Flatten (") and words in str(e.value)


# -- opset variations where signatures changed ------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
def test_pad_opsets(opset):
    """Pad takes pads (and from opset 18 axes) as inputs."""
    if opset >= 18:
        nodes = [node("Pad", ["x", "pads", "v", "axes"], mode="constant")]
        inits = {"pads": np.array([1, 2, 0, 3], np.int64), "v": np.float32(0.5),
                 "axes": np.array([2, 3], np.int64)}
    else:
        nodes = [node("Pad", ["x", "pads", "v"], mode="constant")]
        inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 0, 3], np.int64), "v": np.float32(0.5)}
    text, _ = roundtrip(make_model(nodes, {"x": (2, 3, 4)}, inits, opset))
    assert "pad((1, 2, 0, 3), value=0.5)" in text


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
@pytest.mark.parametrize("mode", ["nearest_asym_floor", "nearest_half_pixel", "linear_pytorch",
                                  "linear_align", "linear_half_pixel"])
def test_resize_opsets(opset, mode):
    kind, coord = mode.split("_", 1)
    attrs: dict[str, Any] = {"mode": "nearest" if kind == "nearest" else "linear"}
    coord = {"asym_floor": "asymmetric", "align": "align_corners",
             "pytorch": "pytorch_half_pixel"}.get(coord, coord)
    attrs["coordinate_transformation_mode"] = coord
    if mode == "nearest_asym_floor":
        attrs["nearest_mode"] = "floor"
    scales = np.array([1, 1, 2, 3], np.float32)
    model = make_model([node("Resize", ["x", "roi", "scales"], **attrs)], {"x": (2, 3, 4)},
                       {"roi": np.array([], np.float32), "scales": scales}, opset)
    text, _ = roundtrip(model)
    assert "upsample" in text


@pytest.mark.parametrize("opset", [13, 18])
def test_resize_sizes_and_axes(opset):
    if opset >= 18:
        nodes = [node("Resize", ["x", "", "", "sizes"], mode="nearest", axes=[2, 3],
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
        inits = {"sizes": np.array([6, 8], np.int64)}
    else:
        nodes = [node("Resize", ["x", "", "", "sizes"], mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
        inits = {"sizes": np.array([2, 2, 6, 8], np.int64)}
    # (The batch in `sizes` is 2 here, as a full sizes input has it: the test runs batch 2.)
    roundtrip(make_model(nodes, {"x": (2, 3, 4)}, inits, opset))


@pytest.mark.parametrize("opset", [11, 13, 21])
def test_reshape_squeeze_opsets(opset):
    """Squeeze/Unsqueeze take axes as an attribute before 13, an input from 13."""
    if opset < 13:
        nodes = [node("GlobalAveragePool", ["x"], "g"),
                 node("Squeeze", ["g"], "s", axes=[2, 3]),
                 node("Unsqueeze", ["s"], "u", axes=[2]),
                 node("Reshape", ["u", "shape"])]
        inits = {"shape": np.array([0, -1], np.int64)}
    else:
        nodes = [node("GlobalAveragePool", ["x"], "g"),
                 node("Squeeze", ["g", "ax"], "s"),
                 node("Unsqueeze", ["s", "ax1"], "u"),
                 node("Reshape", ["u", "shape"])]
        inits = {"ax": np.array([2, 3], np.int64), "ax1": np.array([2], np.int64),
                 "shape": np.array([0, -1], np.int64)}
    roundtrip(make_model(nodes, {"x": (5, 3, 3)}, inits, opset))


def test_reshape_to_feature_maps():
    nodes = [node("Reshape", ["x", "shape"], "r"), node("Relu", ["r"])]
    text, _ = roundtrip(make_model(nodes, {"x": (24,)}, {"shape": np.array([-1, 6, 2, 2],
                                                                             np.int64)}))
    assert "reshape((6, 2, 2))" in text


# -- graphs: branches, constants, shape subgraphs ---------------------------------------------

def test_residual_concat_and_constant_operands():
    """Branches, tensor + tensor, per-channel constants (Add/Sub/Mul/Div), Constant nodes."""
    c = 4
    nodes = [
        node("Conv", ["x", "w1"], "a", pads=[1, 1, 1, 1]),
        node("Relu", ["a"], "r"),
        node("Conv", ["r", "w2"], "b", pads=[1, 1, 1, 1]),
        node("Add", ["b", "a"], "s"),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
            rand(1, c, 1, 1), "k")),
        node("Mul", ["s", "k"], "m"),
        node("Sub", ["half", "m"], "d"),
        node("Div", ["d", "three"], "q"),
        node("Sub", ["q", "r"], "q2"),
        node("Mul", ["q2", "r"], "q3"),
        node("Concat", ["q3", "r"], "cat", axis=1),
        node("GlobalAveragePool", ["cat"], "g"),
        node("Flatten", ["g"], "f"),
        node("Gemm", ["f", "wd", "bd"], "y", transB=1),
    ]
    inits = {"w1": rand(c, 3, 3, 3), "w2": rand(c, c, 3, 3), "half": np.float32(0.5),
             "three": np.full((c, 1, 1), 3.0, np.float32), "wd": rand(5, 2 * c), "bd": rand(5)}
    text, _ = roundtrip(make_model(nodes, {"x": (3, 6, 5)}, inits))
    # the residual's value is named once and used twice; the head is one chain
    assert text.count("conv(") == 2 + 3  # two convolutions and three per-channel constants


def test_pytorch_style_pad_and_resize_subgraphs():
    """F.pad and interpolate(size=...) as PyTorch writes them: shape arithmetic over
    constants and Shape(x), folded at import."""
    i64 = TensorProto.INT64
    nodes = [
        # pads = reshape(transpose(reverse(reshape(concat(pad, zeros), (-1, 2)))), -1)
        helper.make_node("Constant", [], ["p"], value=helper.make_tensor("p", i64, [4],
                                                                         [1, 2, 0, 1])),
        helper.make_node("Constant", [], ["n"], value=helper.make_tensor("n", i64, [1], [4])),
        node("ConstantOfShape", ["n"], "zeros", value=helper.make_tensor("z", i64, [1], [0])),
        node("Concat", ["p", "zeros"], "cat", axis=0),
        node("Reshape", ["cat", "m1_2"], "pairs"),
        node("Slice", ["pairs", "sm1", "send", "s0", "sm1"], "rev"),
        node("Transpose", ["rev"], "tr", perm=[1, 0]),
        node("Reshape", ["tr", "m1"], "flat"),
        node("Cast", ["flat"], "pads", to=i64),
        node("Pad", ["x", "pads", "zero"], "padded", mode="constant"),
        # sizes = concat(shape(x)[0:2], [2 * H, 2 * W])
        node("Shape", ["padded"], "shape"),
        node("Slice", ["shape", "s0", "s2"], "nc"),
        node("Gather", ["shape", "hw_idx"], "hw", axis=0),
        node("Mul", ["hw", "two"], "hw2"),
        node("Concat", ["nc", "hw2"], "sizes", axis=0),
        node("Resize", ["padded", "", "", "sizes"], "up", mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        # x.view(x.size(0), -1)
        node("Shape", ["up"], "shape2"),
        node("Gather", ["shape2", "zero_idx"], "batch", axis=0),
        node("Unsqueeze", ["batch", "s0"], "batch1"),
        node("Concat", ["batch1", "m1"], "target", axis=0),
        node("Reshape", ["up", "target"], "y"),
    ]
    inits = {"m1_2": np.array([-1, 2], np.int64), "m1": np.array([-1], np.int64),
             "s0": np.array([0], np.int64), "s2": np.array([2], np.int64),
             "send": np.array([np.iinfo(np.int64).min], np.int64),
             "sm1": np.array([-1], np.int64), "zero": np.float32(0.0),
             "hw_idx": np.array([2, 3], np.int64), "two": np.int64(2),
             "zero_idx": np.int64(0)}
    text, _ = roundtrip(make_model(nodes, {"x": (2, 3, 4)}, inits, opset=13))
    # torch's (left, right, top, bottom) = (1, 2, 0, 1) is cnnc's (top, left, bottom, right)
    assert "pad((0, 1, 1, 2))" in text
    assert "upsample" in text and "flatten" in text


def test_multiple_outputs_keep_their_order():
    nodes = [node("Relu", ["x"], "a"), node("Sigmoid", ["a"], "b"), node("Tanh", ["a"], "c")]
    model = make_model(nodes, {"x": (3, 2, 2)}, outputs=("c", "x", "b"))
    text, _ = roundtrip(model)
    graph = load_network(text)
    assert list(graph.outputs) == ["c", "x", "b"]


def test_names_are_sanitized_and_unique():
    """ONNX names may be anything: they become identifiers and never leak into the source
    outside a comment."""
    evil = "x\n-> output hacked # \"'"
    nodes = [
        helper.make_node("Conv", [evil, "w"], ["relu1"], name="conv"),
        helper.make_node("Relu", ["relu1"], ["0 weird/name"], name="relu1"),
        helper.make_node("Conv", ["0 weird/name", "w2"], ["out put"], name="conv "),
        helper.make_node("Add", ["out put", "0 weird/name"], ["in"], name="network"),
    ]
    model = make_model(nodes, {evil: (3, 4, 4)}, {"w": rand(3, 3, 1, 1), "w2": rand(3, 3, 1, 1)},
                       outputs=("in",))
    text, weights = roundtrip(model)
    code = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any("output hacked" in line or "\"" in line for line in code)
    assert list(load_network(text).outputs) == ["in_"]
    assert len(weights) == 2 and len({k.split(".")[0] for k in weights}) == 2


# -- errors -----------------------------------------------------------------------------------

def test_unsupported_operator_is_named():
    model = make_model([helper.make_node("Sin", ["x"], ["y"], name="my_sin")], {"x": (3, 2, 2)})
    with pytest.raises(OnnxImportError) as e:
        import_onnx(model)
    msg = str(e.value)
    assert "Sin" in msg and "my_sin" in msg and "opset 17" in msg


@pytest.mark.parametrize("build,words", [
    (lambda: make_model([node("Clip", ["x", "lo", "hi"])], {"x": (3,)},
                        {"lo": np.float32(-1), "hi": np.float32(1)}), ["Clip", "relu6"]),
    (lambda: single("Resize", (2, 3, 3), {"s": np.array([1, 2, 2, 2], np.float32)},
                    extra=["", "s"], mode="cubic"), ["Resize", "height and width"]),
    (lambda: single("Resize", (2, 3, 5), {"s": np.array([1, 1, 1, 0.6], np.float32)},
                    extra=["s"], opset=10), ["Resize", "nearest downsampling before opset 11"]),
    (lambda: single("Pad", (2, 3, 3), {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)},
                    extra=["p"], mode="wrap", opset=19), ["wrap"]),
    (lambda: single("Softmax", (3, 2, 2), opset=11, axis=1), ["Softmax", "axes"]),
    (lambda: single("Conv", (3, 4, 4), extra=["x"]), ["constant"]),
])
def test_refusals_are_clean(build, words):
    with pytest.raises(OnnxImportError) as e:
        import_onnx(build())
    for w in words:
        assert w in str(e.value)


def test_bad_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 this is not a protobuf \xff\xff\xff")
    good = single("Relu", (3, 2, 2)).SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    for path in (garbage, truncated, tmp_path / "missing.onnx"):
        with pytest.raises(OnnxImportError):
            import_onnx(path)


def test_opset_newer_than_onnx_knows():
    model = single("Relu", (3, 2, 2))
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(OnnxImportError, match=f"opset {onnx.defs.onnx_opset_version() + 1}"):
        import_onnx(model)


# -- global pooling written as a reduction (PyTorch's dynamo exporter) -------------------------

@pytest.mark.parametrize("opset", [13, 17, 18, 20, 21])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_space_is_global_pooling(opset, op, keepdims):
    """Axes as an attribute before opset 18, as an input from 18 (negative axes too)."""
    axes = [2, 3] if keepdims else [-1, -2]
    if opset >= 18:
        nodes = [node(op, ["x", "axes"], keepdims=keepdims)]
        inits = {"axes": np.array(axes, np.int64)}
    else:
        nodes = [node(op, ["x"], axes=axes, keepdims=keepdims)]
        inits = {}
    text, _ = roundtrip(make_model(nodes, {"x": (3, 5, 4)}, inits, opset))
    pool = "globalavgpool" if op == "ReduceMean" else "globalmaxpool"
    assert pool in text and ("flatten" in text) == (not keepdims)


@pytest.mark.parametrize("axes", [[1], [1, 2, 3], [3]])
def test_reduce_over_other_axes_is_refused(axes):
    model = make_model([node("ReduceMean", ["x"], axes=axes)], {"x": (3, 5, 4)}, opset=13)
    with pytest.raises(OnnxImportError, match="ReduceMean .*height and width"):
        import_onnx(model)


# -- every opset --------------------------------------------------------------------------------

def small_net(opset: int) -> Any:
    """One network written for `opset`: conv, batch norm, relu, max pool, a residual add, global
    pooling, flatten and a dense layer. Opset 6 has its own spellings (is_test, broadcast)."""
    old = {"is_test": 1} if opset < 7 else {}
    nodes = [node("Conv", ["x", "w", "b"], "c", pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "s", "bb", "m", "v"], "n", **old),
             node("Relu", ["n"], "r"),
             node("Conv", ["r", "w2"], "c2", pads=[1, 1, 1, 1]),
             node("Add", ["c2", "r"], "a"),
             node("MaxPool", ["a"], "p", kernel_shape=[2, 2], strides=[2, 2]),
             node("GlobalAveragePool", ["p"], "g"),
             node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "fw", "fb"], "y", transB=1,
                  **({"broadcast": 1} if opset < 7 else {}))]
    inits = {"w": NET_W["w"], "b": NET_W["b"], "s": NET_W["s"], "bb": NET_W["bb"],
             "m": NET_W["m"], "v": NET_W["v"], "w2": NET_W["w2"], "fw": NET_W["fw"],
             "fb": NET_W["fb"]}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    if opset < 7:  # IR version 3 lists the initializers among the graph's inputs
        inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
                   for k, v in inits.items()]
    graph = helper.make_graph(
        nodes, "small", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=3 if opset < 7 else 8)
    onnx.checker.check_model(model)
    return model


NET_W = {"w": rand(4, 3, 3, 3), "b": rand(4), "s": rand(4), "bb": rand(4), "m": rand(4),
         "v": np.abs(rand(4)) + 0.5, "w2": rand(4, 4, 3, 3), "fw": rand(5, 4), "fb": rand(5)}


def test_every_opset_gives_the_same_outputs():
    """The same network at opset 6 (brought up by onnx's version converter, with a note), 13,
    21 and the newest: the same outputs, equal to ONNX Runtime's at opset 13."""
    x = rand(2, 3, 8, 8)
    results = {}
    for opset in (6, 13, 21, onnx.defs.onnx_opset_version()):
        model = small_net(opset)
        if opset < 7:
            with pytest.warns(UserWarning, match="converted from opset 6"):
                text, weights = import_onnx(model)
            assert "converted from opset 6" in text.splitlines()[0]
        else:
            text, weights = import_onnx(model)
        graph = load_network(text)
        results[opset] = run_reference(graph, {"x": x}, weights)["y"]
    session = ort.InferenceSession(small_net(13).SerializeToString(), _so(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    for opset, y in results.items():
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4, err_msg=f"opset {opset}")


@pytest.mark.parametrize("opset", [1, 3, 5])
def test_very_old_opsets_convert_or_are_refused_cleanly(opset):
    """Opsets 1-5 go through the version converter: the answer is a network or a clean error."""
    model = make_model([node("Relu", ["x"], "r"), node("Sigmoid", ["r"])], {"x": (3, 2, 2)},
                       opset=13)
    model.opset_import[0].version = opset
    model.ir_version = 3
    try:
        with pytest.warns(UserWarning, match=f"converted from opset {opset}"):
            text, _ = import_onnx(model)
    except OnnxImportError as e:
        assert f"opset {opset}" in str(e)
    else:
        assert "relu -> sigmoid" in text


# -- command line -----------------------------------------------------------------------------

def test_cli_import(tmp_path, capsys):
    model = make_model([node("Conv", ["x", "w", "b"], "c", pads=[1, 1, 1, 1]),
                        node("Relu", ["c"], "y")], {"x": (3, 5, 5)},
                       {"w": rand(4, 3, 3, 3), "b": rand(4)})
    src = tmp_path / "m.onnx"
    onnx.save_model(model, str(src))
    assert main(["import", str(src), "--check"]) == 0
    out = capsys.readouterr().out
    assert "matches ONNX Runtime" in out
    assert (tmp_path / "m.cnn").is_file() and (tmp_path / "m.npz").is_file()
    x = tmp_path / "x.npy"
    np.save(x, rand(1, 3, 5, 5))
    assert main(["run", str(tmp_path / "m.cnn"), "--weights", str(tmp_path / "m.npz"),
                 "--input", str(x), "--reference"]) == 0


def test_cli_bad_file_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    proc = subprocess.run([sys.executable, "-m", "cnnc.runtime.cli", "import", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr


# -- PyTorch exports --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore")
def test_pytorch_exported_model(tmp_path):
    import torch  # a test dependency
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            y = nn.functional.pad(y, (1, 0, 0, 1))
            y = self.pool(nn.functional.interpolate(y, scale_factor=2.0, mode="nearest"))
            y = nn.functional.avg_pool2d(y, 2)
            return self.fc(y.view(y.size(0), -1))

    net = Net().eval()
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 7, 7), str(path), opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    model = onnx.load(str(path))
    text, _ = roundtrip(model)
    # (PyTorch folds the eval-mode batch norm into the convolution itself.)
    assert "pad((0, 1, 1, 0))" in text and "upsample" in text and "dense(5)" in text


@pytest.mark.filterwarnings("ignore")
def test_pytorch_default_exporter_global_pooling(tmp_path):
    """PyTorch's default (dynamo) exporter writes adaptive average pooling as ReduceMean and the
    flatten as a Reshape to a literal batch of 1: a small ResNet imports and matches PyTorch."""
    import torch  # a test dependency, as onnxscript (the default exporter needs it)
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))

    class Net(nn.Module):
        def __init__(self, pool: Any) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            self.block, self.pool, self.fc = Block(8), pool, nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))

    torch.manual_seed(0)
    for pool, layer in ((nn.AdaptiveAvgPool2d(1), "globalavgpool"),
                        (nn.AdaptiveMaxPool2d(1), "globalmaxpool")):
        net = Net(pool).eval()
        for m in net.modules():  # non-trivial batch norm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 3, 32, 32)
        path = tmp_path / "resnet.onnx"
        torch.onnx.export(net, (x,), str(path))
        model = onnx.load(str(path))
        assert {n.op_type for n in model.graph.node} & {"ReduceMean", "ReduceMax"}
        text, weights = import_onnx(model)
        assert layer in text
        graph = load_network(text)
        with torch.no_grad():
            expected = net(x).numpy()
        (ours,) = run_reference(graph, {next(iter(graph.inputs)): x.numpy()}, weights).values()
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


# -- classic model zoo shapes -----------------------------------------------------------------

def static_batch(model: Any, batch: int = 1) -> Any:
    """The model with its inputs' batch written as the number `batch`."""
    for inp in model.graph.input:
        inp.type.tensor_type.shape.dim[0].dim_value = batch
    return model


@pytest.mark.parametrize("batch", [None, 1, 3])
def test_reshape_to_a_literal_batch(batch):
    """`[1, 1024]` (or `[3, ...]` for a declared batch of 3) keeps the batch; batch-1 literals
    stand for a symbolic batch too."""
    lead = batch or 1
    model = make_model([node("GlobalAveragePool", ["x"], "g"), node("Reshape", ["g", "shape"])],
                       {"x": (6, 3, 3)}, {"shape": np.array([lead, 6], np.int64)})
    if batch:
        static_batch(model, batch)
    text, _ = roundtrip(model, batch=batch or 1)
    assert "flatten" in text


def test_reshape_to_another_literal_leading_dim_is_refused():
    model = make_model([node("Reshape", ["x", "shape"])], {"x": (6, 2, 2)},
                       {"shape": np.array([2, 12], np.int64)})
    with pytest.raises(OnnxImportError, match="batch"):
        import_onnx(static_batch(model, 1))


def test_flatten_axis_0_with_a_declared_batch_of_1():
    model = static_batch(single("Flatten", (3, 2, 2), axis=0), 1)
    text, _ = roundtrip(model, batch=1)
    assert "flatten" in text
    with pytest.raises(OnnxImportError, match="axis"):
        import_onnx(single("Flatten", (3, 2, 2), axis=0))  # a symbolic batch


@pytest.mark.parametrize("op,n", [("Sum", 1), ("Sum", 2), ("Sum", 3), ("Mean", 2), ("Mean", 3)])
@pytest.mark.parametrize("shape", [(3, 4, 4), (5,)])
def test_sum_and_mean_of_tensors(op, n, shape):
    names = [f"x{k}" for k in range(n)]
    model = make_model([node("Relu", [x], f"r{k}") for k, x in enumerate(names)] +
                       [node(op, [f"r{k}" for k in range(n)])], dict.fromkeys(names, shape))
    text, _ = roundtrip(model)
    assert text.count(" + ") + text.count("add(") == n - 1


def test_sum_with_a_constant_is_refused():
    model = make_model([node("Sum", ["x", "c"])], {"x": (3,)}, {"c": rand(3)})
    with pytest.raises(OnnxImportError, match="Sum .*constant"):
        import_onnx(model)


def test_constant_of_shape_weight_is_folded_lazily():
    """A weight made by ConstantOfShape (as the light zoo models fill theirs) bigger than any
    shape arithmetic; one with more than MAX_CONSTANT elements is refused by size."""
    from cnnc.runtime.onnx.load import MAX_CONSTANT

    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.01])
    model = make_model([node("ConstantOfShape", ["s"], "w", value=fill),
                        node("Gemm", ["x", "w"], transB=1)], {"x": (4096,)},
                       {"s": np.array([3000, 4096], np.int64)})
    text, weights = roundtrip(model)
    assert "dense(3000" in text and np.all(weights[next(iter(weights))] == np.float32(0.01))
    huge = make_model([node("ConstantOfShape", ["s"], "w", value=fill),
                       node("Gemm", ["x", "w"], transB=1)], {"x": (4096,)},
                      {"s": np.array([MAX_CONSTANT, 4096], np.int64)})
    with pytest.raises(OnnxImportError, match="ConstantOfShape .*elements"):
        import_onnx(huge)


def test_channel_shuffle_imports_as_one_layer():
    model = make_model([node("Reshape", ["x", "s1"], "r"),
                        node("Transpose", ["r"], "t", perm=[0, 2, 1, 3, 4]),
                        node("Reshape", ["t", "s2"])], {"x": (6, 2, 2)},
                       {"s1": np.array([-1, 2, 3, 2, 2], np.int64),
                        "s2": np.array([-1, 6, 2, 2], np.int64)})
    text, _ = import_onnx(model)
    assert "channel_shuffle(2)" in text and "reshape" not in text


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("name", ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2",
                                  "resnet50", "shufflenet", "squeezenet", "vgg19", "zfnet512"])
def test_model_zoo_light_models_import(name):
    """The reduced-weight zoo models onnx ships: every one imports and builds (weights listed
    among the inputs, literal batches, Sum, ConstantOfShape weights, ShuffleNet's channel
    shuffle)."""
    path = LIGHT / f"light_{name}.onnx"
    text, weights = import_onnx(path)
    graph = load_network(text)
    assert weights
    if name in ("squeezenet", "inception_v1", "densenet121", "shufflenet"):  # the quicker ones
        session = ort.InferenceSession(str(path), _so(), providers=["CPUExecutionProvider"])
        x = rand(1, *graph.node(next(iter(graph.inputs.values()))).type.shape)
        (theirs,) = session.run(None, {session.get_inputs()[0].name: x})
        (ours,) = run_reference(graph, {next(iter(graph.inputs)): x}, weights).values()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
        # ... and exports back: the re-imported network computes the same numbers
        again_text, again_weights = import_onnx(export_onnx(graph, weights))
        again = load_network(again_text)
        assert sum(v.size for v in again_weights.values()) == sum(v.size for v in
                                                                   weights.values())
        (back,) = run_reference(again, {next(iter(again.inputs)): x}, again_weights).values()
        np.testing.assert_allclose(back, ours, rtol=1e-6, atol=1e-9)


# -- malformed models -------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["raw_data_too_long", "float_data_too_long"])
def test_initializer_whose_dims_disagree_with_its_data(damage):
    """onnx's checker accepts more data than the dims need; the import names the tensor."""
    model = single("Conv", (3, 5, 5), {"w": rand(4, 3, 3, 3)}, extra=["w"])
    w = model.graph.initializer[0]
    if damage == "raw_data_too_long":
        w.raw_data = w.raw_data + b"\0" * 8
    else:
        values = numpy_helper.to_array(w).reshape(-1).tolist()
        w.ClearField("raw_data")
        w.float_data.extend(values + [0.0] * 3)
    onnx.checker.check_model(model)
    with pytest.raises(OnnxImportError, match="initializer 'w'"):
        import_onnx(model)


@pytest.mark.parametrize("coord,scales,sizes,ambiguous", [
    # ONNX's reference takes the length in x scale (2.4, 1.2), ONNX Runtime the output's
    ("align_corners", [1, 1, 0.6, 0.6], None, True),  # divides by it less 1
    ("pytorch_half_pixel", [1, 1, 0.3, 0.3], None, True),  # tells one output by it
    ("pytorch_half_pixel", None, [2, 2, 3, 1], False),  # an output of width 1 samples at 0
    ("half_pixel", [1, 1, 0.5, 0.5], None, False),
    ("asymmetric", [1, 1, 2, 2], None, False),
    ("align_corners", [1, 1, 2, 2], None, False),
])
def test_linear_resize_is_imported_or_refused_where_onnx_is_ambiguous(coord, scales, sizes,
                                                                       ambiguous):
    """Either a clean refusal (where ONNX's reference and ONNX Runtime disagree) or the same
    numbers as ONNX Runtime, never a different answer."""
    inits = {"roi": np.array([], np.float32)}
    ins = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        ins.append("scales")
    else:
        inits["sizes"] = np.array(sizes, np.int64)
        ins += ["", "sizes"]
    model = make_model([node("Resize", ins, mode="linear",
                             coordinate_transformation_mode=coord)], {"x": (2, 4, 4)}, inits,
                       opset=13)
    if ambiguous:
        with pytest.raises(OnnxImportError, match="place the samples differently"):
            import_onnx(model)
    else:
        text, _ = roundtrip(model)
        assert "bilinear" in text


def _with_attr(model: Any, op: str, name: str, value: Any) -> Any:
    (n,) = [n for n in model.graph.node if n.op_type == op]
    for a in list(n.attribute):
        if a.name == name:
            n.attribute.remove(a)
    n.attribute.append(helper.make_attribute(name, value))
    return model


def _unchecked(nodes: list, inits: dict[str, np.ndarray], opset: int = 17,
               shape: tuple = (3, 4, 4)) -> Any:
    """A model with input x (a batch of `shape`) that onnx's checker accepts but ONNX Runtime
    refuses: the node itself is malformed (no shape inference, so no inferred output)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    onnx.checker.check_model(model)
    return model


def _i64(*values: Any) -> np.ndarray:
    return np.array(values, np.int64)


def _bad_string_attr() -> Any:
    model = single("MaxPool", (3, 4, 4), kernel_shape=[2, 2])
    model.graph.node[0].attribute.append(helper.make_attribute("auto_pad", "x"))
    model.graph.node[0].attribute[-1].s = b"\xff\xfe"
    return model


@pytest.mark.parametrize("build,words", [
    # classes the fuzzer found, each answered with the node or tensor named
    (lambda: _with_attr(single("MaxPool", (3, 4, 4), kernel_shape=[2, 2]), "MaxPool",
                        "strides", [2]), ["MaxPool", "strides", "2 values"]),
    (lambda: _bad_string_attr(), ["auto_pad", "MaxPool", "cannot be read"]),
    (lambda: _with_attr(make_model([node("ReduceMean", ["x"], axes=[2, 3])], {"x": (3, 4, 4)},
                                   opset=13), "ReduceMean", "keepdims", 7),
     ["keepdims", "0 or 1"]),
    (lambda: make_model([node("Clip", ["x", "lo", "hi"])], {"x": (3, 4, 4)},
                        {"lo": np.zeros(2, np.float32), "hi": np.float32(6)}, opset=13),
     ["Clip", "scalars"]),
    (lambda: single("Conv", (3, 5, 5), {"w": np.full((4, 3, 3, 3), np.nan, np.float32)},
                    extra=["w"]), ["Conv", "NaN"]),
    (lambda: _with_attr(single("BatchNormalization", (4, 3, 3),
                               {"s": rand(4), "b": rand(4), "m": rand(4), "v": rand(4) ** 2},
                               extra=["s", "b", "m", "v"]), "BatchNormalization", "epsilon",
                        float("inf")), ["BatchNormalization", "not finite"]),
    (lambda: single("Resize", (2, 3, 3), {"s": np.array([1, 1, 1e8, 1], np.float32)},
                    extra=["", "s"], mode="nearest"), ["Resize", "per side"]),
    # constant inputs of the wrong shape or length, axes out of range: each refused by the
    # check that reads it (some were imported, reading the axis modulo the rank)
    (lambda: _unchecked([node("Pad", ["x", "p"])], {"p": _i64(0, 0, 1)}),
     ["Pad", "pads has 3 values; 8 are needed"]),
    (lambda: _unchecked([node("Pad", ["x", "p"])], {"p": np.zeros((2, 4), np.int64)}),
     ["Pad", "input 2 ('p') must be a 1-D list of integers"]),
    (lambda: _unchecked([node("Pad", ["x", "p", "", "a"])], {"p": _i64(1, 1), "a": _i64(9)},
                        opset=18), ["Pad", "axis 9 is out of range for a rank-4 tensor"]),
    (lambda: _unchecked([node("Reshape", ["x", "s"])], {"s": np.array([[1, -1]], np.int64)}),
     ["Reshape", "1-D list of integers"]),
    (lambda: _unchecked([node("Dropout", ["x", "r"])], {"r": np.zeros(2, np.float32)}),
     ["Dropout", "must be one number"]),
    (lambda: _unchecked([node("Slice", ["x", "s", "e", "a"])],
                        {"s": _i64(0), "e": _i64(1), "a": _i64(9)}),
     ["Slice", "axis 9 is out of range"]),
    (lambda: _unchecked([node("Slice", ["x", "s", "e", "a"])],
                        {"s": _i64(0), "e": _i64(1), "a": _i64(1, 2)}),
     ["Slice", "one value per axis, got 1, 1, 2 and 1"]),
    (lambda: _unchecked([node("Slice", ["x", "s", "e", "a", "t"])],
                        {"s": _i64(0), "e": _i64(1), "a": _i64(1), "t": _i64(0)}),
     ["Slice", "a step of 0"]),
    (lambda: _unchecked([node("Unsqueeze", ["x", "a"])], {"a": _i64(9)}, opset=13),
     ["Unsqueeze", "axis 9 is out of range"]),
    (lambda: _unchecked([node("ReduceMean", ["x"], axes=[2, 9])], {}, opset=13),
     ["ReduceMean", "axis 9 is out of range"]),
    (lambda: _unchecked([node("Resize", ["x", "", "s"], axes=[9, 3])],
                        {"s": np.array([2, 2], np.float32)}, opset=18),
     ["Resize", "axis 9 is out of range"]),
    (lambda: _unchecked([node("Resize", ["x", "", "s"])], {"s": np.ones((2, 2), np.float32)}),
     ["Resize", "scales of shape [2, 2]"]),
    (lambda: _unchecked([node("Resize", ["x", "", "s"])],
                        {"s": np.array([1, 1, np.inf, 1], np.float32)}),
     ["Resize", "must be positive numbers"]),
    (lambda: _unchecked([node("ConvTranspose", ["x", "w"], pads=[1, 1])],
                        {"w": rand(3, 2, 3, 3)}), ["ConvTranspose", "2-D windows"]),
    (lambda: _unchecked([node("Gemm", ["x", "w"])], {"w": np.float32(1)}, shape=(3,)),
     ["Gemm", "2-D constant"]),
    (lambda: _unchecked([node("Conv", ["x", "w"], pads=[0, 2**62, 0, 0])],
                        {"w": rand(2, 3, 1, 1)}), ["Conv (", "pad = (0, 4611686018427387904",
                                                   "at most 2^53"]),
])
def test_malformed_nodes_are_named(build, words):
    with pytest.raises(OnnxImportError) as e:
        import_onnx(build())
    for w in words:
        assert w in str(e.value)


def test_shared_weights_on_inputs_of_different_shapes_stay_separate():
    """One initializer used by convolutions on different input sizes: not one `shared`
    layer (the DSL requires one shape), still the same numbers."""
    model = make_model([node("Conv", ["a", "w"], "ya"), node("Conv", ["b", "w"], "yb")],
                       {"a": (3, 6, 6), "b": (3, 5, 5)}, {"w": rand(4, 3, 3, 3)},
                       outputs=("ya", "yb"))
    text, weights = roundtrip(model)
    assert "shared" not in text and len(weights) == 2


@pytest.mark.filterwarnings("ignore")
def test_pytorch_default_exporter_mobile_blocks(tmp_path):
    """A MobileNet / EfficientNet-style network through the default exporter: relu6 (Clip),
    depthwise conv, hard swish, squeeze-excitation (ReduceMean, a C x 1 x 1 gate), SiLU,
    upsampling, tanh GELU, and `mean((2, 3))` (ReduceMean with keepdims=0) before the head."""
    import torch  # a test dependency, as onnxscript (the default exporter needs it)
    nn = torch.nn

    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.pool, self.f1, self.f2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 2, 1), \
                nn.Conv2d(c // 2, c, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.f2(torch.relu(self.f1(self.pool(x)))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6(),
                nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.Hardswish(), SE(8), nn.Conv2d(8, 16, 1),
                nn.SiLU(), nn.AvgPool2d(2), nn.Upsample(scale_factor=2),
                nn.GELU(approximate="tanh"))
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 4))

        def forward(self, x):
            return torch.softmax(self.head(self.body(x).mean((2, 3))), 1)

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "mobile.onnx"
    torch.onnx.export(net, (x,), str(path))
    text, weights = import_onnx(onnx.load(str(path)))
    assert "globalavgpool" in text and "gelu(approximate=tanh)" in text
    graph = load_network(text)
    (ours,) = run_reference(graph, {next(iter(graph.inputs)): x.numpy()}, weights).values()
    with torch.no_grad():
        np.testing.assert_allclose(ours, net(x).numpy(), rtol=1e-4, atol=1e-6)


def test_cli_import_prints_the_conversion_note(tmp_path, capsys):
    """`cnnc import` of an opset-6 model says in one `note:` line that it was converted."""
    from cnnc.runtime.cli import main

    src = tmp_path / "old.onnx"
    onnx.save(small_net(6), src)
    assert main(["import", str(src)]) == 0
    out = capsys.readouterr().out
    assert any(ln.startswith("note: ") and "converted from opset 6" in ln
               for ln in out.splitlines()), out
