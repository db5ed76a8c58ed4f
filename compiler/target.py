"""The machine a model is compiled for: which vector width the kernels use, how large its data
caches are, and which backend prints and runs them (Numba on the CPU; CUDA on a GPU, or its
CPU emulation).

Detected from the host's features at compile time (llvmlite reports what LLVM sees: with
AVX-512F, 16-lane ``<16 x float>`` values live in zmm registers and there are 32 of them), or
named by the user. The choice is recorded in the IR (each direct convolution's ``tile``), so a
dump shows it; kernels compiled for ``avx512`` still run on an AVX2 CPU (LLVM splits each
16-lane value into two ymm halves), only slower, so a wrong guess is never a wrong number.

The cache sizes (:class:`Caches`: L1d, L2 per core, L3) are read from the host at compile time
(``os.sysconf``, else ``/sys/devices/system/cpu/cpu0/cache``, else :data:`DEFAULT_CACHES`),
each overridable by an environment variable (:data:`CACHE_ENV`: tests, and compiling for
another machine). The tile choices that assume a cache size read them from the target, and
the target's ``repr`` (which the compile cache's keys hash) includes them: a plan made for one
L2 is not reused on a machine with another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20


@dataclass(frozen=True)
class Caches:
    """The data caches a CPU's kernels are sized for, in bytes: ``l1d`` and ``l2`` per core,
    ``l3`` the last level (shared); ``source`` says where they were read (not in ``repr``:
    equal sizes are the same plan whatever said them)."""

    l1d: int
    l2: int
    l3: int
    source: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        def size(b: int) -> str:
            return f"{b // MIB} MiB" if b % MIB == 0 else f"{b // KIB} KiB"
        return f"L1d {size(self.l1d)}, L2 {size(self.l2)}, L3 {size(self.l3)}"


#: The sizes assumed where the host's cannot be read: those of the AMD EPYC Zen 4 hosts the
#: project's kernels were tuned on (32 KiB L1d and 1 MiB L2 per core, 32 MiB L3).
DEFAULT_CACHES = Caches(32 * KIB, MIB, 32 * MIB, "default")
#: The environment variables that override each detected size (bytes; ``512K`` and ``2M``
#: suffixes too), documented in docs/performance.md.
CACHE_ENV = {"l1d": "CNNC_L1D_BYTES", "l2": "CNNC_L2_BYTES", "l3": "CNNC_L3_BYTES"}
#: ``os.sysconf`` names of each level.
_SYSCONF = {"l1d": "SC_LEVEL1_DCACHE_SIZE", "l2": "SC_LEVEL2_CACHE_SIZE",
            "l3": "SC_LEVEL3_CACHE_SIZE"}
_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")


def parse_bytes(text: str, what: str = "a size") -> int:
    """``text`` as a positive byte count: digits, optionally followed by ``K`` or ``M``
    (binary: 1024, 1048576); ValueError naming ``what`` otherwise."""
    t = text.strip().upper().removesuffix("B")
    scale = {"K": KIB, "M": MIB}.get(t[-1:], 1)
    digits = t[:-1] if scale > 1 else t
    if not digits.isdigit() or int(digits) == 0:
        raise ValueError(f"{what} must be a positive number of bytes (like 524288 or 512K), "
                         f"not {text!r}")
    return int(digits) * scale


def sysfs_caches(root: Path = _SYSFS) -> dict[str, int]:
    """The data and unified caches of cpu0 from sysfs (``index*/level``, ``type``, ``size``
    such as ``1024K``), by level name; empty where sysfs says nothing."""
    found: dict[str, int] = {}
    for index in sorted(root.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = parse_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
        name = {"1": "l1d", "2": "l2", "3": "l3"}.get(level)
        if name and kind in ("Data", "Unified") and not (name == "l1d" and kind != "Data"):
            found[name] = size
    return found


def detect_caches(sysfs: Path = _SYSFS) -> Caches:
    """This host's cache sizes: each level from ``os.sysconf`` where it answers a positive
    size (glibc reads CPUID), else from sysfs, else :data:`DEFAULT_CACHES`'."""
    sizes: dict[str, int] = {}
    sources = set()
    from_sysfs = sysfs_caches(sysfs)
    for level, default in (("l1d", DEFAULT_CACHES.l1d), ("l2", DEFAULT_CACHES.l2),
                           ("l3", DEFAULT_CACHES.l3)):
        try:
            value = os.sysconf(_SYSCONF[level])
        except (ValueError, OSError):  # a name this platform's sysconf does not know
            value = 0
        if value > 0:
            sizes[level], source = value, "sysconf"
        elif level in from_sysfs:
            sizes[level], source = from_sysfs[level], "sysfs"
        else:
            sizes[level], source = default, "default"
        sources.add(source)
    return Caches(sizes["l1d"], sizes["l2"], sizes["l3"], "+".join(sorted(sources)))


def with_overrides(caches: Caches) -> Caches:
    """``caches`` with each level replaced by its :data:`CACHE_ENV` variable where that is set
    (read on every call: a test or a cross-compile may set it at any time)."""
    over = {level: parse_bytes(os.environ[var], var) for level, var in CACHE_ENV.items()
            if os.environ.get(var, "").strip()}
    if not over:
        return caches
    return replace(caches, **over, source=caches.source + "+environment")


@lru_cache(maxsize=1)
def _detected_caches() -> Caches:
    return detect_caches()


def host_caches() -> Caches:
    """This host's caches (:func:`detect_caches`, once a process) with the environment's
    overrides (:func:`with_overrides`)."""
    return with_overrides(_detected_caches())


@dataclass(frozen=True)
class Target:
    """A target: its name, the lanes of the widest float32 vector its kernels use, its
    backend (``numba``; ``cuda``: a GPU through CuPy; ``cuda-emu``: the same CUDA source run
    on the CPU by ``backends/cuda/emulate.py``) and the CPU caches its tiles are sized for
    (:func:`resolve_target` puts the host's there). CUDA kernels hold vectors as arrays of
    floats in registers: 8 lanes keep the register tiles small."""

    name: str
    lanes: int
    backend: str = "numba"
    caches: Caches = DEFAULT_CACHES

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


def host_target() -> Target:
    """The target of this machine's CPU, with its caches (:func:`host_caches`)."""
    return replace(TARGETS["avx512" if host_has("avx512f") else "avx2"], caches=host_caches())


def resolve_target(target: str | Target | None) -> Target:
    """``"cpu"``/``None`` (this machine's CPU, its caches detected), a target name, or a
    :class:`Target` (as it is). A named CPU target is a kind of machine, not this one: its
    caches are :data:`DEFAULT_CACHES` with the environment's overrides (to compile for
    another machine, name its vector width and set its cache sizes), so a plan for it is the
    same on every host."""
    if isinstance(target, Target):
        return target
    if target in (None, "cpu"):
        return host_target()
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected cpu (this machine), "
                         f"{', '.join(TARGETS)}")
    named = TARGETS[target]
    # a GPU's kernels size nothing by the CPU's caches: its plans do not depend on them
    return named if named.cuda else replace(named, caches=with_overrides(named.caches))
