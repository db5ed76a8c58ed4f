"""The memory of the CUDA kernels: a GPU's through CuPy (:class:`CupyMemory`), or the emulated
GPU's (:class:`EmulatedMemory`), whose arrays behave towards the executor as CuPy's do: they
slice, report their size and type, go to kernels, and refuse to be read by NumPy without a
download (``__array__`` raises, as CuPy's does). So a value the executor forgot to upload or
download fails the emulated tests here as it would fail on a GPU.

Each emulated allocation is a mapping of its own that ends exactly where an inaccessible
guard page begins: a kernel reading or writing past the end of an array faults at once (the
launch catches it: ``emulate.EmulatedModule``) rather than corrupting its neighbour (an access
before its start is not caught).
"""

from __future__ import annotations

import ctypes
import mmap
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["CupyMemory", "EmulatedArray", "EmulatedMemory", "guarded_empty"]

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_LIBC.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def guarded_empty(n: int, dtype: Any = np.float32) -> np.ndarray:
    """``n`` zeros of ``dtype`` in a mapping of their own whose next page is inaccessible (see
    the module docstring)."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    page = mmap.PAGESIZE
    data_pages = max(1, -(-nbytes // page))
    total = (data_pages + 1) * page
    base = _LIBC.mmap(None, total, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base in (None, _MAP_FAILED):
        raise MemoryError(f"the emulated GPU could not map {total} bytes "
                          f"(errno {ctypes.get_errno()})")
    if _LIBC.mprotect(base + data_pages * page, page, 0) != 0:
        _LIBC.munmap(base, total)
        raise MemoryError(f"the emulated GPU could not protect its guard page "
                          f"(errno {ctypes.get_errno()})")
    holder = (ctypes.c_char * nbytes).from_address(base + data_pages * page - nbytes)
    weakref.finalize(holder, _LIBC.munmap, base, total)
    return np.frombuffer(holder, dtype, count=n)


class CupyMemory:
    """CuPy arrays on the current GPU."""

    host = False

    def __init__(self) -> None:
        import cupy  # the optional `gpu` extra: only a GPU target gets here

        self.cupy = cupy

    def zeros(self, n: int) -> Any:
        return self.cupy.zeros(n, np.float32)

    def empty(self, n: int) -> Any:
        return self.cupy.empty(n, np.float32)

    def upload(self, a: np.ndarray) -> Any:
        return self.cupy.asarray(np.ascontiguousarray(a).reshape(-1))

    def download(self, a: Any) -> np.ndarray:
        return self.cupy.asnumpy(a)

    def write(self, dst: Any, a: np.ndarray) -> None:
        dst[: a.size].set(np.ascontiguousarray(a, dst.dtype).reshape(-1))

    def copy(self, dst: Any, src: Any) -> None:
        self.cupy.copyto(dst[: src.size], src.reshape(-1))

    def capture(self, run: Callable[[], None]) -> Callable[[], None]:
        """``run``'s kernel launches captured into a CUDA graph on a stream of its own (not
        run); the function returned launches the graph, after what the caller's current
        stream has queued and before what it queues next."""
        cupy = self.cupy
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            try:
                run()
            finally:
                graph = stream.end_capture()

        def replay() -> None:
            caller = cupy.cuda.get_current_stream()
            stream.wait_event(caller.record())
            graph.launch(stream)
            caller.wait_event(stream.record())
        return replay

    def free_bytes(self) -> int | None:
        free, _total = self.cupy.cuda.runtime.memGetInfo()
        return int(free)

    def owns(self, a: Any) -> bool:
        return isinstance(a, self.cupy.ndarray)


class EmulatedArray:
    """An array in the emulated GPU's memory (host memory underneath): flat as the executor
    allocates and slices it, or of any shape as a caller's CuPy array is (``reshape`` of a
    contiguous array, ``copy``)."""

    __slots__ = ("_data",)

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, key: slice) -> EmulatedArray:
        if not isinstance(key, slice) or key.step not in (None, 1) or self.ndim != 1:
            raise TypeError("device arrays are sliced into contiguous ranges here, "
                            f"not indexed by {key!r}")
        return EmulatedArray(self._data[key])

    def reshape(self, *shape: Any) -> EmulatedArray:
        """The same memory seen in another shape (as CuPy's ``reshape`` of a contiguous
        array: a view)."""
        view = self._data.reshape(*shape)
        if not np.shares_memory(view, self._data):
            raise ValueError("reshape of an emulated device array must be a view")
        return EmulatedArray(view)

    def copy(self) -> EmulatedArray:
        """A copy in a new allocation of the emulated GPU's memory."""
        data = guarded_empty(self.size, self.dtype).reshape(self.shape)
        data[...] = self._data
        return EmulatedArray(data)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("implicit conversion of device memory to a NumPy array: download it")

    def set(self, a: np.ndarray) -> None:
        """Copy host array ``a`` (of this array's size) into this array, as CuPy's ``set``."""
        if a.size != self.size:
            raise ValueError(f"set: {a.size} values for a device array of {self.size}")
        self._data[...] = a.reshape(self.shape)

    def fill_from(self, src: EmulatedArray) -> None:
        """Copy device array ``src`` (of this array's size) into this array."""
        if src.size != self.size:
            raise ValueError(f"copy: {src.size} values for a device array of {self.size}")
        self._data[...] = src._data.reshape(self.shape)

    @property
    def pointer(self) -> int:
        """The address of the first element (what a kernel launch passes)."""
        return self._data.ctypes.data

    def __repr__(self) -> str:
        return f"EmulatedArray({' x '.join(map(str, self.shape))} {self.dtype})"


