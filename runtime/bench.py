"""Benchmarks against other engines, shared by `cnnc bench` and the scripts in `bench/`.

One driver prepares the weights, the inputs, the ONNX file and the float64 reference once; then
each engine runs in its own worker process (their thread pools must not fight), all limited to
the same thread count, round after round in alternating order, and the times of every round are
pooled into a median, a 99th percentile and a maximum. Each engine's output is compared with the
float64 reference. The peak a register-resident FMA loop reaches on this machine, at the vector
width cnnc compiles for, is measured in the same run, in a worker of its own.

A worker is ``python -m cnnc.runtime.bench ENGINE --workdir DIR ...``: its last line of output
is a JSON object. Engines: ``cnnc[-O<level>][-<target>][-<layout>]`` (``cnnc``, ``cnnc-O0``,
``cnnc-avx2``, ``cnnc-NHWC``), the peers ``torch``, ``onnxruntime`` and ``openvino`` (optional
packages: ``make bench-deps``), and ``peak``, the FMA loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from ..compiler.ir import Graph
from ..compiler.types import LAYOUT_CHOICES
from ..dsl.builder import load_network
from .onnx import export_onnx
from .reference import run_reference
from .weights import init_params, load_weights, save_weights

#: The other engines, by the name of the Python package each needs.
PEERS = ("torch", "onnxruntime", "openvino")


class BenchError(Exception):
    """A worker process failed: its message ends with the tail of the worker's error output."""


# -- timing -----------------------------------------------------------------------------------

def time_calls(fn: Callable[[], object], repeat: int, min_time: float = 0.0,
               max_runs: int = 200) -> list[float]:
    """Wall times of fn() after one warm-up call: at least ``repeat`` calls, more until
    ``min_time`` seconds have passed (at most ``max_runs``)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and
                                  len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def tail_ms(times: Sequence[float]) -> dict[str, float]:
    """Median, 99th percentile and maximum of times in seconds, in milliseconds."""
    return {"median_ms": float(np.median(times)) * 1e3,
            "p99_ms": float(np.percentile(times, 99)) * 1e3,
            "max_ms": float(max(times)) * 1e3}


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
    extension the kernels use: the peak a kernel of that width can reach on this machine. The
    best of the loops run in ``seconds`` (at least one)."""
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
    while best == 0.0 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fma_loop(init, out, n_iter, threads)
        dt = time.perf_counter() - t0
        best = max(best, threads * n_iter * 12 * lanes * 2 / dt / 1e9)
    return best


# -- worker processes -------------------------------------------------------------------------

def installed(package: str) -> bool:
    """Whether an optional package (a peer, matplotlib) can be imported."""
    return importlib.util.find_spec(package) is not None


def engine_env(threads: int, cache_dir: Path | None = None) -> dict[str, str]:
    """The environment of a worker: this one, with OpenMP limited to ``threads`` and, when
    given, cnnc's kernel cache in ``cache_dir``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if cache_dir is not None:
        env["CNNC_CACHE_DIR"] = str(cache_dir)
    return env


def run_worker(cmd: Sequence[str], env: dict[str, str] | None = None,
               timeout: float = 3600) -> dict:
    """Run a worker command in a fresh process; its last line of output is JSON."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd[1:])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spawn_engine(engine: str, workdir: Path, model: str, batch: int, threads: int,
                 repeat: int, min_time: float = 0.0, env: dict[str, str] | None = None,
                 seconds: float = 1.0) -> dict:
    """One worker process for ``engine`` (see ``run_engine``)."""
    cmd = [sys.executable, "-m", __name__, engine, "--workdir", str(workdir), "--model", model,
           "--batch", str(batch), "--threads", str(threads), "--repeat", str(repeat),
           "--min-time", str(min_time), "--seconds", str(seconds)]
    return run_worker(cmd, env if env is not None else engine_env(threads))


def spawn_peak(threads: int, lanes: int, seconds: float = 1.0) -> float:
    """``measure_peak`` in a worker process of its own."""
    return spawn_engine(f"peak{lanes}", Path("."), "", 1, threads, 0, seconds=seconds)["gflops"]


def prepare(graph: Graph, batches: Sequence[int], workdir: Path) -> None:
    """Write what every worker reads into ``workdir``: the weights (``weights.npz``, seeded),
    the ONNX file, one random input per batch size (``x{batch}.npy``) and the float64 reference
    output of its first image (``ref{batch}.npy``)."""
    params = init_params(graph, seed=0)
    save_weights(params, workdir / "weights.npz")
    export_onnx(graph, params, workdir / "model.onnx")
    name = next(iter(graph.inputs))
    shape = graph.node(graph.inputs[name]).type.shape
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        np.save(workdir / f"x{b}.npy", x)
        ref = next(iter(run_reference(graph, {name: x[:1]}, params).values()))
        np.save(workdir / f"ref{b}.npy", ref)


