"""GPU kernels whose threads cooperate (shared memory, barriers), run by the emulation as
fibers: the implicit-GEMM convolution in each of its tiles and its weight gradient (with its
pixels split into ranges and the partials added), and batch norm's per-channel sums (a block
per channel), against the float64 reference in every thread order, a barrier removed caught
by wrong numbers, threads that miss a barrier caught by the launch, and the printers'
refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.compiler.backends.cuda.emulate import ORDERS, BarrierError, EmulatedModule, compiler_path
from cnnc.compiler.backends.cuda.launch import Launcher, launch_shape
from cnnc.compiler.backends.cuda.memory import EmulatedMemory
from cnnc.compiler.backends.cuda.nvrtc import nvrtc_compile, nvrtc_library
from cnnc.compiler.backends.cuda.printer import kernel_type_errors, print_kernel, print_module
from cnnc.compiler.backends.numba.printer import print_kernel as print_numba
from cnnc.compiler.kernels.backward import batch_stat_kernel, bn_grad_sums_kernel
from cnnc.compiler.kernels.common import Sizes
from cnnc.compiler.kernels.gpu_conv import (
    DEFAULT_TILE,
    GEMM_TILES,
    GemmTile,
    choose_gemm_tile,
    gpu_direct_conv_kernel,
    implicit_gemm_blocks,
    implicit_gemm_conv_kernel,
    implicit_gemm_weight_grad_kernel,
    split_sum_kernel,
    weight_grad_splits,
)
from cnnc.compiler.kernels.kernel_ir import (
    Barrier,
    Const,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Shared,
    Store,
    Var,
    cmp,
)
from cnnc.compiler.ops.conv import conv_reference
from cnnc.compiler.ops.conv.gradient import weight_grad_reference

needs_cxx = pytest.mark.skipif(compiler_path() is None, reason="no C++ compiler (g++/clang++)")
MEMORY = EmulatedMemory()


def without_barriers(stmts):
    out = []
    for s in stmts:
        if isinstance(s, Barrier):
            continue
        if isinstance(s, Loop):
            s = replace(s, body=without_barriers(s.body))
        out.append(s)
    return out


@st.composite
def conv_geometries(draw, max_cg: int, kernels: list[tuple[int, int]], max_side: int):
    """A convolution's shape: groups, channels per group in (up to ``max_cg``) and out (up to
    70: a 64-row tile and a tail), kernel, stride, dilation, padding, and an input of at
    least one window and at most ``max_side`` a side."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, max_cg)), draw(st.integers(1, 70))
    r, s = draw(st.sampled_from(kernels))
    stride = draw(st.sampled_from([(1, 1), (2, 2), (1, 2)]))
    dilation = draw(st.sampled_from([(1, 1), (2, 1)]))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(dilation[0] * (r - 1) + 1 - 2 * pad[0], max_side)
             .filter(lambda v: v > 0))
    wd = draw(st.integers(dilation[1] * (s - 1) + 1 - 2 * pad[1], max_side)
              .filter(lambda v: v > 0))
    return groups, cg, kg, (r, s), stride, dilation, pad, h, wd


@pytest.fixture(scope="module")
def conv_modules(tmp_path_factory):
    """The implicit-GEMM kernel in each tile (by tile) and the thread-per-output convolution
    (``direct``), and the 64 x 64 one with its barriers removed, compiled once."""
    root = tmp_path_factory.mktemp("gpu")
    tiles = {str(t): implicit_gemm_conv_kernel(f"conv_{t}", tile=t) for t in GEMM_TILES}
    good = tiles[str(DEFAULT_TILE)]
    broken = replace(good, name="conv_no_barrier", body=without_barriers(good.body))
    tiles["direct"] = gpu_direct_conv_kernel()  # a thread per output: no tile
    kernels = [*tiles.values(), broken]
    module = EmulatedModule(print_module(kernels), kernels, root)
    return module, tiles, broken


