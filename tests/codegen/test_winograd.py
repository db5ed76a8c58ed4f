"""Winograd F(2x2, 3x3) and F(4x4, 3x3): the transforms in exact arithmetic, the compiled
kernels against the float64 reference within their error bound on drawn shapes, the bound
itself, and the lowering's choice, refusal and schedule invariance in whole networks.

The kernels take every size at run time: the hypothesis test compiles two kernels (one per
transform) and the network tests share theirs."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.compiler.kernels.winograd import F2, F4, FILTERS_A_PRODUCT, WINOGRAD_INTS
from cnnc.compiler.ops import EPS32, evaluate_bound
from cnnc.compiler.passes import PassContext
from cnnc.compiler.passes.select_lowering import select_lowering
from cnnc.compiler.target import DEFAULT_CACHES, TARGETS
from cnnc.dsl.builder import load_network, load_zoo
from cnnc.runtime.check import check_model, format_rows
from cnnc.runtime.conv_kernel import compile_conv
from cnnc.runtime.model import ModelError
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

# Lavin & Gray (2016), F(4x4, 3x3), as printed in the paper.
LAVIN_F4 = {
    "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "G": [[Fraction(1, 4), 0, 0], [Fraction(-1, 6)] * 3,
          [Fraction(-1, 6), Fraction(1, 6), Fraction(-1, 6)],
          [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)],
          [Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
           [0, 1, -1, 8, -8, 1]],
}


def test_f4_matrices_are_lavin_and_grays():
    for name, rows in LAVIN_F4.items():
        assert getattr(F4, name) == tuple(tuple(Fraction(v) for v in row) for row in rows)


@pytest.mark.parametrize("t", [F2, F4], ids=["F2", "F4"])
def test_transforms_compute_the_correlation_exactly(t):
    """In rationals, A^T [(G g) * (B^T d)] is the correlation of d with g, exactly, and so is
    the nested 2-D form: the matrices are right, whatever float32 makes of them."""
    rng = np.random.default_rng(0)
    a, m = t.alpha, t.m
    for _ in range(5):
        d = [[Fraction(int(v)) for v in row] for row in rng.integers(-9, 10, (a, a))]
        g = [[Fraction(int(v)) for v in row] for row in rng.integers(-9, 10, (3, 3))]

        def mul(x, y):
            return [[sum(x[i][k] * y[k][j] for k in range(len(y))) for j in range(len(y[0]))]
                    for i in range(len(x))]

        def tr(x):
            return [list(r) for r in zip(*x)]

        u = mul(mul(t.G, g), tr(t.G))
        v = mul(mul(t.BT, d), tr(t.BT))
        y = mul(mul(t.AT, [[u[i][j] * v[i][j] for j in range(a)] for i in range(a)]), tr(t.AT))
        want = [[sum(d[i + r][j + s] * g[r][s] for r in range(3) for s in range(3))
                 for j in range(m)] for i in range(m)]
        assert y == want


@settings(max_examples=15, deadline=None)
@given(t=st.sampled_from([F2, F4]),
       batch=st.lists(st.integers(0, 4), min_size=0, max_size=3), seed=st.integers(0, 2 ** 16))
def test_filter_transform_is_exact_g_w_gt_rounded_in_float64(t, batch, seed):
    """``filter_transform`` (stacked 2-D products) against ``G w G^T`` in rationals, filter by
    filter, for any batch shape, empty ones included: each element within 16 float64
    roundings of the sum of its terms' magnitudes (the float64 weights are exact rationals; a
    term ``G[p, i] w[i, j] G[q, j]`` is rounded at most 4 times, both entries of ``G`` and
    two products, and each 1-D pass sums 3 terms)."""
    w = np.random.default_rng(seed).standard_normal(tuple(batch) + (3, 3))
    u = t.filter_transform(w)
    a = t.alpha
    assert u.shape == tuple(batch) + (a, a) and u.dtype == np.float64
    for index in np.ndindex(*batch):
        g = [[Fraction(float(v)) for v in row] for row in w[index]]
        for p in range(a):
            for q in range(a):
                exact = sum(t.G[p][i] * g[i][j] * t.G[q][j] for i in range(3) for j in range(3))
                scale = sum(abs(t.G[p][i] * g[i][j] * t.G[q][j])
                            for i in range(3) for j in range(3))
                assert abs(Fraction(float(u[index + (p, q)])) - exact) <= \
                    16 * Fraction(2.0 ** -53) * scale


def test_filter_transform_of_more_filters_than_one_product_takes():
    """Filters beyond ``FILTERS_A_PRODUCT`` (several products, the last one padded) against
    NumPy's ``G @ w @ G.T`` filter by filter in float64: the same sums in the same order, so
    within 16 roundings of the terms' magnitudes of each other (equal where the BLAS library
    rounds alike in both)."""
    w = np.random.default_rng(5).standard_normal((3, FILTERS_A_PRODUCT // 2 + 7, 3, 3))
    for t in (F2, F4):
        G = t.array("G")
        scale = np.abs(G) @ np.abs(w) @ np.abs(G).T
        assert np.all(np.abs(t.filter_transform(w) - G @ w @ G.T) <= 16 * 2.0 ** -53 * scale)


def test_filter_transform_refuses_other_filter_sizes():
    with pytest.raises(ValueError, match="filters must be 3 x 3"):
        F4.filter_transform(np.zeros((2, 5, 5)))


def test_rounding_depths():
    """Two passes of each transform, each as long as its widest row: F(2,3) rows of 2 and 3
    nonzeros, F(4,3) of 4 and 5 (``error_bound``'s D = C + depth + 3)."""
    assert (F2.rounding_depth(), F4.rounding_depth()) == (2 * 2 + 2 * 3, 2 * 4 + 2 * 5)


def _conv_attrs(K: int, pads: tuple[int, int, int, int], bias: bool) -> dict:
    return {"out_channels": K, "kernel": (3, 3), "stride": (1, 1), "pads": pads,
            "dilation": (1, 1), "groups": 1, "bias": bias}


@pytest.fixture(scope="module")
def kernels():
    """One compiled kernel per transform: every size is a run-time argument."""
    made = {}

    def get(name: str, attrs: dict, shape: tuple[int, int, int]):
        k = compile_conv(attrs, shape, name)
        made.setdefault(name, k.kernel)
        assert k.kernel is made[name]  # the same compiled kernel for every shape
        return k
    return get


@settings(max_examples=20, deadline=None)
@given(algorithm=st.sampled_from(["winograd_f2", "winograd_f4"]),
       C=st.integers(8, 20), K=st.integers(1, 40), H=st.integers(3, 13),
       W=st.integers(3, 13), N=st.integers(1, 3),
       pads=st.sampled_from([(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 1, 0), (1, 0, 2, 1)]),
       bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_kernel_within_its_bound(kernels, algorithm, C, K, H, W, N, pads, bias, relu, seed):
    """Odd sizes (tiles cut by the output's edge), padding 0, 1 (``same``) and asymmetric,
    batches, channels not multiples of the 8-channel block, outputs not of the 16-channel
    tile: every output within the algorithm's error bound of the float64 reference."""
    rng = np.random.default_rng(seed)
    attrs = dict(out_channels=K, kernel=3, pads=pads, bias=bias,
                 activation="relu" if relu else None)
    k = kernels(algorithm, attrs, (C, H, W))
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32) if bias else None
    got = k(x, w, b).astype(np.float64)
    ins = [x.astype(np.float64), w.astype(np.float64)] + ([b.astype(np.float64)] if bias else [])
    want, bound = evaluate_bound("conv", ins, {**_conv_attrs(K, pads, bias),
                                               "lowering": algorithm}, 9 * C)
    if relu:
        want = np.maximum(want, 0.0)  # 1-Lipschitz: the bound carries through
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) / bound)


