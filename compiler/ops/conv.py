"""Convolution and transposed convolution.

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

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from ..decisions import operand_kind, own_attrs, prologue_of
from ..kernels.conv import build_conv_kernels, in_floats, kernel_int_args, out_floats, pack_weights
from ..kernels.conv_geometry import ConvGeometry, ceil_div, channelwise
from ..kernels.elementwise import zero_stuff_kernel
from ..kernels.layout import crop_epilogue_kernel, unpack_epilogue_kernel
from ..kernels.tiles import GEMM_M, GEMM_N, TILE_8, TILE_K, DirectTile
from ..plan import Arg, Call, Step
from ..types import BLOCKED, PLAIN, TensorType, in_every_blocked_layout, spatial_out
from . import (
    Attr,
    AttrError,
    LoweringError,
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

PAD_WORDS = ("same", "valid", "full")


def resolve_pads(pad: Any, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], in_hw: tuple[int, int],
                 words: tuple[str, ...] = PAD_WORDS) -> tuple[int, int, int, int]:
    """DSL padding -> (top, left, bottom, right).

    An int pads every side; a pair is (vertical, horizontal) per side; four values are
    (top, left, bottom, right); `same`, `valid` and `full` are computed from the window.
    """
    if isinstance(pad, str):
        if pad not in words:
            kinds = "an integer, a pair (vertical, horizontal) or four sides (top, left, " \
                    "bottom, right)"
            if len(words) == 1:
                kinds += f", or {words[0]}"
            elif words:
                kinds += f", or one of {', '.join(words)}"
            raise AttrError(f"pad must be {kinds}; got {pad!r}", "pad")
        if pad == "valid":
            return (0, 0, 0, 0)
        spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
        if pad == "full":
            return (spans[0] - 1, spans[1] - 1, spans[0] - 1, spans[1] - 1)
        totals = []
        for size, s, span in zip(in_hw, stride, spans):
            out = -(-size // s)
            totals.append(max((out - 1) * s + span - size, 0))
        return (totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2,
                totals[1] - totals[1] // 2)
    if isinstance(pad, (tuple, list)):
        if len(pad) == 2:
            v, h = (as_int(p, "pad", 0) for p in pad)
            return (v, h, v, h)
        if len(pad) == 4:
            t, l, b, r = (as_int(p, "pad", 0) for p in pad)
            return (t, l, b, r)
        raise AttrError(f"pad takes 1, 2 (vertical, horizontal) or 4 (top, left, bottom, right) "
                        f"integers, got {len(pad)}", "pad")
    p = as_int(pad, "pad", 0)
    return (p, p, p, p)


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


def window_check(op: str, size_hw: tuple[int, int], pads: tuple[int, int, int, int],
                 kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> None:
    """A window (dilated) may not be larger than its padded input."""
    for axis, size, before, after, k, d in (("height", size_hw[0], pads[0], pads[2], kernel[0],
                                             dilation[0]),
                                            ("width", size_hw[1], pads[1], pads[3], kernel[1],
                                             dilation[1])):
        span = d * (k - 1) + 1
        if span > size + before + after:
            what = f"window {k}" + (f" (dilated to {span})" if d > 1 else "")
            raise ShapeError(f"{op}: {what} is larger than the padded input {axis} "
                             f"{size + before + after} ({size} + padding {before}+{after})")


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


def pad_nchw(x: np.ndarray, pads: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    t, l, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


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
    reference=lambda xs, a: np.concatenate([np.asarray(x, np.float64) for x in xs], axis=0),
    macs=lambda ts, out, a: 0, arity=None, internal=True, new_activations=False,
    doc="filters (or biases) of sibling convolutions stacked along the output channels"))


def _layout_rule(node, in_types):
    """The direct lowering reads and writes NCHW8c (``lower_conv`` below). It reads a
    blocked input when the input's blocks are the kernel's: an ungrouped convolution of at
    least 8 channels (a stem with fewer packs its own block of 3), the channel-wise kernel
    (`channelwise`), or groups of whole blocks (``C/groups`` a multiple of 8). It writes a
    blocked output unless each group's outputs would be padded inside the tensor (the direct
    kernel writes ``K/groups`` padded to a multiple of 16).

    NCHW16c and NHWC wherever NCHW8c (the direct kernel reads a 16-channel block as two
    8-channel halves; the channel-wise kernel has 16 lanes, in, out, and in its packed input
    and output; in NHWC the kernels step from pixel to pixel by the padded channel count)."""
    a = node.attrs
    c, k, g = in_types[0].channels, a["out_channels"], a["groups"]
    if node.op != "conv" or a.get("lowering") != "direct":
        return ((PLAIN, PLAIN),)
    lanes = channelwise(c, k, g)
    reads = lanes or (c >= 8 if g == 1 else (c // g) % 8 == 0)
    writes = lanes or g == 1 or (k // g) % 16 == 0
    ins = (PLAIN, BLOCKED) if reads else (PLAIN,)
    outs = (PLAIN, BLOCKED) if writes else (PLAIN,)
    return in_every_blocked_layout((i, o) for i in ins for o in outs)


def _writes_whole_blocks(node, in_types):
    """The direct and channel-wise kernels compute padded output channels too (zero weights)
    and zero the output's halo with ``ZH``."""
    return node.op == "conv" and node.attrs.get("lowering") == "direct"


