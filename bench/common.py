"""Helpers shared by the benchmarks: timing, worker processes, tables and charts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# Nominal fp32 peak of this machine kind: 2 FMA units x 8 lanes x 2 flops = 32 flop/cycle/core
# at 2.6 GHz (PERF-NOTES.md). Percentages are of this figure, whatever the CPU boosts to.
NOMINAL_PEAK_PER_CORE = 83.2


def median_time(fn: Callable[[], object], repeat: int, min_time: float = 0.5,
                max_runs: int = 200) -> tuple[float, float, int]:
    """(median, best, runs) wall time of fn() after one warm-up call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and
                                  len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(min(times)), len(times)


def spawn_worker(script: str, args: list[str], env: dict | None = None,
                 timeout: float = 3600) -> dict | None:
    """Run `python script --worker ...` in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        print(f"  worker {' '.join(args)} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def bar_chart(groups: list[str], series: dict[str, list[float]], ylabel: str, path: Path,
              hline: float | None = None) -> None:
    """Grouped bars (one group per layer or network, one bar per engine) saved as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart; pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if hline:
        ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
        ax.text(len(groups) - 0.5, hline, " nominal peak", va="bottom", ha="right", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"chart: {path}")


_PEAK_KERNEL = '''
from numba import njit, prange
from cnnc.compiler.backends.numba.simd import vadd, vfma, vload{w}, vstore

@njit(parallel=True, fastmath=False, cache=False)
def fma_loop(init, out, n_iter, n_task):
    for t in prange(n_task):
        a0 = vload{w}(init, 0); a1 = vload{w}(init, 1); a2 = vload{w}(init, 2)
        a3 = vload{w}(init, 3); a4 = vload{w}(init, 4); a5 = vload{w}(init, 5)
        a6 = vload{w}(init, 6); a7 = vload{w}(init, 7); a8 = vload{w}(init, 8)
        a9 = vload{w}(init, 9); a10 = vload{w}(init, 10); a11 = vload{w}(init, 11)
        m = vload{w}(init, 32); c = vload{w}(init, 64)
        for i in range(n_iter):
            a0 = vfma(a0, m, c); a1 = vfma(a1, m, c); a2 = vfma(a2, m, c)
            a3 = vfma(a3, m, c); a4 = vfma(a4, m, c); a5 = vfma(a5, m, c)
            a6 = vfma(a6, m, c); a7 = vfma(a7, m, c); a8 = vfma(a8, m, c)
            a9 = vfma(a9, m, c); a10 = vfma(a10, m, c); a11 = vfma(a11, m, c)
        s = vadd(vadd(vadd(a0, a1), vadd(a2, a3)), vadd(vadd(a4, a5), vadd(a6, a7)))
        s = vadd(s, vadd(vadd(a8, a9), vadd(a10, a11)))
        vstore(out, t * {lanes}, s)
'''


def measure_peak(threads: int, seconds: float = 1.0, lanes: int = 8) -> float:
    """GFLOP/s of a register-resident FMA loop (12 independent accumulators of ``lanes`` lanes:
    8 is ymm, 16 is zmm with AVX-512) on ``threads`` threads, through the same Numba vector
    extension the kernels use: the peak a kernel of that width can reach on this machine,
    measured in the same run as the benchmark."""
    import numba

    namespace: dict = {}
    src = _PEAK_KERNEL.format(w="" if lanes == 8 else str(lanes), lanes=lanes)
    exec(src, namespace)  # noqa: S102 - a fixed benchmark kernel, not user input
    fma_loop = namespace["fma_loop"]
    numba.set_num_threads(threads)
    init = np.ones(96, np.float32)
    init[:32] += np.arange(32, dtype=np.float32) * 0.01
    init[32:64], init[64:] = 0.999999, 1e-7
    out = np.zeros(lanes * threads, np.float32)
    fma_loop(init, out, 10, threads)
    n_iter = 1_000_000
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fma_loop(init, out, n_iter, threads)
        dt = time.perf_counter() - t0
        best = max(best, threads * n_iter * 12 * lanes * 2 / dt / 1e9)
    return best
