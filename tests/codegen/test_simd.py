"""The 8- and 16-lane vector extension: semantics of every intrinsic inside njit code."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from cnnc.compiler.backends.numba.simd import (
    TANH_SMALL,
    make_vexp,
    vadd,
    valign,
    vbroadcast,
    vbroadcast16,
    vdiv,
    vexp,
    vfma,
    vhigh,
    vjoin,
    vload,
    vload16,
    vlow,
    vmax,
    vmin,
    vmul,
    vsplat,
    vsplat16,
    vspread,
    vsqrt,
    vstore,
    vsum,
    vtanh,
    vzero,
    vzero16,
)
from cnnc.compiler.target import host_has


@njit
def _all_ops(a, b, out, s):
    x = vload(a, 1)  # unaligned
    y = vload(b, 0)
    vstore(out, 0, vfma(x, y, vbroadcast(a, 0)))
    vstore(out, 8, vadd(x, y))
    vstore(out, 16, vmul(x, y))
    vstore(out, 24, vmax(x, vzero()))
    vstore(out, 32, vsplat(s))
    return vsum(y)


def test_intrinsics_match_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(9).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    out = np.zeros(40, np.float32)
    total = _all_ops(a, b, out, 2.5)
    x = a[1:]
    np.testing.assert_allclose(out[:8], x * b + a[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[8:16], x + b)
    np.testing.assert_array_equal(out[16:24], x * b)
    np.testing.assert_array_equal(out[24:32], np.maximum(x, 0))
    np.testing.assert_array_equal(out[32:40], np.full(8, 2.5, np.float32))
    assert abs(total - b.astype(np.float64).sum()) < 1e-5


def test_fma_is_fused():
    # a*b+c with a single rounding differs from the two-step float32 result here.
    a = np.full(8, 1 + 2.0**-12, np.float32)
    c = np.full(8, -(1 + 2.0**-11), np.float32)
    out = np.zeros(8, np.float32)

    @njit
    def f(a, c, out):
        vstore(out, 0, vfma(vload(a, 0), vload(a, 0), vload(c, 0)))

    f(a, c, out)
    assert out[0] == np.float32(2.0**-24)


@njit
def _all_ops16(a, b, out):
    x = vload16(a, 1)  # unaligned
    y = vload16(b, 0)
    vstore(out, 0, vfma(x, y, vbroadcast16(a, 0)))
    vstore(out, 16, vadd(x, y))
    vstore(out, 32, vmul(x, y))
    vstore(out, 48, vmax(x, vzero16()))
    vstore(out, 64, vmin(x, y))
    vstore(out, 80, vlow(x))
    vstore(out, 88, vhigh(x))
    vstore(out, 96, vsplat16(a[0]))
    vstore(out, 112, vjoin(vhigh(x), vlow(x)))
    return vsum(y)


def test_16_lane_intrinsics_match_numpy():
    rng = np.random.default_rng(2)
    a = rng.standard_normal(17).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    out = np.zeros(128, np.float32)
    total = _all_ops16(a, b, out)
    x = a[1:]
    np.testing.assert_allclose(out[:16], x * b + a[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[16:32], x + b)
    np.testing.assert_array_equal(out[32:48], x * b)
    np.testing.assert_array_equal(out[48:64], np.maximum(x, 0))
    np.testing.assert_array_equal(out[64:80], np.minimum(x, b))
    np.testing.assert_array_equal(out[80:96], x)  # the two halves, in order
    np.testing.assert_array_equal(out[96:112], np.full(16, a[0]))
    np.testing.assert_array_equal(out[112:128], np.concatenate([x[8:], x[:8]]))
    assert abs(total - b.astype(np.float64).sum()) < 1e-5


def test_16_lane_fma_is_fused_and_agrees_with_8_lanes():
    a = np.full(16, 1 + 2.0**-12, np.float32)
    c = np.full(16, -(1 + 2.0**-11), np.float32)
    out = np.zeros(32, np.float32)

    @njit
    def f(a, c, out):
        vstore(out, 0, vfma(vload16(a, 0), vload16(a, 0), vload16(c, 0)))
        vstore(out, 16, vfma(vload(a, 0), vload(a, 0), vload(c, 0)))
        vstore(out, 24, vfma(vload(a, 8), vload(a, 8), vload(c, 8)))

    f(a, c, out)
    assert (out == np.float32(2.0**-24)).all()


def test_mixed_widths_are_refused():
    from numba.core.errors import TypingError

    @njit
    def bad(a):
        return vsum(vadd(vload(a, 0), vload16(a, 0)))

    with pytest.raises(TypingError):
        bad(np.zeros(16, np.float32))


@njit
def _division_roots_windows(a, b, out):
    x, y = vload(a, 0), vload(b, 0)
    vstore(out, 0, vdiv(x, y))
    vstore(out, 8, vsqrt(y))
    vstore(out, 16, valign(x, y, 3))
    vstore(out, 24, valign(x, y, 7))


def test_division_square_root_and_windows_across_two_vectors():
    rng = np.random.default_rng(4)
    a = rng.standard_normal(8).astype(np.float32)
    b = rng.uniform(0.1, 9.0, 8).astype(np.float32)
    out = np.zeros(32, np.float32)
    _division_roots_windows(a, b, out)
    np.testing.assert_array_equal(out[:8], a / b)  # both correctly rounded
    np.testing.assert_array_equal(out[8:16], np.sqrt(b))
    both = np.concatenate([a, b])
    np.testing.assert_array_equal(out[16:24], both[3:11])
    np.testing.assert_array_equal(out[24:32], both[7:15])


@njit
def _spreads(a, out):
    v = vload(a, 0)
    vstore(out, 0, vspread(v, 2, 0))
    vstore(out, 8, vspread(v, 2, 1))
    vstore(out, 16, vspread(v, 4, 0))
    vstore(out, 24, vspread(v, 4, 3))


def test_spread_copies_one_lane_over_each_run():
    """``vspread(v, k, j)``: lane j of each run of k lanes (a grouped convolution's j-th input
    channel of every output channel's group)."""
    a = np.arange(8, dtype=np.float32) + 0.5
    out = np.zeros(32, np.float32)
    _spreads(a, out)
    np.testing.assert_array_equal(out[:8], a[[0, 0, 2, 2, 4, 4, 6, 6]])
    np.testing.assert_array_equal(out[8:16], a[[1, 1, 3, 3, 5, 5, 7, 7]])
    np.testing.assert_array_equal(out[16:24], a[[0, 0, 0, 0, 4, 4, 4, 4]])
    np.testing.assert_array_equal(out[24:32], a[[3, 3, 3, 3, 7, 7, 7, 7]])


@njit
def _exp_all(a, out):
    for i in range(0, a.size, 8):
        vstore(out, i, vexp(vload(a, i)))


def test_vector_exp_is_within_two_ulps_and_handles_the_edges():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-110.0, 95.0, 200_000), rng.uniform(-3.0, 3.0, 200_000),
                        np.linspace(-104.5, 89.0, 100_000)]).astype(np.float32)
    x = x[: x.size // 8 * 8]
    out = np.empty_like(x)
    _exp_all(x, out)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
        want32 = want.astype(np.float32)
    normal = np.isfinite(want32) & (want32 >= np.finfo(np.float32).tiny)
    ulps = np.abs(out[normal] - want[normal]) / np.spacing(want32[normal]).astype(np.float64)
    assert ulps.max() <= 2.0, ulps.max()
    assert np.all(np.isinf(out[np.isinf(want32)]))  # overflow
    tiny = ~normal & np.isfinite(want32)  # gradual underflow, then 0
    assert np.abs(out[tiny] - want[tiny]).max() <= 2 * 2.0 ** -149
    edges = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, 1.0], np.float32)
    got = np.empty_like(edges)
    _exp_all(edges, got)
    np.testing.assert_array_equal(got, [np.inf, 0.0, np.nan, 1.0, 1.0, np.inf, 0.0,
                                        np.float32(np.e)])


