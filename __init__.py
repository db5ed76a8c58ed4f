"""cnnc: a spec-driven graph compiler for convolutional neural networks.

    import cnnc
    graph = cnnc.load("resnet18")            # a zoo name, a .cnn path or DSL source
    outputs = cnnc.reference(graph, {"image": x})
    saliency = cnnc.explain.saliency("lenet5", x, class_index=3)   # looking inside
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any


def load(source_or_path: str, **params: Any):
    """Parse a network (zoo name, file path or DSL source) into an IR `Graph`."""
    from .dsl.builder import load_network

    return load_network(source_or_path, **params)


def __getattr__(name: str) -> Any:
    # Heavy entry points import lazily so `import cnnc` stays fast.
    if name == "compile":
        from .runtime.model import compile as compile_model

        return compile_model
    if name == "reference":
        from .runtime.reference import run_reference

        return run_reference
    if name == "explain":
        import importlib

        return importlib.import_module(f"{__name__}.runtime.explain")
    if name == "zoo":
        import importlib

        return importlib.import_module(f"{__name__}.zoo")
    raise AttributeError(f"module 'cnnc' has no attribute {name!r}")
