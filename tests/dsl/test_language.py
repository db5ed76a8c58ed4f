"""Every feature of the network language, checked on the graph it builds: ops, layer and
parameter names, shapes, attributes; numbers through the float64 reference where the feature
is about values (literal weights, sharing, broadcasting)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.compiler.ir import Graph, Node
from cnnc.dsl.builder import load_network
from cnnc.runtime.reference import run_reference
from cnnc.runtime.weights import init_params


def compute(g: Graph) -> list[Node]:
    return [n for n in g.nodes() if n.op not in ("input", "param")]


def by_name(g: Graph, name: str) -> Node:
    matches = [n for n in g.nodes() if n.name == name]
    assert len(matches) == 1, f"{name}: {[n.name for n in g.nodes()]}"
    return matches[0]


def params_of(g: Graph, node: Node) -> list[str]:
    return [g.node(i).name for i in node.inputs if g.node(i).op == "param"]


def out(g: Graph, name: str) -> Node:
    return g.node(g.outputs[name])


# -- header, inputs, names --------------------------------------------------------------------

HEADER = """
network head(classes = 10, width = 8, wide = width * 2)
input x: 3 x 8 x 8
x -> conv(width, 3, pad=same) -> relu -> conv(wide, 1) -> flatten -> dense(classes)
  -> output logits
"""


def test_header_defaults_and_overrides():
    g = load_network(HEADER)
    assert g.name == "head"
    assert out(g, "logits").type.shape == (10,)
    assert by_name(g, "conv1").attrs["out_channels"] == 8
    assert by_name(g, "conv2").attrs["out_channels"] == 16  # default from an earlier param
    g = load_network(HEADER, classes=5, width=4)
    assert out(g, "logits").type.shape == (5,)
    assert by_name(g, "conv2").attrs["out_channels"] == 8  # follows the overridden width


def test_several_inputs_and_dims_from_parameters():
    g = load_network("""network two(size = 6)
input a: 3 x size x size
input b: 3x6x6          # written without spaces
input v: 12
y = a + b
y -> flatten -> output f
v -> dense(4) -> output d
""")
    assert list(g.inputs) == ["a", "b", "v"]
    assert [g.node(i).type.shape for i in g.inputs.values()] == [(3, 6, 6), (3, 6, 6), (12,)]
    assert out(g, "f").type.shape == (108,)
    assert out(g, "d").type.shape == (4,)


def test_layer_names_counters_and_labels():
    g = load_network("""network n
input x: 3 x 8 x 8
x -> conv(4, 3, pad=1) -> relu -> conv(4, 3, pad=1) as second -> relu -> conv(4, 1)
  -> output o
""")
    names = [n.name for n in compute(g)]
    assert names == ["conv1", "relu1", "second", "relu2", "conv2"]
    assert params_of(g, by_name(g, "second")) == ["second.weight", "second.bias"]


# -- chains across lines ----------------------------------------------------------------------

def test_chains_continue_across_lines():
    g = load_network("""network n
input x: 3 x 8 x 8
a = x -> conv(4, 1)
      -> relu                # a line starting with -> continues
b = x ->                     # a trailing -> continues
    conv(4, 1) -> relu
c = concat(a,
           b,                # newlines inside parentheses
           x)
w = [1, 2,
     3]
c -> output o
""")
    assert [n.op for n in compute(g)] == ["conv", "relu", "conv", "relu", "concat"]
    assert out(g, "o").type.shape == (11, 8, 8)


def test_comments_and_blank_lines():
    g = load_network("""# leading comment

network n   # trailing comment
# a comment line between statements

input x: 2 x 4 x 4
x -> relu   # comment after a chain
  # comment between continuation lines
  -> output o
""")
    assert [n.op for n in compute(g)] == ["relu"]


# -- arithmetic -------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, value", [
    ("c * 4", 28), ("c // 2", 3), ("c % 4", 3), ("-c + 10", 3), ("(c + 1) * 2", 16),
    ("c - 2 * 3", 1), ("c // 2 * 2", 6), ("-(c - 9)", 2), ("c * 2 // 3 % 3", 1),
])
def test_integer_arithmetic(expr, value):
    g = load_network(f"""network n(c = 7)
input x: 3 x 4 x 4
k = {expr}
x -> conv(k, 1) -> output o
""")
    assert by_name(g, "conv1").attrs["out_channels"] == value


def test_float_arithmetic_for_float_attributes():
    g = load_network("""network n
