"""Fixtures for the codegen tests: a float64 NumPy reference convolution (cross-correlation,
as in PyTorch) and the tolerance rule.

Deliberately independent of the code under test: straight from the definition
``y[n, k, p, q] = b[k] + sum_{c, r, s} x_pad[n, g*Cg + c, p*sh + r*dh, q*sw + s*dw] *
w[k, c, r, s]`` with ``g = k // (K / groups)``.
"""

from __future__ import annotations

import numpy as np
import pytest


def conv2d_ref(x, w, b=None, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1,
               activation=None) -> np.ndarray:
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    assert C == Cg * groups and K % groups == 0
    sh, sw = stride
    dh, dw = dilation
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    P = (H + top + bottom - dh * (R - 1) - 1) // sh + 1
    Q = (W + left + right - dw * (S - 1) - 1) // sw + 1
    Kg = K // groups
    y = np.zeros((N, K, P, Q))
    for g in range(groups):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        ws = w[g * Kg:(g + 1) * Kg]
        for r in range(R):
            for s in range(S):
                patch = xs[:, :, r * dh: r * dh + sh * (P - 1) + 1: sh,
                           s * dw: s * dw + sw * (Q - 1) + 1: sw]
                y[:, g * Kg:(g + 1) * Kg] += np.einsum("nchw,kc->nkhw", patch, ws[:, :, r, s])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    if activation == "relu":
        y = np.maximum(y, 0.0)
    return y


def assert_close(y: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    """max |y - ref| <= rel * max(1, max |ref|)."""
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == np.float32
    err = float(np.max(np.abs(y.astype(np.float64) - ref))) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 0.0)
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"


@pytest.fixture(scope="session")
def conv_ref():
    """The float64 reference convolution ``conv2d_ref``."""
    return conv2d_ref


@pytest.fixture(scope="session")
def close():
    """``assert_close(y, ref, rel=1e-4)``."""
    return assert_close
