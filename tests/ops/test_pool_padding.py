"""Pooling with any padding and dilation ONNX allows (compiler/ops/pool.py).

- Padding up to the window (ONNX Runtime's limit: pads smaller than the kernel) and dilated
  max, min, average and Lp windows: the float64 references against ONNX Runtime's pooling ops
  directly, hypothesis-drawn, including windows that see only padding (a dilated window
  stepping over a small input), where ONNX Runtime gives the lowest float32 for a maximum and 0
  for a mean without counted cells.
- Padding of a window or more (which ONNX Runtime refuses): against ONNX Runtime on an explicit
  Pad node before an unpadded pool (max: padding of the lowest float32; average: the ratio of two
  means, of the padded input and of padded ones, for count_include_pad=false).
- The generated kernels (plain, and the channel-blocked max pool between convolutions at -O2)
  against the reference at -O0, -O1 and -O2; the ONNX round trip of such a pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import get_op
from cnnc.dsl.builder import load_network
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.onnx import export_onnx, import_onnx
from cnnc.runtime.reference import run_reference

LOWEST = float(np.finfo(np.float32).min)
SO = ort.SessionOptions()
SO.intra_op_num_threads = 1
SO.log_severity_level = 3
SO.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
ONNX_OP = {"maxpool": "MaxPool", "avgpool": "AveragePool", "lppool": "LpPool"}


def run_ort(nodes, x, inits=None) -> np.ndarray:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), SO, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def reference(op: str, x: np.ndarray, **raw: Any) -> tuple[np.ndarray, dict[str, Any]]:
    opdef = get_op(op)
    full = {a.name: raw.get(a.name, a.default) for a in opdef.signature}
    t = [TensorType(x.shape[1:])]
    attrs = opdef.canonicalize(full, t)
    y = opdef.reference([x], attrs)
    assert y.shape[1:] == opdef.infer(t, attrs).shape
    return y, attrs


def onnx_attrs(op: str, attrs: dict[str, Any], pads: bool = True) -> dict[str, Any]:
    out = dict(kernel_shape=list(attrs["kernel"]), strides=list(attrs["stride"]),
               dilations=list(attrs["dilation"]), ceil_mode=int(attrs["ceil_mode"]),
               pads=list(attrs["pads"]) if pads else [0, 0, 0, 0])
    if op == "avgpool":
        out["count_include_pad"] = int(attrs["count_include_pad"])
    if op == "lppool":
        out["p"] = int(attrs["p"])
    return out


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    tol = 1e-5 * max(1.0, float(np.abs(want[np.abs(want) < 1e30]).max(initial=0.0)))
    np.testing.assert_allclose(got, want.astype(np.float64), rtol=1e-5, atol=tol)


@st.composite
def windows(draw, op: str, beyond: bool = False) -> dict[str, Any]:
    """Attributes and an input shape; pads below the kernel (ONNX Runtime's limit) unless
    ``beyond``, where at least one pad is a window or more."""
    r, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if beyond:
        pads = [draw(st.integers(0, 4)) for _ in range(4)]
        side = draw(st.integers(0, 3))
        pads[side] = max(pads[side], (r, s)[side % 2] + draw(st.integers(0, 2)))
        dil = (1, 1) if draw(st.booleans()) else dil
    else:
        pads = [draw(st.integers(0, k - 1)) for k in (r, s, r, s)]
    span = (dil[0] * (r - 1) + 1, dil[1] * (s - 1) + 1)
    lo_h, lo_w = max(1, span[0] - pads[0] - pads[2]), max(1, span[1] - pads[1] - pads[3])
    h, w = draw(st.integers(lo_h, lo_h + 5)), draw(st.integers(lo_w, lo_w + 5))
    raw = dict(kernel=(r, s), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
               pad=tuple(pads), dilation=dil, ceil_mode=draw(st.booleans()))
    if op == "avgpool":
        raw["count_include_pad"] = draw(st.booleans())
    if op == "lppool":
        raw["p"] = float(draw(st.sampled_from([1, 2, 3])))
    return dict(raw=raw, shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
                seed=draw(st.integers(0, 2**16)))


# -- references against ONNX Runtime ----------------------------------------------------------

@pytest.mark.parametrize("op", ["maxpool", "avgpool", "lppool"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_pads_below_the_kernel_and_dilation_match_onnxruntime(op, data):
    case = data.draw(windows(op))
    x = (np.random.default_rng(case["seed"]).standard_normal(case["shape"]) - 2).astype(
        np.float32)
    got, attrs = reference(op, x, **case["raw"])
    want = run_ort([helper.make_node(ONNX_OP[op], ["x"], ["y"], **onnx_attrs(op, attrs))], x)
    close(got, want)


def test_windows_of_only_padding_match_onnxruntime():
    """Kernel 2 dilated by 3 with padding 1 on a 2 x 2 input: the one window's taps are both in
    the padding. ONNX Runtime: the lowest float32 for max, 0 for the means."""
    x = np.array([[[[1.0, -2.0], [3.0, 4.0]]]], np.float32)
    common = dict(kernel=2, stride=1, pad=1, dilation=3)
    for op, raw, value in [("maxpool", {}, LOWEST), ("minpool", {}, -LOWEST),
                           ("avgpool", {"count_include_pad": False}, 0.0),
                           ("avgpool", {"count_include_pad": True}, 0.0),
                           ("lppool", {}, 0.0)]:
        got, attrs = reference(op, x, **common, **raw)
        assert got.shape == (1, 1, 1, 1) and got.item() == value, op
        if op in ONNX_OP:
            want = run_ort([helper.make_node(ONNX_OP[op], ["x"], ["y"],
                                             **onnx_attrs(op, attrs))], x)
            assert want.item() == np.float32(value), op


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_pads_of_a_window_or_more_match_onnxruntime_with_explicit_padding(op, data):
    case = data.draw(windows(op, beyond=True))
    x = (np.random.default_rng(case["seed"]).standard_normal(case["shape"]) - 2).astype(
        np.float32)
    # (not in ceil mode: it drops a last window starting in the declared trailing padding,
    # which an explicit Pad node turns into input)
    got, attrs = reference(op, x, **{**case["raw"], "ceil_mode": False})
    t, l, b, r = attrs["pads"]
    pads = {"pads": np.array([0, 0, t, l, 0, 0, b, r], np.int64)}

    def padded_pool(source: np.ndarray, fill: float) -> np.ndarray:
        nodes = [helper.make_node("Pad", ["x", "pads", "fill"], ["p"], mode="constant"),
                 helper.make_node(ONNX_OP[op], ["p"], ["y"],
                                  **onnx_attrs(op, attrs, pads=False))]
        return run_ort(nodes, source, {**pads, "fill": np.float32(fill)})

    if op == "maxpool":
        want = padded_pool(x, LOWEST)
    elif attrs["count_include_pad"]:
        want = padded_pool(x, 0.0)
    else:  # mean over input cells = mean over the window / share of input cells in it
        sums, share = padded_pool(x, 0.0), padded_pool(np.ones_like(x), 0.0)
        want = np.divide(sums, share, out=np.zeros_like(sums), where=share > 0)
    close(got, want)


# -- compiled against the reference -----------------------------------------------------------

def assert_compiled(src: str, opt_level: int, batch: int = 2) -> Any:
    model = compile_model(src, opt_level=opt_level, seed=1)
    x = np.random.default_rng(batch).standard_normal(
        (batch,) + model.graph.node(model.graph.inputs["x"]).type.shape).astype(np.float32)
    got = model.run({"x": x})
    want = run_reference(model.graph, {"x": x}, model.params)
    for k, ref in want.items():
        close(got[k], ref)
    return model


@settings(max_examples=6, derandomize=True, deadline=None)
@given(op=st.sampled_from(["maxpool", "minpool", "avgpool", "lppool"]), data=st.data(),
       beyond=st.booleans(), opt_level=st.sampled_from([0, 2]))
def test_compiled_pools_match_reference(op, data, beyond, opt_level):
    case = data.draw(windows("avgpool" if op == "avgpool" else "maxpool", beyond))
    raw = case["raw"]
    args = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in raw.items())
    _, c, h, w = case["shape"]
    assert_compiled(f"network p\ninput x: {c} x {h} x {w}\nx -> {op}({args}) -> output y\n",
                    opt_level)


@pytest.mark.parametrize("opt_level", [0, 1, 2])
def test_blocked_max_pool_with_windows_of_only_padding(opt_level):
    """Between convolutions at -O2 the max pool runs on NCHW8c storage: the same numbers, the
    lowest float32 where a window sees only padding (not the zero halo)."""
    # tanh keeps the values finite for the next convolution (and a 0 read from the halo
    # distinct from the lowest float32); |y|'s global maximum is inf if -inf were written.
    src = """
network blocked
input x: 3 x 5 x 5
y = x -> conv(8, 3, pad=1) -> maxpool(2, stride=1, pad=(1, 4, 2, 1), dilation=(1, 3))
y -> tanh -> maxpool(3, stride=2, pad=3) -> tanh -> conv(8, 1) -> output z
y -> abs -> globalmaxpool -> output g
"""
    model = assert_compiled(src, opt_level)
    pools = [n for n in model.plan.graph.nodes() if n.op == "maxpool"]
    assert len(pools) == 2
    assert all((n.attrs.get("layout") == "NCHW8c") == (opt_level == 2) for n in pools)


@pytest.mark.parametrize("layers,runs_in_ort,imports", [
    (["avgpool(2, stride=1, pad=1, dilation=2, count_include_pad=false)",
      "lppool(2, stride=1, dilation=(2, 1), p=2)",
      "maxpool(3, stride=1, pad=2, dilation=2)"], True, True),
    # a fractional p is exported as a window sum (Pow, Pad, Conv), which does not import back
    (["lppool(2, stride=1, pad=1, dilation=(2, 1), p=1.5, ceil_mode=true)"], True, False),
    # pads of a window or more: valid ONNX, which ONNX Runtime refuses to run
    (["maxpool(2, stride=2, pad=3)", "avgpool(2, pad=(0, 2, 0, 0))"], False, True),
])
def test_onnx_round_trip_of_wide_and_dilated_pools(tmp_path, layers, runs_in_ort, imports):
    src = "network wide\ninput x: 2 x 6 x 5\n" + "".join(
        f"x -> {layer} -> output y{k}\n" for k, layer in enumerate(layers))
    graph = load_network(src)
    path = tmp_path / "wide.onnx"
    export_onnx(graph, {}, path)
    x = np.random.default_rng(5).standard_normal((2, 2, 6, 5)).astype(np.float32)
    want = run_reference(graph, {"x": x}, {})
    if imports:
        text, weights = import_onnx(path)
        got = run_reference(load_network(text), {"x": x}, weights)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
    if runs_in_ort:
        sess = ort.InferenceSession(str(path), SO, providers=["CPUExecutionProvider"])
        theirs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
        for k in want:
            close(theirs[k], want[k])
