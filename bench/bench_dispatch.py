"""What a call costs besides its kernels: the dispatch overhead, measured with trivial kernels.

    .venv/bin/python bench/bench_dispatch.py [--calls 100] [--repeat 2000] [--threads 1]

Three ways to run ``--calls`` kernels that each copy one float (so the kernels cost next to
nothing and what is timed is getting to them):

- ``program``: the calls bound once into a task program (``backends/numba/tasks.py``), run by
  one call of the compiled loop: how a compiled model runs its kernels;
- ``python loop``: the same task kernels called one by one from Python (``kernel(*args)``);
- ``njit loop``: as many calls of a Numba ``@njit`` function from a Python loop: the cost per
  kernel of the executor before task programs (one dispatcher call per kernel).

Then what a compiled model's call costs around its kernels: ``model(x)`` of a network of one
trivial kernel (a ReLU of one float, batch 1: the input's checks, running the task program,
the output's copy), and LeNet-5 at batch 1 end to end (median and p99 over ``--repeat``
calls). Medians of the per-call times; one process, ``--threads`` Numba threads. Results go
to stdout as markdown.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numba
import numpy as np
from numba import njit

import cnnc
from cnnc.compiler.backends.numba import cache
from cnnc.compiler.backends.numba.loader import task_kernel
from cnnc.compiler.backends.numba.printer import print_module
from cnnc.compiler.backends.numba.tasks import TaskProgram
from cnnc.compiler.kernels.kernel_ir import Const, Kernel, Load, Param, Store


@njit(cache=False, nogil=True)
def copy_one(x, y, n):
    y[0] = x[0]


def _times(fn, repeat: int) -> np.ndarray:
    for _ in range(20):
        fn()
    out = np.empty(repeat)
    for i in range(repeat):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    k = Kernel("copy_one", [Param("x"), Param("y"), Param("n", "int")],
               [Store("y", Const(0), Load("x", Const(0)))])
    with tempfile.TemporaryDirectory() as root:
        mod = cache.load_module(print_module([k]), "dispatch_bench", root=root)
        kernel = task_kernel(mod, k)
        x, y = np.ones(16, np.float32), np.zeros(16, np.float32)
        program = TaskProgram([(kernel, [x, y, 1])] * args.calls)
        calls = range(args.calls)

        def python_loop():
            for _ in calls:
                kernel(x, y, 1)

        def njit_loop():
            for _ in calls:
                copy_one(x, y, 1)

        rows = [("program", _times(program.run, args.repeat)),
                ("python loop", _times(python_loop, max(50, args.repeat // 20))),
                ("njit loop", _times(njit_loop, args.repeat))]
    print(f"{args.calls} trivial kernels per run, {args.threads} thread(s); median per run "
          f"and per kernel\n")
    print("| how | per run (us) | per kernel (ns) |")
    print("|---|---|---|")
    for name, t in rows:
        med = float(np.median(t))
        print(f"| {name} | {med * 1e6:.1f} | {med / args.calls * 1e9:.0f} |")
    tiny = cnnc.compile("network tiny\ninput x: 1 x 1 x 1\nx -> relu -> output y\n")
    one = np.ones((1, 1, 1, 1), np.float32)
    t = _times(lambda: tiny(one), args.repeat)
    print(f"\nA model of one trivial kernel, batch 1: model(x) median {np.median(t) * 1e6:.1f} us, "
          f"min {t.min() * 1e6:.1f} us")
    model = cnnc.compile("lenet5")
    image = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    t = _times(lambda: model(image), args.repeat)
    kernels = sum(len(s.calls) for s in model.plan.steps)
    print(f"\nLeNet-5, batch 1, {kernels} kernel calls: median {np.median(t) * 1e3:.3f} ms, "
          f"p99 {np.percentile(t, 99) * 1e3:.3f} ms, max {t.max() * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
