"""Running generated CPU kernels: task functions, and one compiled loop that calls them.

A generated kernel is compiled by Numba as a C-callable function ``kernel(task, block)``
(:mod:`block` has the argument layout): a kernel whose work is one flattened parallel loop does
one iteration of that loop per call, any other kernel does all its work in call 0. Nothing in a
kernel is parallel by itself; :func:`run_tasks`, compiled once and cached like any kernel, runs
a sequence of bound kernel calls, the tasks of each either shared by Numba's threads or in
order on one thread, calling each task through the kernel's address.

Scheduling: the threads enter one parallel region for the whole sequence and claim chunks of
each call's tasks from an atomic counter as they become free, waiting at the end of each call
for its last chunks (the next call may read its output). Numba's own ``prange`` schedule is
static with the OpenMP threading layer used here (each thread one fixed share; its
``parallel_chunksize`` is dynamic only with TBB), so a thread whose core another process held
made every call wait for its share, and the threads met once per call; now a late thread finds
the work done by the others and the threads meet once per sequence. A task's sums do not
depend on which thread runs it, so the outputs are the same bits whatever the order.

Why: Numba's parallel transformation of a ``prange`` costs 1-2 s of compilation per function,
about 40% of a convolution kernel's compile and most of a small kernel's; here it is paid once
for every kernel there will ever be. And a whole model's kernels run in one call from Python
(:class:`TaskProgram`), with no Python between them.

A :class:`TaskKernel` is also callable from Python like the function it replaces,
``kernel(*args)`` (tests, the optimizer's update, autotuning): it binds the arguments into a
block and runs them through the same loop.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.ccallback import CFunc
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_lock import global_compiler_lock
from numba.core.compiler_machinery import PassManager
from numba.core.registry import cpu_target
from numba.core.untyped_passes import (
    FindLiterallyCalls,
    InlineClosureLikes,
    InlineInlinables,
    LiteralUnroll,
    MakeFunctionToJitFunction,
    ReconstructSSA,
    WithLifting,
)
from numba.extending import intrinsic

from ...kernels.kernel_ir import Param
from . import cache
from .block import BLOCK, WORDS
from .loading import LoadingCache

__all__ = ["TaskKernel", "TaskProgram", "run_tasks", "CHUNKS_PER_THREAD", "SIGNATURE",
           "task_function", "compile_task_function", "ready_compiler"]

# Numba's OpenMP threads sleep between parallel regions (a model call is one region:
# :func:`run_tasks`) unless the user has said otherwise. Spinning for the next region, as
# OpenMP does by default, takes a core another process needs: MobileNetV2 at batch 1 beside
# two busy processes ran 2.6 times slower, while sleeping costs a quiet call one wake-up
# (about 0.05 ms; bench/RESULTS.md). OpenMP reads this when it loads: it applies only if no
# OpenMP runtime (Numba's parallel code, PyTorch) has started in this process before.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The one signature of every task function: ``void kernel(int64 task, int64 *block)``.
SIGNATURE = types.void(types.int64, BLOCK)

#: Numba options of every task function: no exceptions (an integer division by zero gives a
#: number, as NumPy's does, instead of an exception a C callback could not raise), plain IEEE
#: float arithmetic (the kernels' rounding is what the error bounds state), and none of
#: Numba's rewrites of array expressions, constant subscripts and raises (the generated code
#: has none of them).
OPTIONS = {"nopython": True, "error_model": "numpy", "fastmath": False, "no_rewrites": True}

#: Passes of Numba's nopython pipeline a generated task function does not need: it has no
#: closures or ``with`` blocks, calls no ``literal_unroll``, ``literally`` or inlinable
#: functions, and gives every variable one type wherever it is assigned, which is all the
#: SSA form buys type inference. Left out, a convolution kernel compiles in about 0.75x the
#: time (1.95 s against 2.55 s of CPU), the machine code the same.
UNNEEDED_PASSES = (ReconstructSSA, InlineClosureLikes, MakeFunctionToJitFunction, WithLifting,
                   LiteralUnroll, FindLiterallyCalls, InlineInlinables)


#: LLVM's optimization level of the function passes Numba runs on each function of a task
#: function's module before it links the module and runs the module passes (at Numba's level,
#: ``NUMBA_OPT``, 3 by default, which repeat the same simplifications). At 0 that first round
#: is skipped: ResNet-18's kernels compile in about 1 s less CPU of 12 (LLVM's share 4.1 ->
#: 2.7 s), at the same speed within the host's noise (bench/RESULTS.md, session 23).
FUNCTION_PASS_OPT = 0


@contextlib.contextmanager
def task_llvm_passes() -> Iterator[None]:
    """Compile with :data:`FUNCTION_PASS_OPT` in this block (Numba's CPU code generator is one
    object for every function, so the compiler's lock is held: no other thread compiles with
    it meanwhile)."""
    codegen = cpu_target.target_context.codegen()
    own = vars(codegen).get("_function_pass_manager")
    make = codegen._function_pass_manager

    def function_passes(**kwargs: Any) -> Any:
        return make(**{**kwargs, "opt": FUNCTION_PASS_OPT})

    with global_compiler_lock:
        codegen._function_pass_manager = function_passes
        try:
            yield
        finally:
            if own is None:
                del codegen._function_pass_manager  # the class's method again
            else:
                codegen._function_pass_manager = own


class TaskCompiler(CompilerBase):
    """Numba's nopython pipeline without :data:`UNNEEDED_PASSES`."""

    def define_pipelines(self) -> list[PassManager]:
        pm = PassManager("cnnc task")
        for pass_class, description in \
                DefaultPassBuilder.define_nopython_pipeline(self.state).passes:
            if pass_class not in UNNEEDED_PASSES:
                pm.add_pass(pass_class, description)
        pm.finalize()
        return [pm]


