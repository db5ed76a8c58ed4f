"""Compile time: distinct kernels per network, the cold compile of a model, and where one
kernel's compile goes.

    .venv/bin/python bench/bench_compile.py count [--models resnet18,vgg16]
    .venv/bin/python bench/bench_compile.py cold [--model resnet18] [--target avx512] [--rounds 2]
        [--python /base/.venv/bin/python,.venv/bin/python]
    .venv/bin/python bench/bench_compile.py kernels [--model resnet18] [--target avx512]

``count`` lowers each network for both vector widths without compiling anything (``warm=False``)
and counts the distinct task functions its calls run (each one Numba compile on a cold cache).
``cold`` compiles the model in a fresh process with an empty cache (``NUMBA_NUM_THREADS=2``,
the parallel compile workers included) and reports the whole process's wall and CPU seconds
(the interpreter's start and exit included, its workers' CPU too, user and system) and the
wall seconds of import and compile inside it; ``--python`` alternates the interpreters of
several checkouts (A/B). ``kernels`` compiles each distinct kernel of
the model one after another in one process on an empty cache and splits its time by Numba's
compiler passes (``numba:run_pass`` events: type inference, lowering to LLVM IR) and LLVM's
stages (function passes, module passes, machine code: Numba's code-library methods timed).
CPU seconds of this thread; the host is shared, so run A/B alternately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet18", "resnet50", "vgg16", "googlenet", "mobilenet_v2")
TARGETS = ("avx512", "avx2")


def distinct_kernels(model: str, target: str, cache: str) -> list:
    """The distinct task kernels the calls of ``model`` compiled for ``target`` run."""
    import cnnc
    from cnnc.compiler.backends.numba.tasks import TaskKernel

    m = cnnc.compile((ROOT / "zoo" / f"{model}.cnn").read_text(), target=target, warm=False,
                     cache_dir=cache)
    seen: dict = {}
    for step in m.plan.steps:
        for call in step.calls:
            if isinstance(call.fn, TaskKernel):
                seen.setdefault((str(call.fn.path), call.fn.name), (call.fn, step.lowering))
    return list(seen.values())


def count(models: list[str]) -> None:
    with tempfile.TemporaryDirectory() as cache:
        print("| network | " + " | ".join(f"{t} kernels (convolution)" for t in TARGETS) + " |")
        print("|---|" + "---|" * len(TARGETS))
        for model in models:
            cells = []
            for target in TARGETS:
                ks = distinct_kernels(model, target, cache)
                conv = sum(1 for fn, _ in ks if fn.name.startswith("conv_"))
                cells.append(f"{len(ks)} ({conv})")
            print(f"| {model} | " + " | ".join(cells) + " |")


def cold_worker(model: str, target: str) -> dict:
    """Import cnnc and compile ``model``: wall seconds of both, and CPU seconds of this
    process until then (the interpreter's start included; not its workers')."""
    t0 = time.perf_counter()
    import cnnc

    cnnc.compile((ROOT / "zoo" / f"{model}.cnn").read_text(), target=target)
    wall = time.perf_counter() - t0
    c = os.times()
    return {"wall_s": wall, "self_cpu_s": c.user + c.system}


def cold(model: str, target: str, rounds: int, pythons: list[str]) -> None:
    """``rounds`` cold compiles by each interpreter of ``pythons`` (each its own checkout's
    virtual environment: A/B alternating), each in a fresh process on an empty cache."""
    import resource

    for r in range(rounds):
        for python in pythons:
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, CNNC_CACHE_DIR=cache, NUMBA_NUM_THREADS="2")
                load = os.getloadavg()[0]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                out = subprocess.run([python, __file__, "cold-worker", "--model", model,
                                      "--target", target], env=env, capture_output=True,
                                     text=True, check=True).stdout
                whole = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                res = json.loads(out.strip().splitlines()[-1])
                print(f"{model} {target} round {r} {python}: whole process wall {whole:.1f} s, "
                      f"CPU {cpu:.1f} s; import and compile wall {res['wall_s']:.1f} s, "
                      f"the main process's CPU until then {res['self_cpu_s']:.1f} s; "
                      f"load {load:.1f}",
                      flush=True)


class StageTimer:
    """CPU seconds of this thread per Numba compiler pass (``numba:run_pass`` events) and per
    stage of LLVM's work (Numba's code-library methods, timed by wrappers)."""

    #: Methods of Numba's code libraries and the stage each is.
    LLVM_STAGES = (("CPUCodeLibrary", "_optimize_functions", "LLVM function passes"),
                   ("CPUCodeLibrary", "_optimize_final_module", "LLVM module passes"),
                   ("JITCodeLibrary", "_finalize_specific", "machine code"))

    def __init__(self) -> None:
        from numba.core import codegen, event

        self.totals: dict[str, float] = {}
        started: dict[str, float] = {}
        totals = self.totals

        class Listener(event.Listener):
            def on_start(self, ev):
                started[ev.data["name"]] = time.thread_time()

            def on_end(self, ev):
                name = ev.data["name"]
                key = name.split(" [")[0]  # "<pass> [<function>]"
                totals[key] = totals.get(key, 0.0) + time.thread_time() - started.pop(name)

        event.register("numba:run_pass", Listener())
        for cls_name, method, label in self.LLVM_STAGES:
            cls = getattr(codegen, cls_name)
            setattr(cls, method, self._timed(getattr(cls, method), label))

    def _timed(self, fn, label: str):
        totals = self.totals

        def timed(*args, **kwargs):
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.thread_time() - t
        return timed


#: The columns of ``kernels``: Numba's passes and LLVM's stages (the module passes and the
#: machine code run inside the lowering pass's finalization of the library, or after it).
COLUMNS = (("nopython_type_inference", "type inference"),
           ("native_lowering", "lowering (incl. LLVM)"),
           ("LLVM function passes", "LLVM function passes"),
           ("LLVM module passes", "LLVM module passes"),
           ("machine code", "machine code"))


def kernels(model: str, target: str) -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CNNC_PARALLEL_COMPILE"] = "0"
        ks = distinct_kernels(model, target, cache)
        timer = StageTimer()
        ks[0][0].compile()  # the first compile also loads Numba's machinery: not counted
        print("| kernel | CPU s | " + " | ".join(label for _, label in COLUMNS)
              + " | source lines |")
        print("|---|---|" + "---|" * len(COLUMNS) + "---|")
        total = 0.0
        for fn, _ in ks[1:]:
            timer.totals.clear()
            c0 = time.thread_time()
            fn.compile()
            cpu = time.thread_time() - c0
            total += cpu
            lines = sum(1 for _ in open(fn.path))
            print(f"| {fn.path.parent.name.rsplit('-', 1)[0]}:{fn.name} | {cpu:.2f} | "
                  + " | ".join(f"{timer.totals.get(key, 0.0):.2f}" for key, _ in COLUMNS)
                  + f" | {lines} |", flush=True)
        print(f"total (without the first kernel): {total:.1f} s CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("count", "cold", "kernels", "cold-worker"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--target", default="avx512", choices=TARGETS)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--python", default=sys.executable,
                    help="cold: interpreters to alternate, comma-separated (each checkout's "
                         "virtual environment's python: base and branch)")
    args = ap.parse_args()
    if args.what == "count":
        count(args.models.split(","))
    elif args.what == "cold":
        cold(args.model, args.target, args.rounds, args.python.split(","))
    elif args.what == "cold-worker":
        print(json.dumps(cold_worker(args.model, args.target)))
    else:
        kernels(args.model, args.target)


if __name__ == "__main__":
    main()
