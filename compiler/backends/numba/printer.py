"""Print kernel IR as Python source for ``numba.njit``.

The output of :func:`print_module` is a complete, importable module: a header, imports of
``prange`` and the :mod:`simd` intrinsics, and one ``@njit(..., cache=True)`` function per kernel.
A size is a literal where the builder made it one (what shapes an unrolled loop: channel block,
kernel size, stride) and a runtime integer argument otherwise; literals fold into the index
arithmetic. Parallel loops print as ``prange`` (the printer refuses a
parallel loop nested in another: Numba would serialize it anyway, and one flattened ``prange``
is the rule). Scalar float constants print as ``np.float32(...)`` so float32 arithmetic is not
promoted to float64.

Identifiers in the generated code come only from the compiler (kernel and parameter names are
checked to be plain identifiers); user text appears only in ``#`` comments after
:func:`sanitize_comment`.
"""

from __future__ import annotations

import keyword
import math
import re

from ...kernels.kernel_ir import (
    F64,
    FUNCS,
    BinOp,
    Call,
    Comment,
    Const,
    Div,
    Expr,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Select,
    Store,
    VAlign,
    Var,
    VBin,
    VBroadcast,
    VFma,
    VHalf,
    VJoin,
    VLoad,
    VSplat,
    VSpread,
    VStore,
    VUnary,
    VZero,
    walk,
)

__all__ = ["sanitize_comment", "print_kernel", "print_module", "MAX_COMMENT"]

MAX_COMMENT = 200
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VEC_FUNCS = ("vzero", "vload", "vstore", "vbroadcast", "vsplat", "vfma", "vadd", "vmul", "vmax",
              "vmin", "vdiv", "vsqrt", "valign", "vspread", "vexp", "vsum", "vjoin")


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


_PREC = {"or": 1, "and": 2, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 6, "-": 6, "*": 7, "//": 7, "%": 7, "/": 7, "**": 9}


def _float_literal(v: float) -> str:
    """A float as Python source, non-finite values included."""
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
        return f"{FUNCS[e.fn]}({', '.join(print_expr(a) for a in e.args)})"
    if isinstance(e, BinOp):
        if e.op in ("max", "min"):
            return f"{e.op}({print_expr(e.a)}, {print_expr(e.b)})"
        p = _PREC[e.op]
        # Left-associative: the right operand needs parentheses at equal precedence.
        s = f"{print_expr(e.a, p)} {e.op} {print_expr(e.b, p + 1)}"
        return f"({s})" if p < prec else s
    if isinstance(e, Load):
        return f"{_check_ident(e.array)}[{_subscript(e.index)}]"
    if isinstance(e, Select):
        s = f"{print_expr(e.a, 1)} if {print_expr(e.cond, 1)} else {print_expr(e.b, 1)}"
        return f"({s})" if prec > 0 else s
    if isinstance(e, VZero):
        return f"vzero{_width(e.lanes)}()"
    if isinstance(e, VLoad):
        return f"vload{_width(e.lanes)}({_check_ident(e.array)}, {print_expr(e.index)})"
    if isinstance(e, VBroadcast):
        return f"vbroadcast{_width(e.lanes)}({_check_ident(e.array)}, {print_expr(e.index)})"
    if isinstance(e, VHalf):
        return f"{'vhigh' if e.high else 'vlow'}({print_expr(e.value)})"
    if isinstance(e, VJoin):
        return f"vjoin({print_expr(e.a)}, {print_expr(e.b)})"
    if isinstance(e, VSplat):
        return f"vsplat{_width(e.lanes)}({print_expr(e.value)})"
    if isinstance(e, VFma):
        return f"vfma({print_expr(e.a)}, {print_expr(e.b)}, {print_expr(e.c)})"
    if isinstance(e, VBin):
        if e.op not in ("add", "mul", "max", "min", "div"):
            raise ValueError(f"unknown vector op {e.op!r}")
        return f"v{e.op}({print_expr(e.a)}, {print_expr(e.b)})"
    if isinstance(e, VUnary):
        if e.op not in ("sqrt", "exp"):
            raise ValueError(f"unknown vector op {e.op!r}")
        return f"v{e.op}({print_expr(e.value)})"
    if isinstance(e, VAlign):
        if not 1 <= e.shift <= 15:
            raise ValueError(f"valign shifts by 1 to 15 lanes, not {e.shift}")
        return f"valign({print_expr(e.a)}, {print_expr(e.b)}, {int(e.shift)})"
    if isinstance(e, VSpread):
        if e.run not in (2, 4, 8) or not 0 <= e.lane < e.run:
            raise ValueError(f"vspread takes runs of 2, 4 or 8 lanes, not {e.run}, {e.lane}")
        return f"vspread({print_expr(e.value)}, {int(e.run)}, {int(e.lane)})"
    raise TypeError(f"cannot print expression {e!r}")


