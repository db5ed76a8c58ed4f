"""Convolutions: Conv and ConvTranspose (2-D)."""

from __future__ import annotations

from typing import Any

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
    x, w, b = imp.dyn(node), imp.const(node, 1), imp.opt_const(node, 2)
    if w.ndim != 4:
        raise refuse(node, imp.opset, "only 2-D transposed convolutions are supported")
    need_rank(imp, node, x, 3, "C x H x W")
    a = node_attrs(node)
    g = int(a.get("group", 1))
    kernel = (int(w.shape[2]), int(w.shape[3]))
    stride, dilation = pair_attr(imp, node, a, "strides"), pair_attr(imp, node, a, "dilations")
    out_pad = pair_attr(imp, node, a, "output_padding", 0)
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto not in ("NOTSET", "", "VALID"):
        raise refuse(node, imp.opset, "output_shape and auto_pad SAME are not supported; "
                     "give explicit pads")
    pads = (0, 0, 0, 0) if auto == "VALID" else tuple(int(p) for p in a.get("pads", [0] * 4))
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
