"""Rearranging ops: depth_to_space (pixel shuffle), space_to_depth and channel_shuffle.

Each output element is one input element moved; nothing is computed, so they count no
multiply-accumulates and no new activations (like a reshape).

ONNX mapping (checked against ONNX Runtime in tests/ops/test_rearrange_ops.py):
- depth_to_space = DepthToSpace(blocksize, mode). With block b and C' = C / b^2, output
  ``y[c, h*b + i, w*b + j]`` reads input channel ``(i*b + j) * C' + c`` in mode DCR (depth,
  column, row: ONNX's default, TensorFlow's) and ``c * b^2 + i*b + j`` in mode CRD (PyTorch's
  PixelShuffle).
- space_to_depth = SpaceToDepth(blocksize, mode), the inverse of depth_to_space in the same
  mode: ``y[(i*b + j) * C + c, h, w] = x[c, h*b + i, w*b + j]`` in mode DCR, ``y[c*b^2 + i*b +
  j, h, w]`` in mode CRD (PyTorch's PixelUnshuffle; ONNX's mode attribute from opset 28). The
  exporter (opset 21) writes CRD as SpaceToDepth followed by a channel shuffle with b^2 groups,
  which is the same permutation.
- channel_shuffle (ShuffleNet) has no ONNX operator: it is Reshape to [N, g, C/g, H, W],
  Transpose(perm 0, 2, 1, 3, 4), Reshape back to [N, C, H, W]; output channel ``o`` reads
  input channel ``(o % g) * (C/g) + o // g``. The importer recognizes that pattern and the
  exporter writes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import rearrange
from ..kernels.common import Sizes
from ..kernels.tiles import BLOCKED_INTS
from ..types import BLOCKED, BLOCKED16, NHWC, PLAIN, TensorType, in_every_blocked_layout
from . import (
    Attr,
    AttrError,
    OpDef,
    ShapeError,
    as_choice,
    as_int,
    exact_bound,
    get_op,
    no_macs,
    one_input,
    register,
    require_rank,
)

DEPTH_TO_SPACE_MODES = ("DCR", "CRD")


def _lower_with(builder: str, *attr_names: str):
    """A lowering through ``kernels.rearrange.<builder>(name, shape, *attrs, comment, sz)``."""

    def lower(ctx, node):

        sz = Sizes()
        k = getattr(rearrange, builder)(ctx.kname, ctx.in_shapes[0],
                                        *(node.attrs[a] for a in attr_names),
                                        ctx.comment, sz)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)
    return lower


def _lower_blocked_or(plain: str, blocked: str):
    """The plain lowering through ``plain``, or, where layout selection stored the output
    channel-blocked, the blocked kernel ``kernels.rearrange.<blocked>(name, block)``."""
    lower_plain = _lower_with(plain, "block", "mode")

    def lower(ctx, node):

        if ctx.out_storage is None:
            return lower_plain(ctx, node)
        (c, h, w), (oc, oh, ow) = ctx.in_shapes[0], ctx.out_shape
        lanes = ctx.out_storage.lanes
        ints = {"CO8": oc // lanes, "H": h, "W": w, "C8": c // lanes, "OH": oh, "OW": ow}
        ints.update(zip(("X" + s for s in BLOCKED_INTS),
                        ctx.storage(ctx.tensor_inputs[0]).ints()))
        ints.update(zip(("Y" + s for s in BLOCKED_INTS), ctx.out_storage.ints()))
        k = getattr(rearrange, blocked)(ctx.kname, node.attrs["block"], ctx.comment, lanes,
                                        ctx.out_storage.nhwc)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=ints)
    return lower


def _dcr_layouts(channels_of: str):
    """Mode DCR moves whole blocks when the channels on the image side (the output's of
    depth_to_space, the input's of space_to_depth) fill whole blocks: then it reads and writes
    NCHW8c and NHWC (a multiple of 8) and NCHW16c (of 16) too, one vector a copy. Mode CRD
    moves single channels."""

    def rule(node, in_types):
        x = in_types[0]
        b2 = node.attrs["block"] ** 2
        image_side = x.channels // b2 if channels_of == "output" else x.channels
        if node.attrs["mode"] != "DCR" or image_side % 8:
            return ((PLAIN, PLAIN),)
        return in_every_blocked_layout(((PLAIN, PLAIN), (BLOCKED, BLOCKED)),
                                       (NHWC,) if image_side % 16 else (BLOCKED16, NHWC))
    return rule


# -- depth_to_space ---------------------------------------------------------------------------

def _d2s_check(op: str, x: TensorType, block: int) -> None:
    require_rank(x, 3, op)
    if x.channels % (block * block):
        raise ShapeError(f"{op}: {x.channels} channels are not divisible by block^2 = "
                         f"{block * block} (block {block})")


def _d2s_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    block = as_int(attrs["block"], "block", 1)
    mode = as_choice(attrs["mode"], "mode", DEPTH_TO_SPACE_MODES)
    x = in_types[0]
    require_rank(x, 3, "depth_to_space")
    if x.channels % (block * block):
        raise AttrError(f"block^2 = {block * block} must divide the {x.channels} channels, "
                        f"got block {block}", "block")
    return {"block": block, "mode": mode}


def _d2s_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, b = in_types[0], attrs["block"]
    _d2s_check("depth_to_space", x, b)
    return x.with_shape(x.channels // (b * b), x.height * b, x.width * b)


def _d2s_ref(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """ONNX's definition, reshape -> transpose -> reshape."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    b = attrs["block"]
    if attrs["mode"] == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


register(OpDef(name="depth_to_space", family="rearrange",
               signature=(Attr("block", "int"),
                          Attr("mode", "choice", "DCR", choices=DEPTH_TO_SPACE_MODES)),
               canonicalize=_d2s_canonicalize, infer=_d2s_infer, reference=one_input(_d2s_ref),
               macs=no_macs, new_activations=False,
               lower=_lower_blocked_or("depth_to_space_kernel", "depth_to_space_blocked_kernel"),
               layout_rule=_dcr_layouts("output"), layouts=("NCHW", "NCHW8c", "NCHW16c", "NHWC"),
               error_bound=exact_bound(),  # a permutation: exact
               doc="move blocks of channels into block x block pixels (sub-pixel upsampling; "
                   "mode=CRD is PyTorch's PixelShuffle)"))


# -- space_to_depth ---------------------------------------------------------------------------

def _s2d_check(x: TensorType, block: int) -> None:
    require_rank(x, 3, "space_to_depth")
    if x.height % block or x.width % block:
        raise ShapeError(f"space_to_depth: height and width {x.height} x {x.width} are not "
                         f"divisible by block {block}")


def _s2d_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    block = as_int(attrs["block"], "block", 1)
    mode = as_choice(attrs["mode"], "mode", DEPTH_TO_SPACE_MODES)
    x = in_types[0]
    require_rank(x, 3, "space_to_depth")
    if x.height % block or x.width % block:
        raise AttrError(f"block must divide the height and width {x.height} x {x.width}, "
                        f"got {block}", "block")
    return {"block": block, "mode": mode}


def _s2d_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, b = in_types[0], attrs["block"]
    _s2d_check(x, b)
    return x.with_shape(x.channels * b * b, x.height // b, x.width // b)


def _s2d_ref(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """ONNX's definition, reshape -> transpose -> reshape."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    b = attrs["block"]
    t = x.reshape(n, c, h // b, b, w // b, b)
    t = t.transpose(0, 3, 5, 1, 2, 4) if attrs["mode"] == "DCR" else t.transpose(0, 1, 3, 5, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)


register(OpDef(name="space_to_depth", family="rearrange",
               signature=(Attr("block", "int"),
                          Attr("mode", "choice", "DCR", choices=DEPTH_TO_SPACE_MODES)),
               canonicalize=_s2d_canonicalize, infer=_s2d_infer, reference=one_input(_s2d_ref),
               macs=no_macs, new_activations=False,
               lower=_lower_blocked_or("space_to_depth_kernel", "space_to_depth_blocked_kernel"),
               layout_rule=_dcr_layouts("input"), layouts=("NCHW", "NCHW8c", "NCHW16c", "NHWC"),
               error_bound=exact_bound(),  # a permutation: exact
               doc="move block x block pixels into channels (the inverse of depth_to_space "
                   "in the same mode; mode=CRD is PyTorch's PixelUnshuffle)"))


# -- channel_shuffle --------------------------------------------------------------------------

def _shuffle_check(x: TensorType, groups: int) -> None:
    require_rank(x, 3, "channel_shuffle")
    if x.channels % groups:
        raise ShapeError(f"channel_shuffle: {x.channels} channels are not divisible by "
                         f"groups={groups}")


def _shuffle_canonicalize(attrs: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
    groups = as_int(attrs["groups"], "groups", 1)
    x = in_types[0]
    require_rank(x, 3, "channel_shuffle")
    if x.channels % groups:
        raise AttrError(f"groups must divide the {x.channels} channels, got {groups}", "groups")
    return {"groups": groups}


def _shuffle_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    _shuffle_check(in_types[0], attrs["groups"])
    return in_types[0]


def _shuffle_ref(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """ShuffleNet's definition: [N, g, C/g, H, W] -> swap the two channel axes -> back."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    g = attrs["groups"]
    return x.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


register(OpDef(name="channel_shuffle", family="rearrange", signature=(Attr("groups", "int"),),
               canonicalize=_shuffle_canonicalize, infer=_shuffle_infer,
               reference=one_input(_shuffle_ref), macs=no_macs, new_activations=False,
               lower=_lower_with("channel_shuffle_kernel", "groups"),
               error_bound=exact_bound(),  # a permutation: exact
               doc="interleave the channels of `groups` groups (ShuffleNet): output channel o "
                   "is input channel (o % groups) * (C / groups) + o // groups"))


# -- gradients: each op is a permutation, so its gradient is the inverse permutation --------------
# depth_to_space and space_to_depth with the same block and mode undo each other; shuffling
# C / g groups undoes shuffling g (channel o = a C/g + b goes to b g + a, and back).

def _inverse_rearrange(op: str):
    def rule(d):
        return [d.add(op, [d.dy], dict(d.attrs))]
    return rule


def _shuffle_gradient(d):
    return [d.add("channel_shuffle", [d.dy],
                  {"groups": d.type(d.input(0)).channels // d.attrs["groups"]})]


get_op("depth_to_space").gradient = _inverse_rearrange("space_to_depth")
get_op("space_to_depth").gradient = _inverse_rearrange("depth_to_space")
get_op("channel_shuffle").gradient = _shuffle_gradient
