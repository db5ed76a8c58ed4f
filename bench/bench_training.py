"""Training-step benchmark: cnnc's compiled training step against PyTorch, same weights and data.

    .venv/bin/python bench/bench_training.py [--models resnet18 bench/resnet18_nobn.cnn]
        [--batch 8] [--steps 5] [--warmup 2] [--threads 2] [--engines cnnc torch]
        [--rounds 1] [--cpu-time]

A step is forward, softmax cross-entropy, backward and one SGD update with momentum 0.9 (cnnc:
``TrainingModel.train_step``; PyTorch: ``loss.backward(); opt.step()`` on the same graph, its
batch norms in training mode). One driver process writes the weights, images and labels, then
runs each engine in its own worker process with the same thread count (Numba's and PyTorch's
pools must not fight): warm-up steps, then the median of the timed steps, images/s, the peak
RSS of the process, and the losses of the first steps (the same weights and data: they agree).
With ``--rounds N`` the engines run N times in alternating order and the step times of all
rounds are pooled (a shared host's load moves between rounds). ``--cpu-time`` (one thread)
times each step in the CPU seconds of the thread that runs it, which other processes on the
host do not inflate as they inflate wall time: the work of each engine, not its latency. The
cnnc worker also times three steps kernel call by kernel call
(``TrainingModel.profile_calls``), the median of each call summed by kind of work. The FMA
peak is measured in the same run. Results: bench/results/training.json and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, markdown_table, measure_peak, spawn_worker  # noqa: E402

LR, MOMENTUM = 0.01, 0.9

#: The kinds of work a training step's parts are summed into, by the op a plan step computes
#: (its first op: fused epilogues count with the op that carries them).
KINDS = {
    "conv": "conv forward",
    "conv_transpose": "conv input gradient",
    "conv_weight_grad": "conv weight gradient",
    "dense": "dense (forward, input gradient)",
    "dense_weight_grad": "dense weight gradient",
    "maxpool": "pooling", "avgpool": "pooling", "globalavgpool": "pooling",
    "globalmaxpool": "pooling", "pool_grad": "pooling", "global_pool_grad": "pooling",
    "gradients": "gradient norm and check",
    "optimizer": "optimizer",
    "refresh": "repacking of weights (after the update)",
    **dict.fromkeys(("batch_mean", "batch_var", "running_update"), "batch norm statistics"),
    **dict.fromkeys(("batchnorm_train", "bn_grad_sums", "bn_grad_input", "bn_grad_param"),
                    "batch norm (normalizing, backward)"),
    "activation_grad": "ReLU gradients, adds", "add": "ReLU gradients, adds",
}


#: The layout kernels that move a convolution's activations between NCHW and the packed,
#: channel-blocked layout of its compute kernel (``compiler/kernels/layout.py``).
REPACKING = ("pack_nchw_blocked", "unpack_blocked_nchw", "unpack_epilogue")


def kind_of(name: str, op: str, kernel: str = "") -> str:
    """The kind of work of a kernel call (``kernel``) of a plan step (``name``, ``op``) or of
    a training step's other part. A convolution's input gradient is a transposed convolution,
    or its phase convolutions and the concatenation and interleaving of their outputs (all
    named ``<layer>.grad.input`` by autodiff); the packing and unpacking of a convolution's
    activations (its input, its output; the weight gradient's input) count apart."""
    if any(k in kernel for k in REPACKING):
        return "repacking of activations (conv)"
    first = op.split("+")[0]
    if ".grad.input" in name and first in ("conv", "conv_transpose", "concat",
                                            "depth_to_space"):
        return KINDS["conv_transpose"]
    return KINDS.get(first, "element-wise and other")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_graph(model: str):
    import cnnc

    return cnnc.load(Path(model).read_text() if model.endswith(".cnn") else model)


# -- workers ------------------------------------------------------------------------------------

def step_clock(cpu_time: bool):
    """The step timer: CPU seconds of the calling thread (one thread does all the work), or
    wall seconds."""
    return time.thread_time if cpu_time else time.perf_counter


def cnnc_worker(workdir: Path, model: str, threads: int, steps: int, warmup: int,
                cpu_time: bool) -> dict:
    import numba

    import cnnc
    from cnnc.runtime.weights import load_weights

    numba.set_num_threads(threads)
    clock = step_clock(cpu_time)
    x, y = np.load(workdir / "x.npy"), np.load(workdir / "y.npy")
    graph = load_graph(model)
    t0 = time.perf_counter()
    tm = cnnc.compile(graph, weights=load_weights(graph, workdir / "weights.npz"), mode="train",
                      loss="cross_entropy", optimizer="sgd", lr=LR, momentum=MOMENTUM)
    compile_s = time.perf_counter() - t0
    losses = [tm.train_step(x, y) for _ in range(warmup)]
    times = []
    for _ in range(steps):
        t0 = clock()
        losses.append(tm.train_step(x, y))
        times.append(clock() - t0)
    split: dict[str, float] = defaultdict(float)
    profiles = [tm.profile_calls(x, y, clock=clock) for _ in range(3)]
    for parts in zip(*profiles):
        name, op, kernel, _ = parts[0]
        split[kind_of(name, op, kernel)] += float(np.median([p[3] for p in parts]))
    return {"compile_s": compile_s, "times": times, "losses": losses,
            "split_ms": {k: v * 1e3 for k, v in sorted(split.items(), key=lambda kv: -kv[1])},
            "arena_mb": tm.executor.bytes_needed(len(x)) / 2**20}


def torch_step_fn(graph, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                  device: str = "cpu"):
    """A PyTorch training step of ``graph`` (its batch norms with batch statistics) on
    ``device`` (``cuda``: ``bench_gpu.py --train``)."""
    import torch
    import torch.nn.functional as F

    from cnnc.runtime.torch_graph import OPS

    ops = dict(OPS)
    ops["batchnorm"] = lambda xs, a: F.batch_norm(xs[0], xs[3], xs[4], xs[1], xs[2], True,
                                                  a["momentum"], a["eps"])
    order = [n for n in graph.topo_order() if n.op not in ("input", "param")]
    stats = {n.inputs[i] for n in order if n.op == "batchnorm" for i in (3, 4)}
    tensors = {n.id: torch.tensor(params[n.name], requires_grad=n.id not in stats,
                                  device=device) for n in graph.params()}
    opt = torch.optim.SGD([t for t in tensors.values() if t.requires_grad], lr=LR,
                          momentum=MOMENTUM)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.int64)).to(device)
    (image,) = graph.inputs.values()
    (output,) = graph.outputs.values()

    def step() -> float:
        values = dict(tensors)
        values[image] = xt
        for node in order:
            values[node.id] = ops[node.op]([values[i] for i in node.inputs], node.attrs)
        loss = F.cross_entropy(values[output], yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def torch_worker(workdir: Path, model: str, threads: int, steps: int, warmup: int,
                 cpu_time: bool) -> dict:
    import torch

    from cnnc.runtime.weights import load_weights

    torch.set_num_threads(threads)
    clock = step_clock(cpu_time)
    x, y = np.load(workdir / "x.npy"), np.load(workdir / "y.npy")
    graph = load_graph(model)
    step = torch_step_fn(graph, load_weights(graph, workdir / "weights.npz"), x, y)
    losses = [step() for _ in range(warmup)]
    times = []
    for _ in range(steps):
        t0 = clock()
        losses.append(step())
        times.append(clock() - t0)
    return {"times": times, "losses": losses}


# -- driver -------------------------------------------------------------------------------------

def prepare(model: str, batch: int, workdir: Path) -> dict:
    from cnnc.runtime.summary import summarize
    from cnnc.runtime.weights import init_params, save_weights

    graph = load_graph(model)
    params = init_params(graph, seed=0)
    if not any(n.op == "batchnorm" for n in graph.nodes()):
        # without batch norm, He-initialized residual blocks double the activations' variance
        # block after block and SGD diverges within steps: halve every weight
        params = {k: v * np.float32(0.5) for k, v in params.items()}
    save_weights(params, workdir / "weights.npz")
    (image,) = graph.inputs.values()
    (output,) = graph.outputs.values()
    rng = np.random.default_rng(0)
    shape = graph.node(image).type.shape
    np.save(workdir / "x.npy", rng.standard_normal((batch,) + shape).astype(np.float32))
    classes = graph.node(output).type.shape[0]
    np.save(workdir / "y.npy", rng.integers(0, classes, batch))
    return {"name": graph.name, "flops": summarize(graph).flops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+",
                    default=["resnet18", str(HERE / "resnet18_nobn.cnn")])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", nargs="+", default=["cnnc", "torch"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--worker")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.cpu_time and args.threads != 1:
        ap.error("--cpu-time times one thread's CPU seconds: give --threads 1")
    if args.worker:
        run = cnnc_worker if args.worker == "cnnc" else torch_worker
        result = run(Path(args.workdir), args.models[0], args.threads, args.steps, args.warmup,
                     args.cpu_time)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    from cnnc.compiler.target import host_target

    peaks = {lanes: measure_peak(args.threads, lanes=lanes) for lanes in (8, 16)}
    peak = peaks[host_target().lanes]
    print(f"measured FMA peak on {args.threads} threads: 8 lanes {peaks[8]:.0f} GFLOP/s, "
          f"16 lanes {peaks[16]:.0f} GFLOP/s (target {host_target()})", flush=True)
    rows: list[dict] = []
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            try:
                info = prepare(model, args.batch, workdir)
            except Exception as e:  # a model that does not load here: say so and go on
                print(f"{model}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            runs: dict[str, list[dict]] = defaultdict(list)
            for turn in range(args.rounds):
                # alternating order: the first engine of one round is the last of the next
                for engine in args.engines[::-1] if turn % 2 else args.engines:
                    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                    worker = ["--worker", engine, "--workdir", str(workdir), "--models", model,
                              "--threads", str(args.threads), "--steps", str(args.steps),
                              "--warmup", str(args.warmup)]
                    res = spawn_worker(__file__, worker + ["--cpu-time"] * args.cpu_time, env)
                    if res is not None:
                        runs[engine].append(res)
                        print(f"  round {turn + 1} {engine}: median "
                              f"{np.median(res['times']) * 1e3:.0f} ms", flush=True)
            for engine, done in runs.items():
                res = done[-1]  # its split and losses; the step times of every round
                res["times"] = [t for r in done for t in r["times"]]
                res["peak_rss_mb"] = max(r["peak_rss_mb"] for r in done)
                median = float(np.median(res["times"]))
                # a training step is about three forward passes of multiply-adds
                gflops = 3 * info["flops"] * args.batch / median / 1e9
                res.update(model=info["name"], engine=engine, batch=args.batch,
                           median_ms=median * 1e3, images_per_s=args.batch / median,
                           gflops=gflops, pct_peak=100 * gflops / peak)
                rows.append(res)
                print(f"{info['name']} {engine}: {median * 1e3:.0f} ms "
                      f"({args.batch / median:.1f} images/s) over {len(done)} rounds, peak "
                      f"RSS {res['peak_rss_mb']:.0f} MB; losses "
                      f"{', '.join(f'{v:.4f}' for v in res['losses'][:3])}", flush=True)
    # the peak again after the runs, the higher kept: a neighbour's burst on a shared host
    # during one measurement reads as a lower peak (16 lanes at 118 GFLOP/s in one run, 8 lanes
    # at 234 a second before, on a machine where the two are the same)
    again = measure_peak(args.threads, lanes=host_target().lanes)
    if again > peak:
        print(f"FMA peak measured again after the runs: {again:.0f} GFLOP/s (the higher kept)",
              flush=True)
        for res in rows:
            res["pct_peak"] = 100 * res["gflops"] / again
    for r in rows:
        base = next((t for t in rows if t["model"] == r["model"] and t["engine"] == "torch"),
                    None)
        if base:
            r["speedup_vs_torch"] = base["median_ms"] / r["median_ms"]
    RESULTS.mkdir(exist_ok=True)
    out = {"peak_gflops": peaks, "threads": args.threads, "rounds": args.rounds,
           "clock": "thread CPU time" if args.cpu_time else "wall", "rows": rows}
    (RESULTS / "training.json").write_text(json.dumps(out, indent=2))
    print()
    print(markdown_table(
        ["model", "engine", "ms/step", "images/s", "GFLOP/s", "% peak", "vs torch",
         "peak RSS MB"],
        [[r["model"], r["engine"], f"{r['median_ms']:.0f}", f"{r['images_per_s']:.1f}",
          f"{r['gflops']:.0f}", f"{r['pct_peak']:.0f}%",
          f"{r.get('speedup_vs_torch', float('nan')):.2f}x", f"{r['peak_rss_mb']:.0f}"]
         for r in rows]))
    for r in rows:
        if "split_ms" in r:
            total = sum(r["split_ms"].values())
            print(f"\n{r['model']}, cnnc's step by kind of work ({total:.0f} ms profiled, "
                  f"arena {r['arena_mb']:.0f} MB, compile {r['compile_s']:.0f} s):")
            print(markdown_table(["kind", "ms", "share"],
                                 [[k, f"{v:.1f}", f"{100 * v / total:.0f}%"]
                                  for k, v in r["split_ms"].items()]))


if __name__ == "__main__":
    main()
