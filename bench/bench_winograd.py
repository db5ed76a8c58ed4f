"""Winograd vs direct on the 3x3 stride-1 layers of ResNet-18 and VGG-16, per layer.

    .venv/bin/python bench/bench_winograd.py [--batch 1 8] [--threads 2] [--rounds 5]
    .venv/bin/python bench/bench_winograd.py --networks resnet18 vgg16 [--batch 1 8]

Each layer is compiled with the direct kernel (the register tile ``select_tile`` gives it on
this machine's vector width) and with Winograd F(4x4, 3x3) and F(2x2, 3x3); the compute
kernels run on packed operands (as inside a network, whose layout moves are fused into the
neighbouring kernels), in one process, alternating round after round; the median over rounds
of each round's fastest call. GFLOP/s are
*effective*: the direct convolution's 2 K C 9 P Q flops over the time, whatever the algorithm
computes. The FMA peak (register-resident loop, the machine's widest vectors) is measured in
the same run. Each output is compared with the float64 reference, as a fraction of the
algorithm's error bound. Prints a markdown table. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

# name, (C, H, W), K: the distinct 3x3 stride-1 layers (ResNet-18's first convolution of a
# stage is stride 2: not here; VGG-16's 3-channel stem is refused by Winograd)
LAYERS = [
    ("resnet18 3x3 64 @56", (64, 56, 56), 64),
    ("resnet18 3x3 128 @28", (128, 28, 28), 128),
    ("resnet18 3x3 256 @14", (256, 14, 14), 256),
    ("resnet18 3x3 512 @7", (512, 7, 7), 512),
    ("vgg16 3x3 64 @224", (64, 224, 224), 64),
    ("vgg16 3x3 64->128 @112", (64, 112, 112), 128),
    ("vgg16 3x3 128 @112", (128, 112, 112), 128),
    ("vgg16 3x3 128->256 @56", (128, 56, 56), 256),
    ("vgg16 3x3 256 @56", (256, 56, 56), 256),
    ("vgg16 3x3 256->512 @28", (256, 28, 28), 512),
    ("vgg16 3x3 512 @28", (512, 28, 28), 512),
    ("vgg16 3x3 512 @14", (512, 14, 14), 512),
]
ALGORITHMS = ("direct", "winograd_f4", "winograd_f2")


def networks(names: list[str], batches: list[int], rounds: int, reps: int) -> None:
    """Whole networks at 224x224, compiled twice in this process: the default lowering (the
    cost model, Winograd where it pays) and every convolution direct; alternating calls."""
    from cnnc.runtime.model import compile as compile_model

    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| network | batch | direct ms | default ms | speed-up | Winograd layers |")
    print("|---|---|---|---|---|---|")
    for name in names:
        models = {lowering: compile_model(name, lowering=lowering, seed=0)
                  for lowering in ("direct", "auto")}
        chosen = [n.attrs["lowering"] for n in models["auto"].plan.graph.nodes()
                  if n.op == "conv"]
        wino = sum(c.startswith("winograd") for c in chosen)
        for N in batches:
            x = np.random.default_rng(0).standard_normal((N, 3, 224, 224)).astype(np.float32)
            times: dict[str, list[float]] = {k: [] for k in models}
            outs = {k: m(x) for k, m in models.items()}
            for _ in range(rounds):
                for k, m in models.items():
                    best = np.inf
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        m(x)
                        best = min(best, time.perf_counter() - t0)
                    times[k].append(best)
            med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            # the largest difference of the two lowerings' outputs, relative to the largest
            # output (a network with auxiliary heads has several)
            pairs = [(outs["auto"][k], outs["direct"][k]) for k in outs["auto"]] \
                if isinstance(outs["auto"], dict) else [(outs["auto"], outs["direct"])]
            diff = max(float(np.max(np.abs(a - d)) / np.max(np.abs(d))) for a, d in pairs)
            print(f"| {name} | {N} | {med['direct']:.1f} | {med['auto']:.1f} | "
                  f"{med['direct'] / med['auto']:.2f}x | {wino} of {len(chosen)} "
                  f"(outputs differ by {diff:.1e} of the largest) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3,
                    help="calls per round; a round counts its fastest (a loaded machine "
                         "preempts some)")
    ap.add_argument("--layers", type=int, nargs="*", help="indices into LAYERS")
    ap.add_argument("--networks", nargs="*",
                    help="time these zoo networks instead (default lowering vs direct)")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))

    import numba

    from cnnc.compiler.kernels.tiles import choose_tile
    from cnnc.compiler.ops import evaluate_bound
    from cnnc.compiler.target import host_target
    from cnnc.runtime.bench import measure_peak
    from cnnc.runtime.conv_kernel import compile_conv

    numba.set_num_threads(args.threads)
    if args.networks:
        networks(args.networks, args.batch, args.rounds, args.reps)
        return
    lanes = host_target().lanes
    peak = measure_peak(args.threads, lanes=lanes)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    print(f"{cpu}, {args.threads} threads, {lanes}-lane target; FMA peak {peak:.0f} GFLOP/s; "
          f"load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    rows = []
    layers = [LAYERS[i] for i in args.layers] if args.layers else LAYERS
    for name, (C, H, W), K in layers:
        attrs = dict(out_channels=K, kernel=3, pads=1, bias=True, activation="relu")
        w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(K).astype(np.float32)
        kernels = {}
        for alg in ALGORITHMS:
            tile = choose_tile(lanes, K, W) if alg == "direct" else choose_tile(8, K, W)
            t0 = time.perf_counter()
            kernels[alg] = compile_conv(attrs, (C, H, W), alg, tile=tile)
            kernels[alg].compile_seconds = time.perf_counter() - t0
        for N in args.batch:
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            ops, outs, times = {}, {}, {a: [] for a in ALGORITHMS}
            for alg, k in kernels.items():
                wp, bp = k.pack_weights(w, b)
                xp = k.pack_input(x)
                out = np.empty(N * k.algorithm.out_floats(k.geometry), np.float32)
                ops[alg] = (xp, wp, bp, out)
                k.run(xp, wp, bp, N, out)  # compile and warm up
                outs[alg] = k.unpack_output(out, N)
            for _ in range(args.rounds):
                for alg, k in kernels.items():
                    xp, wp, bp, out = ops[alg]
                    reps = []
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        k.run(xp, wp, bp, N, out)
                        reps.append(time.perf_counter() - t0)
                    times[alg].append(min(reps))
            flops = 2.0 * N * K * C * 9 * H * W
            conv = {"out_channels": K, "kernel": (3, 3), "stride": (1, 1), "pads": (1, 1, 1, 1),
                    "dilation": (1, 1), "groups": 1, "bias": True}
            med = {a: float(np.median(times[a])) for a in ALGORITHMS}
            for alg in ALGORITHMS:
                want, bound = evaluate_bound("conv", [x.astype(np.float64), w, b],
                                             {**conv, "lowering": alg}, terms=9 * C)
                got = outs[alg].astype(np.float64)
                frac = float(np.max(np.abs(got - np.maximum(want, 0)) / (bound + 1e-38)))
                rows.append((name, N, alg, med[alg] * 1e3, flops / med[alg] / 1e9,
                             100 * flops / med[alg] / 1e9 / peak, med["direct"] / med[alg],
                             frac))
            print(f"{name} batch {N}: " + ", ".join(
                f"{a} {med[a] * 1e3:.2f} ms" for a in ALGORITHMS), flush=True)
    print()
    print("| layer | batch | algorithm | ms | effective GFLOP/s | % of peak | speed-up vs direct "
          "| error / bound |")
    print("|---|---|---|---|---|---|---|---|")
    for name, N, alg, ms, gf, pct, speed, frac in rows:
        print(f"| {name} | {N} | {alg} | {ms:.2f} | {gf:.0f} | {pct:.0f}% | {speed:.2f}x | "
              f"{frac:.3f} |")


if __name__ == "__main__":
    main()
