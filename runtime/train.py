"""The compiled training step: a network with its loss, differentiated and lowered to kernels.

    tm = cnnc.compile("lenet5", mode="train", loss="cross_entropy", optimizer="sgd", lr=0.1,
                      momentum=0.9, weight_decay=5e-4)
    loss, grads = tm.loss_and_grads(x, y)    # a float, {parameter name: gradient}; no update
    loss = tm.train_step(x, y)               # forward, loss, backward and update
    tm.params, tm.save_weights(path), tm.inference()

The training graph (``compiler/autodiff.py``: the loss attached, the ``autodiff`` pass at the
head of the training pipeline) is lowered like any graph: its forward and backward kernels and
the activations the backward pass reads share one planned arena. Trainable parameters live in
one flat float32 buffer (``flat_params``) and their gradients in another (``flat_grads``), in
the same layout: the memory plan places the parameters' gradients one after another in one
whole-batch slot (``lower_graph``'s ``together``), and that slot is ``flat_grads``, so the
backward kernels write the gradients where the optimizer reads them. The optimizer
(``runtime/optim.py``) updates the first buffer from the second with one generated kernel,
after another has checked the gradients finite (their global norm). After an update the
kernels' packed constants are refreshed from the new values (``Executor.set_params``: the
derived parameters of those the update changed, packings into the last ones' memory, then
the packers of the steps that read them; kernels that read a parameter as it is read it in
``flat_params``).

On a GPU target (``target="cuda"``, or ``"cuda-emu"``: the same CUDA source run on the CPU)
every forward, backward and optimizer kernel is a CUDA kernel of the model's one module, and
``flat_params``, ``flat_grads`` and the optimizer's state are arrays of the GPU's memory
(``plan.memory``): a step uploads the batch, downloads the loss, the scores and the
gradients' per-block norms, and updates the parameters on the device. The running statistics
stay there too: they follow the parameters in one buffer (``flat_state``), a pass's new values
are copied into it within the device's memory, and the running updates read them back out of
it. The kernels' constants that only move values of that buffer (the convolutions' packed
weights, batch norm's weight and bias, a dense layer's weights, the running statistics) are
gathered from it on the device by one kernel (``Executor.gather_on_device``); the host's copy
(``_host_state``: ``params``, ``save_weights`` and ``inference`` read it) is downloaded only
when it is read, or when a packer that computes on the host needs an updated value.
``loss_and_grads`` returns host NumPy values. Data-parallel replicas average host arrays: they
are refused on a GPU target.

Data-parallel training (``set_replicas``): between the pass that writes ``flat_grads`` and the
update that reads it, the gradients, the loss and the running statistics are averaged over the
replicas (``runtime/replicas.py``), each replica's weighted by its share of the global batch,
so that every replica takes the step one process would take on the whole batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.autodiff import (
    LABELS,
    LOSS,
    OUTPUT,
    GradientError,
    attach_loss,
    check_labels_input,
    gradient_outputs,
    is_labels,
    trainable_params,
    update_outputs,
)
from ..compiler.ir import Graph, node_location
from ..compiler.kernels.optimizer import gather_kernel
from ..compiler.lower import lower_graph
from ..compiler.ops import ShapeError
from ..compiler.ops.tensor import DROPOUT_SEED
from ..compiler.passes import LoweringError, PassContext, optimize
from ..compiler.passes.manager import write_memory_plan
from ..compiler.plan import Plan
from ..compiler.target import Target
from .executor import Executor, flat_input
from .optim import BoundKernel, Optimizer, OptimizerError
from .reference import InputError, check_inputs
from .replicas import Replicas
from .weights import WeightsError, check_weights, save_weights

__all__ = ["TrainingModel", "TrainingError", "compile_training", "trainable_gradients"]


class TrainingError(InputError):
    """A training model that cannot be built or run as asked (a loss that does not fit, an op
    without a gradient, labels out of range): a user error, reported in one sentence."""


class TrainingModel:
    """A network compiled for training (see the module docstring)."""

    def __init__(self, graph: Graph, plan: Plan, params: Mapping[str, np.ndarray],
                 optimizer: Optimizer, loss: str | Sequence[Any], frozen: Sequence[str] = (),
                 opt_level: int = 2, compile_seconds: float = 0.0,
                 compile_inference: Callable[..., Any] | None = None,
                 gather: BoundKernel | None = None) -> None:
        """``gather``: on a GPU target, the ``gather_constants`` kernel of the model's module
        (the constants that only move parameters are then made on the device)."""
        self.graph = graph
        self.compile_inference = compile_inference  # cnnc.compile, handed in by it
        self.plan = plan
        self.loss = loss
        self.frozen = tuple(frozen)
        self.opt_level = opt_level
        self.optimizer = optimizer
        self.compile_seconds = compile_seconds
        self.grad_outputs = gradient_outputs(plan.graph)
        grads = trainable_gradients(graph, plan.graph, self.frozen)
        self.trainable = list(grads)
        shapes = {p.name: p.type.shape for p in graph.params()}
        # the layout of both flat buffers: where the memory plan put each gradient
        offsets = {n: plan.buffers.offset[g] for n, g in grads.items()}
        size = sum(int(np.prod(shapes[n])) for n in self.trainable)
        self.updates = update_outputs(plan.graph)
        # the running statistics after the trainable parameters, in one buffer with them
        stat_offsets: dict[str, int] = {}
        end = size
        for name in self.updates:
            stat_offsets[name], end = end, end + int(np.prod(shapes[name]))
        self.memory = plan.memory  # where the kernels run: the host's, or a GPU's
        self.flat_state = self.memory.zeros(end)
        self.flat_params = self.flat_state[:size]
        self.flat_grads = self.memory.zeros(size)
        # the parameters and statistics as the host sees them (on the host: flat_state)
        self._host_state = self.flat_state if self.memory.host else np.zeros(end, np.float32)
        slot = plan.buffers.slot_of[next(iter(grads.values()))]
        self.executor = Executor(plan, slots={slot: self.flat_grads})
        self._offsets = {n: (offsets[n], shapes[n]) for n in self.trainable}
        self._views = {n: _at(self._host_state, *self._offsets[n]) for n in self.trainable}
        self._stat_at = {n: (stat_offsets[n], shapes[n]) for n in self.updates}
        self._stats = {n: _at(self._host_state, *self._stat_at[n]) for n in self.updates}
        self._host_stale = False  # flat_state updated on the device since the host's copy
        if gather is not None and not self.memory.host:
            self.executor.gather_on_device(self.flat_state, {**offsets, **stat_offsets}, gather)
        self._grad_norm = 0.0  # of the last pass's gradients (clipping reads it)
        self._fixed: dict[str, np.ndarray] = {}  # frozen and fixed parameters
        # what an update changes: the trainable parameters and the running statistics (the
        # derived values and constants of frozen and fixed ones are not made again)
        self.updated = self.trainable + list(self.updates)
        self._labels_inputs = [n for n in plan.graph.inputs if is_labels(n)]
        # the scores the loss read in the last step, by output name (a batch's accuracy)
        self.last_scores: dict[str, np.ndarray] = {}
        self.steps_taken = 0
        self.seed = 0  # dropout masks: hash of (seed, step, layer, element)
        self.replicas: Replicas | None = None  # data-parallel group (set_replicas)
        # batch statistics averaged over this many replicas in the pass (sync_batch_norm; 1:
        # none): the running statistics computed from them agree already
        self.sync_bn_replicas = max((n.attrs["replicas"] for n in plan.graph.nodes()
                                     if n.op == "running_update"), default=1)
        self.input_gradient_model: TrainingModel | None = None
        # builds the same model differentiated with respect to its inputs too (input_gradient)
        self.compile_with_inputs: Callable[[], TrainingModel] | None = None
        self.set_params(params)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every parameter by name (copies, float32)."""
        self._sync_host()
        return {n: v.copy() for n, v in {**self._fixed, **self._views, **self._stats}.items()}

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Replace every parameter (checked by name and shape against the network)."""
        values = {k: np.asarray(v, np.float32) for k, v in values.items()}
        check_weights(self.graph, values)
        for node in self.graph.params():
            if node.attrs.get("init") == "literal":
                values[node.name] = np.asarray(node.attrs["value"], np.float32)
        for name, view in {**self._views, **self._stats}.items():
            view[...] = values[name]
        if not self.memory.host:
            self.memory.write(self.flat_state, self._host_state)
        self._host_stale = False
        self._fixed = {k: v.copy() for k, v in values.items()
                       if k not in self._views and k not in self._stats}
        self._refresh()

    def _refresh(self, changed: Sequence[str] | None = None) -> None:
        """The kernels' constants from the current parameters (``changed``: the names of
        those that changed since the last refresh; None: any)."""
        if changed is None or self.executor.reads_parameters(changed):
            self._sync_host()
        self.executor.set_params({**self._fixed, **self._views, **self._stats}, changed)

    def _sync_host(self) -> None:
        """The host's copy of the parameters and running statistics brought up to date (on a
        GPU target, after updates on the device)."""
        if self._host_stale:
            self._host_state[...] = self.memory.download(self.flat_state)
            self._host_stale = False

    def set_replicas(self, replicas: Replicas | None) -> None:
        """Train as one of ``replicas`` (None: alone): each step's gradients, loss and running
        statistics are averaged over the group before the update, so every replica, having
        started from the same parameters, takes the same step; a model compiled with
        ``sync_bn_replicas`` averages its batch statistics over them as it goes."""
        size = 1 if replicas is None else replicas.size
        if replicas is not None and not self.memory.host:
            raise TrainingError("data-parallel replicas average host arrays; this model's "
                                "kernels run on a GPU target (train replicas on the CPU)")
        if self.sync_bn_replicas > 1 and size != self.sync_bn_replicas:
            raise TrainingError(f"this model's batch norm is synchronized over "
                                f"{self.sync_bn_replicas} replicas, not {size}")
        self.replicas = replicas
        self.executor.set_replicas(replicas)

    def save_weights(self, path: str | Path) -> None:
        save_weights(self.params, path)

    def inference(self, **options: Any) -> Any:
        """A compiled inference model of the network with the trained weights (batch norm
        folded again at -O2); ``options`` as ``cnnc.compile`` takes them."""
        if self.compile_inference is None:
            raise TrainingError("this training model was built without an inference compiler")
        return self.compile_inference(self.graph, weights=self.params, **options)

    # -- running ------------------------------------------------------------------------------
    def _labels(self, y: Any) -> dict[str, np.ndarray]:
        """The labels inputs from ``y``: one array for the one loss, or with several terms a
        dict by output name (an array alone goes to every term that takes labels)."""
        names = self._labels_inputs
        if not isinstance(y, Mapping):
            return {name: self._host(y) for name in names}
        if names == [LABELS]:
            raise TrainingError("this training model has one loss: pass its labels as an array")
        by_output = {name[len(LABELS) + 1:]: name for name in names}
        unknown = sorted(set(y) - set(by_output))
        missing = sorted(set(by_output) - set(y))
        if unknown or missing:
            raise TrainingError(f"labels are needed for outputs {', '.join(by_output)}; got "
                                f"{', '.join(map(str, y)) or 'none'}")
        return {by_output[k]: self._host(v) for k, v in y.items()}

    def _host(self, a: Any) -> np.ndarray:
        """Labels as a host array (a GPU's array is downloaded: they are checked against the
        classes on the host, and are small beside the images)."""
        if not self.memory.host and self.memory.owns(a):
            return self.memory.download(a)
        return np.asarray(a)

    def _feed(self, x: Any, y: Any, first: int = 0) -> tuple[dict[int, np.ndarray], int]:
        inputs = dict(x) if isinstance(x, Mapping) else None
        names = [n for n in self.graph.inputs]
        if inputs is None:
            if len(names) != 1:
                raise TrainingError(f"network {self.graph.name!r} has inputs "
                                    f"{', '.join(names)}: pass a dict keyed by input name")
            inputs = {names[0]: x}
        if DROPOUT_SEED in self.plan.graph.inputs:
            # the hash takes the seed modulo 2^32 first: reduced here, so that no kernel takes
            # the remainder of a negative seed (C's % keeps its sign, Python's does not)
            inputs[DROPOUT_SEED] = np.array([self.seed % 2**32, self.steps_taken, first],
                                            np.int64)
        for name, labels in self._labels(y).items():
            if labels.dtype.kind not in "iuf":
                raise TrainingError(f"labels must be numbers, got an array of {labels.dtype}")
            inputs[name] = labels.astype(np.float32)
        n = check_inputs(self.plan.graph, inputs, dtypes=(np.float32,),
                         device=None if self.memory.host else self.memory.owns)
        for name in self._labels_inputs:
            try:
                check_labels_input(self.plan.graph, name, inputs[name])
            except ShapeError as e:
                raise TrainingError(f"{name}: {e}" if name != LABELS else str(e)) from None
        flat = {nid: flat_input(inputs[name]) for name, nid in self.plan.graph.inputs.items()}
        return flat, n

    def _run(self, x: Any, y: Any, after: Callable[[int, Any], bool] | None = None,
             first: int = 0, global_batch: int | None = None,
             each_call: Callable[[int, int, Callable[[], None]], None] | None = None) -> float:
        """One forward and backward pass: the gradients into ``flat_grads`` (the kernels write
        them there), averaged over the replicas if any, the loss back; a non-finite loss or
        gradient raises naming the first layer that produced one. ``after(index, arena)`` is
        called after each plan step (``profile_step``), ``each_call`` handed each kernel call
        (``Executor.run_watched``: ``profile_calls``). With replicas, ``x`` is images
        ``first`` on of a global batch of ``global_batch`` (default: ``x``'s times the
        replicas), which places this shard's dropout masks and weighs its gradients."""
        flat, n = self._feed(x, y, first)
        if after is None:
            arena = self.executor.run(flat, n)
        else:
            arena = self.executor.run_watched(flat, n, after, each_call)
        graph = self.plan.graph
        loss = float(self.executor.value(arena, flat, graph.outputs[LOSS]))
        self.last_scores = {k[len(OUTPUT):]: self.executor.value(arena, flat, v)
                            for k, v in graph.outputs.items() if k.startswith(OUTPUT)}
        self._grad_norm = self.optimizer.gradient_norm(self.flat_grads)
        finite = bool(np.isfinite(loss)) and math.isfinite(self._grad_norm)
        everywhere, own = finite, loss
        if self.replicas is not None:
            loss, everywhere = self._average_over_replicas(loss, finite, n, global_batch)
        if not finite and (self.replicas is None or self.sync_bn_replicas == 1):
            raise TrainingError(self._first_nonfinite(flat, n, own))
        if not finite:  # running the steps again here alone would wait for the others
            raise TrainingError(f"training step {self.steps_taken}: the loss is {own}, or a "
                                "gradient is not finite; lower the learning rate or check the "
                                "data")
        if not everywhere:
            raise TrainingError(f"training step {self.steps_taken}: another replica's loss or "
                                "gradients are not finite (its own message says where); "
                                "lower the learning rate or check the data")
        self._arena, self._flat = arena, flat
        return loss

    def _average_over_replicas(self, loss: float, finite: bool, n: int,
                               global_batch: int | None) -> tuple[float, bool]:
        """The gradients in ``flat_grads`` and the loss averaged over the replicas, each
        replica's weighted by ``n`` over its mean share of ``global_batch``: the loss is a mean
        over the batch, so the weighted mean of the shards' means is the whole batch's; with
        equal shards the weight is 1 and the gradients are averaged as they are. Returns the
        average loss and whether every replica's values were finite (if not, the gradients
        are left as they are: every replica stops)."""
        replicas = self.replicas
        assert replicas is not None
        weight = 1.0 if global_batch is None else n * replicas.size / global_batch
        scalars = np.array([loss * weight if finite else 0.0, 0.0 if finite else 1.0])
        replicas.average(scalars)
        if scalars[1] != 0.0:
            return math.nan, False
        if weight != 1.0:
            self.flat_grads *= np.float32(weight)
        replicas.average(self.flat_grads)
        self._grad_norm = self.optimizer.gradient_norm(self.flat_grads)
        return float(scalars[0]), True

    def _first_nonfinite(self, flat: dict[int, np.ndarray], n: int, loss: float) -> str:
        """Where a step went non-finite: run it again, step by step, to the first layer whose
        output holds NaN or Inf (as ``--check-numerics`` does for inference)."""
        found: list[str] = []

        def look(index: int, arena: Any) -> bool:
            step = self.plan.steps[index]
            if step.view or np.isfinite(self.executor.value(arena, flat, step.output)).all():
                return False
            where = node_location(self.plan.graph, self.plan.graph.node(step.output))
            at = f" at {where}" if where else ""
            found.append(f"layer {step.name} ({step.op}){at}")
            return True
        self.executor.run_watched(flat, n, look)
        where = found[0] if found else "a parameter's gradient"
        return (f"training step {self.steps_taken}: the loss is {loss}; the first non-finite "
                f"values come from {where}; lower the learning rate or check the data")

    def loss_and_grads(self, x: Any, y: Any) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on a batch and its gradient with respect to each trainable parameter (by
        name, the parameter's shape; host NumPy arrays on every target); the parameters are
        left as they are. On a GPU target ``x`` may be a CuPy array (read on the device), and
        ``y`` too (labels are downloaded: they are checked on the host)."""
        loss = self._run(x, y)
        grads = self.memory.download(self.flat_grads)  # on the host: the buffer itself
        return loss, {n: _at(grads, *self._offsets[n]).copy() for n in self.trainable}

    def train_step(self, x: Any, y: Any, lr: float | None = None, *, first: int = 0,
                   global_batch: int | None = None) -> float:
        """Forward, loss, backward and one optimizer update (and the running statistics the
        step computed written back); returns the loss before the update (with replicas: the
        global batch's, of ``global_batch`` images whose ``first`` on ``x`` is this replica's
        shard)."""
        loss = self._run(x, y, first=first, global_batch=global_batch)
        self._update(lr)
        self._refresh(self.updated)
        return loss

    def _update(self, lr: float | None) -> None:
        """After a pass: the running statistics it computed written back (averaged over the
        replicas), one optimizer update of the flat parameters (the kernels' constants are
        refreshed after)."""
        for name, nid in self.updates.items():  # where the kernels run: no round trip
            start, shape = self._stat_at[name]
            n = int(np.prod(shape))
            self.memory.copy(self.flat_state[start: start + n],
                             self._arena.value(self.plan, nid)[:n])
        if self.replicas is not None and self.updates and self.sync_bn_replicas == 1:
            self.replicas.average(self.flat_state[self.flat_params.size:])
        self.optimizer.update(self.flat_params, self.flat_grads, lr, norm=self._grad_norm)
        self._host_stale = not self.memory.host  # downloaded when read (_sync_host)
        self.steps_taken += 1

    def input_gradient(self, x: Any, y: Any) -> Any:
        """The gradient of the loss with respect to the network's input(s) (an array, or a
        dict by input name), the parameters as they are now; the first call compiles the
        network differentiated with respect to its inputs too."""
        if self.input_gradient_model is None:
            if self.compile_with_inputs is None:
                raise TrainingError("this training model was built without input gradients")
            self.input_gradient_model = self.compile_with_inputs()
        other = self.input_gradient_model
        other.set_params(self.params)
        other.seed, other.steps_taken = self.seed, self.steps_taken
        return other.gradients_of_inputs(x, y)

    def gradients_of_inputs(self, x: Any, y: Any) -> Any:
        """The ``grad:<input>`` outputs of a model compiled with input gradients."""
        self._run(x, y)
        names = list(self.graph.inputs)
        outputs = self.plan.graph.outputs
        missing = [n for n in names if f"grad:{n}" not in outputs]
        if missing:
            raise TrainingError(f"no input gradients in this model for {', '.join(missing)}")
        grads = {n: np.array(self.executor.value(self._arena, self._flat, outputs[f"grad:{n}"]))
                 for n in names}
        return grads[names[0]] if len(names) == 1 else grads

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """Everything a resumed run needs besides the data order: the parameters (under their
        names), the optimizer's buffers and step count, and the steps taken."""
        state = {f"param/{k}": v for k, v in self.params.items()}
        state.update({f"optimizer/{k}": v for k, v in self.optimizer.host_state().items()})
        state["optimizer_steps"] = np.array(self.optimizer.step_count)
        state["steps_taken"] = np.array(self.steps_taken)
        state["network"] = np.array(self.graph.name)
        return state

    def restore(self, state: Mapping[str, np.ndarray], source: str) -> None:
        """The inverse of :meth:`checkpoint_state` (a checkpoint of another network, or of
        another optimizer, is refused naming ``source``)."""
        if str(state.get("network", "")) != self.graph.name:
            raise TrainingError(f"{source}: a checkpoint of network "
                                f"{str(state.get('network', '?'))!r}, not {self.graph.name!r}")
        params = {k[len("param/"):]: v for k, v in state.items() if k.startswith("param/")}
        try:
            check_weights(self.graph, params, source)
        except WeightsError as e:
            raise TrainingError(str(e)) from None
        buffers = {k[len("optimizer/"):]: np.array(v, np.float32)
                   for k, v in state.items() if k.startswith("optimizer/")}
        for k, v in buffers.items():
            if v.shape != self.flat_params.shape:
                raise TrainingError(f"{source}: optimizer buffer {k} has {v.size} values, the "
                                    f"network {self.flat_params.size} trainable parameters")
        self.set_params(params)
        self.optimizer.set_state(buffers)
        self.optimizer.step_count = int(state["optimizer_steps"])
        self.steps_taken = int(state["steps_taken"])

    def profile_step(self, x: Any, y: Any, lr: float | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     each_call: Callable[[int, int, Callable[[], None]], None] | None = None
                     ) -> list[tuple[str, str, float]]:
        """One :meth:`train_step`, timed part by part: ``(name, what, seconds)`` for every plan
        step (``what`` its op, fused ops included), then ``gradients`` (reading the loss and
        the gradients' global norm: the finiteness check), ``optimizer`` (the running
        statistics written back, the update kernel) and ``refresh`` (packing the kernels'
        constants from the updated parameters). ``clock``: wall time, or ``time.thread_time``
        for the CPU seconds of a step run on one thread; ``each_call`` is handed every kernel
        call to run (``profile_calls``)."""
        steps = self.plan.steps
        marks = [0.0] * (len(steps) + 1)

        def mark(index: int, arena: Any) -> bool:
            marks[index + 1] = clock()
            return False

        marks[0] = clock()
        self._run(x, y, after=mark, each_call=each_call)
        gathered = clock()
        self._update(lr)
        updated = clock()
        self._refresh(self.updated)
        refreshed = clock()
        parts = [(s.name, s.op, marks[i + 1] - marks[i]) for i, s in enumerate(steps)]
        return parts + [("gradients", "gradients", gathered - marks[-1]),
                        ("optimizer", "optimizer", updated - gathered),
                        ("refresh", "refresh", refreshed - updated)]

    def profile_calls(self, x: Any, y: Any, lr: float | None = None,
                      clock: Callable[[], float] = time.perf_counter
                      ) -> list[tuple[str, str, str, float]]:
        """:meth:`profile_step` kernel call by kernel call: ``(name, what, kernel, seconds)``
        for every call of every plan step (a convolution's packing of its input, its compute
        kernel and the unpacking of its output apart), then the step's ``gradients``,
        ``optimizer`` and ``refresh`` as :meth:`profile_step` gives them."""
        times: list[tuple[str, str, str, float]] = []
        steps = self.plan.steps

        def timed(index: int, position: int, run: Callable[[], None]) -> None:
            start = clock()
            run()
            # the plan's names of the kernels; past them, the replicas' averaging
            names = [c.kernel for c in steps[index].calls] + ["allreduce"]
            times.append((steps[index].name, steps[index].op, names[position], clock() - start))

        parts = self.profile_step(x, y, lr, clock, each_call=timed)
        return times + [(name, what, what, seconds) for name, what, seconds in parts[-3:]]

    def __repr__(self) -> str:
        return (f"TrainingModel({self.graph.name!r}, loss={self.loss!r}, "
                f"optimizer={self.optimizer.kind!r}, {len(self.trainable)} trainable tensors, "
                f"{self.flat_params.size:,} parameters)")


