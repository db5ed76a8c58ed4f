"""Reverse-mode automatic differentiation over the IR: the backward graph as more IR.

A training graph is the network as written with a loss attached (``attach_loss``: the loss op
of ``compiler/ops/loss.py`` over the chosen output and a ``labels`` input, or a weighted sum of
several such terms, one per head), each layer in its
training form first (``OpDef.training_form``: batch norm normalizes with the batch's statistics,
dropout draws its mask from the ``dropout_seed`` input, ``compiler/ops/tensor.py``). A
parameter a step updates by itself, not by its gradient (batch norm's running statistics), is
a graph output ``update:<name>`` holding its new value (one for the whole batch), which the
runtime writes back into the parameter after each step. The ``autodiff``
pass, at the head of the training pipeline, then adds to the same graph, for every trainable
parameter (and, when asked, every network input and the values of chosen layers: Grad-CAM's),
the gradient of the loss with respect to it, as graph outputs named ``grad:<name>``:

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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .ir import Graph, Node, node_location
from .ops import AttrError, ShapeError, get_op, is_constant
from .types import TensorType

__all__ = ["GradBuilder", "GradientError", "LABELS", "LOSSES", "LossTerm", "attach_loss",
           "autodiff", "check_labels_input", "gradient_outputs", "is_labels", "labels_input",
           "loss_terms", "trainable_params", "update_outputs", "values_named"]

#: Graph outputs of a training graph: the loss, ``grad:<name>`` per differentiated value and
#: ``update:<name>`` per parameter the step sets (the module docstring).
LOSS, GRAD, UPDATE = "loss", "grad:", "update:"
#: The scores the loss read (``output:<name>``, the logits where a final softmax was skipped):
#: kept as an output so a training step can report its batch's accuracy.
OUTPUT = "output:"


class GradientError(Exception):
    """The loss cannot be differentiated as asked: an op without a gradient rule, a loss that
    does not fit the network's output. The message names the layer and its DSL location."""


@dataclass
class GradBuilder:
    """What an op's gradient rule sees of one forward node, and how it adds backward nodes.

    ``dy`` is the node id of the loss's gradient with respect to the node's output (same type
    as the output: a whole-batch scalar for a term of a weighted sum of losses), or None at
    the root, where it is 1 (the loss's own node: its rule needs no input for it)."""

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
    """Add the backward graph of scalar ``root`` with respect to the values ``wrt`` (inputs,
    parameters or intermediate values); returns each one's gradient node (values ``root`` does
    not depend on are left out)."""
    order = graph.topo_order()
    leads = set(wrt)  # values on a path from a differentiated value
    for node in order:
        if any(i in leads for i in node.inputs):
            leads.add(node.id)
    if root not in leads:
        return {}
    asked = set(wrt)
    grads: dict[int, list[int | None]] = {root: [None]}
    kept: dict[int, int] = {}  # the gradients of intermediate values asked for
    for node in reversed(order):
        pending = grads.pop(node.id, None)
        if pending is None or node.op in ("input", "param"):
            if pending is not None:
                grads[node.id] = pending
            continue
        dy = None if pending == [None] else _accumulate(graph, node.id, pending)  # type: ignore
        if dy is not None and node.id in asked:
            kept[node.id] = dy
        wanted = frozenset(i for i in node.inputs if i in leads)
        if not wanted:  # an intermediate value asked for, nothing before it
            continue
        rule = get_op(node.op).gradient
        if rule is None:
            at = node_location(graph, node, column=True)
            raise GradientError(f"{at + ': ' if at else ''}layer {node.name or node.id} "
                                f"({node.op}) has no gradient rule: cnnc cannot train through "
                                f"{node.op} yet")
        din = rule(GradBuilder(graph, node, dy, wanted))
        for i, g in zip(node.inputs, din):
            if g is not None and i in leads:
                grads.setdefault(i, []).append(g)
    out: dict[int, int] = dict(kept)
    for value in wrt:
        pending = grads.get(value)
        if pending:
            g = _accumulate(graph, value, pending)  # type: ignore[arg-type]
            builder = GradBuilder(graph, graph.node(value), None, frozenset())
            out[value] = builder.reduce_to(g, value)
    return out