@intrinsic
def _call_task(typingctx, function, task, block):
    """Call the task function at address ``function`` for ``task`` with the block at address
    ``block``."""
    sig = types.void(types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        word = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [word, word.as_pointer()])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [args[1], builder.inttoptr(args[2], word.as_pointer())])
        return context.get_dummy_value()

    return sig, codegen


#: Chunks a parallel call's tasks are cut into per thread: a thread claims one chunk of
#: consecutive tasks at a time (two atomic additions a chunk), so a thread that is late or
#: stalled leaves at most a chunk unfinished for the others to wait on.
CHUNKS_PER_THREAD = 4

#: Spins (``pause``) a thread waits for another's last chunk before it yields its core.
WAIT_SPINS = 2000


@intrinsic
def _fetch_add(typingctx, address, value):
    """Add ``value`` to the int64 at ``address`` atomically; the value it held before."""
    sig = types.int64(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", ptr, args[1], "seq_cst")

    return sig, codegen


@intrinsic
def _load(typingctx, address):
    """The int64 at ``address``, read atomically (acquiring what its writers released)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _address(typingctx, array):
    """The address of ``array``'s first element."""
    sig = types.int64(array)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return sig, codegen


@intrinsic
def _pause(typingctx):
    """The CPU's spin-wait hint (x86's ``pause``; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            fn = cgutils.get_or_insert_function(builder.module,
                                                ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _yield(typingctx):
    """Give the core to another runnable thread (``sched_yield``)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True)
def _work(functions, counts, blocks, first, last, state):  # pragma: no cover - compiled
    """One thread's share of calls ``first`` to ``last - 1``: for each call, claim chunks of
    its tasks and run them until none is left, then wait until every claimed task of it is
    done (the next call may read its output). The int64 words at ``state`` hold, for call
    ``first + i``, its claimed and done task counts and its chunk (words ``3i`` to ``3i + 2``)."""
    for s in range(first, last):
        count = counts[s]
        claimed = state + 24 * (s - first)
        done = claimed + 8
        chunk = _load(claimed + 16)
        while True:
            a = _fetch_add(claimed, chunk)
            if a >= count:
                break
            b = a + chunk if a + chunk < count else count
            for t in range(a, b):
                _call_task(functions[s], t, blocks[s])
            _fetch_add(done, b - a)
        spins = 0
        while _load(done) < count:
            if spins < WAIT_SPINS:
                _pause()
                spins += 1
            else:
                _yield()


