"""Memory helpers: how much memory a new allocation may take, and readable byte counts.

Byte counts are Python ints, so a network written with absurd sizes (a 400-digit width) is
measured and refused, never overflowed (`weights.check_parameter_memory`).
"""

from __future__ import annotations

import os
from decimal import Decimal

__all__ = ["available_memory", "fmt_bytes"]


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
