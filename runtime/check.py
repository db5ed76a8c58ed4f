"""`cnnc check`: every generated kernel against the float64 reference, node by node.

The optimized graph (the one the kernels compute) runs once through the reference interpreter
(float64) on random inputs. Then each step (one node with its fused epilogue, such as a
convolution with folded batch norm, residual add and ReLU) runs alone on the reference's values
of its inputs rounded to float32, and its output is compared with the float64 reference of the
same node evaluated on those same rounded inputs. So an error never accumulates across layers:
each row measures one kernel's own arithmetic.

``check_plan`` does the same for any lowered plan on given inputs: a training graph's forward,
loss, backward and running-statistics steps alike (its whole-batch values, such as a loss, a
parameter's gradient or the int64 dropout seed, fed and compared like any other).

Tolerance rule: a step passes when, at every output element,

    |kernel - reference| <= tol * bound        (tol = 1 by default)

where ``bound`` is what float32 arithmetic can explain for that element: each op's
``error_bound`` rule (``compiler/ops``, beside the op) evaluated on the same inputs, carried
through the node's fused epilogue (``ops.evaluate_bound``). For a sum of K products
(convolution: K = C/groups x R x S, from the op's ``macs`` accounting) the bound is
(K + 2) x 2^-24 x sum |terms|, with sum |terms| the op's reference on |inputs| and |weights|;
activations add their own ulps (exp, tanh, erf) and scale an incoming error by their
Lipschitz constant; selections (max pooling, concat) are exact. Errors below the smallest
normal float32 never count. The bound is a worst case (errors usually grow like sqrt(K), not
K), so a correct kernel stays far below it, while an indexing bug, off by about the values
themselves, is caught at any scale: the old rule (1e-4 x max(1, max |reference|)) let a layer
whose outputs are around 1e-5 be wrong by 100%. Each row reports its error as a fraction of the
bound (the largest over the output's elements).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compiler.ops import ERROR_FLOOR, evaluate_bound, node_macs
from ..compiler.plan import Plan
from ..compiler.types import TensorType
from .executor import Executor
from .model import CompiledModel
from .model import compile as compile_model
from .reference import check_inputs, run_reference

DEFAULT_TOL = 1.0


@dataclass
class CheckRow:
    name: str
    op: str
    shape: str
    lowering: str
    max_abs: float  # the largest |kernel - reference| over the output
    fraction: float  # the largest |kernel - reference| / bound over the output
    ok: bool


def check_model(model: CompiledModel, *, batch: int = 1, tol: float = DEFAULT_TOL,
                seed: int = 0) -> list[CheckRow]:
    """One row per step of ``model`` on random inputs (see the module docstring)."""
    graph = model.plan.graph
    rng = np.random.default_rng(seed)
    inputs = {name: rng.standard_normal((batch,) + graph.node(nid).type.shape)
              .astype(np.float32) for name, nid in graph.inputs.items()}
    return check_plan(model.plan, model.executor, model.params, inputs, tol=tol)


def kernel_value(t: TensorType, value: np.ndarray) -> np.ndarray:
    """A value as a kernel reads it: float32, or int64 for an integer input (the seed)."""
    return np.ascontiguousarray(value, np.int64 if t.dtype == "int64" else np.float32)


def check_plan(plan: Plan, executor: Executor, params: Mapping[str, np.ndarray],
               inputs: Mapping[str, np.ndarray], *, tol: float = DEFAULT_TOL) -> list[CheckRow]:
    """One row per step of a lowered ``plan`` bound to ``executor`` (its parameters set to
    ``params``) on ``inputs`` by name: an inference model's, or a training graph's forward,
    loss, backward and running-statistics steps, whose whole-batch values (a loss, a gradient
    of a parameter, batch statistics; the int64 dropout seed among the inputs) are fed and
    compared like any other (see the module docstring)."""
    graph = plan.graph
    batch = check_inputs(graph, inputs)
    ref = run_reference(graph, inputs, params, keep=True)
    consts = executor.parameter_values(params)
    arena = executor.arena(batch)
    rows = []
    for index, step in enumerate(plan.steps):
        node = graph.node(step.node)
        shape = "x".join(map(str, node.type.shape))
        if step.view:
            rows.append(CheckRow(step.name, step.op, shape, "view", 0.0, 0.0, True))
            continue
        feeds: dict[int, np.ndarray] = {}
        for i in step.inputs:
            x32 = kernel_value(graph.node(i).type, ref[f"%{i}"])
            if arena.value(plan, i) is None:  # a graph input: the caller's array
                feeds[plan.buffers.root(i)] = x32.reshape(-1)
            else:
                executor.store(arena, i, x32)
        executor.run_step(arena, index, feeds)
        args = [np.asarray(consts[i], np.float64) if i in consts else
                kernel_value(graph.node(i).type, ref[f"%{i}"]).astype(np.float64)
                for i in node.inputs]
        terms = node_macs(graph, node) / max(1, node.type.size)
        want, bound = evaluate_bound(node.op, args, node.attrs, terms)
        got = executor.value(arena, feeds, step.node).reshape(want.shape).astype(np.float64)
        diff = np.abs(got - want)
        err = float(np.max(diff)) if want.size else 0.0
        fraction = float(np.max(diff / (bound + ERROR_FLOOR))) if want.size else 0.0
        ok = bool(np.isfinite(fraction) and fraction <= tol)
        rows.append(CheckRow(step.name, step.op, shape, step.lowering, err, fraction, ok))
    return rows


def format_rows(rows: list[CheckRow], tol: float) -> str:
    head = ("layer", "op", "shape", "lowering", "max abs err", "of bound", "verdict")
    table = [head] + [(r.name, r.op, r.shape, r.lowering, f"{r.max_abs:.2e}",
                       f"{r.fraction:.3f}" if r.fraction < 1e3 else f"{r.fraction:.2e}",
                       "ok" if r.ok else "FAIL") for r in rows]
    widths = [min(max(len(t[i]) for t in table), 48) for i in range(len(head))]

    def fmt(t) -> str:
        cells = [c if len(c) <= w else c[: w - 3] + "..." for c, w in zip(t, widths)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(t) for t in table[1:]]
    failed = sum(not r.ok for r in rows)
    worst = worst_row(rows)
    lines.append("")
    lines.append(f"{len(rows)} steps, {failed} failed (rule: |err| <= {tol:g} x the float32 "
                 f"error bound of each element)" +
                 (f"; worst {worst.fraction:.3g} of its bound at {worst.name}" if worst else ""))
    return "\n".join(lines)


def worst_row(rows: list[CheckRow]) -> CheckRow | None:
    """The row closest to (or furthest past) its bound; a NaN error counts as the worst."""
    return max(rows, key=lambda r: r.fraction if np.isfinite(r.fraction) else np.inf,
               default=None)


def check(source: Any, *, batch: int = 1, tol: float = DEFAULT_TOL, lowering: Any = "auto",
          seed: int = 0, **compile_kw) -> tuple[CompiledModel, list[CheckRow]]:
    """Compile ``source`` and check every step; returns the model and the rows."""
    model = compile_model(source, lowering=lowering, seed=seed, **compile_kw)
    return model, check_model(model, batch=batch, tol=tol, seed=seed)
