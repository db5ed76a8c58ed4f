"""The landmark networks as DSL files, loadable by name: `cnnc.zoo.load("resnet18")`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Every network in the zoo."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.cnn"))


def path(name: str) -> Path:
    p = ZOO_DIR / f"{name}.cnn"
    if not p.is_file():
        raise KeyError(f"no zoo network {name!r}; the zoo has: {', '.join(names())}")
    return p


def load(name: str, **params: Any):
    """Build the IR graph of a zoo network (network parameters such as classes= override)."""
    from ..dsl.builder import load_network

    return load_network(path(name), **params)
