"""Compile a model's distinct kernels in parallel worker processes on a cold cache.

Numba compiles one function at a time in one thread, and a network needs a few to a few tens of
distinct kernels (1-7 s each). Every kernel lives in its own cached module file with
``cache=True``, so compilation can happen anywhere: when more than one kernel is missing from
Numba's disk cache, :func:`start` sends the list of them, longest first, to
``min(os.cpu_count(), n) - 1`` worker processes, and :meth:`Warming.finish` has this process
compile too. Each process takes the next kernel no other has taken (the kernel's entry lock,
tried without waiting: ``cache.compile_lock``), so the processes share the work as it goes,
whatever each kernel's time and whenever each process joins; this process then waits for the
kernels others are compiling and loads their machine code from the cache when it binds the
calls.

A worker costs an interpreter, Numba's import and its compiler's first set-up (about a second
of CPU): :class:`Helpers` starts them when a compile begins (``runtime.model.compile``, on a
miss of the compile cache), so that this happens while the main process parses, optimizes and
lowers the network; they then wait for their jobs on stdin. And ``compile`` does the work that
needs no kernel (the parameters' initial values, their packing) between :func:`start` and
:meth:`Warming.finish`, while the workers compile.

Everything here is an optimization: if a worker fails, times out or cannot start, the kernels
it did not finish compile in this process (the lock of a dead process is free). Concurrent
compiles of the same kernel (pytest-xdist, two users) are safe: Numba replaces its cache files
atomically, and a lost index entry only means one more compile. ``CNNC_PARALLEL_COMPILE=0``
turns this off.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .tasks import TaskKernel, compile_task_function, ready_compiler, task_function

__all__ = ["Job", "jobs_for", "warm_modules", "start", "Warming", "Helpers",
           "parallel_enabled"]

#: Seconds this process waits for a kernel a worker is compiling before it gives up on the
#: workers (the kernel then compiles here).
WORKER_TIMEOUT = 900

#: Workers started ahead, before the number of kernels to compile is known.
PRESTART_MAX = 3

#: Seconds between looks at the cache while this process waits for the workers' kernels.
POLL = 0.02


@dataclass(frozen=True)
class Job:
    """Compile the task function ``func`` of the module file ``path``."""

    path: str
    func: str
    cost: int = 1  # rough relative compile time: the longest are taken first
    index: str = ""  # Numba's cache index file: it exists once the job is done
    kernel: TaskKernel | None = field(default=None, compare=False)  # in-process


def jobs_for(steps: Iterable[Any]) -> list[Job]:
    """Jobs for the kernels a plan's steps call that are not in Numba's cache yet. A
    convolution's kernel counts 4x its module's size in bytes (they compile slower), any
    other kernel its module's size."""
    jobs: dict[tuple[str, str], Job] = {}
    for step in steps:
        for call in step.calls:
            fn = call.fn
            if not isinstance(fn, TaskKernel) or (str(fn.path), fn.name) in jobs:
                continue
            index = fn.index_path
            if os.path.exists(index):
                continue
            try:
                size = os.path.getsize(fn.path)
            except OSError:
                size = 1
            cost = (4 if step.sources and call.ir is None else 1) * size  # a convolution's
            jobs[(str(fn.path), fn.name)] = Job(str(fn.path), fn.name, cost, index, fn)
    return list(jobs.values())


def parallel_enabled() -> bool:
    """Whether kernels may compile in worker processes (``CNNC_PARALLEL_COMPILE``, and more
    than one CPU)."""
    return (os.environ.get("CNNC_PARALLEL_COMPILE", "1") not in ("0", "", "false", "no")
            and (os.cpu_count() or 1) > 1)


Progress = Callable[[int, int], None]

# Workers that were sent their jobs (or told there are none): waited for at exit, so that none
# is left behind and their CPU time counts as this process's children's.
_EXITING: list[subprocess.Popen] = []


def _exiting(p: subprocess.Popen) -> None:
    """Keep ``p`` to be waited for (and forget those that have exited: a long-running process
    compiles many models)."""
    _EXITING[:] = [q for q in _EXITING if q.poll() is None]
    _EXITING.append(p)


@atexit.register
def _reap() -> None:
    for p in _EXITING:
        try:
            p.wait(timeout=5)
        except Exception:  # noqa: BLE001 - never fail at interpreter exit
            p.kill()


