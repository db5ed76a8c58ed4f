"""``--autotune``: time the candidate algorithms of a convolution once and remember the winner.

The lowering-selection pass asks ``measure(graph, node, candidates)`` for each convolution the
user left on ``auto``. Each candidate is compiled as a one-layer network (the same kernels a
model uses), run on random data at batch 1 and timed (median of a few runs after a warm-up);
the winner is stored under the kernel cache, keyed by the op, its attributes, the input shape,
the target and layout the model is compiled for (each candidate is measured compiled for them),
the CPU (LLVM's name and features) and the cnnc, Numba and llvmlite versions, so every later
compile of any model with that layer reuses it without measuring.

The autotuner is handed the compile function (``runtime.model.compile``) instead of importing
it: the model module builds autotuners, so the two never import each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.backends.numba import cache
from ..compiler.ir import Graph, Node
from ..compiler.ops import infer_node, own_attrs, own_input_count

__all__ = ["Autotuner"]


def _cpu() -> str:
    from llvmlite import binding

    return binding.get_host_cpu_name() + "|" + binding.get_host_cpu_features().flatten()


class Autotuner:
    """A ``PassContext.measure`` that caches its answers on disk."""

    def __init__(self, compile_model: Callable[..., Any], target: str, layout: str = "auto",
                 cache_dir: str | Path | None = None, repeats: int = 5) -> None:
        self.compile_model = compile_model
        self.target = str(target)  # a target name (``compiler.target.TARGETS``)
        self.layout = layout
        self.root = Path(cache_dir) if cache_dir is not None else cache.cache_root()
        self.repeats = repeats
        self.measured: dict[str, dict[str, float]] = {}  # this process, for reports

    def key(self, node: Node, in_shape: tuple[int, ...]) -> str:
        attrs = {k: v for k, v in own_attrs(node.attrs).items()}
        text = json.dumps([node.op, sorted((k, repr(v)) for k, v in attrs.items()),
                           list(in_shape), self.target, self.layout, _cpu(),
                           cache.cache_key("autotune")])
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
        self._save(path, {"op": node.op, "shape": list(in_shape), "seconds": times,
                          "winner": winner})
        return winner

    def _time(self, graph: Graph, node: Node, in_shape: tuple[int, ...],
              lowering: str) -> float:
        g = Graph(f"autotune_{node.op}", infer_node)
        x = g.add("input", [], {"shape": in_shape}, type=graph.node(node.inputs[0]).type,
                  name="x")
        g.inputs["x"] = x.id
        own = own_input_count(len(node.inputs), node.attrs)
        params = [g.add("param", [], {"init": "zeros", "trainable": True},
                        type=graph.node(i).type, name=f"p{k}").id
                  for k, i in enumerate(node.inputs[1:own])]
        y = g.add(node.op, [x.id, *params], own_attrs(node.attrs), name="layer")
        g.outputs["y"] = y.id
        rng = np.random.default_rng(0)
        weights = {g.node(p).name: rng.standard_normal(g.node(p).type.shape).astype(np.float32)
                   for p in params}
        m = self.compile_model(g, target=self.target, layout=self.layout, weights=weights,
                               lowering=lowering, cache_dir=self.root)
        xin = rng.standard_normal((1, *in_shape)).astype(np.float32)
        m(xin)
        runs = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            m(xin)
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

