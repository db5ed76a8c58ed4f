"""The decision vocabulary: what the passes record on IR nodes and every floor below them reads.

A node's ``attrs`` hold the op's own attributes and, under the keys of ``DECISION_KEYS``, what
a pass decided about it: the element-wise ops fused at its store (``epilogue``: a tuple of
:class:`EpilogueOp`) or at the read of its first input (``prologue``: :class:`PrologueOp`), the
algorithm (``lowering``), the register tile (``tile``) and, for a tile whose tasks take groups
of its k-tiles, how many groups (``kgroups``: sized by the target's L2), the activation layout
(``layout``), the zero border kept around a channel-blocked value (``halo``), whether its
kernel zeroes that border on every call (``zero_halo``), the channel blocks before it in a
merged convolution's buffer (``prefix``), a concatenation written in place (``in_place``), the
batch norms folded into it (``folded``), whether it is evaluated when parameters are set
(``parameter_time``), whether its last input is the parameter-time node of its packed weights
(``packed``) and whether its kernel takes a residual add as a runtime choice (``residual``:
``"runtime"``) and, of a value whose compute kernel writes channel-blocked scratch unpacked to
its plain output, how many leading epilogue ops that kernel applies at its store
(``store_epilogue``; the unpacking applies the rest).

A module of its own, below the op registry and the kernel builders, so that both read the same
records without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Node attributes that record a pass's decision rather than the op's meaning; they are
#: stripped before an op's own shape rule and reference see the attributes.
DECISION_KEYS = ("epilogue", "prologue", "lowering", "tile", "kgroups", "layout", "halo",
                 "zero_halo", "prefix", "in_place", "folded", "parameter_time", "packed",
                 "residual", "store_epilogue")


@dataclass(frozen=True)
class EpilogueOp:
    """One element-wise op fused at a node's store: ``op`` (an op with an ``epilogue`` rule)
    with its attributes; a binary op takes its second operand from the node's input at
    position ``operand`` (operands are appended after the node's own inputs, in order)."""

    op: str
    attrs: tuple[tuple[str, Any], ...] = ()
    operand: int | None = None
    origin: str = field(default="", compare=False)  # "file:line layer" for kernel comments

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)

    def __str__(self) -> str:
        args = [f"%in{self.operand}"] if self.operand is not None else []
        args += [f"{k}={v}" for k, v in self.attrs]
        return f"{self.op}({', '.join(args)})" if args else self.op


def epilogue_of(attrs: dict[str, Any]) -> tuple[EpilogueOp, ...]:
    return tuple(attrs.get("epilogue", ()))


@dataclass(frozen=True)
class PrologueOp:
    """A one-input op fused at the read of a node's first input: the node's own rule sees
    ``op(inputs[0])`` (``fuse_prologues``: the pool of an inception module's pool projection
    computed by the 1x1 convolution that reads it, ``conv(maxpool(x), w) => conv(x, w;
    prologue=maxpool)``). The node's op is affine in that input (a convolution)."""

    op: str
    attrs: tuple[tuple[str, Any], ...] = ()
    origin: str = field(default="", compare=False)  # "file:line layer" for kernel comments

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)

    def __str__(self) -> str:
        return f"{self.op}({', '.join(f'{k}={v}' for k, v in self.attrs)})"


def prologue_of(attrs: dict[str, Any]) -> tuple[PrologueOp, ...]:
    return tuple(attrs.get("prologue", ()))


def own_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The op's own attributes (pass decisions removed)."""
    return {k: v for k, v in attrs.items() if k not in DECISION_KEYS}


def own_input_count(n_inputs: int, attrs: dict[str, Any]) -> int:
    """How many of a node's inputs are the op's own (the rest are epilogue operands and, last,
    with ``packed``, the parameter-time node holding its packed weights)."""
    return n_inputs - sum(e.operand is not None for e in epilogue_of(attrs)) - \
        bool(attrs.get("packed"))


def operand_kind(shape: tuple[int, ...], target: tuple[int, ...]) -> str | None:
    """How a fused epilogue's second operand of ``shape`` meets a value of ``target`` shape:
    ``full`` (the same shape: a residual), ``channel`` (C x 1 x 1 against C x H x W: a gate),
    ``scalar`` (one value per sample), or None (another broadcast, which stays unfused)."""
    if tuple(shape) == tuple(target):
        return "full"
    if int(np.prod(shape)) == 1 and len(shape) <= len(target):
        return "scalar"
    if len(target) == 3 and tuple(shape) == (target[0], 1, 1):
        return "channel"
    return None
