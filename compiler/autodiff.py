"""Reverse-mode automatic differentiation over the IR: the backward graph as more IR.

A training graph is the network as written with a loss attached (``attach_loss``: the loss op
of ``compiler/ops/loss.py`` over the chosen output and a ``labels`` input), each layer in its
training form first (``OpDef.training_form``: batch norm normalizes with the batch's statistics,
dropout draws its mask from the ``dropout_seed`` input, ``compiler/ops/tensor.py``). A
parameter a step updates by itself, not by its gradient (batch norm's running statistics), is
a graph output ``update:<name>`` holding its new value (one for the whole batch), which the
runtime writes back into the parameter after each step. The ``autodiff``
pass, at the head of the training pipeline, then adds to the same graph, for every trainable
parameter (and, when asked, every network input), the gradient of the loss with respect to it,
as graph outputs named ``grad:<name>``:

    loss = L(f(x, w))   =>   grad:w = (d f / d w)^T (d L / d f)   (each op's rule, in reverse)

Each op's ``gradient`` rule (in the op's own file) gets a :class:`GradBuilder` for one forward
node: the node, the gradient of the loss with respect to its output (``dy``) and the means to
add nodes; it returns one gradient node per input (None where that input needs none), made of
other IR ops (a convolution's input gradient is a ``conv_transpose`` of ``dy``), so the backward
graph goes through the same passes, kernel builders and memory planning as the forward one.

Gradients meeting at a value (a tensor read twice, a parameter shared by two layers: the
siamese towers) are summed by one ``add``. A parameter's gradient is summed over the batch
(an unbatched value, ``TensorType.batched``); a broadcast operand's gradient is summed back to
its shape (``reduce_to``). An op without a gradient rule is refused by name, with its DSL
location.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .ir import Graph, Node, model_folder
from .ops import AttrError, ShapeError, get_op, is_constant
from .types import TensorType, shown_path

__all__ = ["GradBuilder", "GradientError", "LOSSES", "attach_loss", "autodiff",
           "gradient_outputs", "trainable_params", "update_outputs"]

#: Graph outputs of a training graph: the loss, ``grad:<name>`` per differentiated value and
#: ``update:<name>`` per parameter the step sets (the module docstring).
LOSS, GRAD, UPDATE = "loss", "grad:", "update:"
#: The scores the loss read (``output:<name>``, the logits where a final softmax was skipped):
#: kept as an output so a training step can report its batch's accuracy.
OUTPUT = "output:"


class GradientError(Exception):
    """The loss cannot be differentiated as asked: an op without a gradient rule, a loss that
    does not fit the network's output. The message names the layer and its DSL location."""


def where(graph: Graph, node: Node) -> str:
    """``file:line:col`` of a node's DSL (relative to the model's folder), or ""."""
    if node.span is None:
        return ""
    return f"{shown_path(node.span.file, model_folder(graph))}:{node.span.line}:{node.span.column}"


@dataclass
class GradBuilder:
    """What an op's gradient rule sees of one forward node, and how it adds backward nodes.

    ``dy`` is the node id of the loss's gradient with respect to the node's output (same type
    as the output), or None at the root, where it is 1 (a loss's own node)."""

    graph: Graph
    node: Node
    dy: int | None
    wanted: frozenset[int]

    def needs(self, index: int) -> bool:
        """Whether input ``index`` of the node needs a gradient (it leads to a parameter or
        input being differentiated); a rule computes only those."""
        return self.node.inputs[index] in self.wanted

    def input(self, index: int) -> int:
        return self.node.inputs[index]

    def type(self, node_id: int) -> TensorType:
        return self.graph.node(node_id).type

    @property
    def attrs(self) -> dict[str, Any]:
        return self.node.attrs

    def add(self, op: str, inputs: Sequence[int], attrs: dict[str, Any] | None = None,
            what: str = "") -> int:
        """Add a backward node computing ``op``; it carries the forward node's DSL span (the
        generated kernel names the line it came from) and is named ``<layer>.grad[.what]``."""
        name = f"{self.node.name or '%' + str(self.node.id)}.grad" + (f".{what}" if what else "")
        return self.graph.add(op, inputs, attrs, name=name, span=self.node.span).id

    def reduce_to(self, grad: int, like: int) -> int:
        """``grad`` summed back to the type of value ``like`` (over the batch when ``like`` is
        unbatched, as parameters are, and over the axes ``like`` was broadcast along);
        ``grad`` itself when the types agree."""
        g, t = self.type(grad), self.type(like)
        batched = t.batched and not is_constant(self.graph, self.graph.node(like))
        if g.shape == t.shape and g.batched == batched:
            return grad
        return self.add("reduce_to", [grad], {"shape": t.shape, "batched": batched},
                        what="sum")


