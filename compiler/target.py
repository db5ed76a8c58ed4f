"""The machine a model is compiled for: which vector width the kernels use, and which backend
prints and runs them (Numba on the CPU; CUDA on a GPU, or its CPU emulation).

Detected from the host's features at compile time (llvmlite reports what LLVM sees: with
AVX-512F, 16-lane ``<16 x float>`` values live in zmm registers and there are 32 of them), or
named by the user. The choice is recorded in the IR (each direct convolution's ``tile``), so a
dump shows it; kernels compiled for ``avx512`` still run on an AVX2 CPU (LLVM splits each
16-lane value into two ymm halves), only slower, so a wrong guess is never a wrong number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Target:
    """A target: its name, the lanes of the widest float32 vector its kernels use, and its
    backend (``numba``; ``cuda``: a GPU through CuPy; ``cuda-emu``: the same CUDA source run
    on the CPU by ``backends/cuda/emulate.py``). CUDA kernels hold vectors as arrays of
    floats in registers: 8 lanes keep the register tiles small."""

    name: str
    lanes: int
    backend: str = "numba"

    @property
    def cuda(self) -> bool:
        """Whether the kernels are CUDA C (on a GPU, or emulated)."""
        return self.backend in ("cuda", "cuda-emu")

    def __str__(self) -> str:
        return self.name


#: The targets cnnc generates code for.
TARGETS = {"avx2": Target("avx2", 8), "avx512": Target("avx512", 16),
           "cuda": Target("cuda", 8, "cuda"), "cuda-emu": Target("cuda-emu", 8, "cuda-emu")}


@lru_cache(maxsize=1)
def _host_features() -> frozenset[str]:
    """The features LLVM generates code for: Numba's ``NUMBA_CPU_FEATURES`` where it is set
    (``+avx2,-avx512f,...``: a process told to generate AVX2 code on an AVX-512 machine, as
    ``bench/bench_tiles.py --avx2-only`` does; an instruction the CPU has but LLVM was told
    not to use cannot be selected), else the host's."""
    # imported here, not at the top: this module is read at start-up by every command
    from llvmlite import binding
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return frozenset(f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+"))
    return frozenset(name for name, on in binding.get_host_cpu_features().items() if on)


def host_has(*features: str) -> bool:
    """Whether the CPU LLVM generates code for (this machine's, unless Numba was told
    another's features) has every one of ``features`` (``"avx512f"``, ``"avx512vl"``, ...)."""
    return _host_features().issuperset(features)


@lru_cache(maxsize=1)
def host_target() -> Target:
    """The target of this machine's CPU."""
    return TARGETS["avx512" if host_has("avx512f") else "avx2"]


def resolve_target(target: str | Target | None) -> Target:
    """``"cpu"``/``None`` (this machine's CPU), a target name, or a :class:`Target`."""
    if isinstance(target, Target):
        return target
    if target in (None, "cpu"):
        return host_target()
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected cpu (this machine), "
                         f"{', '.join(TARGETS)}")
    return TARGETS[target]
