"""A cached compile in a fresh process: ``cnnc.compile(model)`` with every kernel already in
the disk cache, imports included, and where its time goes.

    .venv/bin/python bench/bench_cached_compile.py [--models resnet18,lenet5] [--rounds 5]
        [--against /path/to/other/.venv/bin/python] [--threads 1]

A model is anything ``cnnc.compile`` takes as text: a zoo name, a .cnn file, an .onnx file
(its weights then the file's), or ``onnx:NAME``: the zoo network NAME exported to ONNX with
its seed-0 weights (``runtime/bench.py``'s ``prepare``, once, into ``--workdir``).

Each measurement is a new process (``python -c``-like: the interpreter's start-up counted) of
each interpreter in turn (this one and ``--against`` ones, alternating, round after round), on
a cache warmed by one compile per model and interpreter first (``$CNNC_CACHE_DIR``, shared: a
kernel's entry is keyed by its source and the code that compiles it, and a compile-cache entry
by the code's hash too, so two versions never mix theirs). The warming runs without
``PYTHONDONTWRITEBYTECODE``, so each checkout's modules have their bytecode written, as an
installed package has: where that variable is set (as on the shared host of session 22),
every process would otherwise compile cnnc's source again, about 0.3 s of CPU, and the
comparison would be of that. Two kinds of process per round:

- plain: ``import cnnc; cnnc.compile(model)``; "ready" is when ``compile`` returns: the wall
  time from the parent's start of the process, and the process's CPU time until then
  (interpreter start-up included); "process" is until the process has ended, interpreter
  finalization included (0.1-0.2 s of CPU: tearing down Numba's and everyone's modules), the
  parent's wall time and the kernel's accounting of the child's CPU (user + system);
- split: the same, with timers wrapped around the stages (exclusive: a nested stage's time is
  not its caller's): imports (``import cnnc`` and the first ``cnnc.compile``, which imports
  the runtime), parse (DSL to graph), init (the seeded initial weights), passes, lower (the
  lowering driver, kernel modules imported, without the task functions loaded inside it),
  pack (parameters set: derived parameters, packed weights), kernel load (Numba's task
  functions and the task loop loaded from its cache), first call (the warm-up call, less the
  loads inside it), cache (reading and writing ``runtime/compile_cache.py``'s entries, keys
  included; absent before it), other (the rest of ``compile``).

Medians over the rounds go to stdout as markdown tables (bench/RESULTS.md keeps the measured
ones)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("imports", "parse", "init", "passes", "lower", "pack", "kernel load", "first call",
          "cache", "other")


def _worker(model: str, split: bool) -> dict[str, float]:
    """Compile ``model`` (``cnnc.compile``) in this fresh process; with ``split``, the
    exclusive wall and CPU seconds of each stage."""
    t0, c0 = time.perf_counter(), time.process_time()
    import cnnc

    compile_model = cnnc.compile
    t_imp, c_imp = time.perf_counter() - t0, time.process_time() - c0
    wall = dict.fromkeys(STAGES, 0.0)
    cpu = dict.fromkeys(STAGES, 0.0)
    if split:
        _wrap_stages(wall, cpu)
    t1, c1 = time.perf_counter(), time.process_time()
    compile_model(model)
    total_wall, total_cpu = time.perf_counter() - t1, time.process_time() - c1
    ready, ready_cpu = time.time(), time.process_time()  # the process's CPU since it began
    wall["imports"], cpu["imports"] = t_imp, c_imp
    wall["other"] = total_wall - sum(v for k, v in wall.items() if k != "imports")
    cpu["other"] = total_cpu - sum(v for k, v in cpu.items() if k != "imports")
    return {**{f"wall {k}": v for k, v in wall.items()}, **{f"cpu {k}": v for k, v in cpu.items()},
            "ready at": ready, "ready cpu": ready_cpu}


def _wrap_stages(wall: dict[str, float], cpu: dict[str, float]) -> None:
    """Timers around the functions of each stage (module attributes the compile looks up)."""
    from cnnc.compiler.backends.numba import tasks
    from cnnc.runtime import executor, model

    stack: list[list[float]] = []  # per active stage: [child wall, child cpu]

    def timed(stage: str, fn):
        def inner(*args, **kwargs):
            stack.append([0.0, 0.0])
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt, dc = time.perf_counter() - t, time.process_time() - c
                child = stack.pop()
                wall[stage] += dt - child[0]
                cpu[stage] += dc - child[1]
                if stack:
                    stack[-1][0] += dt
                    stack[-1][1] += dc
        return inner

    model._load_graph = timed("parse", model._load_graph)
    model.init_params = timed("init", model.init_params)
    model.optimize = timed("passes", model.optimize)
    model.lower_graph = timed("lower", model.lower_graph)
    executor.Executor.set_params = timed("pack", executor.Executor.set_params)
    tasks.compile_task_function = timed("kernel load", tasks.compile_task_function)
    tasks.run_tasks.compile = timed("kernel load", tasks.run_tasks.compile)
    model.CompiledModel.warm_up = timed("first call", model.CompiledModel.warm_up)
    cache = getattr(model, "compile_cache", None)  # not in checkouts before it
    if cache is not None:
        for name in ("load_frontend", "store_frontend", "load_constants", "store_constants",
                     "frontend_key", "constants_key", "weights_digest", "onnx_text"):
            if hasattr(cache, name):  # the last two not in checkouts before them
                setattr(cache, name, timed("cache", getattr(cache, name)))


def _onnx_file(model: str, workdir: Path) -> Path:
    """The ONNX file of ``onnx:NAME`` (written on first use)."""
    folder = workdir / model.partition(":")[2]
    path = folder / "model.onnx"
    if not path.exists():
        import cnnc
        from cnnc.runtime.bench import prepare

        folder.mkdir(parents=True, exist_ok=True)
        prepare(cnnc.load(model.partition(":")[2]), [1], folder)
    return path


def _run(python: str, model: str, split: bool, env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    t = time.perf_counter()
    out = subprocess.run([python, __file__, "--worker", model] + (["--split"] if split else []),
                         capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{python} {model}: {out.stderr.strip().splitlines()[-1:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process wall"] = wall
    result["ready wall"] = result.pop("ready at") - started
    result["process cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,lenet5")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--against", action="append", default=[],
                    help="another interpreter (another checkout's .venv/bin/python)")
    ap.add_argument("--threads", type=int, default=1, help="NUMBA_NUM_THREADS of the compiles")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                      "cnnc-bench-cached-compile"),
                    help="where the ONNX files of onnx:NAME models are written")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.split)))
        return
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads))
    pythons = [sys.executable] + args.against
    models = args.models.split(",")
    # what each model's processes compile: its name, or the ONNX file of onnx:NAME
    source = {m: str(_onnx_file(m, Path(args.workdir))) if m.startswith("onnx:") else m
              for m in models}
    warming = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for python in pythons:  # warm the caches: every kernel compiled (or already there)
        for m in models:
            _run(python, source[m], False, warming)
    runs: dict[tuple[str, str, bool], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for m in models:
            order = pythons if r % 2 == 0 else pythons[::-1]
            for python in order:
                for split in (False, True):
                    runs.setdefault((python, m, split), []).append(
                        _run(python, source[m], split, env))
        print(f"round {r + 1} done (load {os.getloadavg()[0]:.1f})", file=sys.stderr)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(f"load average now {os.getloadavg()[0]:.1f}, NUMBA_NUM_THREADS={args.threads}, "
          f"{args.rounds} rounds\n")
    print("| model | interpreter | ready wall s | ready CPU s | process wall s | process CPU s "
          "| runs (ready wall) |")
    print("|---|---|---|---|---|---|---|")
    for m in models:
        for python in pythons:
            rows = runs[(python, m, False)]
            walls = ", ".join(f"{row['ready wall']:.2f}" for row in rows)
            print(f"| {m} | {python} | {med(rows, 'ready wall'):.2f} | "
                  f"{med(rows, 'ready cpu'):.2f} | {med(rows, 'process wall'):.2f} | "
                  f"{med(rows, 'process cpu'):.2f} | {walls} |")
    print("\nSplit, CPU s (median over the rounds; exclusive stages):\n")
    print("| model | interpreter | " + " | ".join(STAGES) + " | process |")
    print("|---|---|" + "---|" * (len(STAGES) + 1))
    for m in models:
        for python in pythons:
            rows = runs[(python, m, True)]
            cells = " | ".join(f"{med(rows, 'cpu ' + s):.3f}" for s in STAGES)
            print(f"| {m} | {python} | {cells} | {med(rows, 'process cpu'):.2f} |")


if __name__ == "__main__":
    main()
