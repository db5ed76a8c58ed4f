"""How the lowering driver loads kernels through Numba: :class:`NumbaBackend`.

A per-model kernel is printed into a module of its own with no layer text in it (so every layer
and model with the same code shares, and caches, one module); a convolution's compute kernel
into a module named by its tag; the layout kernels every convolution shares live in one module
per cache root and process. Every kernel comes back as a :class:`~.tasks.TaskKernel` (its task
function, compiled when first needed).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numba

from ...kernels.kernel_ir import Kernel
from ...kernels.layout import layout_kernels
from .. import HOST
from . import cache, warm
from .printer import print_kernel, print_module, sanitize_comment, task_form
from .tasks import TaskKernel

__all__ = ["NumbaBackend", "layout_module", "shared_source"]

_LAYOUT_KERNELS: dict[str, dict[str, TaskKernel]] = {}


_TASK_KERNELS: dict[tuple[str, str], TaskKernel] = {}

# A compute kernel's module source by header, printed once per kernel object (one is built for
# all the layers that share it: ``ops.conv.lowering.compute_kernel``). Kernels hash by
# identity and are not changed once built.
_MODULE_SOURCES: weakref.WeakKeyDictionary[Kernel, dict[str, str]] = \
    weakref.WeakKeyDictionary()


def task_kernel(module: Any, kernel: Kernel) -> TaskKernel:
    """The task kernel of ``kernel`` (printed into ``module`` under its name): one per module
    and name in a process, so each is compiled or loaded once."""
    key = (str(module.__file__), kernel.name)
    if key not in _TASK_KERNELS:
        _TASK_KERNELS[key] = TaskKernel(module, kernel.name, kernel.params,
                                        task_form(kernel)[1] is not None)
    return _TASK_KERNELS[key]


def layout_module(root: Path | None = None) -> dict[str, TaskKernel]:
    """The shared layout kernels by name (one cached module per cache root and process)."""
    key = str(root)
    if key not in _LAYOUT_KERNELS:
        kernels = layout_kernels()
        mod = cache.load_module(print_module(kernels, header="shared layout kernels"),
                                "layout", root)
        _LAYOUT_KERNELS[key] = {k.name: task_kernel(mod, k) for k in kernels}
    return _LAYOUT_KERNELS[key]


def _shared_name(kernel: Kernel) -> str:
    """The function name of a kernel in its shared module: the op part of ``n12_maxpool``."""
    name = kernel.name
    if name.startswith("n") and "_" in name and name[1:name.index("_")].isdigit():
        name = name[name.index("_") + 1:]
    return f"k_{name}"  # never a builtin (abs, max, ...) the kernel body may call


def shared_source(kernel: Kernel) -> tuple[str, str]:
    """``(function name, module source)`` of a kernel's shared module: no layer text, so
    every layer and model with the same code uses (and caches) the same module."""
    fname = _shared_name(kernel)
    src = print_module([replace(kernel, name=fname, comment="")],
                       header=f"{fname} kernel (sizes are runtime arguments)")
    return fname, src


def module_file_name(module: Any, fallback: str) -> str:
    """The name a loaded module's source is listed under: its cache folder's, ``.py``."""
    return Path(getattr(module, "__file__", fallback)).parent.name + ".py"


class NumbaBackend:
    """Numba CPU kernels cached under ``root`` (None: the default cache root)."""

    name = "numba"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    @property
    def cache_path(self) -> str:
        return str(self.root if self.root is not None else cache.cache_root())

    @property
    def threads(self) -> int:
        """Threads of the parallel loops (per-thread scratch buffers are sized by it)."""
        return numba.config.NUMBA_NUM_THREADS

    #: NumPy arrays in this process's memory.
    memory = HOST

    #: Kernels may index scratch by the running thread (``thread_id``).
    thread_scratch = True
    thread_blocks = False

    comment = staticmethod(sanitize_comment)
    listing_suffix = ".py"

    def check(self, kernel: Kernel) -> None:
        """Every kernel of the IR has a Numba form (the CUDA backend's may refuse one)."""

    def dedup_key(self, kernel: Kernel) -> str:
        """Kernels with equal keys have identical code whatever their names and comments."""
        return print_kernel(replace(kernel, name="k", comment=""), with_comment=False)

    def listing(self, kernels: list[Kernel], header: str) -> str:
        """One readable module of ``kernels`` (with their comments): the model's listing."""
        return print_module(kernels, header=header)

    def load_shared(self, kernel: Kernel) -> tuple[TaskKernel, str, str]:
        """``(kernel, source file name, source)`` of a kernel from its shared module."""
        fname, src = shared_source(kernel)
        mod = cache.load_module(src, fname, self.root)
        return (task_kernel(mod, replace(kernel, name=fname)), module_file_name(mod, fname),
                src)

    def load_tasked(self, kernel: Kernel, tag: str, header: str) -> tuple[TaskKernel, str, str]:
        """``(kernel, source file name, source)`` of a compute kernel of its own module,
        cached as the module ``tag``."""
        sources = _MODULE_SOURCES.setdefault(kernel, {})
        src = sources.get(header)
        if src is None:
            src = sources[header] = print_module([kernel], header=header)
        mod = cache.load_module(src, tag, self.root)
        return task_kernel(mod, kernel), module_file_name(mod, tag), src

    def layout_kernel(self, name: str) -> TaskKernel:
        """One of the shared layout kernels (``kernels.layout.layout_kernels``)."""
        return layout_module(self.root)[name]

    def note_users(self, calls: Iterable[Any], comment: str) -> None:
        """Nothing to record: each layer's kernel carries its own comment in the listing."""

    def warm(self, steps: Iterable[Any],
             progress: Callable[[int, int], None] | None = None) -> None:
        """Compile the kernels of ``steps`` missing from Numba's cache, in parallel workers."""
        warm.warm_modules(warm.jobs_for(steps), progress=progress)
