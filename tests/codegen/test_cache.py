"""The on-disk kernel cache: fast reload in a new process, corrupt files rebuilt, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from cnnc.compiler.backends.numba import cache

SOURCE = textwrap.dedent('''\
    import numpy as np
    from numba import njit

    from cnnc.compiler.backends.numba.simd import vfma, vload, vstore


    @njit(cache=True)
    def axpy8(a, x, y):
        for i in range(0, x.shape[0], 8):
            vstore(y, i, vfma(vload(a, 0), vload(x, i), vload(y, i)))
    ''')

# A child process: load the module, call the kernel, report result and Numba cache hits.
CHILD = textwrap.dedent('''\
    import json, sys, time
    import numpy as np
    from cnnc.compiler.backends.numba import cache
    src, root = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    mod = cache.load_module(open(src).read(), "axpy", root=root)
    a = np.full(8, 2.0, np.float32); x = np.arange(16, dtype=np.float32)
    y = np.ones(16, np.float32)
    mod.axpy8(a, x, y)
    hits = sum(mod.axpy8.stats.cache_hits.values())
    print(json.dumps({"y": y.tolist(), "hits": hits, "path": mod.__file__,
                      "seconds": time.perf_counter() - t0}))
    ''')


def _child(tmp_path: Path, timeout: float = 300) -> dict:
    """Run CHILD in a fresh process; its result, with its stderr under "stderr"."""
    src = tmp_path / "source.txt"
    src.write_text(SOURCE)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "NUMBA_CACHE_DIR": ""})
    assert out.returncode == 0, out.stderr
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


def _numba_files(module_file: str) -> list[Path]:
    pyc = Path(module_file).parent / "__pycache__"
    return sorted(f for f in pyc.iterdir() if f.suffix in (".nbi", ".nbc"))


def test_second_process_hits_cache_and_corrupt_files_are_rebuilt(tmp_path):
    expected = (2 * np.arange(16) + 1).tolist()
    first = _child(tmp_path)
    assert first["y"] == expected and first["hits"] == 0
    second = _child(tmp_path)
    assert second["y"] == expected and second["hits"] == 1  # loaded, not compiled

    # Corrupt everything: the generated source and Numba's index and data files.
    path = Path(first["path"])
    path.write_text("this is not python (\n")
    pyc = path.parent / "__pycache__"
    numba_files = [f for f in pyc.iterdir() if f.suffix in (".nbi", ".nbc")]
    assert numba_files
    for f in numba_files:
        f.write_bytes(b"\x80\x04garbage" + os.urandom(64))
    third = _child(tmp_path)
    assert third["y"] == expected and third["hits"] == 0  # rebuilt, not crashed
    assert path.read_text() == SOURCE

    # Corrupt only Numba's files (source intact): still rebuilt.
    for f in pyc.iterdir():
        if f.suffix in (".nbi", ".nbc"):
            f.write_bytes(f.read_bytes()[: 20])
    fourth = _child(tmp_path)
    assert fourth["y"] == expected
    fifth = _child(tmp_path)
    assert fifth["y"] == expected and fifth["hits"] == 1


def test_key_depends_on_source_and_tag_is_sanitized(tmp_path):
    p1 = cache.module_path("x = 1\n", "../../etc/passwd", tmp_path)
    p2 = cache.module_path("x = 2\n", "../../etc/passwd", tmp_path)
    assert p1 != p2
    assert p1.parent.parent == tmp_path and ".." not in p1.name and "/" not in p1.parent.name
    mod = cache.load_module("x = 41 + 1\n", "plain module", root=tmp_path)
    assert mod.x == 42
    assert cache.load_module("x = 41 + 1\n", "plain module", root=tmp_path) is mod
    # No temporary files are left behind by the atomic write.
    assert not [f for f in Path(mod.__file__).parent.iterdir() if f.name.startswith(".tmp-")]


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path))
    assert cache.cache_root() == tmp_path
    monkeypatch.delenv("CNNC_CACHE_DIR")
    assert cache.cache_root() == Path.home() / ".cache" / "cnnc"



def test_one_flipped_byte_in_numba_machine_code_is_detected_and_rebuilt(tmp_path):
    """A byte flipped inside a real .nbc keeps the pickle well-formed (the old structural check
    passed it); the checksum written with the entry catches it."""
    expected = (2 * np.arange(16) + 1).tolist()
    first = _child(tmp_path)
    assert first["y"] == expected and first["hits"] == 0 and "warning" not in first["stderr"]
    manifest = json.loads((Path(first["path"]).parent / cache.MANIFEST).read_text())
    nbc = [f for f in _numba_files(first["path"]) if f.suffix == ".nbc"]
    assert len(nbc) == 1 and f"__pycache__/{nbc[0].name}" in manifest
    assert manifest[Path(first["path"]).name] == hashlib.sha256(SOURCE.encode()).hexdigest()
    data = bytearray(nbc[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    nbc[0].write_bytes(bytes(data))
    second = _child(tmp_path)
    assert second["y"] == expected and second["hits"] == 0  # purged and compiled again
    warnings = [line for line in second["stderr"].splitlines() if "warning" in line]
    assert len(warnings) == 1 and "does not match its checksum" in warnings[0]
    third = _child(tmp_path)
    assert third["y"] == expected and third["hits"] == 1 and "warning" not in third["stderr"]


def test_damaged_manifest_purges_the_entry(tmp_path):
    first = _child(tmp_path)
    (Path(first["path"]).parent / cache.MANIFEST).write_text("{not json")
    second = _child(tmp_path)
    assert second["hits"] == 0 and f"{cache.MANIFEST} is damaged" in second["stderr"]
    assert _child(tmp_path)["hits"] == 1


def test_a_fifo_in_the_cache_never_blocks(tmp_path):
    """A FIFO where the kernel file or a Numba index belongs would block any reader forever;
    it is removed unopened and the entry rebuilt."""
    first = _child(tmp_path)
    path = Path(first["path"])
    nbi = next(f for f in _numba_files(first["path"]) if f.suffix == ".nbi")
    nbi.unlink()
    os.mkfifo(nbi)
    second = _child(tmp_path, timeout=120)
    assert second["y"] == first["y"] and "not a regular file" in second["stderr"]
    path.unlink()
    os.mkfifo(path)
    third = _child(tmp_path, timeout=120)
    assert third["y"] == first["y"] and path.read_text() == SOURCE
    # In-process as well, for a plain module (no compile): a FIFO at the kernel file's path.
    src = "x = 7\n"
    mod_path = cache.module_path(src, "fifo", tmp_path / "plain")
    mod_path.parent.mkdir(parents=True)
    os.mkfifo(mod_path)
    assert cache.load_module(src, "fifo", root=tmp_path / "plain").x == 7


def test_unusable_cache_dir_falls_back_once_to_one_folder(tmp_path, monkeypatch, capsys):
    """A file where the cache folder should be (chmod does not stop root, a file does): one
    warning, one per-user folder for every module, the same folder in the next run."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("the user's file, not a cache\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(cache, "_FALLBACK", {})
    a = cache.load_module("a = 1\n", "fallback_a", root=blocked)
    b = cache.load_module("b = 2\n", "fallback_b", root=blocked)
    assert (a.a, b.b) == (1, 2)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and f"kernel cache {blocked} is not usable" in err
    folders = list(temp.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("cnnc-cache-")
    assert Path(a.__file__).parent.parent == folders[0] == Path(b.__file__).parent.parent
    assert blocked.read_text() == "the user's file, not a cache\n"
    # The next run (a fresh fallback table and module memo) reuses that folder.
    monkeypatch.setattr(cache, "_FALLBACK", {})
    monkeypatch.setattr(cache, "_LOADED", {})
    c = cache.load_module("c = 3\n", "fallback_c", root=blocked)
    assert c.c == 3 and list(temp.iterdir()) == folders


def test_parser_tables_are_cached_and_a_damaged_file_rebuilt(tmp_path, monkeypatch):
    """The DSL parser keeps its LALR tables in the cache root (``auxiliary_file``): written by
    the first build, read by the next; garbage there, or a FIFO, means one more build, never
    an error or a blocked reader. Every built parser parses the same way."""
    from cnnc.dsl import parser

    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path))
    src = "network t\ninput x: 3 x 8 x 8\nx -> conv(4, 3) -> relu -> output y\n"
    path = tmp_path / parser.PARSER_CACHE

    def build():
        return parser._parser.__wrapped__().parse(src)

    def stamp() -> bytes:  # the hash line Lark checks (the pickled tables' order varies)
        return path.read_bytes().split(b"\n", 1)[0]

    want = build()
    written = path.read_bytes()
    assert path.is_file() and stamp().isalnum()
    assert build() == want and path.read_bytes() == written  # read back, not rebuilt
    path.write_bytes(b"not a parser\n")
    assert build() == want and stamp() == written.split(b"\n", 1)[0]  # rebuilt, rewritten
    path.unlink()
    os.mkfifo(path)
    assert build() == want and path.is_file() and stamp() == written.split(b"\n", 1)[0]


