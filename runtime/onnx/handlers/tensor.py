"""Tensors passed on, joined, cut or padded: Identity, Cast between float types, Dropout
(inference), Concat, Slice (flips and channel ranges), Split (of the channels), Pad."""

from __future__ import annotations

from typing import Any

from ..importer import (
    Handler,
    Importer,
    axes_arg,
    axis_in_range,
    f32_literal,
    node_attrs,
    refuse,
)


def _concat(imp: Importer, node: Any, i: int) -> None:
    xs = [imp.dyn(node, k) for k in range(len(node.input))]
    rank = len(imp.shapes[xs[0]]) + 1
    axis = int(node_attrs(node)["axis"])
    axis = axis + rank if axis < 0 else axis
    if axis < 1:
        raise refuse(node, imp.opset, "concatenation along the batch is not supported")
    imp.add(node, "concat", {"axis": axis - 1} if axis != 1 else {}, xs)


def _dropout(imp: Importer, node: Any, i: int) -> None:
    imp.only_first_output(node)
    x = imp.dyn(node)
    if imp.opset < 12:
        rate = float(node_attrs(node).get("ratio", 0.5))
    else:
        given = len(node.input) > 1 and node.input[1]
        rate = imp.const_scalar(node, 1) if given else 0.5
    imp.add(node, "dropout", {"rate": f32_literal(rate)}, [x])


def _slice(imp: Importer, node: Any, i: int) -> None:
    """Whole-axis reversals of height and/or width (cnnc's flip), or a range of channels with
    step 1 (cnnc's channel_slice)."""
    x = imp.dyn(node)
    full = (2, *imp.shapes[x])
    if imp.opset < 10:
        raise refuse(node, imp.opset, "slicing tensors is not supported")
    starts, ends = imp.const_ints(node, 1), imp.const_ints(node, 2)
    axes = axes_arg(imp, node, {}, 3)
    axes = list(range(len(starts))) if axes is None else [
        axis_in_range(imp, node, a, len(full)) for a in axes]
    given = len(node.input) > 4 and node.input[4]
    steps = imp.const_ints(node, 4) if given else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise refuse(node, imp.opset, f"starts, ends, axes and steps must have one value per "
                     f"axis, got {len(starts)}, {len(ends)}, {len(axes)} and {len(steps)}")
    if 0 in steps:
        raise refuse(node, imp.opset, "a step of 0")
    flipped = set()
    channels = None
    for a, start, end, step in zip(axes, starts, ends, steps):
        if a == 0:  # the batch: its size is the caller's, so only the whole of it
            from_first = start == 0 or start <= -(2**31 - 1)  # (clamped to 0)
            if step == 1 and from_first and end >= 2**31 - 1:
                continue
            raise refuse(node, imp.opset, "slicing the batch axis (axis 0) is not supported; "
                         "only all of it (starts 0, ends INT_MAX)")
        whole = range(full[a])[slice(start, end, step)]
        if list(whole) == list(range(full[a]))[::step] and step in (1, -1):
            if step == -1 and full[a] > 1:
                flipped.add(a)
            continue
        if a == 1 and step == 1 and len(full) == 4 and len(whole) > 0:
            channels = (whole.start, whole.stop)
            continue
        raise refuse(node, imp.opset, "only reversing whole axes (a flip) or a range of "
                     "channels is supported")
    if channels is not None:
        if flipped:
            raise refuse(node, imp.opset, "a channel range and a flip in one Slice")
        imp.add(node, "channel_slice", {"start": channels[0], "stop": channels[1]}, [x])
        return
    if not flipped:
        imp.alias[node.output[0]] = x
        return
    if len(full) != 4 or not flipped <= {2, 3}:
        raise refuse(node, imp.opset, "only height and width can be flipped")
    axis = "both" if flipped == {2, 3} else ("vertical" if flipped == {2} else "horizontal")
    imp.add(node, "flip", {"axis": axis}, [x])


