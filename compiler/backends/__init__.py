"""Code generation backends, one package per target: each prints the target-neutral kernel IR
(``compiler/kernels``) in its language, loads the result, and caches it: Numba (CPU) and CUDA
(a GPU through CuPy, or the CPU through its emulation).

A backend also says where its kernels' arrays live (:class:`Memory`): the executor allocates
the arena, uploads constants and inputs and downloads outputs through it, and touches the
arrays in no other way than slicing them and handing them to kernels. NumPy's memory for the
Numba kernels (:data:`HOST`, where upload and download are the arrays themselves); a GPU's
through CuPy, or the emulated GPU's (``backends/cuda/memory.py``)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["KernelRefused", "Memory", "HostMemory", "HOST"]


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

    def free_bytes(self) -> int | None:
        return None

    def owns(self, a: Any) -> bool:
        return isinstance(a, np.ndarray)


#: The memory of CPU kernels.
HOST = HostMemory()
