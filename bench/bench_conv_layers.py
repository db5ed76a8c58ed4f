"""Per-layer convolution benchmark: cnnc's lowerings vs PyTorch, ONNX Runtime and NumPy.

    .venv/bin/pip install torch==2.13.0 matplotlib      # once (CPU build from this disk)
    .venv/bin/python bench/bench_conv_layers.py [--batch 1 8] [--engines ...] [--layers 0 2]

The five ResNet/VGG layers of PERF-NOTES.md at batch 1 and 8. Every engine runs in its own
worker process (thread pools must not fight), all with the same thread count, on the same
inputs and weights; outputs are compared with a float64 reference. Engines:

- `cnnc-direct`: the register-tiled NCHW8c kernel; `kernel` time is the compute kernel alone on
  packed operands (as inside a network whose layout transforms are fused), `e2e` includes
  packing the NCHW input and unpacking the output;
- `cnnc-im2col`: im2col + cnnc's own vectorized GEMM (e2e);
- `torch`: torch.nn.functional.conv2d (PyTorch CPU, oneDNN);
- `onnxruntime`: a one-node Conv model;
- `numpy`: im2col (sliding_window_view) + BLAS sgemm through np.matmul.

Reports GFLOP/s, percent of the nominal fp32 peak (2 cores x 32 flop/cycle x 2.6 GHz = 166) and
the ratio to PyTorch; writes bench/results/conv_layers.json and .png, and prints a markdown
table. Not collected by pytest.

**In the network** (``--networks``): every convolution of compiled zoo networks timed as it
runs inside the network (its operands where the network's other kernels left them, caches as
in a run), call by call through ``Executor.run_watched``:

    NUMBA_NUM_THREADS=1 .venv/bin/python bench/bench_conv_layers.py \
        --networks resnet18 resnet50 vgg16 --batch 1 8 --threads 1 [--repeat 20]

A table per network and batch: each convolution's shape, the algorithm and tile the compiler
chose, its fused epilogue, the compute kernel's ms (its packing and unpacking calls apart, in
``step ms``), GFLOP/s (the convolution's own multiply-adds, 2 FLOPs each) and percent of the
FMA peak measured in the same run on the same threads (``runtime.bench.measure_peak``, at
the host's vector width, the better of a measurement before and one after); for Winograd
layers that is the *effective* rate (direct FLOPs over time), and ``alg GFLOP/s`` the
arithmetic the algorithm itself does (its GEMMs and transforms, ``ConvAlgorithm.work``).
With ``--threads 1`` times are CPU time of the calling thread (other processes' time slices
do not count; Numba runs a one-thread parallel region on the calling thread), with more
threads wall time; each as the minimum over ``--repeat`` runs and as the median (on a
shared 2-core host even one thread's CPU time varies by 20-30% with the other core's cache
and memory traffic: the minimum is the layer undisturbed). Set ``NUMBA_NUM_THREADS`` to
``--threads``: the compiler sizes some kernels' tasks
by it. Writes bench/results/conv_layers_network.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    NOMINAL_PEAK_PER_CORE,
    RESULTS,
    bar_chart,
    markdown_table,
    measure_peak,
    median_time,
    spawn_worker,
    whole_runs,
)

# name, cnnc attrs, input shape (C, H, W)
LAYERS = [
    ("3x3 64->64 @56", dict(out_channels=64, kernel=3, stride=1, pads=1), (64, 56, 56)),
    ("1x1 256->64 @56", dict(out_channels=64, kernel=1, stride=1, pads=0), (256, 56, 56)),
    ("3x3 256->256 @14", dict(out_channels=256, kernel=3, stride=1, pads=1), (256, 14, 14)),
    ("7x7 s2 3->64 @224", dict(out_channels=64, kernel=7, stride=2, pads=3), (3, 224, 224)),
    ("3x3 128->128 @112", dict(out_channels=128, kernel=3, stride=1, pads=1), (128, 112, 112)),
]
ENGINES = ["cnnc-direct", "cnnc-im2col", "torch", "onnxruntime", "numpy"]


def flops(attrs: dict, shape: tuple[int, int, int], batch: int) -> float:
    c, h, w = shape
    k, r, s, p = attrs["out_channels"], attrs["kernel"], attrs["kernel"], attrs["pads"]
    st = attrs["stride"]
    oh, ow = (h + 2 * p - r) // st + 1, (w + 2 * p - s) // st + 1
    return 2.0 * batch * k * c * r * s * oh * ow


def reference(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    from cnnc.compiler.ops import get_op

    p = attrs["pads"]
    canon = dict(kernel=(attrs["kernel"],) * 2, stride=(attrs["stride"],) * 2,
                 pads=(p, p, p, p), dilation=(1, 1), groups=1)
    return get_op("conv").reference([x, w], canon)


# -- workers ----------------------------------------------------------------------------------

def worker(engine: str, layer: int, batch: int, threads: int, repeat: int, workdir: Path):
    name, attrs, shape = LAYERS[layer]
    x = np.load(workdir / f"x_{layer}_{batch}.npy")
    w = np.load(workdir / f"w_{layer}.npy")
    stride, pad = attrs["stride"], attrs["pads"]
    result: dict = {"engine": engine, "layer": name, "batch": batch}
    if engine.startswith("cnnc"):
        import numba

        from cnnc.runtime.conv_kernel import compile_conv

        numba.set_num_threads(threads)
        k = compile_conv(attrs, shape, engine.split("-")[1])
        wp, bp = k.pack_weights(w)

        def run():
            return k.unpack_output(k.run(k.pack_input(x), wp, bp, batch), batch)

        if engine == "cnnc-direct":
            xp = k.pack_input(x)
            out = np.empty_like(k.run(xp, wp, bp, batch))
            med, best, _ = median_time(lambda: k.run(xp, wp, bp, batch, out), repeat)
            result.update(kernel_ms=med * 1e3, kernel_best_ms=best * 1e3)
    elif engine == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)

        def run():
            with torch.inference_mode():
                return F.conv2d(xt, wt, None, stride, pad).numpy()
    elif engine == "onnxruntime":
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride] * 2,
                                pads=[pad] * 4, kernel_shape=list(w.shape[2:]))
        graph = helper.make_graph(
            [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(onnx._serialize(model) if hasattr(onnx, "_serialize")
                                    else model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])

        def run():
            return sess.run(None, {"x": x})[0]
    elif engine == "numpy":
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        r = w.shape[2]
        wm = w.reshape(w.shape[0], -1)

        def run():
            xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            win = np.lib.stride_tricks.sliding_window_view(xp, (r, r), axis=(2, 3))
            win = win[:, :, ::stride, ::stride]  # N, C, P, Q, R, S
            n, c, p, q = win.shape[:4]
            cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n, p * q, -1)
            return np.matmul(cols, wm.T).transpose(0, 2, 1).reshape(n, -1, p, q)
    else:
        raise SystemExit(f"unknown engine {engine}")
    med, best, runs = median_time(run, repeat)
    out = np.asarray(run(), np.float64)
    ref = np.load(workdir / f"ref_{layer}_{batch}.npy")
    result.update(e2e_ms=med * 1e3, best_ms=best * 1e3, runs=runs,
                  max_rel_err=float(np.abs(out - ref).max() / max(1.0, np.abs(ref).max())))
    return result


# -- in the network ---------------------------------------------------------------------------

def conv_steps(plan) -> list[int]:
    """Indices of the plan's convolution steps (their op ``conv``, with anything fused)."""
    return [i for i, s in enumerate(plan.steps)
            if s.op.split("+")[0] == "conv" and s.calls]


