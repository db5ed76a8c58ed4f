"""How a generated CUDA kernel is launched: the grid of its parallel loop, and the checks on
its arguments. Shared by every module that runs the kernels (CuPy on a GPU, the CPU
emulation), so the emulator exercises the same arithmetic up to the final launch call.

A kernel's parallel loop of extent ``E`` runs as ``ceil(E / THREADS_PER_BLOCK)`` blocks of
``THREADS_PER_BLOCK`` threads, thread ``i`` of block ``b`` running iteration
``b * THREADS_PER_BLOCK + i`` behind the printed bounds guard; a GPU kernel's block loop of
extent ``B`` runs as ``B`` blocks of its thread loop's threads; a kernel without either runs on
one thread.

A kernel's arguments, in its parameters' order (``Param.kind``): ``int`` a Python or NumPy
integer (passed as a 32-bit ``int``), ``float`` a real number (passed as a ``float``:
an optimizer's learning rate), ``array`` a flat float32 device array, ``int_array`` a flat
int64 device array (the dropout seed). :func:`scalar_argument` converts the scalars for
every module alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ...kernels.kernel_ir import Kernel, Let, Loop, evaluate_int

__all__ = ["THREADS_PER_BLOCK", "MAX_ELEMENTS", "launch_shape", "Launcher", "KernelModule",
           "check_arguments", "scalar_argument", "ARRAY_DTYPES"]

#: The element type of each kind of array parameter.
ARRAY_DTYPES = {"array": np.dtype(np.float32), "int_array": np.dtype(np.int64)}

#: Threads of a block (four warps: the vector tiles of the direct convolution hold 100+
#: floats per thread, so few threads per block keep more blocks resident).
THREADS_PER_BLOCK = 128

#: Kernels index with 32-bit ``int``: an array must hold fewer elements.
MAX_ELEMENTS = 2**31 - 1

def launch_shape(kernel: Kernel, ints: Mapping[str, int]) -> tuple[int, int]:
    """``(blocks, threads per block)`` of a launch of ``kernel`` with integer arguments
    ``ints`` (by parameter name); ``(0, ...)`` when the parallel loop is empty."""
    env = dict(ints)
    for s in kernel.body:
        if isinstance(s, Loop) and s.kind == "parallel":
            extent = evaluate_int(s.extent, env)
            return -(-max(extent, 0) // THREADS_PER_BLOCK), THREADS_PER_BLOCK
        if isinstance(s, Loop) and s.kind == "block":  # a block per iteration, its own threads
            threads = next(t.extent for t in s.body if isinstance(t, Loop) and t.kind == "thread")
            return max(evaluate_int(s.extent, env), 0), evaluate_int(threads, env)
        if isinstance(s, Let):  # an invariant the extent may name (floats are skipped)
            try:
                env[s.var] = evaluate_int(s.value, env)
            except ValueError:
                pass
    return 1, 1


def scalar_argument(kind: str, value: Any) -> Any:
    """A scalar argument as the kernel takes it: ``np.int32`` for an ``int`` parameter,
    ``np.float32`` for a ``float`` one (CuPy passes NumPy scalars by their type; the emulation
    copies their bytes)."""
    return np.int32(value) if kind == "int" else np.float32(value)


def check_arguments(kernel: Kernel, args: Sequence[Any]) -> dict[str, int]:
    """The integer arguments by name, after checking the arguments against the kernel's
    parameters (count; arrays of their parameter's element type, flat and within 32-bit
    indexing; integers within ``int``; floats real numbers)."""
    if len(args) != len(kernel.params):
        raise TypeError(f"kernel {kernel.name} takes {len(kernel.params)} arguments, "
                        f"got {len(args)}")
    ints: dict[str, int] = {}
    for p, a in zip(kernel.params, args):
        if p.kind == "int":
            if not -2**31 <= int(a) <= MAX_ELEMENTS:
                raise ValueError(f"kernel {kernel.name}: {p.name}={a} does not fit an int")
            ints[p.name] = int(a)
            continue
        if p.kind == "float":
            if not isinstance(a, (int, float, np.integer, np.floating)):
                raise TypeError(f"kernel {kernel.name}: {p.name} must be a real number, got "
                                f"{type(a).__name__}")
            continue
        want = ARRAY_DTYPES[p.kind]
        if getattr(a, "dtype", None) != want or a.ndim != 1:
            raise TypeError(f"kernel {kernel.name}: {p.name} must be a flat {want} array, "
                            f"got {getattr(a, 'dtype', type(a).__name__)}")
        if a.size > MAX_ELEMENTS:
            raise ValueError(f"kernel {kernel.name}: {p.name} has {a.size} elements; kernels "
                             f"index with 32-bit integers (at most {MAX_ELEMENTS})")
    return ints


class KernelModule(Protocol):
    """A compiled module of kernels: CuPy's on a GPU, or the CPU emulation's."""

    def launch(self, name: str, blocks: int, threads: int, kernel: Kernel,
               args: Sequence[Any]) -> None: ...


@dataclass
class Launcher:
    """One kernel of a module, called like the Numba kernels: ``launcher(*args)``, device
    arrays, integers and floats in the kernel's parameter order (the module docstring).
    ``module()`` gives the compiled module (built on the first launch)."""

    kernel: Kernel
    module: Any  # () -> KernelModule
    # the launch shape by the integer arguments' values: a model's calls repeat theirs, and
    # evaluating the kernel's invariants each time cost about 40 us a launch (ResNet-50's 72)
    shapes: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict, repr=False,
                                                           compare=False)

    def __call__(self, *args: Any) -> None:
        ints = check_arguments(self.kernel, args)
        key = tuple(ints.values())
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = launch_shape(self.kernel, ints)
        blocks, threads = shape
        if blocks:
            self.module().launch(self.kernel.name, blocks, threads, self.kernel, args)
