"""Small networks' latency at batch 1: min and median of ``model(x)`` over many calls, in wall
time and in the process's CPU time, for this checkout's cnnc beside another checkout's and
ONNX Runtime.

    .venv/bin/python bench/bench_latency.py [--models lenet5 squeezenet1_1 mobilenet_v2]
        [--threads 1 2] [--rounds 2] [--calls 3000] [--base /path/to/other/.venv/bin/python]
        [--base-cache /tmp/cache-base]

One worker process per engine and round (this script with ``--worker``), in alternating order
round by round, each limited to ``--threads`` threads, on the same weights and input (the bench
module's ``prepare``); a worker times ``--calls`` calls after 20 warm-up calls (a model of
milliseconds a call: 150). ``--base``: the Python of another checkout's virtual environment,
whose cnnc runs this script's worker as the engine ``base`` (its own kernel cache:
``--base-cache``). The process's CPU time per call is the figure to trust on a loaded host at
one thread (other processes' work does not count in it; with more threads it counts the
threads' spinning). Times are pooled over the rounds; the table is printed as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cnnc
from cnnc.runtime.weights import load_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

#: Calls a worker times for a model under a millisecond a call, and for the others.
SMALL_CALLS, LARGE_CALLS = 3000, 150


def runner(engine: str, workdir: Path, model: str, threads: int) -> Callable[[], object]:
    """The function that runs ``engine`` once on the prepared input."""
    x = np.load(workdir / "x1.npy")
    if engine == "cnnc":
        import numba

        numba.set_num_threads(threads)
        graph = cnnc.load(model)
        compiled = cnnc.compile(graph, weights=load_weights(graph, workdir / "weights.npz"))
        return lambda: compiled(x)
    from cnnc.runtime.bench import onnxruntime_runner

    return onnxruntime_runner(workdir / "model.onnx", x, threads)


def worker(engine: str, workdir: Path, model: str, threads: int) -> None:
    """Print the wall and CPU times (ns) of each timed call as JSON."""
    fn = runner(engine, workdir, model, threads)
    for _ in range(20):
        fn()
    start = time.perf_counter()
    fn()
    calls = SMALL_CALLS if time.perf_counter() - start < 1e-3 else LARGE_CALLS
    wall, cpu = np.empty(calls), np.empty(calls)
    for i in range(calls):
        t0, c0 = time.perf_counter_ns(), time.process_time_ns()
        fn()
        cpu[i] = time.process_time_ns() - c0
        wall[i] = time.perf_counter_ns() - t0
    print(json.dumps({"wall": wall.tolist(), "cpu": cpu.tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "squeezenet1_1", "mobilenet_v2"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--base", help="another checkout's virtual environment's python")
    ap.add_argument("--base-cache", help="the base engine's kernel cache directory")
    ap.add_argument("--worker", nargs=4, metavar=("ENGINE", "WORKDIR", "MODEL", "THREADS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        engine, workdir, model, threads = args.worker
        worker(engine, Path(workdir), model, int(threads))
        return
    from cnnc.runtime.bench import installed, prepare

    engines = {"cnnc": sys.executable}
    if args.base:
        engines["base"] = args.base
    if installed("onnxruntime"):
        engines["onnxruntime"] = sys.executable
    rows = []
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            prepare(cnnc.load(model), [1], Path(tmp))
            for threads in args.threads:
                times = {e: {"wall": [], "cpu": []} for e in engines}
                order = list(engines)
                for r in range(args.rounds):
                    for engine in order if r % 2 == 0 else order[::-1]:
                        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                        if engine == "base" and args.base_cache:
                            env["CNNC_CACHE_DIR"] = args.base_cache
                        name = "cnnc" if engine == "base" else engine
                        out = subprocess.run(
                            [engines[engine], __file__, "--worker", name, tmp, model,
                             str(threads)], capture_output=True, text=True, env=env)
                        if out.returncode:
                            raise SystemExit(f"{engine} {model} failed:\n{out.stderr[-3000:]}")
                        got = json.loads(out.stdout.strip().splitlines()[-1])
                        for k in got:
                            times[engine][k] += got[k]
                for engine, t in times.items():
                    wall, cpu = (np.asarray(t[k]) / 1e3 for k in ("wall", "cpu"))
                    rows.append([model, str(threads), engine, str(len(wall)),
                                 f"{cpu.min():.1f}", f"{np.median(cpu):.1f}",
                                 f"{wall.min():.1f}", f"{np.median(wall):.1f}"])
    print(markdown_table(["model", "threads", "engine", "calls", "CPU min (us)",
                          "CPU median (us)", "wall min (us)", "wall median (us)"], rows))


if __name__ == "__main__":
    main()
