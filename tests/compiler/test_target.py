"""The compile target: "cpu" means this machine's CPU, decided in one place
(``compiler.target.resolve_target``, through ``host_target``), for compile(), the passes run
alone and the commands that only optimize (``cnnc summary``, ``cnnc show --after-passes``)."""

from __future__ import annotations

import pytest

from cnnc.compiler import target
from cnnc.compiler.passes import PassContext, optimize
from cnnc.compiler.target import TARGETS, Target, resolve_target
from cnnc.dsl.builder import load_network


@pytest.fixture
def probe(monkeypatch) -> Target:
    """A host of a kind no real target is: whatever reaches it asked the host query."""
    found = Target("probe", 16)
    monkeypatch.setattr(target, "host_target", lambda: found)
    return found


def test_cpu_resolves_through_the_host_query_everywhere(probe):
    assert resolve_target("cpu") is probe and resolve_target(None) is probe
    assert PassContext().target is probe
    # stride 2: the direct kernel (with its tile), not Winograd
    g = load_network("input x: 8 x 12 x 12\n"
                     "x -> conv(16, 3, pad=1, stride=2) -> relu -> output y\n")
    records = optimize(g, 2)  # what cnnc summary and cnnc show --after-passes run
    tiles = [n.attrs["tile"] for n in g.nodes() if "tile" in n.attrs]
    assert tiles and all(t.endswith("/16") for t in tiles)
    assert any("target probe:" in note for r in records for note in r.notes)


def test_named_targets_ignore_the_host(probe):
    assert PassContext(target=resolve_target("avx2")).target is TARGETS["avx2"]
    assert resolve_target("avx512") is TARGETS["avx512"]
    with pytest.raises(ValueError, match="unknown target 'sse'"):
        resolve_target("sse")


def test_tests_compile_for_eight_lanes_unless_marked():
    """The suite's fixture (tests/conftest.py) makes "cpu" mean avx2 for every consumer."""
    assert resolve_target("cpu") is TARGETS["avx2"] and PassContext().target is TARGETS["avx2"]


@pytest.mark.host_target
def test_marked_tests_get_this_machine():
    assert PassContext().target is target.host_target() is resolve_target("cpu")