def test_compile_lock_makes_a_second_compiler_wait(tmp_path):
    """While one holder compiles an entry, another waits for it (then finds the kernel in the
    cache); a FIFO where the lock file belongs is not waited on."""
    import threading

    path = tmp_path / "entry" / "k.py"
    path.parent.mkdir()
    order = []

    def second():
        with cache.compile_lock(path):
            order.append("second")

    with cache.compile_lock(path):
        waiting = threading.Thread(target=second)
        waiting.start()
        waiting.join(0.5)
        order.append("first")
    waiting.join(30)
    assert order == ["first", "second"]
    (path.parent / cache.LOCK).unlink()
    os.mkfifo(path.parent / cache.LOCK)
    with cache.compile_lock(path), cache.compile_lock(path):
        order.append("unlocked")
    assert order[-1] == "unlocked"


def _scale_kernels(root: Path) -> list:
    """Two task kernels (x *= 2, x *= 3) in modules of their own under ``root``."""
    from cnnc.compiler.backends.numba.loader import task_kernel
    from cnnc.compiler.backends.numba.printer import print_module
    from cnnc.compiler.kernels.kernel_ir import Const, Kernel, Load, Loop, Param, Store, Var

    kernels = []
    for factor in (2.0, 3.0):
        i = Var("i")
        k = Kernel("k", [Param("x"), Param("n", "int")],
                   [Loop("i", Var("n"), [Store("x", i, Load("x", i) * Const(factor))],
                         kind="parallel")])
        mod = cache.load_module(print_module([k]), f"warm{int(factor)}", root=root)
        kernels.append(task_kernel(mod, k))
    return kernels


