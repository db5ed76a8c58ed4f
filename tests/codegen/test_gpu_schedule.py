"""The GPU schedules of the kernels built with the CPU's (``kernels/gpu_schedule.py``) and the
dense layer's tiled GEMM, run by the emulation in every thread order against float64
references (PyTorch's, NumPy's) on drawn shapes: element-wise chains with broadcasting, window
pooling, padding, a transposed convolution's zero stuffing and concatenation a thread per
output value; global pooling and softmax a block per row (rows of 1 value to several rounds
of a block's threads); dense layers as tiles of outputs by images; a reduction without its
barriers caught by wrong numbers; the rewrite declining the loops whose iterations are not
independent."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnnc.compiler.backends.cuda.emulate import ORDERS, EmulatedModule, compiler_path
from cnnc.compiler.backends.cuda.launch import Launcher, launch_shape
from cnnc.compiler.backends.cuda.memory import EmulatedMemory
from cnnc.compiler.backends.cuda.printer import print_kernel, print_module
from cnnc.compiler.decisions import EpilogueOp
from cnnc.compiler.kernels.backward import bn_grad_param_kernel
from cnnc.compiler.kernels.common import Sizes
from cnnc.compiler.kernels.elementwise import (
    concat_kernel,
    elementwise_kernel,
    groupnorm_kernel,
    pad_kernel,
    softmax_kernel,
    zero_stuff_kernel,
)
from cnnc.compiler.kernels.gpu_conv import DEFAULT_TILE, dense_gemm_kernel
from cnnc.compiler.kernels.gpu_schedule import (
    BLOCK_THREADS,
    gpu_schedule,
    independent,
    schedule_of,
)
from cnnc.compiler.kernels.kernel_ir import (
    Barrier,
    Const,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Store,
    Var,
)
from cnnc.compiler.kernels.pool import global_pool_kernel, pool_grad_kernel, pool_kernel
from cnnc.compiler.kernels.rearrange import channel_gather_kernel
from cnnc.compiler.lower.driver import resolve

from .test_cuda_gpu_kernels import without_barriers

pytestmark = pytest.mark.skipif(compiler_path() is None,
                                reason="no C++ compiler (g++/clang++) for the CUDA emulation")
MEMORY = EmulatedMemory()
_MODULES: dict[str, EmulatedModule] = {}


def emulated(kernel: Kernel) -> EmulatedModule:
    """The emulation of ``kernel``'s module, compiled once per distinct code (the kernels take
    their sizes as arguments, so the drawn shapes share a few modules)."""
    source = print_module([kernel])
    if source not in _MODULES:
        root = Path(tempfile.gettempdir()) / "cnnc-test-gpu-schedule"
        _MODULES[source] = EmulatedModule(source, [kernel], root)
    return _MODULES[source]


def run(kernel: Kernel, out_size: int, **args) -> dict[str, np.ndarray]:
    """``kernel`` launched in every thread order with ``args`` by parameter name (arrays
    uploaded, ``y`` a fresh output of ``out_size`` floats): ``y`` per order."""
    module = emulated(kernel)
    got = {}
    for order in ORDERS:
        module.order = order
        y = MEMORY.upload(np.full(out_size, np.nan, np.float32))  # every value written
        values = {k: MEMORY.upload(np.ascontiguousarray(v, np.float32).ravel())
                  if isinstance(v, np.ndarray) else v for k, v in args.items()}
        values["y"] = y
        Launcher(kernel, lambda: module)(*(values[p.name] for p in kernel.params))
        got[order] = MEMORY.download(y).copy()
    for order in ORDERS[1:]:  # each value by one thread, or one fixed order of additions
        np.testing.assert_array_equal(got[order], got["forward"], err_msg=order)
    return got


def scheduled(kernel: Kernel, sz: Sizes, form: str) -> Kernel:
    """``kernel``'s GPU form for the sizes in ``sz``, checked to be ``form``."""
    gpu = gpu_schedule(kernel, sz.values)
    assert schedule_of(kernel) in ("row", "output") and schedule_of(gpu) == form
    return gpu


def relu() -> tuple:
    return (resolve(EpilogueOp("relu")),)


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * max(1.0, np.abs(want).max()))


