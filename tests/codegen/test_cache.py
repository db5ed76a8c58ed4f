"""The on-disk kernel cache: fast reload in a new process, corrupt files rebuilt, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from cnnc.compiler.codegen import cache

SOURCE = textwrap.dedent('''\
    import numpy as np
    from numba import njit

    from cnnc.compiler.codegen.vec8 import vfma, vload, vstore


    @njit(cache=True)
    def axpy8(a, x, y):
        for i in range(0, x.shape[0], 8):
            vstore(y, i, vfma(vload(a, 0), vload(x, i), vload(y, i)))
    ''')

# A child process: load the module, call the kernel, report result and Numba cache hits.
CHILD = textwrap.dedent('''\
    import json, sys, time
    import numpy as np
    from cnnc.compiler.codegen import cache
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


def _child(tmp_path: Path) -> dict:
    src = tmp_path / "source.txt"
    src.write_text(SOURCE)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NUMBA_CACHE_DIR": ""})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


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

