"""The 8-lane vector extension: semantics of every intrinsic inside njit code."""

from __future__ import annotations

import numpy as np
from numba import njit

from cnnc.compiler.codegen.vec8 import (
    vadd,
    vbroadcast,
    vfma,
    vload,
    vmax,
    vmul,
    vsplat,
    vstore,
    vsum,
    vzero,
)


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