def trainable_params(graph: Graph, frozen: Sequence[str] = ()) -> list[Node]:
    """The parameters a training step updates: trainable ones (not batch-norm statistics,
    not literal weights) whose names match none of the ``frozen`` patterns (fnmatch)."""
    return [p for p in graph.params() if p.attrs.get("trainable", True)
            and not any(fnmatch.fnmatchcase(p.name, pat) for pat in frozen)]


def _accumulate(graph: Graph, value: int, grads: list[int]) -> int:
    if len(grads) == 1:
        return grads[0]
    node = graph.node(value)
    return graph.add("add", grads, name=f"{node.name or '%' + str(value)}.grad.sum",
                     span=node.span).id


def differentiate(graph: Graph, root: int, wrt: Sequence[int]) -> dict[int, int]:
    """Add the backward graph of scalar ``root`` with respect to the values ``wrt``; returns
    each one's gradient node (values ``root`` does not depend on are left out)."""
    order = graph.topo_order()
    leads = set(wrt)  # values on a path from a differentiated value
    for node in order:
        if any(i in leads for i in node.inputs):
            leads.add(node.id)
    if root not in leads:
        return {}
    grads: dict[int, list[int | None]] = {root: [None]}
    for node in reversed(order):
        pending = grads.pop(node.id, None)
        if pending is None or node.op in ("input", "param"):
            if pending is not None:
                grads[node.id] = pending
            continue
        dy = None if pending == [None] else _accumulate(graph, node.id, pending)  # type: ignore
        rule = get_op(node.op).gradient
        if rule is None:
            at = where(graph, node)
            raise GradientError(f"{at + ': ' if at else ''}layer {node.name or node.id} "
                                f"({node.op}) has no gradient rule: cnnc cannot train through "
                                f"{node.op} yet")
        wanted = frozenset(i for i in node.inputs if i in leads)
        din = rule(GradBuilder(graph, node, dy, wanted))
        for i, g in zip(node.inputs, din):
            if g is not None and i in leads:
                grads.setdefault(i, []).append(g)
    out: dict[int, int] = {}
    for value in wrt:
        pending = grads.get(value)
        if pending:
            g = _accumulate(graph, value, pending)  # type: ignore[arg-type]
            builder = GradBuilder(graph, graph.node(value), None, frozenset())
            out[value] = builder.reduce_to(g, value)
    return out


@dataclass(frozen=True)
class LossSpec:
    """A loss over one network output: the op and its attributes, and what its ``labels``
    input holds per sample (``labels_shape`` of the output's type)."""

    op: str
    doc: str


#: The losses ``attach_loss`` knows, by the name a user gives (``compile(loss=...)``).
LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec("cross_entropy", "softmax cross-entropy over the classes, "
                              "integer labels (on the logits: a final softmax is skipped)"),
    "mse": LossSpec("mse", "mean squared error against targets of the output's shape"),
}