input x: 3 x 4 x 4
x -> leaky_relu(alpha = 1 / 4) -> hard_sigmoid(alpha=1/6, beta=0.5) -> output o
""")
    assert by_name(g, "leaky_relu1").attrs["alpha"] == pytest.approx(0.25)
    assert by_name(g, "hard_sigmoid1").attrs["alpha"] == pytest.approx(1 / 6)


# -- blocks -----------------------------------------------------------------------------------

BLOCKS = """network n
input x: 4 x 8 x 8
block b(c, d = c * 2, k = 3) {
    y = in -> conv(d, k, pad=same) as expand -> relu
    return y -> conv(c, 1)
}
x -> b(4) -> b(4, 6) -> b(4, k=1, d=5) -> output o
"""


def test_block_parameters_defaults_and_keywords():
    g = load_network(BLOCKS)
    assert [by_name(g, f"b{i}.expand").attrs["out_channels"] for i in (1, 2, 3)] == [8, 6, 5]
    assert [by_name(g, f"b{i}.expand").attrs["kernel"] for i in (1, 2, 3)] == [(3, 3)] * 2 + \
        [(1, 1)]
    assert params_of(g, by_name(g, "b2.conv1")) == ["b2.conv1.weight", "b2.conv1.bias"]
    assert out(g, "o").type.shape == (4, 8, 8)


def test_block_called_like_a_function_with_a_label():
    g = load_network("""network n
input x: 4 x 8 x 8
block res(c) {
    return relu((in -> conv(c, 3, pad=1)) + in)
}
y = res(x, 4) as first
y -> res(4) -> output o
""")
    assert {n.name for n in compute(g)} >= {"first.conv1", "first.add1", "first.relu1",
                                            "res1.conv1", "res1.add1"}


def test_block_name_ending_in_a_digit_numbers_with_underscore():
    g = load_network("""network n
input x: 4 x 8 x 8
block stage2(c) {
    return in -> conv(c, 1)
}
x -> stage2(4) * 2 -> output o
""")
    assert [n.name for n in compute(g)] == ["stage2_1.conv1", "stage2_2.conv1"]


def test_nested_blocks_name_their_layers_by_path():
    g = load_network("""network n
input x: 4 x 8 x 8
block inner(c) {
    return in -> conv(c, 1)
}
block outer(c) {
    return in -> inner(c) -> inner(c)
}
x -> outer(4) -> output o
""")
    assert [n.name for n in compute(g)] == ["outer1.inner1.conv1", "outer1.inner2.conv1"]
    assert "outer1.inner2.conv1.weight" in {p.name for p in g.params()}


# -- repetition -------------------------------------------------------------------------------

def test_repeat_a_block_and_a_group_of_stages():
    g = load_network("""network n(times = 3)
input x: 4 x 8 x 8
block basic(c) {
    return relu((in -> conv(c, 3, pad=1)) + in)
}
x -> basic(4) * 2 -> (conv(4, 3, pad=1) -> relu) * times -> maxpool(2) * 2 -> output o
""")
    ops = [n.op for n in compute(g)]
    assert ops == ["conv", "add", "relu"] * 2 + ["conv", "relu"] * 3 + ["maxpool"] * 2
    assert [n.name for n in compute(g)][:4] == ["basic1.conv1", "basic1.add1", "basic1.relu1",
                                                "basic2.conv1"]
    assert len({p.name for p in g.params()}) == 2 * 2 + 3 * 2  # every instance owns its own
    assert out(g, "o").type.shape == (4, 2, 2)


def test_group_with_a_single_stage_and_no_repeat():
    g = load_network("""network n
input x: 4 x 8 x 8
x -> (relu) -> (conv(2, 1) -> relu) -> output o
""")
    assert [n.op for n in compute(g)] == ["relu", "conv", "relu"]


# -- tensors: residual, difference, product, concat -------------------------------------------

def test_residual_difference_and_broadcast_product():
    g = load_network("""network se
input x: 4 x 6 x 6
gate = x -> globalavgpool -> conv(4, 1) -> sigmoid      # 4 x 1 x 1
scaled = x * gate                                       # broadcasts over height and width
y = scaled + x - x -> relu
y -> output o
""")
    assert [n.op for n in compute(g)] == ["globalavgpool", "conv", "sigmoid", "mul", "add",
                                          "sub", "relu"]
    mul = by_name(g, "mul1")
    assert [g.node(i).type.shape for i in mul.inputs] == [(4, 6, 6), (4, 1, 1)]
    assert mul.type.shape == (4, 6, 6)
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((2, 4, 6, 6))
    params = init_params(g, seed=1)
    res = run_reference(g, {"x": xv}, params, keep=True)
    gate = res[f"%{by_name(g, 'sigmoid1').id}"]
    np.testing.assert_allclose(res["o"], np.maximum(xv * gate, 0), rtol=1e-12, atol=1e-12)


def test_concat_of_chains_and_names():
    g = load_network("""network inception
