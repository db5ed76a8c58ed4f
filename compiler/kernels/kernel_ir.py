"""A small, target-neutral loop-level kernel IR.

A :class:`Kernel` is a list of statements over flat 1-D arrays. Statements are loops, local
definitions (:class:`Let`), stores and guarded blocks; expressions are integer index arithmetic,
scalar float values and 8-lane float vectors (:class:`VZero`, :class:`VLoad`,
:class:`VBroadcast`, :class:`VSplat`, :class:`VFma`, :class:`VBin`). Every array is flat: a
builder computes the element offset from literal shapes and strides, so printers need no notion
of multi-dimensional layout. The Numba printer (``numba_printer.py``) turns a kernel into Python
source; a CUDA printer can print the same trees.

Expressions overload ``+ - * // %`` with constant folding, so builders write index arithmetic
naturally (``(n * 4 + c) * 58 + h``) and the printed code stays readable. ``==`` is *not*
overloaded (dataclass equality is kept); use :func:`cmp` for comparisons.

Fused epilogues (bias add, ReLU, ...) are ordinary expression trees wrapped around the value of a
store; see :class:`Epilogue`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal

# --------------------------------------------------------------------------------------------
# Expressions
# --------------------------------------------------------------------------------------------


class Expr:
    """Base class of expressions; arithmetic operators build folded :class:`BinOp` nodes."""

    def __add__(self, other: ExprLike) -> Expr:
        return binop("+", self, other)

    def __radd__(self, other: ExprLike) -> Expr:
        return binop("+", other, self)

    def __sub__(self, other: ExprLike) -> Expr:
        return binop("-", self, other)

    def __rsub__(self, other: ExprLike) -> Expr:
        return binop("-", other, self)

    def __mul__(self, other: ExprLike) -> Expr:
        return binop("*", self, other)

    def __rmul__(self, other: ExprLike) -> Expr:
        return binop("*", other, self)

    def __floordiv__(self, other: ExprLike) -> Expr:
        return binop("//", self, other)

    def __mod__(self, other: ExprLike) -> Expr:
        return binop("%", self, other)

    __hash__ = object.__hash__


ExprLike = Expr | int | float


@dataclass(frozen=True, eq=False)
class Const(Expr):
    """A literal: ``int`` for indices, ``float`` for float32 scalars."""

    value: int | float


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A reference to a kernel parameter, a loop variable or a local."""

    name: str


@dataclass(frozen=True, eq=False)
class BinOp(Expr):
    """Scalar binary operation.

    ``op`` is one of ``+ - * // %`` (integers, with Python floor semantics, always applied to
    non-negative values in generated kernels), ``^`` and ``>>`` (bit-wise exclusive or and
    right shift of non-negative integers: hashing), ``+ - * max min`` on floats, or a
    comparison / logic operator ``< <= > >= == != and or`` yielding a boolean.
    """

    op: str
    a: Expr
    b: Expr


@dataclass(frozen=True, eq=False)
class Load(Expr):
    """Scalar element ``array[index]`` of a flat array."""

    array: str
    index: Expr


@dataclass(frozen=True, eq=False)
class Select(Expr):
    """``a if cond else b``. Lazy: only the chosen branch is evaluated (so ``a`` may be an
    out-of-bounds load guarded by ``cond``)."""

    cond: Expr
    a: Expr
    b: Expr


@dataclass(frozen=True, eq=False)
class VZero(Expr):
    """A vector of zeros (8 lanes, or ``lanes``)."""

    lanes: int = 8


@dataclass(frozen=True, eq=False)
class VLoad(Expr):
    """Unaligned vector load ``array[index : index + lanes]``."""

    array: str
    index: Expr
    lanes: int = 8


@dataclass(frozen=True, eq=False)
class VBroadcast(Expr):
    """All lanes (8, or ``lanes``) set to the element ``array[index]``."""

    array: str
    index: Expr
    lanes: int = 8


@dataclass(frozen=True, eq=False)
class VSplat(Expr):
    """All lanes (8, or ``lanes``) set to a scalar expression."""

    value: Expr
    lanes: int = 8


@dataclass(frozen=True, eq=False)
class VFma(Expr):
    """Fused ``a * b + c`` on vectors."""

    a: Expr
    b: Expr
    c: Expr


