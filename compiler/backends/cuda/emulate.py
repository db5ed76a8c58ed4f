"""Run generated CUDA on the CPU: the module's very source, compiled by the system C++
compiler against a small force-included header (:data:`HEADER`), loaded with ctypes.

The header supplies what CUDA C adds to C++ as the kernels use it: ``threadIdx``,
``blockIdx``, ``blockDim``, ``gridDim``, the function qualifiers, integer ``min``/``max`` and
the bit casts of the non-finite literals, ``__shared__`` arrays and ``__syncthreads``; CUDA's
math functions are C's. A launch runs every block in turn and the threads of a block in
forward, reversed or a shuffled order (:data:`ORDERS`: a kernel whose threads race for an
element, or read a shared array before the barrier that would make it complete, shows up as
different numbers): as iterations of a loop, or, in a kernel with barriers, as fibers (one
stack each; a hand-written x86-64 switch of the callee-saved registers) that each run to
their next barrier in that order; the threads then
go on together, and a block whose threads do not all reach the same barrier fails the launch
(:class:`BarrierError`). Every array of the emulated GPU ends at an inaccessible page
(``memory.EmulatedMemory``) and a launch catches the fault, so a kernel that reads or writes
past the end of an array fails its launch (:class:`EmulationCrash`), not the caller.

A launch takes arrays of the emulated GPU's memory (``memory.EmulatedArray``) and refuses
host arrays, as a CuPy launch does. Each kernel gets a host entry
``cnnc_launch_<name>(blocks, threads, order, args)`` whose ``args`` is CUDA's launch layout
(``void**``: one pointer per argument to its value), so the ctypes side passes arguments as a
CuPy launch does. The shared library is cached by the hash of
its sources and the compiler's version.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from ...kernels.kernel_ir import Barrier, Kernel, walk
from ..numba.cache import cache_root
from .launch import scalar_argument
from .memory import EmulatedArray, EmulatedMemory

__all__ = ["HEADER", "ORDERS", "EmulatedModule", "BarrierError", "EmulationCrash",
           "compiler_path", "launch_source"]

#: Thread orders within a block: index of the order -> name.
ORDERS = ("forward", "reversed", "shuffled")

HEADER = r"""
// cnnc's CUDA-on-CPU emulation header: force-included before a generated module.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <signal.h>

struct cnnc_dim3 { unsigned x, y, z; };
static thread_local cnnc_dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline double __longlong_as_double(long long i) {
    double d; memcpy(&d, &i, sizeof d); return d;
}
#define __shared__ static  /* blocks run one after another: one copy serves each in turn */

/* The threads of a block that meets at barriers run as fibers, one stack each: a thread runs
   until its next __syncthreads (or its end), then the next thread in the launch's order; when
   every thread waits at the same barrier they all go on. On x86-64 a fiber switch saves and
   restores the callee-saved registers and the stack pointer (a few nanoseconds: blocks of 256
   threads meet at thousands of barriers). */
struct cnnc_fiber { void *sp; unsigned tid; int state; int line; };
enum { CNNC_RUNNING = 0, CNNC_WAITING = 1, CNNC_DONE = 2 };
static cnnc_fiber *cnnc_current = 0;
static void *cnnc_scheduler_sp = 0;
static void (*cnnc_body)(void **) = 0;
static void **cnnc_args = 0;

#if defined(__x86_64__)
/* Save the callee-saved registers, MXCSR and the x87 control word on this stack, store the
   stack pointer in *from, continue on stack `to` (saved the same way, or made by
   cnnc_fiber_stack). */
extern "C" void cnnc_switch(void **from, void *to);
__asm__(
    ".text\n.globl cnnc_switch\n.hidden cnnc_switch\n.type cnnc_switch,@function\n"
    "cnnc_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size cnnc_switch, .-cnnc_switch\n");

static void cnnc_fiber_main();

/* A new fiber's saved stack: the first switch to it "returns" into cnnc_fiber_main with the
   stack aligned as a call would leave it. */
static void *cnnc_fiber_stack(char *base, size_t size) {
    unsigned long long *top = (unsigned long long *)(((size_t)(base + size)) & ~(size_t)15);
    unsigned control[2];
    __asm__ volatile("stmxcsr %0\n fnstcw %1" : "=m"(control[0]), "=m"(control[1]));
    *--top = 0;                                     /* cnnc_fiber_main's return address */
    *--top = (unsigned long long)cnnc_fiber_main;   /* where the first switch returns to */
    for (int i = 0; i < 6; ++i) *--top = 0;         /* rbp rbx r12 r13 r14 r15 */
    *--top = (unsigned long long)control[0] | ((unsigned long long)(control[1] & 0xffff) << 32);
    return top;
}
static inline void cnnc_to_fiber(cnnc_fiber *f) { cnnc_switch(&cnnc_scheduler_sp, f->sp); }
static inline void cnnc_to_scheduler() { cnnc_switch(&cnnc_current->sp, cnnc_scheduler_sp); }
#else
#error "the emulation's fibers (threads meeting at __syncthreads) switch x86-64 registers"
#endif

