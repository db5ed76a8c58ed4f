"""What every kernel builder shares: runtime sizes, flattened parallel loops, and the fused
epilogue as the builders receive it (resolved: each op's rules already looked up, so no builder
imports the op registry)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..decisions import EpilogueOp
from .kernel_ir import (
    F64,
    BinOp,
    Expr,
    ExprLike,
    Kernel,
    Let,
    Loop,
    Param,
    Stmt,
    Var,
    call,
    const,
)

#: The batch size, a runtime integer argument of every kernel.
N_BATCH = Var("n_batch")

#: ``rule(x, attrs, operand) -> Expr``: an op applied to ``x`` at a store (``OpDef.epilogue``),
#: or to an 8- or 16-lane vector (``OpDef.vector_epilogue``, None where it has no vector form).
EpilogueFn = Callable[[Any, dict[str, Any], Any], Any]


@dataclass(frozen=True)
class FusedOp(EpilogueOp):
    """One fused epilogue op as a kernel builder applies it: the pass's record (op,
    attributes, operand position, origin) with the op's scalar rule and, where it has one, its
    vector rule. The lowering resolves them from the registry (``LowerCtx.resolve``)."""

    scalar: EpilogueFn | None = field(default=None, compare=False)
    vector: EpilogueFn | None = field(default=None, compare=False)


class Sizes:
    """Sizes that become runtime integer arguments of a kernel instead of literals.

    ``sz("C", 64)`` returns the variable ``C`` and records 64 as its value for this layer; the
    kernel gets an int parameter ``C`` (before ``n_batch``). Kernels that differ only in such
    sizes print identically, so one compiled kernel serves every layer and model. A builder
    given ``literal=True`` gets the numbers back instead (fully specialized code).
    """

    def __init__(self, literal: bool = False) -> None:
        self.literal = literal
        self.values: dict[str, int] = {}

    def __call__(self, name: str, value: int) -> ExprLike:
        if self.literal:
            return int(value)
        self.values[name] = int(value)
        return Var(name)

    def params(self) -> list[Param]:
        return [Param(n, "int") for n in self.values]


def as_f64(n: ExprLike) -> Expr:
    """A size as a float64 value: a literal, or a runtime integer (``Sizes``) converted."""
    return F64(float(n)) if isinstance(n, int) else call("f64", n)


def fmax(a: ExprLike, b: ExprLike) -> Expr:
    return BinOp("max", const(a), const(b))


def fmin(a: ExprLike, b: ExprLike) -> Expr:
    return BinOp("min", const(a), const(b))


def apply_epilogue(value: Expr, epilogue: Sequence[FusedOp],
                   operands: Mapping[int, Expr] | None = None, var: str = "v") -> list[Stmt]:
    """Lets computing ``value`` then each fused epilogue op into the local ``var``: each op's
    scalar rule, a binary op's second operand being ``operands[e.operand]`` (an expression
    loading it at the element being stored)."""
    stmts: list[Stmt] = [Let(var, value)]
    for e in epilogue:
        operand = None if e.operand is None else (operands or {})[e.operand]
        stmts.append(Let(var, e.scalar(Var(var), e.attr_dict, operand)))
    return stmts


def prod(shape: Sequence[int]) -> int:
    """The number of elements of a shape (1 for a scalar's)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def unflatten(t: Expr, dims: list[tuple[str, ExprLike]]) -> list[Stmt]:
    """Lets splitting a flattened index over ``dims`` (outermost first, last fastest)."""
    lets: list[Stmt] = []
    stride: ExprLike = 1
    for i in range(len(dims) - 1, -1, -1):
        name, extent = dims[i]
        v = t // stride if i == 0 else (t // stride) % extent
        lets.append(Let(name, v))
        stride = stride * extent
    return lets[::-1]


def arrays(*names: str) -> list[Param]:
    """Float array parameters."""
    return [Param(n) for n in names]


def int_params(*names: str) -> list[Param]:
    """Integer (size) parameters."""
    return [Param(n, "int") for n in names]


def rows_kernel(name: str, params: list[Param], rows: ExprLike, row_body: list[Stmt],
                comment: str, sz: Sizes | None = None) -> Kernel:
    """``for t in prange(n_batch * rows): <row_body>`` (``t`` is the flattened row)."""
    ints = sz.params() if sz is not None else []
    return Kernel(name, params + ints + [Param("n_batch", "int")],
                  [Loop("t", N_BATCH * rows, row_body, kind="parallel")], comment)
