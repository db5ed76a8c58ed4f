"""The gradients of convolution and transposed convolution, as other convolutions.

For y = conv(x, w) + b (stride s, dilation d, padding t/l/b/r, groups g):

- dx = conv_transpose(dy, w): the output gradient convolved with the flipped kernel, stride
  becoming zero insertion (seed 002; JAX's ``_conv_general_vjp_lhs_padding``). The transposed
  convolution has the same stride, padding, dilation and groups, and the weight tensor as it is
  (``[K, C/g, R, S]`` is a transposed convolution from K to C channels); its output padding is
  the rows and columns the forward windows never reached, ``(H + t + b - d (R - 1) - 1) mod s``,
  so dx has x's size exactly (zero there).
- dw = conv_weight_grad(x, dy): ``dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] *
  x_pad[n, g(k) C/g + c, p s_h + r d_h, q s_w + s d_w]``, summed over the batch.
- db = channel_sum(dy).

A transposed convolution is the adjoint of a convolution with the same attributes, so for
y = conv_transpose(x, w): dx = conv(dy, w) (its floor drops the output padding), and
dw = conv_weight_grad(dy, x) with the roles of input and output gradient exchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...kernels.conv_geometry import ceil_div
from ...kernels.gemm import gemm_batch_sum_kernel
from ...kernels.layout import im2col_transposed_strides
from ...kernels.tiles import GEMM_M, GEMM_N
from ...plan import Arg, Call, Step
from ...types import TensorType, spatial_out
from .. import EPS32, BoundCtx, LoweringError, ShapeError
from .padding import pad_nchw

#: The attributes a convolution's gradient convolutions take from it.
CONV_ATTRS = ("kernel", "stride", "pads", "dilation", "groups")


def _remainder(size: int, out: int, k: int, s: int, d: int, before: int, after: int) -> int:
    """Rows (or columns) at the end of a padded input no window reaches."""
    return size + before + after - d * (k - 1) - 1 - (out - 1) * s


def conv_gradient(d) -> list[int | None]:
    """dx = conv_transpose(dy, w), dw = conv_weight_grad(x, dy), db = channel_sum(dy)."""
    x, w = d.input(0), d.input(1)
    a = d.attrs
    geometry = {k: a[k] for k in CONV_ATTRS}
    grads: list[int | None] = [None] * len(d.node.inputs)
    if d.needs(0):
        xt, yt = d.type(x), d.type(d.node.id)
        (r, s), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
        t, left, b, right = a["pads"]
        output_padding = (_remainder(xt.height, yt.height, r, sh, dh, t, b),
                          _remainder(xt.width, yt.width, s, sw, dw, left, right))
        grads[0] = d.add("conv_transpose", [d.dy, w],
                         {"out_channels": xt.channels, **geometry,
                          "output_padding": output_padding, "bias": False}, what="input")
    if d.needs(1):
        grads[1] = d.add("conv_weight_grad", [x, d.dy],
                         {"out_channels": a["out_channels"], **geometry}, what="weight")
    if len(d.node.inputs) > 2 and d.needs(2):
        grads[2] = d.add("channel_sum", [d.dy], what="bias")
    return grads


def conv_transpose_gradient(d) -> list[int | None]:
    """dx = conv(dy, w), dw = conv_weight_grad(dy, x), db = channel_sum(dy)."""
    x, w = d.input(0), d.input(1)
    a = d.attrs
    geometry = {k: a[k] for k in CONV_ATTRS}
    if any(o >= s for o, s in zip(a["output_padding"], a["stride"])):
        raise ShapeError(f"conv_transpose: cnnc has no gradient for output_padding "
                         f"{a['output_padding']} not smaller than the stride {a['stride']}")
    grads: list[int | None] = [None] * len(d.node.inputs)
    c = d.type(x).channels
    if d.needs(0):
        grads[0] = d.add("conv", [d.dy, w], {"out_channels": c, **geometry, "bias": False},
                         what="input")
    if d.needs(1):
        grads[1] = d.add("conv_weight_grad", [d.dy, x], {"out_channels": c, **geometry},
                         what="weight")
    if len(d.node.inputs) > 2 and d.needs(2):
        grads[2] = d.add("channel_sum", [d.dy], what="bias")
    return grads


# -- conv_weight_grad ----------------------------------------------------------------------------

def weight_grad_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, dy = in_types
    k, g = attrs["out_channels"], attrs["groups"]
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    t, left, b, right = attrs["pads"]
    p = spatial_out(x.height, r, sh, t, b, dh)
    q = spatial_out(x.width, s, sw, left, right, dw)
    if dy.shape != (k, p, q) or x.channels % g or k % g:
        raise ShapeError(f"conv_weight_grad: output gradient {dy} does not fit a convolution "
                         f"of {x} to {k} channels ({k}x{p}x{q}, groups {g})")
    return TensorType((k, x.channels // g, r, s), batched=False)


def weight_grad_reference(inputs, attrs: dict[str, Any]) -> np.ndarray:
    """One (r, s) tap at a time: the windows' input values against dy, summed over the batch
    and the output pixels, all groups at once."""
    x = np.asarray(inputs[0], np.float64)
    dy = np.asarray(inputs[1], np.float64)
    n, c, h, wd = x.shape
    _, k, p, q = dy.shape
    g = attrs["groups"]
    cg = c // g
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    t, left, b, right = attrs["pads"]
    xp = pad_nchw(x, attrs["pads"]).reshape(n, g, cg, h + t + b, wd + left + right)
    dyg = dy.reshape(n, g, k // g, p, q)
    out = np.zeros((g, k // g, cg, r, s))
    for i in range(r):
        for j in range(s):
            patch = xp[:, :, :, i * dh: i * dh + sh * (p - 1) + 1: sh,
                       j * dw: j * dw + sw * (q - 1) + 1: sw]
            out[:, :, :, i, j] = np.einsum("ngcpq,ngkpq->gkc", patch, dyg)
    return out.reshape(k, cg, r, s)


def weight_grad_macs(in_types: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> int:
    """Per image: every output-gradient value times its window (as the forward)."""
    r, s = attrs["kernel"]
    return in_types[1].size * (in_types[0].channels // attrs["groups"]) * r * s


def weight_grad_bound(ctx: BoundCtx) -> np.ndarray:
    """A sum of N x P x Q products per weight, in float32 (``sum_bound``'s analysis)."""
    n, _, p, q = ctx.inputs[1].shape
    return (n * p * q + 2) * EPS32 * ctx.absolute()


def _ints(*values: int) -> tuple[Arg, ...]:
    return tuple(Arg("int", int(v)) for v in values)


def lower_weight_grad(ctx, node) -> Step:
    """A GEMM per group, summed over the batch: ``dw[g] = sum_n dy_g[n] @ col_g[n]^T``, where
    ``dy_g[n]`` is the group's ``[K/g, P*Q]`` output gradient of image n (rows padded to the
    GEMM's 6-row tiles by ``pad_gemm_rows``) and ``col_g[n]`` its ``[C/g*R*S, P*Q]`` im2col
    matrix, written transposed in 16-column panels by the convolution's own ``im2col`` kernel
    (columns padded to 16); ``crop_gemm`` drops the padding into ``[K, C/g, R, S]``."""
    x, dy = ctx.tensor_inputs
    if ctx.storage(x) is not None or ctx.storage(dy) is not None:
        raise LoweringError(f"{ctx.kname}: the weight gradient reads NCHW tensors only")
    a = node.attrs
    (c, h, w), (k, p, q) = ctx.in_shapes
    (r, s), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
    t, left, _, _ = a["pads"]
    g = a["groups"]
    cg, kg = c // g, k // g
    crs, pq = cg * r * s, p * q
    crs_p, kg_p = ceil_div(crs, GEMM_N) * GEMM_N, ceil_div(kg, GEMM_M) * GEMM_M
    gemm = gemm_batch_sum_kernel(comment="weight gradient: im2col GEMM summed over the batch, "
                                 "6 x 16 register tile; sizes are runtime arguments")
    compute, source_name, src = ctx.load_tasked(gemm, "gemm_batch_sum", "weight gradient kernel")
    rows, col, total = Arg("scratch", "wgrad_rows"), Arg("scratch", "wgrad_col"), \
        Arg("scratch", "wgrad_sum")
    calls = [
        Call(ctx.layout_kernel("pad_gemm_rows"),
             (Arg("value", dy), rows, Arg("batch"), *_ints(k, kg, kg_p, pq)), "pad_gemm_rows"),
        Call(ctx.layout_kernel("im2col"),
             (Arg("value", x), col, Arg("batch"),
              *_ints(c, h, w, g, cg, r, s, p, q, sh, sw, dh, dw, t, left, pq,
                    *im2col_transposed_strides(crs_p, pq))), "im2col"),
        Call(compute, (col, rows, total, *_ints(kg_p, pq, crs_p, g), Arg("batch")), gemm.name),
        Call(ctx.layout_kernel("crop_gemm"),
             (total, Arg("output"), *_ints(1, k, kg, kg_p, crs, crs_p)), "crop_gemm"),
    ]
    # scratch is sized per image; the sum over the batch needs one image's worth
    scratch = {"wgrad_rows": g * kg_p * pq, "wgrad_col": g * crs_p * pq,
               "wgrad_sum": g * kg_p * crs_p}
    return Step(node.id, ctx.step_name, ctx.step_ops, [x, dy], node.type.size, calls,
                scratch=scratch, lowering="gemm", sources={source_name: src}, batched=False)
