"""Receptive fields: which part of the network's input each node's outputs see.

Per spatial axis (height, width) a field is three numbers, in input pixels:
- `size`: how many input pixels one output element depends on (the window, padding included);
- `jump`: how far apart, in the input, the windows of two neighbouring output elements are
  (the product of the strides so far; below 1 after upsampling);
- `start`: the centre of the first output element's window, in input coordinates (pixel
  centres at 0, 1, 2, ...; negative where the window reaches into the padding).

The recurrence, for a window op with kernel k, stride s, dilation d and padding p before the
axis (k_eff = d (k - 1) + 1 is the dilated kernel):

    size' = size + (k_eff - 1) jump
    jump' = jump s
    start' = start + ((k_eff - 1) / 2 - p) jump

so two stacked 3x3 convolutions see 5x5, three see 7x7, and one 3x3 with dilation 2 sees 5x5.
Elementwise ops (activations, batch norm, LRN, dropout, flip, flatten), channel slices and
shuffles keep the field; group and instance norm (statistics over the whole map) and a softmax
along a spatial axis see the whole input.
Ops that join tensors (add, mul, concat, ...) take, per axis, the largest size and jump of
their inputs and the start of the widest (a broadcast C x 1 x 1 gate joins a whole-input
field, so the result sees everything). Global pooling, dense layers, reshapes and the distance
of two towers see the whole input. A transposed convolution divides the jump by its stride and
grows the size by the input pixels one output gathers (ceil(k_eff / s)); nearest resizing
divides the jump by the scale; bilinear reads the two pixels around each output's source
coordinate (its weights a tent two pixels wide, centred there), bicubic four, and antialiased
downsampling by s stretches either over 1 / s times as many; the source coordinates are
spaced 1 / scale apart (half-pixel) or (in - 1) / (out - 1) apart (align_corners: the corner
pixels' centres meet); depth_to_space is nearest upsampling by its block, space_to_depth a
block x block window with stride block. Fractions are exact (resizing's to 1/1000, except
align_corners' (in - 1) / (out - 1), exact whatever the lengths).

Fields are read from the canonical attributes each op stores on its node (`kernel`, `stride`,
`dilation`, `pads` = (top, left, bottom, right), `scale`, `mode`), so they hold for graphs from
the DSL and from ONNX alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from .ir import Graph, Node
from .ops import get_op, is_constant
from .ops.resize import axis_taps, nearest_index, source_coordinates


@dataclass(frozen=True)
class Axis:
    """The field along one spatial axis, in input pixels."""

    size: Fraction
    jump: Fraction
    start: Fraction


@dataclass(frozen=True)
class Field:
    """A node's receptive field: per axis (height, width), or the whole input.

    `axes` is None for tensors without spatial axes that come from one that has them only
    through a whole-input op (then `whole` is set), and for networks whose input is a vector.
    """

    axes: tuple[Axis, Axis] | None
    whole: bool = False

    @property
    def size(self) -> tuple[Fraction, Fraction] | None:
        return None if self.axes is None else (self.axes[0].size, self.axes[1].size)


_WHOLE = Field(None, whole=True)
_NONE = Field(None)
_INPUT = Field((Axis(Fraction(1), Fraction(1), Fraction(0)),) * 2)

# Ops that keep each element's field: elementwise, per-position or channel-wise.
_KEEP_FAMILIES = ("activation", "norm")
_KEEP_OPS = ("dropout", "identity", "flip", "flatten", "channel_shuffle", "channel_slice")
# Ops whose statistics span the whole height and width of their input.
_WHOLE_MAP_OPS = ("groupnorm", "instance_norm")
# Ops that join several tensors position by position.
_JOIN_OPS = ("add", "sub", "mul", "multiply", "subtract", "concat")


def receptive_fields(graph: Graph) -> dict[int, Field]:
    """The receptive field of every node (parameters and the constants derived from them,
    such as a convolutionalized dense layer's weight, excluded), keyed by node id."""
    fields: dict[int, Field] = {}
    for node in graph.topo_order():
        if is_constant(graph, node):
            continue
        if node.op == "input":
            fields[node.id] = _INPUT if node.type.rank == 3 else _NONE
            continue
        ins = [fields[i] for i in node.inputs if i in fields]
        fields[node.id] = field_of(node, ins, graph.node(node.inputs[0]).type.shape
                                   if node.inputs else ())
    return fields


def field_of(node: Node, ins: list[Field], in_shape: tuple[int, ...]) -> Field:
    """One node's field from its inputs' fields, its canonical attributes and its first
    input's shape (``in_shape``, () without inputs: bilinear resizing with ``align_corners``
    reads it)."""
    op = get_op(node.op)
    a = node.attrs
    if not ins:
        return _NONE
    if len(ins) > 1 or node.op in _JOIN_OPS:
        return _join(ins) if node.op in _JOIN_OPS else _WHOLE
    x = ins[0]
    if node.op in _WHOLE_MAP_OPS or a.get("axis", 0) != 0 and op.family == "activation":
        return _WHOLE  # statistics over height and width, or a softmax along a spatial axis
    if op.family in _KEEP_FAMILIES or node.op in _KEEP_OPS:
        return x
    if x.axes is None:  # nothing spatial left to track: a vector, or already the whole input
        return x
    if "kernel" in a and "output_padding" in a:  # a transposed convolution
        return Field(tuple(_transposed(ax, k, s, d, p) for ax, k, s, d, p in
                           zip(x.axes, a["kernel"], a["stride"], a.get("dilation", (1, 1)),
                               a["pads"][:2])))
    if "kernel" in a:  # convolutions and windowed pooling
        return Field(tuple(_window(ax, k, s, d, p) for ax, k, s, d, p in
                           zip(x.axes, a["kernel"], a["stride"], a.get("dilation", (1, 1)),
                               a["pads"][:2])))
    if node.op == "space_to_depth":  # a b x b window with stride b, no padding
        return Field(tuple(_window(ax, a["block"], a["block"], 1, 0) for ax in x.axes))
    if node.op == "depth_to_space":  # nearest upsampling by b: pixel h*b + i reads h
        return Field(tuple(Axis(ax.size, ax.jump / a["block"], ax.start) for ax in x.axes))
    if op.family == "resize":
        return Field(tuple(_resized(ax, a, k, n_in, n_out) for k, (ax, n_in, n_out) in
                           enumerate(zip(x.axes, in_shape[1:], node.type.shape[1:]))))
    if "pads" in a:  # explicit padding shifts the positions, not the sizes
        return Field(tuple(Axis(ax.size, ax.jump, ax.start - p * ax.jump)
                           for ax, p in zip(x.axes, a["pads"][:2])))
    return _WHOLE  # global pooling, dense, reshape: every output sees every input pixel


def _window(ax: Axis, k: int, s: int, d: int, p: int) -> Axis:
    k_eff = d * (k - 1) + 1
    return Axis(ax.size + (k_eff - 1) * ax.jump, ax.jump * s,
                ax.start + (Fraction(k_eff - 1, 2) - p) * ax.jump)


def _transposed(ax: Axis, k: int, s: int, d: int, p: int) -> Axis:
    """Output o gathers input i where o = i s - p + d t: ceil(k_eff / s) input pixels at most,
    spaced one input pixel apart; neighbouring outputs are 1/s input pixels apart."""
    k_eff = d * (k - 1) + 1
    gathered = math.ceil(Fraction(k_eff, s))
    return Axis(ax.size + (gathered - 1) * ax.jump, ax.jump / s,
                ax.start + (p - Fraction(k_eff - 1, 2)) / s * ax.jump)


def _resized(ax: Axis, a: dict, k: int, n_in: int, n_out: int) -> Axis:
    """Output i of a resize along axis ``k`` reads the input around its source coordinate
    src(i) = first + i step (``compiler/ops/resize.py``'s): nearest one pixel, round(src(i));
    bilinear and bicubic their filter's taps around it."""
    f = Fraction(a["scale"][k]).limit_denominator(1000)
    if a["mode"] == "nearest" and a["coordinates"] == "asymmetric":  # in[floor(i / f)]
        return Axis(ax.size, ax.jump / f, ax.start)
    src = source_coordinates(n_in, n_out, a["scale"][k], a["coordinates"],
                             (a["roi"][k], a["roi"][k + 2]))
    first = Fraction(src[0]).limit_denominator(1000)
    step = Fraction(src[1] - src[0]).limit_denominator(1000) if n_out > 1 else 1 / f
    if a["coordinates"] == "align_corners" and n_out > 1:  # exactly, whatever the lengths
        first, step = Fraction(0), Fraction(n_in - 1, n_out - 1)
    if a["mode"] == "nearest":
        return Axis(ax.size, ax.jump * step,
                    ax.start + int(nearest_index(src[:1], a["rounding"])[0]) * ax.jump)
    # the filter's taps around src(i), one input pixel apart
    return Axis(ax.size + (axis_taps(a, k) - 1) * ax.jump, ax.jump * step,
                ax.start + first * ax.jump)


def _join(ins: list[Field]) -> Field:
    if any(f.whole for f in ins):
        return _WHOLE
    spatial = [f for f in ins if f.axes is not None]
    if not spatial:
        return ins[0]
    axes = []
    for i in range(2):
        widest = max((f.axes[i] for f in spatial), key=lambda ax: ax.size)
        axes.append(Axis(widest.size, max(f.axes[i].jump for f in spatial), widest.start))
    return Field(tuple(axes))


def format_fraction(v: Fraction) -> str:
    """`5`, `2.5` or `0.333`: integers plainly, other values to three decimals."""
    return str(v.numerator) if v.denominator == 1 else f"{float(v):.3g}"


def describe(f: Field) -> tuple[str, str, str]:
    """(size, jump, start) as `cnnc summary --receptive-field` prints them."""
    if f.whole:
        return "whole input", "-", "-"
    if f.axes is None:
        return "-", "-", "-"
    h, w = f.axes

    def pair(a: Fraction, b: Fraction) -> str:
        return format_fraction(a) if a == b else f"{format_fraction(a)}x{format_fraction(b)}"

    return (f"{format_fraction(h.size)}x{format_fraction(w.size)}", pair(h.jump, w.jump),
            pair(h.start, w.start))
