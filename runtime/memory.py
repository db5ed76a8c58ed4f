"""Memory helpers: how much memory a new allocation may take, readable byte counts, and the
check that a network's parameters fit before any of them is allocated.

Every count here is a Python int, so a network written with absurd sizes (a 400-digit width)
is measured and refused, never overflowed.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..compiler.ir import Graph

__all__ = ["available_memory", "fmt_bytes", "parameter_bytes", "check_parameter_memory"]

FLOAT32_BYTES = 4
FLOAT64_BYTES = 8


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 62


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: int | float) -> str:
    """``1536`` -> ``'1.5 KiB'``; exact for any int (no float overflow on huge counts)."""
    n = int(n)
    for power, unit in enumerate(_UNITS):
        scale = 1024 ** power
        if n < 1024 * scale or unit == _UNITS[-1]:
            break
    if unit == "B":
        return f"{n} B"
    if n >= 1024 ** 6:  # beyond PiB: a float could overflow, Decimal cannot
        return f"{Decimal(n):.3e} B"
    return f"{n / scale:.1f} {unit}"


def parameter_bytes(graph: Graph) -> int:
    """Bytes the parameters of ``graph`` occupy as float32 (a shared parameter counts once)."""
    return sum(node.type.size for node in graph.params()) * FLOAT32_BYTES


def parameter_peak_bytes(graph: Graph) -> int:
    """Peak bytes while parameters are made or loaded: every parameter in float32, plus one
    float64 array of the largest (initialization draws in float64, loading may convert)."""
    largest = max((node.type.size for node in graph.params()), default=0)
    return parameter_bytes(graph) + largest * FLOAT64_BYTES


def check_parameter_memory(graph: Graph, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a network whose parameters do not fit in memory.

    Raises ``ParameterMemoryError`` (a ``WeightsError``) naming the network, the bytes needed
    and the bytes available. ``available`` defaults to ``available_memory()``.
    """
    need = parameter_peak_bytes(graph)
    if need == 0:
        return
    avail = available_memory() if available is None else available
    if need > avail:
        from .weights import ParameterMemoryError  # weights imports this module

        params = sum(node.type.size for node in graph.params())
        raise ParameterMemoryError(
            f"network {graph.name!r} has {params:,} parameters: making or loading them needs "
            f"{fmt_bytes(need)}, more than the {fmt_bytes(avail)} of memory available; "
            "make the layers smaller")