shapes = st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 23), st.integers(1, 23))


@settings(max_examples=10, deadline=None)
@given(shapes, st.booleans())
def test_elementwise_chains_run_a_thread_per_element(shape, broadcast):
    """``relu(x0 + x1)``, ``x1`` the same shape or one value per channel (broadcast): every
    element written once, by its own thread, the block's last threads past the end idle."""
    n, c, h, w = shape
    rng = np.random.default_rng(sum(shape))
    x0 = rng.standard_normal(shape)
    x1 = rng.standard_normal((n, c, 1, 1) if broadcast else shape)
    sz = Sizes()
    kernel = elementwise_kernel("ew", "add", (c, h, w), [(c, h, w), x1.shape[1:]], relu(),
                                sz=sz)
    assume(schedule_of(kernel) != "element")  # a single value per image: no row to split
    gpu = scheduled(kernel, sz, "element")
    assert launch_shape(gpu, {**sz.values, "n_batch": n})[0] == -(-x0.size // 128)
    got = run(gpu, x0.size, x0=x0, x1=x1, n_batch=n, **sz.values)["shuffled"]
    close(got, np.maximum(x0 + x1, 0).ravel())


def pool_window(shape, k: int, stride: int, pad: int):
    """``(pad, p, q, attrs)`` of a ``k`` x ``k`` pooling of ``stride`` over ``shape``, its
    padding at most half the window; a draw where no window fits is rejected."""
    _, _, h, w = shape
    pad = min(pad, k // 2)
    assume(h + 2 * pad >= k and w + 2 * pad >= k)
    p, q = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    attrs = {"kernel": (k, k), "stride": (stride, stride), "pads": (pad,) * 4,
             "dilation": (1, 1), "count_include_pad": True}
    return pad, p, q, attrs


def torch_pool(xt, op: str, k: int, stride: int, pad: int):
    """PyTorch's max or average pooling (padding counted), the independent reference."""
    if op == "maxpool":
        return torch.nn.functional.max_pool2d(xt, k, stride, pad)
    return torch.nn.functional.avg_pool2d(xt, k, stride, pad, count_include_pad=True)


@settings(max_examples=10, deadline=None)
@given(shapes, st.sampled_from(["maxpool", "avgpool"]), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 1))
def test_window_pooling_runs_a_thread_per_output(shape, op, k, stride, pad):
    n, c, h, w = shape
    pad, p, q, attrs = pool_window(shape, k, stride, pad)
    sz = Sizes()
    gpu = scheduled(pool_kernel("pool", op, (c, h, w), (p, q), attrs, sz=sz), sz, "element")
    x = np.random.default_rng(n * h + w).standard_normal(shape)
    got = run(gpu, n * c * p * q, x0=x, n_batch=n, **sz.values)["reversed"]
    close(got, torch_pool(torch.from_numpy(x), op, k, stride, pad).numpy().ravel())


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(1, 5),
       st.sampled_from([(1, 1), (1, 3), (7, 7), (11, 13), (17, 19)]),
       st.sampled_from(["globalavgpool", "globalmaxpool"]))
def test_global_pooling_is_a_block_per_plane(n, c, hw, op):
    """Planes of 1 value, of fewer than a block's threads and of two rounds of them."""
    sz = Sizes()
    gpu = scheduled(global_pool_kernel("gpool", op, (c, *hw), sz=sz), sz, "block")
    assert launch_shape(gpu, {**sz.values, "n_batch": n}) == (n * c, BLOCK_THREADS)
    x = np.random.default_rng(c).standard_normal((n, c, *hw)) + 2
    got = run(gpu, n * c, x0=x, n_batch=n, **sz.values)["forward"]
    want = x.mean(axis=(2, 3)) if op == "globalavgpool" else x.max(axis=(2, 3))
    close(got, want.ravel())


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.sampled_from([1, 2, 10, 127, 128, 129, 300, 1000]),
       st.integers(1, 3), st.booleans())
