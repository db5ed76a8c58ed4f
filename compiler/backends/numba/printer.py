"""Print kernel IR as Python source that Numba compiles into CPU task functions.

The output of :func:`print_module` is a complete, importable module: a header, imports of the
:mod:`simd` intrinsics and the :mod:`block` helpers, and per kernel a task function
``name(task, args)`` with its task count ``name_tasks(...)`` (:func:`print_kernel`).
A kernel's parallel loop (one, flattened, at its end: the rule) is not printed as a loop: its
body is the task function's body for one iteration, the loop variable being the task index,
and :mod:`tasks` runs the iterations over the threads. A size is a literal where the builder
made it one (what shapes an unrolled loop: channel block, kernel size, stride) and a runtime
integer argument otherwise; literals fold into the index arithmetic. Scalar float constants
print as ``np.float32(...)`` so float32 arithmetic is not promoted to float64.

Identifiers in the generated code come only from the compiler (kernel and parameter names are
checked to be plain identifiers); user text appears only in ``#`` comments after
:func:`sanitize_comment`.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import fields

from ...kernels.kernel_ir import (
    F64,
    Call,
    Comment,
    Const,
    Expr,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Select,
    Stmt,
    Store,
    VAlign,
    Var,
    VStore,
    walk,
)
from ..printer import KernelPrinter
from .block import WORDS

#: The argument block's name in a task function.
BLOCK_NAME = "args"

__all__ = ["sanitize_comment", "print_kernel", "print_module", "task_form", "MAX_COMMENT",
           "BLOCK_NAME"]

MAX_COMMENT = 200
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VEC_FUNCS = ("vzero", "vload", "vstore", "vbroadcast", "vsplat", "vfma", "vadd", "vmul", "vmax",
              "vmin", "vdiv", "vsqrt", "valign", "vspread", "vexp", "vtanh", "vsum", "vjoin")


def sanitize_comment(text: str, max_len: int = MAX_COMMENT) -> str:
    """Make arbitrary text safe for one ``#`` comment line.

    Every control character (newlines, carriage returns, tabs, form feeds, NUL ...), the Unicode
    line/paragraph separators and other non-printable characters become a space; runs of spaces
    collapse; the result is cut to ``max_len`` characters (with ``...``). The result never
    contains a character that Python's tokenizer treats as a line break, so it cannot end the
    comment and inject code.
    """
    text = str(text)
    cleaned = "".join(ch if ch.isprintable() and ch not in "\u2028\u2029\x85" else " "
                      for ch in text)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    # Surrogates cannot be encoded in the UTF-8 source file.
    cleaned = cleaned.encode("utf-8", "replace").decode("utf-8")
    if len(cleaned) > max_len:
        cleaned = cleaned[: max_len - 3] + "..."
    return cleaned


def _check_ident(name: str) -> str:
    if not _IDENT.match(name) or keyword.iskeyword(name) or name in _VEC_FUNCS:
        raise ValueError(f"invalid identifier in kernel IR: {name!r}")
    return name


def _float_literal(v: float) -> str:
    """A float as Python source, non-finite values included."""
    if math.isnan(v):
        return "np.nan"
    if math.isinf(v):
        return "np.inf" if v > 0 else "(-np.inf)"
    return repr(float(v))


#: The IR's functions (``kernel_ir.FUNCTIONS``) as Numba-compiled Python spells them.
FUNCS = {
    "exp": "math.exp",
    "expm1": "math.expm1",
    "log": "math.log",
    "log1p": "math.log1p",
    "tanh": "math.tanh",
    "erf": "math.erf",
    "sqrt": "math.sqrt",
    "floor": "math.floor",
    "abs": "abs",
    "int": "int",
    "f32": "np.float32",
    "f64": "np.float64",
    "vsum": "vsum",
    "thread_id": "get_thread_id",
}

#: Vector nodes that print as one call of the SIMD extension (``simd``) on their fields, in
#: order: node class -> (intrinsic, whether its name takes the width suffix ``16``).
VECTOR_CALLS = {
    "VZero": ("vzero", True),
    "VLoad": ("vload", True),
    "VBroadcast": ("vbroadcast", True),
    "VSplat": ("vsplat", True),
    "VJoin": ("vjoin", False),
    "VFma": ("vfma", False),
}


def _subscript(printer: NumbaPrinter, index: Expr) -> str:
    """A scalar subscript as unsigned: Numba then omits its negative-index wraparound (a
    compare and a select per access), which inside a ``prange`` body also kept LLVM from
    vectorizing the loop: a plain copy of 200K floats took 100 us in a ``prange`` body and
    8 us with unsigned subscripts (the input pack of a 224x224 image: 95 -> 31 us). Generated
    indices are never negative. A literal index stays as it is (nothing to check)."""
    if isinstance(index, Const):
        return printer.expr(index)
    return f"np.uint64({printer.expr(index)})"


def _width(lanes: int) -> str:
    """The name suffix of a load/zero/broadcast intrinsic of ``lanes`` lanes (8: none)."""
    if lanes not in (8, 16):
        raise ValueError(f"vectors have 8 or 16 lanes, not {lanes}")
    return "" if lanes == 8 else str(lanes)


class NumbaPrinter(KernelPrinter):
    """Kernel IR as Python for ``numba.njit``: float32 literals as ``np.float32(...)`` (so
    arithmetic is not promoted to float64), vectors as calls of
    the SIMD extension."""

    FUNCS = FUNCS
    PRECEDENCE = {"or": 1, "and": 2, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
                  "+": 6, "-": 6, "*": 7, "//": 7, "%": 7, "/": 7, "**": 9}

    # -- expressions ------------------------------------------------------------------------
    def expr_Const(self, e: Const, prec: int) -> str:
        if isinstance(e.value, float):
            return f"np.float32({_float_literal(e.value)})"
        return str(e.value) if e.value >= 0 or prec == 0 else f"({e.value})"

    def expr_F64(self, e: F64, prec: int) -> str:
        s = _float_literal(e.value)
        return f"({s})" if s.startswith("-") and prec > 0 else s

    def expr_Var(self, e: Var, prec: int) -> str:
        return _check_ident(e.name)

    def expr_Call(self, e: Call, prec: int) -> str:
        if e.fn == "pow":
            s = f"{self.expr(e.args[0], 10)} ** {self.expr(e.args[1], 10)}"
            return f"({s})" if prec > 0 else s
        return super().expr_Call(e, prec)

    def expr_Load(self, e: Load, prec: int) -> str:
        return f"{_check_ident(e.array)}[{_subscript(self, e.index)}]"

    def expr_Select(self, e: Select, prec: int) -> str:
        s = f"{self.expr(e.a, 1)} if {self.expr(e.cond, 1)} else {self.expr(e.b, 1)}"
        return f"({s})" if prec > 0 else s

    def vector_call(self, e: Expr, prec: int) -> str:
        """A node of ``VECTOR_CALLS``: its intrinsic on its array name and expressions."""
        name, sized = VECTOR_CALLS[type(e).__name__]
        args = []
        for f in fields(e):
            value = getattr(e, f.name)
            if f.name == "array":
                args.append(_check_ident(value))
            elif isinstance(value, Expr):
                args.append(self.expr(value))
        return f"{name}{_width(e.lanes) if sized else ''}({', '.join(args)})"

    expr_VZero = expr_VLoad = expr_VBroadcast = expr_VSplat = vector_call
    expr_VJoin = expr_VFma = vector_call

    def expr_VAlign(self, e: VAlign, prec: int) -> str:
        if not 1 <= e.shift <= 15:
            raise ValueError(f"valign shifts by 1 to 15 lanes, not {e.shift}")
        return f"valign({self.expr(e.a)}, {self.expr(e.b)}, {int(e.shift)})"

    # -- statements -------------------------------------------------------------------------
    def empty_body(self) -> str:
        return "pass"

    def stmt_Let(self, s: Let, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}{_check_ident(s.var)} = {self.expr(s.value)}")

    def stmt_Store(self, s: Store, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}{_check_ident(s.array)}[{_subscript(self, s.index)}] "
                   f"= {self.expr(s.value)}")

    def stmt_VStore(self, s: VStore, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}vstore({_check_ident(s.array)}, "
                   f"{self.expr(s.index)}, {self.expr(s.value)})")

    def stmt_Loop(self, s: Loop, depth: int, out: list[str]) -> None:
        if s.kind in ("block", "thread"):  # cooperating GPU threads have no CPU form here
            raise ValueError(f"{s.kind} loop {s.var!r}: a GPU kernel's, printed for CUDA only")
        rng = "range"  # a parallel loop's iterations are tasks (``task_form``): none is left
        if isinstance(s.start, Const) and s.start.value == 0:
            args = self.expr(s.extent)
        else:
            args = f"{self.expr(s.start)}, {self.expr(s.start + s.extent)}"
        out.append(f"{self.INDENT * depth}for {_check_ident(s.var)} in {rng}({args}):")
        self.body(s.body, depth + 1, out)

    def stmt_If(self, s: If, depth: int, out: list[str]) -> None:
        pad = self.INDENT * depth
        out.append(f"{pad}if {self.expr(s.cond)}:")
        self.body(s.body, depth + 1, out)
        if s.orelse:
            out.append(f"{pad}else:")
            self.body(s.orelse, depth + 1, out)

    def stmt_Comment(self, s: Comment, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}# {sanitize_comment(s.text)}")

    # -- functions ------------------------------------------------------------------------
    def kernel(self, k: Kernel, *, with_comment: bool = True) -> str:
        """Source of kernel ``k`` as a task function and its task count (no imports): see
        :func:`print_kernel`."""
        pre, loop = task_form(k)
        names = {p.name for p in k.params}
        task = _check_ident(loop.var) if loop is not None else "task"
        if task in names or BLOCK_NAME in names or f"{k.name}_tasks" in names:
            raise ValueError(f"kernel {k.name}: a parameter is named {task!r}, "
                             f"{BLOCK_NAME!r} or {k.name + '_tasks'!r}")
        out: list[str] = []
        if k.comment and with_comment:
            out += [f"# {sanitize_comment(line)}" for line in k.comment.split("\n")]
        out.append(f"def {_check_ident(k.name)}({task}, {BLOCK_NAME}):")
        at = 0
        for p in k.params:
            name = _check_ident(p.name)
            unpack = {"array": f"f32_array({BLOCK_NAME}, {at})",
                      "int_array": f"i64_array({BLOCK_NAME}, {at})",
                      "int": f"{BLOCK_NAME}[{at}]",
                      "float": f"f32_scalar({BLOCK_NAME}, {at})"}[p.kind]
            out.append(f"{self.INDENT}{name} = {unpack}")
            at += WORDS[p.kind]
        self.body(pre + (loop.body if loop is not None else []), 1, out)
        # the task count, in plain Python: evaluated when a call's arguments are bound
        params = ", ".join(_check_ident(p.name) for p in k.params)
        out += ["", "", f"def {k.name}_tasks({params}):"]
        if loop is None:
            out.append(f"{self.INDENT}return 1")
        else:
            extent = self.expr(loop.extent)
            out += [f"{self.INDENT}{st.var} = {self.expr(st.value)}" for st in pre
                    if isinstance(st, Let) and re.search(rf"\b{st.var}\b", extent)]
            out.append(f"{self.INDENT}return {extent}")
        return "\n".join(out) + "\n"


def task_form(k: Kernel) -> tuple[list[Stmt], Loop | None]:
    """``(statements before it, the loop)`` of a kernel whose work is one flattened parallel
    loop at its end (after ``Let``s only: they are its task count's inputs), ``(body, None)``
    for a kernel with no parallel loop; any other kernel is refused."""
    NumbaPrinter.check_parallel_loops(k.name, k.body)
    *pre, last = k.body or [Comment("")]
    if isinstance(last, Loop) and last.kind == "parallel" and \
            all(isinstance(st, (Let, Comment)) for st in pre):
        return list(pre), last
    if not any(isinstance(s, Loop) and s.kind == "parallel" for s, _ in walk(k.body)):
        return list(k.body), None
    raise ValueError(f"kernel {k.name}: a parallel loop must be the kernel's last statement, "
                     f"after Let statements only (one flattened parallel loop is the rule)")


PRINTER = NumbaPrinter()


def print_expr(e: Expr, prec: int = 0) -> str:
    """Python source of an expression; ``prec`` is the binding strength of the context."""
    return PRINTER.expr(e, prec)


def print_kernel(k: Kernel, *, with_comment: bool = True) -> str:
    """Source of kernel ``k`` as its CPU task function ``k.name(task, block)``, which reads its
    arguments from the argument block (:mod:`block`) and does one iteration of the kernel's
    parallel loop (all of a kernel without one), and ``k.name_tasks(*params)``, the number of
    tasks: the loop's extent (1). No imports (:func:`print_module` adds them)."""
    return PRINTER.kernel(k, with_comment=with_comment)


def print_module(kernels: list[Kernel], *, header: str = "") -> str:
    """A complete module of the task functions of ``kernels`` (:func:`print_kernel`);
    ``header`` is a (sanitized) comment line. The functions are plain Python until
    :class:`~.tasks.TaskKernel` compiles them (C callbacks: one signature for all)."""
    lines = ["# Generated by cnnc (cnnc.compiler.backends.numba). "
             "Do not edit: regenerated on demand."]
    if header:
        lines.append(f"# {sanitize_comment(header)}")
    lines += [
        "# Each kernel is a task function (task, args), compiled by cnnc as a C callback and",
        "# called by cnnc.compiler.backends.numba.tasks.run_tasks for task 0 .. <name>_tasks - 1.",
        "import math",
        "",
        "import numpy as np",
        "from numba import get_thread_id",
        "",
        "from cnnc.compiler.backends.numba.block import f32_array, f32_scalar, i64_array",
        "from cnnc.compiler.backends.numba.simd import (",
        "    vadd, valign, vbroadcast, vbroadcast16, vdiv, vexp, vfma, vhigh, vjoin, vload,",
        "    vload16, vlow, vmax, vmin, vmul, vsplat, vsplat16, vspread, vsqrt, vstore, vsum,",
        "    vtanh, vzero, vzero16,",
        ")",
        "",
        "_UNUSED = (math, np, get_thread_id, f32_array, f32_scalar, i64_array, vadd,",
        "           valign, vbroadcast, vbroadcast16, vdiv, vexp, vfma, vhigh, vjoin, vload,",
        "           vload16, vlow, vmax, vmin, vmul, vsplat, vsplat16, vspread, vsqrt, vstore,",
        "           vsum, vtanh, vzero, vzero16)",
        "",
    ]
    for k in kernels:
        lines.append("")
        lines.append(print_kernel(k))
    return "\n".join(lines)
