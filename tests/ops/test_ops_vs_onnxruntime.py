"""Every op's float64 reference against ONNX Runtime.

Each test builds a single-node (or tiny) ONNX model here with `onnx.helper`, independently of
cnnc's own code, runs it with ONNX Runtime on float32 inputs, and compares with the op's
`reference` after `canonicalize`, checking `infer` gives the same output shape. Where cnnc's
convention differs from ONNX's default (hard_sigmoid alpha, avgpool count_include_pad, resize
coordinate modes) the ONNX attribute is set explicitly; the op files document the mapping.

Tolerance: max |reference - ORT| <= 1e-4 * max(1, max |reference|).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import REQUIRED, all_ops, get_op

OPSET = 18
# Ops whose ONNX form needs a newer opset than OPSET (ORT here supports both).
OPSET_FOR = {"AveragePool": 19, "Gelu": 20, "GroupNormalization": 21}

# -- ONNX model construction and execution -----------------------------------------------------


def _session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # the CI machine has 2 shared cores
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # No fusions or rewrites: we test the kernels for the ops we wrote down.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


_SO = _session_options()


def run_ort(nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray],
            inits: dict[str, np.ndarray] | None = None, opset: int = OPSET) -> np.ndarray:
    """Run a graph of `nodes` whose output is named "y"; feeds are graph inputs."""
    inits = inits or {}
    graph = helper.make_graph(
        nodes, "single_op",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    used = {OPSET_FOR.get(n.op_type, OPSET) for n in nodes}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(used))],
                              ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), _SO,
                                providers=["CPUExecutionProvider"])
    return sess.run(["y"], feeds)[0]


def node(op_type: str, inputs: list[str], output: str = "y", **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, [output], **attrs)


# -- cnnc side ---------------------------------------------------------------------------------


def canonical(name: str, in_types: list[TensorType], **raw: Any) -> dict[str, Any]:
    """DSL-level attributes (defaults filled from the signature, as the builder does) ->
    canonical attributes."""
    op = get_op(name)
    full = {}
    for a in op.signature:
        if a.name in raw:
            full[a.name] = raw.pop(a.name)
        else:
            assert a.default is not REQUIRED, f"test must give {name}'s {a.name}"
            full[a.name] = a.default
    assert not raw, f"{name} has no attributes {sorted(raw)}"
    return op.canonicalize(full, in_types) if op.canonicalize else full


def check(name: str, tensors: list[np.ndarray], expected: np.ndarray,
          params: list[np.ndarray] = (), **raw: Any) -> np.ndarray:
    """Compare `name`'s reference (and inferred shape) with ONNX Runtime's `expected`."""
    op = get_op(name)
    t_types = [TensorType(tuple(x.shape[1:])) for x in tensors]
    attrs = canonical(name, t_types, **raw)
    out_type = op.infer(t_types + [TensorType(tuple(p.shape)) for p in params], attrs)
    got = op.reference(list(tensors) + list(params), attrs)
    n = tensors[0].shape[0]
    assert got.dtype == np.float64
    assert got.shape == (n,) + out_type.shape, f"reference {got.shape} vs infer {out_type}"
    assert expected.shape == got.shape, f"ONNX Runtime {expected.shape} vs cnnc {got.shape}"
    tol = 1e-4 * max(1.0, float(np.abs(got).max(initial=0.0)))
    err = float(np.abs(got - expected.astype(np.float64)).max(initial=0.0))
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g} with {attrs}"
    return got


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


seeds = st.integers(0, 2**32 - 1)

# Which registered ops this file compares with ONNX Runtime, and which it cannot.
COVERED = {
    "conv", "conv_transpose", "maxpool", "minpool", "avgpool", "lppool", "globalavgpool",
    "globalmaxpool", "upsample", "dense", "flatten", "reshape", "relu", "leaky_relu", "relu6",
    "sigmoid", "hard_sigmoid", "tanh", "swish", "hard_swish", "gelu", "abs", "softmax",
    "log_softmax", "batchnorm", "groupnorm", "lrn", "add", "mul", "sub", "concat", "pad", "flip",
    "dropout", "identity", "distance", "channel_slice",
    "depth_to_space", "space_to_depth", "channel_shuffle",  # in tests/ops/test_rearrange_ops.py
}
# compared in tests/ops/test_new_activation_ops.py (pad's reflect and edge modes too)
COVERED |= {"elu", "selu", "softplus", "mish", "prelu", "instance_norm"}
COVERED |= {"nms"}  # against NonMaxSuppression in tests/ops/test_detect.py
COVERED |= {"roi_maxpool", "roi_align"}  # MaxRoiPool and RoiAlign in tests/ops/test_roi.py
NOT_IN_ONNX = {
    "iou": "no ONNX operator: checked against counting shared cells (tests/ops/test_detect.py)",
    "yolo_decode": "no ONNX operator: checked against a torch transcription of YOLOv2's "
                   "decoding (tests/ops/test_detect.py)",
    "input": "a graph leaf: values are supplied by the caller, there is nothing to compute",
    "param": "a graph leaf: weights are supplied by the caller, there is nothing to compute",
    "bn_fold_weight": "a derived parameter of the batch-norm folding pass (tests/passes)",
    "channel_gather": "made by the fold_channel_moves pass from concatenations, slices and "
                      "shuffles, which are checked here (tests/passes)",
    "bn_fold_bias": "a derived parameter of the batch-norm folding pass (tests/passes)",
    "conv_weight_of_dense": "a derived parameter of the convolutionalize pass "
                            "(tests/passes/test_convolutionalize.py)",
    "bn_fold_input_weight": "a derived parameter of folding a batch norm into the next layer "
                            "(tests/passes)",
    "bn_fold_input_bias": "a derived parameter of folding a batch norm into the next layer "
                          "(tests/passes)",
    "stack_filters": "a derived parameter of the bottleneck folding pass (tests/passes)",
    "dense_weight_of_conv": "a derived parameter of the conv_as_dense pass (tests/passes)",
    "phase_filter": "a derived parameter of the conv_transpose_as_phases pass (tests/passes)",
    "conv_pack": "a convolution's packed weights, made by the pack_weights pass: every "
                 "compiled convolution runs with them (tests/runtime, tests/codegen_ops)",
    "dense_pack": "a dense weight scattered over blocked storage, made by the pack_weights "
                  "pass (tests/runtime: every classifier head over a blocked flatten)",
    "bn_scale_shift": "a standalone batch norm's constants, made by the pack_weights pass "
                      "(tests/codegen_ops, tests/runtime)",
    "transpose_weight": "a derived parameter of a dense layer's input gradient, made by "
                        "autodiff (tests/training)",
    "modified_backward": "an activation whose backward pass the explanations change, made by "
                         "their rewrite (its forward is the activation's own; the gradient "
                         "against PyTorch hooks in tests/runtime/test_explain_gradients.py)",
}


#: The training graph's own ops have no ONNX form: autodiff's backward ops, the losses and the
#: layers' training forms are checked against finite differences and PyTorch autograd instead
#: (tests/training), and the collective of synchronized batch norm against one process's
#: training (tests/training/test_data_parallel.py).
TRAINING_FORMS = {"batch_mean", "batch_var", "batchnorm_train", "running_update", "dropout_train",
                  "allreduce_mean"}


def test_every_op_is_compared_or_excused():
    training = {n for n, op in all_ops().items() if op.backward or op.family == "loss"}
    names = set(all_ops()) - training - TRAINING_FORMS
    assert names - COVERED - set(NOT_IN_ONNX) == set(), "new ops need an ONNX Runtime test"
    assert (COVERED | set(NOT_IN_ONNX)) - names == set(), "stale names in this test's lists"


# -- convolution -------------------------------------------------------------------------------


@st.composite
def conv_cases(draw) -> dict[str, Any]:
    g = draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    span_h, span_w = dh * (r - 1) + 1, dw * (s - 1) + 1
    lo_h, lo_w = max(1, span_h - pads[0] - pads[2]), max(1, span_w - pads[1] - pads[3])
    return dict(n=draw(st.integers(1, 3)), c=g * draw(st.integers(1, 3)),
                k=g * draw(st.integers(1, 3)), h=draw(st.integers(lo_h, lo_h + 6)),
                w=draw(st.integers(lo_w, lo_w + 6)), kernel=(r, s),
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), pads=pads,
                dilation=(dh, dw), groups=g, bias=draw(st.booleans()),
                seed=draw(seeds))


def run_conv(n, c, k, h, w, kernel, stride, pads, dilation, groups, bias, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rand(rng, n, c, h, w)
    wt = rand(rng, k, c // groups, *kernel)
    params = [wt] + ([rand(rng, k)] if bias else [])
    inits = {"w": wt} | ({"b": params[1]} if bias else {})
    expected = run_ort([node("Conv", ["x", *inits], kernel_shape=list(kernel),
                             strides=list(stride), pads=list(pads), dilations=list(dilation),
                             group=groups)], {"x": x}, inits)
    check("conv", [x], expected, params, out_channels=k, kernel=kernel, stride=stride,
          pad=pads, dilation=dilation, groups=groups, bias=bias)


@given(conv_cases())
@settings(max_examples=50)
def test_conv(case):
    run_conv(**case)


@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       r=st.integers(1, 5), s=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3),
       dh=st.integers(1, 2), dw=st.integers(1, 2), seed=seeds)
def test_conv_same_is_same_upper(n, c, h, w, r, s, sh, sw, dh, dw, seed):
    """pad=same: out = ceil(in / stride), the odd extra row/column at the bottom/right."""
    rng = np.random.default_rng(seed)
    x, wt = rand(rng, n, c, h, w), rand(rng, 2, c, r, s)
    if (dh, dw) == (1, 1):
        pad_attr = dict(auto_pad="SAME_UPPER")
    else:  # ONNX Runtime refuses auto_pad with dilation: the spec's SAME_UPPER pads by hand
        totals = [max((-(-size // st_) - 1) * st_ + d * (k - 1) + 1 - size, 0)
                  for size, st_, d, k in ((h, sh, dh, r), (w, sw, dw, s))]
        pad_attr = dict(pads=[totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2,
                              totals[1] - totals[1] // 2])
    expected = run_ort([node("Conv", ["x", "w"], kernel_shape=[r, s], strides=[sh, sw],
                             dilations=[dh, dw], **pad_attr)], {"x": x}, {"w": wt})
    got = check("conv", [x], expected, [wt], out_channels=2, kernel=(r, s), stride=(sh, sw),
                dilation=(dh, dw), pad="same", bias=False)
    assert got.shape[2:] == (-(-h // sh), -(-w // sw))


@pytest.mark.parametrize("case", [
    # 13 -> 59 channels at 71x71, batch 9: nothing is a multiple of anything.
    dict(n=9, c=13, k=59, h=71, w=71, kernel=(3, 3), stride=(1, 1), pads=(1, 1, 1, 1),
         dilation=(1, 1), groups=1, bias=True, seed=1),
    # four different sides, stride 3, dilation 2
    dict(n=2, c=5, k=7, h=17, w=19, kernel=(3, 4), stride=(3, 3), pads=(0, 1, 2, 3),
         dilation=(2, 2), groups=1, bias=True, seed=2),
    # depthwise (MobileNet): groups = channels
    dict(n=3, c=8, k=8, h=9, w=10, kernel=(3, 3), stride=(2, 2), pads=(1, 0, 2, 1),
         dilation=(1, 1), groups=8, bias=False, seed=3),
    # depthwise with channel multiplier 2, dilated
    dict(n=1, c=4, k=8, h=11, w=7, kernel=(3, 3), stride=(1, 2), pads=(2, 2, 2, 2),
         dilation=(2, 2), groups=4, bias=True, seed=4),
    # a 1x1 input, a 1x1 kernel and a 3x3 kernel with padding
    dict(n=2, c=3, k=4, h=1, w=1, kernel=(1, 1), stride=(1, 1), pads=(0, 0, 0, 0),
         dilation=(1, 1), groups=1, bias=True, seed=5),
    dict(n=2, c=3, k=4, h=1, w=1, kernel=(3, 3), stride=(3, 3), pads=(1, 1, 1, 1),
         dilation=(1, 1), groups=1, bias=True, seed=6),
])
def test_conv_awkward(case):
    run_conv(**case)


@st.composite
def conv_transpose_cases(draw) -> dict[str, Any]:
    g = draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    oph, opw = draw(st.integers(0, max(sh, dh) - 1)), draw(st.integers(0, max(sw, dw) - 1))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    out_h = (h - 1) * sh + dh * (r - 1) + 1 + oph - pads[0] - pads[2]
    out_w = (w - 1) * sw + dw * (s - 1) + 1 + opw - pads[1] - pads[3]
    assume(out_h >= 1 and out_w >= 1)
    return dict(n=draw(st.integers(1, 3)), c=g * draw(st.integers(1, 3)),
                k=g * draw(st.integers(1, 3)), h=h, w=w, kernel=(r, s), stride=(sh, sw),
                pads=pads, output_padding=(oph, opw), dilation=(dh, dw), groups=g,
                bias=draw(st.booleans()), seed=draw(seeds))


def ort_conv_transpose(x, inits, kernel, stride, pads, output_padding, dilation, groups):
    """ONNX ConvTranspose, also where output_padding >= stride.

    The ONNX spec and PyTorch allow output_padding smaller than the stride OR the dilation;
    ONNX Runtime insists on the stride. There we let ONNX Runtime compute the whole uncropped
    output, append the output padding (rows and columns of bias only) at the bottom/right, and
    crop the padding ourselves.
    """
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), dilations=list(dilation),
                 group=groups)
    if all(o < s for o, s in zip(output_padding, stride)):
        return run_ort([node("ConvTranspose", ["x", *inits], pads=list(pads),
                             output_padding=list(output_padding), **attrs)], {"x": x}, inits)
    full = run_ort([node("ConvTranspose", ["x", *inits], **attrs)], {"x": x}, inits)
    n, k, h, w = full.shape
    (oph, opw), (t, l, b, r) = output_padding, pads
    bias = inits.get("b", np.zeros(k, np.float32))
    out = np.broadcast_to(bias[None, :, None, None], (n, k, h + oph, w + opw)).copy()
    out[:, :, :h, :w] = full
    return out[:, :, t:h + oph - b, l:w + opw - r]


def run_conv_transpose(n, c, k, h, w, kernel, stride, pads, output_padding, dilation, groups,
                       bias, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rand(rng, n, c, h, w)
    wt = rand(rng, c, k // groups, *kernel)  # ONNX and PyTorch: C x K/groups x R x S
    params = [wt] + ([rand(rng, k)] if bias else [])
    inits = {"w": wt} | ({"b": params[1]} if bias else {})
    expected = ort_conv_transpose(x, inits, kernel, stride, pads, output_padding, dilation,
                                  groups)
    check("conv_transpose", [x], expected, params, out_channels=k, kernel=kernel,
          stride=stride, pad=pads, output_padding=output_padding, dilation=dilation,
          groups=groups, bias=bias)


@given(conv_transpose_cases())
@settings(max_examples=50)
def test_conv_transpose(case):
    run_conv_transpose(**case)


@pytest.mark.parametrize("case", [
    # U-Net style 2x upsampling: kernel 2 stride 2
    dict(n=2, c=6, k=3, h=5, w=7, kernel=(2, 2), stride=(2, 2), pads=(0, 0, 0, 0),
         output_padding=(0, 0), dilation=(1, 1), groups=1, bias=True, seed=1),
    # kernel 3 stride 2 pad 1 output_padding 1 doubles the size exactly
    dict(n=1, c=4, k=4, h=6, w=5, kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1),
         output_padding=(1, 1), dilation=(1, 1), groups=2, bias=False, seed=2),
    # output_padding allowed by dilation (3) though it exceeds stride 1; asymmetric pads
    dict(n=1, c=2, k=3, h=4, w=4, kernel=(2, 3), stride=(1, 2), pads=(0, 1, 2, 0),
         output_padding=(2, 1), dilation=(3, 1), groups=1, bias=True, seed=3),
])
def test_conv_transpose_awkward(case):
    run_conv_transpose(**case)


# -- pooling -----------------------------------------------------------------------------------


@st.composite
def pool_cases(draw, kind: str) -> dict[str, Any]:
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if kind in ("max", "min") else (1,
                                                                                          1)
    span_h, span_w = dil[0] * (r - 1) + 1, dil[1] * (s - 1) + 1
    # Padding at most half the (dilated) window, the rule cnnc shares with PyTorch; ONNX
    # Runtime also wants it smaller than the undilated kernel (test_dilated_pool_wide_padding).
    top = st.integers(0, min(span_h // 2, r - 1))
    left = st.integers(0, min(span_w // 2, s - 1))
    pads = (draw(top), draw(left), draw(top), draw(left))
    lo_h, lo_w = max(1, span_h - pads[0] - pads[2]), max(1, span_w - pads[1] - pads[3])
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)),
                h=draw(st.integers(lo_h, lo_h + 7)), w=draw(st.integers(lo_w, lo_w + 7)),
                kernel=(r, s), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                pads=pads, dilation=dil, ceil_mode=draw(st.booleans()),
                count_include_pad=draw(st.booleans()), p=draw(st.sampled_from([1, 2, 3])),
                seed=draw(seeds))


def run_pool(kind, n, c, h, w, kernel, stride, pads, dilation, ceil_mode, count_include_pad, p,
             seed) -> None:
    rng = np.random.default_rng(seed)
    x = rand(rng, n, c, h, w)
    common = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pads),
                  ceil_mode=int(ceil_mode))
    window = dict(kernel=kernel, stride=stride, pad=pads, ceil_mode=ceil_mode)
    if kind == "max":
        expected = run_ort([node("MaxPool", ["x"], dilations=list(dilation), **common)], {"x": x})
        check("maxpool", [x], expected, dilation=dilation, **window)
    elif kind == "min":
        # ONNX has no MinPool: min = -max(-x), the padding becoming +inf under the negation.
        expected = run_ort([node("Neg", ["x"], "nx"),
                            node("MaxPool", ["nx"], "m", dilations=list(dilation), **common),
                            node("Neg", ["m"])], {"x": x})
        check("minpool", [x], expected, dilation=dilation, **window)
    elif kind == "avg":
        # ONNX's default count_include_pad is 0, PyTorch's and cnnc's 1: always written out.
        expected = run_ort([node("AveragePool", ["x"], count_include_pad=int(count_include_pad),
                                 **common)], {"x": x})
        check("avgpool", [x], expected, count_include_pad=count_include_pad, **window)
    else:
        # ONNX LpPool takes an integer p; cnnc's p is a float.
        expected = run_ort([node("LpPool", ["x"], p=p, **common)], {"x": x})
        check("lppool", [x], expected, p=float(p), **window)


@pytest.mark.parametrize("kind", ["max", "min", "avg", "lp"])
@given(data=st.data())
@settings(max_examples=50)
def test_pool(kind, data):
    run_pool(kind, **data.draw(pool_cases(kind)))


_POOL_AWKWARD = [
    # AlexNet's overlapping 3/2 pooling with ceil mode on 55 -> 27 and on an even size
    dict(n=1, c=2, h=55, w=54, kernel=(3, 3), stride=(2, 2), pads=(0, 0, 0, 0)),
    # ceil mode with a window overhanging padding on one side only; stride 3
    dict(n=2, c=1, h=7, w=8, kernel=(3, 2), stride=(3, 3), pads=(1, 0, 0, 1)),
    # ceil mode would start a last window in the trailing padding: dropped
    dict(n=1, c=1, h=5, w=5, kernel=(2, 2), stride=(2, 2), pads=(1, 1, 1, 1)),
    # a 1x1 input
    dict(n=9, c=3, h=1, w=1, kernel=(1, 1), stride=(1, 1), pads=(0, 0, 0, 0)),
    dict(n=2, c=3, h=1, w=1, kernel=(2, 2), stride=(2, 2), pads=(1, 1, 0, 0)),
]


@pytest.mark.parametrize("kind,count_include_pad", [("max", True), ("min", True), ("lp", True),
                                                     ("avg", True), ("avg", False)])
@pytest.mark.parametrize("case", _POOL_AWKWARD)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_awkward(kind, count_include_pad, case, ceil_mode):
    dilation = (2, 1) if kind in ("max", "min") and case["h"] >= 5 else (1, 1)
    run_pool(kind, dilation=dilation, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
             p=2, seed=7, **case)


@pytest.mark.parametrize("kind", ["max", "min"])
def test_dilated_pool_wide_padding(kind):
    """Padding 2 on a kernel 2 dilated by 3 (span 4): PyTorch's rule allows it, ONNX Runtime
    wants pads < kernel; so the padding is an explicit Pad node of -inf before ORT's MaxPool."""
    x = rand(np.random.default_rng(1), 2, 3, 7, 6)
    sign = 1.0 if kind == "max" else -1.0
    nodes = [node("Mul", ["x", "sign"], "sx"),
             node("Pad", ["sx", "pads", "fill"], "px", mode="constant"),
             node("MaxPool", ["px"], "m", kernel_shape=[2, 2], strides=[1, 2],
                  dilations=[3, 1]),
             node("Mul", ["m", "sign"])]
    inits = {"sign": np.float32(sign), "pads": np.array([0, 0, 2, 1, 0, 0, 1, 0], np.int64),
             "fill": np.float32(-np.inf)}
    check(f"{kind}pool", [x], run_ort(nodes, {"x": x}, inits), kernel=2, stride=(1, 2),
          pad=(2, 1, 1, 0), dilation=(3, 1))


