"""Loading task functions from Numba's cache without the compiler's start-up
(``backends/numba/loading.py``): a hit in a fresh process runs the kernel without Numba's
implementations ever being registered; a stale entry compiles again. Each case is a fresh
process (the refresh is once per process); one small kernel, compiled twice."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent('''\
    import json, sys
    import numpy as np
    from cnnc.compiler.backends.numba import cache
    from cnnc.compiler.backends.numba.loader import task_kernel
    from cnnc.compiler.backends.numba.printer import print_module
    from cnnc.compiler.kernels.kernel_ir import Const, Kernel, Load, Loop, Param, Store, Var
    i = Var("i")
    k = Kernel("k", [Param("x"), Param("n", "int")],
               [Loop("i", Var("n"), [Store("x", i, Load("x", i) * Const(3.0))],
                     kind="parallel")])
    mod = cache.load_module(print_module([k]), "loading", root=sys.argv[1])
    kernel = task_kernel(mod, k)
    x = np.arange(7, dtype=np.float32)
    kernel(x, 7)
    # numba.np.linalg is one of the modules the target context's refresh imports
    print(json.dumps({"x": x.tolist(), "hits": kernel.cache_hits, "path": str(kernel.path),
                      "refreshed": "numba.np.linalg" in sys.modules}))
    ''')


def _child(tmp_path: Path) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NUMBA_CACHE_DIR": ""})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_cache_hit_loads_without_the_refresh_and_a_stale_entry_compiles(tmp_path):
    want = [3.0 * v for v in range(7)]
    first = _child(tmp_path)
    assert first["x"] == want and first["hits"] == 0  # compiled (the compiler refreshes)
    second = _child(tmp_path)
    assert second["x"] == want and second["hits"] == 1
    assert not second["refreshed"]
    # Numba's index stamped for another source (its stale entry; no checksum to say so): a
    # miss, compiled again
    entry = Path(second["path"]).parent
    (index,) = entry.glob("__pycache__/*.nbi")
    with open(index, "rb") as f:
        version = pickle.load(f)
        _, overloads = pickle.loads(f.read())
    with open(index, "wb") as f:
        pickle.dump(version, f)
        f.write(pickle.dumps(("another source", overloads)))
    (entry / "checksums.json").unlink()
    third = _child(tmp_path)
    assert third["x"] == want and third["hits"] == 0
    assert _child(tmp_path)["hits"] == 1  # and saved again
