"""The lowering rule of ``conv`` and ``conv_transpose``: the algorithm a node records
(``lowering``) as plan steps, through the lowering driver's context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np

from ...decisions import operand_kind, own_attrs, prologue_of
from ...kernels.common import FusedOp, Sizes
from ...kernels.conv_geometry import ConvGeometry
from ...kernels.elementwise import zero_stuff_kernel
from ...kernels.gpu_conv import GemmTile
from ...kernels.kernel_ir import Kernel
from ...kernels.tiles import RESIDUAL_CODES, DirectTile, operand_ints
from ...plan import Arg, Call, Step
from .. import LoweringError, own_input_types
from .algorithms import DIRECT, ConvAlgorithm, by_name, geometry, kernel_lanes
from .transpose import transpose_as_conv, transposed_as_conv_weight


@lru_cache(maxsize=256)
def compute_kernel(algorithm: ConvAlgorithm, g: ConvGeometry, epilogue: tuple[FusedOp, ...],
                   kinds: tuple[str, ...], tile: DirectTile | GemmTile,
                   prologue: tuple[str, tuple[tuple[str, Any], ...]] | None,
                   residual: bool) -> tuple[Kernel, str]:
    """``algorithm.kernel(...)``: the compute kernel and its module tag, built once a process
    for equal arguments (a kernel's code is a function of them alone: its sizes are runtime
    arguments, so layers of one shape class share it). Building a kernel's IR and printing it
    to find its cache entry was most of a cached compile's lowering (bench/RESULTS.md); the
    one object also lets the backend print it once (``NumbaBackend.load_tasked``)."""
    pre = (prologue[0], dict(prologue[1])) if prologue is not None else None
    return algorithm.kernel(g, list(epilogue), kinds, tile, pre, residual)


def _hashable(prologue: tuple[str, dict[str, Any]] | None
              ) -> tuple[str, tuple[tuple[str, Any], ...]] | None:
    return None if prologue is None else (prologue[0], tuple(sorted(prologue[1].items())))


def lower_conv(ctx, node) -> Step:
    """A ``conv`` / ``conv_transpose`` node as kernel calls: [zero-stuff,] pack (or im2col)
    unless the input is already channel-blocked (or the algorithm reads NCHW as it is), the
    compute kernel, then unpack (or crop) with the fused epilogue unless the output stays
    channel-blocked, in which case the compute kernel applies the epilogue at its store (or
    the algorithm writes NCHW itself and there is no epilogue beyond the bias and ReLU); an
    unpacked output's leading vector ops are applied at the store too where the layout pass
    says so (``store_epilogue``). The
    compute kernel always fuses the bias and a leading ReLU (a runtime flag, so layers with and
    without share a kernel)."""
    algorithm = by_name(node.attrs["lowering"])
    attrs = own_attrs(node.attrs)
    x = ctx.tensor_inputs[0]
    # the convolution's own input: x, or the pool of x its prologue computes
    x_shape = own_input_types([ctx.graph.node(i).type for i in node.inputs], node.attrs)[0].shape
    x_store, y_store = ctx.storage(x), ctx.out_storage
    pre = prologue_of(node.attrs)
    prologue = (pre[0].op, pre[0].attr_dict) if pre else None
    if prologue is not None and (x_store is None or algorithm is not DIRECT or len(pre) > 1):
        raise LoweringError(f"{ctx.kname}: a pooling prologue needs one pool of a "
                            "channel-blocked input and the direct lowering")
    epilogue = list(ctx.epilogue)
    relu = bool(epilogue) and epilogue[0].op == "relu"
    if relu:
        epilogue = epilogue[1:]
    operands = [ctx.operand(e) for e in epilogue if e.operand is not None]
    # a plain output is unpacked from the kernel's blocked scratch: the kernel applies the
    # leading operand-free vector ops the layout pass chose (``store_epilogue``, counted with
    # the ReLU), the unpacking the rest (and every operand)
    at_store = max(0, node.attrs.get("store_epilogue", 0) - relu)
    in_kernel = epilogue if y_store is not None else epilogue[:at_store]
    unpacked = [] if y_store is not None else epilogue[at_store:]
    kernel_operands = operands if y_store is not None else []
    kinds = [operand_kind(ctx.graph.node(o).type.shape, node.type.shape)
             for o in kernel_operands]
    g = geometry(node.op, attrs, x_shape, "relu" if relu else None)
    if not algorithm.applies(g):
        raise LoweringError(f"{ctx.kname}: the {algorithm.name} algorithm does not compute "
                            f"{g.describe()}")
    lanes_in, lanes_out = kernel_lanes(g, x_store.lanes if x_store is not None else None,
                                       y_store.lanes if y_store is not None else None)
    nhwc_in = x_store is not None and x_store.nhwc
    nhwc_out = y_store is not None and y_store.nhwc
    if (lanes_in, lanes_out, nhwc_in, nhwc_out) != (8, 8, False, False):
        g = replace(g, lanes_in=lanes_in, lanes_out=lanes_out, nhwc_in=nhwc_in,
                    nhwc_out=nhwc_out)
        g.validate()
    # The register tile chosen by the select_tile pass (absent: depthwise, im2col, or a graph
    # lowered without the pipeline).
    tile = algorithm.parse_tile(node.attrs.get("tile"), g)
    # the residual add a runtime choice (``share_residual_kernels``): the code of the fused
    # epilogue, the kernel built without it
    residual = None
    if node.attrs.get("residual") == "runtime" and y_store is not None and \
            algorithm.runtime_residual and prologue is None:
        residual = RESIDUAL_CODES.get(tuple(e.op for e in epilogue))
        if residual is None or any(k != "full" for k in kinds):
            raise LoweringError(f"{ctx.kname}: a runtime residual computes no epilogue, "
                                "add(r) or add(r) then relu of an operand of the output's "
                                f"shape, not [{', '.join(map(str, epilogue))}]")
        in_kernel = []
    kernel, tag = compute_kernel(algorithm, g, tuple(in_kernel), tuple(kinds) if in_kernel else (),
                                 tile, _hashable(prologue), residual is not None)
    compute, source_name, src = ctx.load_tasked(kernel, tag, "convolution kernel")
    calls: list[Call] = []
    scratch: dict[str, int] = {}
    source = Arg("value", x)
    if node.op == "conv_transpose":
        _, stuffed, before, hw = transpose_as_conv(attrs, x_shape)
        sz = Sizes()
        k = zero_stuff_kernel(f"n{node.id}_zero_stuff", x_shape, attrs["stride"], before, hw,
                              ctx.comment, sz)
        sizes = tuple(Arg("int", v) for v in sz.values.values())
        calls.append(Call(None, (Arg("value", x), Arg("scratch", "stuffed"), *sizes,
                                 Arg("batch")), k.name, k))
        scratch["stuffed"] = int(np.prod(stuffed))
        source = Arg("scratch", "stuffed")
    xp, yp = Arg("scratch", "conv_in"), Arg("scratch", "conv_out")
    to_output = algorithm.plain_io and not epilogue  # writes the NCHW output itself
    if x_store is not None or algorithm.plain_io:
        xp = source  # read where the producer stored it, or the NCHW input as it is
    else:
        name, sizes = algorithm.input_call(g)
        calls.append(Call(ctx.layout_kernel(name), (source, xp, Arg("batch"),
                                                    *(Arg("int", v) for v in sizes)), name))
        scratch["conv_in"] = algorithm.in_floats(g)
    if y_store is not None or to_output:
        yp = Arg("output")
    else:
        scratch["conv_out"] = algorithm.out_floats(g)
    op_args = [Arg("value", o) for o in kernel_operands]
    pooled: list[Arg] = []  # the prologue's scratch (one pooled row per thread), x's H x W
    pooled_ints: list[Arg] = []
    if prologue is not None:
        scratch["pooled"] = ctx.threads * g.Cgb * g.Q * 8
        pooled = [Arg("scratch", "pooled")]
        pooled_ints = [Arg("int", v) for v in ctx.graph.node(x).type.shape[1:]]
    per_thread = algorithm.thread_scratch(g, tile)
    if per_thread:  # the compute kernel's per-thread work space (Winograd's transformed tiles,
        # the gather order's rows)
        scratch["work"] = ctx.threads * per_thread
        pooled = [Arg("scratch", "work")]
    op_ints = [Arg("int", v) for o in kernel_operands for v in ctx.operand_geometry(o)]
    last: list[Arg] = []
    if residual is not None:
        # without a residual the kernel reads no operand: the output stands in for it
        op_args = [Arg("value", o) for o in operands] or [Arg("output")]
        op_ints = [Arg("int", v) for o in operands for v in ctx.operand_geometry(o)] or \
            [Arg("int", 0)] * len(operand_ints(0))
        last = [Arg("int", residual)]
    sizes = algorithm.int_args(g, x_store, y_store, tile, bool(node.attrs.get("zero_halo")),
                               ctx.threads, node.attrs.get("kgroups"))
    calls.append(Call(compute, (xp, Arg("const", "w"), Arg("const", "b"), yp, *op_args,
                                *pooled, *(Arg("int", v) for v in sizes), *pooled_ints,
                                *op_ints, Arg("int", int(relu)), Arg("batch"), *last),
                      kernel.name))
    if y_store is None and not to_output:
        calls.append(_output_call(ctx, node, g, algorithm, unpacked, operands))
    pack = _packer(ctx, node, g, algorithm, tile)

    return Step(node.id, ctx.step_name, ctx.step_ops, [x] + operands,
                y_store.floats if y_store is not None else node.type.size, calls, pack=pack,
                scratch=scratch, lowering=algorithm.name, storage=y_store,
                # packing reads the whole input before the output is written; a blocked input
                # or output, or a plain one the compute kernel writes itself, is written while
                # the input is still read
                inplace=x_store is None and y_store is None and not to_output,
                sources={source_name: src})


def pack_conv_weights(op: str, g: ConvGeometry, algorithm: ConvAlgorithm,
                      tile: DirectTile | GemmTile, w: np.ndarray, b: np.ndarray | None,
                      out: np.ndarray | None = None) -> np.ndarray:
    """A convolution's weights and bias packed for its compute kernel, one flat float32 array
    (the weights, then the bias): a transposed convolution's weight first becomes the equivalent
    convolution's (flipped, transposed). Float32 because the kernel's constants are: packing
    only moves values, so this is exactly what they will hold, without a float64 round trip
    each time a training step refreshes them. ``out``: the float32 array to write them into
    (None: a new one)."""
    weight = np.asarray(w, np.float32)
    if op == "conv_transpose":
        weight = transposed_as_conv_weight(weight, g.groups)
    return algorithm.pack_flat(g, weight, b, tile, out)


def _packer(ctx, node, g: ConvGeometry, algorithm: ConvAlgorithm, tile: DirectTile | GemmTile):
    """How the step gets its constants ``w`` and ``b`` when parameters are set: split from the
    parameter-time node of its packed weights (``pack_weights`` pass: ``packed``), which must
    be packed for this very kernel."""
    packed = ctx.graph.node(node.inputs[-1]) if node.attrs.get("packed") else None
    made = None if packed is None else \
        tuple(packed.attrs.get(k) for k in ("algorithm", "kernel_tile", "block_lanes"))
    if packed is None or packed.op != "conv_pack" or \
            made != (algorithm.name, str(tile), g.lanes_in):
        raise LoweringError(f"{ctx.kname}: its weights are not packed for its kernel "
                            f"({algorithm.name}, {tile}, {g.lanes_in}), but packed for {made} "
                            "(the pack_weights pass runs last in every pipeline)")
    n_w = algorithm.packed_sizes(g, tile)[0]

    def split(values: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        flat = np.asarray(values[packed.id], np.float32)
        return {"w": flat[:n_w], "b": flat[n_w:]}
    return split


def _output_call(ctx, node, g: ConvGeometry, algorithm: ConvAlgorithm, epilogue,
                 operands: list[int]) -> Call:
    """The kernel that brings the packed output to NCHW, applying the epilogue at its store."""
    yp = Arg("scratch", "conv_out")
    plain, out_ints = algorithm.output_call(g)
    ints = tuple(Arg("int", v) for v in out_ints)
    if not epilogue:
        return Call(ctx.layout_kernel(plain), (yp, Arg("output"), Arg("batch"), *ints), plain)
    kinds = [operand_kind(ctx.graph.node(o).type.shape, node.type.shape) for o in operands]
    name = f"n{node.id}_{plain.split('_')[0]}_epilogue"
    k = algorithm.output_epilogue_kernel(name, g, epilogue, kinds, ctx.comment)
    return Call(None, (yp, Arg("output"), *(Arg("value", o) for o in operands), Arg("batch"),
                       *ints), name, k)