static inline void cnnc_barrier(int line) {
    if (!cnnc_current) {
        fprintf(stderr, "cnnc emulation: __syncthreads in a kernel launched without fibers\n");
        abort();
    }
    cnnc_current->state = CNNC_WAITING;
    cnnc_current->line = line;
    cnnc_to_scheduler();
}
#define __syncthreads() cnnc_barrier(__LINE__)

static void cnnc_fiber_main() {
    cnnc_body(cnnc_args);
    cnnc_current->state = CNNC_DONE;
    cnnc_to_scheduler();  /* never resumed */
    abort();
}

/* Thread i of n in the given order (0 forward, 1 reversed, 2 a permutation drawn per block). */
static inline unsigned cnnc_thread_order(unsigned *perm, unsigned n, int order, unsigned block) {
    for (unsigned i = 0; i < n; ++i) perm[i] = order == 1 ? n - 1 - i : i;
    if (order == 2) {
        unsigned long long s = 0x9E3779B97F4A7C15ull ^ block;
        for (unsigned i = n - 1; i > 0; --i) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            unsigned j = (unsigned)((s >> 33) % (i + 1));
            unsigned t = perm[i]; perm[i] = perm[j]; perm[j] = t;
        }
    }
    return n;
}

/* The scratch memory cnnc_run_fibers takes for `threads` threads: a record and a stack each
   (given by the caller, so that a launch allocates nothing). */
enum { CNNC_FIBER_STACK = 64 * 1024 };
extern "C" size_t cnnc_fiber_scratch_bytes(unsigned threads) {
    return (size_t)threads * (sizeof(cnnc_fiber) + CNNC_FIBER_STACK) + 64;
}

/* Run `blocks` blocks of `threads` fibers each calling body(args). Returns 0, or 1 + the first
   block whose threads did not all reach the same barrier (some ended or waited elsewhere). */
static int cnnc_run_fibers(unsigned blocks, unsigned threads, int order,
                           void (*body)(void **), void **args, char *scratch) {
    char *stacks = (char *)(((size_t)scratch + 63) & ~(size_t)63);
    cnnc_fiber *fibers = (cnnc_fiber *)(stacks + (size_t)CNNC_FIBER_STACK * threads);
    unsigned perm[1024];
    int failed = 0;
    cnnc_body = body;
    cnnc_args = args;
    gridDim = {blocks, 1, 1};
    blockDim = {threads, 1, 1};
    for (unsigned b = 0; b < blocks && !failed; ++b) {
        blockIdx = {b, 0, 0};
        cnnc_thread_order(perm, threads, order, b);
        for (unsigned i = 0; i < threads; ++i) {
            cnnc_fiber *f = &fibers[i];
            f->sp = cnnc_fiber_stack(stacks + (size_t)CNNC_FIBER_STACK * i, CNNC_FIBER_STACK);
            f->tid = i;
            f->state = CNNC_RUNNING;
        }
        for (;;) {
            for (unsigned i = 0; i < threads; ++i) {
                cnnc_fiber *f = &fibers[perm[i]];
                if (f->state != CNNC_RUNNING) continue;
                cnnc_current = f;
                threadIdx = {f->tid, 0, 0};
                cnnc_to_fiber(f);
            }
            unsigned done = 0, same = 0;
            for (unsigned i = 0; i < threads; ++i) {
                done += fibers[i].state == CNNC_DONE;
                same += fibers[i].state == CNNC_WAITING && fibers[i].line == fibers[0].line;
            }
            if (done == threads) break;
            if (same != threads) { failed = 1 + (int)b; break; }
            for (unsigned i = 0; i < threads; ++i) fibers[i].state = CNNC_RUNNING;
        }
    }
    cnnc_current = 0;
    return failed;
}

/* Run a launch with SIGSEGV and SIGBUS caught (on a stack of their own): a kernel that reads
   or writes past the end of an array reaches the guard page after it, and the launch returns
   minus the signal instead of ending the process. The caller's handlers are restored after. */
