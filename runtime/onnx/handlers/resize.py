"""Resizing: Resize and Upsample as cnnc's upsample, which takes ONNX's modes, coordinate
transformations and filters (``compiler/ops/resize.py``); refused where the batch or channels
would be resized, and where ONNX's reference and ONNX Runtime disagree on what a node means."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ....compiler.ops.resize import COORDINATES, ROUNDINGS
from ..importer import (
    Handler,
    Importer,
    axis_in_range,
    f32_literal,
    need_rank,
    node_attrs,
    refuse,
)

MAX_SIDE = 1 << 24  # pixels per side of a resized image (the importer checks index maps)
MODES = {"nearest": "nearest", "linear": "bilinear", "cubic": "bicubic"}


def _per_axis(imp: Importer, node: Any, what: str, value: np.ndarray | None,
              axes: list[int] | None, full: list[float]) -> list[float] | None:
    """A constant ``scales`` or ``sizes`` (None where absent or empty) as one value per axis
    of the N x C x H x W tensor: ``full`` where ``axes`` leaves an axis out."""
    if value is None or not value.size:
        return None
    count = 4 if axes is None else len(axes)
    if value.ndim != 1 or len(value) != count:
        raise refuse(node, imp.opset, f"{what} of shape {list(value.shape)}: one value per "
                     f"axis, {count}, is needed")
    out = list(full)
    for k, v in zip(range(4) if axes is None else axes, value.tolist()):
        out[k] = v
    return out


def _roi(imp: Importer, node: Any, axes: list[int] | None) -> tuple[float, ...]:
    """tf_crop_and_resize's region of height and width, (top, left, bottom, right) as
    fractions of the input; the batch and channels must be kept whole."""
    value = imp.opt_const(node, 1)
    if value is None or not value.size:
        raise refuse(node, imp.opset, "coordinate_transformation_mode tf_crop_and_resize needs "
                     "a constant roi")
    count = 4 if axes is None else len(axes)
    if value.ndim != 1 or len(value) != 2 * count:
        raise refuse(node, imp.opset, f"roi of shape {list(value.shape)}: a start and an end "
                     f"per axis, {2 * count} values, are needed")
    starts, ends = [0.0] * 4, [1.0] * 4
    for k, s, e in zip(range(4) if axes is None else axes, value[:count].tolist(),
                       value[count:].tolist()):
        starts[k], ends[k] = float(np.float32(s)), float(np.float32(e))
    if not all(math.isfinite(v) for v in starts + ends):
        raise refuse(node, imp.opset, f"roi {value.tolist()} must be finite")
    if starts[:2] != [0.0, 0.0] or ends[:2] != [1.0, 1.0]:
        raise refuse(node, imp.opset, "roi crops the batch or channels; only height and width "
                     "may be cropped")
    return (starts[2], starts[3], ends[2], ends[3])


def _resize(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    need_rank(imp, node, x, 3, "C x H x W")
    a = node_attrs(node)
    full = [1, *imp.shapes[x]]  # (the batch stands as 1: only H and W may change)
    mode = a.get("mode", "nearest")
    if mode not in MODES:
        raise refuse(node, imp.opset, f"mode {mode!r} is not an ONNX resize mode")
    axes = a.get("axes")
    if axes is not None:
        axes = [axis_in_range(imp, node, ax, 4) for ax in axes]
    if node.op_type == "Upsample" or imp.opset < 11:
        # Upsample and Resize-10 sample at i / scale: nearest takes floor (ONNX Runtime
        # rounds up where Resize-10 shrinks: refused below), linear reads the two around.
        if mode == "cubic":
            raise refuse(node, imp.opset, "cubic resizing needs opset 11")
        coords, rounding = "asymmetric", "floor"
        given = a.get("scales") if node.op_type == "Upsample" and imp.opset < 9 \
            else imp.const(node, 1)
        scales = None if given is None else \
            _per_axis(imp, node, "scales", np.asarray(given, np.float64), None, [1.0] * 4)
        sizes = None
    else:
        coords = a.get("coordinate_transformation_mode", "half_pixel")
        rounding = a.get("nearest_mode", "round_prefer_floor")
        if coords not in COORDINATES:
            raise refuse(node, imp.opset, f"coordinate_transformation_mode {coords!r} is not "
                         "an ONNX one")
        if rounding not in ROUNDINGS:
            raise refuse(node, imp.opset, f"nearest_mode {rounding!r} is not an ONNX one")
        scales = _per_axis(imp, node, "scales", imp.opt_const(node, 2), axes, [1.0] * 4)
        sizes = _per_axis(imp, node, "sizes", imp.opt_const(node, 3), axes, full)
    args: dict[str, Any] = {}
    if scales is not None:
        scales = [float(np.float32(s)) for s in scales]
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise refuse(node, imp.opset, f"scales {scales} must be positive numbers")
        out = [math.floor(d * s) for d, s in zip(full, scales)]
        args["scale"] = (scales[2], scales[3])
    elif sizes is not None:
        out = [int(s) for s in sizes]
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise refuse(node, imp.opset, f"keep_aspect_ratio_policy {policy!r} is not an "
                             "ONNX one")
            if axes is None or sorted(axes) != [2, 3]:
                raise refuse(node, imp.opset, f"keep_aspect_ratio_policy {policy} over the "
                             "batch or channel axes would resize them; only height and width "
                             "may be")
            ratios = [out[2] / full[2], out[3] / full[3]]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            out[2:] = [int(scale * d + 0.5) for d in full[2:]]  # ONNX's round half up
            args["scale"] = (scale, scale)
        args["size"] = (out[2], out[3])
    else:
        raise refuse(node, imp.opset, "needs constant scales or sizes")
    # (A constant `sizes` holds some batch size: only the channels must stay.)
    if out[1] != full[1] or (sizes is None and out[0] != 1):
        raise refuse(node, imp.opset, "only height and width may be resized")
    if any(o > MAX_SIDE or o < 1 for o in out[2:]):
        raise refuse(node, imp.opset, f"an output of {out[2]} x {out[3]} pixels (1 to "
                     f"{MAX_SIDE:,} per side)")
    if node.op_type == "Resize" and imp.opset < 11 and mode == "nearest" and \
            (out[2] < full[2] or out[3] < full[3]):
        raise refuse(node, imp.opset, "nearest downsampling before opset 11 (ONNX leaves its "
                     "rounding open; ONNX Runtime rounds up)")
    for ax, scale in zip((2, 3), args.get("scale", ())):
        # Given a scale, ONNX's reference takes the unrounded length in x scale where ONNX
        # Runtime and PyTorch take the output's: align_corners and tf_crop_and_resize divide
        # by it less 1, pytorch_half_pixel tells a single output by it.
        if full[ax] * scale != out[ax] and (
                coords == "tf_crop_and_resize" or coords == "align_corners" and out[ax] > 1
                or coords == "pytorch_half_pixel" and out[ax] == 1):
            raise refuse(node, imp.opset, f"{coords} with a scale whose output length "
                         f"{full[ax]} x {scale:g} is not whole: ONNX's reference and ONNX "
                         "Runtime place the samples differently; give sizes")
    if mode == "nearest" and a.get("antialias", 0):
        raise refuse(node, imp.opset, "antialias is defined for linear and cubic modes only")
    args["mode"] = MODES[mode]
    args["coordinates"] = coords
    if mode == "nearest":
        args["rounding"] = rounding
    else:
        args["cubic_a"] = float(np.float32(a.get("cubic_coeff_a", -0.75)))
        args["exclude_outside"] = bool(a.get("exclude_outside", 0))
        args["antialias"] = bool(a.get("antialias", 0))
    if coords == "tf_crop_and_resize":
        args["roi"] = _roi(imp, node, axes)
        args["extrapolation"] = f32_literal(a.get("extrapolation_value", 0.0))
    imp.add(node, "upsample", args, [x])


HANDLERS: dict[str, Handler] = {
    "Resize": _resize,
    "Upsample": _resize,
}