class EmulatedMemory:
    """The emulated GPU's memory: :class:`EmulatedArray` over host buffers; upload and
    download copy, as they do to and from a GPU, and count the bytes they move (``uploaded``,
    ``downloaded``: what would cross the bus)."""

    host = False

    def __init__(self) -> None:
        self.uploaded = 0
        self.downloaded = 0
        # the launches being captured (``capture``): the emulated modules append to it
        self.recording: list[Callable[[], None]] | None = None

    def zeros(self, n: int) -> EmulatedArray:
        return EmulatedArray(guarded_empty(n))  # mappings start zeroed

    def empty(self, n: int) -> EmulatedArray:
        return EmulatedArray(guarded_empty(n))

    def upload(self, a: np.ndarray) -> EmulatedArray:
        a = np.asarray(a)
        data = guarded_empty(a.size, a.dtype)
        data[:] = a.reshape(-1)
        self.uploaded += data.nbytes
        return EmulatedArray(data)

    def download(self, a: EmulatedArray) -> np.ndarray:
        """A host copy of ``a``, of its shape (as ``cupy.asnumpy``)."""
        if not isinstance(a, EmulatedArray):
            raise TypeError(f"download takes a device array, got {type(a).__name__}")
        self.downloaded += a._data.nbytes
        return a._data.copy()

    def write(self, dst: EmulatedArray, a: np.ndarray) -> None:
        dst[: a.size].set(np.ascontiguousarray(a, dst.dtype))
        self.uploaded += a.size * dst.dtype.itemsize

    def copy(self, dst: EmulatedArray, src: EmulatedArray) -> None:
        """Within the device's memory: no bytes cross the bus."""
        dst[: src.size].fill_from(src)

    def capture(self, run: Callable[[], None]) -> Callable[[], None]:
        """``run``'s launches recorded, not run (as a CUDA graph captures them: the modules
        given this memory append them to :attr:`recording`); the function returned runs them
        again in order, their arguments as they were given (arrays by address, scalars by
        value)."""
        if self.recording is not None:
            raise RuntimeError("a capture is already under way")
        self.recording = []
        try:
            run()
            launches = self.recording
        finally:
            self.recording = None

        def replay() -> None:
            for launch in launches:
                launch()
        return replay

    def free_bytes(self) -> int | None:
        return None

    def owns(self, a: Any) -> bool:
        return isinstance(a, EmulatedArray)
