"""Each pass on a small graph: the exact structural change, unchanged numbers (float64
reference of the graph before vs after), and the cases where it must not fire."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.compiler.ir import Graph, TensorType
from cnnc.compiler.ops import infer_node
from cnnc.compiler.passes import PassContext, PassError, optimize
from cnnc.compiler.passes.canonicalize import canonicalize
from cnnc.compiler.passes.eliminate_common_subexpressions import eliminate_common_subexpressions
from cnnc.compiler.passes.eliminate_dead_code import eliminate_dead_code
from cnnc.compiler.passes.fold_batchnorm import fold_batchnorm
from cnnc.compiler.passes.fold_batchnorm_into_consumer import fold_batchnorm_into_consumer
from cnnc.compiler.passes.fold_constants import fold_constants
from cnnc.compiler.passes.fuse_epilogues import fuse_epilogues
from cnnc.compiler.passes.manager import run_passes
from cnnc.compiler.passes.pack_weights import pack_weights
from cnnc.compiler.passes.select_lowering import LoweringError, select_lowering
from cnnc.dsl.builder import load_network, load_zoo
from cnnc.runtime.reference import run_reference
from cnnc.runtime.weights import init_params


def build(body: str, channels: int = 4) -> Graph:
    return load_network(f"network t\ninput x: {channels} x 6 x 6\n{body}\n")


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.compute_nodes()]


def random_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights with batch-norm statistics far from the identity, so a wrong fold
    changes the numbers."""
    rng = np.random.default_rng(seed)
    params = init_params(graph, seed)
    for name, v in params.items():
        if name.endswith(("running_var", "weight")) and "batchnorm" in name:
            params[name] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
        elif name.endswith(("running_mean", "bias")):
            params[name] = rng.standard_normal(v.shape).astype(np.float32)
    return params


def same_numbers(before: Graph, after: Graph, params, batch: int = 2) -> None:
    rng = np.random.default_rng(3)
    inputs = {n: rng.standard_normal((batch,) + before.node(i).type.shape)
              for n, i in before.inputs.items()}
    want = run_reference(before, inputs, params)
    got = run_reference(after, inputs, params)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-10)


def run(pass_fn, graph: Graph, **ctx) -> bool:
    changed = pass_fn(graph, PassContext(**ctx))
    graph.verify()
    return changed


# -- batch-norm folding -----------------------------------------------------------------------

def test_fold_batchnorm_into_conv_and_dense():
    g = build("x -> conv(8, 3, pad=1, bias=false) -> batchnorm -> relu -> flatten -> dense(5) "
              "-> batchnorm -> output y")
    params = random_params(g)
    before = g.copy()
    assert run(fold_batchnorm, g)
    assert "batchnorm" not in ops(g)
    assert ops(g).count("bn_fold_weight") == 2 and ops(g).count("bn_fold_bias") == 2
    conv = next(n for n in g.compute_nodes() if n.op == "conv")
    assert conv.attrs["bias"] is True and conv.attrs["folded"] == ("batchnorm1",)
    same_numbers(before, g, params)


@pytest.mark.parametrize("body, why", [
    ("c = x -> conv(8, 3, pad=1)\nc -> batchnorm -> output y\nc -> relu -> output z",
     "the conv output has another user"),
    ("x -> conv(8, 3, pad=1) -> output c -> batchnorm -> output y", "the conv output is an output"),
    ("x -> relu -> batchnorm -> output y", "no conv or dense before it"),
    ("x -> conv_transpose(8, 3) -> batchnorm -> output y", "transposed convolutions do not fold"),
])
def test_fold_batchnorm_declines(body, why):
    g = build(body)
    assert not run(fold_batchnorm, g), why
    assert "batchnorm" in ops(g)


def test_fold_batchnorm_not_in_training():
    g = build("x -> conv(8, 3, pad=1) -> batchnorm -> output y")
    assert not run(fold_batchnorm, g, training=True)
    assert ops(g) == ["conv", "batchnorm"]


@pytest.mark.parametrize("body, channels", [
    ("x -> relu -> batchnorm -> conv(8, 1) -> output y", 4),
    ("x -> relu -> batchnorm -> conv(6, 3, stride=2, bias=false) -> output y", 4),
    ("x -> relu -> batchnorm -> conv(8, 1, groups=2) -> output y", 8),
    ("x -> relu -> batchnorm -> conv(4, 3, groups=4, dilation=2) -> output y", 4),
    ("x -> relu -> globalavgpool -> flatten -> batchnorm -> dense(5) -> output y", 4),
])
def test_fold_batchnorm_into_the_following_layer(body, channels):
    """scale and shift move into the next layer's weights (per input channel it reads, groups
    included) and bias: no batch norm is left, and the numbers are the same."""
    g = build(body, channels)
    params = random_params(g)
    before = g.copy()
    assert not run(fold_batchnorm, g)  # nothing before it to fold into
    assert run(fold_batchnorm_into_consumer, g)
    assert "batchnorm" not in ops(g)
    assert ops(g).count("bn_fold_input_weight") == 1 and ops(g).count("bn_fold_input_bias") == 1
    layer = next(n for n in g.compute_nodes() if n.op in ("conv", "dense"))
    assert layer.attrs["bias"] is True and layer.attrs["folded"] == ("batchnorm1",)
    same_numbers(before, g, params)