def _split(imp: Importer, node: Any, i: int) -> None:
    """A split of the channels (axis 1 of N x C x H x W) into channel_slice layers: sizes from
    the `split` attribute (opsets 2-12), the `split` input (13 and later), `num_outputs` (18
    and later: ceil(C / n) each, the last smaller), or equal parts, one per output."""
    x = imp.dyn(node)
    a = node_attrs(node)
    full = (2, *imp.shapes[x])
    axis = int(a.get("axis", 0))
    axis = axis + len(full) if axis < 0 else axis
    if len(full) != 4 or axis != 1:
        raise refuse(node, imp.opset, f"only a split of the channels (axis 1 of N x C x H x W)"
                     f" is supported, got axis {axis} of a rank-{len(full)} tensor")
    c, n_out = full[1], len(node.output)
    if "split" in a:
        sizes = [int(v) for v in a["split"]]
    elif imp.opset >= 13 and len(node.input) > 1 and node.input[1]:
        sizes = imp.const_ints(node, 1)
    elif "num_outputs" in a:
        n = int(a["num_outputs"])
        if n != n_out or n < 1:
            raise refuse(node, imp.opset, f"num_outputs = {n} but the node has {n_out} outputs")
        part = -(-c // n)
        sizes = [min(part, c - k * part) for k in range(n)]
    else:
        if c % n_out:
            raise refuse(node, imp.opset, f"{c} channels cannot be split into {n_out} equal "
                         "parts")
        sizes = [c // n_out] * n_out
    if len(sizes) != n_out or sum(sizes) != c or any(s < 0 for s in sizes):
        raise refuse(node, imp.opset, f"split sizes {sizes} do not divide {c} channels into "
                     f"{n_out} outputs")
    start = 0
    for size, out in zip(sizes, node.output):
        if out and imp.used(out):
            if size == 0:
                raise refuse(node, imp.opset, f"output {out!r} is empty (a split of size 0)")
            if size == c:
                imp.alias[out] = x
            else:
                imp.add(node, "channel_slice", {"start": start, "stop": start + size}, [x],
                        output=out)
        start += size


def _cast(imp: Importer, node: Any, i: int) -> None:
    from onnx import TensorProto

    if node_attrs(node)["to"] not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
        raise refuse(node, imp.opset, "only casts between float types are supported")
    imp.alias[node.output[0]] = imp.dyn(node)


def _identity(imp: Importer, node: Any, i: int) -> None:
    imp.alias[node.output[0]] = imp.dyn(node)


def _pad(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    a = node_attrs(node)
    mode = a.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise refuse(node, imp.opset, f"mode {mode!r}; cnnc pads in modes constant, reflect "
                     "and edge")
    rank = len(imp.shapes[x]) + 1
    if imp.opset < 11:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = imp.const_ints(node, 1)
        v = imp.opt_const(node, 2)
        value = 0.0 if v is None or v.size == 0 else imp.const_scalar(node, 2)
    axes = axes_arg(imp, node, {}, 3) if imp.opset >= 18 else None
    axes = [axis_in_range(imp, node, ax, rank) for ax in axes] if axes is not None else \
        list(range(rank))
    if len(pads) != 2 * len(axes):
        raise refuse(node, imp.opset, f"pads has {len(pads)} values; {2 * len(axes)} are needed "
                     f"(a start and an end for each of {len(axes)} axes)")
    per_axis = {ax: (pads[k], pads[k + len(axes)]) for k, ax in enumerate(axes)}
    if rank != 4 or any(per_axis.get(ax, (0, 0)) != (0, 0) for ax in (0, 1)):
        raise refuse(node, imp.opset, "only padding of height and width is supported")
    (t, b), (l, r) = per_axis.get(2, (0, 0)), per_axis.get(3, (0, 0))
    if min(t, l, b, r) < 0:
        raise refuse(node, imp.opset, "negative padding (cropping) is not supported")
    args: dict[str, Any] = {"pad": (t, l, b, r)}
    if mode != "constant":
        args["mode"] = mode  # (ONNX ignores the value in these modes)
    elif value:
        args["value"] = f32_literal(value)
    imp.add(node, "pad", args, [x])


HANDLERS: dict[str, Handler] = {
    "Identity": _identity,
    "Cast": _cast,
    "Dropout": _dropout,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Pad": _pad,
}
