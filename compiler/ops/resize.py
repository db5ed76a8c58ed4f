"""Resizing (ONNX's Resize): each channel's H x W plane sampled by nearest neighbour, bilinear
or bicubic interpolation, by a scale factor or to a size, with ONNX's coordinate
transformations, cubic coefficient, outside exclusion and antialiasing.

Per axis (height, width), output index i maps to a source coordinate x(i) in the input
(``coordinates``, ONNX's coordinate_transformation_mode), with ``scale`` the axis's scale
factor, ``n`` the input length and ``m`` the output length:

    half_pixel            (i + 1/2) / scale - 1/2
    half_pixel_symmetric  offset + (i + 1/2) / scale - 1/2,  offset = n/2 (1 - m / (n scale))
    pytorch_half_pixel    (i + 1/2) / scale - 1/2, or 0 where m = 1
    align_corners         i (n - 1) / (m - 1), or 0 where m = 1
    asymmetric            i / scale
    tf_half_pixel_for_nn  (i + 1/2) / scale
    tf_crop_and_resize    start (n - 1) + i (end - start)(n - 1) / (m - 1), or
                          (start + end)(n - 1) / 2 where m = 1; (start, end) from ``roi``, and
                          outputs whose x is outside [0, n - 1] are ``extrapolation``

Nearest reads input pixel round(x), rounded as ``rounding`` says (ONNX's nearest_mode: floor,
ceil, round_prefer_floor = half down, round_prefer_ceil = half up) and clamped to [0, n - 1].
Bilinear and bicubic weigh every integer position t by K(s (t - x)), normalised to sum 1, and
read the input at t clamped to [0, n - 1] (the edge repeats); with ``exclude_outside`` the
positions outside the input weigh 0 instead. K is the tent max(0, 1 - |d|) or Keys' cubic with
a = ``cubic_a`` (-0.75 as PyTorch, -0.5 as TensorFlow):

    K(d) = (a + 2)|d|^3 - (a + 3)|d|^2 + 1     for |d| <= 1
           a|d|^3 - 5a|d|^2 + 8a|d| - 4a        for 1 < |d| < 2, else 0

and s = min(scale, 1) with ``antialias`` (the filter stretched by 1 / scale when downsampling,
so every input pixel counts), else 1. Both axes are resampled independently.

The output is ``size`` where given (the scale is then size / input size), else
floor(input size x scale). Where ONNX's text leaves it open, m is that integer output length,
as ONNX Runtime and PyTorch compute it (ONNX's reference implementation takes the unrounded
n x scale for align_corners, tf_crop_and_resize and pytorch_half_pixel's test for one output;
the importer refuses the scales where the two differ); pytorch_half_pixel samples one output at
0 as ONNX's text says (its reference at -1/2, which bicubic and antialiasing tell apart); and
tf_crop_and_resize's output is floor(n x scale), as both compute it.

DSL defaults follow PyTorch's ``interpolate``: ``coordinates=pytorch`` is asymmetric for
nearest (out[i] = in[floor(i / scale)], with ``rounding=floor``) and half_pixel for bilinear and
bicubic, or align_corners with ``align_corners=true``. ONNX mapping (checked against ONNX
Runtime in tests/ops/test_resize.py): Resize with the same modes ("linear" is bilinear,
"cubic" bicubic) and attributes, scales [1, 1, sh, sw] or sizes [N, C, h, w].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..kernels.backward import upsample_grad_kernel
from ..kernels.common import Sizes
from ..kernels.pool import FilterAxis, upsample_kernel
from ..types import TensorType
from . import (
    EPS32,
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ShapeError,
    as_bool,
    as_choice,
    as_float,
    as_pair,
    f64_sum_bound,
    get_op,
    no_macs,
    one_input,
    register,
)

MODES = ("nearest", "bilinear", "bicubic")
COORDINATES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
ROUNDINGS = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
#: Half the width of each filter, in input pixels before antialiasing stretches it.
SUPPORT = {"bilinear": 1, "bicubic": 2}


def _scale_pair(value: Any) -> tuple[float, float]:
    scales = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(scales) != 2 or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                   and math.isfinite(s) and s > 0 for s in scales):
        raise AttrError(f"scale must be a positive number or (height, width) pair, got {value}",
                        "scale")
    return (float(scales[0]), float(scales[1]))


def _roi(value: Any) -> tuple[float, float, float, float]:
    if value is None:
        return (0.0, 0.0, 1.0, 1.0)
    if not isinstance(value, (tuple, list)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value):
        raise AttrError(f"roi takes four numbers (top, left, bottom, right: where the crop "
                        f"starts and ends, as fractions of the input), got {value}", "roi")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _coordinates(attrs: dict[str, Any], mode: str) -> str:
    """The ONNX coordinate transformation the attributes ask for (``pytorch``: as PyTorch's
    ``interpolate`` maps its ``align_corners`` flag)."""
    coords = as_choice(attrs["coordinates"], "coordinates", ("pytorch", *COORDINATES))
    align = as_bool(attrs["align_corners"], "align_corners")
    if coords != "pytorch":
        if align:
            raise AttrError(f"align_corners is PyTorch's flag, for coordinates=pytorch; with "
                            f"coordinates={coords} leave it out", "align_corners")
        return coords
    if align and mode == "nearest":
        raise AttrError("align_corners is for bilinear and bicubic (as in PyTorch); nearest "
                        "takes coordinates=align_corners", "align_corners")
    return "align_corners" if align else ("asymmetric" if mode == "nearest" else "half_pixel")


def _canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    x = in_types[0]
    if x.rank != 3:
        raise ShapeError(f"upsample needs a channels x height x width input, got {x}")
    mode = as_choice(attrs["mode"], "mode", MODES)
    coords = _coordinates(attrs, mode)
    size = None if attrs["size"] is None else as_pair(attrs["size"], "size")
    if attrs["scale"] is not None:
        scale = _scale_pair(attrs["scale"])
    elif size is not None:
        scale = (size[0] / x.height, size[1] / x.width)
    else:
        scale = (2.0, 2.0)
    if size is None:
        size = (math.floor(x.height * scale[0]), math.floor(x.width * scale[1]))
    antialias = as_bool(attrs["antialias"], "antialias")
    if antialias and mode == "nearest":
        raise AttrError("antialias is for bilinear and bicubic", "antialias")
    if attrs["roi"] is not None and coords != "tf_crop_and_resize":
        raise AttrError("roi is for coordinates=tf_crop_and_resize", "roi")
    return {"scale": scale, "size": size, "mode": mode, "coordinates": coords,
            "rounding": as_choice(attrs["rounding"], "rounding", ROUNDINGS),
            "cubic_a": as_float(attrs["cubic_a"], "cubic_a"),
            "exclude_outside": as_bool(attrs["exclude_outside"], "exclude_outside"),
            "antialias": antialias, "roi": _roi(attrs["roi"]),
            "extrapolation": as_float(attrs["extrapolation"], "extrapolation")}


def _infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = in_types[0]
    if x.rank != 3:
        raise ShapeError(f"upsample needs a channels x height x width input, got {x}")
    h, w = attrs["size"]
    if h < 1 or w < 1:
        raise ShapeError(f"upsample: scale {attrs['scale']} leaves no pixels of {x}")
    return x.with_shape(x.channels, h, w)


# -- the float64 reference: ONNX's formulas, one axis at a time --------------------------------

def source_coordinates(n_in: int, n_out: int, scale: float, coordinates: str,
                       roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """ONNX's x_original of each output index along one axis (the module docstring's table;
    ``roi`` is this axis's (start, end) for tf_crop_and_resize)."""
    i = np.arange(n_out, dtype=np.float64)
    if coordinates == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if coordinates == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / (n_in * scale))
        return offset + (i + 0.5) / scale - 0.5
    if coordinates == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if coordinates == "align_corners":
        return i * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    if coordinates == "asymmetric":
        return i / scale
    if coordinates == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if coordinates == "tf_crop_and_resize":
        start, end = roi
        if n_out == 1:
            return np.full(n_out, 0.5 * (start + end) * (n_in - 1))
        # start (n - 1) + i (end - start)(n - 1) / (m - 1), written so that the ends of the
        # region come out exact: whether they lie inside the input is then decided right
        return (start * (n_out - 1 - i) + end * i) * (n_in - 1) / (n_out - 1)
    raise ValueError(f"unknown coordinate transformation {coordinates!r}")