def network_layers(name: str, batch: int, threads: int, repeat: int) -> dict:
    """Every convolution of zoo network ``name`` at ``batch``, timed call by call inside
    whole runs (see the module's docstring); seconds per call, median (one thread: thread CPU
    time) or minimum (more threads: wall time) over ``repeat`` runs."""
    import numba

    import cnnc
    from cnnc.compiler.ops.conv.algorithms import by_name, node_geometry
    from cnnc.runtime.executor import flat_input

    numba.set_num_threads(threads)
    model = cnnc.compile(name)
    ex = model.executor
    plan, graph = ex.plan, ex.plan.graph
    rng = np.random.default_rng(0)
    inputs = {nid: flat_input(rng.standard_normal((batch, *graph.node(nid).type.shape))
                              .astype(np.float32)) for nid in graph.inputs.values()}
    clock = time.thread_time if threads == 1 else time.perf_counter
    times: dict[tuple[int, int], list[float]] = defaultdict(list)

    def timed(index: int, position: int, run) -> None:
        t0 = clock()
        run()
        times[index, position].append(clock() - t0)

    whole = whole_runs(ex, inputs, batch, repeat, clock)
    times.clear()
    for _ in range(repeat):
        ex.run_watched(inputs, batch, lambda i, a: False, each_call=timed)
    def per_run(keys: list[tuple[int, int]]) -> list[float]:  # seconds of these calls, by run
        return [sum(times[key][r] for key in keys) for r in range(repeat)]

    steps = [per_run([(i, k) for k in range(len(s.calls))])
             for i, s in enumerate(plan.steps) if s.calls]
    layers = []
    for index in conv_steps(plan):
        step = plan.steps[index]
        node = graph.node(step.node)
        in_types = [graph.node(i).type for i in node.inputs]
        g = node_geometry(node, in_types)
        alg = by_name(node.attrs["lowering"])
        # the compute kernel: the calls that are no layout move (pack_*, unpack_*, crop_*)
        compute = per_run([(index, k) for k, c in enumerate(step.calls)
                           if not c.kernel.startswith(("pack", "unpack", "crop", "im2col"))])
        whole_step = per_run([(index, k) for k in range(len(step.calls))])
        macs = g.K * g.Cg * g.R * g.S * g.P * g.Q * batch
        layers.append({
            "step": step.name, "shape": f"{g.C}x{g.H}x{g.W} -> {g.K}x{g.P}x{g.Q}",
            "kernel": f"{g.R}x{g.S}" + (f" s{g.sh}" if g.sh > 1 else ""),
            "algorithm": alg.name, "tile": node.attrs.get("tile", ""),
            "epilogue": "+".join(e.op for e in node.attrs.get("epilogue", ())),
            "kernel_min_s": min(compute), "kernel_median_s": statistics.median(compute),
            "step_min_s": min(whole_step), "step_median_s": statistics.median(whole_step),
            "flops": 2 * macs, "alg_flops": 2 * alg.work(g) * batch})
    totals = [sum(run) for run in zip(*steps)]
    return {"network": name, "batch": batch, "threads": threads,
            "clock": "thread CPU" if threads == 1 else "wall",
            "whole_run_min_s": min(whole), "whole_run_median_s": statistics.median(whole),
            "steps_min_s": min(totals), "steps_median_s": statistics.median(totals),
            "layers": layers}