def _subscript(index: Expr) -> str:
    """A scalar subscript as unsigned: Numba then omits its negative-index wraparound (a
    compare and a select per access), which inside a ``prange`` body also kept LLVM from
    vectorizing the loop: a plain copy of 200K floats took 100 us in a ``prange`` body and
    8 us with unsigned subscripts (the input pack of a 224x224 image: 95 -> 31 us). Generated
    indices are never negative. A literal index stays as it is (nothing to check)."""
    if isinstance(index, Const):
        return print_expr(index)
    return f"np.uint64({print_expr(index)})"


def _width(lanes: int) -> str:
    """The name suffix of a load/zero/broadcast intrinsic of ``lanes`` lanes (8: none)."""
    if lanes not in (8, 16):
        raise ValueError(f"vectors have 8 or 16 lanes, not {lanes}")
    return "" if lanes == 8 else str(lanes)


def _print_body(body, indent: int, out: list[str]) -> None:
    pad = "    " * indent
    if not body:
        out.append(pad + "pass")
    for s in body:
        if isinstance(s, Let):
            out.append(f"{pad}{_check_ident(s.var)} = {print_expr(s.value)}")
        elif isinstance(s, Store):
            out.append(f"{pad}{_check_ident(s.array)}[{_subscript(s.index)}] = "
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


def print_kernel(k: Kernel, *, parallel: bool = True, fastmath: bool = True,
                 with_comment: bool = True) -> str:
    """Source of one ``@njit`` function for kernel ``k`` (no imports)."""
    for s, depth in walk(k.body):
        if isinstance(s, Loop) and s.kind == "parallel" and depth > 0:
            raise ValueError(f"kernel {k.name}: nested parallel loop {s.var!r}")
    has_prange = any(isinstance(s, Loop) and s.kind == "parallel" for s, _ in walk(k.body))
    par = parallel and has_prange
    out: list[str] = []
    if k.comment and with_comment:
        out += [f"# {sanitize_comment(line)}" for line in k.comment.split("\n")]
    out.append(f"@njit(parallel={par}, fastmath={fastmath}, cache=True, nogil=True)")
    params = ", ".join(_check_ident(p.name) for p in k.params)
    out.append(f"def {_check_ident(k.name)}({params}):")
    _print_body(k.body, 1, out)
    return "\n".join(out) + "\n"


def print_module(kernels: list[Kernel], *, header: str = "", parallel: bool = True,
                 fastmath: bool = True) -> str:
    """A complete module holding ``kernels``; ``header`` is a (sanitized) comment line."""
    lines = ["# Generated by cnnc (cnnc.compiler.backends.numba). "
             "Do not edit: regenerated on demand."]
    if header:
        lines.append(f"# {sanitize_comment(header)}")
    lines += [
        "import math",
        "",
        "import numpy as np",
        "from numba import get_thread_id, njit, prange",
        "",
        "from cnnc.compiler.backends.numba.simd import (",
        "    vadd, valign, vbroadcast, vbroadcast16, vdiv, vexp, vfma, vhigh, vjoin, vload,",
        "    vload16, vlow, vmax, vmin, vmul, vsplat, vsplat16, vspread, vsqrt, vstore, vsum,",
        "    vzero, vzero16,",
        ")",
        "",
        "_UNUSED = (math, np, get_thread_id, prange, vadd, valign, vbroadcast, vbroadcast16, vdiv,",
        "           vexp, vfma, vhigh, vjoin, vload, vload16, vlow, vmax, vmin, vmul, vsplat,",
        "           vsplat16, vspread, vsqrt, vstore, vsum, vzero, vzero16)",
        "",
    ]
    for k in kernels:
        lines.append("")
        lines.append(print_kernel(k, parallel=parallel, fastmath=fastmath))
    return "\n".join(lines)


def print_tasked(kernel: Kernel, header: str) -> str:
    """Module source for a compute kernel whose body is one flattened ``prange`` loop, split in
    two functions: ``<name>_task`` (serial: the loop body for one task ``t``) and ``<name>``,
    a parallel loop calling it.

    Numba's parallel passes grow much faster than linearly with the size of a ``prange`` body;
    with the runtime-sized tails the unrolled tiles made a single-function kernel compile 4-5x
    slower. Outlined, the task compiles as an ordinary function (the call per output row costs
    nothing measurable).
    """
    *pre, loop = kernel.body
    assert isinstance(loop, Loop) and loop.kind == "parallel", kernel.name
    task = Kernel(f"{kernel.name}_task", kernel.params + [Param(loop.var, "int")],
                  pre + loop.body, kernel.comment)
    src = print_module([task], header=header, parallel=False, fastmath=False)
    names = [p.name for p in kernel.params]
    args = ", ".join(names)
    extent = print_expr(loop.extent)
    used = {st.var for st in pre
            if isinstance(st, Let) and re.search(rf"\b{st.var}\b", extent)}
    return src + "\n".join([
        "",
        "",
        "@njit(parallel=True, fastmath=False, cache=True, nogil=True)",
        f"def {kernel.name}({args}):",
        *(f"    {st.var} = {print_expr(st.value)}" for st in pre
          if isinstance(st, Let) and st.var in used),
        f"    for {loop.var} in prange({print_expr(loop.extent)}):",
        f"        {task.name}({args}, {loop.var})",
        "",
    ])
