"""--autotune: each convolution's algorithms are timed once, the winner is cached on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnc.runtime.autotune import Autotuner
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

NET = """network tune
input x: 8 x 10 x 10
x -> conv(16, 3, pad=1) -> relu -> conv(8, 1) -> output y
"""


def test_measured_winner_is_used_and_cached(tmp_path, monkeypatch):
    m = compile_model(NET, cache_dir=tmp_path, autotune=True, seed=1)
    records = sorted((tmp_path / "autotune").glob("*.json"))
    assert len(records) == 2
    winners = {}
    for r in records:
        data = json.loads(r.read_text())
        assert set(data["seconds"]) == {"direct", "im2col"}
        assert data["winner"] == min(data["seconds"], key=data["seconds"].get)
        winners[tuple(data["shape"])] = data["winner"]
    chosen = {tuple(m.plan.graph.node(n.inputs[0]).type.shape): n.attrs["lowering"]
              for n in m.plan.graph.compute_nodes() if n.op == "conv"}
    assert chosen == winners
    x = np.random.default_rng(0).standard_normal((2, 8, 10, 10)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)

    def no_timing(*args):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(Autotuner, "_time", no_timing)
    again = compile_model(NET, cache_dir=tmp_path, autotune=True, seed=1)
    assert {n.attrs["lowering"] for n in again.plan.graph.compute_nodes() if n.op == "conv"} \
        == set(winners.values())


def test_explicit_lowering_wins_over_autotune(tmp_path, monkeypatch):
    monkeypatch.setattr(Autotuner, "_time", lambda *a: pytest.fail("should not measure"))
    m = compile_model(NET, cache_dir=tmp_path, autotune=True, lowering="im2col")
    assert {n.attrs["lowering"] for n in m.plan.graph.compute_nodes() if n.op == "conv"} == \
        {"im2col"}


def test_measures_and_keys_by_the_target_and_layout_the_model_runs(tmp_path):
    """Each candidate is compiled for the model's own target and layout (not the host's at
    -O0), and a winner measured for one target or layout is not reused for another."""
    seen = []

    def recording_compile(graph, **kwargs):
        seen.append((kwargs["target"], kwargs["layout"], kwargs["lowering"]))
        return compile_model(graph, **kwargs)

    graph = compile_model(NET, warm=False).graph
    conv = next(n for n in graph.compute_nodes() if n.op == "conv")
    shape = graph.node(conv.inputs[0]).type.shape
    tuner = Autotuner(recording_compile, "avx512", "NHWC", cache_dir=tmp_path, repeats=1)
    assert tuner(graph, conv, ("direct", "im2col")) in ("direct", "im2col")
    assert seen == [("avx512", "NHWC", "direct"), ("avx512", "NHWC", "im2col")]
    keys = {Autotuner(recording_compile, t, lay, cache_dir=tmp_path).key(conv, shape)
            for t in ("avx2", "avx512") for lay in ("auto", "NHWC")}
    assert len(keys) == 4