@dataclass(frozen=True)
class LossSpec:
    """A loss a user names: its op (``compiler/ops/loss.py``) and, ``skips``, the final ops of
    an output the loss reads through (a loss on logits skips the softmax or sigmoid that turns
    them into probabilities, as PyTorch's ``CrossEntropyLoss`` and ``BCEWithLogitsLoss`` take
    logits)."""

    op: str
    doc: str
    skips: tuple[str, ...] = ()


#: The losses ``attach_loss`` knows, by the name a user gives (``compile(loss=...)``).
LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec("cross_entropy", "softmax cross-entropy over the classes, "
                              "integer labels (on the logits: a final softmax is skipped)",
                              ("softmax", "log_softmax")),
    "mse": LossSpec("mse", "mean squared error against targets of the output's shape"),
    "bce_with_logits": LossSpec("bce_with_logits", "binary cross-entropy against targets in "
                                "[0, 1] of the output's shape (on the logits: a final sigmoid "
                                "is skipped)", ("sigmoid",)),
    "triplet": LossSpec("triplet", "triplet margin loss of three outputs: the anchor, positive "
                        "and negative embeddings; no labels"),
    "contrastive": LossSpec("contrastive", "contrastive loss of a pair's distance output, "
                            "labels 0 (similar pair) or 1 (dissimilar)"),
    "localization": LossSpec("localization", "class cross-entropy plus the box's mean squared "
                             "error where an object is present (outputs [K + 4], labels "
                             "[class, x, y, h, w])"),
    "weighted_sum": LossSpec("weighted_sum", "the output times weights of its shape (the "
                             "labels), summed: an objective whose gradient is the weights, for "
                             "explanations rather than training (on the logits: a final "
                             "softmax is skipped, as class scores are)",
                             ("softmax", "log_softmax")),
}

#: The labels input of a training graph with one loss; with several terms, each term that takes
#: labels has its own, ``labels:<output>`` (:func:`labels_input`).
LABELS = "labels"


def labels_input(output: str) -> str:
    """The name of the labels input of the term over network output ``output``."""
    return f"{LABELS}:{output}"


def is_labels(name: str) -> bool:
    """Whether an input of a training graph holds a loss's labels."""
    return name == LABELS or name.startswith(LABELS + ":")


@dataclass(frozen=True)
class LossTerm:
    """One term of a training graph's loss: ``loss`` over the network outputs ``outputs`` (one,
    or the triplet loss's three), scaled by ``weight``, with the loss op's ``options``."""

    outputs: tuple[str, ...]
    loss: str
    weight: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)


def _default_outputs(graph: Graph, loss: str) -> tuple[str, ...]:
    """The outputs a loss reads when none are named: all of the network's, if they are as many
    as the loss reads (the triplet loss: anchor, positive, negative in declaration order)."""
    reads = get_op(LOSSES[loss].op).extra.get("reads", 1)
    if len(graph.outputs) != reads:
        what = "the one" if reads == 1 else f"the {reads}"
        raise GradientError(f"network {graph.name!r} has {len(graph.outputs)} outputs "
                            f"({', '.join(graph.outputs)}); name {what} the loss reads")
    return tuple(graph.outputs)


def _as_outputs(output: Any) -> tuple[str, ...]:
    if isinstance(output, str):
        return (output,)
    if isinstance(output, (tuple, list)) and output and all(isinstance(o, str) for o in output):
        return tuple(output)
    raise GradientError(f"a loss term's output must be an output name (or the triplet loss's "
                        f"three), got {output!r}")


def _parse_term(term: Any) -> LossTerm:
    """``(output, loss[, weight[, options]])`` as a :class:`LossTerm`."""
    if not isinstance(term, (tuple, list)) or not 2 <= len(term) <= 4:
        raise GradientError(f"a loss term is (output, loss[, weight[, options]]), got {term!r}")
    output, loss, *rest = term
    weight = rest[0] if rest else 1.0
    options = rest[1] if len(rest) > 1 else {}
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
            not math.isfinite(weight):
        raise GradientError(f"the weight of loss term {term!r} must be a finite number, got "
                            f"{weight!r}")
    if not isinstance(options, Mapping):
        raise GradientError(f"the options of loss term {term!r} must be a dict, got "
                            f"{options!r}")
    return LossTerm(_as_outputs(output), str(loss), float(weight), dict(options))


