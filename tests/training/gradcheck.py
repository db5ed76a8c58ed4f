"""Central finite differences of a training graph's loss, in float64 on the reference
interpreter: the independent check of every gradient rule."""

from __future__ import annotations

import numpy as np

from cnnc.compiler.autodiff import attach_loss, autodiff, gradient_outputs
from cnnc.compiler.ir import Graph
from cnnc.compiler.passes import PassContext
from cnnc.dsl.builder import load_network
from cnnc.runtime.reference import run_reference
from cnnc.runtime.weights import init_params


def net(shape: tuple[int, ...], body: str) -> str:
    """A one-chain network from input ``x`` of ``shape`` through ``body`` to output ``y``."""
    dims = " x ".join(map(str, shape))
    return f"network t\ninput x: {dims}\nx -> {body} -> output y\n"


def check(source: str, seed: int, batch: int = 2, loss: str = "mse") -> None:
    """``source`` trained on ``loss``: every gradient against finite differences."""
    rng = np.random.default_rng(seed)
    tg = training_graph(source, loss)
    feed, params = random_feed(tg, batch, rng)
    assert check_gradients(tg, feed, params, rng) > 0


def training_graph(source: str | Graph, loss: str = "mse", output: str | None = None,
                   **attrs) -> Graph:
    """The network with ``loss`` attached and differentiated with respect to its parameters
    and inputs."""
    graph = load_network(source) if isinstance(source, str) else source
    tg = attach_loss(graph, loss, output, **attrs)
    autodiff(tg, PassContext(training=True, input_gradients=True))
    tg.verify()
    return tg


def random_feed(graph: Graph, batch: int, rng: np.random.Generator, classes: int = 0):
    """Random inputs (and labels: class indices below ``classes``, else normal targets) and
    parameters (normal, positive running variances) for ``graph``, all float64."""
    feed = {}
    for name, nid in graph.inputs.items():
        t = graph.node(nid).type
        shape = (batch,) + t.shape
        if not t.batched:  # dropout_seed: [seed, step, first]
            feed[name] = rng.integers(0, 2 ** 31, t.shape)  # int64, as the kernels take it
        elif name == "labels" and classes:
            feed[name] = rng.integers(0, classes, shape).astype(np.float64)
        else:
            feed[name] = rng.standard_normal(shape)
    params = {k: rng.standard_normal(v.shape) for k, v in init_params(graph, 0).items()}
    for k in params:
        if k.endswith("running_var"):
            params[k] = rng.random(params[k].shape) + 0.5
    return feed, params


def check_gradients(tg: Graph, feed: dict, params: dict, rng: np.random.Generator,
                    samples: int = 6, step: float = 1e-6, rtol: float = 1e-6) -> int:
    """Compare every ``grad:<name>`` output with central differences at ``samples`` random
    entries (all of a small tensor); returns how many entries were checked."""
    out = run_reference(tg, feed, params)

    def loss(f: dict, p: dict) -> float:
        return float(run_reference(tg, f, p)["loss"])

    checked = 0
    scale = max(1e-3, max(float(np.abs(out[f"grad:{n}"]).max())
                          for n in gradient_outputs(tg)))
    for name in gradient_outputs(tg):
        grad = out[f"grad:{name}"]
        source = feed if name in feed else params
        value = source[name]
        assert grad.shape == value.shape, f"{name}: gradient {grad.shape} for {value.shape}"
        flat = rng.choice(value.size, min(samples, value.size), replace=False)
        for index in flat:
            idx = np.unravel_index(index, value.shape)
            plus, minus = value.copy(), value.copy()
            plus[idx] += step
            minus[idx] -= step
            fd = (loss({**feed, name: plus} if source is feed else feed,
                       {**params, name: plus} if source is params else params)
                  - loss({**feed, name: minus} if source is feed else feed,
                         {**params, name: minus} if source is params else params)) / (2 * step)
            # relative to the gradient's scale: an entry that is exactly 0 has no digits
            err = abs(fd - grad[idx]) / max(abs(fd), abs(grad[idx]), scale)
            assert err < rtol, (f"{name}{list(idx)}: autodiff {grad[idx]!r}, finite "
                                f"differences {fd!r} (relative error {err:.2e})")
            checked += 1
    return checked
