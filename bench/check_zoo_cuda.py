"""Every zoo network's CUDA kernels under the CPU emulation, step by step against the float64
reference (``cnnc check --target cuda-emu``), at a small input size and batch 2:

    .venv/bin/python bench/check_zoo_cuda.py [--models resnet18 ...] [--batch 2]

Each network at the first of 64, 96, 128, 160, 224, 299 pixels its definition takes (a
network without a ``size`` parameter at its own). The suite checks three networks so
(``tests/codegen/test_cuda_zoo.py``); this runs the thirty-two, a few minutes of CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cnnc.dsl.builder import load_zoo
from cnnc.runtime.check import check
from cnnc.zoo import ZOO_DIR

SIZES = (64, 96, 128, 160, 224, 299)


def small_graph(name: str):
    """The network at the smallest of :data:`SIZES` it takes (its own size if it has none)."""
    last: Exception | None = None
    for size in SIZES:
        try:
            return load_zoo(name, size=size), size
        except Exception as e:  # a size the network refuses, or no size parameter
            last = e
    try:
        return load_zoo(name), None
    except Exception:
        raise last from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+",
                    default=sorted(p.stem for p in Path(ZOO_DIR).glob("*.cnn")))
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="cnnc-zoo-cuda-")
    failures = 0
    for name in args.models:
        start = time.time()
        graph, size = small_graph(name)
        _, rows = check(graph, target="cuda-emu", batch=args.batch, cache_dir=cache)
        failed = [r for r in rows if not r.ok]
        failures += bool(failed)
        print(f"{name} ({size or 'own size'}): {len(rows)} steps, {len(failed)} failed, "
              f"{time.time() - start:.0f} s" + (f"; first: {failed[0]}" if failed else ""),
              flush=True)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
