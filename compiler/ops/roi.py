"""RoI pooling (seed 002, Fast R-CNN): each region of interest of a feature map pooled to a
fixed PH x PW grid of bins, so one head can read regions of any size.

Both take the map ``x`` (C x H x W) and the regions of the same image, ``rois`` [R, 4], two
corners (x1, y1, x2, y2) in image pixels; ``spatial_scale`` maps them onto the map (1/16 after
four stride-2 layers). The output is [R, C, PH, PW] per image.

- ``roi_maxpool(output, spatial_scale)``, ONNX's MaxRoiPool (Caffe's ROIPooling): the corners
  rounded (half away from zero) to map cells, the region at least one cell, each bin the
  window [floor(i h / PH), ceil((i + 1) h / PH)) (and the same across) offset by the region and
  clipped to the map; its largest value, 0 for a bin outside the map. The bin edges are
  computed in float32, as ONNX Runtime computes them, so windows agree at exact boundaries.
- ``roi_align(output, spatial_scale, sampling_ratio, coordinates)``, ONNX's RoiAlign (mode avg,
  Mask R-CNN): no rounding; each bin the mean of a grid of ``sampling_ratio`` x
  ``sampling_ratio`` samples (0: ceil(region / bins) per axis) at the centres of the grid's
  cells, each bilinearly interpolated (a sample past -1 or the far edge gives 0; one past the
  last cell reads it). ``coordinates=half_pixel`` (ONNX's default from opset 16) shifts the
  corners by half a pixel; ``output_half_pixel`` (opset 10) does not and makes a region at
  least 1 x 1. ONNX's max mode (the largest weighted corner) is not supported.

Gradients (``roi_pool_grad``): max pooling routes each bin's gradient to the bin's first
largest cell (row-major); RoI Align is linear in ``x``, so each bin's gradient divided by its
sample count goes to each sample's four cells by their bilinear weights. The regions get no
gradient (Fast R-CNN takes them as given, proposals or labels). Compiled kernels:
``compiler/kernels/roi.py``. Checked against ONNX Runtime's MaxRoiPool and RoiAlign and the
gradients against finite differences in tests/ops/test_roi.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels.common import Sizes
from ..kernels.roi import (
    roi_align_grad_kernel,
    roi_align_kernel,
    roi_maxpool_grad_kernel,
    roi_maxpool_kernel,
)
from ..types import TensorType
from . import (
    EPS32,
    EPS64,
    Arrays,
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ShapeError,
    as_choice,
    as_float,
    as_int,
    as_pair,
    exact_bound,
    no_macs,
    register,
)

COORDINATES = ("half_pixel", "output_half_pixel")


def _canonicalize(align: bool):
    def canon(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
        scale = as_float(attrs["spatial_scale"], "spatial_scale")
        if not scale > 0:
            raise AttrError(f"spatial_scale must be positive, got {scale:g}", "spatial_scale")
        out = {"output": as_pair(attrs["output"], "output"),
               "spatial_scale": float(np.float32(scale))}
        if align:
            out["sampling_ratio"] = as_int(attrs["sampling_ratio"], "sampling_ratio", 0)
            out["coordinates"] = as_choice(attrs["coordinates"], "coordinates", COORDINATES)
        return out
    return canon


def _infer(op: str):
    def infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        x, rois = in_types
        if x.rank != 3:
            raise ShapeError(f"{op} needs a channels x height x width map, got {x}")
        if rois.rank != 2 or rois.shape[1] != 4:
            raise ShapeError(f"{op} needs regions [R, 4] (x1, y1, x2, y2), got {rois}")
        return x.with_shape(rois.shape[0], x.channels, *attrs["output"])
    return infer


def c_round(v: np.ndarray) -> np.ndarray:
    """C's round: half away from zero (NumPy's rounds half to even)."""
    return np.where(v >= 0, np.floor(v + 0.5), -np.floor(0.5 - v))


def max_windows(box: np.ndarray, attrs: dict[str, Any], height: int, width: int
                ) -> list[list[tuple[int, int, int, int]]]:
    """The window (hs, he, ws, we) of every bin of one region, rows of bins."""
    scale = np.float32(attrs["spatial_scale"])
    x1, y1, x2, y2 = (int(v) for v in c_round(np.float64(np.float32(box) * scale)))
    ph, pw = attrs["output"]
    bin_h = np.float32(max(y2 - y1 + 1, 1)) / np.float32(ph)
    bin_w = np.float32(max(x2 - x1 + 1, 1)) / np.float32(pw)

    def edges(k: int, size: np.float32, start: int, limit: int) -> tuple[int, int]:
        lo = int(np.floor(np.float32(k) * size)) + start
        hi = int(np.ceil(np.float32(k + 1) * size)) + start
        return min(max(lo, 0), limit), min(max(hi, 0), limit)
    return [[edges(i, bin_h, y1, height) + edges(j, bin_w, x1, width) for j in range(pw)]
            for i in range(ph)]


def _max_reference(inputs: Arrays, attrs: dict[str, Any]) -> np.ndarray:
    x, rois = np.asarray(inputs[0], np.float64), np.asarray(inputs[1])
    n, c, h, w = x.shape
    out = np.zeros((n, rois.shape[1], c, *attrs["output"]))
    for image in range(n):
        for r, box in enumerate(rois[image]):
            for i, row in enumerate(max_windows(box, attrs, h, w)):
                for j, (hs, he, ws, we) in enumerate(row):
                    if he > hs and we > ws:
                        out[image, r, :, i, j] = x[image, :, hs:he, ws:we].max(axis=(1, 2))
    return out


def align_samples(box: np.ndarray, attrs: dict[str, Any], height: int, width: int
                  ) -> list[list[list[tuple[float, int, int]]]]:
    """RoI Align as the linear map it is: for every bin of one region, the (weight, row,
    column) of each map cell it reads, weights over the sample count included."""
    offset = 0.5 if attrs["coordinates"] == "half_pixel" else 0.0
    sx, sy, ex, ey = np.float64(np.float32(box)) * attrs["spatial_scale"] - offset
    rh, rw = ey - sy, ex - sx
    if attrs["coordinates"] != "half_pixel":
        rh, rw = max(rh, 1.0), max(rw, 1.0)
    ph, pw = attrs["output"]
    bh, bw = rh / ph, rw / pw
    ratio = attrs["sampling_ratio"]
    gh = ratio if ratio > 0 else int(np.ceil(rh / ph))
    gw = ratio if ratio > 0 else int(np.ceil(rw / pw))
    count = max(gh * gw, 1)

    def axis(v: float, size: int) -> tuple[int, int, float]:
        """The cells below and above a coordinate and its fraction towards the upper one."""
        v = max(v, 0.0)
        low = int(v)
        if low >= size - 1:
            return size - 1, size - 1, 0.0
        return low, low + 1, v - low

    bins = []
    for i in range(ph):
        row = []
        for j in range(pw):
            taps = []
            for iy in range(gh):
                y = sy + i * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    x = sx + j * bw + (ix + 0.5) * bw / gw
                    if y < -1.0 or y > height or x < -1.0 or x > width:
                        continue
                    (y0, y1, ly), (x0, x1, lx) = axis(y, height), axis(x, width)
                    taps += [((1 - ly) * (1 - lx) / count, y0, x0),
                             ((1 - ly) * lx / count, y0, x1),
                             (ly * (1 - lx) / count, y1, x0), (ly * lx / count, y1, x1)]
            row.append(taps)
        bins.append(row)
    return bins


def _align_reference(inputs: Arrays, attrs: dict[str, Any]) -> np.ndarray:
    x, rois = np.asarray(inputs[0], np.float64), np.asarray(inputs[1])
    n, c, h, w = x.shape
    out = np.zeros((n, rois.shape[1], c, *attrs["output"]))
    for image in range(n):
        for r, box in enumerate(rois[image]):
            for i, row in enumerate(align_samples(box, attrs, h, w)):
                for j, taps in enumerate(row):
                    for weight, yy, xx in taps:
                        out[image, r, :, i, j] += weight * x[image, :, yy, xx]
    return out


def _grad_reference(inputs: Arrays, attrs: dict[str, Any]) -> np.ndarray:
    x, rois = np.asarray(inputs[0], np.float64), np.asarray(inputs[1])
    dy = np.asarray(inputs[2], np.float64)
    n, c, h, w = x.shape
    dx = np.zeros_like(x)
    channels = np.arange(c)
    for image in range(n):
        for r, box in enumerate(rois[image]):
            if attrs["of"] == "roi_maxpool":
                for i, row in enumerate(max_windows(box, attrs, h, w)):
                    for j, (hs, he, ws, we) in enumerate(row):
                        if he > hs and we > ws:  # the first largest cell, row-major
                            flat = x[image, :, hs:he, ws:we].reshape(c, -1).argmax(axis=1)
                            rows, cols = hs + flat // (we - ws), ws + flat % (we - ws)
                            dx[image, channels, rows, cols] += dy[image, r, :, i, j]
            else:
                for i, row in enumerate(align_samples(box, attrs, h, w)):
                    for j, taps in enumerate(row):
                        for weight, yy, xx in taps:
                            dx[image, :, yy, xx] += weight * dy[image, r, :, i, j]
    return dx


def _align_bound(ctx: BoundCtx) -> np.ndarray:
    """Weights and sums in float64 from the float32 values read, rounded once at the store."""
    magnitude = ctx.reference([np.abs(ctx.inputs[0]), ctx.inputs[1]], ctx.attrs)
    return ctx.err_in + 2 * EPS32 * np.abs(ctx.out) + 64 * EPS64 * magnitude


def _grad_bound(ctx: BoundCtx) -> np.ndarray:
    """Each cell adds, in float32, the shares of every bin that reads it (at most every bin
    of every region, and every sample of RoI Align's): a float32 sum of non-negative terms'
    magnitudes."""
    x, rois, dy = ctx.inputs
    adds = rois.shape[1] * dy.shape[-1] * dy.shape[-2]
    if ctx.attrs["of"] == "roi_align":
        adds *= 4 * max((len(t) for b in rois.reshape(-1, 4) for row in
                         align_samples(b, ctx.attrs, *x.shape[2:]) for t in row), default=1)
    magnitude = ctx.reference([x, rois, np.abs(dy)], ctx.attrs)
    return ctx.err_in + (adds + 2) * EPS32 * magnitude


def _lower(kernel):
    def lower(ctx, node):
        sz = Sizes()
        x, rois = ctx.in_shapes[:2]
        k = kernel(ctx.kname, x, rois[0], node.attrs, ctx.comment, sz)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)
    return lower


def _lower_grad(ctx, node):
    kernel = roi_maxpool_grad_kernel if node.attrs["of"] == "roi_maxpool" else \
        roi_align_grad_kernel
    return _lower(kernel)(ctx, node)


def _gradient(d):
    """The map's gradient; the regions get none."""
    grad = d.add("roi_pool_grad", [d.input(0), d.input(1), d.dy],
                 {"of": d.node.op, **d.attrs}) if d.needs(0) else None
    return [grad, None]


_REGION = (Attr("output", "ints", doc="the bins per region: one number or (height, width)"),
           Attr("spatial_scale", "float", 1.0, doc="map cells per image pixel"))

register(OpDef(
    name="roi_maxpool", family="roi", signature=_REGION, canonicalize=_canonicalize(False),
    infer=_infer("roi_maxpool"), reference=_max_reference, macs=no_macs, arity=2,
    lower=_lower(roi_maxpool_kernel), error_bound=exact_bound(), gradient=_gradient,
    aliases=("roi_pool", "max_roi_pool"),
    doc="the largest value of each bin of each region of interest (Fast R-CNN)"))

register(OpDef(
    name="roi_align", family="roi",
    signature=_REGION + (Attr("sampling_ratio", "int", 0),
                         Attr("coordinates", "choice", "half_pixel", choices=COORDINATES)),
    canonicalize=_canonicalize(True), infer=_infer("roi_align"), reference=_align_reference,
    macs=no_macs, arity=2, lower=_lower(roi_align_kernel), error_bound=_align_bound,
    gradient=_gradient,
    doc="the mean of bilinear samples of each bin of each region of interest (Mask R-CNN)"))

register(OpDef(
    name="roi_pool_grad", family="roi", signature=(Attr("of", "any"),),
    infer=lambda ts, a: ts[0], reference=_grad_reference, macs=no_macs, arity=3,
    pass_made=True, backward=True, new_activations=False, lower=_lower_grad,
    error_bound=_grad_bound, doc="the map's gradient of roi_maxpool or roi_align `of`"))