@pytest.mark.parametrize("name,onnx_op", [("globalavgpool", "GlobalAveragePool"),
                                          ("globalmaxpool", "GlobalMaxPool")])
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=seeds)
@settings(max_examples=10)
def test_global_pool(name, onnx_op, n, c, h, w, seed):
    x = rand(np.random.default_rng(seed), n, c, h, w)
    check(name, [x], run_ort([node(onnx_op, ["x"])], {"x": x}))


# -- upsampling --------------------------------------------------------------------------------


@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       mode=st.sampled_from(["nearest", "bilinear"]), align_corners=st.booleans(),
       sh=st.sampled_from([1.5, 2.0, 3.0]), sw=st.sampled_from([1.5, 2.0, 3.0]), seed=seeds)
@settings(max_examples=50)
def test_upsample(n, c, h, w, mode, align_corners, sh, sw, seed):
    assume(mode == "bilinear" or not align_corners)  # PyTorch's flag: bilinear and bicubic
    x = rand(np.random.default_rng(seed), n, c, h, w)
    if mode == "nearest":
        # out[i] = in[floor(i / scale)]
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
    else:
        attrs = dict(mode="linear", coordinate_transformation_mode=(
            "align_corners" if align_corners else "pytorch_half_pixel"))
    scales = np.array([1, 1, sh, sw], np.float32)
    expected = run_ort([node("Resize", ["x", "", "scales"], **attrs)], {"x": x},
                       {"scales": scales})
    check("upsample", [x], expected, scale=(sh, sw), mode=mode, align_corners=align_corners)


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_nearest_integer_scale_repeats_pixels(scale):
    """Nearest upsampling by an integer scale is np.repeat along both axes."""
    x = rand(np.random.default_rng(0), 2, 3, 4, 5)
    expected = run_ort([node("Resize", ["x", "", "scales"], mode="nearest",
                             coordinate_transformation_mode="asymmetric",
                             nearest_mode="floor")],
                       {"x": x}, {"scales": np.array([1, 1, scale, scale], np.float32)})
    got = check("upsample", [x], expected, scale=scale)
    np.testing.assert_array_equal(got, x.repeat(scale, axis=2).repeat(scale, axis=3))


