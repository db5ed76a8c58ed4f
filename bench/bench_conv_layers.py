"""Benchmark the generated convolution kernels on the five layers of PERF-NOTES.md.

Usage: ``python bench/bench_conv_layers.py [--batch 1 8] [--lowering direct im2col] [--reps 10]``

For each layer, batch size and lowering it reports the median time and GFLOP/s of

- ``kernel``: the compute kernel alone on pre-packed operands (blocked NCHW8c in and out for
  ``direct``; the im2col matrix in for ``im2col``), as inside a network whose layout transforms
  are fused into the producers;
- ``e2e``: NCHW in, NCHW out, including input packing and output unpacking (weights packed
  once, outside the timing);

and the percentage of the nominal fp32 peak (166 GFLOP/s on 2 cores; 83 on one). Not collected
by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial

import numpy as np

NOMINAL_PEAK_PER_CORE = 83.0

LAYERS = [
    ("3x3 64->64 @56", dict(out_channels=64, kernel=3, pads=1), (64, 56, 56)),
    ("1x1 256->64 @56", dict(out_channels=64, kernel=1), (256, 56, 56)),
    ("3x3 256->256 @14", dict(out_channels=256, kernel=3, pads=1), (256, 14, 14)),
    ("7x7 s2 3->64 @224", dict(out_channels=64, kernel=7, stride=2, pads=3), (3, 224, 224)),
    ("3x3 128->128 @112", dict(out_channels=128, kernel=3, pads=1), (128, 112, 112)),
]


def _median_time(fn, reps: int, min_time: float = 0.2) -> tuple[float, float]:
    """(median, best) wall time of ``fn()`` over at least ``reps`` runs and ``min_time`` s."""
    fn()  # warm up (compile / load from cache, touch memory)
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * reps:
            break
    return statistics.median(times), min(times)


def _end_to_end(k, x: np.ndarray, wp: np.ndarray, bp: np.ndarray | None) -> np.ndarray:
    """NCHW in, NCHW out: pack the input, run, unpack (weights already packed)."""
    N = x.shape[0]
    return k.unpack_output(k.run(k.pack_input(x), wp, bp, N), N)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--lowering", nargs="+", default=["direct", "im2col"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices (0-4)")
    args = ap.parse_args(argv)

    import numba

    from cnnc.compiler.codegen.conv import compile_conv

    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    peak = NOMINAL_PEAK_PER_CORE * threads
    print(f"threads={threads} nominal peak={peak:.0f} GFLOP/s  cpu_count={os.cpu_count()}")
    print("kernel: compute kernel on packed operands (median; best of runs); e2e: NCHW -> NCHW")
    print(f"{'layer':20s} {'N':>2s} {'lowering':8s} {'compile s':>9s} {'kernel ms':>9s} "
          f"{'GFLOP/s':>8s} {'%peak':>6s} {'best':>8s} {'%peak':>6s} {'e2e ms':>8s} "
          f"{'GFLOP/s':>8s} {'%peak':>6s}")
    rng = np.random.default_rng(0)
    layers = [LAYERS[i] for i in args.layers] if args.layers else LAYERS
    for name, attrs, shape in layers:
        for lowering in args.lowering:
            t0 = time.perf_counter()
            k = compile_conv(attrs, shape, lowering)
            g = k.geometry
            w = rng.standard_normal((g.K, g.Cg, g.R, g.S)).astype(np.float32)
            wp, bp = k.pack_weights(w)
            x1 = rng.standard_normal((1, *shape)).astype(np.float32)
            k.run(k.pack_input(x1), wp, bp, 1)  # compile (or load) every kernel
            k.unpack_output(k.run(k.pack_input(x1), wp, bp, 1), 1)
            t_compile = time.perf_counter() - t0
            for N in args.batch:
                x = rng.standard_normal((N, *shape)).astype(np.float32)
                xp = k.pack_input(x)
                out = np.empty_like(k.run(xp, wp, bp, N))
                flops = g.flops_per_image * N
                t_k, best_k = _median_time(partial(k.run, xp, wp, bp, N, out), args.reps)
                t_e, _ = _median_time(partial(_end_to_end, k, x, wp, bp), args.reps)
                gk, ge, gb = flops / t_k / 1e9, flops / t_e / 1e9, flops / best_k / 1e9
                print(f"{name:20s} {N:2d} {lowering:8s} {t_compile:9.2f} {t_k * 1e3:9.3f} "
                      f"{gk:8.1f} {100 * gk / peak:5.0f}% {gb:8.1f} {100 * gb / peak:5.0f}% "
                      f"{t_e * 1e3:8.3f} {ge:8.1f} {100 * ge / peak:5.0f}%")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