@dataclass(frozen=True, eq=False)
class VJoin(Expr):
    """The 16-lane vector of the 8-lane ``a`` (lanes 0-7) then ``b`` (lanes 8-15)."""

    a: Expr
    b: Expr


@dataclass(frozen=True, eq=False)
class VHalf(Expr):
    """Lanes 0-7 (``high`` false) or 8-15 of a 16-lane vector, as an 8-lane vector."""

    value: Expr
    high: bool


@dataclass(frozen=True, eq=False)
class VBin(Expr):
    """Lane-wise vector ``add``, ``mul``, ``max``, ``min`` or ``div``."""

    op: Literal["add", "mul", "max", "min", "div"]
    a: Expr
    b: Expr


@dataclass(frozen=True, eq=False)
class VUnary(Expr):
    """Lane-wise vector ``sqrt`` (correctly rounded), ``exp`` (``simd.vexp``: within 2 ulps) or
    ``tanh`` (``simd.vtanh``: within 4)."""

    op: Literal["sqrt", "exp", "tanh"]
    value: Expr


@dataclass(frozen=True, eq=False)
class VAlign(Expr):
    """Lanes ``shift .. shift + n - 1`` of the ``n``-lane vectors ``a`` then ``b`` (``shift``
    1..n-1, ``n`` 8 or 16): a block of channels moved by ``shift`` channels, across a block
    boundary."""

    a: Expr
    b: Expr
    shift: int


@dataclass(frozen=True, eq=False)
class VSpread(Expr):
    """Lane ``lane`` of each run of ``run`` lanes of a vector, copied over that run (``run`` 2
    or 4; 8 in a 16-lane vector): each output channel's ``lane``-th input channel of its
    group."""

    value: Expr
    run: int
    lane: int


def const(x: ExprLike) -> Expr:
    """Wrap a Python number as :class:`Const` (expressions pass through)."""
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"not an expression: {x!r}")
    return Const(x)


def binop(op: str, a: ExprLike, b: ExprLike) -> Expr:
    """Build ``a op b`` with constant folding and the identities that keep indices readable."""
    a, b = const(a), const(b)
    ca = a.value if isinstance(a, Const) else None
    cb = b.value if isinstance(b, Const) else None
    if ca is not None and cb is not None and op in _FOLD:
        return Const(_FOLD[op](ca, cb))
    if op == "+":
        if ca == 0:
            return b
        if cb == 0:
            return a
        if isinstance(b, BinOp) and b.op == "-" and b.b is a:  # a + (x - a) -> x
            return b.a
        if cb is not None and isinstance(a, BinOp) and a.op == "+" \
                and isinstance(a.b, Const):  # (x + c1) + c2 -> x + (c1 + c2)
            return binop("+", a.a, a.b.value + cb)
    elif op == "-":
        if cb == 0:
            return a
    elif op == "*":
        if ca == 0 or cb == 0:
            return Const(0)
        if ca == 1:
            return b
        if cb == 1:
            return a
        if cb is not None and isinstance(a, BinOp) and a.op == "*" \
                and isinstance(a.b, Const):  # (x * c1) * c2 -> x * (c1 * c2)
            return binop("*", a.a, a.b.value * cb)
    elif op == "//":
        if cb == 1:
            return a
        if ca == 0:
            return Const(0)
    elif op == "%":
        if cb == 1 or ca == 0:
            return Const(0)
    return BinOp(op, a, b)


_FOLD = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "//": lambda x, y: x // y,
    "%": lambda x, y: x % y,
    "^": lambda x, y: x ^ y,
    ">>": lambda x, y: x >> y,
}


def xor(a: ExprLike, b: ExprLike) -> Expr:
    """Bit-wise exclusive or of non-negative integers."""
    return binop("^", a, b)


def shr(a: ExprLike, bits: int) -> Expr:
    """A non-negative integer shifted right by ``bits``."""
    return binop(">>", a, bits)


def cmp(op: str, a: ExprLike, b: ExprLike) -> Expr:
    """Comparison or logic expression (``< <= > >= == != and or``)."""
    return BinOp(op, const(a), const(b))


# --------------------------------------------------------------------------------------------
# Statements
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Let:
    """Define or re-assign the local ``var`` (scalar or vector) to ``value``."""

    var: str
    value: Expr


