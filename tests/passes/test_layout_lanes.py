"""NCHW16c and NHWC: layout selection's storage per region (``compiler/passes/select_layout.py``).

A region of channel-blocked values is stored in 16-channel blocks when every kernel in it has
a 16-lane form and, by default, the region cost model prefers it on a 16-lane target; in NHWC
(the blocks of a pixel adjacent) when asked for and every kernel in it has an NHWC form. The
kernels then compute lane for lane what they compute in NCHW8c (same multiply-adds in the same
order), so every output agrees bit for bit with NCHW8c and with the float64 reference within
float32 error. The numbers must not depend on the layout; only the work does.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.compiler.passes.select_layout import region_cost
from cnnc.dsl.builder import load_network
from cnnc.runtime.cli import main
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

#: An inverted residual block as EfficientNet has it: a stem (its second 3x3 convolution reads
#: NCHW16c as 8-channel halves, in NCHW8c's order), 1x1 expansion with ReLU6, a
#: depthwise convolution with swish, a squeeze-excitation gate (a plain per-channel operand), a
#: 1x1 projection with the residual add fused, a max pool, then the head.
INVERTED = """network inverted
input x: 3 x {size} x {size}
s = x -> conv({c}, 3, pad=1) -> batchnorm -> swish -> conv({c}, 3, pad=1) -> relu
d = s -> conv({e}, 1) -> relu6 -> conv({e}, {k}, pad={pad}, groups={e}) -> swish
g = d -> globalavgpool -> conv(8, 1) -> relu -> conv({e}, 1) -> sigmoid
p = (d * g) -> conv({c}, 1)
(s + p) -> relu -> maxpool(3, stride=2, pad=1) -> globalavgpool -> flatten -> dense(10) -> output y
"""


#: The channel-blocked layouts, and those that must agree with NCHW8c bit for bit.
ALL = ("NCHW8c", "NCHW16c", "NHWC")
WIDE = ("NCHW16c", "NHWC")


def _inputs(graph, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((2,) + graph.node(i).type.shape).astype(np.float32)
            for n, i in graph.inputs.items()}


def _layouts(model) -> set[str]:
    return {n.attrs["layout"] for n in model.plan.graph.nodes() if n.attrs.get("layout")}


def _agree(graph, runs: dict[str, object], tol: float = 2e-4) -> None:
    """Every compiled model bit for bit equal to the first, and within ``tol`` of the float64
    reference."""
    inputs = _inputs(graph)
    models = list(runs.values())
    want = run_reference(graph, inputs, models[0].params)
    first = models[0].run(inputs)
    for name, m in runs.items():
        got = m.run(inputs)
        for out in want:
            np.testing.assert_array_equal(got[out], first[out], err_msg=name)
            scale = max(1.0, float(np.max(np.abs(want[out]))))
            err = float(np.max(np.abs(got[out] - want[out]))) / scale
            assert err <= tol, f"{name}: relative error {err:.3g}"


def test_block_width_follows_the_target_and_the_request():
    """auto: NCHW16c on the 16-lane target (the cost model prefers whole 16-lane vectors for
    the 48-channel depthwise layer), NCHW8c on the 8-lane one; an explicit width is taken on
    either target. The same numbers everywhere, bit for bit."""
    graph = load_network(INVERTED.format(size=12, c=24, e=48, k=3, pad=1))
    runs = {}
    for target, layout, want in (("avx2", "auto", "NCHW8c"), ("avx512", "auto", "NCHW16c"),
                                 ("avx2", "NCHW16c", "NCHW16c"),
                                 ("avx512", "NCHW8c", "NCHW8c"), ("avx2", "NHWC", "NHWC"),
                                 ("avx512", "NHWC", "NHWC")):
        m = compile_model(graph, seed=0, target=target, layout=layout)
        assert _layouts(m) == {want}, (target, layout)
        assert m.stats()["layout transforms per call"] == 1  # the stem's pack
        runs[f"{target} {layout}"] = m
    _agree(graph, runs)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(5, 17), c=st.sampled_from([16, 24, 40]), e=st.sampled_from([32, 48]),
       k=st.sampled_from([3, 5]))
def test_nchw16c_and_nhwc_match_nchw8c_bitwise(size, c, e, k):
    """Channel counts that fill 16-channel blocks or not (24, 40: a padded half block), rows
    shorter and longer than a tile, both kernel sizes: NCHW16c, NHWC and NCHW8c agree bit for
    bit and with the reference."""
    graph = load_network(INVERTED.format(size=size, c=c, e=e, k=k, pad=k // 2))
    runs = {layout: compile_model(graph, seed=3, layout=layout) for layout in ALL}
    for layout in ALL:
        assert _layouts(runs[layout]) == {layout}
    _agree(graph, runs)


def test_grouped_convolutions_read_nchw16c_halves():
    """Groups of 24 channels start inside a 16-channel block (the second group at the upper
    half of block 1): the direct kernel reads each group's 8-channel halves where they lie;
    groups of 16 are whole blocks; in NHWC a group's blocks are its place in each pixel. Bit
    for bit NCHW8c's numbers."""
    graph = load_network("""network grouped
input x: 3 x 9 x 9
s = x -> conv(48, 3, pad=1) -> relu -> conv(64, 3, pad=1, groups=2) -> relu
s -> conv(64, 3, pad=1, groups=4) -> relu -> globalavgpool -> output y
""")
    runs = {layout: compile_model(graph, seed=0, layout=layout) for layout in ALL}
    for layout in WIDE:
        grouped = [n for n in runs[layout].plan.graph.nodes()
                   if n.op == "conv" and n.attrs["groups"] > 1]
        assert len(grouped) == 2 and all(n.attrs["layout"] == layout for n in grouped)
    _agree(graph, runs)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_narrow_groups_run_16_lanes(width):
    """ResNeXt's narrow groups (2, 4 or 8 channels a group) in the 16-lane channel-wise
    kernel: each lane multiplies the inputs of its own group, spread over the group's lanes
    (``vspread`` of 16 lanes; for 8-channel groups two groups a vector), bit for bit NCHW8c;
    and in NHWC."""
    graph = load_network(f"""network narrow{width}
input x: 3 x 10 x 10
s = x -> conv(48, 3, pad=1) -> relu -> conv(48, 3, pad=1, groups={48 // width}) -> relu
(s + (s -> conv(48, 3, stride=2, pad=1, groups={48 // width}) -> upsample(2)))
  -> globalavgpool -> output y
""")
    runs = {layout: compile_model(graph, seed=0, layout=layout) for layout in ALL}
    for layout in WIDE:
        assert _layouts(runs[layout]) == {layout}
    _agree(graph, runs)