def onnxruntime_runner(path: Path, x: np.ndarray, threads: int) -> Callable[[], object]:
    """One ONNX Runtime call of the model at ``path`` on ``x`` (its first input), on
    ``threads`` intra-op threads and one inter-op thread (the CPU provider)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def _runner(engine: str, workdir: Path, model: str, x: np.ndarray, threads: int,
            result: dict) -> Callable[[], object]:
    """Load ``engine`` with the prepared weights; the function that runs it once on x."""
    if engine.startswith("cnnc"):
        import numba

        from .model import compile as compile_model

        numba.set_num_threads(threads)
        graph = load_network(model)
        params = load_weights(graph, workdir / "weights.npz")
        t0 = time.perf_counter()
        options = engine.split("-")[1:]
        level = next((int(o[1:]) for o in options if o.startswith("O")), 2)
        layout = next((o for o in options if o in LAYOUT_CHOICES), "auto")
        target = next((o for o in options if not o.startswith("O") and o != layout), "cpu")
        compiled = compile_model(graph, weights=params, opt_level=level, target=target,
                                 layout=layout)
        result.update(compiled.stats())
        compiled(x)
        result["compile_s"] = time.perf_counter() - t0
        return lambda: compiled(x)
    if engine == "torch":
        import torch

        from .torch_graph import TorchGraph  # needs torch

        torch.set_num_threads(threads)
        graph = load_network(model)
        tg = TorchGraph(graph, load_weights(graph, workdir / "weights.npz"))
        name = next(iter(graph.inputs))
        return lambda: tg({name: x})
    if engine == "onnxruntime":
        return onnxruntime_runner(workdir / "model.onnx", x, threads)
    if engine == "openvino":
        import openvino as ov

        core = ov.Core()
        # f32 everywhere: OpenVINO's CPU plugin otherwise runs bf16 or f16 where the CPU has it
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        net = core.compile_model(core.read_model(str(workdir / "model.onnx")), "CPU", config)
        request = net.create_infer_request()
        return lambda: request.infer({0: x})[net.output(0)]
    raise BenchError(f"unknown engine {engine!r}: cnnc[-O<level>][-<target>][-<layout>], "
                     f"{', '.join(PEERS)}")


def run_engine(engine: str, workdir: Path, model: str, batch: int, threads: int, repeat: int,
               min_time: float = 0.0) -> dict:
    """The body of a worker: load ``engine``, time it on ``x{batch}.npy`` (``time_calls``), save
    its output as ``out_{engine}_{batch}.npy``; the result holds the times in seconds."""
    x = np.load(workdir / f"x{batch}.npy")
    result: dict = {"engine": engine, "model": model, "batch": batch}
    run = _runner(engine, workdir, model, x, threads, result)
    result["times"] = time_calls(run, repeat, min_time)
    out = run()
    first = out if isinstance(out, np.ndarray) else (
        next(iter(out.values())) if isinstance(out, dict) else out[0])
    np.save(workdir / f"out_{engine}_{batch}.npy", np.asarray(first, np.float32))
    return result


# -- the driver -------------------------------------------------------------------------------

def alternating(engines: Sequence[str], rounds: int) -> list[str]:
    """The order the workers run in: every engine once per round, every other round reversed,
    so no engine always runs first on a cool machine or right after the same neighbour."""
    order: list[str] = []
    for r in range(rounds):
        order += list(engines) if r % 2 == 0 else list(reversed(engines))
    return order


def max_rel_err(workdir: Path, engine: str, batch: int) -> float:
    """The largest difference between the engine's output for the first image and the float64
    reference, relative to the reference's largest magnitude (at least 1)."""
    ref = np.load(workdir / f"ref{batch}.npy")
    out = np.load(workdir / f"out_{engine}_{batch}.npy")[:1]
    if out.shape != ref.shape:
        raise BenchError(f"{engine}: output shape {out.shape}, the reference's {ref.shape}")
    return float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))


def bench_engines(engines: Sequence[str], workdir: Path, model: str, batch: int, threads: int,
                  *, rounds: int, repeat: int, min_time: float, flops: int, peak: float,
                  env: dict[str, str] | None = None,
                  progress: Callable[[str, bool], None] | None = None) -> list[dict]:
    """Run ``engines`` in ``rounds`` alternating rounds of worker processes; one row per engine:
    times pooled over the rounds (median, p99, max in ms), GFLOP/s and percent of ``peak``
    (``flops`` per image), the output's error against the float64 reference, and for cnnc
    engines the ratio of their median to the best peer's (``vs_best_peer``, below 1 is faster).
    ``progress(engine, finished)`` is called before and after each worker."""
    times: dict[str, list[float]] = {e: [] for e in engines}
    rows: dict[str, dict] = {}
    for engine in alternating(engines, rounds):
        if progress:
            progress(engine, False)
        res = spawn_engine(engine, workdir, model, batch, threads, repeat, min_time, env)
        if progress:
            progress(engine, True)
        times[engine] += res.pop("times")
        rows.setdefault(engine, res)
    for engine, row in rows.items():
        row.update(tail_ms(times[engine]), runs=len(times[engine]))
        row["images_per_s"] = batch / (row["median_ms"] / 1e3)
        row["gflops"] = flops * batch / (row["median_ms"] / 1e3) / 1e9
        row["pct_peak"] = 100 * row["gflops"] / peak
        row["max_rel_err"] = max_rel_err(workdir, engine, batch)
    peers = [r["median_ms"] for e, r in rows.items() if e in PEERS]
    for engine, row in rows.items():
        if engine.startswith("cnnc") and peers:
            row["vs_best_peer"] = row["median_ms"] / min(peers)
    return list(rows.values())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def bar_chart(groups: list[str], series: dict[str, list[float]], ylabel: str,
              out: Path | IO[bytes], hline: float | None = None) -> None:
    """Grouped bars (one group per layer or network, one bar per engine) saved as PNG to a path
    or an open binary file. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if hline:
        ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
        ax.text(len(groups) - 0.5, hline, " peak", va="bottom", ha="right", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)


def _worker_main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="one benchmark worker (see cnnc.runtime.bench)")
    ap.add_argument("engine")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=1.0, help="the peak loop's time")
    args = ap.parse_args(argv)
    if args.engine.startswith("peak"):
        lanes = int(args.engine[4:])
        result = {"engine": args.engine, "gflops": measure_peak(args.threads, args.seconds,
                                                                lanes)}
    else:
        result = run_engine(args.engine, args.workdir, args.model, args.batch, args.threads,
                            args.repeat, args.min_time)
    print(json.dumps(result))


if __name__ == "__main__":
    _worker_main()
