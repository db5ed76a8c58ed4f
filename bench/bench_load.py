"""Latency under load: a model called at batch 1 in a loop while other processes keep every
core busy, against the same loop on a quiet machine: median, p99 and the worst call.

    .venv/bin/python bench/bench_load.py [--model lenet5] [--seconds 6] [--busy 2]

Each measurement runs in its own process (a fresh thread pool); ``--busy`` processes spin on
the cores meanwhile. The numbers go to stdout as a markdown table (bench/RESULTS.md keeps the
measured ones)."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time


def spin() -> None:
    while True:
        pass


def measure(model: str, seconds: float) -> dict[str, float]:
    import numpy as np

    import cnnc

    m = cnnc.compile(model)
    (image,) = m.graph.inputs.values()
    shape = (1,) + m.graph.node(image).type.shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(100):
        m(x)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        m(x)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"calls": len(ms), "median": float(np.median(ms)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args.model, args.seconds)))
        return
    rows = []
    for label, busy in (("quiet", 0), (f"{args.busy} busy processes", args.busy)):
        spinners = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            out = subprocess.run([sys.executable, __file__, "--worker", "--model", args.model,
                                  "--seconds", str(args.seconds)], capture_output=True,
                                 text=True, check=True).stdout
        finally:
            for p in spinners:
                p.terminate()
        rows.append((label, json.loads(out.strip().splitlines()[-1])))
    print(f"| {args.model}, batch 1 | calls | median ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['calls']} | {r['median']:.3f} | {r['p99']:.2f} | {r['max']:.1f} |")


if __name__ == "__main__":
    main()