@pytest.mark.parametrize("layout", WIDE)
def test_flatten_into_dense_reads_the_storage_in_its_order(layout):
    """A dense layer over a flattened NCHW16c or NHWC tensor reads the storage in its order,
    its weights scattered to match (the float sums then run in another order than
    NCHW8c's)."""
    graph = load_network("""network flat
input x: 3 x 6 x 6
x -> conv(24, 3, pad=1) -> relu -> conv(24, 3, groups=24) -> flatten -> dense(5) -> output y
""")
    m = compile_model(graph, seed=0, layout=layout)
    flat = [n for n in m.plan.graph.nodes() if n.op == "flatten"]
    assert flat and flat[0].attrs["layout"] == layout
    assert m.stats()["layout transforms per call"] == 1
    _agree(graph, {layout: m}, tol=2e-5)


@pytest.mark.parametrize("layout", WIDE)
def test_concatenations_gathers_slices_and_lrn(layout):
    """Concatenations of whole 16-channel blocks (written in place by their producers, or
    copied when a part has other users), a shuffle folded into a channel gather, slices at
    whole blocks and LRN (its window across neighbouring 16-lane blocks): all NCHW16c (or all
    NHWC), bit for bit NCHW8c's numbers."""
    graph = load_network("""network moves
input x: 3 x 10 x 10
s = x -> conv(32, 3, pad=1) -> relu -> lrn(size=5)
a = s -> conv(16, 1)
b = s -> conv(32, 3, pad=1)
c = concat(a, b) -> channel_shuffle(2)
u = c -> channel_slice(0, 32) -> conv(16, 3, pad=1)
v = c -> conv(32, 1)
w = concat(u, v) -> conv(32, 3, pad=1) -> relu
(concat(w, a) + concat(a, w)) -> globalavgpool -> output y
""")
    runs = {name: compile_model(graph, seed=0, layout=name) for name in ("NCHW8c", layout)}
    assert _layouts(runs[layout]) == {layout}
    ops = {n.op for n in runs[layout].plan.graph.nodes() if n.attrs.get("layout")}
    assert {"concat", "lrn", "channel_gather"} <= ops, ops
    concats = [n for n in runs[layout].plan.graph.nodes() if n.op == "concat"]
    assert {bool(n.attrs["in_place"]) for n in concats} == {True, False}
    _agree(graph, runs)