def test_bilinear_downsampling_to_one_pixel_is_a_documented_difference():
    """Scale 0.5 on 3 pixels leaves one: ONNX's pytorch_half_pixel samples at 0, we (and
    PyTorch's scale_factor path) at (0 + 0.5) / 0.5 - 0.5 = 0.5, halfway between rows 0 and 1."""
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    onnx_y = run_ort([node("Resize", ["x", "", "scales"], mode="linear",
                           coordinate_transformation_mode="pytorch_half_pixel")],
                     {"x": x}, {"scales": np.array([1, 1, 0.5, 0.5], np.float32)})
    assert onnx_y.reshape(-1).tolist() == [0.0]
    op = get_op("upsample")
    attrs = canonical("upsample", [TensorType((1, 3, 3))], scale=0.5, mode="bilinear")
    got = op.reference([x], attrs)
    assert got.reshape(-1).tolist() == [np.mean(x[0, 0, :2, :2])]


# -- dense, flatten, reshape -------------------------------------------------------------------


@given(n=st.integers(1, 9), f=st.integers(1, 40), o=st.integers(1, 20), bias=st.booleans(),
       seed=seeds)
@settings(max_examples=15)
def test_dense(n, f, o, bias, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, n, f), rand(rng, o, f), rand(rng, o)
    inits = {"w": wt} | ({"b": b} if bias else {})
    expected = run_ort([node("Gemm", ["x", *inits], transB=1)], {"x": x}, inits)
    check("dense", [x], expected, [wt] + ([b] if bias else []), out_features=o, bias=bias)


