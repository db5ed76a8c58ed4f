"""Convolution and transposed convolution: everything about the primitive, in this package.

- here: the attribute schemas, shape rules, float64 references, accounting, error bounds,
  layout rules and the registrations (with ``stack_filters`` and ``phase_filter``, the
  derived parameters of the passes that merge and split convolutions);
- ``padding``: the DSL's padding forms and ``same`` (written once; the ONNX importer uses it);
- ``transpose``: a transposed convolution as convolutions (stuffed, phases, flipped weights);
- ``algorithms``: one object per algorithm (direct, channel-wise, im2col, Winograd F(4x4) and
  F(2x2)): shapes it takes, cost, blocked layouts, buffer sizes, weight packing, kernels and
  their size arguments, error bound;
- ``lowering``: the rule that turns a node's recorded algorithm into plan steps.

Convolution is cross-correlation, as in every framework: out[k, p, q] = sum over c, r, s of
x[c, p*sh + r*dh - top, q*sw + s*dw - left] * w[k, c, r, s]. Padding is per side, canonically
(top, left, bottom, right) as in ONNX. The textbook seed (004, eq. 6.17) writes TOTAL padding p:
its "p" is our top + bottom. `same` pads so that out = ceil(in / stride), putting the odd extra
row/column at the bottom/right (TensorFlow's and ONNX's SAME_UPPER).

ONNX mapping (checked against ONNX Runtime in tests/ops/test_ops_vs_onnxruntime.py):
- conv = Conv(kernel_shape, strides, pads=[top, left, bottom, right] (the same order),
  dilations, group); weight K x C/groups x R x S. `pad=same` = auto_pad SAME_UPPER.
- conv_transpose = ConvTranspose with the same attributes plus output_padding; weight
  C x K/groups x R x S. output_padding must be smaller than the stride OR the dilation
  (PyTorch, ONNX spec); ONNX Runtime accepts only smaller than the stride.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ...decisions import own_input_count
from ...kernels.conv_geometry import ConvGeometry
from ...kernels.gpu_conv import GemmTile
from ...kernels.tiles import TILE_8, DirectTile
from ...types import BLOCKED, PLAIN, TensorType, in_every_blocked_layout, spatial_out
from .. import (
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ParamSpec,
    ShapeError,
    as_bool,
    as_int,
    as_pair,
    own_input_types,
    register,
    require_rank,
    sum_bound,
)
from .algorithms import (
    ALGORITHMS,
    DIRECT,
    ConvAlgorithm,
    by_name,
    geometry,
    kernel_lanes,
    node_geometry,
)
from .gradient import (
    WEIGHT_GRAD_ALGORITHMS,
    conv_gradient,
    conv_transpose_gradient,
    lower_weight_grad,
    weight_grad_bound,
    weight_grad_infer,
    weight_grad_macs,
    weight_grad_reference,
)
from .lowering import lower_conv, pack_conv_weights
from .padding import PAD_WORDS, pad_nchw, resolve_pads, window_check
from .transpose import (
    transpose_out,
    transposed_as_conv_weight,
    transposed_phases,
)

__all__ = ["PAD_WORDS", "resolve_pads", "window_check", "pad_nchw", "transposed_phases",
           "transposed_as_conv_weight", "geometry", "lower_conv", "ALGORITHMS"]


def _common(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {
        "out_channels": as_int(attrs["out_channels"], "out_channels", 1),
        "kernel": as_pair(attrs["kernel"], "kernel"),
        "stride": as_pair(attrs["stride"], "stride"),
        "dilation": as_pair(attrs["dilation"], "dilation"),
        "groups": as_int(attrs["groups"], "groups", 1),
    }
    bias = attrs["bias"]
    out["bias"] = True if isinstance(bias, np.ndarray) else as_bool(bias, "bias")
    return out


def _check_groups(c: int, attrs: dict[str, Any], op: str) -> None:
    g, k = attrs["groups"], attrs["out_channels"]
    if c % g:
        raise ShapeError(f"{op}: {c} input channels are not divisible by groups={g}")
    if k % g:
        raise ShapeError(f"{op}: {k} output channels are not divisible by groups={g}")


# -- conv -------------------------------------------------------------------------------------

def conv_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    x = in_types[0]
    require_rank(x, 3, "conv")
    out = _common(attrs)
    out["pads"] = resolve_pads(attrs["pad"], out["kernel"], out["stride"], out["dilation"],
                               (x.height, x.width))
    return out


def conv_params(attrs: dict[str, Any], in_types: list[TensorType]) -> list[ParamSpec]:
    c = in_types[0].channels
    _check_groups(c, attrs, "conv")
    k, g, (r, s) = attrs["out_channels"], attrs["groups"], attrs["kernel"]
    specs = [ParamSpec("weight", (k, c // g, r, s), "auto", fan_in=c // g * r * s,
                       fan_out=k // g * r * s)]
    if attrs["bias"]:
        specs.append(ParamSpec("bias", (k,), "zeros"))
    return specs


def conv_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = in_types[0]
    require_rank(x, 3, "conv")
    _check_groups(x.channels, attrs, "conv")
    k, g = attrs["out_channels"], attrs["groups"]
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    t, l, b, rt = attrs["pads"]
    window_check("conv", (x.height, x.width), attrs["pads"], (r, s), (dh, dw))
    if len(in_types) > 1:
        expected = (k, x.channels // g, r, s)
        if in_types[1].shape != expected:
            raise ShapeError(f"conv: weight has shape {in_types[1]}, expected "
                             f"{'x'.join(map(str, expected))}")
    p = spatial_out(x.height, r, sh, t, b, dh)
    q = spatial_out(x.width, s, sw, l, rt, dw)
    return x.with_shape(k, p, q)


def conv_reference(inputs, attrs: dict[str, Any]) -> np.ndarray:
    """Direct float64 cross-correlation, one (r, s) tap at a time, all groups at once."""
    x = np.asarray(inputs[0], np.float64)
    w = np.asarray(inputs[1], np.float64)
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    g = attrs["groups"]
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    t, l, b, rt = attrs["pads"]
    p = spatial_out(h, r, sh, t, b, dh)
    q = spatial_out(wd, s, sw, l, rt, dw)
    # Groups become an axis of their own: x -> [n, g, C/g, ...], w -> [g, K/g, C/g, r, s].
    xp = pad_nchw(x, attrs["pads"]).reshape(n, g, cg, h + t + b, wd + l + rt)
    wg = w.reshape(g, k // g, cg, r, s)
    out = np.zeros((n, g, k // g, p, q))
    for i in range(r):
        for j in range(s):
            patch = xp[:, :, :, i * dh: i * dh + sh * (p - 1) + 1: sh,
                       j * dw: j * dw + sw * (q - 1) + 1: sw]
            out += np.einsum("ngcpq,gkc->ngkpq", patch, wg[:, :, :, i, j])
    out = out.reshape(n, k, p, q)
    if len(inputs) > 2:
        out += np.asarray(inputs[2], np.float64)[None, :, None, None]
    return out


def conv_bound(ctx: BoundCtx) -> np.ndarray:
    """The error bound of the algorithm the node records (``ConvAlgorithm.error_bound``):
    the direct sum's where none is recorded (the reference graph, -O0 before selection)."""
    algorithm = by_name(ctx.lowering) if ctx.lowering is not None else DIRECT
    return algorithm.error_bound(ctx)


