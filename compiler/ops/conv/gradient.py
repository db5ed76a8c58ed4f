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

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...kernels.conv_geometry import ConvGeometry, ceil_div
from ...kernels.gemm import gemm_batch_sum_kernel
from ...kernels.gpu_conv import (
    WEIGHT_GRAD_TILE,
    implicit_gemm_weight_grad_kernel,
    split_sum_kernel,
    weight_grad_splits,
)
from ...kernels.layout import im2col_transposed_strides
from ...kernels.tiles import GEMM_M, GEMM_N
from ...kernels.weight_grad import (
    conv_weight_grad_by_output_kernel,
    conv_weight_grad_kernel,
    parse_weight_grad_tile,
    weight_grad_tile,
)
from ...plan import Arg, Call, Step
from ...target import DEFAULT_CACHES, Caches
from ...types import TensorType, spatial_out
from .. import EPS32, BoundCtx, LoweringError, ShapeError
from .algorithms import FLOPS_PER_FLOAT_MOVED, LoweringChoice
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


def _weight_grad_geometry(node, in_types) -> ConvGeometry:
    """The forward convolution whose weight gradient ``node`` is: input ``x``, its attributes."""
    return ConvGeometry.from_attrs({**node.attrs, "bias": False}, in_types[0].shape)


def _direct_blocks(g: ConvGeometry, lanes: int) -> int:
    """Input blocks of ``lanes`` channels per group the direct kernel reads: whole pairs."""
    return 2 * ceil_div(g.Cg, 2 * lanes)


@dataclass(frozen=True)
class WeightGradAlgorithm(LoweringChoice):
    """How ``conv_weight_grad`` is computed (``select_lowering`` records ``lowering``): the
    user's ``direct`` names the family of both direct kernels (the first, ``direct``, is
    taken), ``im2col`` the GEMM, as for the forward convolutions; the cost is the
    multiply-adds of its padded tiling over the fraction of peak it reaches, plus the floats
    its layout kernels move (comparable between the algorithms of one node only)."""

    def applies_to(self, node, in_types) -> bool:
        return True

    def estimate(self, node, in_types, lanes: int = 8,
                 caches: Caches = DEFAULT_CACHES) -> float:
        g = _weight_grad_geometry(node, in_types)
        pixels = g.P * g.Q
        rows, width = weight_grad_tile(lanes)
        if self.name == "direct":
            blocks = _direct_blocks(g, width)
            macs = g.groups * ceil_div(g.Kg, rows) * rows * blocks * width * g.R * g.S * pixels
            moved = g.groups * blocks * width * g.Hp * g.Wp
        elif self.name == "direct_out":
            taps = g.Cg * g.R * g.S
            blocks = 2 * ceil_div(g.Kg, 2 * width)
            macs = g.groups * blocks * width * ceil_div(taps, rows) * rows * pixels
            moved = g.groups * blocks * width * pixels + g.C * g.Hp * g.Wp
        elif self.name == "implicit_gemm":  # nothing moved: B is read where it lies
            crs = g.Cg * g.R * g.S
            t = WEIGHT_GRAD_TILE
            macs = g.groups * ceil_div(g.Kg, t.m) * t.m * ceil_div(crs, t.n) * t.n * pixels
            moved = 0
        else:
            crs = g.Cg * g.R * g.S
            macs = g.groups * ceil_div(g.Kg, GEMM_M) * GEMM_M * ceil_div(crs, GEMM_N) * GEMM_N \
                * pixels
            # im2col's stores land 64 bytes apart (a transposed panel): measured at about as
            # much time per float as 150 flops of the GEMM at 56 x 56
            moved = IM2COL_STORE_WEIGHT * g.groups * ceil_div(crs, GEMM_N) * GEMM_N * pixels
        return 2 * macs / self.efficiency + FLOPS_PER_FLOAT_MOVED * moved


#: A transposed im2col store, in floats moved by a pack (``WeightGradAlgorithm.estimate``).
IM2COL_STORE_WEIGHT = 20
WEIGHT_GRAD_DIRECT = WeightGradAlgorithm("direct", "direct", efficiency=0.8, cpu_only=True)
#: The direct kernel with its lanes over output channels (inputs of few channels).
WEIGHT_GRAD_DIRECT_OUT = WeightGradAlgorithm("direct_out", "direct", efficiency=0.8,
                                             cpu_only=True)
