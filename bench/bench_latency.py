"""Small networks' latency at batch 1: min and median of ``model(x)`` over many calls, for
this checkout's cnnc beside another checkout's and ONNX Runtime.

    .venv/bin/python bench/bench_latency.py [--models lenet5 squeezenet1_1 mobilenet_v2]
        [--threads 1 2] [--rounds 3] [--calls 2000] [--base /path/to/other/.venv/bin/python]
        [--base-cache /tmp/cache-base]

One worker process per engine and round (``cnnc.runtime.bench``'s worker: the same weights
and input, its output saved and compared with the float64 reference), in alternating order
round by round, each limited to ``--threads`` threads; ``--calls`` timed calls a worker after
one warm-up (fewer where they would take more than a few seconds: at least 200). ``--base``:
the Python of another checkout's virtual environment, whose cnnc runs as the engine ``base``
(its own kernel cache: ``--base-cache``). Times are pooled over the rounds; the table is
printed as markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import cnnc
from cnnc.runtime.bench import engine_env, installed, max_rel_err, prepare, run_worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402


def worker(python: str, engine: str, workdir: Path, model: str, threads: int, calls: int,
           cache: str | None) -> list[float]:
    """The wall times (seconds) of one worker process's timed calls."""
    cmd = [python, "-m", "cnnc.runtime.bench", engine, "--workdir", str(workdir),
           "--model", model, "--batch", "1", "--threads", str(threads), "--repeat",
           str(calls)]
    env = engine_env(threads, Path(cache) if cache else None)
    return run_worker(cmd, env)["times"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "squeezenet1_1", "mobilenet_v2"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--base", help="another checkout's virtual environment's python")
    ap.add_argument("--base-cache", help="the base engine's kernel cache directory")
    args = ap.parse_args()
    engines = {"cnnc": sys.executable}
    if args.base:
        engines["base"] = args.base
    if installed("onnxruntime"):
        engines["onnxruntime"] = sys.executable
    rows = []
    for model in args.models:
        calls = args.calls  # fewer for a model of milliseconds a call: about 2 s a worker
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            prepare(cnnc.load(model), [1], workdir)
            for threads in args.threads:
                times: dict[str, list[float]] = {e: [] for e in engines}
                order = list(engines)
                for r in range(args.rounds):
                    for engine in order if r % 2 == 0 else order[::-1]:
                        # the base checkout's worker runs its cnnc as "cnnc"
                        name = "cnnc" if engine == "base" else engine
                        cache = args.base_cache if engine == "base" else None
                        t = worker(engines[engine], name, workdir, model, threads, calls,
                                   cache)
                        err = max_rel_err(workdir, name, 1)  # its output, float64's
                        if err > 1e-3:
                            raise SystemExit(f"{engine} {model}: relative error {err:.3g}")
                        times[engine] += t
                        calls = max(200, min(calls, int(2.0 / float(np.median(t)))))
                for engine, t in times.items():
                    us = np.asarray(t) * 1e6
                    rows.append([model, str(threads), engine, str(len(us)),
                                 f"{us.min():.1f}", f"{np.median(us):.1f}"])
    print(markdown_table(["model", "threads", "engine", "calls", "min (us)", "median (us)"],
                         rows))


if __name__ == "__main__":
    main()
