"""Reshaping: Flatten, Reshape, Squeeze and Unsqueeze (the batch stays first), Transpose as
the identity or within a Reshape-Transpose-Reshape that is one of cnnc's rearranging ops, and
DepthToSpace / SpaceToDepth."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ....compiler.ir import TensorType
from ....compiler.ops import AttrError, ShapeError, get_op
from ..fold import fold_squeeze, fold_unsqueeze
from ..importer import BATCH, Handler, Importer, axes_arg, need_rank, node_attrs, refuse

# Elements per sample of a Reshape-Transpose-Reshape matched against the rearranging ops on
# its indices (a few float64 copies: 128 MiB each at most).
MAX_MATCHED = 1 << 24


def _transpose(imp: Importer, node: Any, i: int) -> None:
    """The identity permutation, or a Reshape -> Transpose -> Reshape that is one of cnnc's
    rearranging ops: ShuffleNet's channel shuffle (Reshape to [N, g, C/g, H, W], perm 0, 2, 1,
    3, 4), and DepthToSpace / SpaceToDepth written out (PyTorch's PixelShuffle, ONNX's
    expanded function bodies)."""
    x = imp.dyn(node)
    rank = len(imp.shapes[x]) + 1
    perm = [int(p) for p in node_attrs(node).get("perm", list(range(rank))[::-1])]
    if perm == list(range(rank)):
        imp.alias[node.output[0]] = x
        return
    layer = imp.producer.get(x)
    g = imp.model.graph.node
    users = imp.consumers.get(node.output[0], [])
    if layer is not None and layer.op == "reshape" and len(imp.shapes[layer.inputs[0]]) == 3 \
            and users and all(g[u].op_type == "Reshape" for u in users) \
            and node.output[0] not in imp.graph_outputs \
            and len(imp.consumers.get(x, [])) == 1 and x not in imp.graph_outputs \
            and sorted(perm) == list(range(rank)) and perm[0] == 0:
        source = layer.inputs[0]
        found = _rearrangement(imp.shapes[source], layer.args["shape"], perm)
        if found is not None:
            # The transposed tensor read in C order is that op's output: its Reshape users
            # see the op's output, so any target they give stays right.
            layer.removed = True
            imp.add(node, found[0], found[1], [source])
            return
    raise refuse(node, imp.opset, f"transposing a tensor (perm {perm}) is not supported; "
                 "only the identity permutation, or a Reshape-Transpose-Reshape that is a "
                 "channel shuffle, DepthToSpace or SpaceToDepth")


def _rearrangement(shape: tuple[int, ...], split: tuple[int, ...], perm: list[int]
                   ) -> tuple[str, dict[str, Any]] | None:
    """The cnnc op (and attributes) whose output, read in C order, is a C x H x W tensor
    reshaped to ``split`` per sample and transposed by ``perm``; None when none is. Checked
    on the element indices themselves, so the match is exact."""
    size = math.prod(shape)
    if size > MAX_MATCHED:
        return None
    index = np.arange(size, dtype=np.float64).reshape(1, *shape)
    moved = index.reshape(1, *split).transpose(perm).reshape(-1)
    candidates: list[tuple[str, dict[str, Any]]] = [("channel_shuffle", {"groups": split[0]})]
    for b in sorted(set(split)):
        for mode in ("DCR", "CRD"):
            candidates += [("depth_to_space", {"block": b, "mode": mode}),
                           ("space_to_depth", {"block": b, "mode": mode})]
    for op, args in candidates:
        opdef = get_op(op)
        try:
            attrs = opdef.canonicalize(args, [TensorType(shape)])
        except (AttrError, ShapeError):
            continue
        if np.array_equal(opdef.reference([index], attrs).reshape(-1), moved):
            return op, args
    return None


def _flatten(imp: Importer, node: Any, i: int) -> None:
    """Flatten(axis) makes rows of the dimensions before the axis: (N x d1 ... d[axis-1],
    d[axis] ...). With the batch first, that is cnnc's flatten (one row per sample) where the
    per-sample dimensions before the axis are all 1, and for axis 0 where the model declares a
    batch of 1; any other axis would fold per-sample dimensions into the batch (or the batch
    into the features), which cnnc's tensors, a batch of samples, cannot hold."""
    x = imp.dyn(node)
    shape = imp.shapes[x]
    rank = len(shape) + 1
    given = int(node_attrs(node).get("axis", 1))
    if not -rank <= given <= rank:
        raise refuse(node, imp.opset, f"axis {given} is out of range for a rank-{rank} tensor "
                     f"(-{rank} to {rank})")
    axis = given + rank if given < 0 else given
    shown = f"axis {given}" + (f" ({axis})" if given < 0 else "")
    if axis == 0 and not (imp.literal_batch == 1 and imp.static_batch):
        raise refuse(node, imp.opset, f"{shown} folds the batch into the features (one row of "
                     "N x ... values); cnnc keeps one row per sample, so it imports axis 0 only "
                     "where the model declares a batch of 1")
    folded = shape[:max(axis - 1, 0)]
    if math.prod(folded) != 1:
        raise refuse(node, imp.opset, f"{shown} folds each sample's first {axis - 1} "
                     f"dimension{'s' * (axis > 2)} ({'x'.join(map(str, folded))}) into the "
                     "batch (rows of N x those); cnnc keeps one row per sample: axis 1, or an "
                     "axis after dimensions of size 1")
    # (1, N*C*H*W) for a declared batch of 1, or (N, ...) past dimensions of size 1: one row
    # of every value of each sample
    if len(shape) == 1:
        imp.alias[node.output[0]] = x
    else:
        imp.add(node, "flatten", {}, [x])


