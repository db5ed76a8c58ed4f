"""Register-tile selection: the shape of each direct convolution's micro-kernel for the target.

    conv(x, w; lowering=direct)  =>  conv(x, w; lowering=direct, tile=<pixels>x<channels>/<lanes>)

The tile changes which output values one kernel iteration computes together, never the numbers:
every output is the same chain of fused multiply-adds in the same order (c-block, r, s, lane),
so 8- and 16-lane kernels agree bitwise. On an 8-lane target (AVX2: 16 ymm registers) every
layer takes the 6 x 16 tile of PERF-NOTES.md (12 accumulators, 2 weight vectors, a broadcast),
its tasks row by row or, where the cost model says it runs fewer short tiles (rows of 7 and
14), plane by plane (``6x16/8:plane``; ``kernels.tiles.cost_8``). With 16 lanes (AVX-512) the
tile is 32 output channels (two vectors) when each group's channels, padded to 16, divide into
32-channel tiles, else 16, and as many pixels of a row as fit the registers and waste least on
the row's last tile (``kernels.tiles.choose_tile``); a strided 1x1 convolution's tasks gather
their input rows first (``14x32/16:gather``: read once per group of k-tiles, contiguous), in
groups of k-tiles whose packed weights fit the target's L2 per core (``kgroups``, recorded
beside the tile: ``target.Caches``, ``tiles.gather_groups``).
Depthwise and narrow-group convolutions keep their own 8-channel kernel
(``ops.conv.channelwise``).

    conv(x, w; lowering=implicit_gemm)  =>  (...; tile=<m>x<n>)

A GPU's implicit GEMM computes blocks of ``m`` output channels by ``n`` pixels (32 or 64
each): the tile of least padded work over its estimated efficiency for the layer's output
channels per group and output plane (``kernels.gpu_conv.choose_gemm_tile``).

    conv_weight_grad(x, dy; lowering=direct)  =>  (...; tile=<rows>x<channels>/<lanes>)

A direct weight gradient's tile is ``rows`` output channels times two vectors of input
channels (``direct_out``: ``rows`` taps times two vectors of output channels): 6 x 16 on 8
lanes, 8 x 32 on 16 (``kernels.weight_grad.weight_grad_tile``); each weight's sum runs over
the images and pixels in the same order in both.
"""

from __future__ import annotations

import os
from collections import Counter

from ..ir import Graph
from ..kernels.gpu_conv import choose_gemm_tile
from ..kernels.tiles import DirectTile, choose_tile, output_planes
from ..kernels.weight_grad import weight_grad_tile_name
from ..ops import own_attrs, prologue_of
from ..ops.conv import DIRECT, node_geometry
from .manager import PassContext


def tile_for(node, in_shape: tuple[int, ...], lanes: int) -> str | None:
    """The tile of a convolution node or weight gradient run by a register-tiled direct kernel
    or a GPU's implicit GEMM (None for other nodes, among them the channel-wise kernel's,
    which has one tile)."""
    if node.op == "conv_weight_grad" and node.attrs.get("lowering") in ("direct", "direct_out"):
        return weight_grad_tile_name(lanes)
    if node.op in ("conv", "conv_transpose") and node.attrs.get("lowering") == "implicit_gemm":
        _, p, q = node.type.shape  # a transposed convolution runs as one of its output's size
        return str(choose_gemm_tile(own_attrs(node.attrs)["out_channels"] //
                                    own_attrs(node.attrs)["groups"], p * q))
    if node.attrs.get("lowering") != "direct":
        return None
    if node.op not in ("conv", "conv_transpose"):
        return None
    a = own_attrs(node.attrs)
    groups, k = a["groups"], a["out_channels"]
    # The output's plane (a transposed convolution runs as a stride-1 convolution of its
    # output's size), and its planes of 16 output channels per image: the tasks of the plane
    # order at batch 1 (the batch is a runtime size: a larger one only adds tasks).
    _, p, q = node.type.shape
    strided_1x1 = node.op == "conv" and tuple(a["kernel"]) == (1, 1) and \
        tuple(a["stride"]) != (1, 1) and not any(a["pads"]) and groups == 1 and \
        tuple(a["dilation"]) == (1, 1) and in_shape[0] >= 8 and not prologue_of(node.attrs)
    return str(choose_tile(lanes, k // groups, q, p, output_planes(groups, k), strided_1x1))


def k_groups_for(graph: Graph, node, tile: str, l2: int) -> int | None:
    """The groups of k-tiles of a direct convolution whose ``tile`` takes several a task
    (``Direct.k_groups``: each group's weights within the target's ``l2`` bytes, tasks for
    each of this machine's CPUs at batch 1); None for other tiles and nodes."""
    if node.op != "conv" or node.attrs.get("lowering") != "direct" or \
            DirectTile.parse(tile).order != "gather":
        return None
    g = node_geometry(node, [graph.node(i).type for i in node.inputs])
    return DIRECT.k_groups(g, DirectTile.parse(tile), os.cpu_count() or 1, l2)


def _record(node, key: str, value) -> bool:
    """Set (or, for None, remove) the decision ``key``; whether that changed the node."""
    if node.attrs.get(key) == value:
        return False
    if value is None:
        del node.attrs[key]
    else:
        node.attrs[key] = value
    return True


def select_tile(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    chosen: Counter[str] = Counter()
    for node in graph.topo_order():
        ctx.at(node)
        tile = tile_for(node, graph.node(node.inputs[0]).type.shape
                        if node.inputs else (), ctx.target.lanes)
        kgroups = None if tile is None else \
            k_groups_for(graph, node, tile, ctx.target.caches.l2)
        changed |= _record(node, "tile", tile)
        changed |= _record(node, "kgroups", kgroups)
        if tile is not None:
            chosen[tile] += 1
    if changed:
        ctx.note(f"target {ctx.target}: convolution tiles " +
                 ", ".join(f"{t} x{n}" for t, n in sorted(chosen.items())) +
                 f" (caches: {ctx.target.caches})")
    return changed