input x: 3 x 8 x 8
b1 = x -> conv(2, 1)
y = concat(b1, x -> conv(3, 1) -> relu, (x -> maxpool(3, stride=1, pad=1)))
y -> output o
""")
    cat = out(g, "o")
    assert cat.op == "concat" and cat.attrs["axis"] == 0
    assert [g.node(i).type.shape[0] for i in cat.inputs] == [2, 3, 3]
    assert cat.type.shape == (8, 8, 8)


def test_add_of_three_tensors():
    g = load_network("""network n
input a: 2 x 3 x 3
input b: 2 x 3 x 3
input c: 2 x 3 x 3
output s = add(a, b, c)
""")
    assert out(g, "s").op == "add" and len(out(g, "s").inputs) == 3


# -- outputs ----------------------------------------------------------------------------------

def test_several_outputs_anywhere_in_a_chain():
    g = load_network("""network heads
input x: 3 x 8 x 8
x -> conv(4, 3, pad=1) -> output features -> relu -> globalavgpool -> flatten
  -> dense(5) -> output main
aux = x -> flatten -> dense(2)
output auxiliary = aux
output twice = aux -> relu
""")
    assert list(g.outputs) == ["features", "main", "auxiliary", "twice"]
    assert out(g, "features").op == "conv"
    assert out(g, "main").type.shape == (5,)
    assert out(g, "auxiliary") is by_name(g, "dense2")
    assert out(g, "twice").op == "relu"


# -- weight sharing ---------------------------------------------------------------------------

SIAMESE = """network siamese
input left: 3 x 8 x 8
input right: 3 x 8 x 8
block embed(c) {
    return in -> conv(c, 3) -> relu -> globalavgpool -> flatten
}
shared tower = embed(4)
e1 = left -> tower
e2 = tower(right)
output distance = e1 - e2
"""


def test_shared_block_creates_parameters_once():
    g = load_network(SIAMESE)
    convs = [n for n in compute(g) if n.op == "conv"]
    assert [c.name for c in convs] == ["tower.conv1", "tower@2.conv1"]
    assert convs[0].id != convs[1].id
    assert convs[0].inputs[1:] == convs[1].inputs[1:]  # the same param node ids
    assert sorted(p.name for p in g.params()) == ["tower.conv1.bias", "tower.conv1.weight"]
    # the same weights on the same image give a zero distance
    xv = np.random.default_rng(2).standard_normal((1, 3, 8, 8))
    res = run_reference(g, {"left": xv, "right": xv}, init_params(g, seed=3))
    assert np.all(res["distance"] == 0)
    res = run_reference(g, {"left": xv, "right": xv[:, ::-1]}, init_params(g, seed=3))
    assert np.any(res["distance"] != 0)


def test_shared_single_layer():
    g = load_network("""network n
input x: 16
shared fc = dense(16)
x -> fc -> relu -> fc -> output o
""")
    dense = [n for n in compute(g) if n.op == "dense"]
    assert [d.name for d in dense] == ["fc", "fc@2"]
    assert params_of(g, dense[0]) == params_of(g, dense[1]) == ["fc.weight", "fc.bias"]
    assert dense[0].inputs[1:] == dense[1].inputs[1:]
    xv = np.random.default_rng(4).standard_normal((3, 16))
    p = init_params(g, seed=5)
    w, b = p["fc.weight"].astype(np.float64), p["fc.bias"].astype(np.float64)
    expect = np.maximum(xv @ w.T + b, 0) @ w.T + b
    np.testing.assert_allclose(run_reference(g, {"x": xv}, p)["o"], expect, rtol=1e-10)


def test_two_instances_of_a_block_do_not_share():
    g = load_network(SIAMESE.replace("shared tower = embed(4)\n", "")
                     .replace("left -> tower", "left -> embed(4)")
                     .replace("tower(right)", "embed(right, 4)"))
    assert len(g.params()) == 4


# -- literal weights --------------------------------------------------------------------------

SOBEL = """network sobel
input image: 1 x 6 x 7
image -> conv(2, 3, pad=1, bias=false, weights=[[[1, 0, -1], [2, 0, -2], [1, 0, -1]],
                                              [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]])
      -> output edges
"""


def test_literal_weights_are_fixed_params():
    g = load_network(SOBEL)
    (w,) = g.params()
    assert w.name == "conv1.weight" and w.type.shape == (2, 1, 3, 3)
    assert w.attrs["init"] == "literal" and w.attrs["trainable"] is False
    xv = np.random.default_rng(6).standard_normal((2, 1, 6, 7))
    got = run_reference(g, {"image": xv})["edges"]
    # an independent cross-correlation with the two Sobel kernels
    kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], float)
    padded = np.pad(xv[:, 0], ((0, 0), (1, 1), (1, 1)))
    for k, kernel in enumerate((kx, kx.T)):
        expect = sum(kernel[r, s] * padded[:, r:r + 6, s:s + 7]
                     for r in range(3) for s in range(3))
        np.testing.assert_allclose(got[:, k], expect, rtol=1e-6, atol=1e-6)


def test_literal_dense_weights_and_bias():
    g = load_network("""network n
