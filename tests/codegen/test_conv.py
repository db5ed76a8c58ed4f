"""Every convolution lowering against the float64 reference, on awkward shapes and attributes.

Each distinct geometry costs a Numba compile (1-3 s, cached on disk afterwards), so the cases
are chosen to cover many features each, compiled kernels are reused across batch sizes, and the
hypothesis test runs few, derandomized examples (the same kernels every run: disk cache hits).
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.compiler.kernels.conv_geometry import ConvGeometry
from cnnc.compiler.types import spatial_out
from cnnc.runtime.conv_kernel import compile_conv, geometry, normalize_attrs

LOWERINGS = ["direct", "im2col"]

# (id, attrs, (C, H, W), batch sizes)
CASES = [
    ("odd_13_to_59_at_71", dict(out_channels=59, kernel=3, pads=1, bias=True,
                                activation="relu"), (13, 71, 71), (2,)),
    ("asym_pads_stride2", dict(out_channels=24, kernel=(5, 3), stride=2, pads=(0, 2, 1, 0)),
     (16, 15, 12), (1, 3)),
    ("stride3_dilation2", dict(out_channels=16, kernel=3, stride=3, dilation=2, pads=(2, 1, 0, 3),
                               bias=True), (9, 17, 19), (2,)),
    ("groups2", dict(out_channels=34, kernel=3, groups=2, pads=1, bias=True), (20, 9, 8), (2,)),
    ("depthwise", dict(out_channels=20, kernel=3, groups=20, pads=(1, 0, 2, 1), stride=(1, 2),
                       bias=True, activation="relu"), (20, 13, 19), (2,)),
    ("batch9_1x1_image", dict(out_channels=10, kernel=1, bias=True), (7, 1, 1), (9, 1)),
    ("stem_3ch_7x7_s2", dict(out_channels=16, kernel=7, stride=2, pads=3, activation="relu"),
     (3, 32, 30), (1, 2)),
    ("pointwise_stride2", dict(out_channels=32, kernel=1, stride=2), (24, 10, 11), (3,)),
]


def _operands(rng, g: ConvGeometry, N: int):
    x = rng.standard_normal((N, g.C, g.H, g.W)).astype(np.float32)
    w = (rng.standard_normal((g.K, g.Cg, g.R, g.S)) / np.sqrt(g.Cg * g.R * g.S)).astype(
        np.float32)
    b = rng.standard_normal(g.K).astype(np.float32) if g.bias else None
    return x, w, b


def _check(kernel, attrs, N, rng, conv_ref, close):
    g = kernel.geometry
    a = normalize_attrs(attrs)
    x, w, b = _operands(rng, g, N)
    y = kernel(x, w, b)
    ref = conv_ref(x, w, b, stride=a["stride"], pads=a["pads"], dilation=a["dilation"],
                   groups=a["groups"], activation=a["activation"])
    close(y, ref)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv_awkward_cases(case, lowering, conv_ref, close):
    _, attrs, shape, batches = case
    k = compile_conv(attrs, shape, lowering, comment=f"test {case[0]}")
    rng = np.random.default_rng(zlib.crc32(case[0].encode()))
    for N in batches:  # one compiled kernel serves every batch size
        _check(k, attrs, N, rng, conv_ref, close)


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    if groups == "dw":
        C = draw(st.integers(1, 12))
        groups, K = C, C
    else:
        C = groups * draw(st.integers(1, 10))
        K = groups * draw(st.integers(1, 12))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    H = draw(st.integers(max(1, dh * (R - 1) + 1 - pads[0] - pads[2]), 13))
    W = draw(st.integers(max(1, dw * (S - 1) + 1 - pads[1] - pads[3]), 13))
    attrs = dict(out_channels=K, kernel=(R, S), stride=(sh, sw), dilation=(dh, dw), pads=pads,
                 groups=groups, bias=draw(st.booleans()),
                 activation=draw(st.sampled_from([None, "relu"])))
    return attrs, (C, H, W), draw(st.integers(1, 3))


@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cfg=conv_configs())
def test_conv_hypothesis(cfg, conv_ref, close):
    attrs, shape, N = cfg
    rng = np.random.default_rng(0)
    for lowering in LOWERINGS:
        _check(compile_conv(attrs, shape, lowering), attrs, N, rng, conv_ref, close)


def test_output_size_formula():
    # P = (H + top + bottom - dh*(R-1) - 1)//sh + 1
    # spatial_out(size, kernel, stride, pad_begin, pad_end, dilation)
    assert spatial_out(224, 7, 2, 3, 3, 1) == 112
    assert spatial_out(71, 3, 1, 1, 1, 1) == 71
    assert spatial_out(10, 3, 3, 0, 1, 2) == 3
    g = geometry(dict(out_channels=4, kernel=3, stride=2, pads=(0, 1, 2, 3)), (2, 9, 8))
    assert (g.P, g.Q) == ((9 + 2 - 3) // 2 + 1, (8 + 4 - 3) // 2 + 1)


@pytest.mark.parametrize("attrs, shape, message", [
    (dict(out_channels=6, kernel=3, groups=4), (8, 5, 5), "groups"),
    (dict(out_channels=6, kernel=5), (3, 4, 4), "empty"),
    (dict(out_channels=6, kernel=3, pads=(-1, 0, 0, 0)), (3, 4, 4), "pads"),
    (dict(out_channels=6, kernel=3, activation="gelu"), (3, 4, 4), "activation"),
])
def test_invalid_attrs(attrs, shape, message):
    with pytest.raises(ValueError, match=message):
        geometry(attrs, shape)


def test_operand_shape_errors():
    k = compile_conv(dict(out_channels=10, kernel=1, bias=True), (7, 1, 1), "direct")
    x = np.zeros((2, 7, 1, 1), np.float32)
    w = np.zeros((10, 7, 1, 1), np.float32)
    with pytest.raises(ValueError, match="input"):
        k(np.zeros((2, 6, 1, 1), np.float32), w, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="weight"):
        k(x, np.zeros((10, 7, 3, 3), np.float32), np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="bias"):
        k(x, w, None)


def test_comment_is_sanitized_and_source_readable():
    evil = "model.cnn:12 conv1\nimport os; os.system('echo pwned')\r\x00"
    k = compile_conv(dict(out_channels=10, kernel=1, bias=True), (7, 1, 1), "direct",
                     comment=evil)
    assert "os.system" not in k.source  # the shared module holds no layer text
    assert "\n" not in k.comment and "\r" not in k.comment and "\x00" not in k.comment
    assert k.comment.startswith("model.cnn:12 conv1 import os")
    # one task function: the parallel loop's body for one task, and its task count
    assert k.source.count("(t, args):") == 1 and k.source.count("_tasks(") == 1
    assert k.path is not None and open(k.path).read() == k.source


def test_direct_kernel_asm_is_vectorized():
    """The hot loop is explicit 8-wide SIMD: ymm FMAs, broadcasts, no gathers, no spills."""
    k = compile_conv(dict(out_channels=32, kernel=3, pads=1), (16, 12, 12), "direct")
    asm = k.inspect_asm()
    fmas = re.findall(r"vfmadd231ps\s+[^\n]*ymm", asm)
    assert len(fmas) >= 96  # 12 per lane x 8 lanes, at least once
    assert "vbroadcastss" in asm
    assert "vinsertps" not in asm
    assert not re.search(r"vfmadd\d+ss", asm)
    # Basic blocks that hold the micro-kernel must not touch the stack with ymm registers.
    for block in re.split(r"\n\.?LBB\S*:", asm):
        if len(re.findall(r"vfmadd231ps", block)) >= 12:
            assert not re.search(r"ymm\d+,\s*-?\d*\(%rsp\)|\(%rsp\),\s*%ymm", block), block


# -- register tiles (16 lanes, AVX-512) -----------------------------------------------------

TILE_CASES = [
    # (id, attrs, (C, H, W), tile): 32-channel tiles, one-vector tiles, rows shorter than the
    # tile (one-pixel tiles), an overlapping last tile, groups, the 3-channel stem
    ("t14x32_rows_of_15", dict(out_channels=64, kernel=3, pads=1, bias=True,
                               activation="relu"), (16, 9, 15), "14x32/16"),
    ("t14x16_K48_stride2", dict(out_channels=48, kernel=3, stride=2, pads=(1, 0, 1, 2)),
     (8, 11, 40), "14x16/16"),
    ("t14x32_rows_of_5", dict(out_channels=32, kernel=1, bias=True), (24, 4, 5), "14x32/16"),
    ("t7x16_groups2", dict(out_channels=40, kernel=3, groups=2, pads=1, dilation=2),
     (12, 10, 9), "7x16/16"),
    ("t8x32_stem", dict(out_channels=32, kernel=7, stride=2, pads=3, activation="relu"),
     (3, 20, 22), "8x32/16"),
]


@pytest.mark.parametrize("case", TILE_CASES, ids=[c[0] for c in TILE_CASES])
def test_16_lane_tiles_match_reference_and_8_lanes_bitwise(case, conv_ref, close):
    """Every tile computes each output with the same chain of FMAs in the same order as the
    8-lane kernel: the results are identical bit for bit, and match the float64 reference."""
    name, attrs, shape, tile = case
    k16 = compile_conv(attrs, shape, "direct", tile=tile)
    k8 = compile_conv(attrs, shape, "direct")
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x, w, b = _operands(rng, k16.geometry, 2)
    y16 = k16(x, w, b)
    np.testing.assert_array_equal(y16, k8(x, w, b))
    a = normalize_attrs(attrs)
    close(y16, conv_ref(x, w, b, stride=a["stride"], pads=a["pads"], dilation=a["dilation"],
                        groups=a["groups"], activation=a["activation"]))


def test_16_lane_gather_order_matches_reference_and_8_lanes_bitwise(conv_ref, close):
    """A strided 1x1 convolution whose tasks first gather their input row (every ``sw``-th
    pixel of input row ``p * sh``, every channel) into a per-thread row, then run their group
    of k-tiles over it at stride 1: the same FMAs in the same order as the 8-lane strided
    kernel, for every count of k-tile groups (``KG``, the kernel's last size argument: one
    group, two with the last one shorter, one per k-tile), and the reference's numbers."""
    attrs = dict(out_channels=96, kernel=1, stride=(2, 3), bias=True, activation="relu")
    shape = (24, 11, 47)  # 6 x 16 outputs: a 14-pixel tile and one overlapping it; 3 k-tiles
    gathered = compile_conv(attrs, shape, "direct", tile="14x32/16:gather")
    strided = compile_conv(attrs, shape, "direct")
    rng = np.random.default_rng(11)
    x, w, b = _operands(rng, gathered.geometry, 2)
    want = strided(x, w, b)
    a = normalize_attrs(attrs)
    close(want, conv_ref(x, w, b, stride=a["stride"], pads=a["pads"], activation="relu"))
    sizes = gathered.int_args
    for groups in (1, 2, 3):
        gathered.int_args = sizes[:-1] + (groups,)
        np.testing.assert_array_equal(gathered(x, w, b), want)
    with pytest.raises(ValueError, match="gather order needs a 1x1"):
        compile_conv(dict(out_channels=32, kernel=3, stride=2), (8, 9, 9), tile="7x32/16:gather")


