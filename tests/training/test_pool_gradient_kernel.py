"""The max and min pooling gradient kernel (``kernels/pool.py``: each row's window picks, then
the scatter of dy onto them) against PyTorch autograd, on hypothesis-drawn sizes: ties
everywhere (values drawn from three integers, so most windows hold several equal maxima: the
first in row-major window order takes dy, as PyTorch's CPU kernel has it), windows reaching into
the padding, and, for min pooling, dilation and ceil mode. The sizes are runtime arguments of
the kernel: one compiled kernel per pooling serves every drawn shape."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cnnc.compiler.kernels.common import Sizes
from cnnc.compiler.kernels.pool import pool_grad_kernel, pool_grad_scratch
from cnnc.compiler.lower import load_kernel

#: (op, window, stride, padding, dilation, ceil mode): ResNet's stem pooling, and a dilated
#: min pooling whose ceil-mode windows overhang the input.
POOLS = {
    "maxpool": (3, 2, 1, 1, False),
    "minpool": (2, 1, 1, 2, True),
}
_KERNELS: dict[str, tuple[object, list[str]]] = {}


def pool_grad(op: str, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx of pooling ``op`` (:data:`POOLS`) at ``x`` [N, C, H, W] by the compiled kernel."""
    window, stride, pad, dilation, _ = POOLS[op]
    n, c, h, w = x.shape
    p, q = dy.shape[2:]
    attrs = {"kernel": (window, window), "stride": (stride, stride), "pads": (pad,) * 4,
             "dilation": (dilation, dilation)}
    sz = Sizes()
    kernel = pool_grad_kernel("k_pool_grad", op, (c, h, w), (p, q), attrs, "", sz)
    if op not in _KERNELS:  # the sizes are arguments: the first shape's kernel serves all
        _KERNELS[op] = (load_kernel(kernel), [p.name for p in kernel.params])
    fn, names = _KERNELS[op]
    dx = np.full(x.size, np.nan, np.float32)  # the kernel zeroes every cell it does not reach
    work = np.zeros(pool_grad_scratch(op, (p, q), numba.config.NUMBA_NUM_THREADS), np.float32)
    arrays = {"x0": x.ravel(), "x1": dy.ravel(), "y": dx, "work": work, "n_batch": n}
    fn(*(arrays[k] if k in arrays else sz.values[k] for k in names))
    return dx.reshape(x.shape)


def torch_pool_grad(op: str, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """PyTorch autograd's dx (min pooling as ``-max_pool2d(-x)``: its first smallest)."""
    window, stride, pad, dilation, ceil = POOLS[op]
    xt = torch.tensor(x, requires_grad=True)
    sign = 1.0 if op == "maxpool" else -1.0
    y = sign * F.max_pool2d(sign * xt, window, stride, pad, dilation, ceil_mode=ceil)
    y.backward(torch.tensor(dy))
    return xt.grad.numpy()


@given(op=st.sampled_from(sorted(POOLS)), n=st.integers(1, 3), c=st.integers(1, 3),
       h=st.integers(3, 9), w=st.integers(3, 9), seed=st.integers(0, 999),
       ties=st.booleans())
def test_pool_gradient_matches_pytorch_ties_and_padding(op, n, c, h, w, seed, ties):
    rng = np.random.default_rng(seed)
    # three values: ties in most windows (ReLU's zeros under ResNet's max pooling, too)
    x = (rng.integers(-1, 2, (n, c, h, w)) if ties else rng.standard_normal((n, c, h, w)))
    x = x.astype(np.float32)
    window, stride, pad, dilation, ceil = POOLS[op]
    shape = F.max_pool2d(torch.zeros(1, 1, h, w), window, stride, pad, dilation,
                         ceil_mode=ceil).shape[2:]
    dy = rng.standard_normal((n, c) + tuple(shape)).astype(np.float32)
    got, want = pool_grad(op, x, dy), torch_pool_grad(op, x, dy)
    # the same cell takes each window's dy; the sums of several agree to float32 rounding
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(got != 0, want != 0)


@pytest.mark.parametrize("op", sorted(POOLS))
def test_pool_gradient_ignores_nan_as_the_forward_does(op):
    """A NaN never wins a window (the forward's maximum skips it too); the window's other
    cells compete as without it."""
    x = np.array([[[[1.0, np.nan, 3.0], [2.0, 0.0, -1.0], [0.5, 4.0, 0.25]]]], np.float32)
    window, stride, pad, dilation, ceil = POOLS[op]
    shape = F.max_pool2d(torch.zeros(1, 1, 3, 3), window, stride, pad, dilation,
                         ceil_mode=ceil).shape[2:]
    dy = np.ones((1, 1) + tuple(shape), np.float32)
    got = pool_grad(op, x, dy)
    clean = np.where(np.isnan(x), -np.inf if op == "maxpool" else np.inf, x)
    assert got[0, 0, 0, 1] == 0.0
    np.testing.assert_array_equal(got, torch_pool_grad(op, clean, dy))