input v: 2
v -> dense(3, weights=[[1, 2], [3, 4], [5, 6]], bias=[0.5, -1, 0]) -> output y
""")
    w, b = g.params()
    assert (w.name, b.name) == ("dense1.weight", "dense1.bias")
    assert w.attrs["trainable"] is False and b.attrs["trainable"] is False
    np.testing.assert_array_equal(b.attrs["value"], np.array([0.5, -1, 0], np.float32))
    got = run_reference(g, {"v": np.array([[1.0, -2.0]])})["y"]
    np.testing.assert_allclose(got, [[1 - 4 + 0.5, 3 - 8 - 1, 5 - 12]])


def test_literal_weights_may_be_flat():
    g = load_network("""network n
input x: 1 x 3 x 3
x -> conv(1, 2, bias=false, weights=[1, 2, 3, 4]) -> output y
""")
    np.testing.assert_array_equal(g.params()[0].attrs["value"].reshape(-1), [1, 2, 3, 4])


# -- imports ----------------------------------------------------------------------------------

def test_import_and_from_import_relative_to_the_importing_file(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "helpers.cnn").write_text("block helper(c) {\n    return in -> conv(c, 1)\n}\n")
    (lib / "blocks.cnn").write_text("""import "helpers.cnn"
block basic(c) {
    return relu((in -> helper(c)) + in)
}
block down(c) {
    return in -> conv(c, 3, stride=2, pad=1)
}
block unused(c) {
    return in
}
""")
    (tmp_path / "net.cnn").write_text("""from "lib/blocks.cnn" import basic, down
network n
input x: 4 x 8 x 8
x -> basic(4) -> down(8) -> output o
""")
    (tmp_path / "all.cnn").write_text("""import "lib/blocks.cnn"
network m
input x: 4 x 8 x 8
x -> unused(4) -> down(8) -> output o
""")
    g = load_network(tmp_path / "net.cnn")
    assert [n.name for n in compute(g)] == ["basic1.helper1.conv1", "basic1.add1",
                                            "basic1.relu1", "down1.conv1"]
    assert out(g, "o").type.shape == (8, 4, 4)
    assert by_name(g, "basic1.helper1.conv1").span.file.endswith("helpers.cnn")
    g = load_network(str(tmp_path / "all.cnn"))
    assert [n.name for n in compute(g)] == ["down1.conv1"]


# -- attribute values -------------------------------------------------------------------------

def test_words_tuples_and_four_side_pads():
    g = load_network("""network n
input x: 3 x 9 x 10
x -> conv(4, 3, pad=same) -> conv(4, (3, 5), pad=(1, 2)) -> conv(4, 2, pad=(0, 1, 1, 0))
  -> conv(4, 3, stride=(2, 1), pad=valid) -> upsample(2, mode=bilinear)
  -> gelu(approximate=tanh) -> softmax(axis=channels) -> output o
""")
    c1, c2, c3, c4 = (by_name(g, f"conv{i}") for i in range(1, 5))
    assert c1.attrs["pads"] == (1, 1, 1, 1) and c1.type.shape == (4, 9, 10)
    assert c2.attrs["kernel"] == (3, 5) and c2.attrs["pads"] == (1, 2, 1, 2)
    assert c3.attrs["pads"] == (0, 1, 1, 0) and c3.type.shape == (4, 9, 10)
    assert c4.attrs["stride"] == (2, 1) and c4.type.shape == (4, 4, 8)
    assert by_name(g, "upsample1").attrs["mode"] == "bilinear"
    assert by_name(g, "gelu1").attrs["approximate"] == "tanh"


def test_words_pass_through_block_parameters():
    g = load_network("""network n
input x: 3 x 7 x 7
block c(k, p = same) {
    return in -> conv(4, k, pad=p, stride=2)
}
x -> c(3) -> c(3, valid) -> output o
""")
    assert by_name(g, "c1.conv1").attrs["pads"] == (1, 1, 1, 1)
    assert by_name(g, "c2.conv1").attrs["pads"] == (0, 0, 0, 0)


def test_zoo_and_file_loading(tmp_path):
    g = load_network("resnet18", classes=7)
    assert out(g, "logits").type.shape == (7,)
    path = tmp_path / "tiny.cnn"
    path.write_text("network tiny\ninput x: 2\nx -> dense(3) -> output y\n")
    assert load_network(path).name == load_network(str(path)).name == "tiny"