#: Strided 1x1 convolutions with rows of 14 and 28 pixels reading a producer's channel-blocked
#: storage (NCHW16c: 16-channel blocks read as 8-channel halves; NHWC; a halo): one with the
#: runtime residual add and ReLU (32 channels a tile), one of 48 channels (16 a tile).
GATHER_NET = """network gather
input x: 24 x 28 x 56
h = x -> conv(32, 3, pad=1) -> relu
s = h -> conv(32, 1, stride=2)
d = h -> conv(32, 3, stride=2, pad=1)
relu(s + d) -> conv(48, 1, stride=(1, 2)) -> output y
"""


@pytest.mark.parametrize("layout", ["auto", "NHWC"])
def test_gather_order_in_a_network_matches_8_lanes_bitwise(layout):
    """In a compiled network (16-lane target) the gathering kernels read the producers'
    storage and give the 8-lane target's numbers bit for bit, and the reference's."""
    from cnnc.runtime.model import compile as compile_model
    from cnnc.runtime.reference import run_reference

    x = np.random.default_rng(4).standard_normal((2, 24, 28, 56)).astype(np.float32)
    got = {}
    for target in ("avx2", "avx512"):
        m = compile_model(GATHER_NET, seed=3, target=target, lowering="direct",
                          layout=layout if target == "avx512" else "auto")
        got[target] = m(x)
    tiles = sorted(n.attrs["tile"] for n in m.plan.graph.nodes() if "gather" in
                   n.attrs.get("tile", ""))
    assert tiles == ["14x16/16:gather", "14x32/16:gather"]
    np.testing.assert_array_equal(got["avx512"], got["avx2"])
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(got["avx512"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


#: A strided 1x1 convolution whose packed weights (384 x 512 floats: 768 KiB) lie between a
#: 512 KiB and a 1 MiB L2.
L2_NET = """network l2
input x: 384 x 28 x 28
x -> conv(512, 1, stride=2) -> relu -> output y
"""


def test_the_l2_size_sizes_the_groups_of_k_tiles(monkeypatch):
    """The target's L2 decides a gathering kernel's groups of k-tiles (``kgroups``, recorded
    on the node): one group of all 16 k-tiles where the weights fit a 1 MiB L2, two for a
    faked 512 KiB one (``CNNC_L2_BYTES``); the same sums in the same order, so the outputs
    agree bit for bit, and with the reference."""
    from cnnc.runtime.model import compile as compile_model
    from cnnc.runtime.reference import run_reference

    monkeypatch.setattr("os.cpu_count", lambda: 2)  # the batch-1 task rule: 14 rows suffice
    x = np.random.default_rng(5).standard_normal((2, 384, 28, 28)).astype(np.float32)
    got, groups = {}, {}
    for l2 in ("1M", "512K"):
        monkeypatch.setenv("CNNC_L2_BYTES", l2)
        m = compile_model(L2_NET, seed=3, target="avx512", lowering="direct")
        conv = next(n for n in m.plan.graph.nodes() if n.op == "conv")
        assert conv.attrs["tile"] == "14x32/16:gather"
        groups[l2] = conv.attrs["kgroups"]
        got[l2] = m(x)
    assert groups == {"1M": 1, "512K": 2}
    np.testing.assert_array_equal(got["512K"], got["1M"])
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(got["1M"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_gather_groups():
    """As few groups of k-tiles as keep a group's weights within the L2 given, more where the
    rows would leave threads idle, never more than one per k-tile."""
    from cnnc.compiler.kernels.tiles import choose_tile, gather_groups

    kib = 1024
    l2 = 1024 * kib
    assert gather_groups(16, 32 * kib, 28, 2, l2) == 1  # ResNet-50's 256 -> 512 at 28 x 28
    assert gather_groups(64, 128 * kib, 7, 2, l2) == 8  # 8 MiB of weights, 8 k-tiles a group
    assert gather_groups(64, 128 * kib, 7, 2, 512 * kib) == 16  # half the L2: twice the groups
    assert gather_groups(64, 128 * kib, 7, 2, 2048 * kib) == 4
    assert gather_groups(16, 32 * kib, 7, 2, l2) == 2  # 7 rows on 2 threads: 14 tasks
    assert gather_groups(2, 8 * kib, 1, 64, l2) == 2  # never more than the k-tiles
    assert gather_groups(4, 2048 * kib, 28, 1, l2) == 4  # a k-tile over the L2: one each
    for k_tiles in (1, 3, 16, 64):
        for rows in (1, 7, 28):
            for cache in (256 * kib, l2, 4096 * kib):
                groups = gather_groups(k_tiles, 128 * kib, rows, 2, cache)
                assert 1 <= groups <= k_tiles
    assert str(choose_tile(16, 512, 28, 28, strided_1x1=True)) == "14x32/16:gather"
    assert str(choose_tile(16, 2048, 7, 7, strided_1x1=True)) == "7x32/16"  # rows of 7: not
    assert choose_tile(8, 512, 28, 28, strided_1x1=True).order == "rows"  # 16 lanes only


def test_choose_tile():
    from cnnc.compiler.kernels.tiles import TILE_8, DirectTile, choose_tile

    assert choose_tile(8, 64, 56) == TILE_8
    assert str(choose_tile(16, 64, 56)) == "14x32/16"  # 4 tiles of 14, no waste
    assert str(choose_tile(16, 512, 7)) == "7x32/16"
    assert str(choose_tile(16, 48, 28)) == "14x16/16"  # 48 = 3 blocks of 16: one vector
    assert choose_tile(16, 24, 3).pixels == 7  # short rows: one-pixel tiles of that kernel
    assert choose_tile(16, 64, 8).pixels == 7 and choose_tile(16, 64, 17).pixels == 7
    for q in range(1, 120):
        for k in (16, 24, 32, 48, 64, 100):
            t = choose_tile(16, k, q)
            assert t.pixels <= max(q, 7) and t.pixels * t.vectors + t.vectors + 1 <= 32
            assert (-(-k // 16) * 16) % t.channels == 0
    assert DirectTile.parse("14x32/16") == DirectTile(16, 2, 14)
    with pytest.raises(ValueError, match="registers"):
        DirectTile(16, 2, 15)
    with pytest.raises(ValueError, match="does not divide"):
        compile_conv(dict(out_channels=48, kernel=1), (8, 4, 4), tile="4x32/16")


# -- 8-lane tiles (AVX2: 16 ymm registers) ------------------------------------------------------

#: The kernels the 8-lane tile tests draw from (each a compile of its own): a padded 3x3 with the
#: bias and the ReLU, and a strided pointwise convolution.
KERNELS_8 = [dict(kernel=3, pads=(1, 0, 2, 1), bias=True, activation="relu"),
             dict(kernel=1, stride=2)]


@st.composite
def tile_8_configs(draw):
    attrs = dict(draw(st.sampled_from(KERNELS_8)), out_channels=draw(st.integers(1, 40)))
    C = draw(st.integers(8, 20))
    H, W = draw(st.integers(1, 15)), draw(st.integers(2, 16))  # Q: 1 to 15 pixels
    return attrs, (C, H, W), draw(st.integers(1, 2))


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cfg=tile_8_configs())
def test_8_lane_row_and_plane_tiles_match_reference_bitwise(cfg, conv_ref, close):
    """The 6 x 16 tile row by row (6-pixel tiles, then 4-pixel ones ending at the row's end,
    or one-pixel tiles for rows under 4: every rest of ``Q % 6``), in the k-tiles-fastest
    order, and plane by plane (tiles whose pixels cross into the next row, each with its own
    input and output offset): the same FMAs in the same order, so bit for bit the same
    numbers, and the reference's."""
    attrs, shape, N = cfg
    rows = compile_conv(attrs, shape, "direct")
    plane = compile_conv(attrs, shape, "direct", tile="6x16/8:plane")
    kblocks = compile_conv(attrs, shape, "direct", tile="6x16/8:kblocks")
    assert str(plane.tile) == "6x16/8:plane"
    rng = np.random.default_rng(N)
    x, w, b = _operands(rng, plane.geometry, N)
    y = plane(x, w, b)
    np.testing.assert_array_equal(y, rows(x, w, b))
    np.testing.assert_array_equal(y, kblocks(x, w, b))
    a = normalize_attrs(attrs)
    close(y, conv_ref(x, w, b, stride=a["stride"], pads=a["pads"], dilation=a["dilation"],
                      groups=a["groups"], activation=a["activation"]))


def test_8_lane_plane_tile_stem(conv_ref, close):
    """The 3-channel stem (a channel block of 3) plane by plane: the reference's numbers."""
    attrs = dict(out_channels=32, kernel=7, stride=2, pads=3, activation="relu")
    k = compile_conv(attrs, (3, 20, 22), "direct", tile="6x16/8:plane")
    _check(k, attrs, 2, np.random.default_rng(7), conv_ref, close)


def test_8_lane_tile_split_and_order():
    """The cost model's counts of 6- and 4-pixel tiles cover every row exactly once or with
    an overlap under one tile; planes of short rows and of rows of 14 take the plane order,
    rows of multiples of 6 stay row by row, and so do layers with fewer planes than threads."""
    from cnnc.compiler.kernels.tiles import TILE_8, DirectTile, choose_tile, cost_8, split_8

    for q in range(1, 300):
        six, four = split_8(q)
        covered = 6 * six + 4 * four
        if q < 4:
            assert (six, four) == (0, 0)
        else:
            assert q <= covered < q + 4 and six >= 0
            rest = q - 6 * six  # the kernel's 4-pixel tiles start here, the last at q - 4
            starts = [6 * six + min(4 * j, rest - 4) for j in range(four)]
            assert all(0 <= a <= q - 4 for a in starts) and (not starts or starts[-1] == q - 4)
        assert cost_8(q) >= 8 * q // 6
    assert split_8(7) == (0, 2) and split_8(14) == (1, 2) and split_8(56) == (8, 2)
    assert split_8(49) == (7, 2) and split_8(12) == (2, 0)
    assert choose_tile(8, 512, 7, 7) == DirectTile(order="plane")  # planes: many
    assert choose_tile(8, 256, 14, 14) == DirectTile(order="plane")
    assert choose_tile(8, 64, 12, 12, planes=64) == TILE_8  # nothing to gain
    assert choose_tile(8, 64, 56, 56) == TILE_8  # too little to gain
    assert choose_tile(8, 64, 13, 13) == DirectTile(order="plane")
    assert choose_tile(8, 512, 7, 7, planes=1) == TILE_8  # threads left idle
    assert DirectTile.parse("6x16/8:plane") == DirectTile(order="plane")
    assert str(DirectTile(8, 2, 6, "kblocks")) == "6x16/8:kblocks"
    with pytest.raises(ValueError, match="order"):
        DirectTile.parse("6x16/8:diagonal")


@pytest.mark.host_target
def test_16_lane_kernel_asm_uses_zmm_without_spills():
    """With AVX-512 the 14 x 32 tile is 28 zmm accumulators, 2 weight vectors and a broadcast:
    31 of 32 registers, and nothing spills to the stack in the micro-kernel."""
    from cnnc.compiler.target import host_target

    if host_target().lanes != 16:
        pytest.skip("this CPU has no AVX-512: LLVM splits 16-lane vectors into ymm halves")
    k = compile_conv(dict(out_channels=64, kernel=3, pads=1), (16, 16, 16), "direct",
                     tile="14x32/16")
    asm = k.inspect_asm()
    assert len(re.findall(r"vfmadd\d+ps\s+[^\n]*zmm", asm)) >= 28  # the tile's accumulators
    for block in re.split(r"\n\.?LBB\S*:", asm):
        if len(re.findall(r"vfmadd231ps", block)) >= 28:
            assert not re.search(r"zmm\d+,\s*-?\d*\(%rsp\)|\(%rsp\),\s*%zmm", block), block



def test_depthwise_rows_of_every_width(conv_ref, close):
    """One channel-wise kernel (its sizes are run-time values: one compile) over rows of 1 to
    19 pixels: one-pixel tiles (under 4), two overlapping 4-pixel tiles (4 to 7: the last
    stages of MobileNetV2 and EfficientNet-B0), full tiles and an overlapping full tile: the
    reference's numbers on every path."""
    attrs = dict(out_channels=11, kernel=3, groups=11, pads=1, bias=True, activation="relu")
    rng = np.random.default_rng(11)
    for W in range(1, 20):
        _check(compile_conv(attrs, (11, 3, W), "direct"), attrs, 2, rng, conv_ref, close)
