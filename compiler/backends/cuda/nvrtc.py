"""Compile CUDA C without a GPU: NVRTC's program API (``libnvrtc``, from the PyPI package
``nvidia-cuda-nvrtc`` or a CUDA toolkit) and, where it is installed, ``nvcc -cubin``.

Both only compile: they need no device and no driver. A warning fails the compile like an
error (``CudaCompileError``, with the compiler's log), so generated code stays warning-free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["CudaCompileError", "nvrtc_compile", "nvrtc_library", "nvcc_path", "nvcc_compile",
           "ARCHITECTURES", "COMPILE_OPTIONS", "KernelResources",
           "resource_usage"]

#: The GPU architectures the tests compile every module for (Ampere, Hopper).
ARCHITECTURES = ("sm_80", "sm_90")

#: Options of every compile: C++17, fused multiply-add on (CUDA's default, said explicitly).
COMPILE_OPTIONS = ("-std=c++17", "--fmad=true")


class CudaCompileError(RuntimeError):
    """A CUDA compile that failed or warned; the message holds the compiler's log."""


def _library_candidates() -> list[Path]:
    """Where ``libnvrtc`` may be: the PyPI wheels' folders on ``sys.path``, ``$CUDA_HOME``,
    the default toolkit folder."""
    found: list[Path] = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", "nvidia/cu12/lib"):
            folder = Path(entry) / sub
            if folder.is_dir():
                found += sorted(folder.glob("libnvrtc.so*"))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            found += sorted((Path(home) / "lib64").glob("libnvrtc.so*"))
    return [p for p in found if "builtins" not in p.name and "alt" not in p.name]


@lru_cache(maxsize=1)
def nvrtc_library() -> ctypes.CDLL | None:
    """The loaded NVRTC library, or None where none is installed."""
    for path in _library_candidates():
        try:
            return ctypes.CDLL(str(path))
        except OSError:
            continue
    name = ctypes.util.find_library("nvrtc")
    if name:
        try:
            return ctypes.CDLL(name)
        except OSError:
            return None
    return None


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise CudaCompileError(f"NVRTC {what}: {lib.nvrtcGetErrorString(status).decode()}")


def nvrtc_compile(source: str, arch: str = "sm_80", name: str = "model.cu",
                  options: tuple[str, ...] = COMPILE_OPTIONS) -> bytes:
    """The CUBIN of ``source`` for ``arch`` compiled by NVRTC; raises
    :class:`CudaCompileError` with the log on an error or a warning."""
    lib = nvrtc_library()
    if lib is None:
        raise CudaCompileError("NVRTC is not installed (pip install nvidia-cuda-nvrtc)")
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                       None, None), "create program")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in options)]
        argv = (ctypes.c_char_p * len(opts))(*opts)
        status = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
        log = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetProgramLog(prog, log), "log")
        text = log.value.decode(errors="replace").strip()
        if status != 0 or text:
            raise CudaCompileError(f"NVRTC ({arch}) {'failed' if status else 'warned'} on "
                                   f"{name}:\n{text}")
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "CUBIN size")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cubin), "CUBIN")
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def nvcc_path() -> str | None:
    """``nvcc`` on ``PATH`` (or in ``$CUDA_HOME/bin``), or None."""
    found = shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME")
    if found is None and home and (Path(home) / "bin" / "nvcc").is_file():
        found = str(Path(home) / "bin" / "nvcc")
    return found


def nvcc_compile(source: str, arch: str = "sm_80", name: str = "model.cu",
                 resources: bool = False) -> str:
    """Compile ``source`` to a CUBIN for ``arch`` with ``nvcc -cubin``, every warning an
    error; returns nvcc's output (with ``resources``: registers, shared memory and spills per
    kernel, from ``--resource-usage``). Raises :class:`CudaCompileError`."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise CudaCompileError("nvcc is not installed")
    with tempfile.TemporaryDirectory(prefix="cnnc-nvcc-") as tmp:
        src = Path(tmp) / name
        src.write_text(source, encoding="utf-8")
        cmd = [nvcc, "-cubin", f"-arch={arch}", *COMPILE_OPTIONS, "-Werror", "all-warnings",
               "-o", str(Path(tmp) / "out.cubin"), str(src)]
        if resources:
            cmd.insert(1, "--resource-usage")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip()
    report = "\n".join(line for line in text.splitlines() if not line.startswith("ptxas info")
                       and not line.lstrip().startswith(("0 bytes stack", "bytes stack")))
    if done.returncode != 0 or (report.strip() and not resources) or "warning" in text:
        raise CudaCompileError(f"nvcc ({arch}) failed on {name}:\n{text}")
    return text


@dataclass(frozen=True)
class KernelResources:
    """What ``ptxas`` reports of one kernel: registers per thread, shared memory per block,
    stack frame and spills (bytes)."""

    kernel: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int


_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def resource_usage(report: str) -> list[KernelResources]:
    """Each kernel's resources from the output of :func:`nvcc_compile` with ``resources``,
    in the order ptxas lists them."""
    out: list[KernelResources] = []
    name, frame = None, (0, 0, 0)
    for line in report.splitlines():
        if m := _ENTRY.search(line):
            name, frame = m.group(1), (0, 0, 0)
        elif (m := _FRAME.search(line)) and name is not None:
            frame = tuple(int(v) for v in m.groups())  # type: ignore[assignment]
        elif (m := _USED.search(line)) and name is not None:
            smem = _SMEM.search(line)
            out.append(KernelResources(name, int(m.group(1)), int(smem.group(1)) if smem else 0,
                                       *frame))
            name = None
    return out
