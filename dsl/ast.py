"""The DSL's syntax tree: small frozen dataclasses, each carrying its source span."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..compiler.ir import Span


@dataclass(frozen=True)
class Expr:
    span: Span


@dataclass(frozen=True)
class Num(Expr):
    value: int | float


@dataclass(frozen=True)
class Bool(Expr):
    value: bool


@dataclass(frozen=True)
class Arg:
    span: Span
    value: Expr
    keyword: str | None = None
    keyword_span: Span | None = None


@dataclass(frozen=True)
class Call(Expr):
    """`name`, `name(args)` or `name(args) as label`: a variable, a layer or a block."""

    name: str
    name_span: Span
    args: tuple[Arg, ...] | None  # None: written without parentheses
    label: str | None = None


@dataclass(frozen=True)
class BinOp(Expr):
    op: str  # + - * // / %
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr


@dataclass(frozen=True)
class Seq(Expr):
    """A tuple `(a, b)` or a list `[a, b]` (lists nest for literal weights)."""

    items: tuple[Expr, ...]
    brackets: str  # "()" or "[]"


@dataclass(frozen=True)
class Stage:
    span: Span


@dataclass(frozen=True)
class CallStage(Stage):
    call: Call


@dataclass(frozen=True)
class RepeatStage(Stage):
    call: Call
    times: Expr


@dataclass(frozen=True)
class GroupStage(Stage):
    """`-> (conv(64, 3) -> relu) * 2`: a parenthesized run of stages, optionally repeated."""

    stages: tuple[Stage, ...]
    times: Expr | None


@dataclass(frozen=True)
class OutputStage(Stage):
    name: str


@dataclass(frozen=True)
class Chain(Expr):
    head: Expr
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class Param:
    span: Span
    name: str
    default: Expr | None


@dataclass(frozen=True)
class Stmt:
    span: Span


@dataclass(frozen=True)
class Header(Stmt):
    name: str
    params: tuple[Param, ...]


@dataclass(frozen=True)
class InputDecl(Stmt):
    name: str
    dims: tuple[Expr, ...]


@dataclass(frozen=True)
class Import(Stmt):
    path: str
    names: tuple[str, ...] | None  # None: everything


@dataclass(frozen=True)
class Assign(Stmt):
    name: str
    value: Chain


@dataclass(frozen=True)
class Shared(Stmt):
    name: str
    call: Call


@dataclass(frozen=True)
class Return(Stmt):
    value: Chain


@dataclass(frozen=True)
class OutputStmt(Stmt):
    name: str
    value: Chain


@dataclass(frozen=True)
class ChainStmt(Stmt):
    value: Chain


@dataclass(frozen=True)
class BlockDef(Stmt):
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]


@dataclass
class Module:
    file: str
    items: list[Stmt] = field(default_factory=list)
