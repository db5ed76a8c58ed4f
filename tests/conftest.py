"""Shared test settings: hypothesis profiles sized for a 2-core CI machine, and the default
compile target."""

import os

# OpenMP's threads (Numba's threading layer here) spin after each parallel region for the next
# one; with two test workers on two cores each spinning thread takes the core another worker's
# thread needs: under load a training test took 4x the CPU time (41 s against 10 s). Tests check
# numbers, not speed, so their threads sleep when idle. Set before anything loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from cnnc.compiler import target  # noqa: E402

# "ci" draws the same examples at every run (derandomized: a stop is never refused for an
# example no earlier run drew); "thorough" (CNNC_HYPOTHESIS_PROFILE=thorough) draws new ones
# each time, many more, and is how new cases are looked for.
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("CNNC_HYPOTHESIS_PROFILE", "ci"))


#: This machine's own target query, for the tests marked ``host_target``.
_HOST_TARGET = target.host_target

# Under pytest-xdist with a worker per core, a compile's parallel-compile worker processes
# (compiler/backends/numba/warm.py) only compete with the other test workers for the same cores,
# and each one first spends about a second of CPU importing Numba and cnnc, and this process
# then loads their machine code back from the cache: on 2 cores the suite does more work for
# nothing. So the test workers compile in-process (set CNNC_PARALLEL_COMPILE to override;
# tests/codegen/test_cache.py turns it on to test it).
if (int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1)
        and "CNNC_PARALLEL_COMPILE" not in os.environ):
    os.environ["CNNC_PARALLEL_COMPILE"] = "0"


@pytest.fixture(autouse=True, scope="session")
def _eight_lane_target_by_default():
    """Compile at the 8-lane target ("cpu" means avx2 here), unless a test is marked
    ``host_target`` or names its target. The patched host query is the one every default asks
    when it is used (``resolve_target``: ``compile()``, ``PassContext()``, so the passes run
    alone and ``cnnc summary``/``show``), so it reaches them all (tests/compiler/test_target.py).
    It holds for the whole session, so a module- or session-scoped fixture's models (set up
    before any function-scoped fixture) are 8-lane too: their kernels are the ones the rest of
    the suite compiles, not 16-lane twins compiled for that fixture alone.

    Why: on an AVX-512 machine the 16-lane kernels take about twice as long to compile, and
    a cold CI cache compiles every zoo network's kernels. They compute the same numbers bit for
    bit (same FMAs, same order), which ``test_targets_agree_bitwise`` (whole networks, both
    targets) and the tile tests in ``tests/codegen/test_conv.py`` check directly.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(target, "host_target", lambda: target.TARGETS["avx2"])
        yield


@pytest.fixture(autouse=True)
def _this_machines_target_where_marked(request, monkeypatch):
    """A test marked ``host_target`` compiles for this machine's CPU."""
    if request.node.get_closest_marker("host_target"):
        monkeypatch.setattr(target, "host_target", _HOST_TARGET)


# --- Compile-work log (off unless CNNC_TEST_KERNEL_LOG names a folder) -------------------------
# Each pytest process appends one JSON line per test to <folder>/<worker>.jsonl: the kernel
# modules it was first to write into the cache (each a distinct kernel source: a cold compile),
# the seconds (wall and this thread's CPU) Numba spent compiling, or loading from its cache, in
# this process (the parallel-compile workers' time is not in it), and the test's CPU seconds:
# this process's (``cpu_s``, every thread) and its finished child processes' (``child_cpu_s``:
# command-line runs, compile workers). How the suite's compile budget is spent, test by test,
# in numbers the other processes on a shared machine do not distort; it changes no test.
_KERNEL_LOG = os.environ.get("CNNC_TEST_KERNEL_LOG")

if _KERNEL_LOG:
    import json
    import resource
    import time
    from pathlib import Path

    _current = {"test": "", "new": [], "compile_s": 0.0, "compile_cpu_s": 0.0}

    def pytest_configure(config):
        from numba.core import event

        from cnnc.compiler.backends.numba import cache

        load = cache.load_module

        def logged_load_module(source, tag, root=None):
            folder = cache.module_path(source, tag, root).parent
            existed = folder.exists()
            module = load(source, tag, root)
            if not existed:
                where = "" if root is None else f" (in {root})"
                _current["new"].append(folder.name + where)
            return module

        cache.load_module = logged_load_module

        class CompileTimer(event.Listener):
            depth = 0
            start = cpu_start = 0.0

            def on_start(self, ev):
                if self.depth == 0:
                    self.start, self.cpu_start = time.perf_counter(), time.thread_time()
                self.depth += 1

            def on_end(self, ev):
                self.depth -= 1
                if self.depth == 0:
                    _current["compile_s"] += time.perf_counter() - self.start
                    _current["compile_cpu_s"] += time.thread_time() - self.cpu_start

        event.register("numba:compile", CompileTimer())

        # The kernels are C callbacks (``tasks.compile_task_function``), whose compiles (or
        # loads from Numba's cache) raise no compile event: time them where they happen.
        from numba.core.ccallback import CFunc

        compile_cfunc = CFunc.compile

        def timed_compile(self):
            start, cpu_start = time.perf_counter(), time.thread_time()
            try:
                return compile_cfunc(self)
            finally:
                _current["compile_s"] += time.perf_counter() - start
                _current["compile_cpu_s"] += time.thread_time() - cpu_start

        CFunc.compile = timed_compile

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _current.update(test=item.nodeid, new=[], compile_s=0.0, compile_cpu_s=0.0)
        t0, cpu0, child0 = time.perf_counter(), time.process_time(), _children_cpu()
        yield
        cpu, child = time.process_time() - cpu0, _children_cpu() - child0
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(_KERNEL_LOG).mkdir(parents=True, exist_ok=True)
        with open(Path(_KERNEL_LOG) / f"{worker}.jsonl", "a") as f:
            f.write(json.dumps({"test": item.nodeid, "new": _current["new"],
                                "compile_s": round(_current["compile_s"], 2),
                                "compile_cpu_s": round(_current["compile_cpu_s"], 2),
                                "wall_s": round(time.perf_counter() - t0, 2),
                                "cpu_s": round(cpu, 2), "child_cpu_s": round(child, 2)}) + "\n")

    def _children_cpu() -> float:
        """CPU seconds of this process's finished (waited-for) child processes."""
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
