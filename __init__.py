"""cnnc: a spec-driven graph compiler for convolutional neural networks.

    import cnnc
    graph = cnnc.load("resnet18")            # a zoo name, a .cnn path or DSL source
    outputs = cnnc.reference(graph, {"image": x})
    saliency = cnnc.explain.saliency("lenet5", x, class_index=3)   # looking inside
"""

from __future__ import annotations

__version__ = "0.1.0"

import atexit
import gc
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

# At exit, every object still alive is frozen (``gc.freeze``) before the interpreter tears its
# modules down: its collections then skip the ~110,000 objects NumPy, Numba and networkx made,
# 0.2-0.5 s of every process's exit (bench/RESULTS.md, session 24). The price: the finalizers
# (``__del__``) of objects in reference cycles that are already garbage at exit do not run,
# which Python does not promise either ("not guaranteed ... for objects that still exist when
# the interpreter exits"). Registered first, so it runs after the exit handlers of modules
# imported later.
atexit.register(gc.freeze)


def load(source_or_path: str, **params: Any):
    """Parse a network (zoo name, file path or DSL source) into an IR `Graph`."""
    from .dsl.builder import load_network

    return load_network(source_or_path, **params)


@contextmanager
def paused_collection() -> Iterator[None]:
    """Python's automatic collection off inside the block (on again after it, if it was):
    an import of ~800 modules triggers 0.05-0.1 s of collections that find nothing to free
    (bench/RESULTS.md, session 24)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def import_paused(name: str) -> ModuleType:
    """Import module ``name`` with automatic collection paused (``paused_collection``). Not
    frozen after (``gc.freeze``), though that would spare the compile's collections the
    ~110,000 objects the import made: a library freezing its caller's heap would keep every
    object alive then that later becomes garbage in a reference cycle forever. The ``cnnc``
    command, whose process is its own, freezes (``runtime/cli.py``)."""
    if name in sys.modules:
        return sys.modules[name]
    with paused_collection():
        return importlib.import_module(name)


def __getattr__(name: str) -> Any:
    # Heavy entry points import lazily so `import cnnc` stays fast.
    if name == "compile":
        return import_paused(f"{__name__}.runtime.model").compile
    if name == "reference":
        from .runtime.reference import run_reference

        return run_reference
    if name == "explain":
        return importlib.import_module(f"{__name__}.runtime.explain")
    if name == "zoo":
        return importlib.import_module(f"{__name__}.zoo")
    raise AttributeError(f"module 'cnnc' has no attribute {name!r}")