@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5),
       seed=seeds)
@settings(max_examples=10)
def test_flatten_and_reshape(n, c, h, w, seed):
    x = rand(np.random.default_rng(seed), n, c, h, w)
    check("flatten", [x], run_ort([node("Flatten", ["x"], axis=1)], {"x": x}))
    shape = (h, -1, c)  # a permutation of sizes with one inferred dimension
    expected = run_ort([node("Reshape", ["x", "shape"])], {"x": x},
                       {"shape": np.array((n,) + shape, np.int64)})
    check("reshape", [x], expected, shape=shape)


# -- activations -------------------------------------------------------------------------------


def _act_nodes(name: str, attrs: dict[str, Any]) -> tuple[list[onnx.NodeProto], dict]:
    """The ONNX form of each activation, and its initializers."""
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "abs": "Abs",
              "hard_swish": "HardSwish"}
    if name in simple:
        return [node(simple[name], ["x"])], {}
    if name == "leaky_relu":
        return [node("LeakyRelu", ["x"], alpha=attrs.get("alpha", 0.01))], {}
    if name == "relu6":
        return [node("Clip", ["x", "lo", "hi"])], {"lo": np.float32(0), "hi": np.float32(6)}
    if name == "hard_sigmoid":
        # ONNX's default alpha is 0.2; cnnc (PyTorch) uses 1/6: always written out.
        return [node("HardSigmoid", ["x"], alpha=attrs.get("alpha", 1 / 6),
                     beta=attrs.get("beta", 0.5))], {}
    if name == "swish":
        return [node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"])], {}
    if name == "gelu":
        return [node("Gelu", ["x"], approximate=attrs.get("approximate", "none"))], {}
    raise AssertionError(name)


ACTIVATIONS = [
    ("relu", {}), ("leaky_relu", {}), ("leaky_relu", {"alpha": 0.2}),
    ("leaky_relu", {"alpha": -1.5}), ("relu6", {}), ("sigmoid", {}), ("hard_sigmoid", {}),
    ("hard_sigmoid", {"alpha": 0.2, "beta": 0.4}), ("tanh", {}), ("swish", {}),
    ("hard_swish", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"}), ("abs", {}),
]


@pytest.mark.parametrize("name,attrs", ACTIVATIONS,
                         ids=[f"{n}-{'-'.join(map(str, a.values()))}" for n, a in ACTIVATIONS])
@given(n=st.integers(1, 3), shape=st.sampled_from([(3, 4, 5), (7,), (1, 1, 1)]), seed=seeds,
       scale=st.sampled_from([1.0, 4.0, 30.0]))
@settings(max_examples=8)
def test_activation(name, attrs, n, shape, seed, scale):
    x = rand(np.random.default_rng(seed), n, *shape, scale=scale)
    # The kinks of relu6, hard_sigmoid and hard_swish, and zero, exactly.
    x.flat[:6] = np.array([0.0, -3.0, 3.0, 6.0, -0.0, 2.5], np.float32)[:x.size]
    nodes, inits = _act_nodes(name, attrs)
    check(name, [x], run_ort(nodes, {"x": x}, inits), **attrs)


@pytest.mark.parametrize("name,onnx_op", [("softmax", "Softmax"), ("log_softmax", "LogSoftmax")])
@given(n=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(1, 4), w=st.integers(1, 4),
       axis=st.sampled_from(["channels", 0, 1, 2]), scale=st.sampled_from([1.0, 50.0]),
       seed=seeds)
@settings(max_examples=12)
def test_softmax_4d(name, onnx_op, n, c, h, w, axis, scale, seed):
    x = rand(np.random.default_rng(seed), n, c, h, w, scale=scale)
    onnx_axis = 1 if axis == "channels" else axis + 1  # cnnc's axes exclude the batch
    check(name, [x], run_ort([node(onnx_op, ["x"], axis=onnx_axis)], {"x": x}), axis=axis)


@pytest.mark.parametrize("name,onnx_op", [("softmax", "Softmax"), ("log_softmax", "LogSoftmax")])
@given(n=st.integers(1, 9), f=st.integers(1, 12), scale=st.sampled_from([1.0, 50.0]), seed=seeds)
@settings(max_examples=8)
def test_softmax_2d(name, onnx_op, n, f, scale, seed):
    x = rand(np.random.default_rng(seed), n, f, scale=scale)
    check(name, [x], run_ort([node(onnx_op, ["x"], axis=1)], {"x": x}))


# -- normalization -----------------------------------------------------------------------------


@given(n=st.integers(1, 4), shape=st.sampled_from([(3, 4, 5), (6,), (1, 1, 1)]),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]), seed=seeds)
@settings(max_examples=12)
def test_batchnorm(n, shape, eps, seed):
    rng = np.random.default_rng(seed)
    c = shape[0]
    x = rand(rng, n, *shape)
    w, b, mean = rand(rng, c), rand(rng, c), rand(rng, c)
    var = (rng.random(c) + 0.1).astype(np.float32)
    inits = {"w": w, "b": b, "mean": mean, "var": var}
    expected = run_ort([node("BatchNormalization", ["x", "w", "b", "mean", "var"],
                             epsilon=eps)], {"x": x}, inits)
    check("batchnorm", [x], expected, [w, b, mean, var], eps=eps)