def test_softmax_is_a_block_per_row(n, classes, inner, log):
    """The maximum and the sum of exponentials reduced by the block, over classes at a stride
    (``inner`` > 1: softmax over the channels of a map)."""
    sz = Sizes()
    gpu = scheduled(softmax_kernel("softmax", (classes, inner), 0, log, sz=sz), sz, "block")
    x = np.random.default_rng(classes).standard_normal((n, classes, inner)) * 4
    got = run(gpu, x.size, x0=x, n_batch=n, **sz.values)["shuffled"]
    fn = torch.log_softmax if log else torch.softmax
    close(got, fn(torch.from_numpy(x), dim=1).numpy().ravel())


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 70), st.integers(1, 150), st.integers(1, 140), st.booleans())
def test_dense_layers_are_tiles_of_outputs_by_images(batch, n_in, n_out, bias):
    """Batches and outputs of part of a tile, one tile and more; ``relu(x w^T + b)``."""
    kernel = dense_gemm_kernel("dense", bias, relu())
    ints = {"NI": n_in, "NO": n_out}
    assert launch_shape(kernel, {**ints, "n_batch": batch})[0] == \
        -(-n_out // DEFAULT_TILE.m) * -(-batch // DEFAULT_TILE.n)
    rng = np.random.default_rng(n_in + n_out)
    x, w, b = (rng.standard_normal(s) for s in ((batch, n_in), (n_out, n_in), (n_out,)))
    args = {"x0": x, "c_w": w, "n_batch": batch, **ints} | ({"c_b": b} if bias else {})
    got = run(kernel, batch * n_out, **args)["reversed"]
    want = torch.nn.functional.linear(*map(torch.from_numpy, (x, w, b if bias else 0 * b)))
    close(got, np.maximum(want.numpy(), 0).ravel())


def test_a_reduction_without_its_barriers_gives_wrong_numbers():
    sz = Sizes()
    gpu = scheduled(global_pool_kernel("gsum", "globalavgpool", (3, 20, 20), sz=sz), sz, "block")
    block = gpu.body[-1]
    broken = replace(gpu, name="gsum_no_barrier", body=without_barriers(gpu.body))
    assert any(isinstance(s, Barrier) for s in block.body[-1].body)
    x = np.random.default_rng(0).standard_normal((2, 3, 20, 20)) + 1
    want = x.mean(axis=(2, 3)).ravel()
    close(run(gpu, 6, x0=x, n_batch=2, **sz.values)["forward"], want)
    module = emulated(broken)
    errors = []
    for order in ORDERS:
        module.order = order
        y = MEMORY.zeros(6)
        Launcher(broken, lambda: module)(MEMORY.upload(x.astype(np.float32).ravel()), y,
                                         *sz.values.values(), 2)
        errors.append(np.abs(MEMORY.download(y) - want).max())
    assert max(errors) > 0.1, errors


def test_scatters_and_carried_locals_keep_the_cpus_schedule():
    """The pooling gradient adds each window's share onto input cells other windows reach too
    (not independent), a running sum carried from one element to the next is no reduction of
    the row, and a local a loop leaves as its last iteration set it is one thread's: all keep
    a thread per row."""
    sz = Sizes()
    attrs = {"kernel": (3, 3), "stride": (1, 1), "pads": (1, 1, 1, 1), "dilation": (1, 1),
             "count_include_pad": True}
    grad = pool_grad_kernel("pool_grad", "avgpool", (4, 6, 6), (6, 6), attrs, sz=sz)
    assert gpu_schedule(grad, sz.values) is grad
    j = Var("j")
    prefix = Kernel("prefix", [Param("x0"), Param("y"), Param("L", "int")], [Loop("t", Var(
        "L"), [Let("s", Const(0.0)), Loop("j", Var("L"), [
            Let("s", Var("s") + Load("x0", Var("t") * Var("L") + j)),
            Store("y", Var("t") * Var("L") + j, Var("s"))])], kind="parallel")])
    assert not independent(prefix.body[0].body[1], {"L": 5})
    assert gpu_schedule(prefix, {"L": 5}) is prefix
    # the row's sum plus its last value: the last value is one thread's, not the row's
    last = Kernel("sum_and_last", [Param("x0"), Param("y"), Param("L", "int")], [Loop(
        "t", Var("L"), [Let("s", Const(0.0)), Loop("j", Var("L"), [
            Let("z", Load("x0", Var("t") * Var("L") + j)), Let("s", Var("s") + Var("z"))]),
            Store("y", Var("t"), Var("s") + Var("z"))], kind="parallel")])
    assert gpu_schedule(last, {"L": 5}) is last
    without_last = replace(last, body=[replace(last.body[0], body=[
        *last.body[0].body[:2], Store("y", Var("t"), Var("s"))])])
    assert schedule_of(gpu_schedule(without_last, {"L": 5})) == "block"
    pool = pool_kernel("pool", "maxpool", (4, 6, 6), (3, 3), {**attrs, "stride": (2, 2)})
    assert "GPU schedule: a thread per element" in print_kernel(gpu_schedule(pool, {}))


@settings(max_examples=8, deadline=None)
@given(shapes, st.sampled_from(["constant", "reflect", "edge"]),
       st.tuples(*[st.integers(0, 2)] * 4))
def test_padding_runs_a_thread_per_output_value(shape, mode, pads):
    n, c, h, w = shape
    t, left, b, r = pads
    assume(mode != "reflect" or (max(t, b) < h and max(left, r) < w))
    sz = Sizes()
    kernel = pad_kernel("pad", (c, h, w), pads, 1.5, mode=mode, sz=sz, gpu=True)
    gpu = scheduled(kernel, sz, "element")
    x = np.random.default_rng(h * w).standard_normal(shape)
    out = n * c * (h + t + b) * (w + left + r)
    got = run(gpu, out, x0=x, n_batch=n, **sz.values)["shuffled"]
    spec = ((0, 0), (0, 0), (t, b), (left, r))
    want = np.pad(x, spec, constant_values=1.5) if mode == "constant" else np.pad(x, spec, mode)
    close(got, want.ravel())


@settings(max_examples=8, deadline=None)
@given(shapes, st.integers(1, 3), st.integers(1, 3), st.integers(-1, 2), st.integers(0, 3))
def test_zero_stuffing_runs_a_thread_per_output_value(shape, sh, sw, before, after):
    """A transposed convolution's input spread out: an input pixel every ``stride`` values,
    ``before`` zeros in front (negative: cropped) and ``after`` behind."""
    n, c, h, w = shape
    oh, ow = before + (h - 1) * sh + 1 + after, before + (w - 1) * sw + 1 + after
    assume(min(oh, ow) >= 1)
    sz = Sizes()
    kernel = zero_stuff_kernel("stuff", (c, h, w), (sh, sw), (before, before), (oh, ow), sz=sz,
                               gpu=True)
    gpu = scheduled(kernel, sz, "element")
    x = np.random.default_rng(h + w).standard_normal(shape)
    got = run(gpu, n * c * oh * ow, x0=x, n_batch=n, **sz.values)["reversed"]
    spread = np.zeros((n, c, (h - 1) * sh + 1 + 2 * 3, (w - 1) * sw + 1 + 2 * 3))
    spread[:, :, 3:3 + (h - 1) * sh + 1:sh, 3:3 + (w - 1) * sw + 1:sw] = x
    want = spread[:, :, 3 - before:3 - before + oh, 3 - before:3 - before + ow]
    close(got, want.ravel())


@settings(max_examples=6, deadline=None)
@given(shapes, st.integers(1, 4))
def test_concatenation_runs_a_thread_per_output_value(shape, c1):
    """Every channel of the output a channel of one of two inputs (``c_table``): the branches
    that choose the input run inside the loop over the plane's values."""
    n, c0, h, w = shape
    rng = np.random.default_rng(c0 * c1)
    x0, x1 = rng.standard_normal((n, c0, h, w)), rng.standard_normal((n, c1, h, w))
    kernel = channel_gather_kernel("gather", 2, False)
    ints = {"C": c0 + c1, "P": h, "Q": w, "X0C": c0, "X1C": c1}
    gpu = gpu_schedule(kernel, ints)
    assert schedule_of(kernel) == "row" and schedule_of(gpu) == "element"
    table = np.array([(0, k) for k in range(c0)] + [(1, k) for k in range(c1)], np.float32)
    got = run(gpu, x0.size + x1.size, x0=x0, x1=x1, c_table=table, n_batch=n, **ints)
    close(got["forward"], np.concatenate([x0, x1], axis=1).ravel())


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 3), st.lists(st.integers(1, 5), min_size=1, max_size=3), st.integers(1, 9),
       st.integers(1, 9))
