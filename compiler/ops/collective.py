"""Collective ops: values shared between the data-parallel replicas of a training run.

``allreduce_mean(v)`` is the mean of ``v`` over the replicas, each of which computes ``v`` on
its shard of the global batch (batch norm's statistics, synchronized: the
``sync_batch_norm`` pass). It is a whole-batch value (one per replica, not per image).

- Reference: one replica, so the mean of one value: ``v`` itself. Run alone, a graph with
  these ops computes what it computes without them.
- Gradient: each replica differentiates its own shard's loss L_r, and the replicas' parameter
  gradients are averaged afterwards (``runtime/train.py``), i.e. the replicas compute N times
  the gradient of the global loss L = mean_r L_r with respect to their own values. With
  y = mean_s v_s, dL/dv_r = (1/N) dL/dy = (1/N) mean_s dL_s/dy, so replica r's share is
  ``allreduce_mean(dy)``: the collective is its own gradient.
- Lowering: a copy of ``v`` into the op's own buffer (others still read ``v``), in a step
  marked ``collective``: the executor then averages that buffer over its replicas
  (``runtime/replicas.py``), or leaves it as it is when it has none.
"""

from __future__ import annotations

import numpy as np

from ..kernels.common import Sizes
from ..kernels.elementwise import elementwise_kernel
from ..types import TensorType
from . import OpDef, ShapeError, exact_bound, no_macs, register


def _allreduce_infer(in_types: list[TensorType], attrs) -> TensorType:
    (v,) = in_types
    if v.batched:
        raise ShapeError(f"allreduce_mean averages a whole-batch value over the replicas, got "
                         f"a batch of {v}")
    return v


def _allreduce_reference(inputs, attrs) -> np.ndarray:
    return np.array(inputs[0], np.float64)  # one replica: the mean of one value


def _allreduce_gradient(d):
    return [d.add("allreduce_mean", [d.dy], {})]


def _lower_allreduce(ctx, node):
    sz = Sizes()
    shape = ctx.out_shape
    k = elementwise_kernel(ctx.kname, "copy", shape, [shape], [], ctx.comment, sz, n_own=1)
    step = ctx.kernel_step(k, inputs=list(node.inputs), ints=sz.values)
    step.collective = True
    return step


register(OpDef(
    name="allreduce_mean", family="collective", signature=(), infer=_allreduce_infer,
    reference=_allreduce_reference, macs=no_macs, arity=1, pass_made=True,
    new_activations=False, gradient=_allreduce_gradient, lower=_lower_allreduce,
    error_bound=exact_bound(),
    doc="the mean of a whole-batch value over the data-parallel replicas (the value itself "
        "with none); its gradient is the same collective of the output's gradient"))
