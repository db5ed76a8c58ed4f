"""Compile a model's distinct kernels in parallel worker processes on a cold cache.

Numba compiles one function at a time in one thread, and a network needs a few to a few tens of
distinct kernels (1-7 s each). Every kernel lives in its own cached module file with
``cache=True``, so compilation can happen anywhere: when more than one kernel is missing from
Numba's disk cache, ``warm_modules`` splits them into ``min(os.cpu_count(), n)`` shares; this
process compiles the first share itself (it would only wait otherwise, and has Numba loaded
already, where a worker first spends about half a second of CPU importing it) while one worker
process per other share imports its modules and compiles each task function (one signature for
all: ``tasks.SIGNATURE``), which writes Numba's cache. This process then loads the workers'
machine code from the cache when it binds the calls.

Everything here is an optimization: if a worker fails, times out or cannot start, the kernels
it did not finish compile in-process on first call as before. Concurrent compiles of the same
kernel (pytest-xdist, two users) are safe: Numba replaces its cache files atomically, and a
lost index entry only means one more compile. ``CNNC_PARALLEL_COMPILE=0`` turns this off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tasks import TaskKernel, compile_task_function, task_function

__all__ = ["Job", "jobs_for", "warm_modules"]

#: Seconds a worker may take before it is abandoned (its kernels then compile in-process).
WORKER_TIMEOUT = 900


@dataclass(frozen=True)
class Job:
    """Compile the task function ``func`` of the module file ``path``."""

    path: str
    func: str
    cost: int = 1  # rough relative compile time, to balance the workers
    index: str = ""  # Numba's cache index file: it exists once the job is done
    kernel: TaskKernel | None = field(default=None, compare=False)  # in-process


def jobs_for(steps: Iterable[Any]) -> list[Job]:
    """Jobs for the kernels a plan's steps call that are not in Numba's cache yet.
    Convolution kernels count 4x (they compile slower)."""
    jobs: dict[tuple[str, str], Job] = {}
    for step in steps:
        for call in step.calls:
            fn = call.fn
            if not isinstance(fn, TaskKernel) or (str(fn.path), fn.name) in jobs:
                continue
            index = fn.index_path
            if os.path.exists(index):
                continue
            cost = 4 if step.sources and call.ir is None else 1  # a convolution step's kernels
            jobs[(str(fn.path), fn.name)] = Job(str(fn.path), fn.name, cost, index, fn)
    return list(jobs.values())


def _enabled() -> bool:
    return os.environ.get("CNNC_PARALLEL_COMPILE", "1") not in ("0", "", "false", "no")


Progress = Callable[[int, int], None]


def warm_modules(jobs: list[Job], workers: int | None = None,
                 progress: Progress | None = None) -> int:
    """Compile ``jobs`` here and in parallel worker processes; returns how many worker
    processes ran (one fewer than the shares: this process compiles the first).

    ``progress(done, total)`` is called as jobs finish (polled from Numba's cache files), and
    at the end. With fewer than two jobs or one CPU (or parallel compiling turned off) the
    jobs compile here, one after the other, each followed by a ``progress`` call: a cold
    compile always reports, even of one slow kernel. Never raises: failures leave the kernels
    to the compile at their first call.
    """
    n_cpu = os.cpu_count() or 1
    workers = min(workers or n_cpu, len(jobs))
    if workers < 2 or not _enabled():
        _compile_here(jobs, progress)
        return 0
    # Longest first, each to the least loaded worker.
    shares: list[list[Job]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for job in sorted(jobs, key=lambda j: -j.cost):
        i = loads.index(min(loads))
        shares[i].append(job)
        loads[i] += job.cost
    procs = []
    files = []

    def report(*_: int) -> None:
        if progress is not None:
            progress(sum(bool(j.index) and os.path.exists(j.index) for j in jobs), len(jobs))

    try:
        for share in shares[1:]:
            fd, name = tempfile.mkstemp(prefix="cnnc-warm-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump([[j.path, j.func] for j in share], f)
            files.append(name)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "cnnc.compiler.backends.numba.warm", name],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _compile_here(shares[0], report)
        deadline = time.monotonic() + WORKER_TIMEOUT
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            report()
            time.sleep(0.2)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if progress is not None:
            progress(len(jobs), len(jobs))
    except Exception:
        for p in procs:
            if p.poll() is None:
                p.kill()
    finally:
        for name in files:
            try:
                os.unlink(name)
            except OSError:
                pass
    return len(procs)


def _compile_here(jobs: list[Job], progress: Progress | None) -> None:
    """Compile each job's function in this process (its loaded kernel, so binding finds it
    compiled), reporting after each."""
    for done, job in enumerate(jobs, 1):
        if job.kernel is not None:
            try:
                job.kernel.compile()
            except Exception:  # binding the calls compiles it instead, and says why
                pass
        if progress is not None:
            progress(done, len(jobs))


def _compile_jobs(jobs: list[list]) -> None:
    """Worker: import each module file and compile its function (writes Numba's cache)."""
    import importlib.util

    for path, func in jobs:
        try:
            p = Path(path)
            name = f"cnnc_gen_{p.parent.name.replace('-', '_')}"
            mod = sys.modules.get(name)
            if mod is None:
                spec = importlib.util.spec_from_file_location(name, p)
                assert spec is not None and spec.loader is not None
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
            compile_task_function(task_function(getattr(mod, func), p), p)
        except Exception:  # the main process compiles it instead
            continue


if __name__ == "__main__":  # pragma: no cover - run as a worker process
    with open(sys.argv[1]) as f:
        _compile_jobs(json.load(f))
