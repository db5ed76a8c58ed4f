"""Whole-network benchmark: cnnc vs PyTorch, ONNX Runtime and OpenVINO; same weights, outputs
compared.

    make bench-deps   # once: OpenVINO and matplotlib (torch and ONNX Runtime: test extras)
    .venv/bin/python bench/bench_networks.py [--models resnet18 vgg16] [--batches 1 8]
        [--engines cnnc cnnc-O0 cnnc-avx2 torch onnxruntime openvino]

The machinery is `cnnc bench`'s (cnnc.runtime.bench), for several models and batch sizes: one
driver process prepares weights, inputs and the ONNX file, then runs each engine in its own
worker process (their thread pools must not fight), all limited to the same thread count, in
alternating rounds; times are pooled into median, p99 and max. The cnnc worker first runs once on
a fresh cache: that compile is cold, the timed ones load from the cache. Results go to
bench/results/networks.json and .png, and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import cnnc
from cnnc.compiler.target import host_target
from cnnc.dsl.errors import DslError
from cnnc.runtime.bench import (
    PEERS,
    BenchError,
    bench_engines,
    engine_env,
    installed,
    measure_peak,
    prepare,
    spawn_engine,
)
from cnnc.runtime.summary import summarize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, bar_chart, markdown_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--engines", nargs="+", default=["cnnc", "torch", "onnxruntime", "openvino"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2,
                    help="worker processes per engine, in alternating order")
    args = ap.parse_args()
    missing = [e for e in args.engines if e in PEERS and not installed(e)]
    for engine in missing:
        print(f"{engine}: not installed, skipped (make bench-deps installs the peers)")
    engines = [e for e in args.engines if e not in missing]
    try:  # every model loaded first: a misspelt name at the end would cost the whole run
        graphs = {model: cnnc.load(model) for model in args.models}
    except DslError as e:
        sys.exit(str(e))

    peaks = {lanes: measure_peak(args.threads, lanes=lanes) for lanes in (8, 16)}
    # The machine's peak: 16-lane FMAs with AVX-512 (zmm), 8-lane otherwise.
    measured = peaks[host_target().lanes]
    print(f"measured FMA peak on {args.threads} threads: 8 lanes {peaks[8]:.0f} GFLOP/s, "
          f"16 lanes {peaks[16]:.0f} GFLOP/s (target {host_target()})", flush=True)
    rows = []
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            graph = graphs[model]
            prepare(graph, args.batches, workdir)
            flops = summarize(graph).flops
            # cnnc's kernels in a fresh cache: the first compile is cold, the timed ones cached
            env = engine_env(args.threads, workdir / "cache")
            for batch in args.batches:
                cold = {}
                for engine in engines:
                    if engine.startswith("cnnc"):
                        try:
                            res = spawn_engine(engine, workdir, model, batch, args.threads, 1,
                                               env=env)
                        except BenchError as e:
                            print(f"  {e}", file=sys.stderr)
                            continue
                        cold[engine] = res["compile_s"]
                results = bench_engines(engines, workdir, model, batch, args.threads,
                                        rounds=args.rounds, repeat=args.repeat, min_time=1.0,
                                        flops=flops, peak=measured, env=env)
                base = next((r for r in results if r["engine"] == "torch"), None)
                for res in results:
                    res["pct_measured_peak"] = res.pop("pct_peak")
                    res["max_rel_err_vs_fp64"] = res.pop("max_rel_err")
                    if res["engine"] in cold:
                        res["cold_compile_s"] = cold[res["engine"]]
                        res["cached_compile_s"] = res.pop("compile_s")
                    if base:
                        res["speedup_vs_torch"] = base["median_ms"] / res["median_ms"]
                    if "vs_best_peer" in res:
                        res["speedup_vs_best_peer"] = 1 / res.pop("vs_best_peer")
                    print(f"{model} b{batch} {res['engine']}: {res['median_ms']:.1f} ms "
                          f"(p99 {res['p99_ms']:.1f}, max {res['max_ms']:.1f})", flush=True)
                    rows.append(res)
    # the peak again after the runs, the higher kept: a neighbour's burst on a shared host
    # during one measurement reads as a lower peak
    again = measure_peak(args.threads, lanes=host_target().lanes)
    if again > measured:
        print(f"FMA peak measured again after the runs: {again:.0f} GFLOP/s (the higher kept)")
        for res in rows:
            res["pct_measured_peak"] = 100 * res["gflops"] / again
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "networks.json").write_text(json.dumps(rows, indent=2))
    print_table(rows)
    chart(rows, RESULTS / "networks.png")


def print_table(rows: list[dict]) -> None:
    def ratio(r: dict, key: str) -> str:  # empty where the peer did not run
        return f"{r[key]:.2f}x" if key in r and np.isfinite(r[key]) else ""

    def compile_s(r: dict) -> str:
        return (f"{r['cold_compile_s']:.1f} / {r['cached_compile_s']:.2f}"
                if "cold_compile_s" in r else "")

    print("\n" + markdown_table(
        ["model", "batch", "engine", "ms", "p99 ms", "max ms", "images/s", "GFLOP/s",
         "% measured peak", "vs torch", "vs best peer", "kernels/call", "max rel err",
         "compile cold / cached s"],
        [[r["model"], str(r["batch"]), r["engine"], f"{r['median_ms']:.1f}",
          f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}", f"{r['images_per_s']:.1f}",
          f"{r['gflops']:.1f}", f"{r['pct_measured_peak']:.0f}%",
          ratio(r, "speedup_vs_torch"), ratio(r, "speedup_vs_best_peer"),
          str(r.get("kernels per call", "")), f"{r['max_rel_err_vs_fp64']:.1e}", compile_s(r)]
         for r in rows]))


def chart(rows: list[dict], path: Path) -> None:
    groups = sorted({(r["model"], r["batch"]) for r in rows})
    engines = sorted({r["engine"] for r in rows})
    series = {e: [next((r["gflops"] for r in rows if (r["model"], r["batch"]) == g and
                        r["engine"] == e), 0) for g in groups] for e in engines}
    bar_chart([f"{m}\nbatch {b}" for m, b in groups], series, "GFLOP/s", path)


if __name__ == "__main__":
    main()
