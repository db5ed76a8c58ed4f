"""Runtime sizes against literal sizes: the memory-bound kernels whose per-sample sizes are
runtime integer arguments (so one compiled kernel serves every shape), timed against the same
builders given literal sizes (fully specialized code, one kernel per shape: how they were
built before).

    NUMBA_NUM_THREADS=1 .venv/bin/python bench/bench_small_kernels.py [--size 64x56x56]
        [--batch 4] [--rounds 5] [--repeat 20] [--kernels "pad,upsample bilinear"]

Each kernel is bound alone into a task program (``backends/numba/tasks.py``, as a compiled
model runs it) and run ``--repeat`` times per round, the two versions alternating for
``--rounds`` rounds; the table gives the median process CPU time of one run in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np

from cnnc.compiler.backends.numba import cache
from cnnc.compiler.backends.numba.loader import task_kernel
from cnnc.compiler.backends.numba.printer import print_module
from cnnc.compiler.backends.numba.tasks import TaskProgram
from cnnc.compiler.kernels import elementwise as ew
from cnnc.compiler.kernels.backward import reduce_to_kernel
from cnnc.compiler.kernels.common import Sizes
from cnnc.compiler.kernels.kernel_ir import Kernel
from cnnc.compiler.kernels.pool import FilterAxis, upsample_kernel

#: name -> (builder(sz) -> kernel, per-image floats of each input array and of the output).
Case = tuple[Callable[[Sizes | None], Kernel], dict[str, int]]


def cases(c: int, h: int, w: int) -> dict[str, Case]:
    shape, hw = (c, h, w), h * w
    padded = (c, h + 4, w + 4)
    return {
        "pad": (lambda sz: ew.pad_kernel("k_pad", shape, (1, 2, 3, 2), 0.0, sz=sz),
                {"x0": c * hw, "y": c * (h + 4) * (w + 4)}),
        "pad reflect": (lambda sz: ew.pad_kernel("k_pad", shape, (2, 2, 2, 2), 0.0,
                                                 mode="reflect", sz=sz),
                        {"x0": c * hw, "y": c * (h + 4) * (w + 4)}),
        "pad_grad reflect": (lambda sz: ew.pad_grad_kernel("k_pad_grad", padded, (2, 2, 2, 2),
                                                           "reflect", sz=sz),
                             {"x0": c * (h + 4) * (w + 4), "y": c * hw}),
        "flip": (lambda sz: ew.flip_kernel("k_flip", shape, "both", sz=sz),
                 {"x0": c * hw, "y": c * hw}),
        "zero_stuff": (lambda sz: ew.zero_stuff_kernel("k_zero_stuff", shape, (2, 2), (1, 1),
                                                       (2 * h + 1, 2 * w + 1), sz=sz),
                       {"x0": c * hw, "y": c * (2 * h + 1) * (2 * w + 1)}),
        "distance": (lambda sz: ew.distance_kernel("k_distance", c * hw, 2.0, sz=sz),
                     {"x0": c * hw, "x1": c * hw, "y": 1}),
        "instance_norm": (lambda sz: ew.groupnorm_kernel("k_instance_norm", shape, c, 1e-5,
                                                         sz=sz),
                          {"x0": c * hw, "c_weight": c, "c_bias": c, "y": c * hw}),
        "groupnorm_input_grad": (lambda sz: ew.groupnorm_input_grad_kernel(
            "k_groupnorm_input_grad", shape, 8, 1e-5, ("x0", "x1", "x2"), sz=sz),
            {"x0": c * hw, "x1": c, "x2": c * hw, "y": c * hw}),
        "lrn": (lambda sz: ew.lrn_kernel("k_lrn", shape, 5, 1e-4, 0.75, 2.0, sz=sz),
                {"x0": c * hw, "y": c * hw}),
        "reduce_to pixels": (lambda sz: reduce_to_kernel("k_reduce_to", shape, (c, 1, 1), True,
                                                         sz=sz),
                             {"x0": c * hw, "y": c}),
        "upsample bilinear": (lambda sz: upsample_kernel(
            "k_upsample", shape, (2 * h, 2 * w), BILINEAR, (FilterAxis(2), FilterAxis(2)), sz=sz),
            {"x0": c * hw, "y": 4 * c * hw}),
    }


#: ``upsample(2, mode=bilinear)``'s canonical attributes.
BILINEAR = {"scale": (2.0, 2.0), "mode": "bilinear", "coordinates": "half_pixel",
            "rounding": "floor", "roi": (0.0, 0.0, 1.0, 1.0), "cubic_a": -0.75,
            "exclude_outside": False, "extrapolation": 0.0}


def program(kernel: Kernel, sizes: Sizes, floats: dict[str, int], batch: int,
            tag: str) -> TaskProgram:
    mod = cache.load_module(print_module([kernel]), f"bench_{kernel.name}_{tag}")
    rng = np.random.default_rng(0)
    args = []
    for p in kernel.params:
        if p.name == "n_batch":
            args.append(batch)
        elif p.kind == "int":
            args.append(sizes.values[p.name])
        else:
            n = floats[p.name] * (1 if p.name.startswith("c_") else batch)
            args.append(rng.standard_normal(n).astype(np.float32))
    return TaskProgram([(task_kernel(mod, kernel), args)])


def cpu_us(run: Callable[[], None], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.process_time()
        run()
        times.append((time.process_time() - t) * 1e6)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="64x56x56")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--kernels", default="", help="comma-separated names (default: all)")
    args = ap.parse_args()
    c, h, w = (int(d) for d in args.size.split("x"))
    print(f"{c} x {h} x {w}, batch {args.batch}, {numba.get_num_threads()} thread(s); median "
          f"CPU time per run over {args.rounds} alternating rounds of {args.repeat}\n")
    print("| kernel | literal sizes (us) | runtime sizes (us) | runtime / literal |")
    print("|---|---|---|---|")
    for name, (build, floats) in cases(c, h, w).items():
        if args.kernels and name not in args.kernels.split(","):
            continue
        runtime = Sizes()
        versions = [program(build(None), Sizes(), floats, args.batch, "literal"),
                    program(build(runtime), runtime, floats, args.batch, "runtime")]
        for p in versions:
            p.run()  # loads and warms up
        times: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for v, p in enumerate(versions):
                times[v] += cpu_us(p.run, args.repeat)
        lit, run = (statistics.median(t) for t in times)
        print(f"| {name} | {lit:.0f} | {run:.0f} | {run / lit:.2f} |")


if __name__ == "__main__":
    main()
