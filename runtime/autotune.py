"""``--autotune``: time the candidate algorithms of a convolution once and remember the winner.

The lowering-selection pass asks ``measure(graph, node, candidates)`` for each convolution the
user left on ``auto``. Each candidate is compiled as a one-layer network by the compile function
the tuner is given, as the model is: for its target, at its optimization level and layout (a
global pool reads the layer, so its output stays in the storage layout selection gives it, as
between the layers of a model). The layer's steps alone are run on random data at batch 1 and
timed (median of a few runs after a warm-up; the pack of the network's input into blocked
storage is the layer's own step, as for the first layer of a blocked region). The winner is
stored under the kernel cache, keyed by the op, its attributes, the input shape, the target
(its caches too: the tiles the candidates run depend on them), the optimization level and
layout, the CPU (LLVM's name and features) and the cnnc, Numba and llvmlite versions, so
every later compile of a model with that layer and those options reuses it without
measuring.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from llvmlite import binding

from ..compiler.backends.numba import cache
from ..compiler.ir import Graph, Node
from ..compiler.ops import infer_node, own_attrs, own_input_count
from ..compiler.target import Target

__all__ = ["Autotuner", "CompileFunction"]


class CompileFunction(Protocol):
    """``runtime.model.compile``'s signature, as far as the tuner calls it; the model returned
    has ``plan`` and ``executor`` (a ``CompiledModel``)."""

    def __call__(self, source: Graph, /, *, weights: dict[str, np.ndarray], lowering: str,
                 target: Target, layout: str, opt_level: int, cache_dir: Path) -> Any: ...


def _cpu() -> str:
    return binding.get_host_cpu_name() + "|" + binding.get_host_cpu_features().flatten()


class Autotuner:
    """A ``PassContext.measure`` that caches its answers on disk.

    ``compile_fn`` compiles the one-layer networks it times; ``target``, ``layout`` and
    ``opt_level`` are the model's, so each candidate runs as it will in the model."""

    def __init__(self, compile_fn: CompileFunction, target: Target, *, layout: str = "auto",
                 opt_level: int = 2, cache_dir: str | Path | None = None,
                 repeats: int = 5) -> None:
        self.compile_fn = compile_fn
        self.target = target
        self.layout = layout
        self.opt_level = opt_level
        self.root = Path(cache_dir) if cache_dir is not None else cache.cache_root()
        self.repeats = repeats
        self.measured: dict[str, dict[str, float]] = {}  # this process, for reports

    def key(self, node: Node, in_shape: tuple[int, ...]) -> str:
        attrs = own_attrs(node.attrs)
        text = json.dumps([node.op, sorted((k, repr(v)) for k, v in attrs.items()),
                           list(in_shape), repr(self.target), self.layout, self.opt_level,
                           _cpu(), cache.cache_key("autotune")])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def __call__(self, graph: Graph, node: Node, candidates: tuple[str, ...]) -> str:
        in_shape = graph.node(node.inputs[0]).type.shape
        path = self.root / "autotune" / f"{self.key(node, in_shape)}.json"
        try:
            saved = json.loads(path.read_text())
            if saved.get("winner") in candidates:
                return saved["winner"]
        except (OSError, ValueError):
            pass
        times = {c: self._time(graph, node, in_shape, c) for c in candidates}
        winner = min(times, key=times.get)
        self.measured[node.name] = times
        self._save(path, {"op": node.op, "shape": list(in_shape), "target": self.target.name,
                          "layout": self.layout, "opt_level": self.opt_level,
                          "seconds": times, "winner": winner})
        return winner

    def _time(self, graph: Graph, node: Node, in_shape: tuple[int, ...],
              lowering: str) -> float:
        """Seconds of the layer's steps with ``lowering`` (the median of ``repeats`` runs)."""
        g = Graph(f"autotune_{node.op}", infer_node)
        x = g.add("input", [], {"shape": in_shape}, type=graph.node(node.inputs[0]).type,
                  name="x")
        g.inputs["x"] = x.id
        own = own_input_count(len(node.inputs), node.attrs)
        params = [g.add("param", [], {"init": "zeros", "trainable": True},
                        type=graph.node(i).type, name=f"p{k}").id
                  for k, i in enumerate(node.inputs[1:own])]
        y = g.add(node.op, [x.id, *params], own_attrs(node.attrs), name="layer")
        # A reader that takes every storage layout, so the layer's output stays in the one
        # layout selection gives it inside a model (a graph output is always plain).
        g.outputs["pool"] = g.add("globalavgpool", [y.id], {}, name="pool").id
        rng = np.random.default_rng(0)
        weights = {g.node(p).name: rng.standard_normal(g.node(p).type.shape).astype(np.float32)
                   for p in params}
        m = self.compile_fn(g, weights=weights, lowering=lowering, target=self.target,
                            layout=self.layout, opt_level=self.opt_level, cache_dir=self.root)
        plan = m.plan
        inputs = {plan.graph.inputs["x"]: rng.standard_normal(in_shape).astype(np.float32)
                  .reshape(-1)}
        layer = [i for i, step in enumerate(plan.steps)
                 if step.output not in plan.graph.outputs.values()]
        arena = m.executor.run(inputs, 1)  # every kernel loaded, the arena bound
        runs = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            for i in layer:
                m.executor.run_step(arena, i, inputs)
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    @staticmethod
    def _save(path: Path, record: dict[str, Any]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only means measuring again next time