def network_main(args) -> None:
    """The per-layer tables of ``--networks`` (see the module's docstring)."""
    from cnnc.compiler.target import host_target

    lanes = host_target().lanes
    peak = measure_peak(args.threads, lanes=lanes)
    out = []
    for name in args.networks:
        for batch in args.batch:
            res = network_layers(name, batch, args.threads, args.repeat)
            # the peak again after the runs, the higher kept (a disturbed second reads low)
            peak = max(peak, measure_peak(args.threads, lanes=lanes))
            res["peak_gflops"] = peak
            out.append(res)
    for res in out:
        peak = res["peak_gflops"]
        conv = sum(r["kernel_min_s"] for r in res["layers"])
        print(f"\n### {res['network']}, batch {res['batch']}, {res['threads']} thread(s), "
              f"{res['clock']} time: a run {1e3 * res['whole_run_min_s']:.2f} ms (median "
              f"{1e3 * res['whole_run_median_s']:.2f}), its steps "
              f"{1e3 * res['steps_min_s']:.2f} ms ({1e3 * res['steps_median_s']:.2f}), the "
              f"convolution kernels' minima {1e3 * conv:.2f} ms; FMA peak {peak:.0f} GFLOP/s\n")
        table = []
        for r in res["layers"]:
            gf, med = (r["flops"] / r[k] / 1e9 for k in ("kernel_min_s", "kernel_median_s"))
            alg = "" if not r["algorithm"].startswith("winograd") else \
                f"{r['alg_flops'] / r['kernel_min_s'] / 1e9:.0f}"
            table.append([r["step"].split("+")[0], r["shape"], r["kernel"], r["algorithm"],
                          r["tile"], r["epilogue"], f"{1e3 * r['kernel_min_s']:.3f}",
                          f"{1e3 * r['kernel_median_s']:.3f}", f"{1e3 * r['step_min_s']:.3f}",
                          f"{gf:.0f}", f"{100 * gf / peak:.0f}%", f"{100 * med / peak:.0f}%",
                          alg])
        print(markdown_table(["conv", "shape", "kernel", "algorithm", "tile", "epilogue",
                              "ms (min)", "ms (median)", "step ms (min)", "GFLOP/s",
                              "% peak", "% peak (median)", "alg GFLOP/s"], table))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "conv_layers_network.json").write_text(json.dumps(out, indent=1))


