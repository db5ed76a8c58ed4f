"""Shared test settings: hypothesis profiles sized for a 2-core CI machine, and the default
compile target."""

import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" draws the same examples at every run (derandomized: a stop is never refused for an
# example no earlier run drew); "thorough" (CNNC_HYPOTHESIS_PROFILE=thorough) draws new ones
# each time, many more, and is how new cases are looked for.
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("CNNC_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _eight_lane_target_by_default(request, monkeypatch):
    """Compile at the 8-lane target ("cpu" means avx2 here), unless a test is marked
    ``host_target`` or names its target. The patched host query is the one every default asks
    when it is used (``resolve_target``: ``compile()``, ``PassContext()``, so the passes run
    alone and ``cnnc summary``/``show``), so it reaches them all (tests/compiler/test_target.py).

    Why: on an AVX-512 machine the 16-lane kernels take about twice as long to compile, and
    a cold CI cache compiles every zoo network's kernels. They compute the same numbers bit for
    bit (same FMAs, same order), which ``test_targets_agree_bitwise`` (whole networks, both
    targets) and the tile tests in ``tests/codegen/test_conv.py`` check directly.
    """
    if request.node.get_closest_marker("host_target"):
        return
    from cnnc.compiler import target

    monkeypatch.setattr(target, "host_target", lambda: target.TARGETS["avx2"])
