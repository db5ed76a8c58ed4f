"""ONNX import and export of the operators of issue 9: Elu, Selu, Softplus, Mish, PRelu,
InstanceNormalization and Pad's reflect and edge modes. Models are built here with
`onnx.helper`, run by ONNX Runtime, imported to DSL and run by the float64 reference (the
helpers `make_model`, `node`, `roundtrip`, `single` and `rand` of test_onnx_import.py, loaded
from that file: pytest runs in importlib mode); then DSL networks go the other way, exported,
run by ONNX Runtime and imported back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cnnc.dsl.builder import load_network  # noqa: E402
from cnnc.runtime.onnx import OnnxImportError, export_onnx, import_onnx  # noqa: E402
from cnnc.runtime.reference import run_reference  # noqa: E402
from cnnc.runtime.weights import init_params  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "import_helpers", Path(__file__).with_name("test_onnx_import.py"))
import_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_helpers)
make_model, node, roundtrip, single, rand = (import_helpers.make_model, import_helpers.node,
                                             import_helpers.roundtrip, import_helpers.single,
                                             import_helpers.rand)


# -- import -----------------------------------------------------------------------------------

@pytest.mark.parametrize("op,attrs,opset,expect", [
    ("Elu", {}, 17, "elu"),
    ("Elu", {"alpha": 0.25}, 17, "elu(alpha=0.25)"),
    ("Selu", {}, 17, "selu"),
    ("Selu", {"alpha": 2.0, "gamma": 3.0}, 17, "selu(alpha=2.0, gamma=3.0)"),
    ("Selu", {"alpha": 1.67326319217681884765625}, 17, "selu"),
    ("Softplus", {}, 17, "softplus"),
    ("Mish", {}, 18, "mish"),
])
def test_activation_import(op, attrs, opset, expect):
    text, _ = roundtrip(single(op, (3, 4, 5), opset=opset, **attrs))
    assert f"-> {expect} ->" in text or f"-> {expect}\n" in text, text


@pytest.mark.parametrize("slope_shape,per_channel", [
    ((4, 1, 1), True), ((1, 4, 1, 1), True), ((1,), False), ((), False), ((1, 1, 1), False)])
def test_prelu_import_per_channel_and_scalar(slope_shape, per_channel):
    slope = rand(*slope_shape) if slope_shape else np.float32(-0.3)
    text, weights = roundtrip(single("PRelu", (4, 3, 5), {"s": slope}, extra=["s"]))
    (w,) = [v for k, v in weights.items() if k.endswith(".weight")]
    assert w.shape == ((4,) if per_channel else (1,))
    assert ("num_parameters=1" in text) == (not per_channel), text


def test_prelu_import_on_features():
    text, weights = roundtrip(single("PRelu", (6,), {"s": rand(6)}, extra=["s"]))
    assert [v.shape for v in weights.values()] == [(6,)]


@pytest.mark.parametrize("slope_shape", [(4,), (5,), (3, 5), (4, 3, 1), (1, 1, 3, 5)])
def test_prelu_slopes_that_are_not_per_channel_are_refused(slope_shape):
    """ONNX right-aligns the slope: [5] against N x 4 x 3 x 5 is one per column, [3, 5] one
    per pixel, and [4] does not broadcast at all. cnnc's prelu is per channel or one for all.
    (Built by hand: ONNX's shape inference would refuse the shapes that do not broadcast.)"""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [node("PRelu", ["x", "s"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 3, 5])],
        initializer=[numpy_helper.from_array(rand(*slope_shape), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(OnnxImportError, match=r"PRelu \(node 'PRelu_y', opset 17\): slope of "
                       rf"shape \[{', '.join(map(str, slope_shape))}\] .* cnnc's prelu takes "
                       r"one slope per channel \(\[C, 1, 1\]\) or one for all"):
        import_onnx(model)


def test_instance_norm_import_is_instance_norm():
    text, _ = roundtrip(single("InstanceNormalization", (4, 3, 5), {"s": rand(4), "b": rand(4)},
                               extra=["s", "b"], epsilon=1e-3))
    assert "instance_norm(eps=0.001)" in text, text


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("opset", [10, 11, 13, 18, 21])
def test_pad_modes_import(mode, opset):
    """Pad's pads are an attribute before opset 11 and an input from it (axes from 18)."""
    if opset < 11:
        nodes = [node("Pad", ["x"], mode=mode, pads=[0, 0, 1, 2, 0, 0, 2, 1])]
        inits = {}
    elif opset >= 18:
        nodes = [node("Pad", ["x", "pads", "", "axes"], mode=mode)]
        inits = {"pads": np.array([1, 2, 2, 1], np.int64), "axes": np.array([2, 3], np.int64)}
    else:
        nodes = [node("Pad", ["x", "pads"], mode=mode)]
        inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
    text, _ = roundtrip(make_model(nodes, {"x": (2, 3, 4)}, inits, opset))
    assert f"pad((1, 2, 2, 1), mode={mode})" in text, text


def test_pad_wrap_and_reflect_beyond_the_input_are_refused():
    wrap = make_model([node("Pad", ["x", "pads"], mode="wrap")], {"x": (2, 3, 4)},
                      {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, 19)
    with pytest.raises(OnnxImportError, match="mode 'wrap'; cnnc pads in modes constant, "
                                              "reflect and edge"):
        import_onnx(wrap)
    wide = make_model([node("Pad", ["x", "pads"], mode="reflect")], {"x": (2, 3, 4)},
                      {"pads": np.array([0, 0, 3, 0, 0, 0, 0, 0], np.int64)}, 18)
    with pytest.raises(OnnxImportError, match="as cnnc pad: mode=reflect needs padding smaller "
                                              "than the input"):
        import_onnx(wide)


# -- export, then import back -----------------------------------------------------------------

NETWORK = """
network issue9
input image: 4 x 7 x 6
input vec: 5
a = image -> conv(6, 3, pad=1) -> elu(0.5) -> instance_norm(eps=0.01) -> prelu
b = a -> pad((2, 1, 0, 3), mode=reflect) -> selu(alpha=1.5, gamma=2) -> pad(3, mode=edge)
b -> softplus -> mish -> prelu(num_parameters=1) -> output maps
vec -> prelu -> output feats
"""


def test_export_runs_in_onnxruntime_and_imports_back():
    graph = load_network(NETWORK)
    params = init_params(graph, 5)
    rng = np.random.default_rng(5)
    params = {k: (v + rng.standard_normal(v.shape) * 0.5).astype(np.float32)  # slopes differ
              for k, v in params.items()}
    feeds = {k: (rng.standard_normal((3,) + graph.node(v).type.shape) * 2).astype(np.float32)
             for k, v in graph.inputs.items()}
    reference = run_reference(graph, feeds, params)
    model = export_onnx(graph, params)
    types = {n.op_type for n in model.graph.node}
    assert {"Elu", "InstanceNormalization", "PRelu", "Pad", "Selu", "Softplus", "Mish"} <= types
    assert {a.s.decode() for n in model.graph.node if n.op_type == "Pad"
            for a in n.attribute if a.name == "mode"} == {"reflect", "edge"}
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    theirs = session.run(None, feeds)
    text, weights = import_onnx(model)
    again = load_network(text)
    ops = [n.op for n in again.compute_nodes()]
    for op in ("elu", "instance_norm", "prelu", "pad", "selu", "softplus", "mish"):
        assert op in ops, text
    assert sum(p.type.size for p in again.params()) == sum(v.size for v in params.values())
    ours_again = run_reference(again, dict(zip(again.inputs, feeds.values())), weights)
    for (name, ref), other, back in zip(reference.items(), theirs, ours_again.values()):
        bound = max(1.0, float(np.abs(ref).max()))
        assert float(np.abs(ref - other).max()) <= 1e-4 * bound, f"ORT {name}"
        assert float(np.abs(ref - back).max()) <= 1e-5 * bound, f"re-imported {name}"
