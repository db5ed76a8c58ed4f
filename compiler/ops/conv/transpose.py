"""A transposed convolution in terms of convolutions: its output size (and the padding that
gives a requested one), its weight as the equivalent convolution's (flipped, transposed), the
zero-stuffed stride-1 convolution the direct lowering runs, and the output phases
``conv_transpose_as_phases`` splits it into."""

from __future__ import annotations

from typing import Any

import numpy as np

from .padding import split_padding


def transpose_out(size: int, k: int, s: int, d: int, before: int, after: int, op_: int) -> int:
    return (size - 1) * s - before - after + d * (k - 1) + op_ + 1


def transpose_pads_for(size: int, out: int, k: int, s: int, d: int, op_: int,
                       upper: bool) -> tuple[int, int, int]:
    """(before, after, output_padding) giving an output of length ``out`` (ONNX's
    ConvTranspose with ``output_shape`` or auto_pad SAME): the full output less ``out`` as
    padding, split as ``split_padding`` splits it; an ``out`` longer than the full output
    grows the output padding instead (the extra outputs at the end, as ONNX Runtime has
    them)."""
    total = transpose_out(size, k, s, d, 0, 0, op_) - out
    if total < 0:
        return (0, 0, op_ - total)
    return (*split_padding(total, upper), op_)


def transposed_as_conv_weight(w: np.ndarray, groups: int, rows: slice = slice(None),
                              cols: slice = slice(None)) -> np.ndarray:
    """A transposed convolution's weight ``[C, K/g, R, S]`` as the equivalent stride-1
    convolution's ``[K, C/g, R, S]``, flipped in space: ``wc[g*Kg + k, c, r, s] =
    w[g*Cg + c, k, R-1-r, S-1-s]``; only its taps ``rows`` x ``cols`` (one phase's filter).
    Ungrouped, a view of ``w`` (no copy: the packing that reads it makes the one copy, after
    every training update); grouped, a copy."""
    C, kg, R, S = w.shape
    cg = C // groups
    wc = w.reshape(groups, cg, kg, R, S).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    wc = wc[..., rows, cols]
    return wc.reshape(groups * kg, cg, *wc.shape[-2:])


def transpose_as_conv(attrs: dict, in_shape: tuple[int, ...]):
    """conv_transpose as a stride-1 convolution of the zero-stuffed, re-padded input with the
    flipped, transposed kernel: ``(conv attrs, stuffed shape, padding before, stuffed hw)``."""
    C, H, W = in_shape
    (R, S), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    t, l, b, r = attrs["pads"]
    oph, opw = attrs["output_padding"]
    before = (dh * (R - 1) - t, dw * (S - 1) - l)
    zh = (H - 1) * sh + 1 + before[0] + dh * (R - 1) - b + oph
    zw = (W - 1) * sw + 1 + before[1] + dw * (S - 1) - r + opw
    conv = {"out_channels": attrs["out_channels"], "kernel": (R, S), "stride": (1, 1),
            "pads": (0, 0, 0, 0), "dilation": (dh, dw), "groups": attrs["groups"],
            "bias": attrs["bias"]}
    return conv, (C, zh, zw), before, (zh, zw)


# -- a transposed convolution as stride-1 convolutions, one per output phase ------------------
#
# With stride s, output row o = s*a + i (phase i < s) receives exactly the taps r of the kernel
# with r = (i + top) mod s (mod s): r = r0 + s*m for m < M = ceil((R - r0) / s), reading input
# row h = a + e - m, e = (i + top) // s. So phase i is a stride-1 convolution of x with the
# flipped sub-kernel w[r0 + s*(M-1-m')] (m' < M), padded by M-1-e rows before and by what
# makes its output P = out / s rows after. No zero-stuffed input: exactly the transposed
# convolution's multiply-adds, where the stuffed stride-1 convolution does s^2 times as many.


def _phase_axis(size: int, out: int, kernel: int, stride: int, before: int,
                phase: int) -> tuple[int, int, int, int] | None:
    """One axis of one phase: (taps M, padding before, padding after, first tap of the
    flipped kernel); ``(0, 0, 0, 0)`` where no tap reaches the phase; None where a stride-1
    convolution would need negative padding (a crop)."""
    r0 = (phase + before) % stride
    taps = -(-(kernel - r0) // stride)
    if taps < 1:
        return 0, 0, 0, 0
    pad_before = taps - 1 - (phase + before) // stride
    pad_after = out // stride - 1 - size - pad_before + taps
    if pad_before < 0 or pad_after < 0:
        return None
    return taps, pad_before, pad_after, kernel - 1 - r0 - stride * (taps - 1)


def transposed_phases(attrs: dict[str, Any], in_shape: tuple[int, ...],
                      out_shape: tuple[int, ...]) -> list[dict[str, Any]] | str:
    """The ``s x s`` stride-1 convolutions whose outputs, interleaved (``depth_to_space`` of
    their concatenation in phase order, mode DCR), are the transposed convolution: per phase
    (row-major) its ``kernel``, ``pads`` (top, left, bottom, right) and ``start`` (the first
    row and column of the flipped weight, ``transposed_as_conv_weight``, taken every ``s``).
    With stride 1 that is one convolution, the flipped kernel padded by ``R - 1 - top``. A
    phase no tap reaches (``kernel`` None) is zero when there is no bias (a 1x1 stride-2
    transposed convolution: three of its four phases). A string says why not: a non-square
    stride, dilation, an output not a multiple of the stride, a phase that would crop, or
    one no tap reaches that holds the bias."""
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    if sh != sw:
        return "the stride is not square"
    if (dh, dw) != (1, 1):
        return "dilation"
    (R, S), (t, l, _, _) = attrs["kernel"], attrs["pads"]
    _, H, W = in_shape
    _, P, Q = out_shape
    if P % sh or Q % sw:
        return f"the output {P}x{Q} is not a multiple of the stride {sh}"
    phases = []
    for i in range(sh):
        for j in range(sw):
            rows = _phase_axis(H, P, R, sh, t, i)
            cols = _phase_axis(W, Q, S, sw, l, j)
            if (rows is not None and not rows[0]) or (cols is not None and not cols[0]):
                if attrs["bias"]:
                    return f"no tap reaches output phase ({i}, {j}), which holds the bias"
                phases.append({"kernel": None})
                continue
            if rows is None or cols is None:
                return f"output phase ({i}, {j}) is not a padded stride-1 convolution"
            phases.append({"kernel": (rows[0], cols[0]),
                           "pads": (rows[1], cols[1], rows[2], cols[2]),
                           "start": (rows[3], cols[3])})
    return phases