@pytest.mark.parametrize("body, why", [
    ("x -> relu -> batchnorm -> conv(8, 3, pad=1) -> output y",
     "padding reads zeros of the normalized value"),
    ("b = x -> relu -> batchnorm\nb -> conv(8, 1) -> output y\nb -> relu -> output z",
     "the batch norm has another user"),
    ("x -> relu -> batchnorm -> output b -> conv(8, 1) -> output y", "the batch norm is an output"),
    ("x -> relu -> batchnorm -> relu -> conv(8, 1) -> output y", "a nonlinearity between"),
    ("x -> relu -> batchnorm -> conv_transpose(8, 1) -> output y", "not a conv or dense"),
])
def test_fold_batchnorm_into_consumer_declines(body, why):
    g = build(body)
    assert not run(fold_batchnorm_into_consumer, g), why
    assert "batchnorm" in ops(g)


def test_fold_batchnorm_into_consumer_not_in_training():
    g = build("x -> relu -> batchnorm -> conv(8, 1) -> output y")
    assert not run(fold_batchnorm_into_consumer, g, training=True)
    assert "batchnorm" in ops(g)


def test_folded_following_batchnorm_compiles_and_reloads():
    """Compiled at -O1 the batch norm is gone and the numbers match the float64 reference of
    the network as written, also after new weights are loaded (the fold is re-evaluated)."""
    from cnnc.runtime.model import compile as compile_model

    g = build("x -> relu -> batchnorm -> conv(8, 1) -> relu -> output y", 8)
    model = compile_model(g, seed=0, opt_level=1)
    assert "batchnorm" not in [n.op for n in model.plan.graph.compute_nodes()]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    for seed in (1, 2):
        params = random_params(g, seed)
        model.set_params(params)
        want = run_reference(g, {"x": x}, params)["y"]
        np.testing.assert_allclose(model.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


# -- epilogue fusion ----------------------------------------------------------------------------

def test_residual_add_and_activation_fuse_into_the_conv():
    g = build("y = x -> conv(4, 3, pad=1) -> batchnorm\nrelu(y + x) -> output out")
    params = random_params(g)
    before = g.copy()
    run(fold_batchnorm, g)
    assert run(fuse_epilogues, g)
    conv = next(n for n in g.compute_nodes() if n.op == "conv")
    assert [str(e) for e in conv.attrs["epilogue"]] == ["add(%in3)", "relu"]
    assert conv.inputs[3] == g.inputs["x"]
    assert ops(g) == ["bn_fold_weight", "bn_fold_bias", "conv"]
    same_numbers(before, g, params)


def test_every_activation_fuses_and_chains_collapse():
    acts = ["relu6", "swish", "hard_swish", "sigmoid", "leaky_relu(0.2)", "gelu", "tanh",
            "abs", "hard_sigmoid", "gelu(approximate=tanh)"]
    g = build("x -> conv(4, 3, pad=1) -> " + " -> ".join(acts) + " -> output y")
    params = random_params(g)
    before = g.copy()
    assert run(fuse_epilogues, g)
    assert ops(g) == ["conv"]
    assert len(g.compute_nodes()[0].attrs["epilogue"]) == len(acts)
    same_numbers(before, g, params)


def test_gate_fuses_as_per_channel_mul():
    g = build("f = x -> conv(4, 3, pad=1)\ns = f -> globalavgpool -> conv(4, 1) -> sigmoid\n"
              "f * s -> output y")
    params = random_params(g)
    before = g.copy()
    run(fuse_epilogues, g)
    # f has two users (the pool and the mul), and the 4x1x1 gate can never take the mul as
    # its epilogue (it would widen its output): the mul keeps its own kernel
    assert "mul" in ops(g)
    same_numbers(before, g, params)
    g2 = build("s = x -> globalavgpool -> conv(4, 1) -> sigmoid\n"
               "(x -> conv(4, 3, pad=1)) * s -> output y")
    before2 = g2.copy()
    run(fuse_epilogues, g2)
    assert "mul" not in ops(g2) and "sigmoid" not in ops(g2)
    big = next(n for n in g2.compute_nodes() if n.op == "conv" and n.attrs["kernel"] == (3, 3))
    assert [e.op for e in big.attrs["epilogue"]] == ["mul"]
    same_numbers(before2, g2, random_params(before2))


@pytest.mark.parametrize("body, why", [
    ("c = x -> conv(4, 3, pad=1)\nc -> relu -> output y\nc -> output c", "producer is an output"),
    ("c = x -> conv(4, 3, pad=1)\nc -> relu -> output y\nc -> sigmoid -> output z",
     "producer has two users"),
    ("x -> maxpool(2) -> relu -> output y", "pooling takes no epilogue"),
])
def test_fusion_declines(body, why):
    g = build(body)
    n_before = len(ops(g))
    assert not run(fuse_epilogues, g), why
    assert len(ops(g)) == n_before


def test_sub_fuses_only_into_its_left_operand():
    g = build("a = x -> relu\nb = x -> conv(4, 1)\n(a - b) -> output y")
    before = g.copy()
    run(fuse_epilogues, g)
    relu = next(n for n in g.compute_nodes() if n.op == "relu")
    assert [e.op for e in relu.attrs.get("epilogue", ())] == ["sub"]
    same_numbers(before, g, random_params(before))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_no_standalone_activation_kernels_left(name):
    g = load_zoo(name, classes=10, size=32)
    optimize(g, 2)
    acts = {"relu", "relu6", "swish", "sigmoid", "hard_swish"}
    assert not acts & set(ops(g)), [n.name for n in g.compute_nodes() if n.op in acts]
    assert "batchnorm" not in ops(g)


# -- cleanup passes ----------------------------------------------------------------------------

def test_cse_merges_duplicates_but_not_parameters():
    g = build("a = x -> relu\nb = x -> relu\nc = x -> conv(4, 1)\nd = x -> conv(4, 1)\n"
              "(a + b) -> output y\n(c + d) -> output z")
    before = g.copy()
    assert run(eliminate_common_subexpressions, g)
    assert ops(g).count("relu") == 1 and ops(g).count("conv") == 2
    same_numbers(before, g, random_params(before))


def test_dce_removes_what_no_output_needs():
    g = build("u = x -> conv(4, 3)\nx -> relu -> output y")
    assert run(eliminate_dead_code, g)
    assert ops(g) == ["relu"] and not g.params()


def test_canonicalize_removes_no_ops_and_merges_reshapes():
    g = build("x -> dropout -> identity -> flatten -> reshape(144) -> reshape([12, 12]) "
              "-> output y")
    before = g.copy()
    assert run(canonicalize, g)
    assert ops(g) == ["reshape"]
    same_numbers(before, g, {})


def test_fold_constants_marks_parameter_only_nodes():
    """conv(x, abs(w)): the weight's abs depends only on a parameter; it is evaluated when
    parameters are set, and the compiled model still matches the reference."""
    from cnnc.compiler.lower import lower_graph
    from cnnc.runtime.model import CompiledModel

    g = Graph("t", infer_node)
    x = g.add("input", [], {"shape": (3, 5, 5)}, type=TensorType((3, 5, 5)), name="x")
    g.inputs["x"] = x.id
    w = g.add("param", [], {"init": "he", "trainable": True, "fan_in": 27, "fan_out": 36},
              type=TensorType((4, 3, 3, 3)), name="w")
    r = g.add("abs", [w.id], name="r")
    conv = g.add("conv", [x.id, r.id], {"out_channels": 4, "kernel": (3, 3), "stride": (1, 1),
                                        "dilation": (1, 1), "groups": 1, "bias": False,
                                        "pads": (1, 1, 1, 1)}, name="c")
    g.outputs["y"] = conv.id
    before = g.copy()
    params = {"w": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)}
    assert run(fold_constants, g)
    assert g.node(r.id).attrs["parameter_time"] is True
    assert not g.node(conv.id).attrs.get("parameter_time")
    same_numbers(before, g, params)
    run(select_lowering, g)
    run(pack_weights, g)
    plan = lower_graph(g)
    packed = g.node(conv.id).inputs[-1]
    assert plan.param_nodes == [r.id, packed] and [s.op for s in plan.steps] == ["conv"]
    model = CompiledModel(before, plan, params)
    xin = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    want = run_reference(before, {"x": xin}, params)["y"]
    np.testing.assert_allclose(model(xin), want, rtol=1e-5, atol=1e-5)


