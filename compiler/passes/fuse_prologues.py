"""Prologue fusion: a pool whose only reader is a 1x1 convolution is computed by that
convolution's kernel, row by row, instead of by a kernel of its own.

    y = pool(x);  z = conv1x1(y, w)   =>   z = conv1x1(x, w; prologue=[pool])

An inception module's pool projection (a 3x3 max pool, then a 1x1 convolution) becomes one
kernel: each of its tasks pools one row of every input block into a small scratch buffer and
runs the 1x1 convolution over it while it is in cache (``kernels/conv_direct.py``). The pooled
tensor is never stored whole, and a kernel launch is saved per module.

Preconditions: the convolution is lowered direct, 1x1 with stride 1, no padding, one group
and at least 8 input channels; the pool is a max or average pool (``maxpool``/``avgpool``) of
a channel-blocked input, kept in its layout itself by ``select_layout`` (so its window has the
blocked kernel's semantics); the pool's value has no other reader and is not a graph output.
Runs after layout selection (it needs the layouts), -O2 inference only, CPU targets only.
"""

from __future__ import annotations

from ..decisions import PrologueOp, own_attrs, prologue_of
from ..ir import Graph, Node
from ..ops import is_constant
from ..types import BLOCKED, BLOCKED16, NHWC
from .common import layer, sole_user
from .manager import PassContext

POOLS = ("maxpool", "avgpool")


def _fusable(graph: Graph, conv: Node) -> Node | None:
    """The pool ``conv`` can compute as its prologue, or None."""
    a = conv.attrs
    if (conv.op != "conv" or a.get("lowering") != "direct" or prologue_of(a)
            or tuple(a["kernel"]) != (1, 1) or tuple(a["stride"]) != (1, 1)
            or any(a["pads"]) or tuple(a["dilation"]) != (1, 1) or a["groups"] != 1):
        return None
    pool = graph.node(conv.inputs[0])
    if pool.op not in POOLS or is_constant(graph, pool) or pool.type.shape[0] < 8:
        return None
    source = graph.node(pool.inputs[0])
    layout = pool.attrs.get("layout")
    if layout not in (BLOCKED, BLOCKED16, NHWC) or source.attrs.get("layout") != layout:
        return None
    return pool if sole_user(graph, pool) is conv else None


def fuse_prologues(graph: Graph, ctx: PassContext) -> bool:
    # the pooled rows live in per-thread scratch of the CPU's worker threads: no CUDA form
    if ctx.opt_level < 2 or ctx.training or ctx.target.cuda:
        return False
    changed = False
    for conv in graph.topo_order():
        ctx.at(conv)
        pool = _fusable(graph, conv)
        if pool is None:
            continue
        origin = f"{ctx.where(pool)} {layer(pool)}".lstrip()
        attrs = tuple(sorted(own_attrs(pool.attrs).items()))
        conv.attrs["prologue"] = (PrologueOp(pool.op, attrs, origin),)
        graph.set_inputs(conv.id, [pool.inputs[0], *conv.inputs[1:]])
        graph.erase(pool.id)
        ctx.note(f"fused {pool.op} {layer(pool)} into {layer(conv)} as its prologue", pool)
        changed = True
    return changed