@given(n=st.integers(1, 3), groups=st.integers(1, 4), per_group=st.integers(1, 3),
       h=st.integers(1, 5), w=st.integers(1, 5), eps=st.sampled_from([1e-5, 0.1]), seed=seeds)
@settings(max_examples=15)
def test_groupnorm(n, groups, per_group, h, w, eps, seed):
    rng = np.random.default_rng(seed)
    c = groups * per_group
    x = rand(rng, n, c, h, w, scale=3.0) + 1.0
    scale, bias = rand(rng, c), rand(rng, c)
    # GroupNormalization-21: scale and bias per channel, as in PyTorch and cnnc.
    expected = run_ort([node("GroupNormalization", ["x", "s", "b"], num_groups=groups,
                             epsilon=eps)], {"x": x}, {"s": scale, "b": bias})
    check("groupnorm", [x], expected, [scale, bias], groups=groups, eps=eps)


@given(n=st.integers(1, 3), c=st.integers(1, 9), hw=st.integers(1, 4),
       size=st.sampled_from([1, 3, 5, 7]), alpha=st.sampled_from([1e-4, 0.5, 2.0]),
       beta=st.sampled_from([0.75, 0.5]), k=st.sampled_from([1.0, 2.0]), seed=seeds)
@settings(max_examples=15)
def test_lrn_odd_sizes(n, c, hw, size, alpha, beta, k, seed):
    x = rand(np.random.default_rng(seed), n, c, hw, hw, scale=2.0)
    expected = run_ort([node("LRN", ["x"], size=size, alpha=alpha, beta=beta, bias=k)], {"x": x})
    check("lrn", [x], expected, size=size, alpha=alpha, beta=beta, k=k)