def loss_terms(graph: Graph, loss: str | Sequence[Any], output: str | Sequence[str] | None,
               options: Mapping[str, Any]) -> list[LossTerm]:
    """The terms ``attach_loss`` is asked for: one loss by name (over ``output``, default the
    only output), or a list of ``(output, loss[, weight[, options]])``."""
    if isinstance(loss, str):
        outputs = _as_outputs(output) if output is not None else None
        if loss in LOSSES and outputs is None:
            outputs = _default_outputs(graph, loss)
        terms = [LossTerm(outputs or (), loss, 1.0, dict(options))]
    else:
        if output is not None or options:
            raise GradientError("with a list of loss terms, give each term's output and "
                                "options in its tuple: (output, loss, weight, options)")
        terms = [_parse_term(t) for t in loss]
        if not terms:
            raise GradientError("the list of loss terms is empty")
    read: set[str] = set()
    for t in terms:
        if t.loss not in LOSSES:
            raise GradientError(f"unknown loss {t.loss!r}; cnnc has {', '.join(LOSSES)}")
        reads = get_op(LOSSES[t.loss].op).extra.get("reads", 1)
        if len(t.outputs) != reads:
            raise GradientError(f"loss {t.loss!r} reads {reads} output{'s' * (reads > 1)}, "
                                f"given {', '.join(t.outputs)}")
        for name in t.outputs:
            if name not in graph.outputs:
                raise GradientError(f"network {graph.name!r} has no output {name!r} (it has "
                                    f"{', '.join(graph.outputs)})")
            if name in read:
                raise GradientError(f"output {name!r} is read by two loss terms; each term "
                                    "reads outputs of its own")
            read.add(name)
    return terms


def _attach_term(g: Graph, term: LossTerm, labels_name: str, node_name: str
                 ) -> tuple[int, list[tuple[str, int]]]:
    """The node of one term's loss over its outputs (and a new labels input ``labels_name``
    where the loss takes labels); returns it and the values it reads, by output name."""
    spec = LOSSES[term.loss]
    op = get_op(spec.op)
    ys = []
    for name in term.outputs:
        y = g.node(g.outputs[name])
        if y.op in spec.skips and y.attrs.get("axis", 0) == 0:
            y = g.node(y.inputs[0])
        ys.append(y)
    shown = ", ".join(term.outputs)
    try:
        labels_type = op.extra["labels_type"](ys[0].type)
    except ShapeError as e:
        raise GradientError(f"loss {term.loss!r} does not fit output {shown!r}: {e}") from None
    inputs = [y.id for y in ys]
    types = [y.type for y in ys]
    if labels_type is not None:
        if labels_name in g.inputs:
            raise GradientError(f"network {g.name!r} has an input named {labels_name!r}; "
                                "rename it to train it (the loss's labels take that name)")
        labels = g.add("input", [], {"shape": labels_type.shape}, type=labels_type,
                       name=labels_name)
        g.inputs[labels_name] = labels.id
        inputs.append(labels.id)
        types.append(labels_type)
    given = {a.name: term.options.get(a.name, a.default) for a in op.signature}
    unknown = sorted(set(term.options) - set(given))
    if unknown:
        raise GradientError(f"loss {term.loss!r} takes {', '.join(given) or 'no options'}, not "
                            f"{', '.join(unknown)}")
    try:
        canonical = op.canonicalize(given, types) if op.canonicalize else given
        node = g.add(spec.op, inputs, canonical, name=node_name, span=ys[0].span)
    except (ShapeError, AttrError) as e:  # a loss that does not fit the output
        raise GradientError(f"loss {term.loss!r} does not fit output {shown!r} "
                            f"({ys[0].type}): {e}") from None
    return node.id, [(name, y.id) for name, y in zip(term.outputs, ys)]


