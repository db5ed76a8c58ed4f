"""Kernel IR construction and the Numba printer."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.compiler.backends.numba.printer import (
    MAX_COMMENT,
    print_expr,
    print_kernel,
    print_module,
    sanitize_comment,
)
from cnnc.compiler.backends.numba.tasks import CHUNKS_PER_THREAD, TaskKernel, TaskProgram
from cnnc.compiler.kernels.kernel_ir import (
    BinOp,
    Call,
    Const,
    Epilogue,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Store,
    Var,
    VLoad,
    VStore,
    VZero,
)


@settings(max_examples=200)
@given(st.text())
def test_sanitize_comment_is_one_safe_line(text):
    s = sanitize_comment(text)
    assert len(s) <= MAX_COMMENT
    assert s.splitlines() == ([s] if s else [])
    assert all(ch.isprintable() for ch in s)
    compile(f"# {s}\nx = 1\n", "<test>", "exec")  # still valid Python, one comment line


def test_sanitize_comment_examples():
    assert sanitize_comment("model.cnn:12 conv1") == "model.cnn:12 conv1"
    assert sanitize_comment("a\nb\r\nc\u2028d\x00e\tf") == "a b c d e f"
    assert sanitize_comment("x" * 1000).endswith("...")


def test_constant_folding_keeps_indices_readable():
    n, p = Var("n"), Var("p")
    assert print_expr((n * 4 + 0) * 58 + p * 1) == "n * 232 + p"
    assert print_expr(Const(3) * 4 + 2) == "14"
    assert print_expr(n * 0 + p) == "p"
    assert print_expr((n + 2) + 3) == "n + 5"
    assert print_expr(n - (p - 1)) == "n - (p - 1)"
    assert print_expr(n // (p * 2)) == "n // (p * 2)"


def _kernel(parallel_inner: bool = False) -> Kernel:
    inner = Loop("j", Const(4), [Store("y", Var("i") * 4 + Var("j"),
                                       Load("x", Var("i") * 4 + Var("j")) * Const(2.0))],
                 kind="parallel" if parallel_inner else "serial")
    return Kernel("scale2", [Param("x"), Param("y"), Param("n", "int")],
                  [Loop("i", Var("n"), [inner], kind="parallel")], "scale by two")


def _load(kernel: Kernel, tmp_path, tag: str) -> TaskKernel:
    from cnnc.compiler.backends.numba.cache import load_module

    mod = load_module(print_module([kernel], header="test"), tag, root=tmp_path)
    return TaskKernel(mod, kernel.name, kernel.params, parallel=True)


@pytest.fixture(scope="module")
def scale2(tmp_path_factory) -> tuple[str, TaskKernel]:
    """``(source, kernel)`` of :func:`_kernel`, compiled once for the tests that run it."""
    from cnnc.compiler.backends.numba.cache import load_module

    src = print_module([_kernel()], header="test\nheader")
    mod = load_module(src, "printer_test", root=tmp_path_factory.mktemp("scale2"))
    return src, TaskKernel(mod, "scale2", _kernel().params, parallel=True)


def test_print_and_run_scalar_kernel(scale2):
    src, kernel = scale2
    # the parallel loop's body is the task function's body, its variable the task index
    assert "def scale2(i, args):" in src and "for j in range(4):" in src
    assert "prange" not in src and "def scale2_tasks(x, y, n):\n    return n" in src
    assert "# test header" in src and "# scale by two" in src
    x = np.arange(12, dtype=np.float32)
    y = np.zeros(12, np.float32)
    kernel(x, y, 3)
    np.testing.assert_array_equal(y, 2 * x)
    assert kernel.tasks([x, y, 3]) == 3


@pytest.mark.parametrize("per_thread", (1, CHUNKS_PER_THREAD, 10 ** 6))
@pytest.mark.parametrize("n", (1, 3, 37, 500))
def test_chained_calls_see_every_task_of_the_last(scale2, n, per_thread):
    """Five calls, each reading what the one before wrote, their tasks claimed in chunks by
    every thread (one call of 1 task: on the calling thread; chunks of half a call, the
    default, one task): every task of every call runs once, x * 2^5 exactly (a task skipped
    leaves zeros; a call waiting for it never ends). A call started before the last one
    ended is the reproducibility test's to catch (tests/runtime: real kernels, long tasks)."""
    threads = numba.get_num_threads()
    if threads < 2:
        pytest.skip("one thread only: no tasks to share")
    _, kernel = scale2
    x = np.random.default_rng(n).standard_normal(4 * n).astype(np.float32)
    ys = [x] + [np.zeros(4 * n, np.float32) for _ in range(5)]
    program = TaskProgram([(kernel, [ys[k], ys[k + 1], n]) for k in range(5)])
    program.per_thread = per_thread
    for _ in range(3):
        for y in ys[1:]:
            y[:] = 0
        program.run()
        np.testing.assert_array_equal(ys[-1], x * np.float32(32))


