"""The compiled graphs the explanations run: a network with the ``weighted_sum`` objective
attached to chosen layers and differentiated by the training machinery (``attach_loss``, the
``autodiff`` pass, the training pipeline, one planned arena), and the network cut at chosen
layers for their values.

    gm = GradientModel(graph, params, objective=("out",), input_gradient=True,
                       gradients_of=("relu2",), values=("relu2",), rule="guided")
    run = gm.run(x, {"out": seeds})      # run.objective, run.input_grad, run.grads, run.values

The seeds are the gradient the objective's backward pass starts from at each objective layer
(``weighted_sum``: its gradient is its weights): one-hot for a class score, the activations
themselves for DeepDream, a style loss's gradient for neural style. ``rule`` rewrites every
monotone activation's backward pass first (guided backprop, deconvnet:
``compiler/passes/modify_backward.py``). Every layer keeps its inference form (batch norm
with its running statistics), as the network classifies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...compiler.autodiff import (
    LABELS,
    LOSS,
    GradientError,
    attach_loss,
    labels_input,
    values_named,
)
from ...compiler.ir import Graph
from ...compiler.lower import lower_graph
from ...compiler.passes import LoweringError, PassContext, optimize
from ...compiler.passes.modify_backward import modify_backward
from ...compiler.target import resolve_target
from ..executor import Executor
from ..reference import InputError, check_inputs

#: Graph outputs holding a layer's value (beside ``grad:<name>``), by layer name.
VALUE = "value:"


class ExplainError(InputError):
    """An explanation that cannot be made as asked (a layer, channel or class that does not
    exist, an image of the wrong shape): a user error, in one sentence that names it."""


def with_outputs(graph: Graph, layers: Sequence[str]) -> Graph:
    """A copy of ``graph`` whose outputs are the values of ``layers`` (by layer name; the
    network's own output names are layer names too); everything after them removed."""
    outputs = {name: nid for name, nid in graph.outputs.items() if name in layers}
    rest = [name for name in layers if name not in outputs]
    try:
        outputs.update(zip(rest, values_named(graph, rest)))
    except GradientError as e:
        raise ExplainError(str(e)) from None
    g = graph.copy()
    g.outputs = {name: outputs[name] for name in layers}
    g.remove_dead()
    return g


@dataclass
class GradientRun:
    """One run of a :class:`GradientModel` on a batch."""

    objective: float
    input_grad: np.ndarray | None
    grads: dict[str, np.ndarray]
    values: dict[str, np.ndarray]


class GradientModel:
    """The compiled gradient of ``weighted_sum`` objectives (module docstring)."""

    def __init__(self, graph: Graph, params: Mapping[str, np.ndarray], *,
                 objective: Sequence[str], input_gradient: bool = True,
                 gradients_of: Sequence[str] = (), values: Sequence[str] = (),
                 rule: str | None = None, cache_dir: str | Path | None = None) -> None:
        if len(graph.inputs) != 1:
            raise ExplainError(f"explanations take networks of one input; {graph.name!r} has "
                               f"{', '.join(graph.inputs)}")
        self.graph = graph
        self.objective = tuple(objective)
        g = with_outputs(graph, self.objective)
        if rule is not None and not modify_backward(g, rule):
            raise ExplainError(f"{rule} changes the backward pass of the network's "
                               f"activations (relu, tanh, sigmoid...); {graph.name!r} has "
                               "none before the chosen layer")
        single = len(self.objective) == 1
        loss = "weighted_sum" if single else [(name, "weighted_sum") for name in self.objective]
        try:
            tg = attach_loss(g, loss, self.objective[0] if single else None,
                             training_forms=False)
            tg.outputs.update({VALUE + name: nid for name, nid in
                               zip(values, values_named(tg, values))})
            optimize(tg, 2, ctx=PassContext(training=True, target=resolve_target("cpu"),
                                            frozen=("*",), input_gradients=input_gradient,
                                            gradients_of=tuple(gradients_of)))
            self.plan = lower_graph(tg, cache_dir=cache_dir)
        except (GradientError, LoweringError) as e:
            raise ExplainError(str(e)) from None
        self.seed_inputs = {name: LABELS if single else labels_input(name)
                            for name in self.objective}
        self.input_name = next(iter(graph.inputs))
        self.executor = Executor(self.plan)
        self.set_params(params)

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """The network's parameters by name (every one, literal weights included)."""
        self.executor.set_params({k: np.asarray(v, np.float32) for k, v in params.items()})

    def seed_shape(self, layer: str) -> tuple[int, ...]:
        """The shape of one image's seed at objective layer ``layer``."""
        graph = self.plan.graph
        return graph.node(graph.inputs[self.seed_inputs[layer]]).type.shape

    def run(self, x: np.ndarray, seeds: Mapping[str, np.ndarray]) -> GradientRun:
        """The objective ``sum <layer value, seed>`` on batch ``x`` and its gradients."""
        inputs = {self.input_name: np.asarray(x, np.float32)}
        inputs.update({self.seed_inputs[k]: np.asarray(v, np.float32) for k, v in seeds.items()})
        n = check_inputs(self.plan.graph, inputs, dtypes=(np.float32,))
        graph = self.plan.graph
        flat = {nid: np.ascontiguousarray(inputs[name]).reshape(-1)
                for name, nid in graph.inputs.items()}
        arena = self.executor.run(flat, n)

        def read(nid: int) -> np.ndarray:
            return np.array(self.executor.value(arena, flat, nid))

        outputs = graph.outputs
        grads = {k[len("grad:"):]: read(v) for k, v in outputs.items() if k.startswith("grad:")}
        return GradientRun(
            objective=float(read(outputs[LOSS])), input_grad=grads.pop(self.input_name, None),
            grads=grads,
            values={k[len(VALUE):]: read(v) for k, v in outputs.items() if k.startswith(VALUE)})
