"""The pipelines end to end: derived parameters follow new weights, -O levels change the work
and never the numbers, and the command line reports it (`--stats`, `--explain`, `--dump-ir`)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnc.dsl.builder import load_zoo
from cnnc.runtime.cli import main
from cnnc.runtime.model import ModelError
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

NET = """network small
input x: 3 x 12 x 10
block b(c) {
  y = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu -> conv(c, 3, pad=1) -> batchnorm
  return relu(y + in)
}
x -> conv(8, 3, pad=1) -> batchnorm -> relu -> b(8) -> maxpool(2) -> globalavgpool -> flatten
  -> dense(5) -> output y
"""


def _bn_heavy(params, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in params.items():
        if k.endswith("running_var"):
            out[k] = rng.uniform(0.3, 3.0, v.shape).astype(np.float32)
        else:
            out[k] = rng.standard_normal(v.shape).astype(np.float32) * 0.5
    return out


def test_new_weights_after_compiling_refold_the_batch_norms(tmp_path):
    m = compile_model(NET, seed=0)
    assert "batchnorm" not in [n.op for n in m.plan.graph.compute_nodes()]
    x = np.random.default_rng(2).standard_normal((3, 3, 12, 10)).astype(np.float32)
    for seed in (1, 2):
        params = _bn_heavy(m.params, seed)
        path = tmp_path / f"w{seed}.npz"
        np.savez(path, **params)
        m.load_weights(path)
        want = run_reference(m.graph, {"x": x}, params)["y"]
        err = np.abs(m(x) - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-5, err


def test_levels_change_the_work_not_the_numbers():
    x = np.random.default_rng(4).standard_normal((2, 3, 12, 10)).astype(np.float32)
    stats, outs = {}, {}
    for level in (0, 1, 2):
        m = compile_model(NET, seed=3, opt_level=level)
        stats[level] = m.stats()
        outs[level] = m(x)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    for level in (0, 1, 2):
        assert np.abs(outs[level] - want).max() < 1e-5
    k0, k1, k2 = (stats[lv]["kernels per call"] for lv in (0, 1, 2))
    t0, t1, t2 = (stats[lv]["layout transforms per call"] for lv in (0, 1, 2))
    # -O0: 3 convs x (pack, compute, unpack) + 3 batchnorm + 3 relu + add + pool + gap + dense
    # -O1: batch norms folded, add and relus fused: 3 convs x 3 + pool + gap + dense
    # -O2: the convolutions and the pool stay NCHW8c: one pack, 3 convs, pool, gap, dense
    assert (k0, k1, k2) == (19, 12, 7)
    assert (t0, t1, t2) == (6, 6, 1)
    assert stats[1]["arena bytes per image"] <= stats[0]["arena bytes per image"]
    assert stats[0]["multiply-accumulates per image"] == \
        stats[2]["multiply-accumulates per image"]


def test_cli_stats_explain_and_dump_ir(tmp_path, capsys):
    f = tmp_path / "small.cnn"
    f.write_text(NET)
    assert main(["compile", str(f), "--stats"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "kernels per call", "layout transforms per call", "arena bytes per image",
        "multiply-accumulates per image"]
    assert all(ln.split(": ")[1].isdigit() for ln in lines)
    assert main(["compile", str(f), "-O1", "--explain", "--dump-ir", str(tmp_path / "ir")]) == 0
    out = capsys.readouterr().out
    assert "fold_batchnorm: changed" in out and "folded batchnorm1 into conv1 (small.cnn:7)" in out
    assert re.search(r"fused add \S*add1 into b1\.conv2 as epilogue add\(%in3\)", out), out
    assert len(list((tmp_path / "ir").iterdir())) > 5
    # together: the four stats lines first, then the explanation and the emitted sources
    assert main(["compile", str(f), "-O1", "--stats", "--explain", "--emit",
                 str(tmp_path / "src")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in out[:4]] == [ln.split(":")[0] for ln in lines]
    assert any("fold_batchnorm: changed" in ln for ln in out[4:])
    assert list((tmp_path / "src").glob("*.py"))
    with pytest.raises(SystemExit):
        main(["compile", str(f), "-O", "3"])


def test_layout_nchw_keeps_every_activation_plain(tmp_path, capsys):
    """``--layout NCHW`` at -O2: layout selection leaves every activation plain, so each of
    the three convolutions packs its input and unpacks its output (6 transforms, 1 with the
    blocked region); the numbers are the same."""
    f = tmp_path / "small.cnn"
    f.write_text(NET)
    transforms = {}
    for layout in ("auto", "NCHW"):
        assert main(["compile", str(f), "--stats", "--layout", layout]) == 0
        stats = dict(ln.split(": ") for ln in capsys.readouterr().out.strip().splitlines())
        transforms[layout] = int(stats["layout transforms per call"])
    assert transforms == {"auto": 1, "NCHW": 6}
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 10)).astype(np.float32)
    blocked, plain = (compile_model(NET, seed=2, layout=lt) for lt in ("auto", "NCHW"))
    np.testing.assert_allclose(plain(x), blocked(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError,
                       match="layout must be one of auto, NCHW, NCHW8c, NCHW16c, NHWC, got "
                             "'NWHC'"):
        compile_model(NET, layout="NWHC")


def test_summary_shows_multiply_accumulates_before_and_after(tmp_path, capsys):
    f = tmp_path / "small.cnn"
    f.write_text(NET)
    assert main(["summary", str(f)]) == 0
    out = capsys.readouterr().out
    before = re.search(r"multiply-accumulates per image: ([\d,]+)", out).group(1)
    after = re.search(r"after the -O2 passes: +([\d,]+) multiply-accumulates per image "
                      r"\((\d[\d,]*) saved\)", out)
    assert after.group(1) == before and after.group(2) == "0"  # folding saves kernels, not MACs


def test_depthwise_after_a_direct_conv_with_an_odd_number_of_blocks_stays_in_bounds():
    """A direct convolution stores its 116 channels as 16 blocks (a multiple of 16 channels);
    the depthwise convolution reading them computes only its 15 blocks: it takes the input's
    block count for addressing apart from its own (ShuffleNet V2's 116 and 232 channels)."""
    net = ("network odd_blocks\ninput x: 8 x 9 x 9\n"
           "x -> conv(116, 1) -> relu -> conv(116, 3, pad=1, groups=116) -> relu "
           "-> conv(16, 1) -> output y\n")
    m = compile_model(net, seed=3)
    dw = [s for s in m.plan.steps if any(c.kernel == "conv_depthwise" for c in s.calls)]
    assert len(dw) == 1 and dw[0].storage is not None and dw[0].storage.blocks == 15
    call = next(c for c in dw[0].calls if c.kernel == "conv_depthwise")
    ints = [a.ref for a in call.args if a.kind == "int"]
    assert ints[:2] == [15, 16]  # blocks computed, blocks per image of the input's storage
    x = np.random.default_rng(4).standard_normal((2, 8, 9, 9)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


DENSE_BLOCK = """network dense_block
input x: 8 x 10 x 10
block layer(growth) {
  y = in -> batchnorm -> relu -> conv(32, 1, bias=false) -> batchnorm -> relu
    -> conv(growth, 3, pad=1, bias=false)
  return concat(in, y)
}
x -> conv(16, 3, pad=1) -> layer(16) -> layer(16) -> layer(8) -> batchnorm -> relu
  -> conv(16, 1) -> avgpool(2) -> conv(16, 3, pad=1) -> avgpool(3, stride=1, pad=1)
  -> conv(8, 3) -> avgpool(2, pad=1, count_include_pad=false) -> output y
"""


def test_densenet_features_stay_blocked_through_norms_copies_and_average_pools():
    """A DenseNet block at -O2: the standalone batch norms run on NCHW8c, each concatenation
    whose input is also read by the next layer copies whole blocks (``in_place=False``), the
    average pools whose divisor is the window size stay blocked; only the average pool that
    excludes its padding from the divisor leaves the region."""
    m = compile_model(DENSE_BLOCK, seed=5)
    g = m.plan.graph
    by_op: dict[str, list] = {}
    for n in g.compute_nodes():
        by_op.setdefault(n.op, []).append(n)
    assert all(n.attrs.get("layout") == "NCHW8c" for n in by_op["batchnorm"])
    # the first two concatenations in place, the first a prefix of the second (their
    # 16-channel inputs: whole blocks of a direct conv), the third copies (its new 8 channels
    # are half of such a block)
    assert [n.attrs.get("in_place") for n in by_op["concat"]] == [True, True, False]
    pools = by_op["avgpool"]
    assert [n.attrs.get("layout") for n in pools] == ["NCHW8c", "NCHW8c", None]
    assert m.stats()["layout transforms per call"] == 2  # pack at the start, unpack before it
    assert "concat" in " ".join(c.kernel for s in m.plan.steps for c in s.calls)
    x = np.random.default_rng(6).standard_normal((2, 8, 10, 10)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, _bn_heavy(m.params, 7))["y"]
    m.set_params(_bn_heavy(m.params, 7))
    got = m(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    plain = compile_model(DENSE_BLOCK, seed=5, opt_level=1)
    plain.set_params(_bn_heavy(plain.params, 7))
    np.testing.assert_allclose(plain(x), got, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_part_of_an_in_place_concatenation_read_after_it_keeps_its_values():
    """``a`` lives in the concatenation's buffer and is read again by a later layer: the
    buffer lives as long as any of its parts, and nothing else is planned into it."""
    net = ("network reread\ninput x: 8 x 9 x 9\n"
           "a = x -> conv(16, 3, pad=1) -> relu\nb = x -> conv(16, 3, pad=1)\n"
           "c = concat(a, b) -> conv(16, 3, pad=1) -> relu -> conv(16, 3, pad=1)\n"
           "d = a -> conv(16, 1) -> relu -> conv(16, 3, pad=1)\n"
           "(c + d) -> relu -> conv(8, 1) -> output y\n")
    m = compile_model(net, seed=8)
    concat = next(n for n in m.plan.graph.compute_nodes() if n.op == "concat")
    assert concat.attrs.get("in_place") is True
    x = np.random.default_rng(9).standard_normal((3, 8, 9, 9)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", ["densenet121", "googlenet_bn", "resnet50", "resnext50_32x4d"])
def test_blocked_values_that_fill_their_storage_share_slots(name):
    """A blocked value with no halo and whole 8-channel blocks is written entirely by its
    producer, and so is a convolution's output whose halo its kernel zeroes every call: either
    may reuse any dead slot (DenseNet's batch-norm outputs, 58 channel counts; the inputs of
    every 3x3 convolution of ResNeXt's four stages): the -O2 arena is no larger than the -O0
    one, which has no blocked values."""
    graph = load_zoo(name)
    arena = {level: compile_model(graph, opt_level=level, warm=False).stats()[
        "arena bytes per image"] for level in (0, 2)}
    assert arena[2] <= arena[0], arena


@pytest.mark.parametrize("channels, size, beta, k", [
    (12, 5, 0.75, 1.0), (16, 4, 0.75, 1.0), (8, 1, 0.75, 1.0),
    (40, 11, 0.75, 2.0),  # the window reaches 5 channels each way
    (40, 19, 0.5, 1.0),  # 9 channels back: two blocks
    (24, 3, 1.0, 0.5),
    (20, 5, 0.6, 1.0),  # an exponent without square roots: pow per lane
])
def test_local_response_norm_runs_blocked_between_convolutions(channels, size, beta, k):
    """AlexNet's and GoogLeNet's LRN on NCHW8c: each lane's window reaches into the
    neighbouring blocks (shifted vectors across block boundaries), the padding lanes stay
    zero (12, 20 channels), and no layout transform is left around it."""
    from cnnc.dsl.builder import load_network

    source = load_network(f"network lrn\ninput x: 5 x 9 x 7\n"
                          f"x -> conv({channels}, 3, pad=1) -> relu -> maxpool(2)\n"
                          f"  -> lrn(size={size}, alpha=0.5, beta={beta}, k={k})\n"
                          f"  -> conv(8, 3, pad=1) -> output y\n")
    m = compile_model(source, seed=3, opt_level=2)
    lrn = next(n for n in m.plan.graph.compute_nodes() if n.op == "lrn")
    assert lrn.attrs["layout"] == "NCHW8c"
    assert m.stats()["layout transforms per call"] == 2  # the input's pack, the output's unpack
    x = np.random.default_rng(9).standard_normal((2, 5, 9, 7)).astype(np.float32)
    want = run_reference(source, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("channels, pad", [(16, 0), (12, 1)])
def test_a_dense_layer_reads_a_flattened_blocked_tensor_in_its_storage_order(channels, pad):
    """conv -> flatten -> dense without the unpack: the dense layer's weights are scattered
    to where each feature lies in NCHW8c storage (12 channels: padding lanes; the halo the
    second convolution reads), the numbers unchanged, and weights set after compiling are
    scattered too."""
    from cnnc.dsl.builder import load_network

    reader = "a -> conv(8, 3, pad=1) -> flatten -> dense(3) -> output z\n" if pad else ""
    source = load_network(f"network head\ninput x: 5 x 6 x 7\n"
                          f"a = x -> conv({channels}, 3, pad=1) -> relu -> maxpool(2)\n"
                          f"a -> flatten -> dense(10) -> relu -> dense(4) -> output y\n{reader}")
    m = compile_model(source, seed=3, opt_level=2)
    flats = [n for n in m.plan.graph.compute_nodes() if n.op == "flatten"]
    assert [n.attrs.get("layout") for n in flats] == ["NCHW8c"] * (1 + pad)
    assert m.stats()["layout transforms per call"] == 1  # the input's pack
    x = np.random.default_rng(10).standard_normal((3, 5, 6, 7)).astype(np.float32)
    params = {k: np.random.default_rng(11).standard_normal(v.shape).astype(np.float32)
              for k, v in m.params.items()}
    m.set_params(params)
    want = run_reference(source, {"x": x}, params)
    got = m.run({"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * np.abs(want[k]).max())


def test_a_flattened_channel_range_of_a_merged_convolution_is_unpacked_first():
    """``a`` and ``b`` are ranges of the merged 1x1 convolution's buffer: a dense layer reading
    every float from ``b``'s start would run past the buffer, so each flatten of a range
    stays NCHW (after an unpack)."""
    from cnnc.dsl.builder import load_network

    source = load_network("network two\ninput x: 16 x 5 x 5\n"
                          "a = x -> conv(8, 1) -> relu\nb = x -> conv(8, 1) -> relu\n"
                          "a -> flatten -> dense(3) -> output y\n"
                          "b -> flatten -> dense(4) -> output z\n")
    m = compile_model(source, seed=5, opt_level=2)
    graph = m.plan.graph
    layouts = {graph.node(n.inputs[0]).attrs["start"]: n.attrs.get("layout")
               for n in graph.compute_nodes() if n.op == "flatten"}
    assert layouts == {0: None, 8: None}
    x = np.random.default_rng(12).standard_normal((2, 16, 5, 5)).astype(np.float32)
    want = run_reference(source, {"x": x}, m.params)
    got = m.run({"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5 * np.abs(want[k]).max())


THREE_INCEPTIONS = """network three
input x: 16 x 9 x 9
block inception() {
  a = in -> conv(16, 1) -> relu
  b = in -> conv(16, 1) -> relu -> conv(16, 3, pad=1) -> relu
  c = in -> conv(8, 1) -> relu -> conv(16, 5, pad=2) -> relu
  return concat(a, b, c)
}
x -> conv(160, 3, pad=1) -> conv(16, 1) -> inception() -> conv(16, 1) -> inception()
  -> conv(16, 1) -> inception() -> conv(8, 1) -> output y
"""


def test_a_concatenation_after_a_prefix_reuses_a_dirty_slot_and_its_halo_is_zeroed():
    """Each module's buffer (the merged 1x1's reductions, then the concatenation) has the
    halo the 5x5 reads as padding; the merged kernel zeroes it every call, so the third
    module's buffer takes the slot the 160-channel stem wrote and the numbers stay right."""
    from cnnc.dsl.builder import load_network

    source = load_network(THREE_INCEPTIONS)
    m = compile_model(source, seed=4, opt_level=2)
    graph, buffers = m.plan.graph, m.plan.buffers
    concats = [n for n in graph.compute_nodes() if n.op == "concat"]
    assert all(c.attrs.get("prefix") == 3 for c in concats)
    zeroing = [n for n in graph.compute_nodes() if n.attrs.get("zero_halo")]
    assert len(zeroing) == 3 and all(n.attrs["halo"] == (2, 2, 2, 2) for n in zeroing)
    stem = next(n for n in graph.compute_nodes()
                if n.op == "conv" and n.attrs["out_channels"] == 160)
    assert buffers.slot_of[stem.id] == buffers.slot_of[concats[0].id]
    x = np.random.default_rng(8).standard_normal((2, 16, 9, 9)).astype(np.float32)
    want = run_reference(source, {"x": x}, m.params)["y"]
    for _ in range(2):  # the second call finds the slots as the first left them
        np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.host_target
def test_cpu_target_is_this_machines_and_the_cli_names_one(tmp_path, capsys):
    from cnnc.compiler.target import host_target

    # One convolution: 16-lane kernels are slow to compile cold, and the tiles are the point.
    net = "network one\ninput x: 3 x 12 x 10\nx -> conv(8, 3, pad=1) -> relu -> output y\n"
    m = compile_model(net, seed=0, warm=False)
    tiles = {n.attrs["tile"] for n in m.plan.graph.nodes() if "tile" in n.attrs}
    assert tiles and all(t.partition(":")[0].endswith(f"/{host_target().lanes}")
                        for t in tiles)
    src = tmp_path / "small.cnn"
    src.write_text(net)
    assert main(["compile", str(src), "--target", "avx512", "--explain"]) == 0
    assert "target avx512: convolution tiles 7x16/16 x" in capsys.readouterr().out


@pytest.mark.parametrize("pool,channels,out", [
    ("maxpool(3, stride=1, pad=1)", 16, 8),
    ("maxpool(3, stride=1, pad=1)", 12, 24),  # padding lanes; a padding output block
    ("avgpool(3, stride=1, pad=1)", 16, 16),
    ("maxpool(2)", 24, 8),
    ("maxpool(3, stride=2, ceil_mode=true)", 8, 16),
    ("avgpool(5, stride=3)", 16, 8),
])
def test_a_pool_computed_as_the_1x1_convolutions_prologue_matches_the_reference(
        pool, channels, out):
    """The pool's input has a halo (a 3x3 convolution reads it too) and negative values, so a
    window that took the halo's zeros for input would be wrong; the pool has no kernel of its
    own."""
    src = f"""network pp
input x: 5 x 11 x 13
a = x -> conv({channels}, 3, pad=1)
b = a -> conv(8, 3, pad=1) -> output z
a -> {pool} -> conv({out}, 1) -> relu -> output y
"""
    m = compile_model(src, seed=3, opt_level=2)
    fused = [n for n in m.plan.graph.compute_nodes() if n.attrs.get("prologue")]
    assert len(fused) == 1 and "pool" not in " ".join(n.op for n in m.plan.graph.compute_nodes())
    # pack, the stem conv, the 3x3 and its unpack, the fused 1x1 and its unpack
    assert m.stats()["kernels per call"] == 6
    x = np.random.default_rng(8).standard_normal((3, 5, 11, 13)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)
    got = m.run({"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_squeeze_excitation_gates_run_as_dense_layers_without_layout_transforms():
    """The squeeze and excitation 1x1 convolutions of one pixel are dense layers (their
    activations fused) reading the global pool's plain result: no pack and unpack around
    them; the gate multiplies the blocked tensor per channel."""
    src = """network se
input x: 5 x 9 x 11
f = x -> conv(32, 3, pad=1) -> relu
s = f -> globalavgpool -> conv(8, 1) -> swish -> conv(32, 1) -> sigmoid
f * s -> conv(16, 3, pad=1) -> output y
"""
    m = compile_model(src, seed=3, opt_level=2)
    graph = m.plan.graph
    assert [n.op for n in graph.compute_nodes() if n.op in ("dense", "swish", "sigmoid")] == \
        ["dense", "dense"]
    stats = m.stats()
    assert stats["layout transforms per call"] == 2  # the input's pack, the output's unpack
    # pack, conv, global pool, two dense, the gate's mul, conv, unpack
    assert stats["kernels per call"] == 8
    x = np.random.default_rng(8).standard_normal((3, 5, 9, 11)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@settings(max_examples=8, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), op=st.sampled_from(["maxpool", "avgpool"]),
       k=st.integers(1, 4), stride=st.integers(1, 3), channels=st.sampled_from([8, 12, 20, 40]),
       out=st.sampled_from([1, 8, 16, 24]), batch=st.integers(1, 3))
def test_pool_prologues_of_any_window_match_the_reference(data, op, k, stride, channels, out,
                                                          batch):
    """Any max or average pool read by a 1x1 convolution (window, stride, padding, dilation,
    ceil mode; sizes down to one output pixel) gives the float64 reference's numbers, fused
    or not, and is fused wherever its layout is channel-blocked."""
    pad = data.draw(st.integers(0, k // 2))
    dil = data.draw(st.integers(1, 2)) if op == "maxpool" else 1
    span = dil * (k - 1) + 1
    h, w = data.draw(st.integers(span, 12)), data.draw(st.integers(span, 12))
    extra = f", dilation={dil}" if dil > 1 else ""
    if data.draw(st.booleans()):
        extra += ", ceil_mode=true"
    if op == "avgpool" and data.draw(st.booleans()):
        extra += ", count_include_pad=false"
    src = (f"network pp\ninput x: 3 x {h} x {w}\n"
           f"a = x -> conv({channels}, 3, pad=1)\n"
           f"a -> {op}({k}, stride={stride}, pad={pad}{extra}) -> conv({out}, 1) -> output y\n"
           f"a -> conv(8, 3, pad=1) -> output z\n")
    m = compile_model(src, seed=3, opt_level=2)
    graph = m.plan.graph
    fused = [n for n in graph.compute_nodes() if n.attrs.get("prologue")]
    pools = [n for n in graph.compute_nodes() if n.op == op]
    assert len(fused) + len(pools) == 1
    if pools:  # not fused: the pool's layout is plain (an average pool dividing by less), or
        # its output is one pixel and the 1x1 convolution became a dense layer (conv_as_dense)
        assert pools[0].attrs.get("layout") != "NCHW8c" or pools[0].type.shape[1:] == (1, 1), src
    x = np.random.default_rng(8).standard_normal((batch, 3, h, w)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)
    got = m.run({"x": x})
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=src)


@pytest.mark.parametrize("channels, out, groups, conv, reads, writes", [
    (16, 16, 8, "3, pad=1", True, True),  # 2 channels a group: the channel-wise kernel
    (32, 32, 8, "3, pad=1", True, True),  # 4 (ResNeXt's first stage)
    (32, 32, 4, "3, stride=2, pad=1", True, True),  # 8: broadcasts of each group channel
    (12, 12, 3, "3, pad=1", True, True),  # 4, and a last block half padding
    (40, 40, 10, "3, pad=2, dilation=2", True, True),
    (16, 16, 2, "5, stride=2, pad=2", True, True),
    (32, 32, 2, "3, pad=1", True, True),  # 16: whole blocks in, whole block pairs out
    (96, 64, 2, "3, pad=1", True, True),  # AlexNet's groups (48 -> 32 a group)
    (16, 48, 2, "3, pad=1", True, False),  # 24 outputs a group: padded inside the tensor
    (12, 12, 2, "3, pad=1", False, False),  # 6 a group: neither a block nor inside one
    (24, 48, 12, "1", False, False),  # 2 -> 4: not channel-wise
])
def test_grouped_convolutions_stay_channel_blocked_where_their_groups_allow(
        channels, out, groups, conv, reads, writes):
    """A grouped convolution between two ungrouped ones: it reads the blocked input when its
    groups are whole blocks or lie inside one (the channel-wise kernel: C == K, C/groups
    dividing 8), and writes blocked output unless each group's outputs would be padded; the
    numbers are the float64 reference's either way, and -O0 agrees."""
    src = (f"network grouped\ninput x: 3 x 11 x 13\n"
           f"x -> conv({channels}, 3, pad=1) -> relu -> conv({out}, {conv}, groups={groups})"
           f" -> relu\n  -> conv(8, 3, pad=1) -> output y\n")
    x = np.random.default_rng(5).standard_normal((2, 3, 11, 13)).astype(np.float32)
    got = {}
    for level in (0, 2):
        m = compile_model(src, seed=4, opt_level=level)
        got[level] = m(x)
    convs = [n for n in m.plan.graph.compute_nodes() if n.op == "conv"]
    assert (convs[0].attrs.get("layout") == "NCHW8c") == reads
    assert (convs[1].attrs.get("layout") == "NCHW8c") == writes
    # the input's pack, the output's unpack, and an unpack and a pack at each plain edge
    assert m.stats()["layout transforms per call"] == 2 + 2 * (not reads) + 2 * (not writes)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    for level in (0, 2):
        np.testing.assert_allclose(got[level], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@settings(max_examples=8, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), per_group=st.sampled_from([1, 2, 4, 8, 16]), groups=st.integers(1, 6),
       k=st.integers(1, 3), stride=st.integers(1, 2), dil=st.integers(1, 2),
       batch=st.integers(1, 2))
def test_grouped_convolutions_of_any_shape_match_the_reference(data, per_group, groups, k,
                                                               stride, dil, batch):
    """Random grouped convolutions (channels a group, groups, window, stride, dilation,
    padding, sizes down to one output pixel) in a blocked region, with the residual add and
    ReLU fused at their store."""
    c = per_group * groups
    pad = data.draw(st.integers(0, k // 2 * dil))
    span = dil * (k - 1) + 1
    h, w = data.draw(st.integers(max(1, span - 2 * pad), 12)), data.draw(st.integers(1, 12))
    w = max(w, span - 2 * pad)
    src = (f"network g\ninput x: 3 x {h} x {w}\n"
           f"a = x -> conv({c}, 3, pad=1) -> relu\n"
           f"b = a -> conv({c}, {k}, stride={stride}, pad={pad}, dilation={dil}, "
           f"groups={groups})\n"
           f"b -> conv({c}, 1, groups={groups}) -> add(b) -> relu -> conv(8, 1) -> output y\n")
    m = compile_model(src, seed=3, opt_level=2)
    x = np.random.default_rng(8).standard_normal((batch, 3, h, w)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=src)


SHUFFLE_NET = """network shuffle
input x: 3 x 9 x 11
block down(cin, c) {
  left = in -> conv(cin, 3, stride=2, pad=1, groups=cin) -> conv(c // 2, 1) -> relu
  right = in -> conv(c // 2, 1) -> relu -> conv(c // 2, 3, stride=2, pad=1, groups=c // 2)
    -> conv(c // 2, 1) -> relu
  return concat(left, right) -> channel_shuffle(2)
}
block unit(c) {
  kept = in -> channel_slice(0, c // 2)
  changed = in -> channel_slice(c // 2, c) -> conv(c // 2, 1) -> relu
    -> conv(c // 2, 3, pad=1, groups=c // 2) -> conv(c // 2, 1) -> relu
  return concat(kept, changed) -> channel_shuffle(2)
}
x -> conv(STEM, 3, pad=1) -> relu -> down(STEM, WIDTH) -> unit(WIDTH) * 3 -> conv(16, 3, pad=1)
  -> output y
"""


@pytest.mark.parametrize("c0, c", [(12, 58), (8, 16), (10, 26)])
def test_shuffle_units_run_as_channel_blocked_gathers(c0, c):
    """ShuffleNet's units at every level: at -O1 and -O2 no concatenation, shuffle or slice is
    left (gathers instead: one per unit for the changed half, one for the last output), and
    at -O2 they run channel-blocked, lanes of any channel count (29, 13) moved to any lane,
    the 3x3 readers' halo kept zero; the numbers are the float64 reference's."""
    src = SHUFFLE_NET.replace("STEM", str(c0)).replace("WIDTH", str(c))
    x = np.random.default_rng(6).standard_normal((2, 3, 9, 11)).astype(np.float32)
    for level in (0, 1, 2):
        m = compile_model(src, seed=5, opt_level=level)
        graph = m.plan.graph
        kinds = {n.op for n in graph.compute_nodes()}
        if level:
            assert not kinds & {"concat", "channel_shuffle", "channel_slice"}, kinds
            gathers = [n for n in graph.compute_nodes() if n.op == "channel_gather"]
            assert len(gathers) == 4  # three units' changed halves, the last output
        if level == 2:
            assert all(n.attrs.get("layout") == "NCHW8c" for n in gathers)
            assert m.stats()["layout transforms per call"] == 2
        want = run_reference(m.graph, {"x": x}, m.params)["y"]
        np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"-O{level}")


@pytest.mark.parametrize("body", [
    "a = x -> conv(13, 3, pad=1)\nb = x -> conv(11, 3, pad=1)\n"
    "concat(a, b) -> conv(8, 3, pad=1) -> output y",
    "x -> conv(20, 1) -> relu -> channel_slice(3, 17) -> conv(8, 3, pad=2, dilation=2)"
    " -> output y",
    "x -> conv(16, 1) -> relu -> channel_shuffle(4) -> conv(16, 3, pad=1, groups=16)"
    " -> output y",
])
def test_ragged_channel_moves_between_padded_convolutions(body):
    """A concatenation of 13 + 11 channels, a slice from channel 3, a shuffle of 4 groups:
    gathers in the blocked region, the padding the next convolution reads written zero."""
    src = f"network moves\ninput x: 3 x 7 x 6\n{body}\n"
    m = compile_model(src, seed=2, opt_level=2)
    gather = next(n for n in m.plan.graph.compute_nodes() if n.op == "channel_gather")
    assert gather.attrs["layout"] == "NCHW8c" and any(gather.attrs["halo"])
    x = np.random.default_rng(7).standard_normal((3, 3, 7, 6)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


UP_BLOCK = """network up
input x: 3 x 8 x 6
skip = x -> conv(16, 3, pad=1) -> relu
low = skip -> maxpool(2) -> conv(32, 3, pad=1) -> relu
concat(skip, low -> conv_transpose(16, 2, stride=2)) -> conv(16, 3, pad=1) -> relu
  -> output y
"""


def test_an_up_convolution_runs_as_one_1x1_convolution_and_a_blocked_interleave():
    """U-Net's up block: the 2x2 stride-2 transposed convolution becomes one 1x1 convolution
    of 4 x 16 filters and a depth_to_space (mode DCR) that moves whole 8-channel vectors,
    written straight into its range of the concatenation with the halo the next 3x3 reads;
    two layout transforms in all, the float64 reference's numbers at every level."""
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 6)).astype(np.float32)
    for level in (0, 1, 2):
        m = compile_model(UP_BLOCK, seed=3, opt_level=level)
        graph = m.plan.graph
        kinds = [n.op for n in graph.compute_nodes()]
        assert ("conv_transpose" in kinds) == (level == 0)
        if level == 2:
            shuffle = next(n for n in graph.compute_nodes() if n.op == "depth_to_space")
            assert shuffle.attrs["layout"] == "NCHW8c" and shuffle.attrs["halo"] == (1, 1, 1, 1)
            assert graph.node(shuffle.inputs[0]).attrs["kernel"] == (1, 1)
            concat = next(n for n in graph.compute_nodes() if n.op == "concat")
            assert concat.attrs["in_place"]
            assert m.stats()["layout transforms per call"] == 2
        want = run_reference(m.graph, {"x": x}, m.params)["y"]
        np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"-O{level}")


@settings(max_examples=10, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), k=st.integers(1, 5), stride=st.sampled_from([2, 3, 2, 1]),
       out=st.sampled_from([3, 8, 16]), groups=st.sampled_from([1, 2]),
       batch=st.integers(1, 2))
def test_transposed_convolutions_of_any_shape_match_the_reference(data, k, stride, out, groups,
                                                                  batch):
    """Random transposed convolutions (window, stride, per-side padding, output padding,
    groups) between two blocked convolutions, at -O1 and -O2: as phase convolutions where
    they apply, zero-stuffed where not; the float64 reference's numbers either way."""
    pads = [data.draw(st.integers(0, k - 1)) for _ in range(4)]
    op = data.draw(st.integers(0, stride - 1))
    if data.draw(st.sampled_from([True, True, False])):  # an output a multiple of the stride
        for end in (2, 3):
            pads[end] = min(range(k), key=lambda p: (k + op - pads[end - 2] - p) % stride)
    pads = tuple(pads)
    h, w = data.draw(st.integers(2, 6)), data.draw(st.integers(2, 6))
    assume((h - 1) * stride + k + op - pads[0] - pads[2] >= 1 and
           (w - 1) * stride + k + op - pads[1] - pads[3] >= 1)
    out *= groups
    src = (f"network t\ninput x: 3 x {h} x {w}\n"
           f"x -> conv(16, 3, pad=1) -> relu -> conv_transpose({out}, {k}, stride={stride}, "
           f"pad={pads}, output_padding={op}, groups={groups}) -> relu\n"
           f"  -> conv(8, 3, pad=1) -> output y\n")
    x = np.random.default_rng(4).standard_normal((batch, 3, h, w)).astype(np.float32)
    for level in (1, 2):
        m = compile_model(src, seed=6, opt_level=level)
        want = run_reference(m.graph, {"x": x}, m.params)["y"]
        np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"-O{level}: {src}")


@pytest.mark.parametrize("move, blocked", [
    ("depth_to_space(2)", True),  # 32 -> 8 channels: whole vectors move
    ("depth_to_space(2, mode=CRD)", False),  # PixelShuffle: single channels move
    ("space_to_depth(2)", True),  # 32 -> 128
    ("space_to_depth(2, mode=CRD)", False),
    ("depth_to_space(4)", False),  # 32 -> 2 channels: less than a block
])
def test_pixel_moves_of_whole_blocks_run_channel_blocked(move, blocked):
    src = (f"network moves\ninput x: 3 x 8 x 12\n"
           f"x -> conv(32, 3, pad=1) -> relu -> {move} -> conv(8, 3, pad=1) -> output y\n")
    m = compile_model(src, seed=1, opt_level=2)
    node = next(n for n in m.plan.graph.compute_nodes() if n.op in ("depth_to_space",
                                                                     "space_to_depth"))
    assert (node.attrs.get("layout") == "NCHW8c") == blocked
    assert m.stats()["layout transforms per call"] == (2 if blocked else 4)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 12)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("move, op", [
    ("conv(16, 1) -> relu", "conv"),  # a direct convolution with the halo of the next 3x3
    ("conv(24, 3, pad=1, groups=24) -> relu", "conv"),  # the channel-wise kernel
    ("channel_shuffle(4)", "channel_gather"),
])
def test_a_producer_that_zeroes_its_halo_takes_a_slot_another_storage_dirtied(move, op):
    """The value before the 3x3 has the halo it reads as padding; its producer (a 1x1 or a
    depthwise convolution, or a shuffle's channel gather) zeroes that halo every call, so it
    takes the slot the first convolution's output (another storage, no halo) left, and the
    second call, which finds the slot as the first call left it, gives the same numbers."""
    src = ("network dirty\ninput x: 3 x 9 x 11\n"
           f"x -> conv(32, 3, pad=1) -> relu -> conv(24, 1) -> relu -> {move}\n"
           "  -> conv(16, 3, pad=1) -> relu -> conv(8, 1) -> output y\n")
    m = compile_model(src, seed=2, opt_level=2)
    graph, buffers = m.plan.graph, m.plan.buffers
    first = next(n for n in graph.compute_nodes() if n.op == "conv")
    last3x3 = next(n for n in graph.compute_nodes() if n.op == "conv" and n.attrs[
        "out_channels"] == 16 and n.attrs["kernel"] == (3, 3))
    padded = graph.node(last3x3.inputs[0])
    assert padded.op == op and padded.attrs["halo"] == (1, 1, 1, 1)
    assert padded.attrs["zero_halo"] and first.attrs["halo"] == (0, 0, 0, 0)
    assert "zero_halo" not in first.attrs
    assert buffers.slot_of[first.id] == buffers.slot_of[padded.id]
    assert buffers.storage[first.id] != buffers.storage[padded.id]
    rng = np.random.default_rng(4)
    for _ in range(2):
        x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32) * 3
        want = run_reference(m.graph, {"x": x}, m.params)["y"]
        np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_blocked_gate_multiply_writes_over_its_input():
    """Squeeze-and-excitation's ``x * gate`` on channel-blocked storage: x dies at the
    multiply, so the product takes x's very slot and storage (written in place, float by
    float over what the kernel has just read), and the numbers are the reference's, on a
    second call too (the slot as the first call left it)."""
    src = ("network se\ninput x: 3 x 7 x 9\n"
           "t = x -> conv(24, 3, pad=1) -> relu -> conv(24, 3, pad=1, groups=24) -> swish\n"
           "g = t -> globalavgpool -> conv(6, 1) -> swish -> conv(24, 1) -> sigmoid\n"
           "t * g -> conv(8, 1) -> output y\n")
    m = compile_model(src, seed=5, opt_level=2)
    graph, buffers = m.plan.graph, m.plan.buffers
    mul = next(n for n in graph.compute_nodes() if n.op == "mul")
    x = graph.node(mul.inputs[0])
    assert mul.attrs["layout"] == x.attrs["layout"] != "NCHW"
    assert buffers.slot_of[mul.id] == buffers.slot_of[x.id]
    assert buffers.storage[mul.id] == buffers.storage[x.id]
    rng = np.random.default_rng(6)
    for _ in range(2):
        x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
        want = run_reference(m.graph, {"x": x}, m.params)["y"]
        np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_blocked_gate_multiply_keeps_an_input_read_later():
    """The same gate, but x is read again by a convolution beside the multiply's: the product
    takes x's slot only if no step after the multiply reads x, and the numbers are the
    reference's. (A residual ``x * g + x`` fused into the multiply reads each float of x
    before writing it: in place is right there.)"""
    src = ("network se_keep\ninput x: 3 x 7 x 9\n"
           "t = x -> conv(24, 3, pad=1) -> relu -> conv(24, 3, pad=1, groups=24) -> swish\n"
           "g = t -> globalavgpool -> conv(6, 1) -> swish -> conv(24, 1) -> sigmoid\n"
           "a = t * g -> conv(8, 3, pad=1)\n"
           "b = t -> conv(8, 3, pad=1)\n"
           "a + b -> output y\n")
    m = compile_model(src, seed=5, opt_level=2)
    steps, buffers = m.plan.steps, m.plan.buffers
    at = next(i for i, s in enumerate(steps) if s.op == "mul")
    x = steps[at].inputs[0]
    read_later = any(x in s.inputs for s in steps[at + 1:])
    assert read_later == (buffers.slot_of[steps[at].output] != buffers.slot_of[x])
    x = np.random.default_rng(7).standard_normal((2, 3, 7, 9)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("width", [1, 3, 6, 9, 13])
@pytest.mark.parametrize("act", ["swish", "sigmoid"])
def test_depthwise_activations_on_pixel_pairs_match_the_reference(width, act):
    """The channel-wise kernel applies swish and sigmoid to two pixels at a time (16 lanes):
    rows of every tail length (the 8-pixel tile, its overlapping tail, two overlapping
    4-pixel tiles, single pixels), a stride-2 layer and a 5x5 window, against the float64
    reference."""
    src = (f"network pairs\ninput x: 3 x 5 x {width}\n"
           f"x -> conv(24, 3, pad=1) -> {act} -> conv(24, 3, pad=1, groups=24) -> {act}\n"
           f"  -> conv(24, 5, stride=2, pad=2, groups=24) -> {act} -> conv(8, 1) -> output y\n")
    m = compile_model(src, seed=7, opt_level=2)
    dw = [n for n in m.plan.graph.compute_nodes() if n.op == "conv" and n.attrs["groups"] > 1]
    assert all(n.attrs["layout"] == "NCHW8c" and n.attrs["epilogue"] for n in dw)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, width)).astype(np.float32) * 4
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("lowering,target,layout", [
    ("direct", "avx2", "auto"),
    ("winograd_f2", "avx2", "auto"),
    # 16-lane accumulators stored as 8-channel halves, each with its half of the residual
    ("direct", "avx512", "NCHW8c"),
])
def test_a_runtime_residual_gives_each_fused_epilogues_numbers(lowering, target, layout,
                                                                residual_forms):
    # a halo and odd sizes
    m = compile_model(f"network res\ninput x: 8 x 7 x 13\n{residual_forms}\n", target=target,
                      seed=5, opt_level=2, lowering=lowering, layout=layout)
    shared = [s for s in m.plan.steps if m.plan.graph.node(s.output).attrs.get("residual")]
    assert len(shared) == 4
    assert len({id(c.fn) for s in shared for c in s.calls}) == 1  # one compiled kernel
    x = np.random.default_rng(8).standard_normal((3, 8, 7, 13)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_an_unpacked_convolution_splits_its_epilogue_between_store_and_unpacking():
    """The vector ops at the compute kernel's store (swish, over the padding channels too),
    the rest (gelu: no vector form) and the residual operand at the unpacking to NCHW: the
    network's numbers, within float32 error of the float64 reference."""
    net = ("network split\ninput x: 4 x 9 x 9\n"
           "z = x -> conv(6, 1)\n"  # first: the later producer takes the add
           "y = x -> conv(6, 3, pad=1) -> swish -> gelu\n(y + z) -> output out\n")
    m = compile_model(net, seed=4, lowering="direct")
    (conv,) = [n for n in m.plan.graph.compute_nodes() if n.attrs.get("store_epilogue")]
    assert [e.op for e in conv.attrs["epilogue"]] == ["swish", "gelu", "add"]
    assert conv.attrs["store_epilogue"] == 1
    x = np.random.default_rng(5).standard_normal((2, 4, 9, 9)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["out"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width, blocked", [(6, True), (7, True), (5, False)])
def test_six_or_more_channels_stay_blocked_between_convolutions(width, blocked):
    """LeNet-5's shape: a convolution of ``width`` output channels, a pooling, a convolution
    reading them. From 6 channels on the second convolution reads its input channel-blocked
    (padded to a block of 8, zero weights for the padding), so the first's output is never
    unpacked nor packed again; at 5 the second packs its own 5-channel block. The numbers
    within float32 error of the float64 reference either way (batch 2)."""
    net = (f"network narrow\ninput x: 1 x 20 x 20\n"
           f"x -> conv({width}, 5) -> tanh -> avgpool(2) -> conv(16, 5) -> tanh -> flatten "
           f"-> dense(4) -> output y\n")
    m = compile_model(net, seed=3, target="avx2", lowering="direct")
    convs = [n for n in m.plan.graph.compute_nodes() if n.op == "conv"]
    pool = next(n for n in m.plan.graph.compute_nodes() if n.op == "avgpool")
    assert ("layout" in convs[0].attrs) == blocked and ("layout" in pool.attrs) == blocked
    kernels = [c.kernel for s in m.plan.steps for c in s.calls]
    assert kernels.count("pack_nchw_blocked") == (1 if blocked else 2)
    x = np.random.default_rng(4).standard_normal((2, 1, 20, 20)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