@njit
def _tanh_all(a, out):
    for i in range(0, a.size, 8):
        vstore(out, i, vtanh(vload(a, i)))


def test_vector_tanh_is_within_four_ulps_on_both_branches_and_handles_the_edges():
    """``vtanh``: the Taylor polynomial below ``TANH_SMALL``, ``(1 - e) / (1 + e)`` above;
    against float64 ``np.tanh`` on each branch, the switch, tiny and subnormal inputs, and the
    special values (the activation's bound allows 8 ulps: ``ops.TRANSCENDENTAL``)."""
    rng = np.random.default_rng(7)
    tiny = 10.0 ** rng.uniform(-45, -1, 50_000) * rng.choice([-1.0, 1.0], 50_000)
    x = np.concatenate([rng.uniform(-12.0, 12.0, 200_000), rng.uniform(-1.0, 1.0, 200_000),
                        np.linspace(-TANH_SMALL * 1.01, TANH_SMALL * 1.01, 50_000), tiny,
                        np.nextafter(np.float32([TANH_SMALL] * 4), [0, 1, 0, 1]) * [1, 1, -1, -1],
                        ]).astype(np.float32)
    x = x[: x.size // 8 * 8]
    out = np.empty_like(x)
    _tanh_all(x, out)
    want = np.tanh(x.astype(np.float64))
    want32 = want.astype(np.float32)
    normal = np.abs(want32) >= np.finfo(np.float32).tiny
    ulps = np.abs(out[normal] - want[normal]) / np.spacing(np.abs(want32[normal]))
    for lo, hi in ((0.0, TANH_SMALL), (TANH_SMALL, np.inf)):
        branch = (np.abs(x[normal]) >= lo) & (np.abs(x[normal]) < hi)
        assert branch.sum() > 10_000 and ulps[branch].max() <= 4.0, (lo, ulps[branch].max())
    np.testing.assert_array_equal(out[~normal], x[~normal])  # tanh(x) = x below the normals
    edges = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, 20.0], np.float32)
    got = np.empty_like(edges)
    _tanh_all(edges, got)
    np.testing.assert_array_equal(got, [1.0, -1.0, np.nan, 0.0, -0.0, 1.0, -1.0, 1.0])
    assert np.signbit(got[4]) and not np.signbit(got[3])