def test_every_argument_kind_reaches_the_task(tmp_path):
    """Arrays, int64 arrays, integers and float32 scalars through the argument block: y[i] =
    x[i] * alpha + idx[i] + offset, for a float32 alpha that float64 would round otherwise."""
    i = Var("i")
    body = Load("x", i) * Var("alpha") + Call("f32", (Load("idx", i),)) + \
        Call("f32", (Var("offset"),))
    k = Kernel("axpy", [Param("x"), Param("idx", "int_array"), Param("alpha", "float"),
                        Param("offset", "int"), Param("y"), Param("n", "int")],
               [Loop("i", Var("n"), [Store("y", i, body)], kind="parallel")])
    kernel = _load(k, tmp_path, "axpy_test")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(37).astype(np.float32)
    idx = rng.integers(-5, 5, 37).astype(np.int64)
    y = np.zeros(37, np.float32)
    alpha = np.float32(1.0) / np.float32(3.0)
    kernel(x, idx, alpha, -7, y, 37)
    want = x * alpha + idx.astype(np.float32) + np.float32(-7)
    np.testing.assert_array_equal(y, want)
    with pytest.raises(TypeError, match="'idx' must be a C-contiguous int64 array"):
        kernel(x, idx.astype(np.int32), alpha, -7, y, 37)
    with pytest.raises(TypeError, match="'x' must be a C-contiguous float32 array, not a "
                                        "strided float32"):
        kernel(np.zeros(74, np.float32)[::2], idx, alpha, -7, y, 37)
    with pytest.raises(TypeError, match="takes 6 arguments"):
        kernel(x, idx, alpha)


def test_a_program_runs_its_calls_in_order_and_takes_new_arguments(tmp_path):
    """Two calls bound once: the second reads what the first wrote; a replaced array is the
    one the next run reads."""
    kernel = _load(_kernel(), tmp_path, "program_test")
    x = np.arange(8, dtype=np.float32)
    mid = np.zeros(8, np.float32)
    out = np.zeros(8, np.float32)
    program = TaskProgram([(kernel, [x, mid, 2]), (kernel, [mid, out, 2])])
    program.run()
    np.testing.assert_array_equal(out, 4 * x)
    program.set(0, 0, np.full(8, 3, np.float32))
    program.run()
    np.testing.assert_array_equal(out, np.full(8, 12, np.float32))
    program.run(1, 2)  # the second call alone
    np.testing.assert_array_equal(out, 2 * mid)


def test_a_serial_kernel_is_one_task(tmp_path):
    k = Kernel("fill", [Param("y"), Param("n", "int")],
               [Loop("i", Var("n"), [Store("y", Var("i"), Const(1.5))])])
    src = print_module([k])
    assert "def fill(task, args):" in src and "def fill_tasks(y, n):\n    return 1" in src
    kernel = _load(k, tmp_path, "serial_test")
    y = np.zeros(5, np.float32)
    kernel(y, 5)
    np.testing.assert_array_equal(y, np.full(5, 1.5, np.float32))
    assert kernel.tasks([y, 5]) == 1


def test_a_parallel_loop_must_be_the_kernels_last_statement():
    loop = Loop("i", Var("n"), [Store("y", Var("i"), Const(1.0))], kind="parallel")
    after = Store("y", Const(0), Const(2.0))
    with pytest.raises(ValueError, match="must be the kernel's last statement"):
        print_kernel(Kernel("k", [Param("y"), Param("n", "int")], [loop, after]))
    with pytest.raises(ValueError, match="must be the kernel's last statement"):
        print_kernel(Kernel("k", [Param("y"), Param("n", "int")],
                            [Loop("j", Const(2), [loop])]))


def test_nested_parallel_loops_are_rejected():
    with pytest.raises(ValueError, match="nested parallel"):
        print_kernel(_kernel(parallel_inner=True))


@pytest.mark.parametrize("bad", ["os.system", "a b", "def", "1x", "vfma", "x\n"])
def test_identifiers_are_checked(bad):
    k = Kernel("k", [Param("x")], [Let(bad, Const(1))])
    with pytest.raises(ValueError, match="identifier"):
        print_kernel(k)
    with pytest.raises(ValueError, match="identifier"):
        print_kernel(Kernel(bad, [Param("x")], []))


def test_epilogue_trees():
    e = Epilogue(bias=True, activation="relu")
    v = e.apply_vec(Var("acc"), Var("k") * 8)
    assert print_expr(v) == "vmax(vadd(acc, vload(bias, k * 8)), vzero())"
    assert print_expr(e.apply_vec(Var("acc"), Var("m"), same_channel=True)) == \
        "vmax(vadd(acc, vbroadcast(bias, m)), vzero())"
    assert print_expr(e.apply_scalar(Var("a"), 3)) == "max(a + bias[3], np.float32(0.0))"
    assert print_expr(Epilogue().apply_vec(Var("acc"), 0)) == "acc"
    src = print_kernel(Kernel("k", [Param("y")], [VStore("y", Const(0), VZero())]))
    assert "vstore(y, 0, vzero())" in src
    assert isinstance(BinOp("max", Var("a"), Var("b")), BinOp)
    assert print_expr(VLoad("x", Var("i") + 8)) == "vload(x, i + 8)"
