"""The refresh of a training model's packed weights after each update, step after step.

    .venv/bin/python bench/bench_refresh.py [--model resnet18] [--batch 1] [--steps 10]
        [--threads 1]

Every step is one ``TrainingModel.profile_step`` (forward, backward, SGD update with momentum,
then the refresh: the packings of the parameters the update changed made again, into the last
ones' memory). Printed: the refresh's CPU milliseconds (the refresh runs in the calling
thread: its thread time, which a shared host's load does not inflate) and wall milliseconds,
median and best, and the process's minor page faults per step (new arrays for the packings
fault their pages in again). The refresh does not depend on the batch: the default is 1.
"""

from __future__ import annotations

import argparse
import resource
import time

import numba
import numpy as np

import cnnc
from cnnc.runtime.weights import init_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    graph = cnnc.load(args.model)
    tm = cnnc.compile(graph, weights=init_params(graph, seed=0), mode="train",
                      loss="cross_entropy", optimizer="sgd", lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    (image,) = graph.inputs.values()
    (output,) = graph.outputs.values()
    x = rng.standard_normal((args.batch,) + graph.node(image).type.shape).astype(np.float32)
    y = rng.integers(0, graph.node(output).type.shape[0], args.batch)
    tm.train_step(x, y)  # warm-up: the first refresh after compiling allocates
    cpu, wall, faults = [], [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall.append(next(s for name, _, s in tm.profile_step(x, y) if name == "refresh"))
        cpu.append(next(s for name, _, s in tm.profile_step(x, y, clock=time.thread_time)
                        if name == "refresh"))
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2)
    print(f"{graph.name}: {tm.flat_params.size:,} trainable parameters, "
          f"{len(tm.plan.param_nodes)} parameter-time nodes, {args.threads} thread(s)")
    print(f"  refresh CPU median {1e3 * np.median(cpu):.1f} ms (best {1e3 * min(cpu):.1f}), "
          f"wall median {1e3 * np.median(wall):.1f} ms (best {1e3 * min(wall):.1f}) over "
          f"{args.steps} steps; minor page faults a step (the whole step, two steps "
          f"averaged) median {np.median(faults):.0f}")


if __name__ == "__main__":
    main()