def _exp_kernel(exp, lanes: int):
    load = vload16 if lanes == 16 else vload

    @njit(cache=False)
    def run(a, out):
        for i in range(0, a.size, lanes):
            vstore(out, i, exp(load(a, i)))

    return run


@pytest.mark.skipif(not host_has("avx512f", "avx512vl"),
                    reason="vscalefps needs AVX-512F and AVX-512VL; this CPU compiles the "
                           "exponent-bits scaling only (checked above)")
@pytest.mark.parametrize("lanes", [8, 16])
def test_vector_exp_scales_by_vscalef_to_the_same_bits_as_by_exponent_bits(lanes):
    """Both ways of multiplying by ``2 ** n`` (one ``vscalefps``; two exponent-field
    products) give the same float32, overflow, gradual underflow and NaN included: which one a
    CPU compiles never changes a number."""
    x = np.concatenate([np.linspace(-120.0, 100.0, 1 << 18, dtype=np.float32),
                        np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 88.72, 89.4, -103.97,
                                  -87.34, -100.0, 1e30, -1e30, 1.0, 0.5, -0.5, 2.0],
                                 np.float32)])
    by_scalef, by_bits = np.empty_like(x), np.empty_like(x)
    _exp_kernel(make_vexp(True), lanes)(x, by_scalef)
    _exp_kernel(make_vexp(False), lanes)(x, by_bits)
    np.testing.assert_array_equal(by_scalef.view(np.uint32), by_bits.view(np.uint32))
    assert np.count_nonzero((by_bits > 0) & (by_bits < np.finfo(np.float32).tiny)) > 100