@pytest.mark.parametrize("algorithm", ["winograd_f2", "winograd_f4"])
def test_an_image_alone_or_in_a_batch(kernels, algorithm):
    """A task's tiles may belong to two images (5 tiles an image here, 6 a task): each tile
    still has its own sums in the same order, so every image gets the same bits alone or in a
    batch (docs/numerics.md, Reproducibility)."""
    attrs = dict(out_channels=20, kernel=3, pads=1, bias=True)
    m = 2 if algorithm == "winograd_f2" else 4
    k = kernels(algorithm, attrs, (9, m, 5 * m))  # one row of 5 tiles
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 9, m, 5 * m)).astype(np.float32)
    w = rng.standard_normal((20, 9, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    batch = k(x, w, b)
    for i in (0, 2, 4):
        np.testing.assert_array_equal(batch[i:i + 1], k(x[i:i + 1], w, b))


@pytest.mark.parametrize("algorithm", ["winograd_f2", "winograd_f4"])
def test_tasks_as_equal_shares_of_few_groups_give_the_same_bits(kernels, algorithm):
    """One image of 7 x 7 tiles is 9 groups of 6, its 200 output channels 13 tiles. On 2, 4
    or 5 threads (9 groups: 5 against 4, 3 against 2, 2 against 1) the tasks are as many
    equal shares of the 9 x 13 (group, output-channel tile) pairs; on 1 or 3 a task per group.
    Every output is the same bits whatever the shares (the sums of each output the same, in
    the same order)."""
    m = 2 if algorithm == "winograd_f2" else 4
    attrs = dict(out_channels=200, kernel=3, pads=1, bias=True, activation="relu")
    k = kernels(algorithm, attrs, (9, 7 * m, 7 * m))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 9, 7 * m, 7 * m)).astype(np.float32)
    w = rng.standard_normal((200, 9, 3, 3)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    at = WINOGRAD_INTS.index("TH")
    ints = list(k.int_args)
    outs = {}
    for threads, tasks in ((1, 9), (2, 2), (3, 9), (4, 4), (5, 5)):
        ints[at] = threads
        k.int_args = tuple(ints)  # this ConvKernel's own (each compile_conv makes one)
        arrays = [None] * (4 + len(k.work))
        assert k.kernel.count_tasks(*arrays, *ints, k.relu, 1) == tasks
        outs[threads] = k(x, w, b)
    for threads in (2, 4, 5):
        np.testing.assert_array_equal(outs[threads], outs[1])


def test_bound_grows_with_the_transform():
    """F(2,3)'s bound is the direct one's order; F(4,3)'s several times larger (its
    transforms' larger entries), but still a small multiple of float32 rounding of the sum of
    |terms|: a bound that catches a wrong pixel (off by the values themselves)."""
    rng = np.random.default_rng(3)
    C, K = 32, 16
    x, w = rng.standard_normal((1, C, 12, 12)), rng.standard_normal((K, C, 3, 3))
    attrs = _conv_attrs(K, (1, 1, 1, 1), False)
    want, direct = evaluate_bound("conv", [x, w], attrs, 9 * C)
    ratios = {}
    for name in ("winograd_f2", "winograd_f4"):
        _, bound = evaluate_bound("conv", [x, w], {**attrs, "lowering": name}, 9 * C)
        ratios[name] = float(np.median(bound / direct))
        assert np.median(bound / np.abs(want)) < 1e-2  # far below the values themselves
    assert 0.5 < ratios["winograd_f2"] < 2 < ratios["winograd_f4"] < 30
    # and no tighter than what Higham's rule gives a sum of the same products
    assert float(np.min(direct)) >= (9 * C + 2) * EPS32 * float(np.min(np.abs(want)))


RESNETISH = """network resnetish
input x: 8 x 18 x 17
block basic(c) {
    y = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
           -> conv(c, 3, pad=1, bias=false) -> batchnorm
    return relu(y + in)
}
x -> conv(24, 3, pad=1) -> relu -> basic(24) -> conv(40, 3, stride=2, pad=same) -> relu
  -> basic(40) -> conv(16, 3) -> output y
"""


@pytest.mark.parametrize("target", ["avx2", "avx512"])
def test_forced_winograd_network(target):
    """``--lowering winograd``: every 3x3 stride-1 layer runs Winograd (the cheaper of F(4x4)
    and F(2x2) for its shape), the stride-2 one does not; every kernel within its bound
    (``cnnc check``'s rule: channel-blocked input and output, fused batch norm, residual add and
    ReLU); and the network computes what the network as written computes."""
    graph = load_network(RESNETISH)
    model = compile_model(graph, target=target, lowering="winograd", seed=0)
    lowerings = {n.name: n.attrs.get("lowering") for n in model.plan.graph.nodes()
                 if n.op == "conv"}
    assert lowerings["conv2"] not in ("winograd_f2", "winograd_f4")  # stride 2
    assert sum(v in ("winograd_f2", "winograd_f4") for v in lowerings.values()) == 6
    packs = [n for n in model.plan.graph.nodes() if n.op == "conv_pack"]
    # each weight packed (a Winograd one: its filter transform) for its own algorithm
    assert sorted(p.attrs["algorithm"] for p in packs) == sorted(lowerings.values())
    rows = check_model(model, batch=3)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
    # the whole network near the float64 network as written (as every other lowering is:
    # tests/runtime/test_zoo_compiled.py's schedule invariance, by the same rule)
    x = np.random.default_rng(0).standard_normal((3, 8, 18, 17)).astype(np.float32)
    want = run_reference(graph, {"x": x}, model.params)["y"]
    err = np.max(np.abs(model({"x": x}) - want)) / max(1.0, float(np.max(np.abs(want))))
    assert err <= 2e-4


def test_refused_where_it_does_not_compute():
    """A layer named for Winograd that it cannot compute is refused, saying why; the choice
    for every layer leaves such layers to the cost model."""
    graph = load_network(RESNETISH)
    with pytest.raises(ModelError, match="3x3, stride-1, undilated, ungrouped"):
        compile_model(graph, lowering={"conv2": "winograd"}, warm=False)
    model = compile_model(load_zoo("resnet18", size=32, width=8, classes=10),
                          lowering="winograd", warm=False)
    stem = next(n for n in model.plan.graph.nodes() if n.name == "conv1")
    assert stem.attrs["lowering"] == "direct"


def test_never_on_cuda():
    """Its kernel keeps per-thread scratch, which has no CUDA form: a CUDA target never
    chooses it, and asking for it there is refused, saying where it runs."""
    model = compile_model(load_network(RESNETISH), target="cuda-emu", warm=False)
    assert not any(n.attrs.get("lowering", "").startswith("winograd")
                   for n in model.plan.graph.nodes())
    with pytest.raises(ModelError, match="runs on CPU targets only"):
        compile_model(load_network(RESNETISH), target="cuda-emu", lowering="winograd",
                      warm=False)


def test_cost_model_choice_and_training():
    """At -O2 the cost model takes Winograd for a wide 3x3 stride-1 layer (where it measured
    2-3x direct's speed: bench/RESULTS.md) and the direct kernel where its filter transform
    would stream from memory for a handful of tiles (a 2x2 output of 1024 channels: 67 MB for
    F(2x2), 151 MB for F(4x4), read for one tile an image); in a training graph it
    leaves Winograd out (its filter transform is made again after every update) unless it is
    asked for."""
    src = """network choices
input x: 64 x 28 x 28
x -> conv(64, 3, pad=1) as wide -> maxpool(14) -> conv(1024, 1) -> conv(1024, 3, pad=1) as deep
  -> output y
"""
    for training, lowering, want in [(False, "auto", ("winograd", "direct")),
                                     (True, "auto", ("direct", "direct")),
                                     (True, "winograd", ("winograd", "winograd"))]:
        g = load_network(src)
        select_lowering(g, PassContext(training=training, lowering=lowering, opt_level=2))
        chosen = {n.name: n.attrs["lowering"] for n in g.nodes() if n.op == "conv"}
        got = tuple(chosen[name].split("_")[0] for name in ("wide", "deep"))
        assert got == want, (training, lowering, chosen)


def test_the_last_level_cache_decides_where_the_filter_transform_streams():
    """The target's L3 sizes the filter transform the cost model keeps in cache: VGG-16's
    28x28 256 -> 512 layer (F(2x2)'s 8 MiB transform) takes F(2x2) with a 32 MiB L3, and
    F(4x4) (4.5 MiB of it) with a faked 16 MiB one, where F(2x2)'s transform would stream."""
    src = "network vgg\ninput x: 256 x 28 x 28\nx -> conv(512, 3, pad=1) as c -> output y\n"
    chosen = {}
    for l3 in (32 << 20, 16 << 20):
        target = replace(TARGETS["avx512"], caches=replace(DEFAULT_CACHES, l3=l3))
        g = load_network(src)
        select_lowering(g, PassContext(opt_level=2, target=target))
        chosen[l3 >> 20] = next(n for n in g.nodes() if n.name == "c").attrs["lowering"]
    assert chosen == {32: "winograd_f2", 16: "winograd_f4"}


def test_autotune_times_both_transforms():
    """``--autotune`` is offered Winograd's two transforms beside the direct and im2col
    kernels for a layer they compute (and not in a training graph)."""
    for training, want in [(False, ("direct", "im2col", "winograd_f4", "winograd_f2")),
                           (True, ("direct", "im2col"))]:
        offered: list[tuple[str, ...]] = []

        def measure(graph, node, names, offered=offered):
            offered.append(names)
            return names[-1]
        g = load_network(RESNETISH)
        select_lowering(g, PassContext(training=training, measure=measure, opt_level=2))
        assert want in offered


def test_not_for_transposed_convolutions():
    """A stride-1 3x3 transposed convolution is a 3x3 convolution of its padded input, but it
    keeps the direct kernel (and the direct sum's error bound)."""
    g = load_network("network t\ninput x: 16 x 9 x 9\nx -> conv_transpose(16, 3) as up "
                     "-> output y\n")
    select_lowering(g, PassContext(lowering="winograd", opt_level=2))
    assert next(n for n in g.nodes() if n.name == "up").attrs["lowering"] == "direct"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", ["winograd_f2", "winograd_f4"])
def test_packing_into_the_last_packings_memory_gives_a_new_packing(name, bias):
    """Winograd's packing written into an array a training refresh reuses (filled here with
    NaN) is, bit for bit, the packing made into a new array: padded input and output channels
    and the bias's padding are written too, with a bias or without."""
    from cnnc.compiler.kernels.conv_geometry import ConvGeometry
    from cnnc.compiler.ops.conv.algorithms import WINOGRAD_F2, WINOGRAD_F4

    algorithm = WINOGRAD_F2 if name == "winograd_f2" else WINOGRAD_F4
    g = ConvGeometry.from_attrs({"out_channels": 20, "kernel": (3, 3), "stride": (1, 1),
                                 "pads": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1,
                                 "bias": bias}, (12, 9, 9))
    rng = np.random.default_rng(8)
    w = rng.standard_normal((20, 12, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32) if bias else None
    want = algorithm.pack_flat(g, w, b)
    out = np.full(want.shape, np.nan, np.float32)
    assert algorithm.pack_flat(g, w, b, out=out) is out
    np.testing.assert_array_equal(out, want)
    assert np.all(want[-(want.size - algorithm.packed_sizes(g)[0]):][20:] == 0)