def test_regions_without_16_lane_kernels_stay_nchw8c():
    """A concatenation whose second part starts inside a 16-channel block (8 + 24 channels)
    and a depth-to-space move to 8 channels have no NCHW16c form: asked for NCHW16c, their
    region stays NCHW8c, still blocked, with the same numbers. Both have NHWC forms (8-channel
    blocks): asked for NHWC, it is NHWC."""
    graph = load_network("""network misaligned
input x: 3 x 10 x 10
s = x -> conv(32, 3, pad=1) -> relu
a = s -> conv(8, 1)
b = s -> conv(24, 3, pad=1)
concat(a, b) -> conv(32, 3, pad=1) -> depth_to_space(2) -> conv(16, 3, pad=1)
  -> globalavgpool -> output y
""")
    runs = {layout: compile_model(graph, seed=0, layout=layout) for layout in ALL}
    assert _layouts(runs["NCHW16c"]) == {"NCHW8c"}
    assert _layouts(runs["NHWC"]) == {"NHWC"}
    _agree(graph, runs)


def test_space_to_depth_moves_in_every_blocked_layout():
    """Depth-to-space and space-to-depth (mode DCR) move whole blocks of the image-side
    channels: 16 of them are whole 16-channel blocks, so the moves run in every layout, one
    vector a copy, bit for bit NCHW8c's numbers."""
    graph = load_network("""network moves2
input x: 3 x 10 x 10
s = x -> conv(64, 3, pad=1) -> relu -> depth_to_space(2) -> conv(16, 3, pad=1) -> relu
s -> space_to_depth(2) -> conv(32, 3, pad=1) -> globalavgpool -> output y
""")
    runs = {layout: compile_model(graph, seed=0, layout=layout) for layout in ALL}
    for layout in ALL:
        m = runs[layout]
        assert _layouts(m) == {layout}
        moved = {n.op for n in m.plan.graph.nodes() if n.attrs.get("layout")}
        assert {"depth_to_space", "space_to_depth"} <= moved
    _agree(graph, runs)


def test_region_cost_weighs_lanes_against_padding(tmp_path, capsys):
    """The cost model: an 8-channel depthwise layer is one 8-lane vector a pixel either way,
    and 16-channel blocks would double its floats, so NCHW8c; 48 channels are three 8-lane
    vectors or two 16-lane ones (with a third of a block padded), so NCHW16c. ``--explain``
    says which and why."""
    narrow = load_network("""network narrow
input x: 8 x 12 x 12
x -> conv(8, 3, pad=1, groups=8) -> relu -> conv(8, 3, pad=1, groups=8) -> globalavgpool
  -> output y
""")
    m = compile_model(narrow, seed=0, target="avx512")
    assert _layouts(m) == {"NCHW8c"}
    region = {n.id for n in m.plan.graph.nodes() if n.attrs.get("layout")}
    assert region_cost(m.plan.graph, region, 8, 16) < region_cost(m.plan.graph, region, 16, 16)
    # on an 8-lane target 16-channel blocks only add padding
    assert region_cost(m.plan.graph, region, 8, 8) < region_cost(m.plan.graph, region, 16, 8)
    f = tmp_path / "wide.cnn"
    f.write_text(INVERTED.format(size=12, c=24, e=48, k=3, pad=1))
    assert main(["compile", str(f), "--explain", "--target", "avx512"]) == 0
    out = capsys.readouterr().out
    assert "NCHW16c (cost" in out and "in 16-channel blocks" in out
    assert main(["compile", str(f), "--explain", "--target", "avx2"]) == 0
    assert "blocked values from" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ALL)
def test_layout_choices_reach_the_cli(tmp_path, capsys, layout):
    f = tmp_path / "inv.cnn"
    f.write_text(INVERTED.format(size=8, c=16, e=32, k=3, pad=1))
    assert main(["compile", str(f), "--stats", "--layout", layout]) == 0
    assert "layout transforms per call: 1" in capsys.readouterr().out
    assert main(["compile", str(f), "--explain", "--layout", layout]) == 0
    out = capsys.readouterr().out
    assert f"output kept in {layout}" in out
    for other in set(ALL) - {layout}:
        assert f"output kept in {other}" not in out