def test_channel_concatenation_runs_a_thread_per_output_value(n, channels, h, w):
    """Inputs of any channel counts, each value of the output read from the input whose
    slice holds it."""
    rng = np.random.default_rng(sum(channels))
    xs = [rng.standard_normal((n, c, h, w)) for c in channels]
    sz = Sizes()
    kernel = concat_kernel("concat", [x.shape[1:] for x in xs], 0, sz=sz, gpu=True)
    gpu = scheduled(kernel, sz, "element")
    got = run(gpu, sum(x.size for x in xs), n_batch=n, **sz.values,
              **{f"x{k}": x for k, x in enumerate(xs)})["shuffled"]
    close(got, np.concatenate(xs, axis=1).ravel())


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 6), (3, 3)]),
       st.integers(1, 13), st.integers(1, 13))
def test_group_norm_is_a_block_per_group(n, channels_groups, h, w):
    """The group's mean and variance reduced by the block (two passes), then its channels'
    values normalized a thread per value (the loop over the group's channels and the one over
    a channel's values run as one); instance norm is a group per channel."""
    c, groups = channels_groups
    rng = np.random.default_rng(c * h + w)
    x = rng.standard_normal((n, c, h, w)) * 3 + 1
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    sz = Sizes()
    gpu = scheduled(groupnorm_kernel("gn", (c, h, w), groups, 1e-5, sz=sz), sz, "block")
    got = run(gpu, x.size, x0=x, c_weight=weight, c_bias=bias, n_batch=n, **sz.values)
    g = x.reshape(n, groups, -1)
    normed = ((g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + 1e-5))
    want = normed.reshape(x.shape) * weight[:, None, None] + bias[:, None, None]
    close(got["reversed"], want.ravel())