# -- lowering selection and the manager ------------------------------------------------------

def test_lowering_override_and_cost_model():
    g = build("x -> conv(64, 3, pad=1, groups=16) as grouped -> conv(8, 3, pad=1) as plain "
              "-> output y", 64)
    assert run(select_lowering, g, lowering={"plain": "im2col"}, opt_level=2)
    lowering = {n.name: n.attrs["lowering"] for n in g.compute_nodes()}
    assert lowering["plain"] == "im2col"
    from cnnc.compiler.ops.conv import ALGORITHMS
    grouped = next(n for n in g.compute_nodes() if n.name == "grouped")
    in_types = [g.node(i).type for i in grouped.inputs]
    costs = {a.name: a.estimate(grouped, in_types) for a in ALGORITHMS
             if a.applies_to(grouped, in_types) and not a.gpu_only}  # a CPU target's
    assert set(costs) == {"channelwise", "im2col"}  # 4-channel groups: the channel-wise kernel
    assert lowering["grouped"] == min(costs, key=costs.get)
    with pytest.raises(LoweringError, match="'nope'"):
        run(select_lowering, g, lowering={"nope": "direct"})


def test_the_channel_wise_choice_is_recorded_and_direct_names_its_family():
    """``direct`` asks for the direct family: the channel-wise kernel for a depthwise layer,
    the register-tiled one for the others; the node records which. An algorithm that does not
    compute a layer is refused by name."""
    g = build("x -> conv(16, 3, pad=1, groups=16) as dw -> conv(8, 1) as pw -> output y", 16)
    assert run(select_lowering, g, lowering="direct")
    assert {n.name: n.attrs["lowering"] for n in g.compute_nodes()} == \
        {"dw": "channelwise", "pw": "direct"}
    with pytest.raises(LoweringError, match="channelwise does not compute pw"):
        run(select_lowering, g, lowering={"pw": "channelwise"})