def test_a_16_lane_accumulator_gets_its_activation_before_it_is_split():
    """In a 16-lane direct convolution, bias, the ReLU floor and an operand-free activation
    (swish: one vector exp and division) run on each whole accumulator, and only what needs an
    8-channel operand (the residual add) per half: one vexp per accumulator, not two."""
    from cnnc.compiler.backends.numba.printer import print_kernel
    from cnnc.compiler.decisions import EpilogueOp
    from cnnc.compiler.kernels.conv_direct import direct_conv_kernel
    from cnnc.compiler.kernels.conv_geometry import ConvGeometry
    from cnnc.compiler.kernels.tiles import DirectTile
    from cnnc.compiler.lower.driver import resolve

    g = ConvGeometry.from_attrs({"out_channels": 32, "kernel": (1, 1), "stride": (1, 1),
                                 "pads": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1,
                                 "bias": True}, (16, 7, 7))
    tile = DirectTile.parse("7x32/16")
    src = print_kernel(direct_conv_kernel(g, "k", tile_shape=tile,
                                          epilogue=[resolve(EpilogueOp("swish"))], kinds=[]))
    accumulators = tile.pixels * tile.vectors
    # the tile (the last one overlapping: the same body) and the 1-pixel tile
    assert src.count("vexp(") == accumulators + tile.vectors
    assert "vsplat16(floor)" in src and "vload16(bias" in src


@pytest.mark.parametrize("epilogue, exps", [
    # pairs of the 8-pixel tile (the last overlapping), of two 4-pixel tiles, one pixel
    (["swish"], 4 + 2 + 2 + 1),
    (["sigmoid", "relu6"], 4 + 2 + 2 + 1),
    (["relu6"], 0),  # nothing costly: no pairs
])
def test_the_channel_wise_kernel_activates_two_pixels_at_a_time(epilogue, exps):
    """Two neighbouring pixels of a block are 16 floats in a row: an epilogue of
    operand-free vector ops with an exp in it runs on both at once (``vjoin``)."""
    from cnnc.compiler.backends.numba.printer import print_kernel
    from cnnc.compiler.decisions import EpilogueOp
    from cnnc.compiler.kernels.conv_direct import channelwise_conv_kernel
    from cnnc.compiler.kernels.conv_geometry import ConvGeometry
    from cnnc.compiler.lower.driver import resolve

    g = ConvGeometry.from_attrs({"out_channels": 32, "kernel": (3, 3), "stride": (1, 1),
                                 "pads": (1, 1, 1, 1), "dilation": (1, 1), "groups": 32,
                                 "bias": True}, (32, 7, 7))
    src = print_kernel(channelwise_conv_kernel(g, "k", epilogue=[resolve(EpilogueOp(e))
                                                                 for e in epilogue], kinds=[]))
    assert src.count("vexp(") == exps
    assert ("vjoin(" in src) == bool(exps)


_AVX2_ONLY_EXP = """
import numpy as np
from numba import njit
from cnnc.compiler.backends.numba.simd import vexp, vload16, vstore
from cnnc.compiler.target import host_has

@njit(cache=False)
def run(a, out):
    for i in range(0, a.size, 16):
        vstore(out, i, vexp(vload16(a, i)))

x = np.load("{x}")
out = np.empty_like(x)
run(x, out)
np.save("{out}", out)
print(host_has("avx512f"))
"""


def test_vector_exp_follows_the_features_llvm_is_told_not_the_hosts(tmp_path):
    """A process whose Numba generates code for a CPU without AVX-512 (``NUMBA_CPU_FEATURES``,
    as ``bench_tiles.py --avx2-only`` sets on an AVX-512 machine) compiles the 16-lane ``vexp``
    with the exponent-bits scaling: ``vscalefps`` asked of such an LLVM cannot be selected.
    Its numbers are the exponent-bits ones, bit for bit, NaN and the infinities included."""
    import os
    import subprocess
    import sys

    from llvmlite import binding

    feats = binding.get_host_cpu_features()
    flags = ",".join(("+" if on and not k.startswith(("avx512", "evex512", "amx")) else "-") + k
                     for k, on in sorted(feats.items()))
    x = np.concatenate([np.linspace(-110.0, 95.0, 4096, dtype=np.float32),
                        np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72, -103.97,
                                  1e30, -1e30, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0], np.float32)])
    np.save(tmp_path / "x.npy", x)
    script = _AVX2_ONLY_EXP.format(x=tmp_path / "x.npy", out=tmp_path / "out.npy")
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=flags)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
    want = np.empty_like(x)
    _exp_kernel(make_vexp(False), 16)(x, want)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy").view(np.uint32),
                                  want.view(np.uint32))
