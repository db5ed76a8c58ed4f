"""The refresh of a training model's packed weights after each update, step after step.

    .venv/bin/python bench/bench_refresh.py [--model resnet18] [--batch 1] [--steps 10]
        [--threads 1]

Every step is one ``TrainingModel.profile_step`` (forward, backward, SGD update with momentum,
then the refresh: the packings of the parameters the update changed made again, into the last
ones' memory), its parts timed in the CPU seconds of the calling thread (the refresh runs in
it; a shared host's load does not inflate them). Printed: the refresh's median, mean, best and
worst CPU milliseconds, and the minor page faults of a whole step, median and mean (new arrays
for the packings fault their pages in again: where that happens every other step, the mean
shows it and the median may not). The refresh does not depend on the batch: the default is 1.
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
    cpu, faults = [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu.append(next(s for name, _, s in tm.profile_step(x, y, clock=time.thread_time)
                        if name == "refresh"))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(f"{graph.name}: {tm.flat_params.size:,} trainable parameters, "
          f"{len(tm.plan.param_nodes)} parameter-time nodes, {args.threads} thread(s)")
    ms = 1e3 * np.array(cpu)
    print(f"  refresh CPU ms over {args.steps} steps: median {np.median(ms):.1f}, mean "
          f"{ms.mean():.1f}, best {ms.min():.1f}, worst {ms.max():.1f}; minor page faults a "
          f"step: median {np.median(faults):.0f}, mean {np.mean(faults):.0f}")


if __name__ == "__main__":
    main()