def nearest_index(x: np.ndarray, rounding: str) -> np.ndarray:
    """The input pixel nearest neighbour resizing reads at each coordinate (before clamping)."""
    if rounding == "floor":
        return np.floor(x)
    if rounding == "ceil":
        return np.ceil(x)
    if rounding == "round_prefer_floor":  # half down
        return np.ceil(x - 0.5)
    return np.floor(x + 0.5)  # round_prefer_ceil: half up


def _filter(d: np.ndarray, mode: str, a: float) -> np.ndarray:
    """The tent, or Keys' cubic with coefficient ``a`` (the module docstring's K)."""
    u = np.abs(d)
    if mode == "bilinear":
        return np.maximum(0.0, 1.0 - u)
    inner = ((a + 2) * u - (a + 3)) * u * u + 1
    outer = ((a * u - 5 * a) * u + 8 * a) * u - 4 * a
    return np.where(u <= 1, inner, np.where(u < 2, outer, 0.0))


def stretch(attrs: dict[str, Any], axis: int) -> float:
    """s of the filter K(s d) along an axis: min(scale, 1) when antialiasing, else 1."""
    return min(attrs["scale"][axis], 1.0) if attrs["antialias"] else 1.0


def axis_weights(n_in: int, n_out: int, axis: int,
                 attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(m x n matrix A, mask) for one axis (0 height, 1 width): output i is sum_t A[i, t] in[t]
    (then the other axis's), or ``extrapolation`` where ``mask[i]`` (tf_crop_and_resize)."""
    roi = attrs["roi"][axis], attrs["roi"][axis + 2]
    x = source_coordinates(n_in, n_out, attrs["scale"][axis], attrs["coordinates"], roi)
    rows = np.arange(n_out)
    a = np.zeros((n_out, n_in))
    if attrs["mode"] == "nearest":
        a[rows, np.clip(nearest_index(x, attrs["rounding"]), 0, n_in - 1).astype(int)] = 1.0
    else:
        s = stretch(attrs, axis)
        reach = math.ceil(SUPPORT[attrs["mode"]] / s) + 1  # past every non-zero weight
        t = np.floor(x).astype(int)[:, None] + np.arange(-reach, reach + 1)[None, :]
        w = _filter(s * (t - x[:, None]), attrs["mode"], attrs["cubic_a"])
        if attrs["exclude_outside"]:
            w = np.where((t >= 0) & (t < n_in), w, 0.0)
        total = w.sum(axis=1, keepdims=True)
        w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)  # all 0: output 0
        np.add.at(a, (np.repeat(rows, t.shape[1]), np.clip(t, 0, n_in - 1).reshape(-1)),
                  w.reshape(-1))
    outside = (x < 0) | (x > n_in - 1) if attrs["coordinates"] == "tf_crop_and_resize" \
        else np.zeros(n_out, bool)
    return a, outside


def _resample(x: np.ndarray, attrs: dict[str, Any], magnitude: bool = False) -> np.ndarray:
    """The reference (``magnitude``: with |weights| on |x|, the sum of |terms| of each output,
    and 0 where extrapolated)."""
    x = np.asarray(x, np.float64)
    (h, w), (oh, ow) = x.shape[2:], attrs["size"]
    ah, out_h = axis_weights(h, oh, 0, attrs)
    aw, out_w = axis_weights(w, ow, 1, attrs)
    if magnitude:
        ah, aw, x = np.abs(ah), np.abs(aw), np.abs(x)
    y = np.einsum("ph,nchw,qw->ncpq", ah, x, aw)
    outside = out_h[:, None] | out_w[None, :]
    return np.where(outside, 0.0 if magnitude else attrs["extrapolation"], y)


def _reference(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    return _resample(x, attrs)


def axis_taps(attrs: dict[str, Any], axis: int) -> int:
    """How many input positions one output reads along an axis (bilinear and bicubic): every t
    with s |t - x| < support, for any x."""
    return 2 * math.ceil(SUPPORT[attrs["mode"]] / stretch(attrs, axis))


def _magnitudes(inputs: Any, attrs: dict[str, Any]) -> np.ndarray:
    """sum |w| |x| of each output (0 where extrapolated)."""
    return _resample(inputs[0], attrs, magnitude=True)


_FILTERED = f64_sum_bound(terms=lambda ctx: axis_taps(ctx.attrs, 0) * axis_taps(ctx.attrs, 1),
                          extra=8, via=_magnitudes)


def _bound(ctx: BoundCtx):
    """Nearest: a copy (exact), and the extrapolation value rounded once to float32. Bilinear
    and bicubic: the weights and sums in float64 with the reference's own coordinates
    (computed in the same order), the K products summed in any order and divided by the
    weights' sums (8 roundings more), rounded once at the store."""
    if ctx.attrs["mode"] != "nearest":
        return _FILTERED(ctx)
    copied = _magnitudes([np.ones_like(ctx.inputs[0])], ctx.attrs)  # 0: extrapolated
    return ctx.err_in + EPS32 * np.abs(ctx.out) * (copied == 0)


def _lower(ctx, node):
    a = node.attrs
    axes = None
    if a["mode"] != "nearest":
        axes = tuple(FilterAxis(axis_taps(a, k), stretch(a, k)) for k in (0, 1))
    sz = Sizes()
    k = upsample_kernel(ctx.kname, ctx.in_shapes[0], ctx.out_shape[1:], a, axes, ctx.comment,
                        sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(
    name="upsample", family="resize",
    signature=(Attr("scale", "ints", None, doc="a number or (height, width); default 2, or "
                    "size / input size where size is given"),
               Attr("mode", "choice", "nearest", choices=MODES),
               Attr("align_corners", "bool", False),
               Attr("coordinates", "choice", "pytorch", choices=("pytorch", *COORDINATES)),
               Attr("rounding", "choice", "floor", choices=ROUNDINGS),
               Attr("cubic_a", "float", -0.75),
               Attr("exclude_outside", "bool", False),
               Attr("antialias", "bool", False),
               Attr("size", "ints", None, doc="output (height, width)"),
               Attr("roi", "any", None, doc="(top, left, bottom, right) of the crop"),
               Attr("extrapolation", "float", 0.0)),
    canonicalize=_canonicalize, infer=_infer, reference=one_input(_reference), macs=no_macs,
    lower=lambda ctx, node: _lower(ctx, node), error_bound=_bound,
    aliases=("resize",), doc="nearest, bilinear or bicubic resizing by a scale factor or to a "
                             "size (ONNX's Resize)",
))


# -- gradient: every mode is linear in x, y = A_h x A_w^T (extrapolated outputs constant), so
#    dx = A_h^T dy A_w with dy zero where the output was extrapolated (it depends on no input)

def _gradient(d):
    x = d.type(d.input(0))
    return [d.add("upsample_grad", [d.dy], {**d.attrs, "in_size": (x.height, x.width)})]


def _axis_matrices(attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A_h, A_w, outside) of the forward resize an ``upsample_grad`` node differentiates."""
    (h, w), (oh, ow) = attrs["in_size"], attrs["size"]
    ah, out_h = axis_weights(h, oh, 0, attrs)
    aw, out_w = axis_weights(w, ow, 1, attrs)
    return ah, aw, out_h[:, None] | out_w[None, :]


def _grad_reference(dy: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    ah, aw, outside = _axis_matrices(attrs)
    dy = np.where(outside, 0.0, np.asarray(dy, np.float64))
    return np.einsum("ph,ncpq,qw->nchw", ah, dy, aw)


def _grad_bound(ctx: BoundCtx) -> np.ndarray:
    """Each input pixel sums the weighted gradients of the outputs that read it (K terms: the
    outputs reading its row times those reading its column), in float32: ``sum_bound``'s
    analysis over the sum of |terms|, the weights computed in float64 and rounded (2 more)."""
    ah, aw, outside = _axis_matrices(ctx.attrs)
    k = int((ah != 0).sum(axis=0).max()) * int((aw != 0).sum(axis=0).max())
    dy = np.where(outside, 0.0, np.abs(ctx.inputs[0]))
    return ctx.err_in + (k + 2) * EPS32 * np.einsum("ph,ncpq,qw->nchw", np.abs(ah), dy,
                                                    np.abs(aw))


def _transposed_taps(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each input index i of an axis matrix ``a`` [outputs, inputs]: the outputs reading
    it and their weights, as [inputs, taps] tables (zero weights pad the shorter lists)."""
    taps = max(1, int((a != 0).sum(axis=0).max()))
    rows = np.zeros((a.shape[1], taps))
    weights = np.zeros((a.shape[1], taps))
    for i in range(a.shape[1]):
        (readers,) = np.nonzero(a[:, i])
        rows[i, :len(readers)] = readers
        weights[i, :len(readers)] = a[readers, i]
    return rows, weights


def _lower_grad(ctx, node):
    """The adjoint as tables of the forward's axis weights (``axis_weights``; the rows and
    columns of extrapolated outputs zeroed: they read no input), packed as constants."""
    (h, w), (oh, ow) = node.attrs["in_size"], node.attrs["size"]
    ah, outside_h = axis_weights(h, oh, 0, node.attrs)
    aw, outside_w = axis_weights(w, ow, 1, node.attrs)
    ah, aw = np.where(outside_h[:, None], 0.0, ah), np.where(outside_w[:, None], 0.0, aw)
    (hrow, hw), (wcol, ww) = _transposed_taps(ah), _transposed_taps(aw)
    sz = Sizes()
    k = upsample_grad_kernel(ctx.kname, ctx.in_shapes[0], (h, w), (hrow.shape[1], wcol.shape[1]),
                             ctx.comment, sz)
    tables = {"c_hrow": hrow, "c_hw": hw, "c_wcol": wcol, "c_ww": ww}
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values,
                           pack=lambda values: tables)


get_op("upsample").gradient = _gradient

register(OpDef(
    name="upsample_grad", family="resize", signature=(Attr("in_size", "ints"),),
    infer=lambda ts, a: ts[0].with_shape(ts[0].channels, *a["in_size"]), lower=_lower_grad,
    reference=one_input(_grad_reference), macs=no_macs, pass_made=True, backward=True,
    new_activations=False, error_bound=_grad_bound,
    doc="the input gradient of upsample (its attributes, and the input's size in_size): "
        "each output's gradient spread back over the input pixels it read, by their weights"))