def run_conv(module, kernel, x, w, bias, *, stride, pad, dilation, groups, relu, order):
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    p = (h + 2 * pad[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (wd + 2 * pad[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    y = MEMORY.zeros(n * k * p * q)
    ints = [c, h, wd, k, p, q, r, s, *stride, *pad, *dilation, groups, int(relu), n]
    module.order = order
    Launcher(kernel, lambda: module)(MEMORY.upload(x), MEMORY.upload(w), MEMORY.upload(bias), y,
                                     *ints)
    return MEMORY.download(y).reshape(n, k, p, q)


def reference(x, w, bias, *, stride, pad, dilation, groups, relu):
    out = conv_reference([x, w, bias], {"stride": stride, "dilation": dilation,
                                         "groups": groups, "pads": (pad[0], pad[1]) * 2})
    return np.maximum(out, 0) if relu else out


@needs_cxx
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_implicit_gemm_matches_the_float64_convolution(conv_modules, data):
    """Every tile (64 or 32 channels by 64 or 32 pixels) and the thread-per-output kernel
    (``direct``), tails in every tile dimension (channels, pixels, the reduction), strides,
    dilations, padding, groups, batch > 1, the fused bias and ReLU; the same bits in every
    thread order (each thread sums its outputs in one fixed order)."""
    module, tiles, _ = conv_modules
    kernel = tiles[data.draw(st.sampled_from(sorted(tiles)))]
    groups, cg, kg, (r, s), stride, dilation, pad, h, wd = data.draw(
        conv_geometries(5, [(1, 1), (3, 3), (2, 3), (5, 5)], 12))
    n = data.draw(st.integers(1, 2))
    relu = data.draw(st.booleans())
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, groups * cg, h, wd)).astype(np.float32)
    w = rng.standard_normal((groups * kg, cg, r, s)).astype(np.float32)
    bias = rng.standard_normal(groups * kg).astype(np.float32)
    opts = dict(stride=stride, pad=pad, dilation=dilation, groups=groups, relu=relu)
    want = reference(x, w, bias, **opts)
    got = {o: run_conv(module, kernel, x, w, bias, order=o, **opts) for o in ORDERS}
    # float32 sums of cg*r*s products: a few ulps of the sum of absolute terms
    scale = conv_reference([np.abs(x), np.abs(w)], {"stride": stride, "dilation": dilation,
                                                    "groups": groups,
                                                    "pads": (pad[0], pad[1]) * 2})
    bound = 4 * np.finfo(np.float32).eps * (scale + np.abs(bias)[None, :, None, None] + 1e-30)
    assert np.all(np.abs(got["forward"] - want) <= bound * (cg * r * s + 2))
    for o in ORDERS[1:]:
        np.testing.assert_array_equal(got[o], got["forward"])


@needs_cxx
def test_a_removed_barrier_gives_wrong_numbers(conv_modules):
    """Without its barriers a thread multiplies tiles the other threads have not copied yet."""
    module, tiles, broken = conv_modules
    kernel = tiles[str(DEFAULT_TILE)]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((20, 8, 3, 3)).astype(np.float32)
    bias = np.zeros(20, np.float32)
    opts = dict(stride=(1, 1), pad=(1, 1), dilation=(1, 1), groups=1, relu=False)
    want = reference(x, w, bias, **opts)
    assert np.abs(run_conv(module, kernel, x, w, bias, order="shuffled", **opts)
                  - want).max() < 1e-4
    errors = [np.abs(run_conv(module, broken, x, w, bias, order=o, **opts) - want).max()
              for o in ORDERS]
    assert min(errors) > 0.1


@pytest.fixture(scope="module")
def weight_grad_module(tmp_path_factory):
    """The weight gradient kernel and the partial sums' kernel, compiled once."""
    kernels = [implicit_gemm_weight_grad_kernel(), split_sum_kernel()]
    return EmulatedModule(print_module(kernels), kernels, tmp_path_factory.mktemp("wgrad")), \
        *kernels


@needs_cxx
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_implicit_gemm_weight_grad_matches_the_float64_gradient(weight_grad_module, data):
    """Tails in every tile dimension (output channels, ``C/G R S``, the reduction over images
    and pixels), strides, dilations, padding, groups, batches of 1 to 3, the pixels in 1 to 4
    ranges (a last range shorter, or empty); the same bits in every thread order."""
    module, kernel, add = weight_grad_module
    groups, cg, kg, (r, s), stride, dilation, pad, h, wd = data.draw(
        conv_geometries(9, [(1, 1), (3, 3), (2, 3)], 11))
    n = data.draw(st.integers(1, 3))
    splits = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, groups * cg, h, wd)).astype(np.float32)
    p = (h + 2 * pad[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (wd + 2 * pad[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    k = groups * kg
    dy = rng.standard_normal((n, k, p, q)).astype(np.float32)
    attrs = dict(kernel=(r, s), stride=stride, dilation=dilation, groups=groups,
                 pads=(pad[0], pad[1]) * 2)
    want = weight_grad_reference([x, dy], attrs)
    ints = [groups * cg, h, wd, k, p, q, r, s, *stride, *pad, *dilation, groups, splits, n]
    got = {}
    for order in ORDERS:
        module.order = order
        part, grad = MEMORY.zeros(splits * want.size), MEMORY.zeros(want.size)
        Launcher(kernel, lambda: module)(MEMORY.upload(x), MEMORY.upload(dy), part, *ints)
        Launcher(add, lambda: module)(part, grad, splits, want.size)
        got[order] = MEMORY.download(grad).reshape(want.shape)
    # float32 sums of n p q products: a few ulps of the sum of absolute terms
    scale = weight_grad_reference([np.abs(x), np.abs(dy)], attrs)
    bound = 4 * np.finfo(np.float32).eps * (n * p * q + splits) * (scale + 1e-30)
    assert np.all(np.abs(got["forward"] - want) <= bound)
    for o in ORDERS[1:]:
        np.testing.assert_array_equal(got[o], got["forward"])


@pytest.fixture(scope="module")
def channel_sum_module(tmp_path_factory):
    """Batch norm's variance and gradient sums in their GPU form (a block per channel), for
    runtime sizes, compiled once."""
    sz = Sizes()
    kernels = [batch_stat_kernel("variance", (1, 1, 1), "var", sz=sz, blocks=True),
               bn_grad_sums_kernel("grad_sums", (1, 1, 1), ["x", "dy", "mean"], sz=Sizes(),
                                   blocks=True)]
    return EmulatedModule(print_module(kernels), kernels, tmp_path_factory.mktemp("sums")), \
        *kernels


@needs_cxx
@pytest.mark.parametrize("n, c, h, w", [(1, 3, 1, 1), (2, 5, 7, 9), (3, 2, 16, 17)])
def test_block_channel_sums_match_float64_in_every_order(channel_sum_module, n, c, h, w):
    """Channels of fewer values than a block's threads, and of several rounds of them: the
    float64 sums, rounded once to float32, in every thread order (the pairwise additions in
    shared memory run in one order whatever order the threads do)."""
    module, variance, grad_sums = channel_sum_module
    rng = np.random.default_rng(n * c)
    x = (rng.standard_normal((n, c, h, w)) + 3).astype(np.float32)
    dy = rng.standard_normal((n, c, h, w)).astype(np.float32)
    mean = x.mean(axis=(0, 2, 3)).astype(np.float32)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    d = x64 - mean[None, :, None, None]
    want_var = (d * d).mean(axis=(0, 2, 3)) - d.mean(axis=(0, 2, 3)) ** 2
    want_sums = np.concatenate([dy64.sum(axis=(0, 2, 3)), (dy64 * d).sum(axis=(0, 2, 3))])
    sizes = dict(C=c, L=h * w, n_batch=n)

    def launch(kernel, **arrays):  # the arguments by the kernel's parameter names
        args = {**sizes, **{k: MEMORY.upload(v.ravel()) if isinstance(v, np.ndarray) else v
                            for k, v in arrays.items()}}
        Launcher(kernel, lambda: module)(*(args[p.name] for p in kernel.params))
    for order in ORDERS:
        module.order = order
        var, sums = MEMORY.zeros(c), MEMORY.zeros(2 * c)
        launch(variance, x0=x, x1=mean, y=var)
        launch(grad_sums, x=x, dy=dy, mean=mean, y=sums)
        np.testing.assert_allclose(MEMORY.download(var), want_var, rtol=1e-6)
        np.testing.assert_allclose(MEMORY.download(sums), want_sums, rtol=1e-6,
                                   atol=1e-6 * np.abs(want_sums).max())


def test_weight_grad_splits_fill_the_gpu_where_the_tiles_are_few():
    """ResNet-18's first 3x3 layers (9 tiles, 3136 pixels) split in 13 ranges of at least 256
    pixels (117 blocks), its 7x7 stem (3 tiles) in 49 of 256 pixels; a layer of few pixels is
    not split, nor one whose partials would pass a million floats."""
    assert weight_grad_splits(64, 64 * 9, 56 * 56, 1) == 13
    assert weight_grad_splits(128, 128 * 9, 28 * 28, 1) == 4
    assert weight_grad_splits(64, 3 * 49, 112 * 112, 1) == 49
    assert weight_grad_splits(512, 512 * 9, 7 * 7, 1) == 1
    assert weight_grad_splits(2048, 2048, 10_000, 1) == 1


def test_launch_grid_is_one_block_per_output_tile():
    ints = dict(n_batch=2, C=6, H=20, W=20, K=130, P=10, Q=10, R=3, S=3, sh=2, sw=2, ph=1, pw=1,
                dh=1, dw=1, G=1, relu=0)
    kernel = implicit_gemm_conv_kernel()
    assert launch_shape(kernel, ints) == (implicit_gemm_blocks(2, 130, 10, 10, 1), 256)
    assert implicit_gemm_blocks(2, 130, 10, 10, 1) == 2 * 3 * 2
    small = GemmTile(32, 32)
    kernel = implicit_gemm_conv_kernel(tile=small)
    assert launch_shape(kernel, ints) == (2 * 5 * 4, 64)
    assert implicit_gemm_blocks(2, 130, 10, 10, 1, small) == 2 * 5 * 4


def test_each_layer_takes_the_tile_that_wastes_least():
    """64 x 64 where the output channels and pixels fill it (ResNet-50's 56 x 56 and 28 x 28
    layers); 32 rows for 16 or 32 output channels per group (a 64-row tile would compute
    half or more padding); 32 pixel columns for a 14 x 14 plane (196 pixels: 4 tiles of 64
    are 256 columns, 7 of 32 are 224); never a tile that pads more in both dimensions than
    the 64 x 64 one."""
    assert choose_gemm_tile(64, 56 * 56) == GemmTile(64, 64)
    assert choose_gemm_tile(512, 28 * 28) == GemmTile(64, 64)
    assert choose_gemm_tile(16, 56 * 56).m == 32 and choose_gemm_tile(32, 28 * 28).m == 32
    assert choose_gemm_tile(256, 14 * 14) == GemmTile(64, 32)
    for kg in (1, 16, 24, 64, 96, 128, 200):
        for pq in (1, 49, 196, 784, 3136):
            t = choose_gemm_tile(kg, pq)
            padded = -(-kg // t.m) * t.m * -(-pq // t.n) * t.n
            assert padded <= -(-kg // 64) * 64 * -(-pq // 64) * 64
    with pytest.raises(ValueError, match="32 or 64"):
        GemmTile(16, 64)
    assert GemmTile.parse("64x32") == GemmTile(64, 32) and str(GemmTile(32, 64)) == "32x64"


def spread_kernel(extra_barrier_for_thread0: bool) -> Kernel:
    """Each of 32 threads writes its index to shared memory; after the barrier thread ``i``
    reads thread ``31 - i``'s. With ``extra_barrier_for_thread0`` thread 0 loops once more
    around a barrier than the others (a trip count that differs between threads)."""
    t = Var("t")
    trips = Const(1) + cmp("==", t, 0) * int(extra_barrier_for_thread0)
    body = [Store("buf", t, Load("x", t)),
            Loop("i", trips, [Barrier()]),
            Store("y", t, Load("buf", Const(31) - t))]
    block = [Shared("buf", 32), Loop("t", Const(32), body, kind="thread")]
    return Kernel("spread" + "_bad" * extra_barrier_for_thread0,
                  [Param("x"), Param("y")], [Loop("b", Const(1), block, kind="block")])


@needs_cxx
def test_threads_that_miss_a_barrier_fail_the_launch(tmp_path):
    good, bad = spread_kernel(False), spread_kernel(True)
    module = EmulatedModule(print_module([good, bad]), [good, bad], tmp_path)
    x = np.arange(32, dtype=np.float32)
    for order in ORDERS:
        module.order = order
        y = MEMORY.zeros(32)
        Launcher(good, lambda: module)(MEMORY.upload(x), y)
        np.testing.assert_array_equal(MEMORY.download(y), x[::-1])
    with pytest.raises(BarrierError, match="block 0"):
        Launcher(bad, lambda: module)(MEMORY.upload(x), MEMORY.zeros(32))


def test_cooperating_threads_are_refused_where_they_cannot_cooperate():
    t = Var("t")
    shared_outside = Kernel("k", [Param("y")], [Shared("s", 4), Loop(
        "b", Const(1), [Loop("t", Const(4), [Store("y", t, Const(0.0))], kind="thread")],
        kind="block")])
    assert "outside the body of a block loop" in kernel_type_errors(shared_outside)
    barrier_under_if = Kernel("k", [Param("y")], [Loop("b", Const(1), [Loop(
        "t", Const(4), [If(cmp("<", t, 2), [Barrier()])], kind="thread")], kind="block")])
    assert "under a condition" in kernel_type_errors(barrier_under_if)
    too_many = Kernel("k", [Param("y")], [Loop("b", Const(1), [Loop(
        "t", Const(2048), [Let("z", t)], kind="thread")], kind="block")])
    assert "1 to 1024 threads" in kernel_type_errors(too_many)
    with pytest.raises(ValueError, match="CUDA only"):
        print_numba(spread_kernel(False))


def test_implicit_gemm_prints_shared_tiles_and_barriers():
    src = print_kernel(implicit_gemm_conv_kernel())
    assert "__shared__ float a_tile[512];" in src and "__shared__ float b_tile[512];" in src
    assert src.count("__syncthreads();") == 2
    assert "const int blk = blockIdx.x;" in src and "const int t = threadIdx.x;" in src


@pytest.mark.skipif(nvrtc_library() is None, reason="NVRTC is not installed")
def test_implicit_gemm_compiles_with_nvrtc_without_warnings():
    source = print_module([implicit_gemm_conv_kernel(f"conv_{t}", tile=t) for t in GEMM_TILES])
    for arch in ("compute_80", "compute_90"):
        nvrtc_compile(source, arch)
