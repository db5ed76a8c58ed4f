"""A cached compile in a fresh process (bench/bench_cached_compile.py times it): it loads
every kernel from the disk cache, reads its graphs and packed constants from the compile cache
(``runtime/compile_cache.py``: nothing parsed, optimized or packed) and computes the same
numbers as the compile that wrote them, and as the float64 reference; the runtime's import
pauses the collector (``cnnc.import_paused``) without leaving it off or freezing the caller's
heap.

LeNet-5 from the zoo with the suite's kernel cache; the compile cache in a folder of the
test's own."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import cnnc
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

CHILD = textwrap.dedent("""
    import gc, json, sys
    from pathlib import Path
    import numpy as np
    import cnnc
    from cnnc.compiler.backends.numba.tasks import TaskKernel
    from cnnc.runtime import compile_cache
    compile_cache.cache_root = lambda: Path(sys.argv[1])
    compile_cache.MIN_FLOATS = 0  # LeNet-5's constants kept too
    model = cnnc.compile("lenet5", seed=3)
    x = np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)
    kernels = {id(c.fn): c.fn for s in model.plan.steps for c in s.calls
               if isinstance(c.fn, TaskKernel)}
    print(json.dumps({
        "y": model(x).tolist(),
        "kernels": len(kernels),
        "loaded": sum(k.cache_hits for k in kernels.values()),
        "parsed": "lark" in sys.modules,
        "frozen": gc.get_freeze_count(),
        "collecting": gc.isenabled(),
    }))
""")


def child(root) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True,
                         text=True, timeout=600, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_cached_compile_in_a_fresh_process_loads_every_kernel_and_computes_the_same(
        tmp_path):
    first = child(tmp_path)  # writes the compile cache's entries
    assert first["parsed"]
    second = child(tmp_path)
    assert not second["parsed"]  # the front end read back
    assert second["kernels"] == first["kernels"] > 5
    assert second["loaded"] == second["kernels"]  # each one from the disk cache, none compiled
    assert np.array_equal(np.array(second["y"]), np.array(first["y"]))
    m = compile_model("lenet5", seed=3, warm=False)
    x = np.random.default_rng(5).standard_normal((2, 1, 32, 32))
    ref = next(iter(run_reference(m.graph, {"image": x}, m.params).values()))
    np.testing.assert_allclose(np.array(second["y"]), ref, rtol=1e-4, atol=1e-6)
    assert second["frozen"] == 0 and second["collecting"]  # the caller's heap as it was


def test_the_runtimes_import_pauses_the_collector_and_freezes_nothing(tmp_path, monkeypatch):
    """``cnnc.compile``'s import runs with the collector paused, on again after it (off where
    the user had turned it off), and freezes nothing of the caller's heap: a cycle made before
    it is still collected after."""
    (tmp_path / "qs_heavy_module.py").write_text("TABLE = [[i] for i in range(5000)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "qs_heavy_module", raising=False)
    before = gc.get_freeze_count()
    cycle: list = []
    cycle.append(cycle)
    module = cnnc.import_paused("qs_heavy_module")
    assert len(module.TABLE) == 5000
    assert gc.isenabled() and gc.get_freeze_count() == before
    del cycle
    assert gc.collect() >= 1
    monkeypatch.delitem(sys.modules, "qs_heavy_module")
    gc.disable()
    try:
        cnnc.import_paused("qs_heavy_module")
        assert not gc.isenabled() and gc.get_freeze_count() == before
    finally:
        gc.enable()


def test_the_command_line_imports_only_the_module_of_the_command_it_runs():
    from cnnc.runtime import cli
    from cnnc.runtime.cli_common import EXTRA

    cli._register_extras()  # every module: the table names each command's own
    assert set(EXTRA) == set(cli.COMMAND_MODULES)
    for command, module in cli.COMMAND_MODULES.items():
        assert EXTRA[command][0].__module__ == f"cnnc.runtime.{module}", command
    assert not set(cli.BASIC_COMMANDS) & set(EXTRA)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from cnnc.runtime.cli import main
        assert main(["dump", "lenet5"]) == 0
        print(sorted(m for m in sys.modules if m.startswith("cnnc.runtime.") and
                     m.rpartition(".")[2] in ("commands", "onnx_commands", "show",
                                              "train_command", "bench_command")))
    """)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_command_hands_compile_the_models_name_where_the_graph_is_just_that():
    from types import SimpleNamespace

    from cnnc.runtime.cli_common import compile_source

    graph = cnnc.load("lenet5")
    plain = SimpleNamespace(model="lenet5", param=None, input_size=None)
    assert compile_source(plain, graph) == "lenet5"
    assert compile_source(SimpleNamespace(model="lenet5", param=["classes=7"], input_size=None),
                          graph) is graph
    assert compile_source(SimpleNamespace(model="lenet5", param=None, input_size="64x64"),
                          graph) is graph