def attach_loss(graph: Graph, loss: str = "cross_entropy", output: str | None = None,
                **attrs: Any) -> Graph:
    """A copy of ``graph`` with ``loss`` over its output ``output`` (default: the only one) and
    a ``labels`` input, the loss as the graph's only output (``loss``): a training graph for
    :func:`autodiff`. Cross-entropy reads the logits: a final ``softmax`` (or
    ``log_softmax``) is left out of the training graph, as PyTorch's ``CrossEntropyLoss``
    takes logits."""
    if loss not in LOSSES:
        raise GradientError(f"unknown loss {loss!r}; cnnc has {', '.join(LOSSES)}")
    if output is None:
        if len(graph.outputs) != 1:
            raise GradientError(f"network {graph.name!r} has {len(graph.outputs)} outputs "
                                f"({', '.join(graph.outputs)}); name the one the loss reads")
        output = next(iter(graph.outputs))
    if output not in graph.outputs:
        raise GradientError(f"network {graph.name!r} has no output {output!r} (it has "
                            f"{', '.join(graph.outputs)})")
    g = graph.copy()
    updates: dict[int, int] = {}  # parameter -> its value after the step
    for n in g.topo_order():
        form = get_op(n.op).training_form
        if form is not None:
            try:
                form(g, n, updates)
            except ShapeError as e:
                at = where(g, n)
                raise GradientError(f"{at + ': ' if at else ''}layer {n.name or n.id} cannot "
                                    f"train: {e}") from None
    y = g.node(g.outputs[output])
    if loss == "cross_entropy" and y.op in ("softmax", "log_softmax") and \
            y.attrs.get("axis", 0) == 0:
        y = g.node(y.inputs[0])
    spec = LOSSES[loss]
    try:
        labels_type = get_op(spec.op).extra["labels_type"](y.type)
    except ShapeError as e:
        raise GradientError(f"loss {loss!r} does not fit output {output!r}: {e}") from None
    if "labels" in g.inputs:
        raise GradientError(f"network {graph.name!r} has an input named 'labels'; rename it "
                            "to train it (the loss's labels take that name)")
    labels = g.add("input", [], {"shape": labels_type.shape}, type=labels_type, name="labels")
    g.inputs["labels"] = labels.id
    op = get_op(spec.op)
    given = {a.name: attrs.get(a.name, a.default) for a in op.signature}
    unknown = sorted(set(attrs) - set(given))
    if unknown:
        raise GradientError(f"loss {loss!r} takes {', '.join(given) or 'no options'}, not "
                            f"{', '.join(unknown)}")
    try:
        canonical = op.canonicalize(given, [y.type, labels_type]) if op.canonicalize else given
        node = g.add(spec.op, [y.id, labels.id], canonical, name=f"loss.{loss}", span=y.span)
    except (ShapeError, AttrError) as e:  # a loss that does not fit the output
        raise GradientError(f"loss {loss!r} does not fit output {output!r} ({y.type}): "
                            f"{e}") from None
    g.outputs = {LOSS: node.id, OUTPUT + output: y.id}
    g.outputs.update({UPDATE + g.node(p).name: v for p, v in updates.items()})
    g.remove_dead()
    return g


def gradient_outputs(graph: Graph) -> dict[str, int]:
    """The ``grad:<name>`` outputs of a differentiated graph, by parameter or input name."""
    return {k[len(GRAD):]: v for k, v in graph.outputs.items() if k.startswith(GRAD)}


def update_outputs(graph: Graph) -> dict[str, int]:
    """The ``update:<name>`` outputs of a training graph, by parameter name."""
    return {k[len(UPDATE):]: v for k, v in graph.outputs.items() if k.startswith(UPDATE)}


class TrainingOptions(Protocol):
    """What the pass reads of the pass context (``passes.manager.PassContext``)."""

    frozen: tuple[str, ...]
    input_gradients: bool

    def note(self, text: str, node: Node | None = None) -> None: ...


def autodiff(graph: Graph, ctx: TrainingOptions) -> bool:
    """The pass: gradients of ``loss`` with respect to the trainable parameters (not those
    ``ctx.frozen`` names) and, with ``ctx.input_gradients``, the network's inputs (not the
    labels, not the whole-batch ``dropout_seed``), as outputs ``grad:<name>``."""
    if LOSS not in graph.outputs:
        return False
    wrt = [p.id for p in trainable_params(graph, ctx.frozen)]
    if ctx.input_gradients:
        wrt += [nid for name, nid in graph.inputs.items()
                if name != "labels" and graph.node(nid).type.batched]  # not dropout_seed
    grads = differentiate(graph, graph.outputs[LOSS], wrt)
    for nid, g in grads.items():
        node = graph.node(nid)
        graph.outputs[GRAD + node.name] = g
        ctx.note(f"gradient of {node.name} ({graph.node(g).op})", node)
    return bool(grads)
