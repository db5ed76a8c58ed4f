"""Upsampling by a scale factor: nearest neighbour or bilinear.

Nearest: out[i] = in[floor(i / scale)]. Bilinear with align_corners=false samples at
(i + 0.5) / scale - 0.5 clamped at 0 (PyTorch; ONNX Resize's pytorch_half_pixel); with
align_corners=true at i * (in - 1) / (out - 1).

ONNX mapping (checked against ONNX Runtime in tests/ops/test_ops_vs_onnxruntime.py): Resize with
scales [1, 1, sh, sw]; nearest = mode "nearest", coordinate_transformation_mode "asymmetric",
nearest_mode "floor"; bilinear = mode "linear" with "pytorch_half_pixel" or "align_corners".
One deliberate difference: when downsampling (scale < 1) to an output of length 1 without
align_corners, pytorch_half_pixel samples at 0, while we (like PyTorch's scale_factor path)
sample at 0.5 / scale - 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.pool import upsample_kernel
from ..types import TensorType
from . import (
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ShapeError,
    as_bool,
    as_choice,
    exact_bound,
    f64_sum_bound,
    no_macs,
    one_input,
    register,
)


def _canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    scale = attrs["scale"]
    scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    if len(scales) != 2 or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                   and s > 0 for s in scales):
        raise AttrError(f"scale must be a positive number or (height, width) pair, got {scale}",
                        "scale")
    mode = as_choice(attrs["mode"], "mode", ("nearest", "bilinear"))
    return {"scale": tuple(float(s) for s in scales), "mode": mode,
            "align_corners": as_bool(attrs["align_corners"], "align_corners")}


def _infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = in_types[0]
    if x.rank != 3:
        raise ShapeError(f"upsample needs a channels x height x width input, got {x}")
    h, w = (int(np.floor(d * s)) for d, s in zip(x.shape[1:], attrs["scale"]))
    if h < 1 or w < 1:
        raise ShapeError(f"upsample: scale {attrs['scale']} leaves no pixels of {x}")
    return x.with_shape(x.channels, h, w)


def _source_coords(n_in: int, n_out: int, scale: float, mode: str, align: bool):
    i = np.arange(n_out, dtype=np.float64)
    if mode == "nearest":
        return np.minimum(np.floor(i / scale), n_in - 1).astype(int), None, None
    if align:
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(i)
    else:
        src = np.maximum((i + 0.5) / scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def _reference(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    x = np.asarray(x, np.float64)
    h, w = x.shape[2:]
    oh, ow = int(np.floor(h * attrs["scale"][0])), int(np.floor(w * attrs["scale"][1]))
    mode, align = attrs["mode"], attrs["align_corners"]
    rl, rh, rf = _source_coords(h, oh, attrs["scale"][0], mode, align)
    cl, ch, cf = _source_coords(w, ow, attrs["scale"][1], mode, align)
    if mode == "nearest":
        return x[:, :, rl][:, :, :, cl]
    rows = x[:, :, rl] * (1 - rf)[:, None] + x[:, :, rh] * rf[:, None]
    return rows[:, :, :, cl] * (1 - cf) + rows[:, :, :, ch] * cf


_NEAREST, _BILINEAR = exact_bound(), f64_sum_bound(terms=lambda ctx: 4)


def _bound(ctx: BoundCtx):
    """Nearest: a copy (exact). Bilinear: four taps weighted in float64 with the reference's
    own coordinates (``kernels/pool.upsample_kernel``), rounded once at the store."""
    return (_NEAREST if ctx.attrs["mode"] == "nearest" else _BILINEAR)(ctx)


def _lower(ctx, node):

    k = upsample_kernel(ctx.kname, ctx.in_shapes[0], ctx.out_shape[1:], node.attrs, ctx.comment)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs)


register(OpDef(
    name="upsample", family="resize",
    signature=(Attr("scale", "ints", 2), Attr("mode", "choice", "nearest",
                                               choices=("nearest", "bilinear")),
               Attr("align_corners", "bool", False)),
    canonicalize=_canonicalize, infer=_infer, reference=one_input(_reference), macs=no_macs,
    lower=lambda ctx, node: _lower(ctx, node), error_bound=_bound,
    aliases=("resize",), doc="nearest or bilinear upsampling by a scale factor",
))
