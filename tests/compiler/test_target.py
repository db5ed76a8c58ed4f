"""The compile target: "cpu" means this machine's CPU, decided in one place
(``compiler.target.resolve_target``, through ``host_target``), for compile(), the passes run
alone and the commands that only optimize (``cnnc summary``, ``cnnc show --after-passes``)."""

from __future__ import annotations

import pytest

from cnnc.compiler import target
from cnnc.compiler.passes import PassContext, optimize
from cnnc.compiler.target import (
    CACHE_ENV,
    DEFAULT_CACHES,
    TARGETS,
    Caches,
    Target,
    detect_caches,
    parse_bytes,
    resolve_target,
    sysfs_caches,
)
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


def test_named_targets_ignore_the_host(probe, monkeypatch):
    for var in CACHE_ENV.values():
        monkeypatch.delenv(var, raising=False)
    assert PassContext(target=resolve_target("avx2")).target == TARGETS["avx2"]
    assert resolve_target("avx512") == TARGETS["avx512"]
    assert resolve_target("avx512").caches == DEFAULT_CACHES  # a kind, not this host
    with pytest.raises(ValueError, match="unknown target 'sse'"):
        resolve_target("sse")


def test_tests_compile_for_eight_lanes_unless_marked():
    """The suite's fixture (tests/conftest.py) makes "cpu" mean avx2 for every consumer."""
    assert resolve_target("cpu") is TARGETS["avx2"] and PassContext().target is TARGETS["avx2"]


@pytest.mark.host_target
def test_marked_tests_get_this_machine():
    assert PassContext().target == target.host_target() == resolve_target("cpu")


def _fake_sysfs(root, entries) -> None:
    """cpu0's cache folders: ``entries`` of (level, type, size text)."""
    for i, (level, kind, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")


def test_cache_sizes_from_sysfs_and_the_fallback(tmp_path, monkeypatch):
    """sysfs's data and unified caches by level (an instruction cache is not L1d); where
    ``os.sysconf`` answers 0 (as in VMs) each level comes from sysfs, and where neither
    knows it, from the documented defaults."""
    _fake_sysfs(tmp_path, [(1, "Data", "48K"), (1, "Instruction", "32K"),
                           (2, "Unified", "2048K"), (3, "Unified", "105M")])
    assert sysfs_caches(tmp_path) == {"l1d": 48 << 10, "l2": 2 << 20, "l3": 105 << 20}
    monkeypatch.setattr(target.os, "sysconf", lambda name: 0)
    found = detect_caches(tmp_path)
    assert (found.l1d, found.l2, found.l3, found.source) == (48 << 10, 2 << 20, 105 << 20,
                                                             "sysfs")
    assert str(found) == "L1d 48 KiB, L2 2 MiB, L3 105 MiB"
    assert detect_caches(tmp_path / "absent") == DEFAULT_CACHES
    sizes = {"SC_LEVEL1_DCACHE_SIZE": 32 << 10, "SC_LEVEL2_CACHE_SIZE": 512 << 10,
             "SC_LEVEL3_CACHE_SIZE": 0}
    monkeypatch.setattr(target.os, "sysconf", sizes.__getitem__)
    found = detect_caches(tmp_path)  # sysconf first, sysfs for the level it does not know
    assert (found.l1d, found.l2, found.l3) == (32 << 10, 512 << 10, 105 << 20)


def test_cache_sizes_from_the_environment(monkeypatch):
    """``CNNC_L2_BYTES`` (and its L1d and L3 siblings) override a named target's caches and
    the host's; the target's repr, which the compile cache hashes, changes with them."""
    for var in CACHE_ENV.values():
        monkeypatch.delenv(var, raising=False)
    plain = resolve_target("avx512")
    monkeypatch.setenv("CNNC_L2_BYTES", "512K")
    faked = resolve_target("avx512")
    assert faked.caches == Caches(DEFAULT_CACHES.l1d, 512 << 10, DEFAULT_CACHES.l3)
    assert repr(faked) != repr(plain) and faked != plain
    assert target.host_caches().l2 == 512 << 10
    assert resolve_target("cuda") == TARGETS["cuda"]  # a GPU's plans do not depend on them
    assert parse_bytes("2M") == 2 << 20 and parse_bytes("1048576") == 1 << 20
    monkeypatch.setenv("CNNC_L2_BYTES", "lots")
    with pytest.raises(ValueError, match="CNNC_L2_BYTES must be a positive number of bytes"):
        resolve_target("avx512")
