"""--autotune: each convolution's algorithms are timed once, as the model will run them (its
target, optimization level and layout), and the winner is cached on disk under those."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnc.compiler.target import TARGETS
from cnnc.dsl.builder import load_network
from cnnc.runtime.autotune import Autotuner
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

# 4 input channels: Winograd takes 8 or more, so each layer has two candidates to time (that
# Winograd's are offered is tests/codegen/test_winograd.py's)
NET = """network tune
input x: 4 x 10 x 10
x -> conv(16, 3, pad=1) -> relu -> conv(8, 1) -> output y
"""


def records(folder) -> list[dict]:
    return [json.loads(r.read_text()) for r in sorted((folder / "autotune").glob("*.json"))]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """One kernel cache for this module's compiles (the autotuner keeps its records in the
    cache it is given: each test that counts them has its own)."""
    return tmp_path_factory.mktemp("kernels")


def test_measured_winner_is_used_and_cached_per_target_and_layout(kernels, monkeypatch):
    m = compile_model(NET, cache_dir=kernels, autotune=True, seed=1)
    saved = records(kernels)
    assert len(saved) == 2
    winners = {}
    for data in saved:
        assert set(data["seconds"]) == {"direct", "im2col"}
        assert data["winner"] == min(data["seconds"], key=data["seconds"].get)
        assert (data["target"], data["layout"], data["opt_level"]) == ("avx2", "auto", 2)
        winners[tuple(data["shape"])] = data["winner"]
    chosen = {tuple(m.plan.graph.node(n.inputs[0]).type.shape): n.attrs["lowering"]
              for n in m.plan.graph.compute_nodes() if n.op == "conv"}
    assert chosen == winners
    x = np.random.default_rng(0).standard_normal((2, 4, 10, 10)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)

    # Another layout runs other kernels: measured again, under its own key.
    compile_model(NET, cache_dir=kernels, autotune=True, seed=1, layout="NCHW")
    saved = records(kernels)
    assert sorted(d["layout"] for d in saved) == ["NCHW", "NCHW", "auto", "auto"]

    measured = []
    monkeypatch.setattr(Autotuner, "_time", lambda tuner, graph, node, shape, lowering:
                        measured.append((tuner.target.name, lowering)) or 1.0)
    again = compile_model(NET, cache_dir=kernels, autotune=True, seed=1, warm=False)
    assert measured == []
    assert {n.attrs["lowering"] for n in again.plan.graph.compute_nodes() if n.op == "conv"} \
        == set(winners.values())
    # ... and another target is measured anew (here not really: 16-lane kernels compile slowly)
    compile_model(NET, cache_dir=kernels, autotune=True, seed=1, target="avx512", warm=False)
    assert measured == [("avx512", "direct"), ("avx512", "im2col")] * 2


def test_candidates_run_as_the_model_will(kernels, tmp_path):
    """The one-layer networks are compiled for the model's target, level and layout, and the
    layer keeps the storage layout selection gives it in a model (blocked, for direct)."""
    asked = []

    def compile_and_record(graph, **options):
        m = compile_model(graph, **dict(options, cache_dir=kernels))
        layer = next(n for n in m.plan.graph.nodes() if n.name == "layer")
        asked.append((options["lowering"], options["target"], options["layout"],
                      options["opt_level"], layer.attrs.get("layout")))
        return m

    graph = load_network(NET)
    conv = next(n for n in graph.compute_nodes() if n.op == "conv")
    tuner = Autotuner(compile_and_record, TARGETS["avx2"], layout="auto", opt_level=2,
                      cache_dir=tmp_path, repeats=1)
    assert tuner(graph, conv, ("direct", "im2col")) in ("direct", "im2col")
    assert asked == [("direct", TARGETS["avx2"], "auto", 2, "NCHW8c"),
                     ("im2col", TARGETS["avx2"], "auto", 2, None)]


def test_the_cache_key_names_target_level_and_layout():
    graph = load_network(NET)
    conv = next(n for n in graph.compute_nodes() if n.op == "conv")
    shape = graph.node(conv.inputs[0]).type.shape
    keys = {Autotuner(compile_model, TARGETS[t], layout=layout, opt_level=level).key(conv, shape)
            for t in ("avx2", "avx512") for layout in ("auto", "NCHW16c") for level in (0, 2)}
    assert len(keys) == 8


def test_explicit_lowering_wins_over_autotune(kernels, monkeypatch):
    monkeypatch.setattr(Autotuner, "_time", lambda *a: pytest.fail("should not measure"))
    m = compile_model(NET, cache_dir=kernels, autotune=True, lowering="im2col")
    assert {n.attrs["lowering"] for n in m.plan.graph.compute_nodes() if n.op == "conv"} == \
        {"im2col"}