# ----------------------------------------------------------------------------------------------
# Cost model (lowering selection)
# ----------------------------------------------------------------------------------------------

#: Fraction of the 8-lane fp32 peak each compute kernel reaches on well-shaped layers
#: (PERF-NOTES and bench/RESULTS.md: the direct kernel 55-79%, im2col + our GEMM well below
#: it, its gather costing about as much as a pass over the col matrix at memory speed). The
#: direct kernel's 16-lane tiles measured 1.4-1.8x its 8-lane speed on 3x3 layers (the GEMM
#: stays 8-lane).
EFFICIENCY = {"direct": 0.6, "im2col": 0.3}
SPEEDUP_16_LANES = {"direct": 1.5, "im2col": 1.0}
#: Flop-equivalents per float moved by a layout kernel (pack, im2col, unpack, crop).
FLOPS_PER_FLOAT_MOVED = 8.0


def estimate_cost(op: str, attrs: Mapping[str, Any], in_shape: tuple[int, ...],
                  lowering: str, lanes: int = 8) -> float:
    """Relative time of a convolution under ``lowering``: the multiply-adds of each kernel's
    padded tiling divided by the fraction of peak it reaches, plus the floats its layout
    kernels move. Only the comparison between lowerings of one layer is meaningful."""
    g = _geometry(op, dict(attrs), in_shape)
    if lowering == "im2col":
        work = g.groups * ceil_div(g.Kg, GEMM_M) * GEMM_M * g.Cg * g.R * g.S * \
            ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
    elif g.channelwise:
        work = g.C8 * 8 * g.Cg * g.R * g.S * g.P * g.Q
    else:
        work = g.groups * g.Kgb * TILE_K * g.Cgb * g.CB * g.R * g.S * g.P * g.Q
    moved = in_floats(g, lowering) + out_floats(g, lowering)
    speed = EFFICIENCY[lowering] * (SPEEDUP_16_LANES[lowering] if lanes == 16 and not
                                    g.channelwise else 1.0)
    return 2 * work / speed + FLOPS_PER_FLOAT_MOVED * moved


# ----------------------------------------------------------------------------------------------
# The lowering rule of conv and conv_transpose
# ----------------------------------------------------------------------------------------------


def _transpose_as_conv(attrs: dict, in_shape: tuple[int, ...]):
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


def _geometry(op: str, attrs: dict, in_shape: tuple[int, ...],
              activation: str | None = None) -> ConvGeometry:
    if op == "conv_transpose":
        attrs, in_shape, _, _ = _transpose_as_conv(attrs, in_shape)
    return ConvGeometry.from_attrs(attrs, in_shape, activation)


