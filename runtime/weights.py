"""Parameter values: deterministic initialization, and .npz save/load keyed by layer names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..compiler.ir import Graph

RELU_FAMILY = {"relu", "leaky_relu", "relu6", "hard_swish", "swish", "gelu"}


class WeightsError(Exception):
    """Weights that do not fit the network; the message lists every mismatch."""


def uses_relu(graph: Graph) -> bool:
    return any(n.op in RELU_FAMILY for n in graph.nodes())


def init_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 values for every parameter.

    Weights marked `auto` use He (Kaiming) normal initialization in networks with ReLU-like
    activations and Glorot (Xavier) uniform otherwise. Each parameter draws from its own
    generator seeded by (seed, name), so adding a layer does not change the others' values.
    """
    he = uses_relu(graph)
    values: dict[str, np.ndarray] = {}
    for node in graph.params():
        a = node.attrs
        shape = node.type.shape
        rng = np.random.default_rng([seed, _stable_hash(node.name)])
        init = a.get("init")
        if init == "literal":
            v = np.asarray(a["value"], np.float32)
        elif init == "ones":
            v = np.ones(shape, np.float32)
        elif init == "zeros":
            v = np.zeros(shape, np.float32)
        elif init == "auto":
            fan_in, fan_out = max(a.get("fan_in", 1), 1), max(a.get("fan_out", 1), 1)
            if he:
                v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                v = rng.uniform(-limit, limit, shape)
        else:
            raise ValueError(f"parameter {node.name}: unknown initializer {init!r}")
        values[node.name] = np.ascontiguousarray(v, dtype=np.float32)
    return values


def _stable_hash(name: str) -> int:
    h = 2166136261
    for ch in name.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def save_weights(values: dict[str, np.ndarray], path: str | Path) -> None:
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in values.items()})


def check_weights(graph: Graph, values: dict[str, np.ndarray], source: str = "weights") -> None:
    """Every parameter present with its shape, nothing unknown; reports all problems at once."""
    expected = {n.name: n.type.shape for n in graph.params()}
    problems = []
    for name, shape in expected.items():
        if name not in values:
            problems.append(f"missing {name} ({'x'.join(map(str, shape)) or 'scalar'})")
        elif tuple(np.shape(values[name])) != shape:
            problems.append(f"{name}: shape {'x'.join(map(str, np.shape(values[name])))}, "
                            f"expected {'x'.join(map(str, shape))}")
        elif not np.all(np.isfinite(values[name])):
            problems.append(f"{name}: contains NaN or infinity")
    for name in values:
        if name not in expected:
            problems.append(f"unknown parameter {name}")
    if problems:
        raise WeightsError(f"{source} do not fit network {graph.name!r} "
                           f"({len(problems)} problem{'s' * (len(problems) != 1)}):\n  "
                           + "\n  ".join(problems))


def load_weights(graph: Graph, path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            values = {k: np.asarray(data[k], np.float32) for k in data.files}
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot read weights from {path}: {e}") from None
    check_weights(graph, values, str(path))
    # Fixed (literal) weights come from the network definition, whatever the file says.
    for node in graph.params():
        if node.attrs.get("init") == "literal":
            values[node.name] = np.asarray(node.attrs["value"], np.float32)
    return values