class Helpers:
    """Worker processes started before their jobs are known: each imports Numba and gets its
    compiler ready, then reads one line of jobs from stdin (none at end of file)."""

    def __init__(self, count: int) -> None:
        self.procs: list[subprocess.Popen] = []
        self.add(count)

    @classmethod
    def prestart(cls) -> Helpers | None:
        """Workers for a compile that may find its kernels missing (None where parallel
        compiling is off)."""
        if not parallel_enabled():
            return None
        return cls(min((os.cpu_count() or 1) - 1, PRESTART_MAX))

    def add(self, count: int) -> None:
        """Start ``count`` more workers (as many as can start)."""
        for _ in range(count):
            try:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "cnnc.compiler.backends.numba.warm"],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL))
            except OSError:
                return

    def send(self, jobs: list[Job], count: int) -> list[subprocess.Popen]:
        """Send ``jobs`` to ``count`` workers (started here if fewer are) and tell the others
        there are none; returns those that got them."""
        if len(self.procs) < count:
            self.add(count - len(self.procs))
        line = json.dumps([[j.path, j.func, j.index] for j in jobs]) + "\n"
        sent = []
        for i, p in enumerate(self.procs):
            stdin: IO[bytes] | None = p.stdin
            try:
                if i < count and stdin is not None:
                    stdin.write(line.encode())
                    sent.append(p)
                if stdin is not None:
                    stdin.close()
            except OSError:  # the worker died: its jobs are taken by the others
                pass
            _exiting(p)
        self.procs = []
        return sent

    def close(self) -> None:
        """Tell every worker there are no jobs (they exit)."""
        self.send([], 0)

    def kill(self) -> None:
        """Stop this object's workers now (a compile that failed before sending jobs)."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            _exiting(p)
        self.procs = []


class Warming:
    """Jobs sent to workers; :meth:`finish` compiles the rest here and waits for them."""

    def __init__(self, jobs: list[Job], procs: list[subprocess.Popen]) -> None:
        self.jobs = jobs
        self.procs = procs  # the workers that were sent the jobs

    @property
    def workers(self) -> int:
        """How many worker processes were sent the jobs."""
        return len(self.procs)

    def finish(self, progress: Progress | None = None) -> None:
        """Compile the jobs no process has taken, longest first, then wait for those the
        workers are compiling. ``progress(done, total)`` is called as jobs finish (polled from
        Numba's cache files) and at the end. Never raises: a kernel that fails to compile is
        left to the compile at its first call, which says why."""
        pending = list(self.jobs)
        total = len(pending)
        deadline = time.monotonic() + WORKER_TIMEOUT
        while pending:
            late = time.monotonic() > deadline
            if late:  # a worker hangs: stop them, compile the rest here
                for p in _EXITING:
                    if p.poll() is None:
                        p.kill()
            waiting: list[Job] = []
            for i, job in enumerate(pending):
                if job.kernel is not None and not (job.index and os.path.exists(job.index)):
                    try:
                        if not job.kernel.compile(wait=late):
                            waiting.append(job)  # another process is compiling it
                    except Exception:  # binding the calls compiles it again, and says why
                        pass
                if progress is not None:
                    progress(total - (len(pending) - i - 1) - len(waiting), total)
            pending = waiting
            if pending:
                time.sleep(POLL)


def start(jobs: list[Job], workers: int | None = None,
          helpers: Helpers | None = None) -> Warming:
    """Send ``jobs`` to the worker processes (``helpers``, more started where they are
    fewer than ``min(workers, len(jobs)) - 1``; ``workers`` default: the CPUs). With fewer
    than two jobs, one CPU or parallel compiling off, no worker gets any: the jobs then
    compile in :meth:`Warming.finish`."""
    order = sorted(jobs, key=lambda j: -j.cost)
    count = min(workers or os.cpu_count() or 1, len(order)) - 1
    if count < 1 or not parallel_enabled():
        count = 0
    if helpers is None and count:
        helpers = Helpers(0)
    sent = helpers.send(order, count) if helpers is not None else []
    return Warming(order, sent)


def warm_modules(jobs: list[Job], workers: int | None = None,
                 progress: Progress | None = None, helpers: Helpers | None = None) -> int:
    """Compile ``jobs`` here and in parallel worker processes; returns how many worker
    processes were sent them. ``progress(done, total)``: see :meth:`Warming.finish`."""
    warming = start(jobs, workers, helpers)
    warming.finish(progress)
    return warming.workers


def _compile_jobs(jobs: list[list[str]]) -> None:
    """Worker: compile each job's function no other process has taken (writes Numba's
    cache), importing its module file."""
    import importlib.util

    for path, func, index in jobs:
        if os.path.exists(index):
            continue
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
            compile_task_function(task_function(getattr(mod, func), p), p, wait=False)
        except Exception:  # the main process compiles it instead
            continue


def _serve() -> None:
    """Worker: get the compiler ready, then compile the jobs of the line read from stdin."""
    try:
        ready_compiler()
    except Exception:  # noqa: BLE001 - the jobs' compiles say what is wrong, or the main's
        pass
    line = sys.stdin.readline()
    if line.strip():
        _compile_jobs(json.loads(line))


if __name__ == "__main__":  # pragma: no cover - run as a worker process
    _serve()
