"""Kernel IR construction and the Numba printer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.compiler.backends.numba.printer import (
    MAX_COMMENT,
    print_expr,
    print_kernel,
    print_module,
    print_tasked,
    sanitize_comment,
)
from cnnc.compiler.kernels.kernel_ir import (
    BinOp,
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


def test_print_and_run_scalar_kernel(tmp_path):
    from cnnc.compiler.backends.numba.cache import load_module

    src = print_module([_kernel()], header="test\nheader")
    assert "for i in prange(n):" in src and "for j in range(4):" in src
    assert "# test header" in src and "# scale by two" in src
    mod = load_module(src, "printer_test", root=tmp_path)
    x = np.arange(12, dtype=np.float32)
    y = np.zeros(12, np.float32)
    mod.scale2(x, y, 3)
    np.testing.assert_array_equal(y, 2 * x)


def test_tasked_kernel_compiles_its_task_once(tmp_path):
    """The task function runs with one argument signature, whatever Numba types the parallel
    loop's index as where it builds the loop (uint64) and where it types the caller (int64):
    a second signature would compile the whole task body twice."""
    from cnnc.compiler.backends.numba.cache import load_module

    mod = load_module(print_tasked(_kernel(), "test"), "tasked_test", root=tmp_path)
    x = np.arange(12, dtype=np.float32)
    y = np.zeros(12, np.float32)
    mod.scale2(x, y, 3)
    np.testing.assert_array_equal(y, 2 * x)
    assert len(mod.scale2_task.signatures) == 1, mod.scale2_task.signatures


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