def _check_scaling(kernels: list) -> None:
    for factor, kernel in zip((2, 3), kernels):
        x = np.arange(4, dtype=np.float32)
        kernel(x, 4)
        np.testing.assert_array_equal(x, factor * np.arange(4))


def test_parallel_compile_workers_fill_the_cache(tmp_path, monkeypatch):
    """A worker started before its jobs are known (``Helpers``) compiles the jobs it is sent,
    longest first; this process then finds them done and only loads their machine code."""
    from cnnc.compiler.backends.numba import warm

    monkeypatch.setenv("CNNC_PARALLEL_COMPILE", "1")
    helpers = warm.Helpers(1)  # started before the jobs exist, as a cold compile does
    kernels = _scale_kernels(tmp_path)
    jobs = [warm.Job(str(k.path), k.name, 1, k.index_path, k) for k in kernels]
    assert not any(os.path.exists(j.index) for j in jobs)
    warming = warm.start(jobs, workers=2, helpers=helpers)
    assert warming.workers == 1
    for p in warming.procs:
        assert p.wait(120) == 0
    assert all(os.path.exists(j.index) for j in jobs)
    seen = []
    warming.finish(lambda *p: seen.append(p))
    assert seen[-1] == (2, 2)
    _check_scaling(kernels)
    assert [k.cache_hits for k in kernels] == [1, 1]  # both loaded from the worker's files


def test_parallel_compile_without_workers_compiles_here(tmp_path, monkeypatch):
    """With one process allowed, ``warm_modules`` sends nothing and compiles every job here,
    reporting each."""
    from cnnc.compiler.backends.numba import warm

    monkeypatch.setenv("CNNC_PARALLEL_COMPILE", "1")
    kernels = _scale_kernels(tmp_path)
    jobs = [warm.Job(str(k.path), k.name, 1, k.index_path, k) for k in kernels]
    seen = []
    assert warm.warm_modules(jobs, workers=1, progress=lambda *p: seen.append(p)) == 0
    assert seen == [(1, 2), (2, 2)] and all(os.path.exists(j.index) for j in jobs)
    _check_scaling(kernels)
    assert [k.cache_hits for k in kernels] == [0, 0]


def test_a_kernel_another_process_compiles_is_skipped(tmp_path):
    """Without waiting, a kernel whose entry lock is held elsewhere is left alone (the
    parallel compile's processes take the next one); once the lock is free it compiles."""
    kernel = _scale_kernels(tmp_path)[0]
    with cache.compile_lock(kernel.path) as held:  # another holder (its own open file)
        assert held
        assert kernel.compile(wait=False) is False
        assert not os.path.exists(kernel.index_path)
    assert kernel.compile(wait=False) is True and os.path.exists(kernel.index_path)
    _check_scaling([kernel])


TINY = """network tiny_parallel
input image: 3 x 12 x 12
image -> conv(16, 3) as c1 -> relu -> maxpool(2) -> output features
"""


def test_a_cold_compile_starts_its_workers_ahead(tmp_path, monkeypatch):
    """``compile`` of a program the compile cache has not seen starts its parallel-compile
    workers before it lowers (``Helpers.prestart``) and sends them the missing kernels; the
    model computes the float64 reference's numbers."""
    from cnnc.compiler.backends.numba import warm
    from cnnc.runtime.model import compile as compile_model
    from cnnc.runtime.reference import run_reference

    monkeypatch.setenv("CNNC_PARALLEL_COMPILE", "1")
    sent = []
    start = warm.start

    def recorded(jobs, workers=None, helpers=None):
        sent.append((helpers, start(jobs, workers, helpers)))
        return sent[-1][1]

    monkeypatch.setattr(warm, "start", recorded)
    model = compile_model(TINY, seed=1, cache_dir=tmp_path)
    (helpers, warming), = sent
    parallel = (os.cpu_count() or 1) > 1
    assert (helpers is not None) == parallel and len(warming.jobs) >= 2
    assert warming.workers == (min(os.cpu_count() or 1, len(warming.jobs)) - 1 if parallel else 0)
    for p in warming.procs:
        assert p.wait(120) == 0
    assert all(os.path.exists(j.index) for j in warming.jobs)
    x = np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32)
    ref = run_reference(model.graph, {"image": x.astype(np.float64)}, model.params)
    np.testing.assert_allclose(model(x), next(iter(ref.values())), rtol=1e-4, atol=1e-5)
