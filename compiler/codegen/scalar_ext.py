"""Scalar math for the kernel IR, and a printer for kernels that use it.

The shared kernel IR (``kernel_ir.py``) covers index arithmetic, float ``+ - * max min`` and the
8-lane vector intrinsics: enough for convolutions. Activations, softmax and normalization also
need division, ``exp``/``log``/``tanh``/``erf``/``sqrt``/``pow``, float64 accumulators and a
horizontal vector sum. This module adds three expression nodes:

- :class:`Call` -- a call of a whitelisted function (the name never comes from user text);
- :class:`F64` -- a float64 literal (index math of upsampling must round exactly as NumPy);
- :class:`Div` -- true division ``a / b``;

and :func:`print_module`, a copy of the shared Numba printer's rules that also prints them (and
prints non-finite constants, which the shared printer cannot). When the shared printer learns
these nodes, the lowering can switch to it with a one-line change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .kernel_ir import (
    BinOp,
    Comment,
    Const,
    Expr,
    ExprLike,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Select,
    Store,
    Var,
    VBin,
    VBroadcast,
    VFma,
    VLoad,
    VSplat,
    VStore,
    VZero,
    const,
    walk,
)
from .numba_printer import _check_ident, sanitize_comment

__all__ = ["Call", "F64", "Div", "call", "div", "print_module", "print_kernel", "print_expr"]

#: Function name in the IR -> how it prints. Only these can appear in generated code.
FUNCS = {
    "exp": "math.exp",
    "log": "math.log",
    "tanh": "math.tanh",
    "erf": "math.erf",
    "sqrt": "math.sqrt",
    "floor": "math.floor",
    "abs": "abs",
    "int": "int",
    "f32": "np.float32",
    "f64": "np.float64",
    "vsum": "vsum",
    "pow": None,  # printed as a ** b
}


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """``fn(*args)`` for ``fn`` in :data:`FUNCS`."""

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
    if fn not in FUNCS:
        raise ValueError(f"unknown kernel function {fn!r}")
    return Call(fn, tuple(const(a) for a in args))


def div(a: ExprLike, b: ExprLike) -> Div:
    return Div(const(a), const(b))


_PREC = {"or": 1, "and": 2, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 6, "-": 6, "*": 7, "//": 7, "%": 7, "/": 7, "**": 9}


def _float_literal(v: float) -> str:
    if math.isnan(v):
        return "np.nan"
    if math.isinf(v):
        return "np.inf" if v > 0 else "(-np.inf)"
    return repr(float(v))


def print_expr(e: Expr, prec: int = 0) -> str:
    """Python source of an expression; ``prec`` is the binding strength of the context."""
    if isinstance(e, Const):
        if isinstance(e.value, float):
            return f"np.float32({_float_literal(e.value)})"
        return str(e.value) if e.value >= 0 or prec == 0 else f"({e.value})"
    if isinstance(e, F64):
        s = _float_literal(e.value)
        return f"({s})" if s.startswith("-") and prec > 0 else s
    if isinstance(e, Var):
        return _check_ident(e.name)
    if isinstance(e, Div):
        s = f"{print_expr(e.a, 7)} / {print_expr(e.b, 8)}"
        return f"({s})" if prec > 7 else s
    if isinstance(e, Call):
        if e.fn == "pow":
            s = f"{print_expr(e.args[0], 10)} ** {print_expr(e.args[1], 10)}"
            return f"({s})" if prec > 0 else s
        args = ", ".join(print_expr(a) for a in e.args)
        return f"{FUNCS[e.fn]}({args})"
    if isinstance(e, BinOp):
        if e.op in ("max", "min"):
            return f"{e.op}({print_expr(e.a)}, {print_expr(e.b)})"
        p = _PREC[e.op]
        s = f"{print_expr(e.a, p)} {e.op} {print_expr(e.b, p + 1)}"
        return f"({s})" if p < prec else s
    if isinstance(e, Load):
        return f"{_check_ident(e.array)}[{print_expr(e.index)}]"
    if isinstance(e, Select):
        s = f"{print_expr(e.a, 1)} if {print_expr(e.cond, 1)} else {print_expr(e.b, 1)}"
        return f"({s})" if prec > 0 else s
    if isinstance(e, VZero):
        return "vzero()"
    if isinstance(e, VLoad):
        return f"vload({_check_ident(e.array)}, {print_expr(e.index)})"
    if isinstance(e, VBroadcast):
        return f"vbroadcast({_check_ident(e.array)}, {print_expr(e.index)})"
    if isinstance(e, VSplat):
        return f"vsplat({print_expr(e.value)})"
    if isinstance(e, VFma):
        return f"vfma({print_expr(e.a)}, {print_expr(e.b)}, {print_expr(e.c)})"
    if isinstance(e, VBin):
        if e.op not in ("add", "mul", "max"):
            raise ValueError(f"unknown vector op {e.op!r}")
        return f"v{e.op}({print_expr(e.a)}, {print_expr(e.b)})"
    raise TypeError(f"cannot print expression {e!r}")


def _print_body(body, indent: int, out: list[str]) -> None:
    pad = "    " * indent
    if not body:
        out.append(pad + "pass")
    for s in body:
        if isinstance(s, Let):
            out.append(f"{pad}{_check_ident(s.var)} = {print_expr(s.value)}")
        elif isinstance(s, Store):
            out.append(f"{pad}{_check_ident(s.array)}[{print_expr(s.index)}] = "
                       f"{print_expr(s.value)}")
        elif isinstance(s, VStore):
            out.append(f"{pad}vstore({_check_ident(s.array)}, {print_expr(s.index)}, "
                       f"{print_expr(s.value)})")
        elif isinstance(s, Loop):
            rng = "prange" if s.kind == "parallel" else "range"
            ext = print_expr(s.extent)
            if isinstance(s.start, Const) and s.start.value == 0:
                args = ext
            else:
                args = f"{print_expr(s.start)}, {print_expr(s.start + s.extent)}"
            out.append(f"{pad}for {_check_ident(s.var)} in {rng}({args}):")
            _print_body(s.body, indent + 1, out)
        elif isinstance(s, If):
            out.append(f"{pad}if {print_expr(s.cond)}:")
            _print_body(s.body, indent + 1, out)
            if s.orelse:
                out.append(f"{pad}else:")
                _print_body(s.orelse, indent + 1, out)
        elif isinstance(s, Comment):
            out.append(f"{pad}# {sanitize_comment(s.text)}")
        else:
            raise TypeError(f"cannot print statement {s!r}")


def print_kernel(k: Kernel, *, parallel: bool = True, fastmath: bool = False,
                 with_comment: bool = True) -> str:
    """Source of one ``@njit`` function for kernel ``k`` (no imports)."""
    for s, depth in walk(k.body):
        if isinstance(s, Loop) and s.kind == "parallel" and depth > 0:
            raise ValueError(f"kernel {k.name}: nested parallel loop {s.var!r}")
    has_prange = any(isinstance(s, Loop) and s.kind == "parallel" for s, _ in walk(k.body))
    out: list[str] = []
    if k.comment and with_comment:
        for line in k.comment.split("\n"):
            out.append(f"# {sanitize_comment(line)}")
    out.append(f"@njit(parallel={parallel and has_prange}, fastmath={fastmath}, cache=True, "
               "nogil=True)")
    params = ", ".join(_check_ident(p.name) for p in k.params)
    out.append(f"def {_check_ident(k.name)}({params}):")
    _print_body(k.body, 1, out)
    return "\n".join(out) + "\n"


def print_module(kernels: list[Kernel], *, header: str = "", parallel: bool = True) -> str:
    """A complete importable module holding ``kernels``; ``header`` becomes a comment."""
    lines = ["# Generated by cnnc (cnnc.compiler.codegen.lower). Do not edit: regenerated on "
             "demand."]
    if header:
        lines.append(f"# {sanitize_comment(header)}")
    lines += [
        "import math",
        "",
        "import numpy as np",
        "from numba import njit, prange",
        "",
        "from cnnc.compiler.codegen.vec8 import (",
        "    vadd, vbroadcast, vfma, vload, vmax, vmul, vsplat, vstore, vsum, vzero,",
        ")",
        "",
        "_UNUSED = (math, np, prange, vadd, vbroadcast, vfma, vload, vmax, vmul, vsplat, vstore,",
        "           vsum, vzero)",
        "",
    ]
    for k in kernels:
        lines.append("")
        lines.append(print_kernel(k, parallel=parallel))
    return "\n".join(lines)