def test_manager_names_the_failing_pass_and_node(tmp_path):
    g = build("x -> conv(4, 3, pad=1) -> relu -> output y")

    def breaks(graph, ctx):
        conv = next(n for n in graph.compute_nodes() if n.op == "conv")
        ctx.at(conv)
        conv.attrs["out_channels"] = 5  # the stored type no longer matches: verify catches it
        return True

    with pytest.raises(PassError) as e:
        run_passes(g, [("fold_batchnorm", fold_batchnorm), ("breaks", breaks)], PassContext())
    msg = str(e.value)
    assert "pass breaks" in msg and "after fold_batchnorm" in msg and "conv1" in msg
    assert "<string>:3:" in msg


def test_dump_ir_and_explain(tmp_path):
    g = build("x -> conv(4, 3, pad=1) -> batchnorm -> relu -> output y")
    records = optimize(g, 2, dump_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[0] == "00-input.ir" and len(files) == len(records) + 1
    assert "batchnorm" in (tmp_path / files[0]).read_text()
    assert "batchnorm(" not in (tmp_path / files[-1]).read_text()
    notes = [n for r in records for n in r.notes]
    assert any("folded batchnorm1 into conv1" in n and "<string>:3" in n for n in notes)


# -- bottleneck folding ----------------------------------------------------------------------

INCEPTION = """a = x -> conv(16, 1) -> relu
b = x -> conv(16, 1) -> relu -> conv(16, 3, pad=1)
c = x -> conv(8, 1) -> relu -> conv(16, 5, pad=2)
concat(a, b, c) -> output y"""


def test_sibling_1x1_convolutions_merge_into_one():
    g = build(INCEPTION, 16)
    run(fold_batchnorm, g)
    run(fuse_epilogues, g)
    params = random_params(g)
    before = g.copy()
    from cnnc.compiler.passes.fold_bottlenecks import fold_bottlenecks

    assert run(fold_bottlenecks, g)
    convs = [n for n in g.compute_nodes() if n.op == "conv"]
    merged = [n for n in convs if n.attrs["kernel"] == (1, 1)]
    # all three merge; the first branch, the concatenation's first input, is the last range
    assert [n.attrs["out_channels"] for n in merged] == [40]
    slices = {n.id: (n.attrs["start"], n.attrs["stop"]) for n in g.compute_nodes()
              if n.op == "channel_slice"}
    assert sorted(slices.values()) == [(0, 16), (16, 24), (24, 40)]
    concat = next(n for n in g.compute_nodes() if n.op == "concat")
    assert slices[concat.inputs[0]] == (24, 40)
    same_numbers(before, g, params)


def test_a_branch_that_is_not_the_concatenations_first_input_stays_separate():
    from cnnc.compiler.passes.fold_bottlenecks import fold_bottlenecks

    g = build(INCEPTION.replace("concat(a, b, c)", "concat(b, a, c)"), 16)
    run(fuse_epilogues, g)
    assert run(fold_bottlenecks, g)
    merged = [n.attrs["out_channels"] for n in g.compute_nodes()
              if n.op == "conv" and n.attrs["kernel"] == (1, 1)]
    assert sorted(merged) == [16, 24]  # the reductions only


@pytest.mark.parametrize("body, why", [
    ("a = x -> conv(8, 1, stride=2)\nb = x -> conv(8, 1, stride=2)\n(a + b) -> output y",
     "strided"),
    ("a = x -> conv(8, 1) -> relu\nb = x -> conv(8, 1) -> sigmoid\n(a + b) -> output y",
     "different epilogues"),
    ("a = x -> conv(6, 1)\nb = x -> conv(8, 1)\nconcat(a -> conv(8, 3), b -> conv(8, 3)) "
     "-> output y", "not whole blocks of 8 channels"),
    ("a = x -> conv(8, 3, pad=1)\nb = x -> conv(8, 3, pad=1)\n(a + b) -> output y", "3x3"),
])
def test_bottleneck_folding_declines(body, why):
    from cnnc.compiler.passes.fold_bottlenecks import fold_bottlenecks

    g = build(body, 16)
    run(fuse_epilogues, g)
    assert not run(fold_bottlenecks, g), why


def test_inception_compiled_at_every_level_matches_the_reference():
    from cnnc.runtime.model import compile as compile_model

    g = build(INCEPTION.replace("-> output y", "-> conv(8, 1) -> output y"), 16)
    x = np.random.default_rng(5).standard_normal((2, 16, 6, 6)).astype(np.float32)
    want = None
    kernels = {}
    for level in (0, 1, 2):
        m = compile_model(g, seed=2, opt_level=level)
        if want is None:
            want = run_reference(g, {"x": x}, m.params)["y"]
        np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)
        kernels[level] = m.stats()["kernels per call"]
    # -O2: the pack of the input, the three 1x1 merged into one, the 3x3, the 5x5 (the concat
    # is in place: the branches write into it), the last 1x1 and its unpack to NCHW: 6 kernels
    assert kernels[2] == 6, kernels


