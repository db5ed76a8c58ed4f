"""Batch norm's backward in closed form: the pieces the chain rule composes for one training
batch norm (``ops/norm.py``: the statistics are ops of their own) replaced by three ops.

    mean = batch_mean(x),  var = batch_var(x, mean),
    y = batchnorm_train(x, gamma, beta, mean, var)
    dx = add(.., bn_input_grad(dy, gamma, var),
             batch_stat_grad(x, bn_channel_grad(x, gamma, mean, var, dy; wrt=mean); of=mean),
             batch_stat_grad(x, bn_channel_grad(x, gamma, mean, var, dy; wrt=var); of=var), ..)
    dgamma = bn_channel_grad(x, gamma, mean, var, dy; wrt=weight),  dbeta = channel_sum(dy)
        =>  s = bn_grad_sums(x, dy, mean)                  s = [sum dy, sum dy (x - mean)]
            dx = add(.., bn_grad_input(x, dy, gamma, mean, var, s), ..)
            dgamma = bn_grad_param(s, var; wrt=weight),  dbeta = bn_grad_param(s; wrt=bias)

with ``bn_grad_input = gamma rstd (dy - s0 / M - (x - mean) rstd^2 s1 / M)``: the sum of the
three pieces (``dy gamma rstd``, ``dmean / M`` and ``dvar 2 (x - mean) / M`` with ``dmean =
-gamma rstd s0`` and ``dvar = -gamma rstd^3 s1 / 2``). Eight kernels making about sixteen
passes over the activations (each channel sum reads x or dy or both, each piece of dx is
written and read again by the add) become four making five: one reading x and dy for both
sums, one writing dx, two over C values.

Then the gradient of a ReLU (or ReLU6) over batch norms, when it feeds only such ops, is read
through instead of written (``gate``: the mask at the activation's output y):

    g = activation_grad(y, dy'; of=relu),  s = bn_grad_sums(x, g, mean), dx = bn_grad_input(..g..)
        =>  s = bn_grad_sums(x, dy', mean, y; gate=relu), dx = bn_grad_input(.., dy', .., y;
            gate=relu)

one kernel and one write and read of g fewer, wherever every reader of g is such an op (one
batch norm's pair: a block's first ReLU, the stem's; or two batch norms', a downsampling
block's branch and shortcut after its residual add).

Preconditions: the statistics are ``batch_mean`` and ``batch_var`` of the normalized ``x``;
``bn_input_grad`` and both ``batch_stat_grad`` exist (x's gradient is needed) and are each read
only by one ``add``, the same one (where autodiff sums x's gradients). The scale's gradient
and any ``channel_sum`` of ``dy`` are rewritten where present (a frozen scale has none).
Training pipelines only, where autodiff made these ops.
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops.norm import GATES
from .common import layer, sole_user
from .manager import PassContext


def _find(graph: Graph, candidates: list[Node], op: str, inputs: list[int],
          **attrs) -> Node | None:
    """The node among ``candidates`` computing ``op`` of ``inputs`` with ``attrs``."""
    for node in candidates:
        if node.op == op and node.inputs == inputs and all(
                node.attrs.get(k) == v for k, v in attrs.items()):
            return node
    return None


def fuse_batchnorm_backward(graph: Graph, ctx: PassContext) -> bool:
    if not ctx.training or ctx.opt_level < 1:
        return False
    changed = False
    for bn in graph.topo_order():
        if bn.op != "batchnorm_train" or bn.id not in graph:
            continue
        x, gamma, _, mean, var = bn.inputs
        if graph.node(mean).op != "batch_mean" or graph.node(var).op != "batch_var" or \
                graph.node(mean).inputs != [x] or graph.node(var).inputs != [x, mean]:
            continue
        ctx.at(bn)
        eps = bn.attrs["eps"]
        readers = graph.users(var)
        piece = next((n for n in readers if n.op == "bn_input_grad"
                      and n.inputs[1:] == [gamma, var]), None)
        if piece is None:
            continue
        dy = piece.inputs[0]
        channel = [x, gamma, mean, var, dy]
        dmean = _find(graph, readers, "bn_channel_grad", channel, wrt="mean")
        dvar = _find(graph, readers, "bn_channel_grad", channel, wrt="var")
        if dmean is None or dvar is None:
            continue
        stat_mean = sole_user(graph, dmean)
        stat_var = sole_user(graph, dvar)
        total = sole_user(graph, piece)
        if (stat_mean is None or stat_var is None or total is None or total.op != "add"
                or stat_mean.op != "batch_stat_grad" or stat_mean.inputs != [x, dmean.id]
                or stat_var.op != "batch_stat_grad" or stat_var.inputs != [x, dvar.id]
                or {_user_id(graph, stat_mean), _user_id(graph, stat_var)} != {total.id}):
            continue
        sums = graph.add("bn_grad_sums", [x, dy, mean], {}, name=f"{layer(bn)}.grad.sums",
                         span=bn.span)
        dx = graph.add("bn_grad_input", [x, dy, gamma, mean, var, sums.id], {"eps": eps},
                       name=piece.name, span=piece.span)
        rest = [dx.id if i == piece.id else i for i in total.inputs
                if i not in (stat_mean.id, stat_var.id)]
        if len(rest) == 1:
            graph.replace_all_uses(total.id, dx.id)
            graph.erase(total.id)
        else:
            graph.set_inputs(total.id, rest)
        for node in (stat_mean, stat_var, dmean, dvar, piece):
            graph.erase(node.id)
        rewritten = ["dx"]
        dgamma = _find(graph, graph.users(var), "bn_channel_grad", channel, wrt="weight")
        if dgamma is not None:
            _replace(graph, dgamma, "bn_grad_param", [sums.id, var], eps, "weight")
            rewritten.append("dgamma")
        for user in graph.users(dy):
            if user.op == "channel_sum" and user.inputs == [dy]:
                _replace(graph, user, "bn_grad_param", [sums.id], eps, "bias")
                rewritten.append("dbeta")
        ctx.note(f"{layer(bn)}: backward fused ({', '.join(rewritten)} from one pass of "
                 "sums)", bn)
        changed = True
    for grad in graph.topo_order():
        readers = _gate_through(graph, grad)
        if readers:
            ctx.note(f"{layer(grad)}: read through by {readers} batch-norm backward kernels "
                     "(gate)", grad)
            changed = True
    return changed


def _gate_through(graph: Graph, grad: Node) -> int:
    """The second rewrite of the module docstring, where its preconditions hold: ``grad`` is
    an ``activation_grad`` of a gate activation (``ops.norm.GATES``), not a graph output,
    whose every reader is a fused batch-norm backward op reading it as dy (one batch norm's
    pair, or two: a downsampling block's branch and shortcut). The readers then read its dy
    through the gate, and it is erased. Returns how many read it (0: not rewritten)."""
    readers = graph.users(grad.id)
    if (grad.op != "activation_grad" or grad.attrs["of"] not in GATES or len(grad.attrs) != 1
            or graph.is_output(grad.id) or not readers
            or any(r.op not in ("bn_grad_sums", "bn_grad_input") or r.inputs[1] != grad.id
                   or grad.id in r.inputs[2:] or r.attrs.get("gate", "none") != "none"
                   for r in readers)):
        return 0
    y, dy = grad.inputs
    for node in readers:
        graph.set_inputs(node.id, [node.inputs[0], dy, *node.inputs[2:], y])
        node.attrs["gate"] = grad.attrs["of"]
    graph.erase(grad.id)
    return len(readers)


def _user_id(graph: Graph, node: Node) -> int | None:
    user = sole_user(graph, node)
    return None if user is None else user.id


def _replace(graph: Graph, old: Node, op: str, inputs: list[int], eps: float, wrt: str) -> None:
    new = graph.add(op, inputs, {"eps": eps, "wrt": wrt}, name=old.name, span=old.span)
    graph.replace_all_uses(old.id, new.id)
    graph.erase(old.id)