@pytest.mark.parametrize("channels", [1, 130])
def test_a_one_thread_loop_over_channels_runs_a_thread_per_channel(channels):
    """Batch norm's scale gradient from its sums: one serial loop on the CPU (starting its
    threads costs more than the work), a thread per channel on a GPU."""
    sz = Sizes()
    kernel = bn_grad_param_kernel("scale_grad", channels, 1e-5, "weight", ["sums", "var"], sz=sz)
    gpu = gpu_schedule(kernel, sz.values)
    assert schedule_of(kernel) == "single" and schedule_of(gpu) == "element"
    assert launch_shape(gpu, sz.values)[0] == -(-channels // 128)
    rng = np.random.default_rng(channels)
    sums, var = rng.standard_normal(2 * channels), rng.random(channels)
    got = run(gpu, channels, sums=sums, var=var, n_batch=1, **sz.values)["shuffled"]
    close(got, sums[channels:] / np.sqrt(var + 1e-5))


@settings(max_examples=10, deadline=None)
@given(shapes, st.sampled_from(["maxpool", "avgpool"]), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 1))
def test_pooling_gradients_gather_a_thread_per_input_cell(shape, op, k, stride, pad):
    """Each input cell sums the shares of the windows covering it (overlapping windows,
    windows that skip cells, padding): what the CPU's windows scatter, without races."""
    n, c, h, w = shape
    pad, p, q, attrs = pool_window(shape, k, stride, pad)
    sz = Sizes()
    kernel = pool_grad_kernel("pool_grad", op, (c, h, w), (p, q), attrs, sz=sz,
                              thread_scratch=False, gpu=True)
    gpu = scheduled(kernel, sz, "element")
    rng = np.random.default_rng(n * h + w * k)
    x, dy = rng.standard_normal(shape), rng.standard_normal((n, c, p, q))
    got = run(gpu, x.size, x0=x, x1=dy, n_batch=n, **sz.values)["forward"]
    xt = torch.from_numpy(x).requires_grad_()
    torch_pool(xt, op, k, stride, pad).backward(torch.from_numpy(dy))
    close(got, xt.grad.numpy().ravel())
