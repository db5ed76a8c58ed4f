"""Graph plumbing and tensor reshaping: input, param, add, multiply, concat, flatten, reshape,
padding (constant, reflect, edge), flip, dropout and identity.

ONNX mapping (checked against ONNX Runtime in tests/ops/test_ops_vs_onnxruntime.py):
- add / sub / mul = Add (Sum for three or more) / Sub / Mul. Broadcasting is per sample,
  right-aligned over the shapes without the batch; ONNX aligns whole shapes, so an input of
  lower per-sample rank is unsqueezed after the batch axis first.
- concat = Concat(axis = our axis + 1); flatten = Flatten(axis=1);
  reshape = Reshape(shape = [N, *shape]).
- pad = Pad(mode "constant" | "reflect" | "edge", pads [0, 0, top, left, 0, 0, bottom, right],
  value for constant padding).
- flip = Slice(starts -1, ends INT64_MIN, steps -1) on the flipped axes.
- dropout = Dropout at inference = Identity (in a training graph: ``dropout_train``, its seeded
  mask, by its training form).
- distance = Sub -> Abs -> Pow(p) -> ReduceSum -> Pow(1/p).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..kernels import elementwise
from ..kernels.backward import (
    channel_pad_kernel,
    channel_sum_kernel,
    distance_grad_kernel,
    dropout_train_kernel,
    reduce_to_kernel,
)
from ..kernels.common import Sizes
from ..kernels.elementwise import (
    channel_slice_kernel,
    concat_blocked_kernel,
    concat_kernel,
    pad_kernel,
)
from ..kernels.kernel_ir import Const, VBin
from ..kernels.rearrange import channel_gather_kernel, gather_arity
from ..kernels.tiles import BLOCKED_INTS
from ..types import BLOCKED, BLOCKED16, NHWC, PLAIN, TensorType, in_every_blocked_layout
from . import (
    EPS32,
    TRANSCENDENTAL,
    Attr,
    AttrError,
    BoundCtx,
    OpDef,
    ShapeError,
    as_choice,
    as_float,
    as_int,
    elementwise_layouts,
    exact_bound,
    get_op,
    no_macs,
    one_input,
    register,
    same_shape,
    show_value,
    sum_bound,
)
from .conv import pad_nchw, resolve_pads
from .lowering import lower_elementwise


def _no_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    raise ShapeError("input and param nodes carry their type; nothing to infer")


def _leaf_reference(inputs, attrs):
    raise NotImplementedError("input and param values are supplied by the caller")


register(OpDef(name="input", family="tensor", signature=(Attr("shape", "shape"),),
               infer=_no_infer, reference=_leaf_reference, macs=no_macs, arity=0,
               new_activations=False, doc="a network input (batch size chosen at run time)"))
register(OpDef(name="param", family="tensor", signature=(Attr("init", "any"),),
               infer=_no_infer, reference=_leaf_reference, macs=no_macs, arity=0,
               new_activations=False, doc="a parameter tensor: weight, bias or statistic"))


# -- broadcasting binary ops ------------------------------------------------------------------

def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...], op: str) -> tuple[int, ...]:
    """NumPy broadcasting over per-sample shapes (right-aligned)."""
    rank = max(len(a), len(b))
    pa, pb = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
    out = []
    for da, db in zip(pa, pb):
        if da != db and 1 not in (da, db):
            raise ShapeError(f"{op}: shapes {'x'.join(map(str, a))} and "
                             f"{'x'.join(map(str, b))} do not match or broadcast")
        out.append(max(da, db))
    return tuple(out)


def _binary_infer(op: str):
    def infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        if len(in_types) < 2:
            raise ShapeError(f"{op} needs at least two inputs, got {len(in_types)}")
        shape = in_types[0].shape
        for t in in_types[1:]:
            shape = broadcast_shapes(shape, t.shape, op)
        return in_types[0].with_shape(*shape)
    return infer


def _per_sample(x: np.ndarray, rank: int) -> np.ndarray:
    """Align a per-sample array of lower rank for broadcasting with a batched array."""
    extra = rank + 1 - x.ndim
    return x.reshape(x.shape[:1] + (1,) * extra + x.shape[1:])


def _add_reference(inputs, attrs):
    rank = max(np.ndim(x) for x in inputs) - 1
    out = _per_sample(np.asarray(inputs[0], np.float64), rank)
    for x in inputs[1:]:
        out = out + _per_sample(np.asarray(x, np.float64), rank)
    return out


def _mul_reference(inputs, attrs):
    rank = max(np.ndim(x) for x in inputs) - 1
    out = _per_sample(np.asarray(inputs[0], np.float64), rank)
    for x in inputs[1:]:
        out = out * _per_sample(np.asarray(x, np.float64), rank)
    return out


def _elementwise_macs(in_types, out, attrs):
    return 0


def _vbin(op: str, x, o):

    return VBin(op, x, o)


def _lower_as(op: str):
    def lower(ctx, node):

        return lower_elementwise(ctx, node, op)
    return lower


_ELEMENTWISE = dict(takes_epilogue="any", inplace=True, layout_rule=elementwise_layouts)

register(OpDef(name="add", family="tensor", signature=(), infer=_binary_infer("add"),
               reference=_add_reference, macs=_elementwise_macs, arity=None,
               epilogue=lambda x, a, o: x + o, lower=_lower_as("add"), **_ELEMENTWISE,
               vector_epilogue=lambda x, a, o: _vbin("add", x, o),
               # n inputs: n - 1 float32 additions
               error_bound=sum_bound(terms=lambda ctx: len(ctx.inputs) - 1, extra=0),
               doc="elementwise sum with broadcasting (residual connections)"))


def _sub_reference(inputs, attrs):
    a, b = (np.asarray(x, np.float64) for x in inputs)
    rank = max(a.ndim, b.ndim) - 1
    return _per_sample(a, rank) - _per_sample(b, rank)


def _sub_infer(in_types, attrs):
    if len(in_types) != 2:
        raise ShapeError(f"sub takes two inputs, got {len(in_types)}")
    return _binary_infer("sub")(in_types, attrs)


register(OpDef(name="sub", family="tensor", signature=(), infer=_sub_infer,
               reference=_sub_reference, macs=_elementwise_macs, arity=2,
               epilogue=lambda x, a, o: x - o, lower=_lower_as("sub"), **_ELEMENTWISE,
               # one rounding of |a| + |b| (the sum of |terms|: add's reference on |inputs|)
               error_bound=sum_bound(terms=lambda ctx: 1, extra=0, via=_add_reference),
               aliases=("subtract",), doc="elementwise difference with broadcasting"))
def _mul_bound(ctx: BoundCtx):
    """n - 1 float32 products (a relative EPS32 each); an error in the first input (a fused
    gate's scaled value) is multiplied by the other factors."""
    others = _mul_reference([np.ones(ctx.out.shape)] + [np.abs(x) for x in ctx.inputs[1:]],
                            ctx.attrs)
    return ctx.err_in * others + (len(ctx.inputs) - 1) * EPS32 * np.abs(ctx.out)


register(OpDef(name="mul", family="tensor", signature=(), infer=_binary_infer("multiply"),
               reference=_mul_reference, macs=_elementwise_macs, arity=None,
               epilogue=lambda x, a, o: x * o, lower=_lower_as("mul"), **_ELEMENTWISE,
               vector_epilogue=lambda x, a, o: _vbin("mul", x, o),
               aliases=("multiply",), error_bound=_mul_bound,
               doc="elementwise product with broadcasting (squeeze-excitation gates)"))


# -- concat -----------------------------------------------------------------------------------

def _concat_infer(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    axis = attrs.get("axis", 0)
    first = in_types[0]
    if not 0 <= axis < first.rank:
        raise ShapeError(f"concat: axis {axis} out of range for {first}")
    for t in in_types[1:]:
        if t.rank != first.rank or any(
            d1 != d2 for i, (d1, d2) in enumerate(zip(first.shape, t.shape)) if i != axis
        ):
            where = "the channel axis" if axis == 0 else f"axis {axis}"
            same = ("; all inputs need the same height and width" if axis == 0 and first.rank == 3
                    else "")
            raise ShapeError(f"concat: shapes {first} and {t} differ outside {where}{same}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in in_types)
    return first.with_shape(*shape)


def _concat_canonicalize(attrs, in_types):
    return {"axis": as_int(attrs["axis"], "axis", 0)}


def _lower_simple(ctx, builder: str, *args):
    """A kernel from ``kernels.elementwise.<builder>(name, *args, comment, sz)``, its sizes
    runtime integers (``Sizes``)."""

    sz = Sizes()
    k = getattr(elementwise, builder)(ctx.kname, *args, ctx.comment, sz=sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _lower_concat(ctx, node):

    if node.attrs.get("in_place"):  # its producers wrote into its buffer: nothing to do
        return ctx.concat_view_step()
    if ctx.out_storage is not None:  # blocked inputs, copied block by block
        ints = {"P": node.type.shape[1], "Q": node.type.shape[2]}
        ints.update(zip(("YB", "YH", "YW", "YT", "YL"), ctx.out_storage.ints()))
        first, lanes = 0, ctx.out_storage.lanes
        for k, i in enumerate(ctx.tensor_inputs):
            c = ctx.graph.node(i).type.shape[0]
            ints.update({f"K{k}": c // lanes, f"O{k}": first // lanes})
            ints.update(zip((f"X{k}B", f"X{k}H", f"X{k}W", f"X{k}T", f"X{k}L"),
                            ctx.storage(i).ints()))
            first += c
        k = concat_blocked_kernel(ctx.kname, len(ctx.tensor_inputs), ctx.comment, lanes,
                                  ctx.out_storage.nhwc)
        return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=ints)
    sz = Sizes()
    k = concat_kernel(ctx.kname, ctx.in_shapes, node.attrs["axis"], ctx.comment, sz,
                      gpu=ctx.backend.thread_blocks)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(name="concat", family="tensor", signature=(Attr("axis", "int", 0),),
               canonicalize=_concat_canonicalize, infer=_concat_infer,
               reference=lambda xs, a: np.concatenate([np.asarray(x, np.float64) for x in xs],
                                                      axis=a["axis"] + 1),
               macs=no_macs, arity=None, lower=_lower_concat, error_bound=exact_bound(),
               doc="concatenation along channels (inception modules, U-Net skips)"))


# -- channel slice ----------------------------------------------------------------------------

def _slice_canonicalize(attrs, in_types):
    x = in_types[0]
    if x.rank != 3:
        raise ShapeError(f"channel_slice needs a channels x height x width input, got {x}")
    start = as_int(attrs["start"], "start", 0)
    stop = as_int(attrs["stop"], "stop", 1)
    if not start < stop <= x.channels:
        raise AttrError(f"start and stop must satisfy 0 <= start < stop <= "
                        f"{x.channels}, got start={start}, stop={stop}", "stop")
    return {"start": start, "stop": stop}


def _slice_infer(in_types, attrs):
    x = in_types[0]
    if x.rank != 3 or not 0 <= attrs["start"] < attrs["stop"] <= x.channels:
        raise ShapeError(f"channel_slice: channels {attrs['start']}..{attrs['stop'] - 1} of {x}")
    return x.with_shape(attrs["stop"] - attrs["start"], x.height, x.width)


def _slice_layouts(node, in_types):
    """A slice starting at a whole block is a view of channel-blocked storage."""
    pairs = [(PLAIN, PLAIN)]
    if node.attrs["start"] % 8 == 0:
        pairs += [(BLOCKED, BLOCKED), (NHWC, NHWC)]
    if node.attrs["start"] % 16 == 0:
        pairs.append((BLOCKED16, BLOCKED16))
    return tuple(pairs)


def _lower_slice(ctx, node):

    if ctx.storage(ctx.tensor_inputs[0]) is not None:  # a view of the blocked storage
        return ctx.view_step()

    sz = Sizes()
    k = channel_slice_kernel(ctx.kname, ctx.in_shapes[0], node.attrs["start"],
                             node.attrs["stop"], ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(name="channel_slice", family="tensor",
               signature=(Attr("start", "int"), Attr("stop", "int")),
               canonicalize=_slice_canonicalize, infer=_slice_infer,
               reference=one_input(lambda x, a: np.asarray(x, np.float64)[:, a["start"]:
                                                                          a["stop"]]),
               macs=no_macs, new_activations=False, lower=_lower_slice,
               error_bound=exact_bound(),
               layout_rule=_slice_layouts,
               doc="channels start..stop-1 (a merged 1x1 convolution's share for one branch)"))


# -- channel gather (made by fold_channel_moves) ----------------------------------------------

def _gather_canonicalize(attrs, in_types):
    try:
        channels = tuple((int(i), int(c)) for i, c in attrs["channels"])
    except (TypeError, ValueError):
        raise AttrError("channels must be (input, channel) pairs", "channels") from None
    if not channels:
        raise AttrError("a channel gather needs at least one channel", "channels")
    return {"channels": channels}


def _gather_infer(in_types, attrs):
    first = in_types[0]
    for t in in_types:
        if t.rank != 3 or t.shape[1:] != first.shape[1:]:
            raise ShapeError(f"channel_gather: inputs {first} and {t} differ in height or width")
    for i, c in attrs["channels"]:
        if not (0 <= i < len(in_types) and 0 <= c < in_types[i].channels):
            raise ShapeError(f"channel_gather: no channel {c} in input {i}")
    return first.with_shape(len(attrs["channels"]), first.height, first.width)


def _gather_ref(xs, attrs):
    return np.stack([np.asarray(xs[i], np.float64)[:, c] for i, c in attrs["channels"]], axis=1)


def _gather_layouts(node, in_types):
    """Every input in the output's layout: plain planes, or lanes of channel-blocked storage
    (any channel to any lane: no alignment needed)."""
    return in_every_blocked_layout(((PLAIN, PLAIN), (BLOCKED, BLOCKED)))


def _lower_gather(ctx, node):

    inputs = ctx.tensor_inputs
    arity = gather_arity(len(inputs))
    inputs = inputs + [inputs[-1]] * (arity - len(inputs))  # unused repeats: fewer variants
    table = np.asarray(node.attrs["channels"], np.float64).ravel()
    c, h, w = node.type.shape
    ints = {"C": c, "P": h, "Q": w}
    blocked = ctx.out_storage is not None
    for k, i in enumerate(inputs):
        storage = ctx.storage(i)
        if blocked:
            ints.update(zip((f"X{k}{s}" for s in BLOCKED_INTS), storage.ints()))
        else:
            ints[f"X{k}C"] = ctx.graph.node(i).type.shape[0]
    if blocked:
        ints.update(zip(("Y" + s for s in BLOCKED_INTS), ctx.out_storage.ints()))
        ints["ZH"] = int(bool(node.attrs.get("zero_halo")))
    lanes = ctx.out_storage.lanes if blocked else 8
    kernel = channel_gather_kernel(ctx.kname, arity, blocked, ctx.comment, lanes,
                                   blocked and ctx.out_storage.nhwc)
    return ctx.kernel_step(kernel, inputs=inputs, ints=ints,
                       pack=lambda values: {"c_table": table})


register(OpDef(name="channel_gather", family="tensor",
               signature=(Attr("channels", "any", doc="(input, channel) per output channel"),),
               canonicalize=_gather_canonicalize, infer=_gather_infer, reference=_gather_ref,
               macs=no_macs, arity=None,
               new_activations=False, lower=_lower_gather, error_bound=exact_bound(),
               layout_rule=_gather_layouts, layouts=("NCHW", "NCHW8c", "NCHW16c", "NHWC"),
               pass_made=True,
               # its padding lanes are written zero, its halo zeroed with ZH
               writes_whole_blocks=lambda node, in_types: True,
               doc="output channel o is channel channels[o][1] of input channels[o][0]: "
                   "concatenations, channel slices and shuffles composed into one copy "
                   "(fold_channel_moves)"))


# -- flatten / reshape ------------------------------------------------------------------------

def _flatten_layouts(node, in_types):
    """NCHW, or a view of channel-blocked storage whose features are in the storage's order
    (only a dense layer reads that: its weights follow the order)."""
    if in_types[0].rank != 3:
        return ((PLAIN, PLAIN),)
    return in_every_blocked_layout(((PLAIN, PLAIN), (BLOCKED, BLOCKED)))


register(OpDef(name="flatten", family="tensor", view=True, signature=(),
               infer=lambda ts, a: ts[0].with_shape(ts[0].size),
               reference=one_input(lambda x, a: np.asarray(x, np.float64).reshape(len(x), -1)),
               macs=no_macs, new_activations=False, layout_rule=_flatten_layouts,
               doc="flatten each sample to a feature vector (C*H*W, C-order)"))


def _reshape_canonicalize(attrs, in_types):
    shape = attrs["shape"]
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise AttrError(f"shape must be a tuple such as (64, 7, 7) (batch excluded), got "
                        f"{show_value(shape)}", "shape")
    dims = [as_int(d, "shape", -1) for d in shape]
    if dims.count(-1) > 1:
        raise AttrError(f"at most one dimension of shape may be -1, got {tuple(shape)}", "shape")
    total = in_types[0].size
    known = 1
    for d in dims:
        if d == 0:
            raise AttrError(f"dimensions of shape must be positive (or one -1), got {tuple(shape)}",
                            "shape")
        if d != -1:
            known *= d
    if -1 in dims:
        if total % known:
            raise AttrError(f"{total} elements cannot fill shape "
                            f"{tuple(shape)}", "shape")
        dims[dims.index(-1)] = total // known
    return {"shape": tuple(dims)}


def _reshape_infer(in_types, attrs):
    shape = attrs["shape"]
    size = int(np.prod(shape))
    if size != in_types[0].size:
        raise ShapeError(f"reshape: {in_types[0]} has {in_types[0].size} elements, shape "
                         f"{'x'.join(map(str, shape))} has {size}")
    return in_types[0].with_shape(*shape)


register(OpDef(name="reshape", family="tensor", view=True, signature=(Attr("shape", "shape"),),
               canonicalize=_reshape_canonicalize, infer=_reshape_infer,
               reference=one_input(lambda x, a: np.asarray(x, np.float64)
                                   .reshape((len(x),) + a["shape"])),
               macs=no_macs, new_activations=False,
               doc="reshape each sample (C-order, batch kept)"))


# -- zero padding / flip / dropout / identity -------------------------------------------------

PAD_MODES = ("constant", "reflect", "edge")


def _pad_canonicalize(attrs, in_types):
    """Per-side padding and its mode. ``reflect`` mirrors about the edge pixel (not repeating
    it: ONNX's reflect, PyTorch's ReflectionPad2d), so each side's padding must be smaller than
    the input along that axis; ``edge`` repeats the edge pixel (ReplicationPad2d). ``value``
    belongs to constant padding only."""
    pads = resolve_pads(attrs["pad"], (1, 1), (1, 1), (1, 1), (1, 1), words=())
    mode = as_choice(attrs["mode"], "mode", PAD_MODES)
    value = as_float(attrs["value"], "value")
    if mode != "constant" and value != 0.0:
        raise AttrError(f"value is the fill of mode=constant; mode={mode} takes its values "
                        "from the input", "value")
    x = in_types[0]
    if x.rank == 3:  # (another rank is the shape rule's to refuse)
        t, l, b, r = pads
        if mode == "reflect" and (max(t, b) >= x.height or max(l, r) >= x.width):
            raise AttrError(f"mode=reflect needs padding smaller than the input on each axis: "
                            f"pad (top, left, bottom, right) = {pads} on a {x.height} x "
                            f"{x.width} input (at most {x.height - 1} rows and {x.width - 1} "
                            "columns)", "pad")
    return {"pads": pads, "value": value, "mode": mode}


def _pad_infer(in_types, attrs):
    x = in_types[0]
    if x.rank != 3:
        raise ShapeError(f"pad needs a channels x height x width input, got {x}")
    t, l, b, r = attrs["pads"]
    return x.with_shape(x.channels, x.height + t + b, x.width + l + r)


def _pad_reference(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    x = np.asarray(x, np.float64)
    mode = attrs["mode"]
    if mode == "constant":
        return pad_nchw(x, attrs["pads"], attrs["value"])
    t, l, b, r = attrs["pads"]
    # NumPy's reflect and edge are ONNX's (and PyTorch's reflection / replication padding).
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), mode=mode)


def _lower_pad(ctx, node):

    a = node.attrs
    sz = Sizes()
    k = pad_kernel(ctx.kname, ctx.in_shapes[0], a["pads"], a["value"], ctx.comment,
                   mode=a["mode"], sz=sz, gpu=ctx.backend.thread_blocks)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(name="pad", family="tensor",
               signature=(Attr("pad", "pads"), Attr("value", "float", 0.0),
                          Attr("mode", "choice", "constant", choices=PAD_MODES)),
               canonicalize=_pad_canonicalize, infer=_pad_infer,
               reference=one_input(_pad_reference), macs=no_macs, aliases=("zeropad",),
               lower=_lower_pad, error_bound=exact_bound(),  # copies, in every mode
               doc="padding per side (top, left, bottom, right): constant, reflect or edge"))


def _flip_canonicalize(attrs, in_types):
    return {"axis": as_choice(attrs["axis"], "axis", ("horizontal", "vertical", "both"))}


def _flip_reference(x, attrs):
    x = np.asarray(x, np.float64)
    axes = {"horizontal": (3,), "vertical": (2,), "both": (2, 3)}[attrs["axis"]]
    return np.flip(x, axes)


def _flip_infer(in_types, attrs):
    if in_types[0].rank != 3:
        raise ShapeError(f"flip needs a channels x height x width input, got {in_types[0]}")
    return in_types[0]


register(OpDef(name="flip", family="tensor",
               signature=(Attr("axis", "choice", "both", choices=("horizontal", "vertical",
                                                                   "both")),),
               canonicalize=_flip_canonicalize, infer=_flip_infer,
               reference=one_input(_flip_reference), macs=no_macs, error_bound=exact_bound(),
               lower=lambda ctx, node: _lower_simple(ctx, "flip_kernel", ctx.in_shapes[0],
                                                     node.attrs["axis"]),
               doc="mirror an image (both axes: turns correlation into convolution)"))


def _dropout_canonicalize(attrs, in_types):
    rate = as_float(attrs["rate"], "rate")
    if not 0.0 <= rate < 1.0:
        raise AttrError(f"rate must be in [0, 1), got {rate}", "rate")
    return {"rate": rate}


# Dropout in training (dropout's training form): y = x keep / (1 - rate), PyTorch's inverted
# dropout, the mask drawn from a counter-based hash so that the float64 reference and every
# kernel draw the same one, in 32-bit unsigned integer arithmetic (wrapping), with no state:
#
#     key  = mix32(mix32(mix32(seed) + stream) + step)
#     keep = mix32(key + index) >= floor(rate 2^32)
#
# ``mix32`` is Wellons' lowbias32 (a bijection of 32-bit integers with near-ideal avalanche);
# ``seed`` and ``step`` are the training graph's whole-batch input ``dropout_seed`` = [seed,
# step, first] (the runtime feeds it each step; one for every dropout layer), ``stream`` tells
# the layers apart (its node id) and ``index`` is the element's position in the N x C x H x W
# global batch (in that order, whatever layout a kernel stores): a data-parallel replica whose
# shard of it starts at image ``first`` counts from there (0 alone), so the replicas together
# draw one process's mask. Its gradient is the same mask:
# dx = dropout_train(dy), the op being linear and diagonal in x.

#: The training graph's input holding [seed, step, first] for the dropout masks
#: (autodiff.attach_loss).
DROPOUT_SEED = "dropout_seed"
_U32 = 0xFFFFFFFF


def mix32(v: np.ndarray) -> np.ndarray:
    """lowbias32 (Chris Wellons' hash prospector) on unsigned 32-bit values held in uint64."""
    v = np.asarray(v, np.uint64) & _U32
    v ^= v >> np.uint64(16)
    v = (v * np.uint64(0x7FEB352D)) & _U32
    v ^= v >> np.uint64(15)
    v = (v * np.uint64(0x846CA68B)) & _U32
    return v ^ (v >> np.uint64(16))


def dropout_keep(seed: int, step: int, stream: int, shape: tuple[int, ...],
                 rate: float, first: int = 0) -> np.ndarray:
    """The mask of kept elements for a batch of ``shape``, images ``first`` on of the global
    batch (the section comment's hash)."""
    key = int(mix32(seed % 2 ** 32))
    for salt in (stream, step):
        key = int(mix32((key + salt) % 2 ** 32))
    start = first * int(np.prod(shape[1:]))
    index = np.arange(start, start + int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    return mix32(key + index) >= np.uint64(math.floor(rate * 2 ** 32))


def _dropout_train_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    seed, step, first = (int(v) for v in np.asarray(inputs[1]).reshape(3))
    keep = dropout_keep(seed, step, attrs["stream"], x.shape, attrs["rate"], first)
    return np.where(keep, x / (1.0 - attrs["rate"]), 0.0)


def _dropout_train_infer(in_types, attrs):
    x, seed = in_types
    if seed.shape != (3,) or seed.batched:
        raise ShapeError(f"dropout_train: seed, step and first image must be one [seed, step, "
                         f"first] for the batch, got {seed}")
    return x


def _dropout_training_form(graph, node, updates: dict[int, int]) -> None:
    """dropout -> dropout_train over the ``dropout_seed`` input (added by the first dropout;
    a rate of 0 is the identity, and no mask)."""
    x = node.inputs[0]
    if node.attrs["rate"] == 0.0:
        graph.replace_all_uses(node.id, x)
        graph.erase(node.id)
        return
    seed = graph.inputs.get(DROPOUT_SEED)
    if seed is None:
        seed = graph.add("input", [], {"shape": (3,)}, name=DROPOUT_SEED,
                         type=TensorType((3,), "int64", batched=False)).id
        graph.inputs[DROPOUT_SEED] = seed
    elif graph.node(seed).type.batched:
        raise ShapeError(f"the network has an input named {DROPOUT_SEED!r}, which training "
                         "takes for the dropout masks' seed; rename it")
    train = graph.add("dropout_train", [x, seed], {"rate": node.attrs["rate"],
                                                   "stream": node.id},
                      name=node.name, span=node.span)
    graph.replace_all_uses(node.id, train.id)
    graph.erase(node.id)


def _lower_dropout_train(ctx, node):
    """The mask's hash in the kernel, from the int64 seed input as it is (``int_array``)."""
    sz = Sizes()
    k = dropout_train_kernel(ctx.kname, int(np.prod(ctx.in_shapes[0])), node.attrs["rate"],
                             node.attrs["stream"], ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _dropout_train_gradient(d):
    return [d.add("dropout_train", [d.dy, d.input(1)], dict(d.attrs)), None]


register(OpDef(name="dropout", family="tensor", view=True, signature=(Attr("rate", "float", 0.5),),
               canonicalize=_dropout_canonicalize, infer=same_shape,
               reference=one_input(lambda x, a: np.asarray(x, np.float64)), macs=no_macs,
               new_activations=False, training_form=_dropout_training_form,
               doc="dropout: identity at inference"))
register(OpDef(name="dropout_train", family="tensor",
               signature=(Attr("rate", "float"), Attr("stream", "int")),
               infer=_dropout_train_infer, reference=_dropout_train_reference, macs=no_macs,
               arity=2, pass_made=True, new_activations=False,
               gradient=_dropout_train_gradient, lower=_lower_dropout_train,
               error_bound=lambda ctx: 2 * EPS32 * np.abs(ctx.out),  # 1 / (1 - rate), product
               doc="x / (1 - rate) or 0, by the seeded mask (dropout's training form)"))
register(OpDef(name="identity", family="tensor", view=True, signature=(), infer=same_shape,
               reference=one_input(lambda x, a: np.asarray(x, np.float64)), macs=no_macs,
               new_activations=False, doc="identity"))


# -- distance between embeddings --------------------------------------------------------------

def _distance_infer(in_types, attrs):
    a, b = in_types
    if a.shape != b.shape:
        raise ShapeError(f"distance: embeddings of shapes {a} and {b} differ")
    return a.with_shape(1)


def _distance_reference(inputs, attrs):
    a, b = (np.asarray(x, np.float64) for x in inputs)
    d = (a - b).reshape(len(a), -1)
    p = attrs["p"]
    return (np.abs(d) ** p).sum(axis=1, keepdims=True) ** (1.0 / p)


def _distance_bound(ctx: BoundCtx):
    """The kernel rounds each difference to float32 (p = 2: and its square) and does the rest
    in float64, rounding the result once: a relative error of at most about (p + 1) EPS32 in
    the sum, 1/p of it in the root, so ``3 max(p, 1) / min(p, 1) + 2`` EPS32 of |y|."""
    p = ctx.attrs["p"]
    return EPS32 * (3 * max(p, 1.0) / min(p, 1.0) + 2) * np.abs(ctx.out)


def _distance_canonicalize(attrs, in_types):
    p = as_float(attrs["p"], "p")
    if p <= 0:
        raise AttrError(f"p must be positive, got {p}", "p")
    return {"p": p}


register(OpDef(name="distance", family="tensor", signature=(Attr("p", "float", 2.0),),
               canonicalize=_distance_canonicalize, infer=_distance_infer,
               reference=_distance_reference,
               lower=lambda ctx, node: _lower_simple(ctx, "distance_kernel",
                                                     int(np.prod(ctx.in_shapes[0])),
                                                     float(node.attrs["p"])),
               macs=lambda ts, out, a: ts[0].size, arity=2, error_bound=_distance_bound,
               doc="Lp distance between two embeddings, one number per sample (siamese)"))


# -- gradients ----------------------------------------------------------------------------------
# add:      dx_i = reduce_to(dy, x_i)             (summed over the axes x_i was broadcast along)
# sub:      da = reduce_to(dy, a), db = reduce_to(scale(dy, -1), b)
# mul:      dx_i = reduce_to(dy * prod_{j != i} x_j, x_i)
# flatten, reshape:  dx = reshape(dy, x's shape);  identity: dx = dy
# concat:   dx_i = channel_slice(dy) of its channels;  channel_slice: dx = channel_pad(dy)
# pad:      dx = pad_grad(dy): the inner window of dy, plus (reflect, edge) the padded values
#           added back onto the pixels they copy;  flip: dx = flip(dy)

def _add_gradient(d):
    return [d.reduce_to(d.dy, i) if d.needs(k) else None for k, i in enumerate(d.node.inputs)]


def _sub_gradient(d):
    a, b = d.node.inputs
    return [d.reduce_to(d.dy, a) if d.needs(0) else None,
            d.reduce_to(d.add("scale", [d.dy], {"factor": -1.0}), b) if d.needs(1) else None]


def _mul_gradient(d):
    grads = []
    for k, i in enumerate(d.node.inputs):
        if not d.needs(k):
            grads.append(None)
            continue
        others = [j for m, j in enumerate(d.node.inputs) if m != k]
        grads.append(d.reduce_to(d.add("mul", [d.dy, *others]), i))
    return grads


def _reshape_gradient(d):
    return [d.add("reshape", [d.dy], {"shape": d.type(d.input(0)).shape})]


def _identity_gradient(d):
    return [d.dy]


def _concat_gradient(d):
    if d.attrs["axis"] != 0 or d.node.type.rank != 3:
        raise ShapeError(f"concat: cnnc differentiates concatenations along the channels of "
                         f"images only, not axis {d.attrs['axis']} of {d.node.type}")
    grads, start = [], 0
    for k, i in enumerate(d.node.inputs):
        c = d.type(i).channels
        grads.append(d.add("channel_slice", [d.dy], {"start": start, "stop": start + c})
                     if d.needs(k) else None)
        start += c
    return grads


def _slice_gradient(d):
    c = d.type(d.input(0)).channels
    return [d.add("channel_pad", [d.dy], {"before": d.attrs["start"],
                                          "after": c - d.attrs["stop"]})]


def _pad_gradient(d):
    return [d.add("pad_grad", [d.dy], {"pads": d.attrs["pads"], "mode": d.attrs["mode"]})]


def _flip_gradient(d):
    return [d.add("flip", [d.dy], {"axis": d.attrs["axis"]})]


def _distance_gradient(d):
    """y = ||a - b||_p:  da = dy sign(a - b) (|a - b| / y)^(p-1) = -db (0 where y = 0)."""
    da = d.add("distance_grad", [*d.node.inputs, d.node.id, d.dy], {"p": d.attrs["p"]})
    return [da if d.needs(0) else None,
            d.add("scale", [da], {"factor": -1.0}) if d.needs(1) else None]


def _distance_grad_reference(inputs, attrs):
    a, b, y, dy = (np.asarray(v, np.float64) for v in inputs)
    diff = a - b
    scale = (y / 1.0).reshape((len(a),) + (1,) * (a.ndim - 1))
    ratio = np.divide(np.abs(diff), scale, out=np.zeros_like(diff), where=scale > 0)
    return dy.reshape(scale.shape) * np.sign(diff) * ratio ** (attrs["p"] - 1)


for _op, _rule in (("add", _add_gradient), ("sub", _sub_gradient), ("mul", _mul_gradient),
                   ("flatten", _reshape_gradient), ("reshape", _reshape_gradient),
                   ("identity", _identity_gradient), ("concat", _concat_gradient),
                   ("channel_slice", _slice_gradient), ("pad", _pad_gradient),
                   ("flip", _flip_gradient), ("distance", _distance_gradient)):
    get_op(_op).gradient = _rule


# -- the ops only gradients use -------------------------------------------------------------------

def _reduce_to_infer(in_types, attrs):
    x, shape = in_types[0], tuple(attrs["shape"])
    try:
        if broadcast_shapes(x.shape, shape, "reduce_to") != x.shape:
            raise ShapeError(f"reduce_to: {x} does not broadcast from {shape}")
    except ShapeError:
        raise ShapeError(f"reduce_to: {x} is not a broadcast of "
                         f"{'x'.join(map(str, shape)) or 'a scalar'}") from None
    return TensorType(shape, x.dtype, batched=attrs["batched"] and x.batched)


def reduce_to_reference(inputs, attrs):
    """Sum a batched value over the batch (when the result is unbatched) and over the axes
    the result was broadcast along (NumPy's right-aligned rule)."""
    x = np.asarray(inputs[0], np.float64)
    shape, batched = tuple(attrs["shape"]), attrs["batched"]
    per_sample = x.shape[1:]
    lead = len(per_sample) - len(shape)
    axes = tuple(range(1, 1 + lead)) + tuple(
        1 + lead + i for i, d in enumerate(shape) if d == 1 and per_sample[lead + i] != 1)
    y = x.sum(axis=axes, keepdims=True).reshape((len(x),) + shape)
    return y if batched else y.sum(axis=0)


def _channel_sum_infer(in_types, attrs):
    return TensorType((in_types[0].shape[0],), in_types[0].dtype, batched=False)


def _channel_sum_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    return x.reshape(x.shape[0], x.shape[1], -1).sum(axis=(0, 2))


def _channel_pad_infer(in_types, attrs):
    x = in_types[0]
    return x.with_shape(attrs["before"] + x.channels + attrs["after"], *x.shape[1:])


def _channel_pad_reference(inputs, attrs):
    x = np.asarray(inputs[0], np.float64)
    return np.pad(x, ((0, 0), (attrs["before"], attrs["after"])) + ((0, 0),) * (x.ndim - 2))


def _pad_grad_infer(in_types, attrs):
    x = in_types[0]
    t, l, b, r = attrs["pads"]
    return x.with_shape(x.channels, x.height - t - b, x.width - l - r)


def pad_grad_reference(inputs, attrs):
    """The adjoint of ``pad``: every padded value's gradient added back onto the input pixel it
    copies (none for constant padding; reflect: the mirrored pixel; edge: the edge pixel)."""
    dy = np.asarray(inputs[0], np.float64)
    t, l, b, r = attrs["pads"]
    h, w = dy.shape[2] - t - b, dy.shape[3] - l - r
    rows = np.arange(-t, h + b)
    cols = np.arange(-l, w + r)
    if attrs["mode"] == "constant":
        return dy[:, :, t:t + h, l:l + w].copy()
    if attrs["mode"] == "edge":
        rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    else:  # reflect about the edge pixel
        rows = np.abs(rows)
        rows = np.where(rows > h - 1, 2 * (h - 1) - rows, rows)
        cols = np.abs(cols)
        cols = np.where(cols > w - 1, 2 * (w - 1) - cols, cols)
    dx = np.zeros(dy.shape[:2] + (h, w))
    across = np.zeros(dy.shape[:2] + (h, dy.shape[3]))
    np.add.at(across, (slice(None), slice(None), rows), dy)
    np.add.at(dx, (slice(None), slice(None), slice(None), cols), across)
    return dx


def _lower_reduce_to(ctx, node):
    sz = Sizes()
    k = reduce_to_kernel(ctx.kname, ctx.in_shapes[0], node.attrs["shape"],
                         node.type.batched, ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _lower_channel_pad(ctx, node):
    sz = Sizes()
    k = channel_pad_kernel(ctx.kname, ctx.in_shapes[0], node.attrs["before"],
                           node.attrs["after"], ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


def _lower_distance_grad(ctx, node):
    sz = Sizes()
    k = distance_grad_kernel(ctx.kname, int(np.prod(ctx.in_shapes[0])), node.attrs["p"],
                             ctx.comment, sz)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(name="reduce_to", family="tensor", lower=_lower_reduce_to,
               signature=(Attr("shape", "shape"), Attr("batched", "bool")),
               infer=_reduce_to_infer, reference=reduce_to_reference, macs=no_macs,
               pass_made=True, backward=True, new_activations=False,
               error_bound=sum_bound(terms=lambda ctx: ctx.inputs[0].size // max(
                   1, ctx.out.size), extra=0),
               doc="a broadcast value's gradient summed back to its shape (and over the batch)"))
def _lower_channel_sum(ctx, node):
    sz = Sizes()
    k = channel_sum_kernel(ctx.kname, ctx.in_shapes[0], ctx.comment, sz,
                           blocks=ctx.backend.thread_blocks)
    return ctx.kernel_step(k, inputs=ctx.tensor_inputs, ints=sz.values)


register(OpDef(name="channel_sum", family="tensor", signature=(), lower=_lower_channel_sum,
               infer=_channel_sum_infer, reference=_channel_sum_reference, macs=no_macs,
               pass_made=True, backward=True, new_activations=False,
               error_bound=sum_bound(terms=lambda ctx: ctx.inputs[0].size // max(
                   1, ctx.out.size), extra=0),
               doc="the sum over the batch and every pixel of each channel (bias gradients)"))
register(OpDef(name="scale", family="tensor", signature=(Attr("factor", "float"),),
               infer=same_shape, macs=no_macs, pass_made=True, backward=True, new_activations=False,
               reference=one_input(lambda x, a: np.asarray(x, np.float64) * a["factor"]),
               epilogue=lambda x, a, o: x * Const(float(a["factor"])),
               lower=lambda ctx, node: lower_elementwise(ctx, node, "copy"), inplace=True,
               error_bound=lambda ctx: ctx.err_in * abs(ctx.attrs["factor"]) +
               2 * EPS32 * np.abs(ctx.out),
               doc="x * factor"))
register(OpDef(name="channel_pad", family="tensor", lower=_lower_channel_pad,
               signature=(Attr("before", "int"), Attr("after", "int")),
               infer=_channel_pad_infer, reference=_channel_pad_reference, macs=no_macs,
               pass_made=True, backward=True, new_activations=False, error_bound=exact_bound(),
               doc="zero channels before and after (the gradient of channel_slice)"))
register(OpDef(name="pad_grad", family="tensor",
               lower=lambda ctx, node: _lower_simple(ctx, "pad_grad_kernel", ctx.in_shapes[0],
                                                     node.attrs["pads"], node.attrs["mode"]),
               signature=(Attr("pads", "ints"), Attr("mode", "choice", choices=PAD_MODES)),
               infer=_pad_grad_infer, reference=pad_grad_reference, macs=no_macs,
               pass_made=True, backward=True, new_activations=False,
               error_bound=sum_bound(terms=lambda ctx: 4, extra=0),
               doc="the gradient of pad: the inner window, padded values added back"))
register(OpDef(name="distance_grad", family="tensor", signature=(Attr("p", "float"),),
               lower=_lower_distance_grad,
               infer=lambda ts, a: ts[0], reference=_distance_grad_reference, macs=no_macs,
               arity=4, pass_made=True, backward=True, new_activations=False,
               error_bound=lambda ctx: (2 * TRANSCENDENTAL + 4) * EPS32 * np.abs(ctx.out),
               doc="the gradient of distance with respect to its first embedding"))
