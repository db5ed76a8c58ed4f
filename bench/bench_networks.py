"""Whole-network benchmark: cnnc vs PyTorch, ONNX Runtime and OpenVINO; same weights, outputs
compared.

    .venv/bin/pip install torch==2.13.0 openvino matplotlib   # once (make bench-deps)
    .venv/bin/python bench/bench_networks.py [--models resnet18 vgg16] [--batches 1 8]
        [--engines cnnc cnnc-O0 cnnc-avx2 torch onnxruntime openvino]

One driver process prepares weights, inputs and the ONNX file, then runs each engine in its own
worker process (their thread pools must not fight), all limited to the same thread count. The
cnnc worker runs twice on a fresh cache: the first compile is cold, the second loads from the
cache. Results go to bench/results/networks.json and .png, and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _median_time(fn, repeat: int, min_time: float = 1.0) -> tuple[float, list[float]]:
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


# -- workers ----------------------------------------------------------------------------------

def worker(engine: str, workdir: Path, model: str, batch: int, threads: int, repeat: int) -> dict:
    x = np.load(workdir / f"x{batch}.npy")
    result: dict = {"engine": engine, "model": model, "batch": batch}
    if engine.startswith("cnnc"):
        import numba

        import cnnc
        from cnnc.runtime.weights import load_weights

        numba.set_num_threads(threads)
        graph = cnnc.load(model)
        params = load_weights(graph, workdir / "weights.npz")
        t0 = time.perf_counter()
        # cnnc[-O<level>][-<target>][-<layout>]: e.g. cnnc-O0, cnnc-avx2 (8-lane kernels on
        # any CPU), cnnc-NHWC
        from cnnc.compiler.types import LAYOUT_CHOICES

        options = engine.split("-")[1:]
        level = next((int(o[1:]) for o in options if o.startswith("O")), 2)
        layout = next((o for o in options if o in LAYOUT_CHOICES), "auto")
        target = next((o for o in options if not o.startswith("O") and o != layout), "cpu")
        compiled = cnnc.compile(graph, weights=params, opt_level=level, target=target,
                                layout=layout)
        result.update(compiled.stats())
        compiled(x)
        result["compile_s"] = time.perf_counter() - t0
        run = lambda: compiled(x)  # noqa: E731
    elif engine == "torch":
        import torch

        sys.path.insert(0, str(HERE))
        from torch_graph import TorchGraph

        import cnnc
        from cnnc.runtime.weights import load_weights

        torch.set_num_threads(threads)
        graph = cnnc.load(model)
        tg = TorchGraph(graph, load_weights(graph, workdir / "weights.npz"))
        name = next(iter(graph.inputs))
        run = lambda: tg({name: x})  # noqa: E731
    elif engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(workdir / "model.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = lambda: sess.run(None, {name: x})  # noqa: E731
    elif engine == "openvino":
        import openvino as ov

        core = ov.Core()
        # f32 everywhere: OpenVINO's CPU plugin otherwise runs bf16 or f16 where the CPU has it
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        net = core.compile_model(core.read_model(str(workdir / "model.onnx")), "CPU", config)
        request = net.create_infer_request()
        run = lambda: request.infer({0: x})[net.output(0)]  # noqa: E731
    else:
        raise SystemExit(f"unknown engine {engine}")
    median, times = _median_time(run, repeat)
    out = run()
    first = out if isinstance(out, np.ndarray) else (
        next(iter(out.values())) if isinstance(out, dict) else out[0])
    np.save(workdir / f"out_{engine}_{batch}.npy", np.asarray(first, np.float32))
    result.update(median_ms=median * 1e3, runs=len(times), images_per_s=batch / median)
    return result


def spawn(engine: str, workdir: Path, model: str, batch: int, threads: int, repeat: int,
          env: dict | None = None) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", engine, "--workdir", str(workdir),
           "--models", model, "--batches", str(batch), "--threads", str(threads),
           "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        print(f"  {engine} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- driver -----------------------------------------------------------------------------------

def prepare(model: str, batches: list[int], workdir: Path) -> dict:
    import cnnc
    from cnnc.runtime.onnx import export_onnx
    from cnnc.runtime.reference import run_reference
    from cnnc.runtime.summary import summarize
    from cnnc.runtime.weights import init_params, save_weights

    graph = cnnc.load(model)
    params = init_params(graph, seed=0)
    save_weights(params, workdir / "weights.npz")
    export_onnx(graph, params, workdir / "model.onnx")
    shape = graph.node(next(iter(graph.inputs.values()))).type.shape
    rng = np.random.default_rng(0)
    for b in batches:
        np.save(workdir / f"x{b}.npy", rng.standard_normal((b,) + shape).astype(np.float32))
    for b in batches:  # the float64 reference of each batch's first image
        x1 = np.load(workdir / f"x{b}.npy")[:1]
        ref = next(iter(run_reference(graph, {next(iter(graph.inputs)): x1}, params).values()))
        np.save(workdir / f"ref{b}.npy", ref)
    return {"flops": summarize(graph).flops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--engines", nargs="+", default=["cnnc", "torch", "onnxruntime", "openvino"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peak", type=float, default=166.0,
                    help="nominal fp32 peak GFLOP/s: 2 cores x 32 flop/cycle x 2.6 GHz")
    ap.add_argument("--worker")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.workdir), args.models[0],
                                args.batches[0], args.threads, args.repeat)))
        return

    sys.path.insert(0, str(HERE))
    from common import measure_peak

    from cnnc.compiler.target import host_target

    peaks = {lanes: measure_peak(args.threads, lanes=lanes) for lanes in (8, 16)}
    # The machine's peak: 16-lane FMAs with AVX-512 (zmm), 8-lane otherwise.
    measured = peaks[host_target().lanes]
    print(f"measured FMA peak on {args.threads} threads: 8 lanes {peaks[8]:.0f} GFLOP/s, "
          f"16 lanes {peaks[16]:.0f} GFLOP/s (target {host_target()})", flush=True)
    rows = []
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            info = prepare(model, args.batches, workdir)
            for batch in args.batches:
                ref = np.load(workdir / f"ref{batch}.npy")
                results = {}
                for engine in args.engines:
                    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                    if engine.startswith("cnnc"):
                        env["CNNC_CACHE_DIR"] = str(workdir / "cache")
                        cold = spawn(engine, workdir, model, batch, args.threads, 1, env)
                        res = spawn(engine, workdir, model, batch, args.threads, args.repeat,
                                    env)
                        if res and cold:
                            res["cold_compile_s"] = cold["compile_s"]
                            res["cached_compile_s"] = res.pop("compile_s")
                    else:
                        res = spawn(engine, workdir, model, batch, args.threads, args.repeat,
                                    env)
                    if res is None:
                        continue
                    out = np.load(workdir / f"out_{engine}_{batch}.npy")[:1]
                    res["max_rel_err_vs_fp64"] = float(np.abs(out - ref).max() /
                                                       max(1.0, np.abs(ref).max()))
                    gflops = info["flops"] * batch / (res["median_ms"] / 1e3) / 1e9
                    res["gflops"] = gflops
                    res["pct_peak"] = 100 * gflops / args.peak
                    res["pct_measured_peak"] = 100 * gflops / measured
                    results[engine] = res
                    print(f"{model} b{batch} {engine}: {res['median_ms']:.1f} ms", flush=True)
                base = results.get("torch")
                peers = [r["median_ms"] for e, r in results.items() if not e.startswith("cnnc")]
                for res in results.values():
                    if base:
                        res["speedup_vs_torch"] = base["median_ms"] / res["median_ms"]
                    if peers:
                        res["speedup_vs_best_peer"] = min(peers) / res["median_ms"]
                    rows.append(res)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "networks.json").write_text(json.dumps(rows, indent=2))
    print_table(rows)
    chart(rows, RESULTS / "networks.png")


def print_table(rows: list[dict]) -> None:
    print("\n| model | batch | engine | ms | images/s | GFLOP/s | % measured peak | vs torch | "
          "vs best peer | kernels/call | max rel err | compile cold / cached s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    def ratio(r: dict, key: str) -> str:  # empty where the peer did not run
        return f"{r[key]:.2f}x" if key in r and np.isfinite(r[key]) else ""

    for r in rows:
        comp = (f"{r['cold_compile_s']:.1f} / {r['cached_compile_s']:.2f}"
                if "cold_compile_s" in r else "")
        print(f"| {r['model']} | {r['batch']} | {r['engine']} | {r['median_ms']:.1f} | "
              f"{r['images_per_s']:.1f} | {r['gflops']:.1f} | {r['pct_measured_peak']:.0f}% | "
              f"{ratio(r, 'speedup_vs_torch')} | {ratio(r, 'speedup_vs_best_peer')} | "
              f"{r.get('kernels per call', '')} | "
              f"{r['max_rel_err_vs_fp64']:.1e} | {comp} |")


def chart(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart)")
        return
    groups = sorted({(r["model"], r["batch"]) for r in rows})
    engines = sorted({r["engine"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(engines))
    for i, engine in enumerate(engines):
        vals = [next((r["gflops"] for r in rows if (r["model"], r["batch"]) == g and
                      r["engine"] == engine), 0) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=engine)
    ax.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{m}\nbatch {b}" for m, b in groups])
    ax.set_ylabel("GFLOP/s (2 threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"chart: {path}")


if __name__ == "__main__":
    main()