@pytest.mark.parametrize("size", [2, 4, 6])
def test_lrn_even_sizes_follow_onnx_spec(size):
    """ONNX Runtime rejects even sizes; the ONNX spec's window, written as a loop, is the oracle:
    channels c - floor((size-1)/2) .. c + ceil((size-1)/2), clipped to 0..C-1."""
    x = rand(np.random.default_rng(size), 2, 7, 3, 2, scale=2.0)
    alpha, beta, k = 0.3, 0.75, 1.5
    c_total = x.shape[1]
    expected = np.empty(x.shape)
    for c in range(c_total):
        lo = max(0, c - math.floor((size - 1) / 2))
        hi = min(c_total - 1, c + math.ceil((size - 1) / 2))
        sq = sum(x[:, i].astype(np.float64) ** 2 for i in range(lo, hi + 1))
        expected[:, c] = x[:, c] / (k + alpha / size * sq) ** beta
    check("lrn", [x], expected, size=size, alpha=alpha, beta=beta, k=k)


# -- elementwise with broadcasting, concat, pad, flip ------------------------------------------

# Per-sample shape pairs (batch excluded); cnnc broadcasts per sample, right-aligned.
BROADCASTS = [
    ((5, 4, 3), (5, 4, 3)),
    ((5, 4, 3), (5, 1, 1)),  # squeeze-excitation: N x C x H x W times N x C x 1 x 1
    ((5, 1, 1), (5, 4, 3)),
    ((5, 4, 3), (1, 4, 3)),
    ((5, 4, 3), (3,)),  # lower rank aligns to the right (width)
    ((6,), (6,)),
    ((1,), (6,)),
]