@dataclass(eq=False)
class Store:
    """Scalar store ``array[index] = value``."""

    array: str
    index: Expr
    value: Expr


@dataclass(eq=False)
class VStore:
    """Vector store ``array[index : index + lanes] = value`` (the lanes of ``value``)."""

    array: str
    index: Expr
    value: Expr


@dataclass(eq=False)
class Loop:
    """``for var in range(start, start + extent)``.

    ``kind`` is ``"serial"`` or ``"parallel"``; a kernel holds at most one parallel loop on any
    path (builders flatten several parallel dimensions into one). ``extent`` may be an
    expression of runtime integer parameters (e.g. the batch size).

    GPU kernels (CUDA only: the CPU printers refuse them) say how their threads cooperate
    instead: a top-level ``"block"`` loop runs one iteration per thread block (the grid), and
    its body holds block-wide :class:`Shared` arrays, invariants, and one ``"thread"`` loop of
    literal extent (the block's threads) whose iterations run concurrently and meet at
    :class:`Barrier` statements.
    """

    var: str
    extent: Expr
    body: list[Stmt]
    kind: Literal["serial", "parallel", "block", "thread"] = "serial"
    start: Expr = field(default_factory=lambda: Const(0))


@dataclass(eq=False)
class If:
    """``if cond: body else: orelse``."""

    cond: Expr
    body: list[Stmt]
    orelse: list[Stmt] = field(default_factory=list)


@dataclass(eq=False)
class Comment:
    """A comment line in the printed code (text must come from the compiler, not the user)."""

    text: str


@dataclass(eq=False)
class Shared:
    """An array of ``size`` float32 (or, ``double``, float64) elements shared by the threads
    of a block (CUDA's ``__shared__``), read and written by name with :class:`Load` and
    :class:`Store`; declared in the body of a ``"block"`` loop, before its ``"thread"`` loop.
    Its values do not outlive the block."""

    name: str
    size: int
    double: bool = False


@dataclass(eq=False)
class Barrier:
    """Every thread of the block waits here until all have arrived (CUDA's ``__syncthreads``):
    what one thread stored in a :class:`Shared` array before it is seen by all after it. Every
    thread must reach the same barriers in the same order (not under a condition that differs
    between threads)."""


Stmt = Let | Store | VStore | Loop | If | Comment | Shared | Barrier


@dataclass(frozen=True)
class Param:
    """A kernel argument: a flat float32 array, a runtime integer (e.g. batch size), a runtime
    float32 scalar (``float``: an optimizer's learning rate, which changes every step), or a
    flat int64 array (``int_array``: an integer graph input such as the dropout seed, which
    float32 cannot hold exactly)."""

    name: str
    kind: Literal["array", "int", "float", "int_array"] = "array"


@dataclass(eq=False)
class Kernel:
    """A kernel: a named function of ``params`` with a statement ``body``.

    ``comment`` is printed as a header comment; it must already be sanitized
    (see ``numba_printer.sanitize_comment``).
    """

    name: str
    params: list[Param]
    body: list[Stmt]
    comment: str = ""


# --------------------------------------------------------------------------------------------
# Epilogues
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Epilogue:
    """Element-wise work fused into the store of a kernel: optional bias add, then activation.

    ``apply_vec`` wraps an 8-lane accumulator; ``apply_scalar`` a scalar one. ``bias_array`` is
    the flat array parameter holding one bias per output channel.
    """

    bias: bool = False
    activation: Literal[None, "relu"] = None
    bias_array: str = "bias"

    def apply_vec(self, value: Expr, channel_offset: ExprLike, same_channel: bool = False,
                  lanes: int = 8) -> Expr:
        """Epilogue of an 8-lane (or ``lanes``-lane) accumulator ``value``.

        By default the lanes are the channels ``channel_offset .. +lanes`` (channel-blocked
        layouts); with ``same_channel`` all lanes belong to channel ``channel_offset`` (a row of
        an NCHW output), so the bias is broadcast.
        """
        if self.bias:
            load = VBroadcast if same_channel else VLoad
            value = VBin("add", value, load(self.bias_array, const(channel_offset), lanes))
        if self.activation == "relu":
            value = VBin("max", value, VZero(lanes))
        elif self.activation is not None:
            raise ValueError(f"unsupported activation {self.activation!r}")
        return value

    def apply_scalar(self, value: Expr, channel: ExprLike) -> Expr:
        """Epilogue of one element of output channel ``channel``."""
        if self.bias:
            value = value + Load(self.bias_array, const(channel))
        if self.activation == "relu":
            value = BinOp("max", value, Const(0.0))
        elif self.activation is not None:
            raise ValueError(f"unsupported activation {self.activation!r}")
        return value


