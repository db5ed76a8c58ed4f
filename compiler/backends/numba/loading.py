"""Loading compiled functions from Numba's disk cache without Numba's compiler start-up.

Before it looks in its cache (``Cache.load_overload``), Numba refreshes the CPU target
context. The first refresh of a process imports and registers every implementation Numba has
(NumPy's linear algebra, random generators, typed containers, datetimes, ...): about 0.3 s
of CPU in every process, an eighth of a cached ResNet-18 compile (bench/RESULTS.md). It
prepares Numba to *compile*; machine code loaded from the cache needs none of it, only the
symbols it links against, which are registered elsewhere:

- Numba's C helpers and Python's exception objects: when the target context is created
  (``BaseContext.__init__``, ``CPUContext.init``), before any load;
- the runtime's (``NRT_*``, which the array arguments of a compiled function's Python
  wrapper use): :func:`ensure_runtime`, before each load here;
- the threading layer's (``get_thread_id``, the parallel loop's scheduler): started before a
  task function or the task loop is loaded (``tasks.compile_task_function``; a parallel
  function's cache entry starts it itself when rebuilt).

:class:`LoadingCache` is Numba's own cache (same files, same index keys, same checks of the
source file's stamp) whose load does :func:`ensure_runtime` instead of the refresh. A miss, or
anything else, falls through to Numba's compiler, which refreshes the context itself before it
compiles: nothing is skipped that a compile needs.
"""

from __future__ import annotations

from typing import Any

from numba.core.caching import FunctionCache
from numba.core.runtime import nrt

__all__ = ["LoadingCache", "ensure_runtime"]


def ensure_runtime(target_context: Any) -> None:
    """Register the runtime's symbols and compile its few functions (once per process)."""
    nrt.rtsys.initialize(target_context)


class LoadingCache(FunctionCache):
    """Numba's cache of one function, loading without refreshing the target context."""

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        """The cached compile result of ``sig``, or None (then Numba compiles)."""
        ensure_runtime(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)
        return None  # the guard swallowed an I/O error (Windows only): compile
