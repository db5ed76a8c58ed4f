"""depth_to_space, space_to_depth and channel_shuffle (compiler/ops/rearrange.py).

The float64 references against ONNX Runtime on one-node models built here (channel shuffle as
ShuffleNet's Reshape -> Transpose -> Reshape, since ONNX has no shuffle op), the generated kernels
against the references at -O0 and -O2, located errors for bad attributes, and the ONNX round trip
(export, ONNX Runtime on the export, import back), plus the importer's Split forms.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import AttrError, ShapeError, get_op
from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.onnx import OnnxImportError, export_onnx, import_onnx
from cnnc.runtime.reference import run_reference

SO = ort.SessionOptions()
SO.intra_op_num_threads = 1
SO.log_severity_level = 3
SO.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def onnx_model(nodes, shape, inits=None, opset=18, outputs=("y",)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *shape])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=10)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)  # (the outputs' shapes)


def run_ort(model, x) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), SO, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def reference(name: str, x: np.ndarray, **raw) -> np.ndarray:
    op = get_op(name)
    full = {a.name: raw.get(a.name, a.default) for a in op.signature}
    t = [TensorType(x.shape[1:])]
    attrs = op.canonicalize(full, t)
    y = op.reference([x], attrs)
    assert y.shape[1:] == op.infer(t, attrs).shape
    return y


def shuffle_nodes(c: int, h: int, w: int, g: int):
    inits = {"s1": np.array([0, g, c // g, h, w], np.int64),
             "s2": np.array([0, c, h, w], np.int64)}
    return [helper.make_node("Reshape", ["x", "s1"], ["r"]),
            helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
            helper.make_node("Reshape", ["t", "s2"], ["y"])], inits


# -- references against ONNX Runtime ----------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5),
       n=st.integers(1, 2), mode=st.sampled_from(["DCR", "CRD"]), seed=st.integers(0, 99))
def test_depth_to_space_matches_onnxruntime(b, c, h, w, n, mode, seed):
    x = np.random.default_rng(seed).standard_normal((n, c * b * b, h, w)).astype(np.float32)
    model = onnx_model([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=b, mode=mode)],
                       x.shape[1:])
    (want,) = run_ort(model, x)
    np.testing.assert_array_equal(reference("depth_to_space", x, block=b, mode=mode), want)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4),
       n=st.integers(1, 2), seed=st.integers(0, 99))
def test_space_to_depth_matches_onnxruntime(b, c, h, w, n, seed):
    x = np.random.default_rng(seed).standard_normal((n, c, h * b, w * b)).astype(np.float32)
    model = onnx_model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=b)],
                       x.shape[1:])
    (want,) = run_ort(model, x)
    np.testing.assert_array_equal(reference("space_to_depth", x, block=b), want)


@settings(max_examples=20, deadline=None)
@given(g=st.integers(1, 4), k=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4),
       n=st.integers(1, 2), seed=st.integers(0, 99))
def test_channel_shuffle_matches_onnxruntime(g, k, h, w, n, seed):
    c = g * k
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    nodes, inits = shuffle_nodes(c, h, w, g)
    (want,) = run_ort(onnx_model(nodes, x.shape[1:], inits), x)
    got = reference("channel_shuffle", x, groups=g)
    np.testing.assert_array_equal(got, want)
    # the formula in the docs: output channel o is input channel (o % g) * (C / g) + o // g
    o = np.arange(c)
    np.testing.assert_array_equal(got, x[:, (o % g) * k + o // g])


@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=st.integers(0, 99))
def test_space_to_depth_crd_matches_the_onnx_reference(b, c, h, w, seed):
    """SpaceToDepth's CRD mode (opset 28) is newer than ONNX Runtime reads: onnx's own
    reference implementation instead."""
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(seed).standard_normal((2, c, h * b, w * b)).astype(np.float32)
    model = onnx_model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=b,
                                         mode="CRD")], x.shape[1:], opset=28)
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_array_equal(reference("space_to_depth", x, block=b, mode="CRD"), want)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_inverts_depth_to_space(mode):
    x = np.random.default_rng(0).standard_normal((2, 18, 3, 4))
    y = reference("depth_to_space", x, block=3, mode=mode)
    np.testing.assert_array_equal(reference("space_to_depth", y, block=3, mode=mode), x)


# -- compiled against the reference -----------------------------------------------------------

def assert_compiled_matches(src: str, batch: int, opt_level: int) -> None:
    model = compile_model(src, opt_level=opt_level, seed=1)
    rng = np.random.default_rng(batch)
    feeds = {k: rng.standard_normal((batch,) + model.graph.node(v).type.shape)
             .astype(np.float32) for k, v in model.graph.inputs.items()}
    got = model.run(feeds)
    want = run_reference(model.graph, feeds, model.params)
    for k, ref in want.items():
        scale = max(1.0, float(np.abs(ref).max()))
        assert float(np.abs(got[k] - ref).max()) <= 2e-5 * scale, k


@settings(max_examples=6, derandomize=True, deadline=None)
@given(b=st.sampled_from([2, 3]), g=st.sampled_from([2, 3]), c=st.integers(1, 3),
       h=st.integers(1, 5), w=st.integers(1, 6), batch=st.sampled_from([1, 3]),
       opt_level=st.sampled_from([0, 2]))
def test_compiled_matches_reference(b, g, c, h, w, batch, opt_level):
    ch = c * b * b * g
    src = f"""