def widened(e: Expr, lanes: int, keep: Expr | tuple[Expr | None, ...] | None = None) -> Expr:
    """The vector expression ``e`` with its splats and zeros made ``lanes`` wide, except
    inside the subexpressions ``keep`` (already that wide): a vector rule written for 8 lanes
    (``OpDef.vector_epilogue``) applied to the wider value and operand in ``keep``. Other loads
    are refused (they would stay 8 lanes)."""
    kept = keep if isinstance(keep, tuple) else (keep,)
    if any(e is k for k in kept):
        return e
    if isinstance(e, (VSplat, VZero)):
        return replace(e, lanes=lanes)
    if isinstance(e, (VLoad, VBroadcast, Load)):
        raise ValueError(f"cannot widen an expression that loads: {e!r}")
    changes = {f.name: widened(getattr(e, f.name), lanes, keep) for f in fields(e)
               if isinstance(getattr(e, f.name), Expr)}
    return replace(e, **changes) if changes else e


def contains(e: Expr, kind: type) -> bool:
    """Whether the expression ``e`` has a node of type ``kind`` in it."""
    return isinstance(e, kind) or any(
        isinstance(getattr(e, f.name), Expr) and contains(getattr(e, f.name), kind)
        for f in fields(e))


def walk(stmts: list[Stmt]):
    """Yield ``(stmt, depth_of_enclosing_parallel_loops)`` for every statement, pre-order."""

    def rec(body: list[Stmt], par: int):
        for s in body:
            yield s, par
            if isinstance(s, Loop):
                yield from rec(s.body, par + (s.kind == "parallel"))
            elif isinstance(s, If):
                yield from rec(s.body, par)
                yield from rec(s.orelse, par)

    yield from rec(stmts, 0)


# --------------------------------------------------------------------------------------------
# Scalar math: whitelisted function calls, float64 literals and true division (activations,
# softmax, normalization, upsampling index math).
# --------------------------------------------------------------------------------------------

#: The functions a kernel may call (``call(fn, ...)``); each backend's printer spells them
#: (``FUNCS`` of ``backends/<target>/printer.py``). ``thread_id`` is the worker thread running
#: the task (0 .. threads - 1: per-thread scratch); ``pow`` is ``a ** b``.
FUNCTIONS = ("exp", "expm1", "log", "log1p", "tanh", "erf", "sqrt", "floor", "abs", "int", "f32",
             "f64", "vsum", "thread_id", "pow")


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """``fn(*args)`` for ``fn`` in :data:`FUNCTIONS`."""

    fn: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class F64(Expr):
    """A float64 literal (``Const(float)`` prints as float32)."""

    value: float


@dataclass(frozen=True, eq=False)
class Div(Expr):
    """True division ``a / b``."""

    a: Expr
    b: Expr


def call(fn: str, *args: ExprLike) -> Call:
    if fn not in FUNCTIONS:
        raise ValueError(f"unknown kernel function {fn!r}")
    return Call(fn, tuple(const(a) for a in args))


def div(a: ExprLike, b: ExprLike) -> Div:
    return Div(const(a), const(b))


_INT_OPS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "//": lambda a, b: a // b, "%": lambda a, b: a % b, "max": max, "min": min,
}


def evaluate_int(e: Expr, env: Mapping[str, int]) -> int:
    """The value of integer expression ``e`` of the variables ``env`` (a kernel's integer
    arguments and invariants); ``ValueError`` where it names anything else."""
    if isinstance(e, Const) and isinstance(e.value, int):
        return e.value
    if isinstance(e, Var) and e.name in env:
        return env[e.name]
    if isinstance(e, BinOp) and e.op in _INT_OPS:
        return _INT_OPS[e.op](evaluate_int(e.a, env), evaluate_int(e.b, env))
    raise ValueError(f"cannot evaluate {e!r} before the launch")
