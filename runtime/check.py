"""`cnnc check`: every generated kernel against the float64 reference, node by node.

The optimized graph (the one the kernels compute) runs once through the reference interpreter
(float64) on random inputs. Then each step (one node with its fused epilogue, such as a
convolution with folded batch norm, residual add and ReLU) runs alone on the reference's values
of its inputs rounded to float32, and its output is compared with the float64 reference of the
same node evaluated on those same rounded inputs. So an error never
accumulates across layers: each row measures one kernel's own arithmetic.

Tolerance rule: a step passes when

    max |kernel - reference| <= tol * max(1, max |reference|)

with ``tol = 1e-4`` by default. A float32 kernel rounds each product and partial sum to 24
bits (relative 6e-8); over a sum of K terms the error bound grows like K * 6e-8 in the worst
case and like sqrt(K) * 6e-8 typically, so 1e-4 leaves headroom for K in the thousands
(ResNet's 3 x 3 x 512 = 4608-term sums measure around 1e-6) and catches every indexing bug,
which produces errors of the order of the values themselves. Values are scaled by
max(1, max |reference|) because the error of a sum is relative to its terms, not its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compiler.ops import evaluate
from .model import CompiledModel
from .model import compile as compile_model
from .reference import run_reference

DEFAULT_TOL = 1e-4


@dataclass
class CheckRow:
    name: str
    op: str
    shape: str
    lowering: str
    max_abs: float
    max_rel: float
    ok: bool


def check_model(model: CompiledModel, *, batch: int = 1, tol: float = DEFAULT_TOL,
                seed: int = 0) -> list[CheckRow]:
    """One row per step of ``model`` (see the module docstring)."""
    graph = model.plan.graph
    executor = model.executor
    rng = np.random.default_rng(seed)
    inputs = {name: rng.standard_normal((batch,) + graph.node(nid).type.shape)
              .astype(np.float32) for name, nid in graph.inputs.items()}
    ref = run_reference(graph, inputs, model.params, keep=True)
    consts = executor.parameter_values(model.params)
    arena = executor.arena(batch)
    rows = []
    for index, step in enumerate(model.steps):
        node = graph.node(step.node)
        shape = "x".join(map(str, node.type.shape))
        if step.view:
            rows.append(CheckRow(step.name, step.op, shape, "view", 0.0, 0.0, True))
            continue
        feeds: dict[int, np.ndarray] = {}
        buffers = model.plan.buffers
        for i in step.inputs:
            x32 = np.ascontiguousarray(ref[f"%{i}"], np.float32)
            buf = arena.value(model.plan, i)
            if buf is None:
                feeds[buffers.root(i)] = x32.reshape(-1)
            elif (buffers.storage.get(i) or buffers.storage.get(buffers.root(i))) is not None:
                (buffers.storage.get(i) or buffers.storage[buffers.root(i)]).store(x32, buf)
            else:
                buf[:] = x32.reshape(-1)
        executor.run_step(arena, index, feeds)
        args = [consts[i] if i in consts else
                np.asarray(ref[f"%{i}"], np.float32).astype(np.float64) for i in node.inputs]
        want = evaluate(node.op, args, node.attrs)
        flat = executor.output(arena, feeds, step.node)
        if step.storage is not None:
            flat = step.storage.load(flat, batch, node.type.shape)
        got = flat.reshape(want.shape).astype(np.float64)
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        ok = bool(np.isfinite(err) and err <= tol * max(1.0, scale))
        rows.append(CheckRow(step.name, step.op, shape, step.lowering, err,
                             err / scale if scale > 0 else err, ok))
    return rows


def format_rows(rows: list[CheckRow], tol: float) -> str:
    head = ("layer", "op", "shape", "lowering", "max abs err", "max rel err", "verdict")
    table = [head] + [(r.name, r.op, r.shape, r.lowering, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
                       "ok" if r.ok else "FAIL") for r in rows]
    widths = [min(max(len(t[i]) for t in table), 48) for i in range(len(head))]

    def fmt(t) -> str:
        cells = [c if len(c) <= w else c[: w - 3] + "..." for c, w in zip(t, widths)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(t) for t in table[1:]]
    failed = sum(not r.ok for r in rows)
    worst = max(rows, key=lambda r: r.max_rel, default=None)
    lines.append("")
    lines.append(f"{len(rows)} steps, {failed} failed (rule: max abs err <= {tol:g} x "
                 f"max(1, max |reference|))" +
                 (f"; worst relative error {worst.max_rel:.2e} at {worst.name}" if worst else ""))
    return "\n".join(lines)


def check(source: Any, *, batch: int = 1, tol: float = DEFAULT_TOL, lowering: Any = "auto",
          seed: int = 0, **compile_kw) -> tuple[CompiledModel, list[CheckRow]]:
    """Compile ``source`` and check every step; returns the model and the rows."""
    model = compile_model(source, lowering=lowering, seed=seed, **compile_kw)
    return model, check_model(model, batch=batch, tol=tol, seed=seed)