typedef int (*cnnc_grid_fn)(unsigned, unsigned, int, void **, char *);
static sigjmp_buf cnnc_fault_jump;
static volatile sig_atomic_t cnnc_fault_signal = 0;
static char cnnc_fault_stack[1 << 16];
static void cnnc_on_fault(int sig) {
    cnnc_fault_signal = sig;
    siglongjmp(cnnc_fault_jump, 1);
}
static int cnnc_guarded(cnnc_grid_fn grid, unsigned blocks, unsigned threads, int order,
                        void **args, char *scratch) {
    struct sigaction act, old_segv, old_bus;
    stack_t stack, old_stack;
    memset(&act, 0, sizeof act);
    act.sa_handler = cnnc_on_fault;
    act.sa_flags = SA_ONSTACK;
    sigemptyset(&act.sa_mask);
    stack.ss_sp = cnnc_fault_stack;
    stack.ss_size = sizeof cnnc_fault_stack;
    stack.ss_flags = 0;
    sigaltstack(&stack, &old_stack);
    sigaction(SIGSEGV, &act, &old_segv);
    sigaction(SIGBUS, &act, &old_bus);
    int result;
    if (sigsetjmp(cnnc_fault_jump, 1) == 0) {
        result = grid(blocks, threads, order, args, scratch);
    } else {
        result = -(int)cnnc_fault_signal;
    }
    sigaction(SIGSEGV, &old_segv, 0);
    sigaction(SIGBUS, &old_bus, 0);
    sigaltstack(&old_stack, 0);
    cnnc_current = 0;
    return result;
}
"""


#: How the host entry reads each kind of parameter from CUDA's launch layout.
_LAUNCH_TYPES = {"int": "int", "float": "float", "array": "float*", "int_array": "long long*"}


def launch_source(kernels: Sequence[Kernel], module_file: str) -> str:
    """The translation unit of the emulation: the generated module included verbatim, then one
    host entry per kernel that runs its grid under ``cnnc_guarded`` (returning 0, 1 + the block
    whose threads did not meet at the same barrier, or minus the signal of a fault). A kernel
    whose threads meet at barriers runs them as fibers; any other runs each thread to its end
    in turn."""
    lines = [f'#include "{module_file}"', ""]
    for k in kernels:
        args = ", ".join(f"*({_LAUNCH_TYPES[p.kind]}*)args[{i}]" for i, p in enumerate(k.params))
        grid = (f"static int cnnc_grid_{k.name}(unsigned blocks, unsigned threads, int order, "
                "void** args, char* scratch) {")
        if any(isinstance(s, Barrier) for s, _ in walk(k.body)):
            lines += [
                f"static void cnnc_body_{k.name}(void** args) {{ {k.name}({args}); }}",
                grid,
                f"    return cnnc_run_fibers(blocks, threads, order, cnnc_body_{k.name}, args, "
                "scratch);",
                "}",
            ]
        else:
            lines += [
                grid,
                "    (void)scratch;",
                "    unsigned perm[1024];",
                "    gridDim = {blocks, 1, 1};",
                "    blockDim = {threads, 1, 1};",
                "    for (unsigned b = 0; b < blocks; ++b) {",
                "        blockIdx = {b, 0, 0};",
                "        cnnc_thread_order(perm, threads, order, b);",
                "        for (unsigned i = 0; i < threads; ++i) {",
                "            threadIdx = {perm[i], 0, 0};",
                f"            {k.name}({args});",
                "        }",
                "    }",
                "    return 0;",
                "}",
            ]
        lines += [
            f'extern "C" int cnnc_launch_{k.name}(unsigned blocks, unsigned threads, int order, '
            "void** args, char* scratch) {",
            f"    return cnnc_guarded(cnnc_grid_{k.name}, blocks, threads, order, args, scratch);",
            "}",
            "",
        ]
    return "\n".join(lines)


def compiler_path() -> str | None:
    """The C++ compiler the emulation uses (``$CXX``, else ``g++``, else ``clang++``)."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@lru_cache(maxsize=4)
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True,
                          check=False).stdout.split("\n")[0]


#: Flags of the emulation build: optimized, no fast-math (CUDA's float semantics), every
#: warning of the generated code an error except the CUDA pragmas C++ does not know.
CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-Wall",
             "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-function")


class BarrierError(RuntimeError):
    """The threads of a block did not all reach the same barrier."""


class EmulationCrash(RuntimeError):
    """A launch faulted (an access past the end of an array)."""