network rearr
input x: {ch} x {h} x {w}
x -> depth_to_space({b}) -> output dcr
x -> depth_to_space({b}, mode=CRD) -> output crd
x -> channel_shuffle({g}) -> output shuffled
x -> depth_to_space({b}, mode=CRD) -> space_to_depth({b}) -> output back
x -> depth_to_space({b}) -> space_to_depth({b}, mode=CRD) -> output back_crd
"""
    assert_compiled_matches(src, batch, opt_level)


def test_compiled_inside_a_blocked_region():
    """Between channel-blocked convolutions at -O2 the ops run plain (layout transforms around
    them) and give the same numbers as -O0 and the reference."""
    src = """
network inside
input x: 8 x 6 x 6
y = x -> conv(16, 3, pad=1) -> relu -> channel_shuffle(2) -> conv(16, 3, pad=1)
y -> depth_to_space(2) -> conv(8, 3, pad=1) -> space_to_depth(2) -> conv(8, 1) -> output z
"""
    for level in (0, 1, 2):
        assert_compiled_matches(src, 2, level)


# -- located errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("layer,message", [
    ("channel_shuffle(5)", "channel_shuffle: groups must divide the 12 channels, got 5"),
    ("channel_shuffle(0)", "channel_shuffle: groups must be at least 1, got 0"),
    ("depth_to_space(3)", "depth_to_space: block^2 = 9 must divide the 12 channels, got "
                          "block 3"),
    ("depth_to_space(2, mode=RCD)", "depth_to_space: mode must be one of DCR, CRD; got 'RCD'"),
    ("space_to_depth(4)", "space_to_depth: block must divide the height and width 6 x 4, "
                          "got 4"),
    ("space_to_depth(1.5)", "space_to_depth: block must be an integer, got 1.5"),
])
def test_bad_attributes_are_located(layer, message):
    src = f"network bad\ninput x: 12 x 6 x 4\nx -> {layer} -> output y\n"
    with pytest.raises(DslError) as e:
        load_network(src)
    assert e.value.message == message
    assert e.value.span is not None and e.value.span.line == 3
    assert e.value.span.column > len("x -> ")  # at the argument, not the line's start


def test_rank_errors_name_the_op():
    with pytest.raises(ShapeError, match="channel_shuffle needs a channels x height x width"):
        get_op("channel_shuffle").canonicalize({"groups": 2}, [TensorType((12,))])
    with pytest.raises(AttrError) as e:
        get_op("channel_shuffle").canonicalize({"groups": 5}, [TensorType((12, 2, 2))])
    assert e.value.attr == "groups"


# -- ONNX round trip and import ---------------------------------------------------------------

def test_onnx_round_trip(tmp_path):
    src = """
