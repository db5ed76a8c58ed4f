"""Data-parallel scaling on paper: the all-reduce of the flat gradient buffer against the
compute time of a training step, for N = 2 to 1024 machines.

    .venv/bin/python bench/bench_scaling.py [--models resnet18 resnet50] [--batch 8]
        [--step-ms resnet18=753 resnet50=1700]

The message is the gradient buffer (4 bytes per trainable parameter of the zoo network, counted
from its graph). Each step every machine computes its local batch (weak scaling: the global
batch is N times it), then the gradients are all-reduced, not overlapped with the backward
pass; the alpha-beta cost model (alpha: per-message latency, beta: seconds per byte):

- ring (reduce-scatter, then all-gather): ``2 (N - 1) alpha + 2 (N - 1) / N M beta``;
- binary tree (reduce to the root, then broadcast, the whole message each hop):
  ``2 ceil(log2 N) (alpha + M beta)``.

Images/s = N batch / (step + all-reduce); efficiency = step / (step + all-reduce). The table
goes to stdout (markdown) and, with matplotlib, the curves to bench/results/scaling.png.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, markdown_table  # noqa: E402

from cnnc.compiler.autodiff import trainable_params  # noqa: E402
from cnnc.dsl.builder import load_zoo  # noqa: E402
from cnnc.runtime import bench  # noqa: E402

#: Measured ResNet-18 step at batch 8 (bench/RESULTS.md, "Training step, ResNet-18"); ResNet-50
#: is the estimate of the same achieved GFLOP/s on its multiply-accumulates, unless measured.
STEP_MS = {"resnet18": 753.0}

#: Networks between the machines: (name, bandwidth in bytes/s, latency in seconds).
NETWORKS = [("10 GbE", 1.25e9, 50e-6), ("100 Gb InfiniBand", 12.5e9, 3e-6),
            ("1 Gb/s internet", 0.125e9, 20e-3)]
MACHINES = [2 ** k for k in range(1, 11)]


def ring_seconds(n: int, message: float, bandwidth: float, latency: float) -> float:
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * message / bandwidth


def tree_seconds(n: int, message: float, bandwidth: float, latency: float) -> float:
    return 2 * math.ceil(math.log2(n)) * (latency + message / bandwidth)


ALGORITHMS = {"ring": ring_seconds, "tree": tree_seconds}


def gradient_bytes(model: str) -> float:
    graph = load_zoo(model)
    return 4.0 * sum(int(np.prod(p.type.shape)) for p in trainable_params(graph, ()))


def step_seconds(model: str, given: dict[str, float]) -> tuple[float, str]:
    """The compute time of one step at the benchmark's batch: measured, or scaled from
    ResNet-18's by the networks' multiply-accumulates (same achieved GFLOP/s)."""
    if model in given:
        return given[model] / 1e3, "given"
    if model in STEP_MS:
        return STEP_MS[model] / 1e3, "measured"
    from cnnc.compiler.ops import count_macs

    ratio = count_macs(load_zoo(model)) / count_macs(load_zoo("resnet18"))
    return STEP_MS["resnet18"] * ratio / 1e3, f"estimated: {ratio:.2f}x ResNet-18's MACs"


def scaling_rows(step: float, message: float, batch: int) -> list[list[str]]:
    rows = []
    for n in MACHINES:
        row = [str(n)]
        for _, bandwidth, latency in NETWORKS:
            for fn in ALGORITHMS.values():
                comm = fn(n, message, bandwidth, latency)
                row.append(f"{n * batch / (step + comm):,.0f} ({step / (step + comm):.0%})")
        rows.append(row)
    return rows


def last_paying(step: float, message: float, bandwidth: float, latency: float,
                floor: float = 0.5) -> tuple[int, str]:
    """The largest N (power of two up to 1024) at which the better algorithm keeps efficiency
    at ``floor`` or more, and that algorithm; (1, '') if none does at N = 2."""
    best = (1, "")
    for n in MACHINES:
        comm, name = min((fn(n, message, bandwidth, latency), name)
                         for name, fn in ALGORITHMS.items())
        if step / (step + comm) >= floor:
            best = (n, name)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--batch", type=int, default=8, help="images per machine per step")
    ap.add_argument("--step-ms", nargs="*", default=[], metavar="MODEL=MS",
                    help="a measured step time to use instead of the default")
    args = ap.parse_args()
    given = {k: float(v) for k, v in (s.split("=") for s in args.step_ms)}
    head = ["N"] + [f"{alg} {net}" for net, _, _ in NETWORKS for alg in ALGORITHMS]
    curves: dict[str, list[float]] = {}
    for model in args.models:
        step, source = step_seconds(model, given)
        message = gradient_bytes(model)
        print(f"\n### {model}: gradient buffer {message / 1e6:.1f} MB, step {step * 1e3:.0f} ms "
              f"at batch {args.batch} ({source})\n")
        print("images/s (efficiency) at N machines:\n")
        print(markdown_table(head, scaling_rows(step, message, args.batch)))
        for net, bandwidth, latency in NETWORKS:
            n, name = last_paying(step, message, bandwidth, latency)
            print(f"- {net}: efficiency stays at 50% or more up to N = {n} ({name})"
                  if n > 1 else f"- {net}: below 50% already at N = 2")
            comm = {name: [fn(k, message, bandwidth, latency) for k in MACHINES]
                    for name, fn in ALGORITHMS.items()}
            for name, seconds in comm.items():
                curves[f"{model} {name} {net}"] = [k * args.batch / (step + c)
                                                   for k, c in zip(MACHINES, seconds)]
    if bench.installed("matplotlib"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 5.5))
        for label, values in curves.items():
            ax.loglog(MACHINES, values, marker="o", markersize=3, label=label)
        ax.set_xlabel("machines N")
        ax.set_ylabel("images/s")
        ax.legend(fontsize=6)
        fig.tight_layout()
        RESULTS.mkdir(parents=True, exist_ok=True)
        fig.savefig(RESULTS / "scaling.png")
        print(f"\nchart: {RESULTS / 'scaling.png'}")
    else:
        print("\n(matplotlib not installed: no chart; make bench-deps)")


if __name__ == "__main__":
    main()