def lower_conv(ctx, node) -> Step:
    """A ``conv`` / ``conv_transpose`` node as kernel calls: [zero-stuff,] pack (or im2col)
    unless the input is already channel-blocked, the compute kernel, then unpack (or crop) with
    the fused epilogue unless the output stays channel-blocked, in which case the compute
    kernel applies the epilogue at its store. The compute kernel always fuses the bias and a
    leading ReLU (a runtime flag, so layers with and without share a kernel)."""
    lowering = node.attrs["lowering"]
    attrs = own_attrs(node.attrs)
    x = ctx.tensor_inputs[0]
    # the convolution's own input: x, or the pool of x its prologue computes
    x_shape = own_input_types([ctx.graph.node(i).type for i in node.inputs], node.attrs)[0].shape
    x_store, y_store = ctx.storage(x), ctx.out_storage
    pre = prologue_of(node.attrs)
    prologue = (pre[0].op, pre[0].attr_dict) if pre else None
    if prologue is not None and (x_store is None or lowering != "direct" or len(pre) > 1):
        raise LoweringError(f"{ctx.kname}: a pooling prologue needs one pool of a "
                            "channel-blocked input and the direct lowering")
    epilogue = list(ctx.epilogue)
    relu = bool(epilogue) and epilogue[0].op == "relu"
    if relu:
        epilogue = epilogue[1:]
    operands = [ctx.operand(e) for e in epilogue if e.operand is not None]
    in_kernel = epilogue if y_store is not None else []
    kinds = [operand_kind(ctx.graph.node(o).type.shape, node.type.shape) for o in operands]
    g = _geometry(node.op, attrs, x_shape, "relu" if relu else None)
    # the block widths of the storage read and written (the packed scratch buffers: 8)
    lanes_in = x_store.lanes if x_store is not None else 8
    lanes_out = y_store.lanes if y_store is not None else 8
    if g.channelwise:  # one width in and out: the stored side's
        lanes_in = lanes_out = lanes_in if x_store is not None else lanes_out
    nhwc_in = x_store is not None and x_store.nhwc
    nhwc_out = y_store is not None and y_store.nhwc
    if (lanes_in, lanes_out, nhwc_in, nhwc_out) != (8, 8, False, False):
        g = replace(g, lanes_in=lanes_in, lanes_out=lanes_out, nhwc_in=nhwc_in,
                    nhwc_out=nhwc_out)
        g.validate()
    # The register tile chosen by the select_tile pass (absent: depthwise, im2col, or a graph
    # lowered without the pipeline).
    tile = DirectTile.parse(node.attrs["tile"]) if "tile" in node.attrs else TILE_8
    kernel, fname, tag = build_conv_kernels(g, lowering, in_kernel, kinds if in_kernel else (),
                                            tile, prologue)
    compute, source_name, src = ctx.load_tasked(kernel, tag, "convolution kernel")
    calls: list[Call] = []
    scratch: dict[str, int] = {}
    source = Arg("value", x)
    if node.op == "conv_transpose":
        _, stuffed, before, hw = _transpose_as_conv(attrs, x_shape)
        k = zero_stuff_kernel(f"n{node.id}_zero_stuff", x_shape, attrs["stride"], before, hw,
                              ctx.comment)
        calls.append(Call(None, (Arg("value", x), Arg("scratch", "stuffed"), Arg("batch")),
                          k.name, k))
        scratch["stuffed"] = int(np.prod(stuffed))
        source = Arg("scratch", "stuffed")
    xp, yp = Arg("scratch", "conv_in"), Arg("scratch", "conv_out")
    ints = [Arg("int", v) for v in (g.C, g.H, g.W)]
    if x_store is not None:
        xp = source  # read where the producer stored it
    elif lowering == "im2col":
        pqp = ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        calls.append(Call(ctx.layout_kernel("im2col"), (source, xp, Arg("batch"), *ints, *(
            Arg("int", v) for v in (g.groups, g.Cg, g.R, g.S, g.P, g.Q, g.sh, g.sw, g.dh, g.dw,
                                    g.pt, g.pl, pqp))), "im2col"))
    else:
        pack_input = ctx.layout_kernel("pack_nchw_blocked")
        calls.append(Call(pack_input, (source, xp, Arg("batch"), *ints, *(
            Arg("int", v) for v in (g.Hp, g.Wp, g.pt, g.pl, *g.pack_ints()))),
            "pack_nchw_blocked"))
    if x_store is None:
        scratch["conv_in"] = in_floats(g, lowering)
    if y_store is not None:
        yp = Arg("output")
    else:
        scratch["conv_out"] = out_floats(g, lowering)
    op_args = [Arg("value", o) for o in operands] if in_kernel else []
    pooled: list[Arg] = []  # the prologue's scratch (one pooled row per thread), x's H x W
    pooled_ints: list[Arg] = []
    if prologue is not None:
        scratch["pooled"] = ctx.threads * g.Cgb * g.Q * 8
        pooled = [Arg("scratch", "pooled")]
        pooled_ints = [Arg("int", v) for v in ctx.graph.node(x).type.shape[1:]]
    op_ints = [Arg("int", v) for o in operands for v in ctx.operand_geometry(o)] \
        if in_kernel else []
    calls.append(Call(compute, (xp, Arg("const", "w"), Arg("const", "b"), yp,
                                            *op_args, *pooled,
                                            *(Arg("int", v) for v in kernel_int_args(
                                                g, lowering, x_store, y_store, tile,
                                                bool(node.attrs.get("zero_halo")))),
                                            *pooled_ints, *op_ints, Arg("int", int(relu)),
                                            Arg("batch")),
                      fname))
    if y_store is None:
        calls.append(_output_call(ctx, node, g, lowering, epilogue, operands))
    w, *b = ctx.param_inputs

    def pack(values: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        weight = np.asarray(values[w], np.float64)
        if node.op == "conv_transpose":
            weight = transposed_as_conv_weight(weight, attrs["groups"])
        wp, bp = pack_weights(g, lowering, weight, values[b[0]] if b else None, tile)
        return {"w": wp, "b": bp}

    return Step(node.id, ctx.step_name, ctx.step_ops, [x] + operands,
                y_store.floats if y_store is not None else node.type.size, calls, pack=pack,
                scratch=scratch, lowering=lowering, storage=y_store,
                # packing reads the whole input before the output is written; a blocked input
                # or output is read and written in place by the compute kernel itself
                inplace=x_store is None and y_store is None,
                sources={source_name: src})


def _output_call(ctx, node, g: ConvGeometry, lowering: str, epilogue,
                 operands: list[int]) -> Call:
    """The kernel that brings the packed output to NCHW, applying the epilogue at its store."""
    yp = Arg("scratch", "conv_out")
    if lowering == "im2col":
        pqp = ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        out_ints = (g.K, g.Kg, ceil_div(g.Kg, GEMM_M) * GEMM_M, g.P * g.Q, pqp)
        plain, with_epilogue = "crop_gemm", crop_epilogue_kernel
    else:
        out_ints = g.unpack_ints()
        plain = "unpack_blocked_nchw" if g.lanes_out == 8 else "unpack_blocked16_nchw"
        with_epilogue = partial(unpack_epilogue_kernel, lanes=g.lanes_out)
    ints = tuple(Arg("int", v) for v in out_ints)
    if not epilogue:
        return Call(ctx.layout_kernel(plain), (yp, Arg("output"), Arg("batch"), *ints), plain)
    kinds = [operand_kind(ctx.graph.node(o).type.shape, node.type.shape) for o in operands]
    name = f"n{node.id}_{'unpack' if lowering != 'im2col' else 'crop'}_epilogue"
    k = with_epilogue(name, epilogue, kinds, ctx.comment)
    return Call(None, (yp, Arg("output"), *(Arg("value", o) for o in operands), Arg("batch"),
                       *ints), name, k)


register(OpDef(
    lower=lower_conv, takes_epilogue="any", algorithms=("direct", "im2col"),
    layouts=("NCHW", "NCHW8c", "NCHW16c", "NHWC"), layout_rule=_layout_rule,
    writes_whole_blocks=_writes_whole_blocks,
    name="conv", family="conv", signature=_CONV_SIGNATURE,
    canonicalize=conv_canonicalize, params=conv_params, infer=conv_infer,
    reference=conv_reference, macs=conv_macs, aliases=("conv2d",),
    error_bound=sum_bound(),  # C/groups x R x S products per output (conv_macs), bias, weights
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


def _transpose_out(size: int, k: int, s: int, d: int, before: int, after: int, op_: int) -> int:
    return (size - 1) * s - before - after + d * (k - 1) + op_ + 1


def conv_transpose_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = in_types[0]
    require_rank(x, 3, "conv_transpose")
    _check_groups(x.channels, attrs, "conv_transpose")
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    t, l, b, rt = attrs["pads"]
    oph, opw = attrs["output_padding"]
    p = _transpose_out(x.height, r, sh, dh, t, b, oph)
    q = _transpose_out(x.width, s, sw, dw, l, rt, opw)
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
    out_h = _transpose_out(h, r, sh, dh, t, b, oph)
    out_w = _transpose_out(wd, s, sw, dw, l, rt, opw)
    out = full[:, :, t:t + out_h, l:l + out_w]
    if len(inputs) > 2:
        out = out + np.asarray(inputs[2], np.float64)[None, :, None, None]
    return out


def conv_transpose_macs(in_types: list[TensorType], out: TensorType, attrs: dict[str, Any]):
    r, s = attrs["kernel"]
    return in_types[0].size * (attrs["out_channels"] // attrs["groups"]) * r * s


def transposed_as_conv_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """A transposed convolution's weight ``[C, K/g, R, S]`` as the equivalent stride-1
    convolution's ``[K, C/g, R, S]``, flipped in space: ``wc[g*Kg + k, c, r, s] =
    w[g*Cg + c, k, R-1-r, S-1-s]``."""
    C, kg, R, S = w.shape
    cg = C // groups
    wc = w.reshape(groups, cg, kg, R, S).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return np.ascontiguousarray(wc.reshape(groups * kg, cg, R, S))


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
    flipped kernel), or None where no stride-1 convolution computes it (no tap reaches the
    phase, or it would need negative padding: a crop)."""
    r0 = (phase + before) % stride
    taps = -(-(kernel - r0) // stride)
    if taps < 1:
        return None
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
    string says why not: a non-square stride, dilation, an output not a multiple of the
    stride, or a phase no convolution computes."""
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
            if rows is None or cols is None:
                return f"output phase ({i}, {j}) is not a padded stride-1 convolution"
            phases.append({"kernel": (rows[0], cols[0]),
                           "pads": (rows[1], cols[1], rows[2], cols[2]),
                           "start": (rows[3], cols[3])})
    return phases


def _phase_filter_infer(in_types, attrs):
    c, kg, r, s = in_types[0].shape
    (sh, sw), (r0, s0) = attrs["stride"], attrs["start"]
    g = attrs["groups"]
    return in_types[0].with_shape(kg * g, c // g, len(range(r0, r, sh)), len(range(s0, s, sw)))


def _phase_filter_reference(inputs, attrs):
    (sh, sw), (r0, s0) = attrs["stride"], attrs["start"]
    w = transposed_as_conv_weight(np.asarray(inputs[0], np.float64), attrs["groups"])
    return np.ascontiguousarray(w[:, :, r0::sh, s0::sw])


register(OpDef(
    name="phase_filter", family="conv",
    signature=(Attr("groups", "int"), Attr("stride", "ints"), Attr("start", "ints")),
    infer=_phase_filter_infer, reference=_phase_filter_reference,
    macs=lambda ts, out, a: 0, arity=1, internal=True, new_activations=False,
    doc="one output phase's filter of a transposed convolution (transposed_phases): the "
        "flipped, transposed weight's taps start, start + stride, ..."))


register(OpDef(
    lower=lower_conv, takes_epilogue="any", algorithms=("direct", "im2col"),
    layouts=("NCHW", "NCHW8c"), layout_rule=_layout_rule,
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
    aliases=("deconv", "convtranspose"),
    doc="transposed convolution (the gradient of conv with respect to its input)",
))