network rt
input x: 12 x 4 x 6
x -> depth_to_space(2) -> output a
x -> depth_to_space(2, mode=CRD) -> output b
x -> space_to_depth(2) -> output c
x -> space_to_depth(2, mode=CRD) -> output e
x -> channel_shuffle(3) -> conv(6, 1) -> output d
"""
    graph = load_network(src)
    model = compile_model(graph, seed=2)
    path = tmp_path / "rt.onnx"
    exported = export_onnx(graph, model.params, path)
    types = [n.op_type for n in exported.graph.node]
    assert {"DepthToSpace", "SpaceToDepth", "Transpose"} <= set(types)
    x = np.random.default_rng(0).standard_normal((2, 12, 4, 6)).astype(np.float32)
    sess = ort.InferenceSession(str(path), SO, providers=["CPUExecutionProvider"])
    theirs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    text, weights = import_onnx(path)
    # (space_to_depth's CRD mode comes back as DCR followed by channel_shuffle(4))
    for line in ("depth_to_space(2)", "depth_to_space(2, mode=CRD)", "space_to_depth(2)",
                 "channel_shuffle(3)", "channel_shuffle(4)"):
        assert line in text
    ours = run_reference(load_network(text), {"x": x}, weights)
    want = run_reference(graph, {"x": x}, model.params)
    for k in want:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(theirs[k], want[k], rtol=1e-5, atol=1e-5)


def test_channel_shuffle_pattern_with_literal_batch_imports():
    """ShuffleNet v1 as the model zoo writes it: literal batch 1 in the Reshape targets."""
    x = np.random.default_rng(3).standard_normal((1, 6, 2, 3)).astype(np.float32)
    nodes, _ = shuffle_nodes(6, 2, 3, 2)
    inits = {"s1": np.array([1, 2, 3, 2, 3], np.int64), "s2": np.array([1, -1, 2, 3], np.int64)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 2, 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=10)
    text, weights = import_onnx(model)
    assert "channel_shuffle(2)" in text and "reshape" not in text
    (want,) = run_ort(model, x)
    (got,) = run_reference(load_network(text), {"x": x}, weights).values()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op,mode,split,perm", [
    # PyTorch's PixelShuffle as its exporter writes it: depth_to_space in mode CRD
    ("depth_to_space", "CRD", lambda c, h, w, b: (c, b, b, h, w), [0, 1, 4, 2, 5, 3]),
    ("depth_to_space", "DCR", lambda c, h, w, b: (b, b, c, h, w), [0, 3, 4, 1, 5, 2]),
    ("space_to_depth", "DCR", lambda c, h, w, b: (c, h, b, w, b), [0, 3, 5, 1, 2, 4]),
    ("space_to_depth", "CRD", lambda c, h, w, b: (c, h, b, w, b), [0, 1, 3, 5, 2, 4]),
])
def test_rearrangements_written_out_import_as_one_layer(op, mode, split, perm):
    b, c, h, w = 2, 3, 2, 3
    if op == "depth_to_space":
        shape, out = (c * b * b, h, w), (c, h * b, w * b)
    else:
        shape, out = (c, h * b, w * b), (c * b * b, h, w)
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=perm),
             helper.make_node("Reshape", ["t", "s2"], ["y"])]
    inits = {"s1": np.array([0, *split(c, h, w, b)], np.int64),
             "s2": np.array([-1, *out], np.int64)}
    model = onnx_model(nodes, shape, inits)
    text, weights = import_onnx(model)
    assert f"{op}(2{', mode=CRD' if mode == 'CRD' else ''})" in text
    x = np.random.default_rng(6).standard_normal((2, *shape)).astype(np.float32)
    (want,) = run_ort(model, x)
    (got,) = run_reference(load_network(text), {"x": x}, weights).values()
    np.testing.assert_array_equal(got, want)


def test_transpose_of_another_pattern_is_still_refused():
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3, 4])]
    model = onnx_model(nodes, (6, 2, 2), {"s1": np.array([0, 2, 3, 2, 2], np.int64)})
    with pytest.raises(OnnxImportError, match="perm"):
        import_onnx(model)


@pytest.mark.parametrize("form", ["attribute", "input", "num_outputs", "equal"])
def test_split_of_channels_imports_as_channel_slices(form):
    c = 7
    if form == "attribute":
        opset, sizes, kw, ins, inits = 11, [2, 4, 1], {"split": [2, 4, 1]}, ["x"], {}
    elif form == "input":
        opset, sizes, kw = 13, [3, 0, 4], {}
        ins, inits = ["x", "sp"], {"sp": np.array([3, 0, 4], np.int64)}
    elif form == "num_outputs":  # ceil(7 / 3) = 3 each, the last smaller
        opset, sizes, kw, ins, inits = 18, [3, 3, 1], {"num_outputs": 3}, ["x"], {}
    else:
        c, opset, sizes, kw, ins, inits = 6, 13, [2, 2, 2], {}, ["x"], {}
    outs = ["a", "b", "d"]
    nodes = [helper.make_node("Split", ins, outs, axis=1, **kw)]
    used = [o for o, s in zip(outs, sizes) if s]
    model = onnx_model(nodes, (c, 3, 2), inits, opset=opset, outputs=used)
    x = np.random.default_rng(4).standard_normal((2, c, 3, 2)).astype(np.float32)
    want = dict(zip(used, run_ort(model, x)))
    text, weights = import_onnx(model)
    assert "channel_slice" in text
    got = run_reference(load_network(text), {"x": x}, weights)
    assert set(got) == set(used)
    for k in used:
        np.testing.assert_array_equal(got[k], want[k])


def test_split_of_other_axes_is_refused():
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], axis=2)]
    model = onnx_model(nodes, (3, 4, 2), opset=13, outputs=("a", "b"))
    with pytest.raises(OnnxImportError, match="only a split of the channels"):
        import_onnx(model)
