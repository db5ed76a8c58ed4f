"""GPU benchmark: cnnc's CUDA target against PyTorch's CUDA build, same weights, outputs
compared, TF32 off in both (float32 throughout).

    make bench-gpu   # on a machine with an NVIDIA GPU: installs CuPy (cnnc[gpu]) and runs this
    .venv/bin/python bench/bench_gpu.py [--models resnet50 resnet18] [--batches 1 32]
        [--train resnet18] [--train-batch 32]

For each model and batch: whole-network latency (median of the timed calls, NumPy in and out:
the copies to and from the device included, for both engines) and throughput (images/s), the
largest relative difference of the outputs, and cnnc's per-layer time and GFLOP/s (each step
timed alone, the device synchronized after it) with its kernels' GPU schedules and launches
(``kernels``: e.g. ``element 50176x128`` a thread per element, ``block 65536x128`` a block per
row; ``bench/gpu_schedules.py`` counts them per network without a GPU). ``--train``: the
training step of those models (forward, softmax cross-entropy, backward, SGD with momentum;
PyTorch's the same graph, ``bench_training.torch_step_fn`` on the GPU), the median step and
the first step's losses of both. ``--target cuda-emu`` runs the same script on
the CPU through the emulation (a check of the script itself; its times mean nothing).
Results go to bench/results/gpu.json and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import cnnc
from cnnc.compiler.backends.cuda.loader import gpu_problem
from cnnc.compiler.ops import node_macs
from cnnc.dsl.builder import load_zoo
from cnnc.runtime.weights import init_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import LR, MOMENTUM, torch_step_fn  # noqa: E402
from common import RESULTS, markdown_table, median_time  # noqa: E402
from gpu_schedules import step_launches  # noqa: E402


def synchronize(target: str) -> None:
    """Wait for the kernels launched so far (nothing to wait for in the emulation)."""
    if target == "cuda":
        import cupy

        cupy.cuda.runtime.deviceSynchronize()


def per_layer(model, x: np.ndarray, target: str) -> list[dict]:
    """Each step's seconds (run alone after the device is idle), GFLOP/s, and its kernels'
    GPU schedules and launches (blocks x threads: ``gpu_schedules.step_launches``)."""
    executor, graph = model.executor, model.plan.graph
    flat = {nid: x.reshape(-1) for nid in graph.inputs.values()}
    model.run({name: x for name in graph.inputs})  # the arena exists, its inputs stored
    rows = []
    marks = [time.perf_counter()]

    def after(index: int, arena) -> bool:
        synchronize(target)
        marks.append(time.perf_counter())
        return False
    synchronize(target)
    marks[0] = time.perf_counter()
    executor.run_watched(flat, x.shape[0], after)
    for i, step in enumerate(model.steps):
        seconds = marks[i + 1] - marks[i]
        flops = 2 * node_macs(graph, graph.node(step.node)) * x.shape[0]
        kernels = "; ".join(f"{schedule} {blocks}x{threads}" for _, schedule, (blocks, threads)
                            in step_launches(step, x.shape[0]))
        rows.append({"layer": step.name, "op": step.op, "lowering": step.lowering,
                     "kernels": kernels, "ms": seconds * 1e3,
                     "gflops": flops / seconds / 1e9 if flops else 0.0})
    return rows


def train_row(name: str, args: argparse.Namespace, device: str) -> dict:
    """One model's training step on both engines: the median of ``args.repeat`` steps after
    two, and the first step's losses (the same weights and batch: they agree)."""
    graph = load_zoo(name, **({"size": args.input_size} if args.input_size else {}))
    params = init_params(graph, seed=0)
    (_, input_id), = graph.inputs.items()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.train_batch, *graph.node(input_id).type.shape)) \
        .astype(np.float32)
    (output,) = graph.outputs.values()
    y = rng.integers(0, graph.node(output).type.shape[0], args.train_batch)
    model = cnnc.compile(graph, weights=params, mode="train", target=args.target,
                         loss="cross_entropy", optimizer="sgd", lr=LR, momentum=MOMENTUM)
    peer = torch_step_fn(graph, params, x, y, device)
    cnnc_loss, torch_loss = model.train_step(x, y), peer()
    model.train_step(x, y)
    peer()
    cnnc_s = median_time(lambda: model.train_step(x, y), args.repeat)[0]
    torch_s = median_time(peer, args.repeat)[0]
    print(f"{name} training step, batch {args.train_batch}: cnnc {cnnc_s * 1e3:.2f} ms, "
          f"PyTorch ({device}) {torch_s * 1e3:.2f} ms; first losses {cnnc_loss:.5f} and "
          f"{torch_loss:.5f}", flush=True)
    return {"model": name, "batch": args.train_batch, "cnnc_ms": cnnc_s * 1e3,
            "torch_ms": torch_s * 1e3, "throughput_ratio": torch_s / cnnc_s,
            "cnnc_loss": cnnc_loss, "torch_loss": torch_loss, "torch_device": device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--target", choices=("cuda", "cuda-emu"), default="cuda")
    ap.add_argument("--input-size", type=int, default=None,
                    help="the image side (default: the network's own)")
    ap.add_argument("--train", nargs="*", default=[], help="models whose training step to time")
    ap.add_argument("--train-batch", type=int, default=32)
    args = ap.parse_args()
    problem = gpu_problem() if args.target == "cuda" else None
    if problem:
        sys.exit(problem)
    import torch

    device = "cuda" if args.target == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("PyTorch sees no CUDA device: the comparison runs PyTorch on the CPU",
              file=sys.stderr)
        device = "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from cnnc.runtime.torch_graph import TorchGraph

    rows, layers = [], {}
    for name in args.models:
        graph = load_zoo(name, **({"size": args.input_size} if args.input_size else {}))
        params = init_params(graph, seed=0)
        t0 = time.perf_counter()
        model = cnnc.compile(graph, target=args.target, weights=params)
        compile_s = time.perf_counter() - t0
        peer = TorchGraph(graph, params, device=device)
        (input_name, input_id), = graph.inputs.items()
        shape = graph.node(input_id).type.shape
        for batch in args.batches:
            x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
            ours = model(x)
            theirs = next(iter(peer({input_name: x}).values()))
            err = float(np.abs(ours - theirs).max() / max(1e-30, np.abs(theirs).max()))
            cnnc_s = median_time(lambda m=model, x=x: m(x), args.repeat)[0]
            torch_s = median_time(lambda p=peer, feed={input_name: x}: p(feed), args.repeat)[0]
            rows.append({"model": name, "batch": batch, "cnnc_ms": cnnc_s * 1e3,
                         "torch_ms": torch_s * 1e3, "cnnc_img_s": batch / cnnc_s,
                         "torch_img_s": batch / torch_s, "throughput_ratio": torch_s / cnnc_s,
                         "max_rel_err": err, "compile_s": compile_s, "torch_device": device})
            layers[f"{name}/b{batch}"] = per_layer(model, x, args.target)
            print(f"{name} batch {batch}: cnnc {cnnc_s * 1e3:.2f} ms, PyTorch ({device}) "
                  f"{torch_s * 1e3:.2f} ms, cnnc at {torch_s / cnnc_s:.2f}x PyTorch's "
                  f"throughput, outputs within {err:.1e}", flush=True)
    training = [train_row(name, args, device) for name in args.train]
    if training:
        print(markdown_table(
            ["model", "batch", "cnnc ms/step", "PyTorch ms/step", "cnnc / PyTorch throughput",
             "first losses (cnnc, PyTorch)"],
            [[r["model"], str(r["batch"]), f"{r['cnnc_ms']:.2f}", f"{r['torch_ms']:.2f}",
              f"{r['throughput_ratio']:.2f}", f"{r['cnnc_loss']:.5f}, {r['torch_loss']:.5f}"]
             for r in training]))
    print(markdown_table(
        ["model", "batch", "cnnc ms", "PyTorch ms", "cnnc img/s", "PyTorch img/s",
         "cnnc / PyTorch throughput", "max rel err"],
        [[r["model"], str(r["batch"]), f"{r['cnnc_ms']:.2f}", f"{r['torch_ms']:.2f}",
          f"{r['cnnc_img_s']:.1f}", f"{r['torch_img_s']:.1f}", f"{r['throughput_ratio']:.2f}",
          f"{r['max_rel_err']:.1e}"] for r in rows]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("gpu.json" if args.target == "cuda" else "gpu-emulated.json")
    out.write_text(json.dumps({"rows": rows, "layers": layers, "training": training},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