def trainable_gradients(graph: Graph, training_graph: Graph,
                        frozen: Sequence[str]) -> dict[str, int]:
    """The gradient outputs of ``training_graph`` (``graph`` differentiated) that the optimizer
    reads, by parameter name in ``graph``'s order: the trainable parameters (not ``frozen``)
    that reach the loss."""
    outputs = gradient_outputs(training_graph)
    return {p.name: outputs[p.name] for p in trainable_params(graph, frozen)
            if p.name in outputs}


def _at(flat: np.ndarray, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """The view of ``flat`` holding a tensor of ``shape`` from float ``offset`` on."""
    return flat[offset: offset + int(np.prod(shape))].reshape(shape)


def compile_training(graph: Graph, params: Mapping[str, np.ndarray], *, target: Target,
                     loss: str | Sequence[Any] = "cross_entropy",
                     output: str | Sequence[str] | None = None,
                     loss_options: Mapping[str, Any] | None = None,
                     optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.0,
                     nesterov: bool = False, weight_decay: float = 0.0,
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                     clip_norm: float | None = None, label_smoothing: float = 0.0,
                     freeze: Sequence[str] = (), opt_level: int = 2,
                     cache_dir: str | Path | None = None, progress: Any = None,
                     lowering: str | Mapping[str, str] = "auto", layout: str = "auto",
                     dump_ir: str | Path | None = None, replace_dump: bool = False,
                     input_gradients: bool = False, sync_bn_replicas: int = 1,
                     compile_inference: Callable[..., Any] | None = None) -> TrainingModel:
    """The training model of ``graph`` (``cnnc.compile(..., mode="train")`` calls this).

    ``loss``: a loss's name over ``output`` with the loss op's ``loss_options`` (cross-entropy's
    ``label_smoothing`` may be given by itself), or a list of terms ``(output, loss[, weight[,
    options]])`` summed (``compiler.autodiff.attach_loss``). ``lowering`` and ``layout`` as
    ``cnnc.compile`` takes them; ``dump_ir``: a folder for the IR after each pass and the
    memory plan (``replace_dump``: an earlier dump there is replaced). ``sync_bn_replicas``:
    batch norm over the global batch of that many data-parallel replicas' equal shards
    (SyncBatchNorm; the model then needs them, ``set_replicas``)."""
    attrs = dict(loss_options or {})
    if label_smoothing:
        if loss != "cross_entropy":
            raise TrainingError("label_smoothing is an option of loss 'cross_entropy'; with "
                                "several terms give it in each term's options")
        attrs["label_smoothing"] = label_smoothing
    if target.cuda and sync_bn_replicas > 1:
        raise TrainingError(f"sync_bn_replicas needs data-parallel replicas, which average "
                            f"host arrays; target {target} runs its kernels on a GPU")
    try:
        opt = Optimizer(optimizer, lr, momentum, nesterov, weight_decay, tuple(betas), eps,
                        clip_norm, cache_dir=cache_dir)
        tg = attach_loss(graph, loss, output, **attrs)
        records = optimize(tg, opt_level, ctx=PassContext(
            training=True, target=target, lowering=lowering, layout=layout,
            frozen=tuple(freeze), input_gradients=input_gradients, replace_dump=replace_dump,
            sync_bn_replicas=sync_bn_replicas), dump_dir=dump_ir)
        grads = trainable_gradients(graph, tg, freeze)
        if not grads:
            raise TrainingError(f"nothing to train in network {graph.name!r}: no trainable "
                                "parameter reaches the loss (all frozen?)")
        backend = gather = None
        if target.cuda:  # one CUDA module: the optimizer's and gather kernels, the graph's
            # imported here, for start-up cost: a CPU target never loads the CUDA backend
            from ..compiler.backends.cuda.loader import CudaBackend

            backend = CudaBackend(Path(cache_dir) if cache_dir is not None else None,
                                  f"model_{graph.name}",
                                  device="gpu" if target.backend == "cuda" else "emulate")
            opt.load(backend)
            gather = BoundKernel(gather_kernel(), cache_dir, backend)
        plan = lower_graph(tg, cache_dir=cache_dir, progress=progress, backend=backend,
                           together=list(grads.values()))
        if dump_ir is not None:
            write_memory_plan(Path(dump_ir), len(records), plan.dump())
        opt.compile()
    except (GradientError, OptimizerError, LoweringError) as e:
        raise TrainingError(str(e)) from None
    model = TrainingModel(graph, plan, params, opt, loss, freeze, opt_level,
                          compile_inference=compile_inference, gather=gather)
    if not input_gradients:
        options = dict(target=target, loss=loss, output=output, loss_options=loss_options,
                       optimizer=optimizer, lr=lr,
                       momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                       betas=betas, eps=eps, clip_norm=clip_norm,
                       label_smoothing=label_smoothing, freeze=freeze, opt_level=opt_level,
                       cache_dir=cache_dir, lowering=lowering, layout=layout,
                       input_gradients=True, sync_bn_replicas=sync_bn_replicas)
        model.compile_with_inputs = lambda: compile_training(graph, params, **options)
    return model