def _batched_for_onnx(x: np.ndarray, rank: int) -> np.ndarray:
    """Insert the per-sample broadcasting axes after the batch: ONNX aligns whole shapes."""
    return x.reshape(x.shape[:1] + (1,) * (rank + 1 - x.ndim) + x.shape[1:])


@pytest.mark.parametrize("name,onnx_op", [("add", "Add"), ("mul", "Mul"), ("sub", "Sub")])
@pytest.mark.parametrize("sa,sb", BROADCASTS)
@pytest.mark.parametrize("n", [1, 3])
def test_binary_broadcasting(name, onnx_op, sa, sb, n):
    rng = np.random.default_rng(len(sa) * 10 + len(sb) + n)
    a, b = rand(rng, n, *sa), rand(rng, n, *sb)
    rank = max(len(sa), len(sb))
    feeds = {"a": _batched_for_onnx(a, rank), "b": _batched_for_onnx(b, rank)}
    check(name, [a, b], run_ort([node(onnx_op, ["a", "b"])], feeds))


@pytest.mark.parametrize("name,onnx_op", [("add", "Sum"), ("mul", "Mul")])
def test_three_way_add_and_mul(name, onnx_op):
    rng = np.random.default_rng(0)
    xs = [rand(rng, 2, 4, 3, 3), rand(rng, 2, 4, 1, 1), rand(rng, 2, 1, 3, 3)]
    feeds = dict(zip("abc", xs))
    if onnx_op == "Sum":
        nodes = [node("Sum", ["a", "b", "c"])]
    else:
        nodes = [node("Mul", ["a", "b"], "ab"), node("Mul", ["ab", "c"])]
    check(name, xs, run_ort(nodes, feeds))


