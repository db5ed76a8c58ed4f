"""Memory-bound kernels against this machine's memory bandwidth: every step of a compiled
network timed kernel call by kernel call, the bytes it reads and writes, its GB/s, and the
share of the measured bandwidth it reaches.

    NUMBA_NUM_THREADS=2 .venv/bin/python bench/bench_memory_bound.py
        [--models mobilenet_v2 efficientnet_b0 squeezenet1_1] [--batch 1] [--repeat 20]
        [--threads 2] [--top 12] [--cpu] [--avx2-only] [--target avx2|avx512]

Bandwidth, measured in the same run on ``--threads`` threads (Numba, parallel loops over
arrays of 64 Mi floats, far past the last-level cache): *copy* (``a[i] = b[i]``) and *triad*
(``a[i] = b[i] + s * c[i]``), counted as STREAM counts them (8 and 12 bytes an element: the
write-allocate read of ``a`` is not counted), the best of several runs. A step's bytes are its
arguments' sizes: each tensor it reads (the arena's storage of the value, channel padding
included), its output, and its packed constants; scratch is left out. A step is
*memory-bound* where its arithmetic intensity (FLOP per byte) is below the machine's balance
(the FMA peak over the triad bandwidth, both measured here): no kernel can then run faster than
its bytes at the bandwidth. At batch 1 most activations fit in the last-level cache, so a step
can pass 100% of the DRAM bandwidth: the column says how far from the memory system's limit a
kernel is, not that it is wrong.

``--cpu`` times in CPU time of the calling thread (``time.thread_time``) instead of wall time:
with ``--threads 1`` a loaded machine's other processes then count less (Numba's OpenMP layer
runs a one-thread parallel region on the calling thread; with more threads the workers' time
would be missed).

``--avx2-only`` runs the measurement in a process whose Numba generates AVX2 code only (the
environment of ``bench/common.py: avx2_only_env``, as ``bench_tiles.py --avx2-only``): the
model is compiled for the 8-lane ``avx2`` target, the FMA peak measured at 8 lanes. ``--target``
names the target without changing the process (``avx2`` on an AVX-512 machine: 8-lane kernels
in AVX-512 code).

Each step's row has the median of its calls' sums over the runs (``seconds``) and the minimum
(``seconds_min``); whole runs likewise.

Results: bench/results/memory_bound[_<target>][_avx2only].json and markdown tables (by kind of
op, then the slowest memory-bound steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numba
import numpy as np

import cnnc
from cnnc.compiler.ops import get_op
from cnnc.compiler.target import resolve_target
from cnnc.runtime.bench import measure_peak
from cnnc.runtime.executor import flat_input

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, avx2_only_env, markdown_table, whole_runs  # noqa: E402


@numba.njit(parallel=True, cache=True)
def _copy(a, b):
    for i in numba.prange(a.size):
        a[i] = b[i]


@numba.njit(parallel=True, cache=True)
def _triad(a, b, c, s):
    for i in numba.prange(a.size):
        a[i] = b[i] + s * c[i]


def measure_bandwidth(threads: int, floats: int = 1 << 26, runs: int = 6) -> dict[str, float]:
    """GB/s of copy and triad over arrays of ``floats`` on ``threads`` threads (STREAM's
    counting), the best of ``runs``."""
    numba.set_num_threads(threads)
    a, b, c = (np.full(floats, v, np.float32) for v in (0.0, 1.0, 2.0))
    best = {"copy": 0.0, "triad": 0.0}
    for _ in range(runs):
        t0 = time.perf_counter()
        _copy(a, b)
        t1 = time.perf_counter()
        _triad(a, b, c, np.float32(3.0))
        t2 = time.perf_counter()
        best["copy"] = max(best["copy"], 8 * floats / (t1 - t0) / 1e9)
        best["triad"] = max(best["triad"], 12 * floats / (t2 - t1) / 1e9)
    return best


def step_bytes(executor, arena, index: int) -> int:
    """Bytes step ``index`` reads and writes: its tensor arguments' storage and its packed
    constants (scratch left out; a tensor passed twice counted once)."""
    plan = executor.plan
    step = plan.steps[index]
    seen: set[tuple[str, object]] = set()
    floats = 0
    for call in step.calls:
        for arg in call.args:
            key = (arg.kind, arg.ref)
            if key in seen:
                continue
            seen.add(key)
            if arg.kind == "value":
                floats += value_floats(executor, arena, arg.ref)
            elif arg.kind == "output":
                floats += value_floats(executor, arena, step.output)
            elif arg.kind == "const":
                floats += int(np.asarray(executor.consts[index][arg.ref]).size)
    return 4 * floats


def value_floats(executor, arena, node: int) -> int:
    """Floats of a tensor value as the arena stores it (blocked storage with its padding)."""
    plan = executor.plan
    storage = plan.buffers.storage.get(node)
    if storage is not None:
        return arena.n * storage.floats
    t = plan.graph.node(node).type
    return (arena.n if t.batched else 1) * t.size


def step_flops(plan, index: int, n: int) -> int:
    node = plan.graph.node(plan.steps[index].node)
    in_types = [plan.graph.node(i).type for i in node.inputs]
    return 2 * n * get_op(node.op).macs(in_types, node.type, node.attrs)


def kind_of(plan, index: int) -> str:
    """The step's op, ``depthwise`` before it for a convolution with a group per channel."""
    step = plan.steps[index]
    node = plan.graph.node(step.node)
    groups = node.attrs.get("groups", 1)
    if step.op.startswith("conv") and groups > 1 and \
            groups == plan.graph.node(node.inputs[0]).type.shape[0]:
        return "depthwise " + step.op
    return step.op


