"""Code generation backends, one package per target: each prints the target-neutral kernel IR
(``compiler/kernels``) in its language, loads the result, and caches it: Numba (CPU) and CUDA
(a GPU through CuPy, or the CPU through its emulation).

A backend also says where its kernels' arrays live (:class:`Memory`): the executor allocates
the arena, uploads constants and inputs and downloads outputs through it, and touches the
arrays in no other way than slicing them and handing them to kernels. NumPy's memory for the
Numba kernels (:data:`HOST`, where upload and download are the arrays themselves); a GPU's
through CuPy, or the emulated GPU's (``backends/cuda/memory.py``).

:class:`Backend` is what the lowering driver and the ops' lowering rules ask of a backend, so
that they name no backend package: a CPU compile never imports the CUDA one (whose printer and
emulation cost a fifth of a second at start-up), and only ``runtime/`` picks a backend for
a target."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from ..kernels.kernel_ir import Kernel

__all__ = ["Backend", "KernelRefused", "Memory", "HostMemory", "HOST"]


class KernelRefused(ValueError):
    """A kernel the target's printer cannot print (the lowering names the node)."""


class Memory(Protocol):
    """Where a backend's kernels read and write: flat arrays that can be sliced (``a[i:j]``, a
    view) and passed to kernels; NumPy reads them only through :meth:`download`."""

    #: The arrays are NumPy's own (upload and download cost nothing).
    host: bool

    def zeros(self, n: int) -> Any:
        """``n`` float32 zeros."""

    def empty(self, n: int) -> Any:
        """``n`` float32 of undefined value."""

    def upload(self, a: np.ndarray) -> Any:
        """A flat contiguous copy of host array ``a`` in this memory (its dtype kept)."""

    def download(self, a: Any) -> np.ndarray:
        """Array ``a`` of this memory as a flat NumPy array."""

    def write(self, dst: Any, a: np.ndarray) -> None:
        """Copy host array ``a`` into the first ``a.size`` elements of ``dst``."""

    def copy(self, dst: Any, src: Any) -> None:
        """Copy array ``src`` of this memory into the first ``src.size`` elements of ``dst``
        (on a GPU: within its memory, nothing crosses the bus)."""

    def capture(self, run: Callable[[], None]) -> Callable[[], None]:
        """``run``'s kernel calls captured, not run; the function returned runs them again,
        their arguments as they were given (on a GPU: a CUDA graph, one launch)."""

    def free_bytes(self) -> int | None:
        """Bytes a new allocation may take, or None where that is the host's memory."""

    def owns(self, a: Any) -> bool:
        """Whether ``a`` is an array of this memory (a kernel reads it where it lies: a
        caller's CuPy array on a GPU target)."""


class HostMemory:
    """NumPy arrays in the process's memory: uploading a flat contiguous array and downloading
    any array return the array itself (a view, no copy)."""

    host = True

    def zeros(self, n: int) -> np.ndarray:
        return np.zeros(n, np.float32)

    def empty(self, n: int) -> np.ndarray:
        return np.empty(n, np.float32)

    def upload(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a).reshape(-1)

    def download(self, a: np.ndarray) -> np.ndarray:
        return a

    def write(self, dst: np.ndarray, a: np.ndarray) -> None:
        dst[: a.size] = a.reshape(-1)

    def copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        dst[: src.size] = src.reshape(-1)

    def capture(self, run: Callable[[], None]) -> Callable[[], None]:
        return run  # NumPy's kernels are calls: running them again is the replay

    def free_bytes(self) -> int | None:
        return None

    def owns(self, a: Any) -> bool:
        return isinstance(a, np.ndarray)


#: The memory of CPU kernels.
HOST = HostMemory()


class Backend(Protocol):
    """How the lowering driver and the ops' lowering rules print, load and cache kernels for
    one target (``numba.loader.NumbaBackend``, ``cuda.loader.CudaBackend``)."""

    #: The backend's name (``numba``, ``cuda``).
    name: str
    #: The kernels' file suffix in a listing (``.py``, ``.cu``).
    listing_suffix: str
    #: Whether kernels may index scratch by the running thread (``thread_id``).
    thread_scratch: bool
    #: Whether kernels may run blocks of threads that cooperate (``Shared``, ``Barrier``): a
    #: GPU's; the ops' rules then choose their GPU forms (``kernels/backward.py``'s sums).
    thread_blocks: bool

    @property
    def cache_path(self) -> str:
        """The folder the kernels are cached in."""

    @property
    def threads(self) -> int:
        """Threads of the parallel loops (per-thread scratch buffers are sized by it)."""

    @property
    def memory(self) -> Memory:
        """Where the kernels' arrays live."""

    def comment(self, text: str) -> str:
        """``text`` as a comment of the target's language (sanitized)."""

    def check(self, kernel: Kernel) -> None:
        """Raise :class:`KernelRefused` where ``kernel`` has no form on this target."""

    def dedup_key(self, kernel: Kernel) -> str:
        """Kernels with equal keys have identical code whatever their names and comments."""

    def listing(self, kernels: list[Kernel], header: str) -> str:
        """The model's listing of its per-node ``kernels``."""

    def load_shared(self, kernel: Kernel) -> tuple[Callable[..., Any], str, str]:
        """``(kernel, source file name, source)`` of a per-node kernel."""

    def load_tasked(self, kernel: Kernel, tag: str,
                    header: str) -> tuple[Callable[..., Any], str, str]:
        """``(kernel, source file name, source)`` of a compute kernel cached as ``tag``."""

    def layout_kernel(self, name: str) -> Callable[..., Any]:
        """One of the shared layout kernels (``kernels.layout.layout_kernels``)."""

    def note_users(self, calls: Iterable[Any], comment: str) -> None:
        """Record that the node described by ``comment`` runs ``calls`` (for the listing)."""

    def warm(self, steps: Iterable[Any],
             progress: Callable[[int, int], None] | None = None) -> None:
        """Compile (or load) the kernels of ``steps`` now."""