@njit(parallel=True, cache=True, nogil=True)
def run_tasks(functions, counts, blocks, parallel, first, last, threads, per_thread,
              state):  # pragma: no cover - compiled
    """Run calls ``first`` to ``last - 1``: call ``s`` runs tasks ``0 .. counts[s] - 1`` of the
    function at address ``functions[s]`` on the block at address ``blocks[s]``, over the
    threads where ``parallel[s]``, else in order on one thread.

    On one thread (or with no parallel call) the calls run in order on the calling thread.
    Otherwise ``threads`` threads enter one parallel region for the whole range and take
    chunks of each call's tasks as they become free (:func:`_work`; ``per_thread`` chunks per
    thread for a parallel call, one chunk of all its tasks for another): a thread that starts
    late (its core taken by another process) finds the work done by the others instead of
    holding every call back by its share, and the threads meet once per range, not once per
    call. ``state``: int64 scratch of 3 words per call (allocated by the caller: an
    allocation here costs a cold compile 0.4 s more)."""
    shared = False
    for s in range(first, last):
        shared = shared or (parallel[s] and counts[s] > 1)
    if threads == 1 or not shared:
        for s in range(first, last):
            for t in range(counts[s]):
                _call_task(functions[s], t, blocks[s])
        return
    for s in range(first, last):
        i = 3 * (s - first)
        state[i] = 0
        state[i + 1] = 0
        state[i + 2] = counts[s] // (threads * per_thread) if parallel[s] else counts[s]
        if state[i + 2] < 1:
            state[i + 2] = 1
    address = _address(state)
    for _ in prange(threads):
        _work(functions, counts, blocks, first, last, address)


# Loaded from Numba's cache without the compiler's start-up (``loading``), as the task
# functions are.
run_tasks._cache = LoadingCache(run_tasks.py_func)


def task_function(py_func: Callable[..., Any], path: Path) -> CFunc:
    """The (not yet compiled) C callback of the task function ``py_func`` of the kernel file
    ``path``, cached on disk beside it."""
    cf = CFunc(py_func, (SIGNATURE.args, SIGNATURE.return_type), locals={},
               options=dict(OPTIONS), pipeline_class=TaskCompiler)
    # Numba's cache (``enable_caching``), loading without the compiler's start-up
    cf._cache = LoadingCache(py_func)
    cache.track_saves(cf, path)
    return cf


def compile_task_function(cf: CFunc, path: Path, wait: bool = True) -> bool:
    """Compile ``cf`` or load it from the cache, holding the kernel file's lock (another
    process compiling it meanwhile: this one then loads its result). Without ``wait``, a
    kernel another process is compiling is left alone: returns whether ``cf`` is compiled."""
    if cf.address is None:
        # Numba's threading layer defines the symbols a task's ``get_thread_id`` links
        # against when it starts, which asking for its size does (parallel code started it
        # before, but a task function alone is not parallel code)
        numba.get_num_threads()
        with cache.compile_lock(path, wait) as held:
            if not held:
                return False
            with task_llvm_passes():
                cf.compile()
    return True


def _idle(task, block):  # pragma: no cover - compiled
    """A task function that does nothing (:func:`ready_compiler` compiles it)."""


def ready_compiler() -> None:
    """Get Numba's compiler ready in this process (its target context refreshed, LLVM's
    passes set up): compile a task function that does nothing, uncached. A parallel-compile
    worker does this while the main process is still lowering (``warm``)."""
    numba.get_num_threads()
    with task_llvm_passes():
        CFunc(_idle, (SIGNATURE.args, SIGNATURE.return_type), locals={}, options=dict(OPTIONS),
              pipeline_class=TaskCompiler).compile()