# -- driver -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--engines", nargs="+", default=ENGINES)
    ap.add_argument("--layers", type=int, nargs="+", default=list(range(len(LAYERS))))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "LAYER", "BATCH"))
    ap.add_argument("--workdir")
    ap.add_argument("--networks", nargs="+",
                    help="time every convolution inside these zoo networks instead")
    args = ap.parse_args()
    if args.networks:
        network_main(args)
        return
    if args.worker:
        engine, layer, batch = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(engine, layer, batch, args.threads, args.repeat,
                                Path(args.workdir))))
        return

    peak = NOMINAL_PEAK_PER_CORE * args.threads
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    # This machine sets OPENBLAS_CORETYPE/L2_SIZE for old OpenBLAS builds; they slow a current
    # NumPy, so the NumPy worker runs without them (PERF-NOTES / env notes).
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    rows: list[dict] = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for li in args.layers:
            name, attrs, shape = LAYERS[li]
            w = (rng.standard_normal((attrs["out_channels"], shape[0], attrs["kernel"],
                                      attrs["kernel"])) / np.sqrt(shape[0])).astype(np.float32)
            np.save(workdir / f"w_{li}.npy", w)
            for batch in args.batch:
                x = rng.standard_normal((batch, *shape)).astype(np.float32)
                np.save(workdir / f"x_{li}_{batch}.npy", x)
                np.save(workdir / f"ref_{li}_{batch}.npy", reference(x, w, attrs))
                for engine in args.engines:
                    res = spawn_worker(__file__, ["--worker", engine, str(li), str(batch),
                                                  "--workdir", str(workdir), "--threads",
                                                  str(args.threads), "--repeat",
                                                  str(args.repeat)], env)
                    if res is None:
                        continue
                    f = flops(attrs, shape, batch)
                    res["gflops"] = f / (res["e2e_ms"] / 1e3) / 1e9
                    res["pct_peak"] = 100 * res["gflops"] / peak
                    if "kernel_ms" in res:
                        res["kernel_gflops"] = f / (res["kernel_ms"] / 1e3) / 1e9
                        res["kernel_pct_peak"] = 100 * res["kernel_gflops"] / peak
                    rows.append(res)
                    print(f"{name} b{batch} {engine}: {res['e2e_ms']:.2f} ms "
                          f"{res['gflops']:.1f} GFLOP/s", flush=True)
    for r in rows:
        base = next((b for b in rows if b["engine"] == "torch" and b["layer"] == r["layer"]
                     and b["batch"] == r["batch"]), None)
        if base:
            r["speedup_vs_torch"] = base["e2e_ms"] / r["e2e_ms"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "conv_layers.json").write_text(json.dumps(rows, indent=2))
    table = []
    for r in rows:
        kernel = (f"{r['kernel_gflops']:.0f} ({r['kernel_pct_peak']:.0f}%)"
                  if "kernel_gflops" in r else "")
        table.append([r["layer"], str(r["batch"]), r["engine"], f"{r['e2e_ms']:.2f}",
                      f"{r['gflops']:.0f}", f"{r['pct_peak']:.0f}%", kernel,
                      f"{r.get('speedup_vs_torch', float('nan')):.2f}x",
                      f"{r['max_rel_err']:.1e}"])
    print()
    print(f"threads: {args.threads}; nominal peak {peak:.0f} GFLOP/s")
    print(markdown_table(["layer", "batch", "engine", "ms", "GFLOP/s", "% peak",
                          "kernel only GFLOP/s (% peak)", "vs torch", "max rel err"], table))
    groups = [f"{n}\nb{b}" for n, b in dict.fromkeys((r["layer"], r["batch"]) for r in rows)]
    series = {e: [next((r["gflops"] for r in rows if f"{r['layer']}\nb{r['batch']}" == g
                        and r["engine"] == e), 0.0) for g in groups] for e in args.engines}
    bar_chart(groups, series, f"GFLOP/s ({args.threads} threads)", RESULTS / "conv_layers.png",
              hline=peak)


if __name__ == "__main__":
    main()