WEIGHT_GRAD_GEMM = WeightGradAlgorithm("im2col", "im2col", efficiency=0.8)
#: The GPU's GEMM of shared-memory tiles (``kernels/gpu_conv.py``): a GPU target's choice.
WEIGHT_GRAD_IMPLICIT_GEMM = WeightGradAlgorithm("implicit_gemm", "implicit_gemm",
                                                efficiency=0.5, gpu_only=True)
#: The direct kernel first: the default at -O0 and -O1 (it computes every shape).
WEIGHT_GRAD_ALGORITHMS = (WEIGHT_GRAD_DIRECT, WEIGHT_GRAD_DIRECT_OUT, WEIGHT_GRAD_GEMM,
                          WEIGHT_GRAD_IMPLICIT_GEMM)


def lower_weight_grad(ctx, node) -> Step:
    """The algorithm ``node`` records (``lowering``): ``direct`` (:func:`_lower_direct`),
    ``direct_out`` (:func:`_lower_direct_by_output`), ``implicit_gemm``
    (:func:`_lower_implicit_gemm`) or ``im2col`` (:func:`_lower_gemm`)."""
    x, dy = ctx.tensor_inputs
    if ctx.storage(x) is not None or ctx.storage(dy) is not None:
        raise LoweringError(f"{ctx.kname}: the weight gradient reads NCHW tensors only")
    lowering = node.attrs.get("lowering", "im2col")
    if lowering == "direct":
        return _lower_direct(ctx, node)
    if lowering == "direct_out":
        return _lower_direct_by_output(ctx, node)
    if lowering == "implicit_gemm":
        return _lower_implicit_gemm(ctx, node)
    return _lower_gemm(ctx, node)


def _lower_implicit_gemm(ctx, node) -> Step:
    """The GPU's weight gradient (``implicit_gemm_weight_grad_kernel``): x and dy read as
    they are; with the pixels in several ranges (``weight_grad_splits``), each range's partial
    gradient into scratch, added in order by ``split_sum_kernel``."""
    x, dy = ctx.tensor_inputs
    g = _weight_grad_geometry(node, [ctx.graph.node(x).type])
    splits = weight_grad_splits(g.K, g.Cg * g.R * g.S, g.P * g.Q, g.groups)
    kernel = implicit_gemm_weight_grad_kernel(
        comment="weight gradient: implicit GEMM over shared-memory tiles, summed over the "
                "batch; sizes are runtime arguments")
    compute, source_name, src = ctx.load_tasked(kernel, "weight_grad_implicit_gemm",
                                                "weight gradient kernel")
    partials = Arg("output") if splits == 1 else Arg("scratch", "wgrad_split")
    calls = [Call(compute, (Arg("value", x), Arg("value", dy), partials,
                            *_ints(g.C, g.H, g.W, g.K, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.pt,
                                   g.pl, g.dh, g.dw, g.groups, splits), Arg("batch")),
                  kernel.name)]
    scratch = {}
    if splits > 1:
        add = split_sum_kernel()
        add_fn, _, _ = ctx.load_tasked(add, "sum_splits", "partial sums")
        calls.append(Call(add_fn, (partials, Arg("output"), *_ints(splits, node.type.size)),
                          add.name))
        scratch["wgrad_split"] = splits * node.type.size  # per image: more than it needs
    return Step(node.id, ctx.step_name, ctx.step_ops, [x, dy], node.type.size, calls,
                scratch=scratch, lowering="implicit_gemm", sources={source_name: src},
                batched=False)


