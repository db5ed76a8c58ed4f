"""Resizing: Resize and Upsample, imported only where ONNX's coordinate mapping picks the same
pixels (nearest) or samples the same points (linear) as cnnc's upsample."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ....compiler.ops.resize import _source_coords
from ..importer import Handler, Importer, axis_in_range, need_rank, node_attrs, refuse

MAX_SIDE = 1 << 24  # pixels per side of a resized image (the importer checks index maps)


def _onnx_nearest(n_in: int, n_out: int, scale: float, coord: str, rounding: str) -> np.ndarray:
    """ONNX Resize's nearest source index for each output index (the spec's formulas)."""
    i = np.arange(n_out, dtype=np.float64)
    if coord == "asymmetric":
        src = i / scale
    elif coord in ("half_pixel", "pytorch_half_pixel"):
        src = (i + 0.5) / scale - 0.5
        if coord == "pytorch_half_pixel" and n_out == 1:
            src = np.zeros_like(i)
    elif coord == "align_corners":
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(i)
    else:  # tf_half_pixel_for_nn
        src = (i + 0.5) / scale
    if rounding == "floor":
        idx = np.floor(src)
    elif rounding == "ceil":
        idx = np.ceil(src)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(src + 0.5)
    else:  # round_prefer_floor
        idx = np.ceil(src - 0.5)
    return np.clip(idx, 0, n_in - 1).astype(int)


def _onnx_linear(n_in: int, n_out: int, scale: float, coord: str,
                 from_scales: bool) -> np.ndarray:
    """ONNX Resize's linear source coordinate for each output index (the spec's formulas;
    with scales given, align_corners divides by the unrounded length in * scale)."""
    i = np.arange(n_out, dtype=np.float64)
    if coord == "align_corners":
        length = n_in * scale if from_scales else n_out
        return i * (n_in - 1) / (length - 1) if length != 1 else np.zeros_like(i)
    if coord == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(i)
    if coord == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if coord == "asymmetric":
        return i / scale
    return np.full(n_out, np.nan)  # other modes: never equal to cnnc's


def _resize(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    need_rank(imp, node, x, 3, "C x H x W")
    a = node_attrs(node)
    full = (1, *imp.shapes[x])
    mode = a.get("mode", "nearest")
    if node.op_type == "Upsample":
        coord, rounding = "asymmetric", "floor"
        scales = a.get("scales") if imp.opset < 9 else imp.const(node, 1)
        sizes = None
    else:
        if imp.opset < 11:
            coord, rounding = "asymmetric", "floor"
            scales, sizes = imp.const(node, 1), None
        else:
            coord = a.get("coordinate_transformation_mode", "half_pixel")
            rounding = a.get("nearest_mode", "round_prefer_floor")
            scales, sizes = imp.opt_const(node, 2), imp.opt_const(node, 3)
        axes = a.get("axes")
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise refuse(node, imp.opset, "keep_aspect_ratio_policy is not supported")
        for what, value in (("scales", scales), ("sizes", sizes)):
            if value is not None and value.size and (
                    value.ndim != 1 or len(value) != (4 if axes is None else len(axes))):
                raise refuse(node, imp.opset, f"{what} of shape {list(value.shape)}: one value "
                             f"per axis, {4 if axes is None else len(axes)}, is needed")
        if axes is not None:
            axes = [axis_in_range(imp, node, ax, 4) for ax in axes]
            if scales is not None and scales.size:
                s = np.ones(4)
                s[axes] = scales
                scales = s
            if sizes is not None and sizes.size:
                z = np.array(full, np.int64)
                z[axes] = sizes
                sizes = z
    if scales is not None and np.size(scales):
        scales = [float(s) for s in np.asarray(scales, np.float32).reshape(-1)]
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise refuse(node, imp.opset, f"scales {scales} must be positive numbers")
        out = [int(np.floor(d * s)) for d, s in zip(full, scales)]
    elif sizes is not None and np.size(sizes):
        out = [int(s) for s in sizes]
        scales = [o / d for o, d in zip(out, full)]
    else:
        raise refuse(node, imp.opset, "needs constant scales or sizes")
    if any(o > MAX_SIDE or o < 1 for o in out[2:]):
        raise refuse(node, imp.opset, f"an output of {out[2]} x {out[3]} pixels (1 to "
                     f"{MAX_SIDE:,} per side)")
    # (A constant `sizes` holds some batch size: only the channels must stay.)
    if len(scales) != 4 or out[1] != full[1] or (sizes is None and out[0] != 1):
        raise refuse(node, imp.opset, "only height and width may be resized")
    if mode == "cubic":
        raise refuse(node, imp.opset, "cubic interpolation is not supported")
    if a.get("antialias", 0) and min(scales[2:]) < 1:
        raise refuse(node, imp.opset, "antialiased downsampling is not supported")
    scale = (scales[2], scales[3])
    if mode == "nearest":
        for axis in (2, 3):
            cnnc = np.minimum(np.floor(np.arange(out[axis]) / scales[axis]),
                              full[axis] - 1).astype(int)
            if not np.array_equal(cnnc, _onnx_nearest(full[axis], out[axis], scales[axis],
                                                      coord, rounding)):
                raise refuse(node, imp.opset, f"nearest resizing with "
                             f"coordinate_transformation_mode={coord} and nearest_mode="
                             f"{rounding} picks other pixels than cnnc's floor(i / scale) "
                             f"for scale {scales[axis]:g}")
        args: dict[str, Any] = {"scale": scale}
    else:
        align = None
        for candidate in (coord == "align_corners", coord != "align_corners"):
            if all(np.allclose(
                    np.clip(_onnx_linear(full[ax], out[ax], scales[ax], coord, sizes is None),
                            0, full[ax] - 1),
                    np.clip(sum(_source_coords(full[ax], out[ax], scales[ax], "bilinear",
                                               candidate)[::2]), 0, full[ax] - 1),
                    atol=1e-6) for ax in (2, 3)):
                align = candidate
                break
        if align is None:
            raise refuse(node, imp.opset, f"linear resizing with coordinate_transformation_"
                         f"mode={coord} samples other points than cnnc's bilinear upsample "
                         f"for scales {scales[2]:g}, {scales[3]:g}")
        args = {"scale": scale, "mode": "bilinear", "align_corners": align}
    layer = imp.add(node, "upsample", args, [x])
    if list(imp.shapes[layer.output][1:]) != out[2:]:
        raise refuse(node, imp.opset, f"output size {out[2:]} is not floor(input size x "
                     "scale) as cnnc computes it")


HANDLERS: dict[str, Handler] = {
    "Resize": _resize,
    "Upsample": _resize,
}