class EmulatedModule:
    """A generated CUDA module compiled for the CPU (built on creation, cached on disk).
    ``order`` is the thread order of every launch (:data:`ORDERS`). A kernel that faults
    fails its launch (:class:`EmulationCrash`) instead of ending the caller. ``memory``: the
    emulated GPU's memory whose captures (``EmulatedMemory.capture``) record this module's
    launches instead of running them."""

    def __init__(self, source: str, kernels: Sequence[Kernel], root: Path | None = None,
                 order: str = "forward", memory: EmulatedMemory | None = None) -> None:
        cxx = compiler_path()
        if cxx is None:
            raise RuntimeError("the CUDA emulation needs a C++ compiler (g++ or clang++; "
                               "$CXX), and none is on PATH")
        self.order = order
        self.memory = memory
        self._scratch: np.ndarray | None = None
        launch = launch_source(kernels, "module.cu")
        key = hashlib.sha256("\0".join([HEADER, source, launch, " ".join(CXX_FLAGS),
                                        _compiler_version(cxx)]).encode()).hexdigest()[:24]
        folder = (root if root is not None else cache_root()) / "cuda-emu"
        lib = folder / f"{key}.so"
        if not lib.exists():
            _build(cxx, source, launch, lib)
        self.lib = ctypes.CDLL(str(lib))
        self.lib.cnnc_fiber_scratch_bytes.restype = ctypes.c_size_t

    def _fiber_scratch(self, threads: int) -> ctypes.c_void_p:
        """The fibers' records and stacks for blocks of ``threads`` (kept between launches)."""
        size = int(self.lib.cnnc_fiber_scratch_bytes(ctypes.c_uint(threads)))
        if self._scratch is None or self._scratch.size < size:
            self._scratch = np.empty(size, np.uint8)
        return ctypes.c_void_p(self._scratch.ctypes.data)

    @property
    def order(self) -> str:
        return ORDERS[self._order]

    @order.setter
    def order(self, name: str) -> None:
        if name not in ORDERS:
            raise ValueError(f"thread order {name!r}: expected one of {', '.join(ORDERS)}")
        self._order = ORDERS.index(name)

    def launch(self, name: str, blocks: int, threads: int, kernel: Kernel,
               args: Sequence[Any]) -> None:
        if self.memory is not None and self.memory.recording is not None:
            self.memory.recording.append(partial(self.launch, name, blocks, threads, kernel,
                                                 tuple(args)))
            return
        values = [_SCALARS[p.kind](scalar_argument(p.kind, a)) if p.kind in _SCALARS else
                  ctypes.c_void_p(_device_pointer(kernel, p.name, a))
                  for p, a in zip(kernel.params, args)]
        argv = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        entry = getattr(self.lib, f"cnnc_launch_{name}")
        entry.restype = ctypes.c_int
        status = entry(ctypes.c_uint(blocks), ctypes.c_uint(threads), ctypes.c_int(self._order),
                       argv, self._fiber_scratch(threads))
        if status < 0:
            raise EmulationCrash(f"kernel {name} ({blocks} blocks of {threads} threads) faulted "
                                 f"with {signal.Signals(-status).name}: an access past the end "
                                 "of an array (the emulation caught it; a GPU would report an "
                                 "illegal address)")
        failed = status
        if failed:
            raise BarrierError(f"kernel {name}: the threads of block {failed - 1} did not all "
                               "reach the same __syncthreads (on a GPU: a hang or undefined "
                               "behaviour)")


#: The ctypes value of each kind of scalar argument.
_SCALARS = {"int": ctypes.c_int, "float": ctypes.c_float}


def _device_pointer(kernel: Kernel, name: str, a: Any) -> int:
    """The address of device array ``a``; a host array is refused, as CuPy refuses one."""
    if not isinstance(a, EmulatedArray):
        raise TypeError(f"kernel {kernel.name}: {name} is a {type(a).__name__} in host memory; "
                        "kernels take device arrays (upload it first)")
    return a.pointer


def _build(cxx: str, source: str, launch: str, lib: Path) -> None:
    """Compile the module and its launch entries into the shared library ``lib`` (written
    whole, then moved in place: a concurrent build never loads half a file)."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnnc-emu-") as tmp:
        t = Path(tmp)
        (t / "cuda_emulation.h").write_text(HEADER, encoding="utf-8")
        (t / "module.cu").write_text(source, encoding="utf-8")
        (t / "launch.cpp").write_text(launch, encoding="utf-8")
        out = t / "module.so"
        done = subprocess.run([cxx, *CXX_FLAGS, "-include", str(t / "cuda_emulation.h"),
                               "-o", str(out), str(t / "launch.cpp")],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the CUDA emulation build failed:\n{done.stderr[-4000:]}")
        os.replace(out, lib)