def _reshape_to(imp: Importer, node: Any, x: str, target: list[int]) -> None:
    """Reshape a tensor to a full target shape (batch included, 0 and -1 resolved already
    except the batch)."""
    shape = imp.shapes[x]
    size = int(np.prod(shape))
    rest = target[1:]
    if imp.literal_batch and target[0] == imp.literal_batch and target[0] != BATCH:
        target = [BATCH, *rest]
    if target[0] not in (BATCH, 0, -1) or (target[0] == -1 and -1 in rest):
        raise refuse(node, imp.opset, f"the target shape {target} does not keep the batch "
                     "dimension first")
    known = int(np.prod([d for d in rest if d != -1]))
    if -1 in rest:
        if known == 0 or size % known:
            raise refuse(node, imp.opset, f"cannot reshape {shape} to {rest}")
        rest[rest.index(-1)] = size // known
    if int(np.prod(rest)) != size:
        raise refuse(node, imp.opset, f"cannot reshape {'x'.join(map(str, shape))} to "
                     f"{'x'.join(map(str, rest))} per sample (the batch must stay first)")
    if tuple(rest) == shape:
        imp.alias[node.output[0]] = x
    elif len(rest) == 1:
        imp.add(node, "flatten", {}, [x])
    else:
        imp.add(node, "reshape", {"shape": tuple(rest)}, [x])


def _reshape(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    target = imp.const_ints(node, 1)
    allowzero = node_attrs(node).get("allowzero", 0)
    full = (BATCH, *imp.shapes[x])
    if not allowzero:
        target = [full[k] if d == 0 and k < len(full) else d for k, d in enumerate(target)]
    _reshape_to(imp, node, x, target)


def _squeeze(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    # A batch of 2 (touching the batch axis shows); a broadcast view, whatever the size.
    probe = np.broadcast_to(np.empty(()), (2, *imp.shapes[x]))
    axes = axes_arg(imp, node, node_attrs(node), 1)
    if node.op_type == "Squeeze" and axes is None:
        axes = [k for k, d in enumerate(probe.shape) if d == 1]
    fold = fold_squeeze if node.op_type == "Squeeze" else fold_unsqueeze
    try:
        out = fold(imp, node, [probe], {"axes": axes}).shape
    except ValueError as e:
        raise refuse(node, imp.opset, str(e)) from None
    if out[0] != 2:
        raise refuse(node, imp.opset, "the batch axis must stay first")
    _reshape_to(imp, node, x, [BATCH, *out[1:]])


def _depth_space(imp: Importer, node: Any, i: int) -> None:
    x = imp.dyn(node)
    need_rank(imp, node, x, 3, "C x H x W")
    a = node_attrs(node)
    # (SpaceToDepth has a mode from opset 28; both default to DCR)
    args: dict[str, Any] = {"block": int(a["blocksize"]), "mode": str(a.get("mode", "DCR"))}
    op = "depth_to_space" if node.op_type == "DepthToSpace" else "space_to_depth"
    imp.add(node, op, args, [x])


HANDLERS: dict[str, Handler] = {
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "Transpose": _transpose,
    "DepthToSpace": _depth_space,
    "SpaceToDepth": _depth_space,
}
