"""Latency under load: models called at batch 1 in a loop while other processes keep cores
busy, against the same loop on a quiet machine: median, p99, the worst call and the best.

    .venv/bin/python bench/bench_load.py [--models lenet5,resnet18,mobilenet_v2]
        [--engines cnnc,onnxruntime] [--busy 0,1,2] [--seconds 4] [--threads 2] [--rounds 2]
        [--cnnc LABEL=PYTHON[,KEY=VALUE...] ...] [--env KEY=VALUE ...] [--json FILE]

Each measurement runs in its own process (a fresh thread pool), on the same seeded weights and
input for every engine (``runtime/bench.py``'s ``prepare``: ONNX Runtime reads them as ONNX);
``--busy N`` processes spin on the cores meanwhile. ``--cnnc LABEL=PYTHON`` adds cnnc as
installed for another interpreter (another checkout's ``.venv/bin/python``: a before/after
comparison), with its own environment variables after the interpreter (``OMP_WAIT_POLICY``;
``CNNC_BENCH_SERIAL_WORK``: the executor's one-thread threshold, ``SERIAL_WORK``, in that
worker); the engines and interpreters run in alternating order, round after round, and the
calls of all rounds are pooled. The best call is the quiet machine's figure when the host is
shared: the median then carries the neighbours' load. The numbers go to stdout as a markdown
table (bench/RESULTS.md keeps the measured ones).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spin() -> None:
    while True:
        pass


def _runner(engine: str, workdir: Path, model: str, threads: int):
    """The function that runs ``engine`` once on the prepared input (after loading it)."""
    import numpy as np

    x = np.load(workdir / "x1.npy")
    if engine == "onnxruntime":
        from cnnc.runtime.bench import onnxruntime_runner

        return onnxruntime_runner(workdir / "model.onnx", x, threads)
    import numba

    import cnnc
    from cnnc.dsl.builder import load_network
    from cnnc.runtime import executor
    from cnnc.runtime.weights import load_weights

    if "CNNC_BENCH_SERIAL_WORK" in os.environ:
        executor.SERIAL_WORK = int(os.environ["CNNC_BENCH_SERIAL_WORK"])
    numba.set_num_threads(threads)
    graph = load_network(model)
    compiled = cnnc.compile(graph, weights=load_weights(graph, workdir / "weights.npz"))
    return lambda: compiled(x)


def measure(engine: str, workdir: Path, model: str, threads: int,
            seconds: float) -> dict[str, float]:
    """Call times in ms of ``seconds`` of calls after 0.5 s of warm-up calls."""
    import numpy as np

    run = _runner(engine, workdir, model, threads)
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        run()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return {"times": (np.array(times) * 1e3).tolist()}


def prepared(model: str, root: Path) -> Path:
    """A folder with ``model``'s seeded weights, its ONNX file and an input (made once)."""
    from cnnc.dsl.builder import load_network
    from cnnc.runtime.bench import prepare

    workdir = root / model
    if not (workdir / "x1.npy").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        prepare(load_network(model), [1], workdir)
    return workdir


def summary(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.array(ms)
    return {"calls": len(a), "best": float(a.min()), "median": float(np.median(a)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5")
    ap.add_argument("--engines", default="cnnc,onnxruntime",
                    help="cnnc, onnxruntime (skipped when not installed)")
    ap.add_argument("--busy", default="0,2", help="busy processes per measurement, a list")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cnnc", action="append", default=[], metavar="LABEL=PYTHON",
                    help="also cnnc as installed for PYTHON, labelled LABEL")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in the cnnc workers' environment (OMP_WAIT_POLICY=PASSIVE)")
    ap.add_argument("--json", type=Path, help="write every call's time here too")
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = args.models.split(",")
    if args.worker:
        print(json.dumps(measure(args.worker, args.workdir, models[0], args.threads,
                                 args.seconds)))
        return
    import importlib.util

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cnnc_env = dict(env, **dict(kv.split("=", 1) for kv in args.env))
    engines: list[tuple[str, str, str, dict[str, str]]] = []  # (label, engine, python, env)
    for engine in args.engines.split(","):
        if engine == "cnnc":
            engines.append(("cnnc", "cnnc", sys.executable, cnnc_env))
        elif importlib.util.find_spec(engine) is None:
            print(f"{engine} is not installed: skipped")
        else:
            engines.append((engine, engine, sys.executable, env))
    for spec in args.cnnc:
        label, rest = spec.split("=", 1)
        python, *pairs = rest.split(",")
        engines.append((label, "cnnc", python, dict(cnnc_env, **dict(kv.split("=", 1)
                                                                   for kv in pairs))))
    busy_counts = [int(b) for b in args.busy.split(",")]
    times: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for model in models:
                workdir = prepared(model, Path(tmp))
                order = engines if r % 2 == 0 else engines[::-1]
                for busy in busy_counts:
                    for label, engine, python, worker_env in order:
                        spinners = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
                        for p in spinners:
                            p.start()
                        try:
                            out = subprocess.run(
                                [python, __file__, "--worker", engine, "--workdir",
                                 str(workdir), "--models", model, "--threads",
                                 str(args.threads), "--seconds", str(args.seconds)],
                                capture_output=True, text=True, check=True,
                                env=worker_env).stdout
                        finally:
                            for p in spinners:
                                p.terminate()
                                p.join()
                        result = json.loads(out.strip().splitlines()[-1])
                        times.setdefault((model, label, busy), []).extend(result["times"])
    print(f"{args.threads} threads, batch 1, {args.rounds} round(s) of {args.seconds:g} s each; "
          f"load before: {os.getloadavg()[0]:.2f}")
    print("| model | engine | busy processes | calls | best ms | median ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, label, busy), ms in times.items():
        s = summary(ms)
        print(f"| {model} | {label} | {busy} | {s['calls']} | {s['best']:.3f} | "
              f"{s['median']:.3f} | {s['p99']:.2f} | {s['max']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"|".join(map(str, k)): v for k, v in times.items()}))


if __name__ == "__main__":
    main()