def _lower_direct(ctx, node) -> Step:
    """``pack_nchw_blocked`` packs x, padded, into blocks of the tile's lanes (the forward
    convolution's ``conv_in`` scratch), then ``conv_weight_grad_kernel`` reads it and dy as
    it is, and writes dw."""
    x, dy = ctx.tensor_inputs
    g = _weight_grad_geometry(node, [ctx.graph.node(x).type])
    rows, lanes = parse_weight_grad_tile(node.attrs["tile"])
    cgb = _direct_blocks(g, lanes)
    kernel = conv_weight_grad_kernel(
        "conv_weight_grad", rows, lanes,
        comment=f"weight gradient: direct over NCHW{lanes}c input, {rows} x {2 * lanes} "
                "register tile; sizes are runtime arguments")
    compute, source_name, src = ctx.load_tasked(kernel, f"weight_grad_{rows}x{2 * lanes}",
                                                "weight gradient kernel")
    xp, part = Arg("scratch", "conv_in"), Arg("scratch", "wgrad_part")
    calls = [
        Call(ctx.layout_kernel("pack_nchw_blocked"),
             (Arg("value", x), xp, Arg("batch"),
              *_ints(g.C, g.H, g.W, g.Hp, g.Wp, g.pt, g.pl, g.groups * cgb, lanes, g.Cg, cgb)),
             "pack_nchw_blocked"),
        Call(compute, (xp, Arg("value", dy), part, Arg("output"),
                       *_ints(g.groups, g.Kg, g.Cg, cgb, g.P, g.Q, g.Hp, g.Wp, g.R, g.S, g.sh,
                              g.sw, g.dh, g.dw), Arg("batch")), kernel.name),
    ]
    # one tile's partial sums per thread (scratch is sized per image: a few KB too many)
    scratch = {"conv_in": g.groups * cgb * lanes * g.Hp * g.Wp,
               "wgrad_part": ctx.threads * rows * 2 * lanes * g.R * g.S}
    return Step(node.id, ctx.step_name, ctx.step_ops, [x, dy], node.type.size, calls,
                scratch=scratch, lowering="direct", sources={source_name: src}, batched=False)


def _lower_direct_by_output(ctx, node) -> Step:
    """``pack_nchw_blocked`` packs dy into blocks of the tile's lanes (the forward
    convolution's ``conv_out`` scratch) and, in blocks of one channel, zero-pads x (its
    ``conv_in``); then ``conv_weight_grad_by_output_kernel`` writes dw."""
    x, dy = ctx.tensor_inputs
    g = _weight_grad_geometry(node, [ctx.graph.node(x).type])
    rows, lanes = parse_weight_grad_tile(node.attrs["tile"])
    kgb = 2 * ceil_div(g.Kg, 2 * lanes)
    kernel = conv_weight_grad_by_output_kernel(
        "conv_weight_grad_by_output", rows, lanes,
        comment=f"weight gradient: direct, lanes over output channels of NCHW{lanes}c dy, "
                f"{rows} taps x {2 * lanes} channels; sizes are runtime arguments")
    compute, source_name, src = ctx.load_tasked(
        kernel, f"weight_grad_out_{rows}x{2 * lanes}", "weight gradient kernel")
    xpad, dyb = Arg("scratch", "conv_in"), Arg("scratch", "conv_out")
    pack = ctx.layout_kernel("pack_nchw_blocked")
    calls = [
        Call(pack, (Arg("value", dy), dyb, Arg("batch"),
                    *_ints(g.K, g.P, g.Q, g.P, g.Q, 0, 0, g.groups * kgb, lanes, g.Kg, kgb)),
             "pack_nchw_blocked"),
        Call(pack, (Arg("value", x), xpad, Arg("batch"),
                    *_ints(g.C, g.H, g.W, g.Hp, g.Wp, g.pt, g.pl, g.C, 1, g.C, g.C)),
             "pack_nchw_blocked"),
        Call(compute, (xpad, dyb, Arg("scratch", "wgrad_part"), Arg("output"),
                       *_ints(g.groups, g.Kg, g.Cg, kgb, g.P, g.Q, g.Hp, g.Wp, g.R, g.S, g.sh,
                              g.sw, g.dh, g.dw), Arg("batch")), kernel.name),
    ]
    scratch = {"conv_in": g.C * g.Hp * g.Wp, "conv_out": g.groups * kgb * lanes * g.P * g.Q,
               "wgrad_part": ctx.threads * rows * 2 * lanes}
    return Step(node.id, ctx.step_name, ctx.step_ops, [x, dy], node.type.size, calls,
                scratch=scratch, lowering="direct_out", sources={source_name: src},
                batched=False)


def _lower_gemm(ctx, node) -> Step:
    """A GEMM per group, summed over the batch: ``dw[g] = sum_n dy_g[n] @ col_g[n]^T``, where
    ``dy_g[n]`` is the group's ``[K/g, P*Q]`` output gradient of image n (rows padded to the
    GEMM's 6-row tiles by ``pad_gemm_rows``) and ``col_g[n]`` its ``[C/g*R*S, P*Q]`` im2col
    matrix, written transposed in 16-column panels by the convolution's own ``im2col`` kernel
    (columns padded to 16); ``crop_gemm`` drops the padding into ``[K, C/g, R, S]``."""
    x, dy = ctx.tensor_inputs
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