class TaskKernel:
    """A generated kernel of a cached module: the task function ``name(task, block)`` and its
    task count ``name_tasks(*args)`` (plain Python, evaluated when calls are bound)."""

    def __init__(self, module: ModuleType, name: str, params: Sequence[Param],
                 parallel: bool) -> None:
        self.name = name
        self.py_func = getattr(module, name)
        self.count_tasks: Callable[..., Any] = getattr(module, f"{name}_tasks")
        self.params = tuple(params)
        self.parallel = parallel
        self.path = Path(module.__file__ or "")
        offsets = np.cumsum([0] + [WORDS[p.kind] for p in self.params])
        self.offsets = [int(o) for o in offsets[:-1]]
        self.words = int(offsets[-1])
        self._cfunc: CFunc | None = None

    def __repr__(self) -> str:
        return f"<task kernel {self.name} of {self.path.parent.name}>"

    # -- compiling --------------------------------------------------------------------------
    def _function(self) -> CFunc:
        if self._cfunc is None:
            self._cfunc = task_function(self.py_func, self.path)
        return self._cfunc

    @property
    def index_path(self) -> str:
        """Numba's cache index of the compiled function (it exists once compiled)."""
        return str(self._function()._cache._cache_file._index_path)

    def compile(self, wait: bool = True) -> bool:
        """Compile the task function, or load it from the cache (once per process). Without
        ``wait``, nothing is done while another process compiles it: returns whether it is
        compiled."""
        return compile_task_function(self._function(), self.path, wait)

    @property
    def cache_hits(self) -> int:
        """How many times this process loaded the task function from the disk cache."""
        return self._function().cache_hits

    def inspect_asm(self) -> str:
        """Machine code of the task function (compiled again, without the cache: Numba cannot
        show the assembly of code it loaded from its disk cache)."""
        options = {k: v for k, v in OPTIONS.items() if k != "nopython"}
        fresh = njit(**options)(self.py_func)
        with task_llvm_passes():
            fresh.compile(SIGNATURE.args)
        return fresh.inspect_asm(SIGNATURE.args)

    @property
    def address(self) -> int:
        """The task function's address (compiled on first use)."""
        self.compile()
        return self._function().address

    # -- binding ----------------------------------------------------------------------------
    def tasks(self, args: Sequence[Any]) -> int:
        """How many tasks a call with ``args`` has."""
        return int(self.count_tasks(*args))

    def put(self, words: np.ndarray, pos: int, value: Any) -> None:
        """Write argument ``pos`` into a call's block ``words``."""
        p = self.params[pos]
        at = self.offsets[pos]
        if p.kind in ("array", "int_array"):
            dtype = np.float32 if p.kind == "array" else np.int64
            if not (isinstance(value, np.ndarray) and value.dtype == dtype
                    and value.flags.c_contiguous):
                raise TypeError(f"{self.name}: argument {p.name!r} must be a C-contiguous "
                                f"{np.dtype(dtype).name} array, not {_describe(value)}")
            words[at] = value.ctypes.data
            words[at + 1] = value.size
        elif p.kind == "int":
            words[at] = int(value)
        else:  # float: its float32 bits
            words[at] = int(np.float32(value).view(np.uint32))

    def bind(self, args: Sequence[Any]) -> np.ndarray:
        """The block of a call with ``args`` (None for an array patched in later)."""
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments "
                            f"({', '.join(p.name for p in self.params)}), not {len(args)}")
        words = np.zeros(self.words, np.int64)
        for pos, value in enumerate(args):
            if value is not None:
                self.put(words, pos, value)
        return words

    def __call__(self, *args: Any) -> None:
        """Run the kernel on ``args`` now (its tasks over Numba's threads when parallel)."""
        TaskProgram([(self, list(args))]).run()


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        order = "contiguous" if value.flags.c_contiguous else "strided"
        return f"a {order} {value.dtype} array"
    return type(value).__name__


class TaskProgram:
    """Kernel calls bound once, run in order by one call of :func:`run_tasks`.

    The program holds every array its blocks point to (the blocks hold bare addresses): an
    argument replaced with :meth:`set` is released only when it is no longer in the program.
    It runs on one Python thread at a time: its blocks and :func:`run_tasks`' counters are
    its own.
    """

    def __init__(self, calls: Sequence[tuple[TaskKernel, list[Any]]]) -> None:
        self.kernels = [k for k, _ in calls]
        self.args = [list(a) for _, a in calls]
        self.blocks = [k.bind(a) for k, a in calls]
        n = len(calls)
        self.functions = np.array([k.address for k in self.kernels], np.int64).reshape(n)
        self.counts = np.array([k.tasks(a) for k, a in zip(self.kernels, self.args)],
                               np.int64).reshape(n)
        self.block_addresses = np.array([b.ctypes.data for b in self.blocks],
                                        np.int64).reshape(n)
        self.parallel = np.array([k.parallel for k in self.kernels], np.bool_).reshape(n)
        #: chunks per thread of a parallel call's tasks (``CHUNKS_PER_THREAD``; the outputs
        #: are the same bits whatever it is: a task's sums do not depend on who runs it)
        self.per_thread = CHUNKS_PER_THREAD
        self.state = np.zeros(3 * n, np.int64)  # run_tasks' counters

    def __len__(self) -> int:
        return len(self.kernels)

    def set(self, call: int, pos: int, value: Any) -> None:
        """Replace argument ``pos`` of call ``call`` (an array: a new parameter, an input)."""
        self.kernels[call].put(self.blocks[call], pos, value)
        self.args[call][pos] = value

    def run(self, first: int = 0, last: int | None = None, serial: bool = False) -> None:
        """Run calls ``first`` to ``last - 1`` (all by default); ``serial``: every call's
        tasks in order on the calling thread, no parallel region started (a small call)."""
        run_tasks(self.functions, self.counts, self.block_addresses, self.parallel,
                  first, len(self.kernels) if last is None else last,
                  1 if serial else numba.get_num_threads(), self.per_thread, self.state)
