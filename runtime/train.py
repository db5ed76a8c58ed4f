"""The compiled training step: a network with its loss, differentiated and lowered to kernels.

    tm = cnnc.compile("lenet5", mode="train", loss="cross_entropy", optimizer="sgd", lr=0.1,
                      momentum=0.9, weight_decay=5e-4)
    loss, grads = tm.loss_and_grads(x, y)    # a float, {parameter name: gradient}; no update
    loss = tm.train_step(x, y)               # forward, loss, backward and update
    tm.params, tm.save_weights(path), tm.inference()

The training graph (``compiler/autodiff.py``: the loss attached, the ``autodiff`` pass at the
head of the training pipeline) is lowered like any graph: its forward and backward kernels and
the activations the backward pass reads share one planned arena. Trainable parameters live in
one flat float32 buffer (``flat_params``) and their gradients in another (``flat_grads``); the
optimizer (``runtime/optim.py``) updates the first from the second in a few whole-buffer
operations. After an update the kernels' packed constants are refreshed from the new values
(``CpuExecutor.set_params``: derived parameters in float64, then each step's packer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.autodiff import LOSS, GradientError, attach_loss, gradient_outputs, trainable_params
from ..compiler.ir import Graph
from ..compiler.lower import lower_graph
from ..compiler.ops import ShapeError
from ..compiler.ops.loss import check_labels
from ..compiler.passes import LoweringError, PassContext, optimize
from ..compiler.plan import Plan
from ..compiler.target import Target
from .executor import CpuExecutor
from .optim import Optimizer, OptimizerError
from .reference import InputError, check_inputs
from .weights import check_weights, save_weights

__all__ = ["TrainingModel", "TrainingError", "compile_training"]


class TrainingError(InputError):
    """A training model that cannot be built or run as asked (a loss that does not fit, an op
    without a gradient, labels out of range): a user error, reported in one sentence."""


class TrainingModel:
    """A network compiled for training (see the module docstring)."""

    def __init__(self, graph: Graph, plan: Plan, params: Mapping[str, np.ndarray],
                 optimizer: Optimizer, loss: str, frozen: Sequence[str] = (),
                 opt_level: int = 2, compile_seconds: float = 0.0,
                 compile_inference: Callable[..., Any] | None = None) -> None:
        self.graph = graph
        self.compile_inference = compile_inference  # cnnc.compile, handed in by it
        self.plan = plan
        self.loss = loss
        self.frozen = tuple(frozen)
        self.opt_level = opt_level
        self.optimizer = optimizer
        self.compile_seconds = compile_seconds
        self.executor = CpuExecutor(plan)
        self.grad_outputs = gradient_outputs(plan.graph)
        names = [p.name for p in trainable_params(graph, self.frozen)]
        self.trainable = [n for n in names if n in self.grad_outputs]
        shapes = {p.name: p.type.shape for p in graph.params()}
        sizes = [int(np.prod(shapes[n])) for n in self.trainable]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.flat_params = np.zeros(int(offsets[-1]), np.float32)
        self.flat_grads = np.zeros_like(self.flat_params)
        self._views = {n: self.flat_params[offsets[i]:offsets[i + 1]].reshape(shapes[n])
                       for i, n in enumerate(self.trainable)}
        self._grad_views = {n: self.flat_grads[offsets[i]:offsets[i + 1]].reshape(shapes[n])
                            for i, n in enumerate(self.trainable)}
        self._fixed: dict[str, np.ndarray] = {}
        self.steps_taken = 0
        self.set_params(params)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every parameter by name (copies, float32)."""
        out = {n: v.copy() for n, v in self._fixed.items()}
        out.update({n: v.copy() for n, v in self._views.items()})
        return out

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace every parameter (checked by name and shape against the network)."""
        values = {k: np.asarray(v, np.float32) for k, v in values.items()}
        check_weights(self.graph, values)
        for node in self.graph.params():
            if node.attrs.get("init") == "literal":
                values[node.name] = np.asarray(node.attrs["value"], np.float32)
        for name, view in self._views.items():
            view[...] = values[name]
        self._fixed = {k: v.copy() for k, v in values.items() if k not in self._views}
        self._refresh()

    def _refresh(self) -> None:
        """The kernels' constants from the current parameters."""
        self.executor.set_params({**self._fixed, **self._views})

    def save_weights(self, path: str | Path) -> None:
        save_weights(self.params, path)

    def inference(self, **options: Any) -> Any:
        """A compiled inference model of the network with the trained weights (batch norm
        folded again at -O2); ``options`` as ``cnnc.compile`` takes them."""
        if self.compile_inference is None:
            raise TrainingError("this training model was built without an inference compiler")
        return self.compile_inference(self.graph, weights=self.params, **options)

    # -- running ------------------------------------------------------------------------------
    def _feed(self, x: Any, y: Any) -> tuple[dict[int, np.ndarray], int]:
        inputs = dict(x) if isinstance(x, Mapping) else None
        names = [n for n in self.graph.inputs]
        if inputs is None:
            if len(names) != 1:
                raise TrainingError(f"network {self.graph.name!r} has inputs "
                                    f"{', '.join(names)}: pass a dict keyed by input name")
            inputs = {names[0]: x}
        labels = np.asarray(y)
        if labels.dtype.kind not in "iuf":
            raise TrainingError(f"labels must be numbers, got an array of {labels.dtype}")
        inputs["labels"] = labels.astype(np.float32)
        n = check_inputs(self.plan.graph, inputs, dtypes=(np.float32,))
        if self.loss == "cross_entropy":
            scores = self.plan.graph.node(self.plan.graph.outputs[LOSS]).inputs[0]
            try:
                check_labels(labels, self.plan.graph.node(scores).type.shape[0])
            except ShapeError as e:
                raise TrainingError(str(e)) from None
        flat = {nid: np.ascontiguousarray(inputs[name]).reshape(-1)
                for name, nid in self.plan.graph.inputs.items()}
        return flat, n

    def _run(self, x: Any, y: Any,
             after: Callable[[int, Any], bool] | None = None) -> float:
        flat, n = self._feed(x, y)
        if after is None:
            arena = self.executor.run(flat, n)
        else:
            arena = self.executor.run_watched(flat, n, after)
        graph = self.plan.graph
        for name in self.trainable:
            self._grad_views[name][...] = self.executor.value(arena, flat,
                                                              self.grad_outputs[name])
        loss = float(self.executor.value(arena, flat, graph.outputs[LOSS]))
        if not np.isfinite(loss) or not np.all(np.isfinite(self.flat_grads)):
            raise TrainingError(f"the loss or a gradient is not finite (loss {loss}) at "
                                f"step {self.steps_taken}: lower the learning rate, or look "
                                "for the layer with `cnnc run --check-numerics`")
        return loss

    def loss_and_grads(self, x: Any, y: Any) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on a batch and its gradient with respect to each trainable parameter (by
        name, the parameter's shape); the parameters are left as they are."""
        loss = self._run(x, y)
        return loss, {n: v.copy() for n, v in self._grad_views.items()}

    def train_step(self, x: Any, y: Any, lr: float | None = None) -> float:
        """Forward, loss, backward and one optimizer update; returns the loss before it."""
        loss = self._run(x, y)
        self.optimizer.update(self.flat_params, self.flat_grads, lr)
        self.steps_taken += 1
        self._refresh()
        return loss

    def profile_step(self, x: Any, y: Any, lr: float | None = None) -> list[tuple[str, str,
                                                                                  float]]:
        """One :meth:`train_step`, timed part by part: ``(name, what, seconds)`` for every plan
        step (``what`` its op, fused ops included), then ``gradients`` (copying them into the
        flat buffer, with the finiteness check), ``optimizer`` and ``refresh`` (packing the
        kernels' constants from the updated parameters)."""
        steps = self.plan.steps
        marks = [0.0] * (len(steps) + 1)

        def mark(index: int, arena: Any) -> bool:
            marks[index + 1] = time.perf_counter()
            return False

        marks[0] = time.perf_counter()
        self._run(x, y, after=mark)
        gathered = time.perf_counter()
        self.optimizer.update(self.flat_params, self.flat_grads, lr)
        updated = time.perf_counter()
        self.steps_taken += 1
        self._refresh()
        refreshed = time.perf_counter()
        parts = [(s.name, s.op, marks[i + 1] - marks[i]) for i, s in enumerate(steps)]
        return parts + [("gradients", "gradients", gathered - marks[-1]),
                        ("optimizer", "optimizer", updated - gathered),
                        ("refresh", "refresh", refreshed - updated)]

    def __repr__(self) -> str:
        return (f"TrainingModel({self.graph.name!r}, loss={self.loss!r}, "
                f"optimizer={self.optimizer.kind!r}, {len(self.trainable)} trainable tensors, "
                f"{self.flat_params.size:,} parameters)")


def compile_training(graph: Graph, params: Mapping[str, np.ndarray], *, target: Target,
                     loss: str = "cross_entropy", output: str | None = None,
                     optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.0,
                     nesterov: bool = False, weight_decay: float = 0.0,
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                     clip_norm: float | None = None, label_smoothing: float = 0.0,
                     freeze: Sequence[str] = (), opt_level: int = 2,
                     cache_dir: str | Path | None = None, progress: Any = None,
                     input_gradients: bool = False,
                     compile_inference: Callable[..., Any] | None = None) -> TrainingModel:
    """The training model of ``graph`` (``cnnc.compile(..., mode="train")`` calls this)."""
    try:
        opt = Optimizer(optimizer, lr, momentum, nesterov, weight_decay, tuple(betas), eps,
                        clip_norm)
        attrs = {"label_smoothing": label_smoothing} if loss == "cross_entropy" else {}
        tg = attach_loss(graph, loss, output, **attrs)
        optimize(tg, opt_level, ctx=PassContext(training=True, target=target,
                                                frozen=tuple(freeze),
                                                input_gradients=input_gradients))
        plan = lower_graph(tg, cache_dir=cache_dir, progress=progress)
    except (GradientError, OptimizerError, LoweringError) as e:
        raise TrainingError(str(e)) from None
    if not gradient_outputs(plan.graph):
        raise TrainingError(f"nothing to train in network {graph.name!r}: no trainable "
                            "parameter reaches the loss (all frozen?)")
    return TrainingModel(graph, plan, params, opt, loss, freeze, opt_level,
                         compile_inference=compile_inference)