@given(n=st.integers(1, 3), cs=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       h=st.integers(1, 4), w=st.integers(1, 4), axis=st.integers(0, 2), seed=seeds)
@settings(max_examples=15)
def test_concat(n, cs, h, w, axis, seed):
    rng = np.random.default_rng(seed)
    shapes = []
    for c in cs:  # vary the concatenated axis only
        shape = [3, h, w]
        shape[axis] = c
        shapes.append(shape)
    xs = [rand(rng, n, *s) for s in shapes]
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    check("concat", xs, run_ort([node("Concat", list(feeds), axis=axis + 1)], feeds), axis=axis)


@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       pads=st.one_of(st.integers(0, 3), st.tuples(*[st.integers(0, 3)] * 2),
                      st.tuples(*[st.integers(0, 3)] * 4)),
       value=st.sampled_from([0.0, -1.5]), seed=seeds)
@settings(max_examples=15)
def test_pad(n, c, h, w, pads, value, seed):
    x = rand(np.random.default_rng(seed), n, c, h, w)
    if isinstance(pads, int):
        t = l = b = r = pads
    elif len(pads) == 2:
        (t, l), (b, r) = pads, pads  # (vertical, horizontal) on both sides
    else:
        t, l, b, r = pads
    onnx_pads = np.array([0, 0, t, l, 0, 0, b, r], np.int64)  # all begins, then all ends
    expected = run_ort([node("Pad", ["x", "pads", "value"], mode="constant")], {"x": x},
                       {"pads": onnx_pads, "value": np.float32(value)})
    check("pad", [x], expected, pad=pads, value=value)


@pytest.mark.parametrize("axis,onnx_axes", [("horizontal", [3]), ("vertical", [2]),
                                            ("both", [2, 3])])
def test_flip(axis, onnx_axes):
    x = rand(np.random.default_rng(0), 2, 3, 4, 5)
    k = len(onnx_axes)
    inits = {"starts": np.full(k, -1, np.int64), "ends": np.full(k, np.iinfo(np.int64).min),
             "axes": np.array(onnx_axes, np.int64), "steps": np.full(k, -1, np.int64)}
    expected = run_ort([node("Slice", ["x", "starts", "ends", "axes", "steps"])], {"x": x}, inits)
    check("flip", [x], expected, axis=axis)


@given(c=st.integers(1, 40), data=st.data(), seed=seeds)
def test_channel_slice(c, data, seed):
    start = data.draw(st.integers(0, c - 1))
    stop = data.draw(st.integers(start + 1, c))
    x = rand(np.random.default_rng(seed), 2, c, 3, 4)
    inits = {"starts": np.array([start], np.int64), "ends": np.array([stop], np.int64),
             "axes": np.array([1], np.int64)}
    expected = run_ort([node("Slice", ["x", "starts", "ends", "axes"])], {"x": x}, inits)
    check("channel_slice", [x], expected, start=start, stop=stop)


def test_dropout_and_identity_at_inference():
    x = rand(np.random.default_rng(0), 2, 3, 4, 5)
    check("dropout", [x], run_ort([node("Dropout", ["x"])], {"x": x}), rate=0.3)
    check("identity", [x], run_ort([node("Identity", ["x"])], {"x": x}))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("shape", [(8,), (2, 3, 3)])
def test_distance(p, shape):
    rng = np.random.default_rng(int(p))
    a, b = rand(rng, 4, *shape), rand(rng, 4, *shape)
    axes = np.arange(1, len(shape) + 1, dtype=np.int64)
    nodes = [node("Sub", ["a", "b"], "d"), node("Abs", ["d"], "ad"),
             node("Pow", ["ad", "p"], "adp"),
             node("ReduceSum", ["adp", "axes"], "s", keepdims=1),
             node("Pow", ["s", "inv_p"], "yr"), node("Reshape", ["yr", "shape"])]
    inits = {"p": np.float32(p), "inv_p": np.float32(1 / p), "axes": axes,
             "shape": np.array([4, 1], np.int64)}
    check("distance", [a, b], run_ort(nodes, {"a": a, "b": b}, inits), p=p)