@pytest.mark.parametrize("reduce5", [8, 16])
def test_the_merged_1x1_writes_the_reductions_in_front_of_the_concatenation(reduce5):
    """The concatenation's buffer begins after the merged convolution's first ranges (its
    ``prefix``), whether the merged channel count is a multiple of 16 or its padding block
    falls on the next branch's range (written later)."""
    from cnnc.runtime.model import compile as compile_model

    src = INCEPTION.replace("conv(8, 1)", f"conv({reduce5}, 1)")
    g = build(src.replace("-> output y", "-> conv(8, 1) -> output y"), 16)
    m = compile_model(g, seed=2, opt_level=2)
    concat = next(n for n in m.plan.graph.compute_nodes() if n.op == "concat")
    assert concat.attrs["in_place"] and concat.attrs["prefix"] == (16 + reduce5) // 8
    assert "prefix" in m.plan.graph.dump()
    x = np.random.default_rng(5).standard_normal((3, 16, 6, 6)).astype(np.float32)
    want = run_reference(g, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)


def test_no_prefix_when_the_padding_block_would_land_on_a_range_written_before():
    """24 merged channels write 32: the padding block would fall on ``d``'s first block, and
    ``d`` does not depend on the merged convolution (it may be written first), so the
    concatenation copies instead; the numbers stay right."""
    from cnnc.runtime.model import compile as compile_model

    g = build("a = x -> conv(16, 1) -> relu\n"
              "b = x -> conv(8, 1) -> relu -> conv(16, 3, pad=1)\n"
              "d = x -> conv(16, 3, pad=1)\n"
              "concat(a, d) -> conv(8, 1) -> output y\nb -> output z", 16)
    m = compile_model(g, seed=2, opt_level=2)
    graph = m.plan.graph
    assert [n.attrs["out_channels"] for n in graph.compute_nodes()
            if n.op == "conv" and n.inputs[0] in graph.inputs.values()
            and n.attrs["kernel"] == (1, 1)] == [24]
    concat = next(n for n in graph.compute_nodes() if n.op == "concat")
    assert "prefix" not in concat.attrs
    x = np.random.default_rng(6).standard_normal((2, 16, 6, 6)).astype(np.float32)
    want = run_reference(g, {"x": x}, m.params)
    got = m.run({"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


# -- prologue fusion ----------------------------------------------------------------------------

POOL_PROJECTION = """a = x -> conv(16, 3, pad=1)
b = a -> conv(16, 3, pad=1) -> relu
p = a -> maxpool(3, stride=1, pad=1) -> conv(8, 1) -> relu
concat(b, p) -> conv(8, 1) -> output y"""


def test_a_pool_read_only_by_a_1x1_convolution_becomes_its_prologue():
    g = build(POOL_PROJECTION, 16)
    params = random_params(g)
    before = g.copy()
    optimize(g, 2)
    assert "maxpool" not in ops(g)
    conv = next(n for n in g.compute_nodes() if n.attrs.get("prologue"))
    (pre,) = conv.attrs["prologue"]
    assert pre.op == "maxpool" and pre.attr_dict["kernel"] == (3, 3)
    assert pre.attr_dict["pads"] == (1, 1, 1, 1) and "layout" not in pre.attr_dict
    assert g.node(conv.inputs[0]).op == "conv"  # reads the pool's input, a
    assert "prologue=" in g.dump()
    same_numbers(before, g, params)


@pytest.mark.parametrize("body,level,why", [
    ("p = x -> conv(16, 1) -> maxpool(3, stride=1, pad=1)\n"
     "p -> conv(8, 1) -> output y\np -> conv(8, 3) -> output z", 2, "the pool has two readers"),
    ("x -> conv(16, 1) -> maxpool(3, stride=1, pad=1) -> conv(8, 3) -> output y", 2,
     "a 3x3 convolution reads the pool"),
    ("x -> conv(16, 1) -> maxpool(3, stride=1, pad=1) -> conv(8, 1, stride=2) -> output y", 2,
     "a strided 1x1 convolution"),
    ("x -> maxpool(3, stride=1, pad=1) -> conv(8, 1) -> output y", 2,
     "the pool reads the network's (plain) input"),
    ("x -> conv(16, 1) -> maxpool(3, stride=1, pad=1) -> conv(8, 1) -> output y", 1,
     "-O1 keeps the layouts plain"),
])
def test_prologue_fusion_declines(body, level, why):
    g = build(body, 16)
    optimize(g, level)
    assert "maxpool" in ops(g), why
    assert not any(n.attrs.get("prologue") for n in g.compute_nodes()), why


# -- vector epilogues at the store of a convolution whose output is unpacked -----------------

@pytest.mark.parametrize("body, count", [
    ("x -> conv(6, 3) -> tanh -> avgpool(2) -> output y", 1),  # a plain pool after it
    ("x -> conv(6, 3) -> sigmoid -> output y", 1),
    ("x -> conv(6, 3) -> relu -> tanh -> output y", 2),  # the ReLU counted, as it is first
    ("x -> conv(6, 3) -> swish -> gelu -> output y", 1),  # gelu has no vector form: unpacked
    ("x -> conv(6, 3) -> leaky_relu(alpha=0.1) -> leaky_relu(alpha=2.0) -> output y", 1),
])
def test_an_unpacked_convolution_applies_its_vector_epilogue_at_its_store(body, count):
    g = build(body)
    params = random_params(g)
    before = g.copy()
    records = optimize(g, 2, ctx=PassContext(lowering="direct"))  # im2col unpacks nothing
    (conv,) = [n for n in g.compute_nodes() if n.op == "conv"]
    assert "layout" not in conv.attrs and conv.attrs["store_epilogue"] == count
    assert f"store_epilogue={count}" in g.dump()
    notes = [text for r in records if r.name == "select_layout" for text in r.notes]
    assert any("applied at the kernel's store, in vectors" in t for t in notes)
    same_numbers(before, g, params)


@pytest.mark.parametrize("body, level, why", [
    ("x -> conv(6, 3) -> relu -> output y", 2, "a ReLU alone: every compute kernel applies it"),
    ("x -> conv(6, 3) -> gelu -> tanh -> output y", 2, "the first op has no vector form"),
    ("x -> conv(8, 3) -> tanh -> conv(8, 3) -> output y", 2,
     "the output stays blocked: the whole epilogue is at the store already"),
    ("x -> conv(6, 3) -> tanh -> output y", 1, "-O1 runs no layout selection"),
])
def test_the_store_epilogue_is_not_recorded(body, level, why):
    g = build(body)
    optimize(g, level, ctx=PassContext(lowering="direct"))
    assert not any("store_epilogue" in n.attrs for n in g.compute_nodes()), why


# -- residual kernels shared --------------------------------------------------------------------



@pytest.mark.parametrize("lowering", ["direct", "winograd_f2"])
def test_convolutions_with_and_without_a_residual_share_a_runtime_residual(lowering,
                                                                          residual_forms):
    g = build(residual_forms, 8)
    params = random_params(g)
    before = g.copy()
    optimize(g, 2, ctx=PassContext(opt_level=2, lowering=lowering))
    convs = [n for n in g.compute_nodes() if n.op == "conv"]
    assert len(convs) == 6  # the adds fused
    shared = [n for n in convs if n.attrs.get("residual") == "runtime"]
    epilogues = sorted(tuple(e.op for e in n.attrs.get("epilogue", ())) for n in shared)
    assert epilogues == [(), ("add",), ("add", "relu"), ("relu",)]
    assert "residual='runtime'" in g.dump()
    same_numbers(before, g, params)


@pytest.mark.parametrize("body,why", [
    ("a = x -> conv(16, 3, pad=1) -> relu\nb = a -> conv(16, 3, pad=1) -> relu\n"
     "b -> conv(16, 3, pad=1) -> output y", "no residual anywhere"),
    ("a = x -> conv(16, 3, pad=1)\nb = a -> conv(16, 3, pad=1) -> relu\n"
     "c = b -> conv(16, 1)\n(c + a) -> conv(16, 3, pad=1) -> output y",
     "the residual 1x1 convolution has no plain partner of its kernel"),
])
def test_a_residual_kernel_is_shared_only_where_both_forms_occur(body, why):
    g = build(body, 8)
    optimize(g, 2)
    assert not any(n.attrs.get("residual") for n in g.compute_nodes()), why


# -- 1x1 convolutions of one pixel as dense layers ----------------------------------------------

SQUEEZE_EXCITE = """f = x -> conv(16, 3, pad=1)
s = f -> globalavgpool -> conv(4, 1) -> relu -> conv(16, 1) -> sigmoid
f * s -> conv(8, 1) -> output y"""


def test_a_1x1_convolution_of_one_pixel_becomes_a_dense_layer():
    from cnnc.compiler.passes.conv_as_dense import conv_as_dense

    g = build(SQUEEZE_EXCITE, 8)
    params = random_params(g)
    before = g.copy()
    assert run(conv_as_dense, g)
    dense = [n for n in g.compute_nodes() if n.op == "dense"]
    assert [n.attrs["out_features"] for n in dense] == [4, 16]
    assert [n.type.shape for n in g.compute_nodes() if n.op == "conv"] == [(16, 6, 6), (8, 6, 6)]
    weights = [g.node(n.inputs[1]) for n in dense]
    assert [(w.op, w.type.shape) for w in weights] == [("dense_weight_of_conv", (4, 16)),
                                                      ("dense_weight_of_conv", (16, 4))]
    same_numbers(before, g, params)
    # the activations then fuse into the dense layers through the reshapes (views)
    run(fuse_epilogues, g)
    assert "relu" not in ops(g) and "sigmoid" not in ops(g)
    assert [[e.op for e in n.attrs["epilogue"]] for n in g.compute_nodes()
            if n.op == "dense"] == [["relu"], ["sigmoid"]]
    same_numbers(before, g, params)


@pytest.mark.parametrize("body, why", [
    ("x -> globalavgpool -> conv(4, 1, pad=1) -> output y", "padding: the output is 3x3"),
    ("x -> globalavgpool -> conv(4, 3, pad=1) -> output y", "a 3x3 kernel"),
    ("x -> globalavgpool -> conv(8, 1, groups=2) -> output y", "groups"),
    ("x -> conv(4, 1) -> output y", "a 6x6 image"),
])
def test_conv_as_dense_declines(body, why):
    from cnnc.compiler.passes.conv_as_dense import conv_as_dense

    g = build(body, 8)
    assert not run(conv_as_dense, g), why


def test_an_activation_does_not_fuse_through_a_view_with_another_reader():
    g = build("d = x -> flatten -> dense(6)\nr = d -> reshape((6, 1, 1))\n"
              "r -> sigmoid -> output y\nr -> output z", 4)
    params = random_params(g)
    before = g.copy()
    run(fuse_epilogues, g)
    assert "sigmoid" in ops(g)
    same_numbers(before, g, params)


# -- channel moves ----------------------------------------------------------------------------

SHUFFLE_UNITS = """
block unit(c) {
  kept = in -> channel_slice(0, c // 2)
  changed = in -> channel_slice(c // 2, c) -> conv(c // 2, 1) -> relu
  return concat(kept, changed) -> channel_shuffle(2)
}
x -> conv(12, 1) -> unit(12) -> unit(12) -> output y
"""


def test_shuffle_units_become_gathers_that_read_the_kept_halves_where_they_were_written():
    """concat -> shuffle -> slices of ShuffleNet's units compose into gathers: each unit's
    output reads the convolutions that computed its channels (the kept half is never copied),
    and only the changed half, a convolution's input, is gathered."""
    from cnnc.compiler.passes.fold_channel_moves import fold_channel_moves

    g = build(SHUFFLE_UNITS, channels=3)
    before = g.copy()
    assert run(fold_channel_moves, g)
    run(eliminate_dead_code, g)
    assert ops(g) == ["conv", "channel_gather", "conv", "relu", "channel_gather", "conv",
                      "relu", "channel_gather"]
    convs = [n.id for n in g.compute_nodes() if n.op == "conv"]
    gathers = [n for n in g.compute_nodes() if n.op == "channel_gather"]
    # unit 1's changed half: channels 6..11 of conv 0; unit 2's: its output's channels 6..11
    assert gathers[0].inputs == [convs[0]]
    assert [c for _, c in gathers[0].attrs["channels"]] == list(range(6, 12))
    # the output: a shuffle of (unit 1's output's first half, unit 2's changed half): it
    # reads the first conv and each unit's relu, where their channels were computed
    relus = [n.id for n in g.compute_nodes() if n.op == "relu"]
    out = g.node(g.outputs["y"])
    assert out.op == "channel_gather" and set(out.inputs) == {convs[0], *relus}
    assert gathers[1].inputs == [convs[0], relus[0]]  # unit 2's changed half
    same_numbers(before, g, random_params(before))


@pytest.mark.parametrize("body, why", [
    ("a = x -> conv(8, 1)\nb = x -> conv(8, 1)\nconcat(a, b) -> output y",
     "whole blocks: written in place"),
    ("x -> conv(16, 1) -> channel_slice(8, 16) -> output y", "a view of whole blocks"),
])
def test_channel_moves_of_whole_blocks_stay(body, why):
    from cnnc.compiler.passes.fold_channel_moves import fold_channel_moves

    g = build(body)
    assert not run(fold_channel_moves, g), why


@pytest.mark.parametrize("body", [
    "a = x -> conv(5, 1)\nb = x -> conv(11, 1)\nconcat(a, b) -> output y",
    "x -> conv(16, 1) -> channel_slice(3, 13) -> output y",
])
def test_ragged_concatenations_and_slices_become_gathers(body):
    from cnnc.compiler.passes.fold_channel_moves import fold_channel_moves

    g = build(body)
    before = g.copy()
    assert run(fold_channel_moves, g)
    assert ops(g)[-1] == "channel_gather"
    same_numbers(before, g, random_params(before))


def test_a_gather_reads_at_most_sixteen_tensors():
    """Twenty shuffle units: composing every unit's gather into the next would read one
    more convolution per unit; past 16 sources the inner gather stays an input."""
    from cnnc.compiler.passes.fold_channel_moves import MAX_SOURCES, fold_channel_moves

    g = build(SHUFFLE_UNITS.replace("unit(12) -> unit(12)", "unit(12) * 20"), channels=3)
    before = g.copy()
    run(fold_channel_moves, g)
    run(eliminate_dead_code, g)
    widths = [len(n.inputs) for n in g.compute_nodes() if n.op == "channel_gather"]
    assert max(widths) <= MAX_SOURCES and max(widths) > 4
    same_numbers(before, g, random_params(before))


@pytest.mark.parametrize("deconv, kernels, pads", [
    # U-Net's up-convolution: each phase is a 1x1 convolution, all four one of 4 x 6 filters
    ("conv_transpose(6, 2, stride=2)", [(1, 1)], [(0, 0, 0, 0)]),
    # kernel 4, stride 2, pad 1 (DCGAN): 2x2 phases, each padded differently
    ("conv_transpose(6, 4, stride=2, pad=1)", [(2, 2)] * 4,
     [(1, 1, 0, 0), (1, 0, 0, 1), (0, 1, 1, 0), (0, 0, 1, 1)]),
    # kernel 3, stride 2, pad 1, output padding 1: phases of 2, 1 and 1 taps a side
    ("conv_transpose(6, 3, stride=2, pad=1, output_padding=1)",
     [(1, 1), (1, 2), (2, 1), (2, 2)], [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 0, 1, 1)]),
    # stride 3, kernel 6, pad 3: uniform phases of 2x2 taps, one convolution of 9 x 6 filters
    ("conv_transpose(6, 6, stride=3, pad=3)", [(2, 2)], [(0, 0, 0, 0)]),
    # groups: the phases stay separate convolutions (stacking would mix the groups)
    ("conv_transpose(6, 2, stride=2, groups=2)", [(1, 1)] * 4, [(0, 0, 0, 0)] * 4),
])
def test_a_strided_transposed_convolution_becomes_its_phase_convolutions(deconv, kernels, pads):
    from cnnc.compiler.passes.conv_transpose_as_phases import conv_transpose_as_phases

    g = build(f"x -> conv(4, 3, pad=1) -> relu -> {deconv} -> relu -> output y")
    params = random_params(g)
    before = g.copy()
    assert run(conv_transpose_as_phases, g)
    assert "conv_transpose" not in ops(g)
    convs = [n for n in g.compute_nodes() if n.op == "conv"][1:]
    assert [n.attrs["kernel"] for n in convs] == kernels
    assert [n.attrs["pads"] for n in convs] == pads
    assert all(n.attrs["stride"] == (1, 1) for n in convs)
    shuffle = next(n for n in g.compute_nodes() if n.op == "depth_to_space")
    assert shuffle.attrs["mode"] == "DCR" and shuffle.type == before.node(
        next(n.id for n in before.compute_nodes() if n.op == "conv_transpose")).type
    stacked = g.node(shuffle.inputs[0])
    assert stacked.op == ("conv" if len(convs) == 1 else "concat")
    assert {g.node(n.inputs[1]).op for n in convs} == (
        {"stack_filters"} if len(convs) == 1 else {"phase_filter"})
    same_numbers(before, g, params)


@pytest.mark.parametrize("deconv, live, zeros", [
    # a 1x1 stride-2 convolution's input gradient: only phase (0, 0) has a tap
    ("conv_transpose(6, 1, stride=2, output_padding=1, bias=false)", [0], [(0, 18)]),
    # output padding past a 1x1 kernel, stride 3: phase (0, 0) of nine again
    ("conv_transpose(6, 1, stride=3, output_padding=2, bias=false)", [0], [(0, 48)]),
    # a 2x1 kernel: the second column phase of each row phase has no tap
    ("conv_transpose(6, (2, 1), stride=2, output_padding=(0, 1), bias=false)", [0, 2],
     [(0, 6), (0, 6)]),
])
def test_phases_no_tap_reaches_are_zero_channels_without_a_bias(deconv, live, zeros):
    from cnnc.compiler.passes.conv_transpose_as_phases import conv_transpose_as_phases

    g = build(f"x -> conv(4, 3, pad=1) -> relu -> {deconv} -> relu -> output y")
    params = random_params(g)
    before = g.copy()
    assert run(conv_transpose_as_phases, g)
    assert "conv_transpose" not in ops(g)
    convs = [n for n in g.compute_nodes() if n.op == "conv"][1:]
    assert [n.name.rsplit(".phase", 1)[1] for n in convs] == [str(k) for k in live]
    pads = [n for n in g.compute_nodes() if n.op == "channel_pad"]
    assert [(n.attrs["before"], n.attrs["after"]) for n in pads] == zeros
    assert all(g.node(n.inputs[0]) in convs for n in pads)
    shuffle = next(n for n in g.compute_nodes() if n.op == "depth_to_space")
    assert g.node(shuffle.inputs[0]).op == ("channel_pad" if len(pads) == 1 else "concat")
    same_numbers(before, g, params)


@pytest.mark.parametrize("deconv, why", [
    ("conv_transpose(6, 3, stride=(2, 1), pad=1)", "a stride that is not square"),
    ("conv_transpose(6, 2, pad=2)", "stride 1 with more padding than the kernel reaches"),
    ("conv_transpose(6, 2, stride=2, dilation=2)", "dilation"),
    ("conv_transpose(6, 3, stride=2)", "13 rows: not a multiple of the stride"),
    ("conv_transpose(6, 1, stride=2, output_padding=1)", "phases no tap reaches (bias only)"),
    ("conv_transpose(6, 2, stride=2, pad=1)", "a phase that would crop its input"),
    ("conv_transpose(6, 10, stride=5, pad=(2, 2, 3, 3))",
     "25 different phases, more than the cap"),
])
def test_conv_transpose_as_phases_declines(deconv, why):
    from cnnc.compiler.passes.conv_transpose_as_phases import conv_transpose_as_phases

    g = build(f"x -> {deconv} -> output y")
    ctx = PassContext()
    assert not conv_transpose_as_phases(g, ctx), why
    assert ops(g) == ["conv_transpose"]
    assert len(ctx.notes) == 1 and "kept as a zero-stuffed convolution" in ctx.notes[0]


@pytest.mark.parametrize("groups", [1, 2])
def test_a_stride_1_transposed_convolution_becomes_the_convolution_of_its_flipped_kernel(
        groups):
    from cnnc.compiler.passes.conv_transpose_as_phases import conv_transpose_as_phases

    g = build(f"x -> conv_transpose(6, 3, pad=(0, 1, 2, 1), groups={groups}) -> output y")
    params = random_params(g)
    before = g.copy()
    assert run(conv_transpose_as_phases, g)
    assert ops(g) == ["phase_filter", "conv"]  # a derived weight, the convolution
    conv = g.compute_nodes()[1]
    assert conv.attrs["kernel"] == (3, 3) and conv.attrs["pads"] == (2, 1, 0, 1)
    assert conv.attrs["groups"] == groups and g.node(conv.inputs[1]).op == "phase_filter"
    same_numbers(before, g, params)