def test_nhwc_storage_is_nhwc():
    """NHWC storage holds ``[N, H, W, C]`` with C padded to whole 8-channel blocks, the halo
    around each image (the layout a reader of the raw buffer sees): NumPy's transpose of the
    NCHW tensor, zeros in the halo and the padding lanes; a part of a concatenation starts at
    its block's place in the first pixel."""
    from dataclasses import replace

    from cnnc.compiler.plan import Storage

    x = np.random.default_rng(0).standard_normal((2, 12, 5, 4)).astype(np.float32) + 3.0
    s = Storage(12, 2, 5 + 1 + 2, 4 + 2 + 1, 1, 2, nhwc=True)
    assert s.layout == "NHWC" and s.floats == 8 * 7 * 16
    buf = np.zeros(2 * s.floats, np.float32)
    s.store(x, buf)
    images = buf.reshape(2, 8, 7, 16)
    np.testing.assert_array_equal(images[:, 1:6, 2:6, :12], x.transpose(0, 2, 3, 1))
    images[:, 1:6, 2:6, :12] = 0
    assert not buf.any()  # halo and padding lanes
    s.store(x, buf)
    np.testing.assert_array_equal(s.load(buf, 2, (12, 5, 4)), x)
    part = replace(s, channels=4, first_block=1)
    assert part.offset == 8
    part.store(x[:, :4], buf[part.offset:])
    np.testing.assert_array_equal(images[:, 1:6, 2:6, 8:12], x[:, :4].transpose(0, 2, 3, 1))


#: A pool read only by a 1x1 convolution (fused as its prologue), an inception-like
#: concatenation of the two branches.
POOLED = """network pooled
input x: 3 x 11 x 11
s = x -> conv(32, 3, pad=1) -> relu
a = s -> maxpool(3, stride=1, pad=1) -> conv(16, 1) -> relu
b = s -> conv(32, 3, pad=1)
concat(a, b) -> conv(16, 3, stride=2) -> globalavgpool -> output y
"""


def test_pooling_prologue_reads_every_blocked_layout():
    """The 1x1 convolution computing its input's pool as a prologue reads the pool's input in
    its layout (an NCHW16c block as two 8-channel halves; the pooled rows in its scratch are
    8-channel blocks, as in NCHW8c): fused in each, bit for bit equal."""
    graph = load_network(POOLED)
    runs = {layout: compile_model(graph, seed=0, layout=layout) for layout in ALL}
    for layout, m in runs.items():
        assert _layouts(m) == {layout}
        assert [n.op for n in m.plan.graph.nodes() if n.attrs.get("prologue")] == ["conv"]
        assert not [n for n in m.plan.graph.nodes() if n.op == "maxpool"]
    _agree(graph, runs)


@pytest.mark.parametrize("source", [POOLED, INVERTED.format(size=9, c=16, e=40, k=5, pad=2)])
def test_every_nhwc_kernel_checks_against_the_reference(source):
    """`cnnc check` in NHWC: each step fed the reference's values through the storage's own
    NHWC layout (``Storage.store``) and read back through it, so a kernel that wrote another
    order than the storage's would fail its row."""
    from cnnc.runtime.check import check

    model, rows = check(load_network(source), layout="NHWC")
    assert _layouts(model) == {"NHWC"}
    assert rows and all(r.ok for r in rows), [(r.name, r.fraction) for r in rows if not r.ok]


#: Layers of 64 channels on planes of 7 x 7 and 4 x 4 (rows too short for the 6-pixel tile):
#: on an 8-lane target the tiles run plane by plane, the residual add fused at their stores.
PLANES = """network planes
input x: 16 x 7 x 7
s = x -> conv(64, 3, pad=1) -> relu
d = s -> conv(64, 3, pad=1)
(s + d) -> relu -> conv(64, 1, stride=2) -> relu -> globalavgpool -> output y
"""


def test_8_lane_plane_tiles_in_every_blocked_layout(monkeypatch):
    """On a machine of 2 CPUs (4 planes of 16 channels are work enough for its threads) the
    8-lane target's tiles cross rows (``6x16/8:plane``), in NCHW8c, NCHW16c (read as 8-channel
    halves) and NHWC, with the residual operand and the halo at each pixel's own row; with
    many CPUs they stay row by row. Every model bit for bit the same, and the reference's."""
    graph = load_network(PLANES)
    runs = {}
    for cpus, layout in ((2, "NCHW8c"), (2, "NCHW16c"), (2, "NHWC"), (64, "NCHW8c")):
        monkeypatch.setattr("os.cpu_count", lambda cpus=cpus: cpus)
        m = compile_model(graph, seed=4, target="avx2", layout=layout, lowering="direct")
        tiles = {n.attrs["tile"] for n in m.plan.graph.nodes() if n.op == "conv"}
        assert tiles == ({"6x16/8:plane"} if cpus == 2 else {"6x16/8"}), (cpus, layout)
        runs[f"{layout} on {cpus} CPUs"] = m
    _agree(graph, runs)