def conv_macs(in_types: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> int:
    r, s = attrs["kernel"]
    return out.size * (in_types[0].channels // attrs["groups"]) * r * s


_CONV_SIGNATURE = (
    Attr("out_channels", "int", doc="number of output channels (filters)"),
    Attr("kernel", "ints", doc="window height and width: an int or (height, width)"),
    Attr("stride", "ints", 1),
    Attr("pad", "pads", 0, choices=PAD_WORDS),
    Attr("dilation", "ints", 1),
    Attr("groups", "int", 1),
    Attr("bias", "bool", True),
    Attr("weights", "tensor", None, doc="literal (fixed) weights, K x C/groups x R x S"),
)

# -- derived parameter of sibling merging (a parameter-time op, not in the DSL) --------------
# conv(x, w1) ... conv(x, wk)  =>  conv(x, stack_filters(w1, ..., wk)), each branch a slice.


def _stack_infer(in_types, attrs):
    rest = {t.shape[1:] for t in in_types}
    if len(rest) != 1:
        raise ShapeError(f"stack_filters: filters {', '.join(map(str, in_types))} differ "
                         "beyond their first axis")
    return in_types[0].with_shape(sum(t.shape[0] for t in in_types), *in_types[0].shape[1:])


register(OpDef(
    name="stack_filters", family="conv", signature=(), infer=_stack_infer,
    reference=lambda xs, a: np.concatenate([np.asarray(x) for x in xs], axis=0),
    macs=lambda ts, out, a: 0, arity=None, internal=True, new_activations=False,
    moves_values=True,
    doc="filters (or biases) of sibling convolutions stacked along the output channels"))


def _algorithm(node) -> ConvAlgorithm | None:
    name = node.attrs.get("lowering")
    return by_name(name) if name is not None else None


def _layout_rule(node, in_types):
    """The blocked algorithms (direct, channel-wise, Winograd) read and write NCHW8c where their
    objects say so (``reads_blocked``, ``writes_blocked``); im2col, and a transposed
    convolution (run on its zero-stuffed input), stay plain.

    NCHW16c and NHWC wherever NCHW8c (the direct kernel reads a 16-channel block as two
    8-channel halves, and so does Winograd's input transform; the channel-wise kernel has 16
    lanes, in, out, and in its packed input and output; in NHWC the kernels step from pixel to
    pixel by the padded channel count)."""
    algorithm = _algorithm(node)
    if node.op != "conv" or algorithm is None or not algorithm.blocked:
        return ((PLAIN, PLAIN),)
    g = node_geometry(node, in_types)
    ins = (PLAIN, BLOCKED) if algorithm.reads_blocked(g) else (PLAIN,)
    outs = (PLAIN, BLOCKED) if algorithm.writes_blocked(g) else (PLAIN,)
    return in_every_blocked_layout((i, o) for i in ins for o in outs)


def _writes_whole_blocks(node, in_types):
    """The direct and channel-wise kernels compute padded output channels too (zero weights)
    and zero the output's halo with ``ZH``."""
    algorithm = _algorithm(node)
    return node.op == "conv" and algorithm is not None and algorithm.blocked


def _unpacks_output(node, in_types):
    """The blocked algorithms (direct, channel-wise, Winograd) write channel-blocked scratch
    that ``output_call``'s kernel unpacks where the output stays NCHW."""
    algorithm = _algorithm(node)
    return algorithm is not None and algorithm.blocked


def _out_blocks(node, in_types, lanes: int) -> int:
    """Blocks of ``lanes`` channels the blocked kernel writes: the direct kernel pads each
    group's output channels to whole 16-channel block pairs (``ConvGeometry.out_blocks``)."""
    g = replace(node_geometry(node, in_types), lanes_in=lanes, lanes_out=lanes)
    return g.out_blocks


# -- packed weights: a convolution's weights as its compute kernel reads them ---------------
# conv(x, w, b; lowering=a, tile=t)  =>  conv(x, w, b, conv_pack(w, b; a, t, lanes); packed)
# (the ``pack_weights`` pass): a parameter-time node, evaluated when parameters are set, so the
# IR dump shows each packing and its layout decisions; the convolution's own inputs (and so its
# shape rule, reference and gradients) stay ``w`` and ``b``.

#: The attributes of a convolution its packing depends on (with its input shape).
PACKING_ATTRS = ("out_channels", "kernel", "stride", "pads", "dilation", "groups", "bias",
                 "output_padding")


def pack_attrs(node, in_types, x_lanes: int | None, y_lanes: int | None) -> dict[str, Any]:
    """The ``conv_pack`` attributes of a lowered convolution node whose input and output are
    stored in blocks of ``x_lanes`` and ``y_lanes`` channels (None: not channel-blocked)."""
    g = node_geometry(node, in_types)
    own = {k: v for k, v in node.attrs.items() if k in PACKING_ATTRS}
    return {"of": node.op, **own, "in_shape": tuple(own_input_types(in_types, node.attrs)[0].shape),
            "algorithm": node.attrs["lowering"],
            "kernel_tile": node.attrs.get("tile", str(TILE_8)),
            "block_lanes": kernel_lanes(g, x_lanes, y_lanes)[0]}


def _pack_rule(graph, node, x_store, y_store):
    """``conv_pack`` over the weight and bias, for the lowered algorithm."""
    if "lowering" not in node.attrs:
        return None
    in_types = [graph.node(i).type for i in node.inputs]
    weights = node.inputs[1:own_input_count(len(node.inputs), node.attrs)]  # w[, b]
    return "conv_pack", weights, pack_attrs(node, in_types,
                                            x_store.lanes if x_store is not None else None,
                                            y_store.lanes if y_store is not None else None)


def _packing(attrs: dict[str, Any]
             ) -> tuple[ConvGeometry, ConvAlgorithm, DirectTile | GemmTile]:
    conv = {k: v for k, v in attrs.items() if k in PACKING_ATTRS}
    g = geometry(attrs["of"], conv, attrs["in_shape"])
    g = replace(g, lanes_in=attrs["block_lanes"], lanes_out=attrs["block_lanes"])
    algorithm = by_name(attrs["algorithm"])
    return g, algorithm, algorithm.parse_tile(attrs["kernel_tile"], g)


def _pack_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    g, algorithm, tile = _packing(attrs)
    return in_types[0].with_shape(sum(algorithm.packed_sizes(g, tile)))


def _pack_reference(inputs, attrs: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    g, algorithm, tile = _packing(attrs)
    return pack_conv_weights(attrs["of"], g, algorithm, tile, inputs[0],
                             inputs[1] if len(inputs) > 1 else None, out)


register(OpDef(
    name="conv_pack", family="conv", signature=(), infer=_pack_infer,
    reference=_pack_reference, reference_into=_pack_reference,
    macs=lambda ts, out, a: 0, arity=None, internal=True,
    new_activations=False, made_for_user=True, moves_values=True,
    doc="a convolution's weights and bias packed for its compute kernel (its algorithm, "
        "register tile and block width), flat: the weights, then the bias"))


register(OpDef(
    lower=lower_conv, takes_epilogue="any", algorithms=ALGORITHMS, out_blocks=_out_blocks,
    pack=_pack_rule,
    layouts=("NCHW", "NCHW8c", "NCHW16c", "NHWC"), layout_rule=_layout_rule,
    writes_whole_blocks=_writes_whole_blocks, unpacks_output=_unpacks_output,
    name="conv", family="conv", signature=_CONV_SIGNATURE,
    canonicalize=conv_canonicalize, params=conv_params, infer=conv_infer,
    reference=conv_reference, macs=conv_macs, aliases=("conv2d",),
    error_bound=conv_bound,  # per algorithm: C/groups x R x S products (direct), Winograd's
    gradient=conv_gradient,
    doc="2-D convolution (cross-correlation) with stride, padding, dilation and groups",
))


# -- conv_transpose ---------------------------------------------------------------------------

def conv_transpose_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]):
    require_rank(in_types[0], 3, "conv_transpose")
    out = _common(attrs)
    out["pads"] = resolve_pads(attrs["pad"], out["kernel"], out["stride"], out["dilation"],
                               (1, 1), words=("valid",))
    out["output_padding"] = as_pair(attrs["output_padding"], "output_padding", 0)
    for axis, op_, s, d in zip(("height", "width"), out["output_padding"], out["stride"],
                               out["dilation"]):
        if op_ >= max(s, d):
            raise AttrError(f"output_padding ({axis}) must be smaller than the stride or the "
                            f"dilation, got {op_} with stride {s}, dilation {d}",
                            "output_padding")
    return out


def conv_transpose_params(attrs: dict[str, Any], in_types: list[TensorType]):
    c = in_types[0].channels
    _check_groups(c, attrs, "conv_transpose")
    k, g, (r, s) = attrs["out_channels"], attrs["groups"], attrs["kernel"]
    specs = [ParamSpec("weight", (c, k // g, r, s), "auto", fan_in=k // g * r * s,
                       fan_out=c // g * r * s)]
    if attrs["bias"]:
        specs.append(ParamSpec("bias", (k,), "zeros"))
    return specs


def conv_transpose_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = in_types[0]
    require_rank(x, 3, "conv_transpose")
    _check_groups(x.channels, attrs, "conv_transpose")
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    t, l, b, rt = attrs["pads"]
    oph, opw = attrs["output_padding"]
    p = transpose_out(x.height, r, sh, dh, t, b, oph)
    q = transpose_out(x.width, s, sw, dw, l, rt, opw)
    if p < 1 or q < 1:
        raise ShapeError(f"conv_transpose: padding {attrs['pads']} removes the whole output "
                         f"({p}x{q})")
    return x.with_shape(attrs["out_channels"], p, q)


def conv_transpose_reference(inputs, attrs: dict[str, Any]) -> np.ndarray:
    """Scatter form: each input pixel adds w * x into a window of the (uncropped) output."""
    x = np.asarray(inputs[0], np.float64)
    w = np.asarray(inputs[1], np.float64)
    n, c, h, wd = x.shape
    _, kg, r, s = w.shape
    g = attrs["groups"]
    cg = c // g
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    t, l, b, rt = attrs["pads"]
    oph, opw = attrs["output_padding"]
    full_h = (h - 1) * sh + dh * (r - 1) + 1 + oph
    full_w = (wd - 1) * sw + dw * (s - 1) + 1 + opw
    full = np.zeros((n, kg * g, full_h + b, full_w + rt))
    for gi in range(g):
        xs = x[:, gi * cg:(gi + 1) * cg]
        ws = w[gi * cg:(gi + 1) * cg]
        for i in range(r):
            for j in range(s):
                contrib = np.einsum("nchw,ck->nkhw", xs, ws[:, :, i, j])
                full[:, gi * kg:(gi + 1) * kg, i * dh: i * dh + sh * (h - 1) + 1: sh,
                     j * dw: j * dw + sw * (wd - 1) + 1: sw] += contrib
    out_h = transpose_out(h, r, sh, dh, t, b, oph)
    out_w = transpose_out(wd, s, sw, dw, l, rt, opw)
    out = full[:, :, t:t + out_h, l:l + out_w]
    if len(inputs) > 2:
        out = out + np.asarray(inputs[2], np.float64)[None, :, None, None]
    return out


def conv_transpose_macs(in_types: list[TensorType], out: TensorType, attrs: dict[str, Any]):
    r, s = attrs["kernel"]
    return in_types[0].size * (attrs["out_channels"] // attrs["groups"]) * r * s


def _phase_filter_infer(in_types, attrs):
    c, kg, r, s = in_types[0].shape
    (sh, sw), (r0, s0) = attrs["stride"], attrs["start"]
    g = attrs["groups"]
    return in_types[0].with_shape(kg * g, c // g, len(range(r0, r, sh)), len(range(s0, s, sw)))


def _phase_filter_reference(inputs, attrs):
    (sh, sw), (r0, s0) = attrs["stride"], attrs["start"]
    return transposed_as_conv_weight(np.asarray(inputs[0]), attrs["groups"],
                                     slice(r0, None, sh), slice(s0, None, sw))


register(OpDef(
    name="phase_filter", family="conv",
    signature=(Attr("groups", "int"), Attr("stride", "ints"), Attr("start", "ints")),
    infer=_phase_filter_infer, reference=_phase_filter_reference,
    macs=lambda ts, out, a: 0, arity=1, internal=True, new_activations=False,
    moves_values=True,
    doc="one output phase's filter of a transposed convolution (transposed_phases): the "
        "flipped, transposed weight's taps start, start + stride, ..."))


register(OpDef(
    lower=lower_conv, takes_epilogue="any", algorithms=ALGORITHMS, out_blocks=_out_blocks,
    pack=_pack_rule,
    layouts=("NCHW", "NCHW8c"), layout_rule=_layout_rule, unpacks_output=_unpacks_output,
    name="conv_transpose", family="conv",
    signature=(
        Attr("out_channels", "int"),
        Attr("kernel", "ints"),
        Attr("stride", "ints", 1),
        Attr("pad", "pads", 0, choices=("valid",)),
        Attr("output_padding", "ints", 0),
        Attr("dilation", "ints", 1),
        Attr("groups", "int", 1),
        Attr("bias", "bool", True),
        Attr("weights", "tensor", None),
    ),
    canonicalize=conv_transpose_canonicalize, params=conv_transpose_params,
    infer=conv_transpose_infer, reference=conv_transpose_reference, macs=conv_transpose_macs,
    # computed as a convolution of the zero-stuffed input: C/groups x R x S products per
    # output, some of them zeros (the macs average is lower, so it would not bound them all)
    error_bound=sum_bound(terms=lambda ctx: ctx.inputs[0].shape[1] // ctx.attrs["groups"] *
                          ctx.attrs["kernel"][0] * ctx.attrs["kernel"][1]),
    aliases=("deconv", "convtranspose"), gradient=conv_transpose_gradient,
    doc="transposed convolution (the gradient of conv with respect to its input)",
))


register(OpDef(
    name="conv_weight_grad", family="conv",
    signature=(Attr("out_channels", "int"), Attr("kernel", "ints"), Attr("stride", "ints"),
               Attr("pads", "ints"), Attr("dilation", "ints"), Attr("groups", "int")),
    infer=weight_grad_infer, reference=weight_grad_reference, macs=weight_grad_macs, arity=2,
    pass_made=True, backward=True, new_activations=False, error_bound=weight_grad_bound,
    lower=lower_weight_grad, algorithms=WEIGHT_GRAD_ALGORITHMS,
    doc="a convolution's weight gradient from its input and output gradient, summed over "
        "the batch (autodiff)"))
