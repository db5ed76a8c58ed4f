"""How the lowering driver gets CUDA kernels: :class:`CudaBackend`.

Every kernel of a model (the per-node kernels, each convolution's compute kernel, the layout
kernels it calls) goes into one CUDA module, printed whole once the lowering is done (the
model's listing is that module). Each kernel is handed back at once as a
:class:`~.launch.Launcher`; the module is compiled on the first launch: through CuPy's
``RawModule`` on a GPU (``device="gpu"``), or for the CPU by the emulation (``device="emulate"``,
``emulate.EmulatedModule``). Printing needs neither, so the sources of a model can be written
on a machine without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ...kernels.kernel_ir import Kernel
from ...kernels.layout import layout_kernels
from .. import KernelRefused
from ..numba.cache import cache_root
from .emulate import EmulatedModule
from .launch import KernelModule, Launcher, scalar_argument
from .memory import CupyMemory, EmulatedMemory
from .printer import cuda_comment, print_kernel, print_module

__all__ = ["CudaBackend", "CupyModule", "gpu_problem"]


@lru_cache(maxsize=1)
def _layout_kernels() -> dict[str, Kernel]:
    return {k.name: k for k in layout_kernels()}


def gpu_problem() -> str | None:
    """Why kernels cannot run on a GPU here (one sentence: what was looked for, what was
    found), or None when CuPy sees a CUDA device."""
    try:
        import cupy
    except ImportError:
        return ("target 'cuda' looked for CuPy, to run its kernels on an NVIDIA GPU, and found "
                "it not installed (pip install 'cnnc[gpu]'); target 'cuda-emu' runs the same "
                "CUDA source on the CPU")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # the driver's own error: no driver, no device, ...
        return (f"target 'cuda' looked for an NVIDIA GPU through CuPy and found none "
                f"({type(e).__name__}: {str(e).strip() or 'no detail'}); target 'cuda-emu' "
                "runs the same CUDA source on the CPU")
    if count == 0:
        return ("target 'cuda' looked for an NVIDIA GPU through CuPy and found 0 devices; "
                "target 'cuda-emu' runs the same CUDA source on the CPU")
    return None


class CupyModule:
    """A module compiled by CuPy (NVRTC) for the current GPU; arguments are CuPy arrays
    (device pointers) and NumPy scalars (``launch.scalar_argument``)."""

    def __init__(self, source: str) -> None:
        import cupy

        self.cupy = cupy
        self.module = cupy.RawModule(code=source, options=("-std=c++17", "--fmad=true"))
        self.functions: dict[str, Any] = {}

    def launch(self, name: str, blocks: int, threads: int, kernel: Kernel,
               args: Sequence[Any]) -> None:
        fn = self.functions.get(name)
        if fn is None:
            fn = self.functions[name] = self.module.get_function(name)
        fn((blocks,), (threads,), tuple(scalar_argument(p.kind, a) if p.kind in ("int", "float")
                                        else a for p, a in zip(kernel.params, args)))


class CudaBackend:
    """CUDA kernels of one model, in one module named ``module_name`` (``<name>.cu``), run on
    a GPU (``device="gpu"``), emulated on the CPU (``"emulate"``), or only printed
    (``"none"``: a launch is refused)."""

    name = "cuda"

    def __init__(self, root: Path | None = None, module_name: str = "model",
                 device: Literal["gpu", "emulate", "none"] = "gpu") -> None:
        self.root = root
        self.module_name = module_name
        self.device = device
        self.kernels: dict[str, Kernel] = {}
        self.keys: dict[str, str] = {}  # kernel name -> its code (dedup_key)
        self.users: dict[str, list[str]] = {}  # kernel name -> comments of the nodes calling it
        # a kernel's code by kernel object, printed once: the lowering checks each kernel,
        # dedups the model's and adds them, and hands the same object for every layer of a
        # shape class (``ops.conv.lowering.compute_kernel``) and every use of a layout kernel;
        # printing it anew each time was most of a deep network's CUDA lowering (kernels hash
        # by identity and are never changed once built)
        self._codes: dict[Kernel, str] = {}
        self._module: KernelModule | None = None
        self._source: str | None = None
        self._memory: CupyMemory | EmulatedMemory | None = None

    @property
    def cache_path(self) -> str:
        return str(self.root if self.root is not None else cache_root())

    @property
    def threads(self) -> int:
        """One: no kernel indexes per-thread scratch (``thread_id`` has no CUDA form; the
        printer refuses it)."""
        return 1

    #: No kernel may index scratch by the running thread (see :attr:`threads`).
    thread_scratch = False
    thread_blocks = True

    @property
    def memory(self) -> CupyMemory | EmulatedMemory:
        """Where the kernels' arrays live: the GPU's (CuPy), else the emulated GPU's (a
        printed-only module never runs; its plan names the emulated memory)."""
        if self._memory is None:
            self._memory = CupyMemory() if self.device == "gpu" else EmulatedMemory()
        return self._memory

    comment = staticmethod(cuda_comment)

    @property
    def file_name(self) -> str:
        return f"{self.module_name}.cu"

    def dedup_key(self, kernel: Kernel) -> str:
        """Kernels with equal keys have identical code whatever their names and comments: the
        code printed under one name without the comment. Raises :class:`KernelRefused` where
        ``kernel`` has no CUDA form."""
        code = self._codes.get(kernel)
        if code is None:
            try:
                code = print_kernel(replace(kernel, name="k", comment=""), with_comment=False)
            except (ValueError, TypeError) as e:  # the printer's refusals (kernel_type_errors)
                raise KernelRefused(f"kernel {kernel.name} has no CUDA form: {e}") from None
            self._codes[kernel] = code
        return code

    listing_suffix = ".cu"

    def check(self, kernel: Kernel) -> None:
        """Raise :class:`KernelRefused` where ``kernel`` has no CUDA form (by printing it)."""
        self.dedup_key(kernel)

    def add(self, kernel: Kernel) -> Launcher:
        """Put ``kernel`` in the module (once per name: a second kernel of the same name and
        other code gets a numbered name) and return its launcher."""
        key = self.dedup_key(kernel)
        name, n = kernel.name, 1
        while name in self.kernels and self.keys[name] != key:
            n += 1
            name = f"{kernel.name}_{n}"
        if name not in self.kernels:
            if self._source is not None:
                raise RuntimeError(f"kernel {name} added after the CUDA module was printed")
            self.kernels[name] = replace(kernel, name=name)
            self.keys[name] = key
        return Launcher(self.kernels[name], self.module)

    def note_users(self, calls: Iterable[Any], comment: str) -> None:
        """Record that the node described by ``comment`` (its DSL lines) runs ``calls``: the
        module prints, above each shared kernel (layout, convolution), the nodes that call
        it."""
        for c in calls:
            if isinstance(c.fn, Launcher) and c.ir is None:
                lines = self.users.setdefault(c.fn.kernel.name, [])
                lines += [line for line in comment.split("\n") if line not in lines]

    def source(self) -> str:
        """The module: every kernel added so far (printed once; adding more is then refused)."""
        if self._source is None:
            kernels = []
            for k in self.kernels.values():
                users = self.users.get(k.name, [])
                if len(users) > 12:
                    users = users[:11] + [f"... and {len(users) - 11} more"]
                lines = ([k.comment] if k.comment else []) + [f"called by {u}" for u in users]
                kernels.append(replace(k, comment="\n".join(lines)))
            self._source = print_module(kernels, header=f"{self.module_name}: "
                                                        f"{len(kernels)} kernels")
        return self._source

    def module(self) -> KernelModule:
        """The compiled module (compiled on the first call)."""
        if self._module is None:
            if self.device == "gpu":
                self._module = CupyModule(self.source())
            elif self.device == "emulate":
                memory = self.memory
                assert isinstance(memory, EmulatedMemory)
                self._module = EmulatedModule(self.source(), list(self.kernels.values()),
                                              self.root, memory=memory)
            else:
                raise RuntimeError("this CUDA module was only printed (no device to run on)")
        return self._module

    # -- what the lowering driver asks -------------------------------------------------------
    def listing(self, kernels: list[Kernel], header: str) -> str:
        """Adds the model's per-node ``kernels``; the listing is the whole module."""
        for k in kernels:
            self.add(k)
        return self.source()

    def load_shared(self, kernel: Kernel) -> tuple[Callable[..., Any], str, str]:
        return self.add(kernel), self.file_name, ""

    def load_tasked(self, kernel: Kernel, tag: str,
                    header: str) -> tuple[Callable[..., Any], str, str]:
        return self.add(kernel), self.file_name, ""

    def layout_kernel(self, name: str) -> Callable[..., Any]:
        return self.add(_layout_kernels()[name])

    def module_sources(self) -> dict[str, str]:
        """The source files of the model: its one module."""
        return {self.file_name: self.source()}

    def warm(self, steps: Iterable[Any],
             progress: Callable[[int, int], None] | None = None) -> None:
        """Compile the module now where it will run (a printed-only module stays printed)."""
        if self.device != "none":
            self.module()