def profile(model, batch: int, repeat: int, clock=time.perf_counter) -> dict:
    """The median of whole runs, and per step: op, name, median seconds of its calls (each
    timed alone: a kernel's own parallel-region start included) summed, bytes, FLOPs; seconds
    of ``clock``."""
    ex = model.executor
    rng = np.random.default_rng(0)
    graph = ex.plan.graph
    inputs = {nid: flat_input(rng.standard_normal((batch, *graph.node(nid).type.shape))
                              .astype(np.float32)) for nid in graph.inputs.values()}
    times: dict[int, list[float]] = defaultdict(list)

    def timed(index: int, position: int, run) -> None:
        t0 = clock()
        run()
        times[index].append(clock() - t0)

    whole = whole_runs(ex, inputs, batch, repeat, clock)
    per_run: list[dict[int, float]] = []
    for _ in range(repeat):
        times.clear()
        ex.run_watched(inputs, batch, lambda i, a: False, each_call=timed)
        per_run.append({i: sum(ts) for i, ts in times.items()})
    arena = ex.arena(batch)
    rows = []
    for index, step in enumerate(ex.plan.steps):
        if not step.calls:
            continue
        rows.append({"step": step.name, "op": kind_of(ex.plan, index),
                     "seconds": statistics.median(r.get(index, 0.0) for r in per_run),
                     "seconds_min": min(r.get(index, 0.0) for r in per_run),
                     "bytes": step_bytes(ex, arena, index),
                     "flops": step_flops(ex.plan, index, batch)})
    return {"whole_run_s": statistics.median(whole), "whole_run_min_s": min(whole),
            "steps": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+",
                    default=["mobilenet_v2", "efficientnet_b0", "squeezenet1_1"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--cpu", action="store_true",
                    help="CPU time of the calling thread instead of wall time (with --threads 1)")
    ap.add_argument("--avx2-only", action="store_true",
                    help="generate AVX2 code only (the Zen 3 proxy on an AVX-512 machine), "
                         "8-lane kernels")
    ap.add_argument("--target", default="cpu",
                    help="the target cnnc compiles for (cpu: this process's CPU)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.avx2_only and not args.worker:
        # the same measurement in a process whose Numba generates AVX2 code only
        cmd = [sys.executable, __file__, "--worker", *sys.argv[1:]]
        raise SystemExit(subprocess.run(cmd, env=avx2_only_env()).returncode)
    target = resolve_target("avx2" if args.avx2_only else args.target)
    bandwidth = measure_bandwidth(args.threads)
    # three arrays of 1 Mi floats (12 MB): in the last-level cache of the machines we run on
    cached = measure_bandwidth(args.threads, 1 << 20, runs=200)["triad"]
    peak = measure_peak(args.threads, lanes=target.lanes)
    balance = peak / bandwidth["triad"]
    print(f"target {target}{' (AVX2 code only)' if args.avx2_only else ''}, "
          f"{args.threads} threads: copy {bandwidth['copy']:.1f} GB/s, triad "
          f"{bandwidth['triad']:.1f} GB/s (12 MB in cache: triad {cached:.1f} GB/s), FMA peak "
          f"{peak:.0f} GFLOP/s, balance {balance:.1f} FLOP/byte", flush=True)
    numba.set_num_threads(args.threads)
    out = {"bandwidth_gbs": bandwidth, "cached_triad_gbs": cached, "peak_gflops": peak,
           "threads": args.threads, "batch": args.batch, "target": target.name,
           "avx2_only": args.avx2_only,
           "clock": "thread CPU" if args.cpu else "wall", "models": {}}
    for name in args.models:
        model = cnnc.compile(name, target=target)
        prof = profile(model, args.batch, args.repeat,
                       time.thread_time if args.cpu else time.perf_counter)
        out["models"][name] = prof
        rows = prof["steps"]
        total = sum(r["seconds"] for r in rows)
        bound = [r for r in rows if r["flops"] < balance * r["bytes"]]
        kinds: dict[str, list[dict]] = defaultdict(list)
        for r in bound:
            kinds[r["op"]].append(r)
        print(f"\n### {name}, batch {args.batch}: a run {1e3 * prof['whole_run_s']:.2f} ms "
              f"(best {1e3 * prof['whole_run_min_s']:.2f}), "
              f"its steps one by one {1e3 * total:.2f} ms, "
              f"{1e3 * sum(r['seconds'] for r in bound):.2f} ms in {len(bound)} memory-bound "
              f"steps\n")
        table = []
        for op, rs in sorted(kinds.items(), key=lambda kv: -sum(r["seconds"] for r in kv[1])):
            s = sum(r["seconds"] for r in rs)
            b = sum(r["bytes"] for r in rs)
            table.append([op, str(len(rs)), f"{1e3 * s:.3f}", f"{100 * s / total:.0f}%",
                          f"{b / 1e6:.1f}", f"{b / s / 1e9:.1f}",
                          f"{100 * b / s / 1e9 / bandwidth['triad']:.0f}%",
                          f"{100 * b / s / 1e9 / cached:.0f}%"])
        print(markdown_table(["op", "steps", "ms", "of the model", "MB moved", "GB/s",
                              "of triad", "of cached triad"], table))
        slow = sorted(bound, key=lambda r: -r["seconds"])[: args.top]
        print()
        print(markdown_table(
            ["step", "op", "us", "MB", "GB/s", "of triad", "of cached triad", "FLOP/byte"],
            [[r["step"], r["op"], f"{1e6 * r['seconds']:.1f}", f"{r['bytes'] / 1e6:.2f}",
              f"{r['bytes'] / r['seconds'] / 1e9:.1f}",
              f"{100 * r['bytes'] / r['seconds'] / 1e9 / bandwidth['triad']:.0f}%",
              f"{100 * r['bytes'] / r['seconds'] / 1e9 / cached:.0f}%",
              f"{r['flops'] / r['bytes']:.2f}"] for r in slow]))
    RESULTS.mkdir(exist_ok=True)
    suffix = ("" if args.target == "cpu" and not args.avx2_only else f"_{target}") + \
        ("_avx2only" if args.avx2_only else "")
    (RESULTS / f"memory_bound{suffix}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
