"""The walk every target's printer shares: a kernel's statements with their nesting and its
expressions with their binding strength, dispatched by node class. A target's printer
(``backends/<target>/printer.py``) subclasses :class:`KernelPrinter` and gives its spellings:
the tables ``FUNCS`` (the IR's functions, ``kernel_ir.FUNCTIONS``) and ``PRECEDENCE`` (its
binary operators), and one method per node whose syntax is its own (``expr_Const``,
``stmt_Loop``, ...)."""

from __future__ import annotations

from collections.abc import Mapping

from ..kernels.kernel_ir import (
    BinOp,
    Call,
    Div,
    Expr,
    Loop,
    Stmt,
    VBin,
    VHalf,
    VSpread,
    VUnary,
    walk,
)

#: Bit-wise operators (integer hashing), printed in parentheses whatever their context, with
#: operands that bind tighter than any infix operator (so they are parenthesized too).
BITWISE = ("^", ">>")
BITWISE_OPERAND = 100


class KernelPrinter:
    """Kernel IR as the source of one target. ``expr(e, prec)`` prints expression ``e`` in a
    context of binding strength ``prec`` (0: none; it adds parentheses where ``e`` binds
    less); ``body(stmts, depth, out)`` appends the lines of statements at nesting ``depth``."""

    #: IR function name -> how this target spells the call; a function missing here cannot
    #: be printed (``pow`` is the infix power where the target has one).
    FUNCS: Mapping[str, str] = {}
    #: Binary operator -> binding strength (higher binds tighter; all left-associative).
    PRECEDENCE: Mapping[str, int] = {}
    #: How one level of nesting is indented.
    INDENT = "    "

    # -- the walk ---------------------------------------------------------------------------
    def expr(self, e: Expr, prec: int = 0) -> str:
        method = getattr(self, f"expr_{type(e).__name__}", None)
        if method is None:
            raise TypeError(f"cannot print expression {e!r}")
        return method(e, prec)

    def body(self, stmts: list[Stmt], depth: int, out: list[str]) -> None:
        if not stmts:
            out.append(self.INDENT * depth + self.empty_body())
        for s in stmts:
            method = getattr(self, f"stmt_{type(s).__name__}", None)
            if method is None:
                raise TypeError(f"cannot print statement {s!r}")
            method(s, depth, out)

    @staticmethod
    def check_parallel_loops(name: str, stmts: list[Stmt]) -> bool:
        """Whether the kernel has a parallel loop; refuses one nested in another (one flattened
        parallel loop is the rule: a target would serialize the inner one anyway)."""
        found = False
        for s, depth in walk(stmts):
            if isinstance(s, Loop) and s.kind == "parallel":
                if depth > 0:
                    raise ValueError(f"kernel {name}: nested parallel loop {s.var!r}")
                found = True
        return found

    # -- what every target spells the same way, given its tables ----------------------------
    def infix(self, left: Expr, op: str, right: Expr, prec: int) -> str:
        """``left op right`` with the parentheses its binding strength needs (left-associative:
        the right operand needs them at equal strength too)."""
        p = self.PRECEDENCE[op]
        s = f"{self.expr(left, p)} {op} {self.expr(right, p + 1)}"
        return f"({s})" if p < prec else s

    def expr_BinOp(self, e: BinOp, prec: int) -> str:
        if e.op in ("max", "min"):
            return f"{e.op}({self.expr(e.a)}, {self.expr(e.b)})"
        if e.op in BITWISE:  # parenthesized: the targets rank these operators differently
            a, b = (self.expr(v, BITWISE_OPERAND) for v in (e.a, e.b))
            return f"({a} {e.op} {b})"
        return self.infix(e.a, e.op, e.b, prec)

    def expr_Div(self, e: Div, prec: int) -> str:
        return self.infix(e.a, "/", e.b, prec)

    def expr_Call(self, e: Call, prec: int) -> str:
        if e.fn not in self.FUNCS:
            raise ValueError(f"function {e.fn!r} has no spelling in {type(self).__name__}")
        return f"{self.FUNCS[e.fn]}({', '.join(self.expr(a) for a in e.args)})"

    # Vector operations are calls of the target's vector helpers, named alike everywhere.
    def expr_VHalf(self, e: VHalf, prec: int) -> str:
        return f"{'vhigh' if e.high else 'vlow'}({self.expr(e.value)})"

    def expr_VBin(self, e: VBin, prec: int) -> str:
        if e.op not in ("add", "mul", "max", "min", "div"):
            raise ValueError(f"unknown vector op {e.op!r}")
        return f"v{e.op}({self.expr(e.a)}, {self.expr(e.b)})"

    def expr_VUnary(self, e: VUnary, prec: int) -> str:
        if e.op not in ("sqrt", "exp", "tanh"):
            raise ValueError(f"unknown vector op {e.op!r}")
        return f"v{e.op}({self.expr(e.value)})"

    def expr_VSpread(self, e: VSpread, prec: int) -> str:
        if e.run not in (2, 4, 8) or not 0 <= e.lane < e.run:
            raise ValueError(f"vspread takes runs of 2, 4 or 8 lanes, not {e.run}, {e.lane}")
        return f"vspread({self.expr(e.value)}, {int(e.run)}, {int(e.lane)})"

    def empty_body(self) -> str:
        raise NotImplementedError
