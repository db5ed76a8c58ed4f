"""Convolutions: Conv and ConvTranspose (2-D)."""

from __future__ import annotations

from typing import Any

from ....compiler.ops.conv.transpose import transpose_pads_for
from ..importer import Handler, Importer, need_rank, node_attrs, pair_attr, refuse, spatial_pads


def _conv(imp: Importer, node: Any, i: int) -> None:
    x, w, b = imp.dyn(node), imp.const(node, 1), imp.opt_const(node, 2)
    if w.ndim != 4:
        raise refuse(node, imp.opset, "only 2-D convolutions are supported")
    need_rank(imp, node, x, 3, "C x H x W")
    a = node_attrs(node)
    kernel = (int(w.shape[2]), int(w.shape[3]))
    stride, dilation = pair_attr(imp, node, a, "strides"), pair_attr(imp, node, a, "dilations")
    pads = spatial_pads(imp, node, a, x, kernel, stride, dilation)
    args = {"out_channels": int(w.shape[0]), "kernel": kernel, "stride": stride, "pad": pads,
            "dilation": dilation, "groups": int(a.get("group", 1)), "bias": b is not None}
    weights = {"weight": w} | ({"bias": b} if b is not None else {})
    imp.add(node, "conv", args, [x], weights)


def _conv_transpose(imp: Importer, node: Any, i: int) -> None:
    """ConvTranspose with explicit pads, or with ``output_shape`` or auto_pad SAME, whose
    pads (and output padding) ONNX derives from the output asked for: output_shape, else
    input x stride (``transpose_pads_for``, ONNX's formulas)."""
    x, w, b = imp.dyn(node), imp.const(node, 1), imp.opt_const(node, 2)
    if w.ndim != 4:
        raise refuse(node, imp.opset, "only 2-D transposed convolutions are supported")
    need_rank(imp, node, x, 3, "C x H x W")
    a = node_attrs(node)
    g = int(a.get("group", 1))
    kernel = (int(w.shape[2]), int(w.shape[3]))
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:
        raise refuse(node, imp.opset, f"kernel_shape {list(a['kernel_shape'])} is not the "
                     f"weight's {kernel[0]} x {kernel[1]}")
    stride, dilation = pair_attr(imp, node, a, "strides"), pair_attr(imp, node, a, "dilations")
    out_pad = pair_attr(imp, node, a, "output_padding", 0)
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise refuse(node, imp.opset, f"auto_pad {auto!r} is not an ONNX padding mode")
    in_hw = imp.shapes[x][1:3]
    if "output_shape" in a or auto.startswith("SAME"):
        wanted = list(a.get("output_shape", [n * s for n, s in zip(in_hw, stride)]))
        if len(wanted) != 2 or min(wanted) < 1:
            raise refuse(node, imp.opset, f"output_shape {wanted} must give a height and a "
                         "width (the batch and channels left out)")
        sides = [transpose_pads_for(n, o, k, s, d, p, upper=auto == "SAME_UPPER")
                 for n, o, k, s, d, p in zip(in_hw, wanted, kernel, stride, dilation, out_pad)]
        if auto.startswith("SAME") and any(p != op_ for (_, _, p), op_ in zip(sides, out_pad)):
            raise refuse(node, imp.opset, f"auto_pad {auto} with an output {wanted} larger "
                         "than the full one: ONNX's reference and ONNX Runtime place it "
                         "differently")
        pads = (sides[0][0], sides[1][0], sides[0][1], sides[1][1])
        out_pad = (sides[0][2], sides[1][2])
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(int(p) for p in a.get("pads", [0] * 4))
        if len(pads) != 4:
            raise refuse(node, imp.opset, "only 2-D windows are supported")
    args = {"out_channels": int(w.shape[1]) * g, "kernel": kernel, "stride": stride,
            "pad": pads, "output_padding": out_pad, "dilation": dilation, "groups": g,
            "bias": b is not None}
    weights = {"weight": w} | ({"bias": b} if b is not None else {})
    imp.add(node, "conv_transpose", args, [x], weights)


HANDLERS: dict[str, Handler] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
}
