"""The compile cache (``runtime/compile_cache.py``): a second compile of a program reads its
optimized graph and its seeded parameters with the packed constants back, and computes the
same numbers as the first (and as the float64 reference); every change of what a value depends
on is another key; a damaged, truncated or foreign entry is removed with a warning and
rebuilt; two processes writing one entry leave a whole one.

LeNet-5 from the zoo, in the kernel variants the rest of the suite compiles; the entries go to
a folder of each test's own (the kernels stay in the suite's cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from cnnc.compiler.plan import Arg
from cnnc.compiler.target import TARGETS
from cnnc.runtime import compile_cache
from cnnc.runtime import model as model_module
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

X = np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """The compile cache in a folder of this test's own; LeNet-5 (61,706 parameters) keeps
    its constants too."""
    monkeypatch.setattr(compile_cache, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(compile_cache, "MIN_FLOATS", 0)
    return tmp_path


def entries(root, kind: str) -> list:
    folder = root / kind
    return sorted(folder.glob("*.bin")) if folder.exists() else []


def no_host_work(monkeypatch) -> None:
    """Fail the test if the compile parses, optimizes, initializes or packs."""
    def fail(*args, **kwargs):
        pytest.fail("a cache hit redid host work")
    for name in ("_load_graph", "optimize", "init_params"):
        monkeypatch.setattr(model_module, name, fail)
    monkeypatch.setattr(model_module.Executor, "set_params", fail)


def test_a_hit_skips_the_host_work_and_computes_the_same_numbers(root, monkeypatch):
    first = compile_model("lenet5", seed=3)
    assert len(entries(root, "frontend")) == len(entries(root, "constants")) == 1
    with monkeypatch.context() as m:
        no_host_work(m)
        second = compile_model("lenet5", seed=3)
    y = second(X)
    assert np.array_equal(y, first(X))
    # the parameters are made from the seed when asked for
    assert second.params.keys() == first.params.keys()
    assert all(np.array_equal(second.params[k], first.params[k]) for k in first.params)
    assert not any(v.flags.writeable for v in second.params.values())
    second.save_weights(root / "w.npz")
    with np.load(root / "w.npz") as saved:
        assert all(np.array_equal(saved[k], first.params[k]) for k in first.params)
    ref = run_reference(first.graph, {"image": X.astype(np.float64)}, first.params)
    np.testing.assert_allclose(y, next(iter(ref.values())), rtol=1e-4, atol=1e-6)
    # the decisions stay there to look at
    assert second.plan.graph.dump() == first.plan.graph.dump()
    assert [r.name for r in second.passes] == [r.name for r in first.passes]
    # and new parameters are packed as without the cache
    new = {k: v * 0.5 for k, v in first.params.items()}
    second.set_params(new)
    first.set_params(new)
    assert np.array_equal(second(X), first(X))


def test_another_seed_is_another_entry_with_its_own_values(root):
    a = compile_model("lenet5", seed=3)
    b = compile_model("lenet5", seed=4)
    assert len(entries(root, "constants")) == 2 and len(entries(root, "frontend")) == 1
    assert not np.array_equal(a(X), b(X))
    again = compile_model("lenet5", seed=4)
    assert np.array_equal(again(X), b(X))


def test_given_weights_are_an_entry_of_their_values(root, monkeypatch):
    first = compile_model("lenet5", seed=3, warm=False)
    doubled = {k: 2 * v for k, v in first.params.items()}
    before = entries(root, "constants")
    m = compile_model("lenet5", weights=doubled)
    assert len(entries(root, "constants")) == len(before) + 1
    ref = run_reference(m.graph, {"image": X.astype(np.float64)}, doubled)
    np.testing.assert_allclose(m(X), next(iter(ref.values())), rtol=1e-4, atol=1e-6)
    # the same values again, as a copy or from an .npz: a hit, nothing packed
    np.savez(root / "doubled.npz", **doubled)
    with monkeypatch.context() as mp:
        no_host_work(mp)
        again = compile_model("lenet5", weights={k: v.copy() for k, v in doubled.items()})
        from_file = compile_model("lenet5", weights=root / "doubled.npz")
    assert np.array_equal(again(X), m(X)) and np.array_equal(from_file(X), m(X))
    assert all(np.array_equal(again.params[k], doubled[k]) for k in doubled)
    # one value changed: another entry, and its own numbers
    changed = {k: v.copy() for k, v in doubled.items()}
    name = next(iter(changed))
    changed[name].flat[0] += 0.25
    other = compile_model("lenet5", weights=changed)
    assert len(entries(root, "constants")) == len(before) + 2
    ref = run_reference(m.graph, {"image": X.astype(np.float64)}, changed)
    np.testing.assert_allclose(other(X), next(iter(ref.values())), rtol=1e-4, atol=1e-6)
    assert not np.array_equal(other(X), m(X))


def test_a_weights_digest_changes_with_every_name_shape_and_value():
    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    digest = compile_cache.weights_digest(w)
    assert compile_cache.weights_digest({k: v.astype(np.float64) for k, v in w.items()}) == digest
    assert compile_cache.weights_digest({"c": w["a"], "b": w["b"]}) != digest
    assert compile_cache.weights_digest({**w, "a": w["a"].reshape(3, 2)}) != digest
    flipped = w["a"].copy()
    flipped.view(np.uint32).flat[5] ^= 1  # the lowest bit of one value
    assert compile_cache.weights_digest({**w, "a": flipped}) != digest
    assert compile_cache.weights_digest(dict(reversed(list(w.items())))) == digest


def test_an_onnx_files_front_end_and_constants_are_keyed_by_its_bytes(root, monkeypatch):
    pytest.importorskip("onnx")
    from cnnc.runtime.onnx import export_onnx

    declared = compile_model("lenet5", seed=3, warm=False)
    path = root / "lenet5.onnx"
    export_onnx(declared.graph, declared.params, path)
    first = compile_model(str(path))
    assert len(entries(root, "frontend")) == 2 and len(entries(root, "constants")) == 2
    ref = run_reference(declared.graph, {"image": X.astype(np.float64)}, declared.params)
    np.testing.assert_allclose(first(X), next(iter(ref.values())), rtol=1e-4, atol=1e-6)
    with monkeypatch.context() as m:
        no_host_work(m)
        m.setattr(model_module, "_onnx_weights",
                  lambda *a: pytest.fail("a cache hit read the ONNX file's weights"))
        second = compile_model(str(path))
    assert np.array_equal(second(X), first(X))
    # its weights are read from the file when asked for
    assert all(np.array_equal(second.params[k], first.params[k]) for k in first.params)
    third = compile_model(str(path))
    # other weights in the file: other bytes, another entry of each kind, their numbers
    halved = {k: v * 0.5 for k, v in declared.params.items()}
    export_onnx(declared.graph, halved, path)
    with pytest.raises(model_module.ModelError, match="has changed since"):
        _ = third.params
    other = compile_model(str(path))
    assert len(entries(root, "frontend")) == 3 and len(entries(root, "constants")) == 3
    ref = run_reference(declared.graph, {"image": X.astype(np.float64)}, halved)
    np.testing.assert_allclose(other(X), next(iter(ref.values())), rtol=1e-4, atol=1e-6)
    # given weights take the place of the file's, keyed by their values
    given = compile_model(str(path), weights=declared.params)
    assert np.array_equal(given(X), first(X))


def test_an_onnx_file_with_external_data_keeps_no_front_end_entry():
    assert compile_cache.onnx_text(b"\x08\x07 plain model bytes") is not None
    assert compile_cache.onnx_text(b"...\x12\x08location\x1a\x0cweights.data...") is None


def test_a_program_that_imports_files_keeps_no_front_end_entry(root, tmp_path):
    (tmp_path / "lib.cnn").write_text("block pair(c) {\n    return in -> conv(c, 3) -> relu\n}\n")
    program = tmp_path / "main.cnn"
    program.write_text('import "lib.cnn"\ninput x: 3 x 8 x 8\nx -> pair(4) -> output y\n')
    assert not compile_cache.frontend_cacheable(program.read_text())
    compile_model(str(program), warm=False)
    assert entries(root, "frontend") == []


def test_every_input_of_a_front_end_key_changes_it(monkeypatch):
    base = dict(text="x", file="<string>", target=TARGETS["avx2"], opt_level=2,
                lowering="auto", layout="auto")
    key = compile_cache.frontend_key(**base)
    other_l2 = replace(TARGETS["avx2"], caches=replace(TARGETS["avx2"].caches, l2=512 << 10))
    changes = [("text", "y"), ("file", "a.cnn"), ("target", TARGETS["avx512"]),
               ("target", other_l2),
               ("opt_level", 1), ("lowering", "direct"), ("lowering", {"c1": "im2col"}),
               ("layout", "NCHW")]
    for name, value in changes:
        assert compile_cache.frontend_key(**{**base, name: value}) != key, name
    assert compile_cache.frontend_key(**base) == key
    monkeypatch.setattr(compile_cache, "code_fingerprint", lambda: "another compiler")
    assert compile_cache.frontend_key(**base) != key
    monkeypatch.undo()
    monkeypatch.setattr("os.cpu_count", lambda: 977)
    assert compile_cache.frontend_key(**base) != key
    monkeypatch.undo()
    monkeypatch.setattr(compile_cache.numba.config, "NUMBA_NUM_THREADS", 977)
    assert compile_cache.frontend_key(**base) != key


def test_every_input_of_a_constants_key_changes_it(monkeypatch):
    m = compile_model("lenet5", seed=3, warm=False)
    avx2 = TARGETS["avx2"]
    key = compile_cache.constants_key(m.graph, m.plan, 3, avx2)
    assert compile_cache.constants_key(m.graph, m.plan, 4, avx2) != key
    assert compile_cache.constants_key(m.graph, m.plan, 3, TARGETS["avx512"]) != key
    other = compile_model("lenet5", seed=3, warm=False, opt_level=1)
    assert compile_cache.constants_key(m.graph, other.plan, 3, avx2) != key
    # a parameter's initializer, and a literal weight's value in full
    param = next(iter(m.graph.params()))
    param.attrs["init"] = "zeros"
    assert compile_cache.constants_key(m.graph, m.plan, 3, avx2) != key
    param.attrs["init"] = "literal"
    param.attrs["value"] = np.zeros(param.type.shape)
    literal = compile_cache.constants_key(m.graph, m.plan, 3, avx2)
    param.attrs["value"].flat[param.type.size // 2] = 1.0  # where str() would elide it
    assert compile_cache.constants_key(m.graph, m.plan, 3, avx2) != literal
    fresh = compile_model("lenet5", seed=3, warm=False)
    key = compile_cache.constants_key(fresh.graph, fresh.plan, 3, avx2)
    digest = compile_cache.weights_digest(fresh.params)
    assert compile_cache.constants_key(fresh.graph, fresh.plan, digest, avx2) != key
    # graphs that came under a front-end key: that key stands for them
    front = compile_cache.constants_key(fresh.graph, fresh.plan, 3, avx2, "f" * 32)
    assert len({front, key, compile_cache.constants_key(fresh.graph, fresh.plan, 3, avx2,
                                                        "e" * 32),
                compile_cache.constants_key(fresh.graph, fresh.plan, 4, avx2, "f" * 32),
                compile_cache.constants_key(fresh.graph, fresh.plan, 3, TARGETS["avx512"],
                                            "f" * 32),
                compile_cache.constants_key(fresh.graph, fresh.plan, 3, replace(
                    avx2, caches=replace(avx2.caches, l2=512 << 10)), "f" * 32)}) == 6
    monkeypatch.setattr(compile_cache, "code_fingerprint", lambda: "another compiler")
    assert compile_cache.constants_key(fresh.graph, fresh.plan, 3, avx2) != key
    assert compile_cache.constants_key(fresh.graph, fresh.plan, 3, avx2, "f" * 32) != front


def damage_flip(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # in the last part's data
    path.write_bytes(bytes(data))


def damage_truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def damage_garbage(path):
    path.write_bytes(b"not a cache entry at all\n" * 3)


def damage_header(path):
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"crc32"', b'"crc3X"', 1))


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_garbage, damage_header])
@pytest.mark.parametrize("kind", ["frontend", "constants"])
def test_a_damaged_entry_is_removed_with_a_warning_and_rebuilt(root, capfd, damage, kind):
    first = compile_model("lenet5", seed=3)
    (path,) = entries(root, kind)
    damage(path)
    capfd.readouterr()
    second = compile_model("lenet5", seed=3)
    err = capfd.readouterr().err
    assert f"compile cache: {path}" in err and "removed" in err
    assert len(err.strip().splitlines()) == 1
    assert np.array_equal(second(X), first(X))
    (rebuilt,) = entries(root, kind)
    assert rebuilt == path and path.stat().st_size > 100
    third = compile_model("lenet5", seed=3)  # and read back without a word
    assert capfd.readouterr().err == ""
    assert np.array_equal(third(X), first(X))


def test_an_entry_under_another_key_is_not_read(root, capfd):
    m = compile_model("lenet5", seed=3, warm=False)
    (path,) = entries(root, "constants")
    assert compile_cache.load_constants(path, "f" * 32, m.plan) is None
    assert "holds another key" in capfd.readouterr().err
    assert not path.exists()


def test_constants_of_another_plan_are_refused(root, capfd):
    compile_model("lenet5", seed=3, warm=False)
    (path,) = entries(root, "constants")
    key = path.stem
    other = compile_model("lenet5", seed=3, warm=False, opt_level=0)  # more steps
    assert compile_cache.load_constants(path, key, other.plan) is None
    assert "not this plan's" in capfd.readouterr().err


def test_a_fifo_in_an_entrys_place_never_blocks(root):
    compile_model("lenet5", seed=3)
    (path,) = entries(root, "constants")
    path.unlink()
    os.mkfifo(path)
    m = compile_model("lenet5", seed=3)  # would hang on a blocking open
    assert m(X).shape == (2, 10)
    assert path.is_file()


def test_the_oldest_entries_beyond_the_limit_are_removed(root, monkeypatch):
    monkeypatch.setattr(compile_cache, "MAX_ENTRIES", {"constants": 2, "frontend": 2})
    for seed in (1, 2):
        compile_model("lenet5", seed=seed, warm=False)
    first, second = sorted(entries(root, "constants"), key=lambda p: p.stat().st_mtime_ns)
    os.utime(first, ns=(second.stat().st_mtime_ns + 10**9,) * 2)  # as if just read: kept
    left = root / "constants" / ".tmp-left-by-a-dead-writer.bin"
    left.write_bytes(b"partial")
    os.utime(left, ns=(second.stat().st_mtime_ns - 7200 * 10**9,) * 2)
    compile_model("lenet5", seed=3, warm=False)
    assert first in entries(root, "constants") and second not in entries(root, "constants")
    assert len(entries(root, "constants")) == 2
    assert not left.exists()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from types import SimpleNamespace
    import numpy as np
    from cnnc.compiler.plan import Arg
    from cnnc.runtime import compile_cache
    path, value = Path(sys.argv[1]), float(sys.argv[2])
    consts = [{"w": np.full((256, 1024), value, np.float32), "c": np.full(4096, value,
                                                                        np.float32)}]
    plan = SimpleNamespace(steps=[SimpleNamespace(calls=[
        SimpleNamespace(args=[Arg("const", "w"), Arg("const", "c")])])])
    for _ in range(30):
        compile_cache.store_constants(path, "k" * 32, plan, consts)
""")


def test_two_processes_writing_one_entry_leave_a_whole_one(tmp_path):
    path = tmp_path / "constants" / ("k" * 32 + ".bin")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(v)])
               for v in (1.0, 2.0)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    # a plan of the one step the writers store
    plan = SimpleNamespace(steps=[SimpleNamespace(name="s", calls=[
        SimpleNamespace(args=[Arg("const", "w"), Arg("const", "c")])])])
    consts = compile_cache.load_constants(path, "k" * 32, plan)
    assert consts is not None
    w, c = consts[0]["w"], consts[0]["c"]
    assert w.shape == (256, 1024) and c.shape == (4096,)
    assert w.flat[0] in (1.0, 2.0) and np.all(w == w.flat[0]) and np.all(c == w.flat[0])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
