"""Helpers shared by the benchmarks: timing, worker processes, tables and charts. The machinery
itself (timing, the FMA peak, workers, tables, charts) is in `cnnc.runtime.bench`, which
`cnnc bench` uses too; these are the forms the scripts call."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from llvmlite import binding

from cnnc.runtime import bench
from cnnc.runtime.bench import markdown_table, measure_peak  # noqa: F401 - used by the scripts

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# Nominal fp32 peak of this machine kind: 2 FMA units x 8 lanes x 2 flops = 32 flop/cycle/core
# at 2.6 GHz (PERF-NOTES.md). Percentages are of this figure, whatever the CPU boosts to.
NOMINAL_PEAK_PER_CORE = 83.2


def avx2_only_env() -> dict[str, str]:
    """This environment, with Numba told to generate code for an AVX2 CPU (Zen 3) with the
    host's features less every AVX-512 one: on an AVX-512 machine, the proxy for an AVX2 CPU
    with the same 256-bit FMA throughput (Zen 4 for Zen 3); cnnc's host target is then
    ``avx2`` (8 lanes)."""
    feats = binding.get_host_cpu_features()
    off = ("avx512", "evex512", "amx")
    flags = ",".join(("+" if on and not k.startswith(off) else "-") + k
                     for k, on in sorted(feats.items()))
    return dict(os.environ, NUMBA_CPU_NAME="znver3", NUMBA_CPU_FEATURES=flags)


def median_time(fn: Callable[[], object], repeat: int, min_time: float = 0.5,
                max_runs: int = 200) -> tuple[float, float, int]:
    """(median, best, runs) wall time of fn() after one warm-up call."""
    times = bench.time_calls(fn, repeat, min_time, max_runs)
    return bench.tail_ms(times)["median_ms"] / 1e3, min(times), len(times)


def whole_runs(executor, inputs, batch: int, repeat: int,
               clock: Callable[[], float]) -> list[float]:
    """``repeat`` runs of a compiled model's executor on ``inputs`` (flat arrays by input
    node), each timed by ``clock``, after one watched run (kernels loaded, caches filled)."""
    executor.run_watched(inputs, batch, lambda i, a: False)
    whole = []
    for _ in range(repeat):
        t0 = clock()
        executor.run(inputs, batch)
        whole.append(clock() - t0)
    return whole


def spawn_worker(script: str, args: list[str], env: dict | None = None,
                 timeout: float = 3600) -> dict | None:
    """Run `python script --worker ...` in a fresh process; its last stdout line is JSON. None
    (and the worker's error printed) when it fails."""
    try:
        return bench.run_worker([sys.executable, script, *args], env, timeout)
    except bench.BenchError as e:
        print(f"  worker {e}", file=sys.stderr)
        return None


def bar_chart(groups: list[str], series: dict[str, list[float]], ylabel: str, path: Path,
              hline: float | None = None) -> None:
    """Grouped bars saved as PNG (``cnnc.runtime.bench.bar_chart``); a note without
    matplotlib."""
    if not bench.installed("matplotlib"):
        print("(matplotlib not installed: no chart; make bench-deps)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    bench.bar_chart(groups, series, ylabel, path, hline)
    print(f"chart: {path}")
