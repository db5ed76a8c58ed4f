"""Lowering rules shared by several op families (element-wise arithmetic, standalone
activations, channel-blocked batch norm), and how a kernel reads a node's mixed inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..decisions import EpilogueOp, operand_kind, own_attrs, own_input_count
from ..kernels.common import Sizes
from ..kernels.elementwise import elementwise_blocked_kernel, elementwise_kernel


def lower_elementwise(ctx, node, op: str, pack=None):
    """``add`` / ``sub`` / ``mul`` of the node's inputs, or ``copy`` of its one input, with
    its fused epilogue (operands are further inputs, broadcast like any other); ``affine``
    (channel-blocked only: a batch norm, whose ``pack`` gives its scale and shift)."""
    inputs = list(node.inputs) if op != "affine" else list(ctx.tensor_inputs)
    shapes = [ctx.graph.node(i).type.shape for i in inputs]
    sz = Sizes()
    n_own = own_input_count(len(inputs), node.attrs)
    epilogue = list(ctx.epilogue)
    if op == "copy":  # a standalone activation is the copy kernel with itself as epilogue
        attrs = tuple(sorted(own_attrs(node.attrs).items()))
        epilogue = [ctx.resolve(EpilogueOp(node.op, attrs))] + epilogue
    source = ctx.storage(inputs[0])
    if source is not None:  # NCHW8c or NCHW16c in and out (the layout rule)
        kinds = [operand_kind(s, ctx.out_shape) for s in shapes[1:]]
        c, h, w = ctx.out_shape
        ints = {"C8": -(-c // source.lanes), "P": h, "Q": w}
        ints.update(zip(("XB", "XH", "XW", "XT", "XL"), source.ints()))
        for k, i in enumerate(inputs[1:]):
            ints.update(zip((f"E{k}B", f"E{k}H", f"E{k}W", f"E{k}T", f"E{k}L"),
                            ctx.operand_geometry(i)))
        ints.update(zip(("YB", "YH", "YW", "YT", "YL"), ctx.out_storage.ints()))
        k = elementwise_blocked_kernel(ctx.kname, op, n_own, kinds, epilogue, ctx.comment,
                                       source.lanes, source.nhwc)
        return ctx.kernel_step(k, inputs=inputs, ints=ints, pack=pack)
    k = elementwise_kernel(ctx.kname, op, ctx.out_shape, shapes, epilogue, ctx.comment, sz,
                           n_own=n_own)
    return ctx.kernel_step(k, inputs=inputs, ints=sz.values)


def lower_binary_epilogue(ctx, node):
    """An element-wise op of two same-shaped inputs written as its own epilogue rule over the
    first with the second as operand (``f'(x) * dy``: the activation gradients), plain NCHW."""
    shapes = [ctx.graph.node(i).type.shape for i in node.inputs]
    sz = Sizes()
    attrs = tuple(sorted(own_attrs(node.attrs).items()))
    epilogue = [ctx.resolve(EpilogueOp(node.op, attrs, operand=1))] + list(ctx.epilogue)
    k = elementwise_kernel(ctx.kname, "copy", ctx.out_shape, shapes, epilogue, ctx.comment, sz,
                           n_own=1)
    return ctx.kernel_step(k, inputs=list(node.inputs), ints=sz.values)


def operand_arrays(ctx) -> tuple[list[str], Callable[[Any], dict[str, Any]] | None]:
    """The array a kernel builder reads each of the node's own inputs from, in input order:
    ``x<k>`` for its k-th activation input (``ctx.tensor_inputs``), ``c_<position>`` for a
    constant (a parameter, packed when parameters are set); and the packer of those constants
    (None without any). Training ops read parameters and computed values alike (a running
    statistic updated twice is a parameter first, then the first update's result)."""
    tensors = ctx.tensor_inputs
    names: list[str] = []
    consts: dict[str, int] = {}
    for position, i in enumerate(ctx.own_inputs):
        if i in tensors:
            names.append(f"x{tensors.index(i)}")
        else:
            names.append(f"c_{position}")
            consts[names[-1]] = i
    if not consts:
        return names, None
    return names, lambda values: {name: values[i] for name, i in consts.items()}
