"""The CUDA printer: how the kernel IR maps to CUDA C, checked on the text and, through the CPU
emulation of the printed source, on the numbers (against NumPy in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnc.compiler.backends.cuda.emulate import EmulatedModule, EmulationCrash, compiler_path
from cnnc.compiler.backends.cuda.launch import THREADS_PER_BLOCK, Launcher, launch_shape
from cnnc.compiler.backends.cuda.memory import EmulatedMemory
from cnnc.compiler.backends.cuda.printer import print_kernel, print_module
from cnnc.compiler.kernels.backward import mix32 as mix32_stmts
from cnnc.compiler.kernels.kernel_ir import (
    F64,
    BinOp,
    Comment,
    Const,
    Div,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Store,
    Var,
    VBin,
    VFma,
    VLoad,
    VSplat,
    VStore,
    call,
    cmp,
    shr,
    xor,
)
from cnnc.compiler.ops.tensor import mix32

needs_cxx = pytest.mark.skipif(compiler_path() is None, reason="no C++ compiler (g++/clang++)")


def elementwise(value, name: str = "k") -> Kernel:
    """``y[i] = value`` for i < n, where ``value`` may read ``x[i]`` as ``Var("v")``."""
    body = [Let("v", Load("x", Var("i"))), Store("y", Var("i"), value)]
    return Kernel(name, [Param("x"), Param("y"), Param("n", "int")],
                  [Loop("i", Var("n"), body, kind="parallel")], "test kernel")


def run(kernel: Kernel, tmp_path, *args, order: str = "forward") -> None:
    """Launch ``kernel`` on the emulated GPU: the NumPy arrays among ``args`` are uploaded
    and, after the launch, overwritten with what the kernel left in their device copies."""
    module = EmulatedModule(print_module([kernel]), [kernel], tmp_path, order=order)
    memory = EmulatedMemory()
    device = [memory.upload(a) if isinstance(a, np.ndarray) else a for a in args]
    Launcher(kernel, lambda: module)(*device)
    for a, d in zip(args, device):
        if isinstance(a, np.ndarray):
            a[:] = memory.download(d)


def test_parallel_loop_is_grid_arithmetic_behind_a_guard():
    src = print_kernel(elementwise(Var("v")))
    assert "const int i = blockIdx.x * blockDim.x + threadIdx.x;" in src
    assert "if (i < n) {" in src
    assert 'extern "C" __global__ void k(const float* x, float* y, int n)' in src
    assert launch_shape(elementwise(Var("v")), {"n": 2 * THREADS_PER_BLOCK + 1}) == \
        (3, THREADS_PER_BLOCK)
    assert launch_shape(elementwise(Var("v")), {"n": 0})[0] == 0


def test_float_math_is_spelled_for_float_and_double():
    src = print_kernel(elementwise(call("exp", Var("v")) + call("tanh", Var("v"))
                                   + call("erf", Var("v"))))
    assert "expf(v)" in src and "tanhf(v)" in src and "erff(v)" in src
    src = print_kernel(elementwise(call("f32", call("exp", call("f64", Var("v")) * F64(0.5)))))
    assert "exp((double)(v) * 0.5)" in src and "expf" not in src


def test_multiply_add_is_fused():
    src = print_kernel(elementwise(Var("v") * Const(2.0) + Const(1.0)))
    assert "fmaf(v, 2.0f, 1.0f)" in src
    fma = VFma(Var("a"), Var("a"), VSplat(Const(1.0)))
    k = Kernel("k", [Param("x"), Param("y")],
               [Let("a", VLoad("x", Const(0))), VStore("y", Const(0), fma)])
    assert "vfma(a, a, vsplat<8>(1.0f))" in print_kernel(k)


def test_reserved_names_and_comments():
    k = elementwise(Var("floor"))
    k.body[0].body.insert(1, Let("floor", Var("v")))
    k.body[0].body.insert(0, Comment("evil \\\nthreadIdx.x = 0;"))
    src = print_kernel(k)
    assert "float floor_ = v;" in src and "y[i] = floor_;" in src
    comment = next(line for line in src.splitlines() if "evil" in line)
    assert comment.strip().startswith("//") and "\\" not in comment


def test_locals_are_declared_where_every_use_sees_them():
    body = [If(cmp(">", Var("i"), 2), [Let("w", Const(1.0))], [Let("w", Const(-1.0))]),
            Store("y", Var("i"), Var("w"))]
    k = Kernel("k", [Param("y"), Param("n", "int")], [Loop("i", Var("n"), body, "parallel")])
    lines = [line.strip() for line in print_kernel(k).splitlines()]
    assert lines.index("float w;") < lines.index("if (i > 2) {")
    assert "w = 1.0f;" in lines and "w = -1.0f;" in lines


def test_refusals_name_what_has_no_cuda_form():
    k = elementwise(call("f32", call("thread_id")))
    with pytest.raises(ValueError, match="thread_id"):
        print_kernel(k)
    k = elementwise(Var("v"))
    k.body.append(Store("y", Const(0), Const(0.0)))
    with pytest.raises(ValueError, match="after its parallel loop"):
        print_kernel(k)
    with pytest.raises(TypeError, match=r"\^ on values of type float"):
        print_kernel(elementwise(xor(Var("v"), 1)))


def hash_kernel() -> Kernel:
    """``y[i] = mix32(seeds[i] + 2^40) mod 2^32 / 2^32``: the dropout hash's int64 arithmetic
    (``kernels.backward.mix32``) on an int64 array, a literal past 32 bits, ``^`` and ``>>``."""
    body = [*mix32_stmts("h", Load("seeds", Var("i")) + 2**40),
            Let("h", xor(Var("h"), shr(Var("h"), 3))),
            Store("y", Var("i"), Div(call("f64", Var("h")), F64(2.0**32)))]
    return Kernel("hash", [Param("seeds", "int_array"), Param("y"), Param("n", "int")],
                  [Loop("i", Var("n"), body, kind="parallel")])


def test_int64_values_print_as_long_long():
    source = print_kernel(hash_kernel())
    assert "const long long* seeds" in source and "long long h = " in source
    assert "1099511627776LL" in source and "(h ^ (h >> 3))" in source


# -- the numbers, through the emulation of the printed source --------------------------------

FUNCTIONS = {  # IR function -> the same in float64 NumPy, on inputs in its domain
    "exp": (np.exp, lambda x: x), "expm1": (np.expm1, lambda x: x),
    "log": (np.log, np.abs), "log1p": (np.log1p, np.abs), "tanh": (np.tanh, lambda x: x),
    "erf": (np.vectorize(math.erf), lambda x: x), "sqrt": (np.sqrt, np.abs),
    "abs": (np.abs, lambda x: x), "floor": (np.floor, lambda x: x),
}


@needs_cxx
@pytest.mark.parametrize("fn", sorted(FUNCTIONS))
def test_float_functions_match_float64(fn, tmp_path):
    reference, domain = FUNCTIONS[fn]
    x = domain(np.linspace(-3, 3, 301)).astype(np.float32) + np.float32(1e-3)
    y = np.zeros_like(x)
    run(elementwise(call(fn, Var("v"))), tmp_path, x, y, x.size)
    expected = reference(x.astype(np.float64))
    assert np.abs(y - expected).max() <= 4 * np.finfo(np.float32).eps * \
        np.maximum(1.0, np.abs(expected)).max()


@needs_cxx
@given(st.integers(1, 3 * THREADS_PER_BLOCK), st.floats(-4, 4), st.floats(-4, 4))
def test_guarded_grid_writes_every_element_once(n, scale, shift):
    x = np.arange(n + 5, dtype=np.float32)
    y = np.full(n + 5, -7.0, np.float32)
    value = BinOp("max", Var("v") * Const(scale) + Const(shift), Const(0.0))
    run(elementwise(value), _tmp(), x, y, n)
    expected = np.maximum(x[:n].astype(np.float64) * np.float32(scale) + np.float32(shift), 0)
    np.testing.assert_allclose(y[:n], expected, rtol=2e-7, atol=2e-6)
    assert (y[n:] == -7.0).all()  # the guard: no thread past the extent writes


def _tmp():
    """A cache folder for hypothesis examples (the fixture's is per test, not per example)."""
    import tempfile
    from pathlib import Path

    return Path(tempfile.gettempdir()) / "cnnc-test-cuda-emu"


@needs_cxx
def test_vector_operations_lane_by_lane(tmp_path):
    a, b = VLoad("x", Var("i") * 8), VLoad("x", Var("i") * 8 + 8)
    value = VBin("max", VFma(a, b, VSplat(Const(0.5))), VBin("mul", a, a))
    k = Kernel("k", [Param("x"), Param("y"), Param("n", "int")],
               [Loop("i", Var("n"), [VStore("y", Var("i") * 8, value)], kind="parallel")])
    x = np.random.default_rng(1).standard_normal(8 * 9).astype(np.float32)
    y = np.zeros(64, np.float32)
    run(k, tmp_path, x, y, 8)
    xs = x.astype(np.float64)
    lo = np.stack([xs[8 * i: 8 * i + 8] for i in range(8)])
    hi = np.stack([xs[8 * i + 8: 8 * i + 16] for i in range(8)])
    np.testing.assert_allclose(y.reshape(8, 8), np.maximum(lo * hi + 0.5, lo * lo), rtol=1e-6)


@needs_cxx
def test_thread_orders_differ_and_show_a_race(tmp_path):
    """Every thread writes element 0: the survivor is the last thread run, so the three
    orders leave three different values (a race shows as a difference between orders)."""
    k = Kernel("race", [Param("y"), Param("n", "int")],
               [Loop("i", Var("n"), [Store("y", Const(0), call("f32", Var("i")))],
                     kind="parallel")])
    last = {}
    for order in ("forward", "reversed", "shuffled"):
        y = np.zeros(1, np.float32)
        run(k, tmp_path, y, THREADS_PER_BLOCK, order=order)
        last[order] = float(y[0])
    assert last["forward"] == THREADS_PER_BLOCK - 1 and last["reversed"] == 0
    assert last["shuffled"] not in (0, THREADS_PER_BLOCK - 1)


def test_launch_refuses_wrong_arguments():
    k = elementwise(Var("v"))
    launcher = Launcher(k, lambda: pytest.fail("must not launch"))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        launcher(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="flat float32"):
        launcher(np.zeros(3), np.zeros(3, np.float32), 3)
    scaled = Kernel("scaled", [Param("x"), Param("s", "float"), Param("seed", "int_array")],
                    [Store("x", Const(0), Var("s"))])
    launcher = Launcher(scaled, lambda: pytest.fail("must not launch"))
    with pytest.raises(TypeError, match="s must be a real number, got str"):
        launcher(np.zeros(3, np.float32), "0.5", np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="seed must be a flat int64 array, got float32"):
        launcher(np.zeros(3, np.float32), 0.5, np.zeros(3, np.float32))


@needs_cxx
def test_emulated_gpu_memory_is_not_host_memory(tmp_path):
    """As with CuPy: a launch refuses a host array, NumPy cannot read a device array without a
    download, and a slice of a device array is a view of it."""
    k = elementwise(Var("v") + Const(1.0))
    module = EmulatedModule(print_module([k]), [k], tmp_path)
    memory = EmulatedMemory()
    x, y = memory.upload(np.arange(6, dtype=np.float32)), memory.zeros(6)
    with pytest.raises(TypeError, match="host memory"):
        Launcher(k, lambda: module)(np.zeros(6, np.float32), y, 6)
    with pytest.raises(TypeError, match="download"):
        np.asarray(y)
    Launcher(k, lambda: module)(x[2:], y[1:], 4)
    np.testing.assert_array_equal(memory.download(y), [0, 3, 4, 5, 6, 0])
    memory.write(y[4:], np.array([9.0], np.float32))
    np.testing.assert_array_equal(memory.download(y), [0, 3, 4, 5, 9, 0])


@needs_cxx
def test_an_access_past_an_array_fails_its_launch_not_the_caller(tmp_path):
    """Each array ends at an inaccessible page and a launch catches the fault: one element too
    many is reported, and the process goes on; the same launch within bounds is fine."""
    k = elementwise(Var("v"))
    module = EmulatedModule(print_module([k]), [k], tmp_path)
    memory = EmulatedMemory()
    x, y = memory.upload(np.arange(100, dtype=np.float32)), memory.zeros(99)
    with pytest.raises(EmulationCrash, match="SIGSEGV"):
        Launcher(k, lambda: module)(x, y, 100)  # writes y[99]: past its end
    Launcher(k, lambda: module)(x, y, 99)
    np.testing.assert_array_equal(memory.download(y), np.arange(99))


@needs_cxx
def test_the_int64_hash_is_the_references(tmp_path):
    """Seeds past 2^31 and near 2^63 - 2^40 (no product of the hash passes 2^49): the
    emulated kernel's hash is NumPy's ``mix32`` on uint64 exactly."""
    seeds = np.array([0, 1, 2**31 + 12345, 2**32 - 1, 2**62, 7 * 2**40 + 3], np.int64)
    y = np.zeros(seeds.size, np.float32)
    run(hash_kernel(), tmp_path, seeds, y, seeds.size)
    h = mix32((seeds.astype(np.uint64) + np.uint64(2**40)) & np.uint64(2**32 - 1))
    want = (h ^ (h >> np.uint64(3))).astype(np.float64) / 2.0**32
    np.testing.assert_array_equal(y, want.astype(np.float32))