def attach_loss(graph: Graph, loss: str | Sequence[Any] = "cross_entropy",
                output: str | Sequence[str] | None = None, *, training_forms: bool = True,
                **attrs: Any) -> Graph:
    """A copy of ``graph`` with its loss and labels inputs, the loss as output ``loss``: a
    training graph for :func:`autodiff`.

    ``loss`` names one loss (:data:`LOSSES`) over output ``output`` (default: the only one;
    the triplet loss: a tuple of three, default the network's three outputs), with the loss
    op's options ``attrs``, and one labels input ``labels``. Or it is a list of terms
    ``(output, loss[, weight[, options]])``, summed with their weights (``loss_sum``; default
    weight 1), each term's labels in an input of its own, ``labels:<output>`` (the triplet
    loss's: none). A loss on logits skips a final ``softmax`` (``log_softmax``, ``sigmoid``)
    of the output it reads (:class:`LossSpec`). Without ``training_forms`` every layer keeps
    the form it infers with (the explanations differentiate the network as it classifies: a
    layer whose inference form has no gradient rule is then refused by ``autodiff``)."""
    terms = loss_terms(graph, loss, output, attrs)
    g = graph.copy()
    updates: dict[int, int] = {}  # parameter -> its value after the step
    for n in g.topo_order():
        form = get_op(n.op).training_form
        if form is not None and training_forms:
            try:
                form(g, n, updates)
            except ShapeError as e:
                at = node_location(g, n, column=True)
                raise GradientError(f"{at + ': ' if at else ''}layer {n.name or n.id} cannot "
                                    f"train: {e}") from None
    single = isinstance(loss, str)
    nodes, scores = [], []
    for t in terms:
        labels_name = LABELS if single else labels_input(t.outputs[0])
        node_name = f"loss.{t.loss}" if single else f"loss.{t.outputs[0]}.{t.loss}"
        nid, read = _attach_term(g, t, labels_name, node_name)
        nodes.append(nid)
        scores += read
    root = nodes[0] if single else g.add("loss_sum", nodes, {
        "weights": tuple(t.weight for t in terms)}, name="loss.sum").id
    g.outputs = {LOSS: root, **{OUTPUT + name: y for name, y in scores}}
    g.outputs.update({UPDATE + g.node(p).name: v for p, v in updates.items()})
    g.remove_dead()
    return g


def check_labels_input(graph: Graph, name: str, labels: np.ndarray) -> None:
    """Refuse labels the loss reading input ``name`` of training graph ``graph`` cannot take
    (class indices out of range, targets outside [0, 1]...): a ShapeError saying which."""
    for user in graph.users(graph.inputs[name]):
        check = get_op(user.op).extra.get("check_labels")
        if check is not None:
            check(labels, graph.node(user.inputs[0]).type)


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
    gradients_of: tuple[str, ...]

    def note(self, text: str, node: Node | None = None) -> None: ...


def values_named(graph: Graph, names: Sequence[str]) -> list[int]:
    """The nodes of the layers ``names`` (a GradientError naming the layers there are for a
    name that is not one)."""
    by_name = {n.name: n.id for n in graph.topo_order() if n.name and n.op != "param"}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise GradientError(f"network {graph.name!r} has no layer {missing[0]!r}; its layers "
                            f"are {', '.join(by_name)}")
    return [by_name[name] for name in names]


def autodiff(graph: Graph, ctx: TrainingOptions) -> bool:
    """The pass: gradients of ``loss`` with respect to the trainable parameters (not those
    ``ctx.frozen`` names), with ``ctx.input_gradients`` the network's inputs (not the labels,
    not the whole-batch ``dropout_seed``), and the intermediate values of the layers
    ``ctx.gradients_of`` names (Grad-CAM's), as outputs ``grad:<name>``."""
    if LOSS not in graph.outputs:
        return False
    wrt = [p.id for p in trainable_params(graph, ctx.frozen)]
    if ctx.input_gradients:
        wrt += [nid for name, nid in graph.inputs.items()
                if not is_labels(name) and graph.node(nid).type.batched]  # not dropout_seed
    wrt += values_named(graph, ctx.gradients_of)
    grads = differentiate(graph, graph.outputs[LOSS], wrt)
    for nid, g in grads.items():
        node = graph.node(nid)
        graph.outputs[GRAD + node.name] = g
        ctx.note(f"gradient of {node.name} ({graph.node(g).op})", node)
    return bool(grads)
