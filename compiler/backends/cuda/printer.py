"""Print kernel IR as CUDA C.

:func:`print_module` gives one translation unit: a prelude (the float vectors of 8 and 16
lanes as small structs whose lane loops the compiler unrolls into registers, and their
operations), then one ``extern "C" __global__`` function per kernel, each preceded by the DSL
lines it came from as ``//`` comments.

How the IR maps:

- The one parallel loop of a kernel becomes grid arithmetic: thread ``blockIdx.x * blockDim.x +
  threadIdx.x`` runs iteration ``start + index`` of the loop, behind a bounds guard (the launch
  rounds the grid up to whole blocks: ``launch.launch_shape``). Statements before it (loop
  invariants) run in every thread; anything after it is refused (each thread would run it). A
  kernel without a parallel loop runs on one thread.
- A GPU kernel's ``"block"`` loop is the grid itself (iteration ``blockIdx.x``, one block
  each) and its ``"thread"`` loop the block's threads (``threadIdx.x``); ``Shared`` arrays print
  as ``__shared__`` and ``Barrier`` as ``__syncthreads()`` (``check_blocks`` says where they
  may stand).
- Scalars are ``int`` (indices: the launcher refuses arrays of 2**31 floats or more), ``long
  long`` (a load of an ``int_array`` parameter, an integer literal past 32 bits, arithmetic on
  them: the dropout hash's int64), ``float`` (``Const(float)``, loads of float arrays) or
  ``double`` (``F64``, ``f64()``, true division of integers), as Numba would type them; a
  local's type is that of the values assigned to it, widened (int < long long < float <
  double) where they differ. Locals are declared where C++ scoping needs them:
  at the first assignment when every use follows it in the same block, else just before the
  first statement of the innermost block that holds every use.
- Functions use the float spelling on float arguments (``expf``, ``tanhf``, ``erff``, ...),
  the double one on doubles; ``a * b + c`` on floats and every vector fused multiply-add
  print as ``fmaf``.
- ``//`` and ``%`` print as C's ``/`` and ``%``: the IR applies them only to non-negative
  integers, where floor and truncation agree; the bit-wise ``^`` and ``>>`` (on non-negative
  integers too) print in parentheses, as every target's printer prints them.

Identifiers come only from the compiler; a name C++ or CUDA reserves (``floor``, ``int``,
``threadIdx``, the prelude's functions) gets a trailing underscore. User text appears only in
``//`` comments after :func:`cuda_comment`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from functools import cache

import numpy as np

from ...kernels.kernel_ir import (
    F64,
    Barrier,
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
    Select,
    Shared,
    Stmt,
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
)
from ..numba.printer import sanitize_comment
from ..printer import BITWISE, KernelPrinter

__all__ = ["CudaPrinter", "PRELUDE", "cuda_comment", "print_kernel", "print_module",
           "kernel_type_errors", "check_blocks", "block_threads"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: The operations of the prelude's vectors; the kernels call them by these names.
VECTOR_FUNCS = ("vzero", "vload", "vbroadcast", "vsplat", "vfma", "vadd", "vmul", "vmax",
                "vmin", "vdiv", "vsqrt", "vexp", "vtanh", "valign", "vspread", "vsum", "vjoin",
                "vlow", "vhigh", "vstore")

#: Names a local or parameter may not take in CUDA C++ (keywords, built-in variables, the
#: math functions kernels call, the prelude's names); such a name is printed with a trailing
#: underscore.
RESERVED = frozenset("""
    auto bool break case char const continue default do double else enum extern float for goto
    if inline int long register restrict return short signed sizeof static struct switch
    typedef union unsigned void volatile while class namespace template typename this new
    delete operator private public protected virtual friend using true false nullptr
    threadIdx blockIdx blockDim gridDim warpSize min max abs llabs floor floorf exp expf expm1
    expm1f log logf log1p log1pf tanh tanhf erf erff sqrt sqrtf pow powf fabs fabsf fmaf
    fmaxf fminf f8 f16 vec
    """.split()) | frozenset(VECTOR_FUNCS)

#: The vector types and their operations, first in every module. A vector is a struct of
#: ``L`` floats; every loop over its lanes has a literal trip count, so the compiler unrolls
#: it and keeps the lanes in registers.
PRELUDE = r"""
template <int L> struct vec { float lane[L]; };
typedef vec<8> f8;
typedef vec<16> f16;

template <int L> __device__ __forceinline__ vec<L> vzero() {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = 0.0f;
    return r;
}
template <int L> __device__ __forceinline__ vec<L> vsplat(float v) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = v;
    return r;
}
template <int L> __device__ __forceinline__ vec<L> vload(const float* a, int at) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = a[at + i];
    return r;
}
template <int L> __device__ __forceinline__ vec<L> vbroadcast(const float* a, int at) {
    return vsplat<L>(a[at]);
}
template <int L> __device__ __forceinline__ void vstore(float* a, int at, vec<L> v) {
#pragma unroll
    for (int i = 0; i < L; ++i) a[at + i] = v.lane[i];
}
template <int L> __device__ __forceinline__ vec<L> vfma(vec<L> a, vec<L> b, vec<L> c) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = fmaf(a.lane[i], b.lane[i], c.lane[i]);
    return r;
}
#define CNNC_LANEWISE2(name, expr)                                      \
    template <int L> __device__ __forceinline__ vec<L> name(vec<L> a, vec<L> b) { \
        vec<L> r;                                                     \
        _Pragma("unroll") for (int i = 0; i < L; ++i) {               \
            float x = a.lane[i], y = b.lane[i];                       \
            r.lane[i] = expr;                                         \
        }                                                             \
        return r;                                                     \
    }
CNNC_LANEWISE2(vadd, x + y)
CNNC_LANEWISE2(vmul, x * y)
CNNC_LANEWISE2(vdiv, x / y)
CNNC_LANEWISE2(vmax, fmaxf(x, y))
CNNC_LANEWISE2(vmin, fminf(x, y))
#undef CNNC_LANEWISE2
template <int L> __device__ __forceinline__ vec<L> vsqrt(vec<L> a) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = sqrtf(a.lane[i]);
    return r;
}
template <int L> __device__ __forceinline__ vec<L> vexp(vec<L> a) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = expf(a.lane[i]);
    return r;
}
template <int L> __device__ __forceinline__ vec<L> vtanh(vec<L> a) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = tanhf(a.lane[i]);
    return r;
}
template <int L> __device__ __forceinline__ float vsum(vec<L> a) {
    float s = a.lane[0];
#pragma unroll
    for (int i = 1; i < L; ++i) s += a.lane[i];
    return s;
}
/* lanes shift .. shift + L - 1 of a then b */
template <int L> __device__ __forceinline__ vec<L> valign(vec<L> a, vec<L> b, int shift) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i)
        r.lane[i] = i + shift < L ? a.lane[i + shift] : b.lane[i + shift - L];
    return r;
}
/* lane `lane` of each run of `run` lanes, copied over that run */
template <int L> __device__ __forceinline__ vec<L> vspread(vec<L> a, int run, int lane) {
    vec<L> r;
#pragma unroll
    for (int i = 0; i < L; ++i) r.lane[i] = a.lane[i - i % run + lane];
    return r;
}
__device__ __forceinline__ f16 vjoin(f8 a, f8 b) {
    f16 r;
#pragma unroll
    for (int i = 0; i < 8; ++i) { r.lane[i] = a.lane[i]; r.lane[i + 8] = b.lane[i]; }
    return r;
}
__device__ __forceinline__ f8 vlow(f16 a) {
    f8 r;
#pragma unroll
    for (int i = 0; i < 8; ++i) r.lane[i] = a.lane[i];
    return r;
}
__device__ __forceinline__ f8 vhigh(f16 a) {
    f8 r;
#pragma unroll
    for (int i = 0; i < 8; ++i) r.lane[i] = a.lane[i + 8];
    return r;
}
""".strip("\n")


def cuda_comment(text: str) -> str:
    """``sanitize_comment`` for a ``//`` line: one printable line, and no backslash (at the
    end of a line it would splice the next line into the comment)."""
    return sanitize_comment(text).replace("\\", "/")


def _float_literal(v: float) -> str:
    """A float32 literal: the shortest decimal that reads back as the float32 value."""
    if math.isnan(v):
        return "__int_as_float(0x7fffffff)"
    f = np.float32(v)
    if f == 0:
        return "-0.0f" if math.copysign(1.0, f) < 0 else "0.0f"
    if math.isinf(f):
        return "__int_as_float(0x7f800000)" if f > 0 else "(-__int_as_float(0x7f800000))"
    s = np.format_float_positional(f, unique=True, trim="0") if 1e-4 <= abs(f) < 1e16 \
        else np.format_float_scientific(f, unique=True, trim="0")
    return f"{s}f"


def _double_literal(v: float) -> str:
    if math.isnan(v):
        return "__longlong_as_double(0x7ff8000000000000LL)"
    if math.isinf(v):
        inf = "__longlong_as_double(0x7ff0000000000000LL)"
        return inf if v > 0 else f"(-{inf})"
    s = repr(float(v))
    return s if any(c in s for c in ".e") else s + ".0"


# ---------------------------------------------------------------------------------------------
# Types: "int", "bool", "long long", "float", "double", or a vector of 8 or 16 lanes ("f8",
# "f16")
# ---------------------------------------------------------------------------------------------

_SCALAR_RANK = {"bool": 0, "int": 1, "long long": 2, "float": 3, "double": 4}
#: The integer types (``//``, ``%`` and the bit-wise operators take only these).
_INTEGERS = ("int", "long long")
#: The C type of an element of an array parameter of each kind (``Param.kind``).
ELEMENT = {"array": "float", "int_array": "long long"}


def _wider(a: str, b: str) -> str:
    """The type of arithmetic on ``a`` and ``b`` (or of a local assigned both)."""
    if a == b:
        return a
    if a in _SCALAR_RANK and b in _SCALAR_RANK:
        return max(a, b, key=_SCALAR_RANK.__getitem__)
    raise TypeError(f"values of types {a} and {b} mixed")


def _vector(lanes: int) -> str:
    if lanes not in (8, 16):
        raise ValueError(f"vectors have 8 or 16 lanes, not {lanes}")
    return f"f{lanes}"


def _lanes(vtype: str) -> int:
    if vtype not in ("f8", "f16"):
        raise TypeError(f"expected a vector, found a value of type {vtype}")
    return int(vtype[1:])


#: IR function -> (spelling on float, spelling on double); the type of the result is that of
#: the argument, an integer argument being taken as a double (as Python's ``math`` does).
MATH_FUNCS = {
    "exp": ("expf", "exp"), "expm1": ("expm1f", "expm1"), "log": ("logf", "log"),
    "log1p": ("log1pf", "log1p"), "tanh": ("tanhf", "tanh"), "erf": ("erff", "erf"),
    "sqrt": ("sqrtf", "sqrt"), "floor": ("floorf", "floor"), "abs": ("fabsf", "fabs"),
    "pow": ("powf", "pow"),
}

#: Binary operator -> (C spelling, binding strength); ``//`` is C's ``/`` on the IR's
#: non-negative integers.
OPERATORS = {"or": ("||", 1), "and": ("&&", 2), "==": ("==", 3), "!=": ("!=", 3),
             "<": ("<", 4), "<=": ("<=", 4), ">": (">", 4), ">=": (">=", 4),
             "+": ("+", 6), "-": ("-", 6), "*": ("*", 7), "//": ("/", 7), "%": ("%", 7),
             "/": ("/", 7)}
_COMPARISONS = ("or", "and", "==", "!=", "<", "<=", ">", ">=")


Block = tuple[tuple[int, int], ...]  # a block: (statement index, 0 body / 1 else) per level


@dataclass(frozen=True)
class _Scope:
    """Where one local is declared: in ``block``, at statement ``index`` of it (``inline``:
    that statement is its first assignment, which declares it), else just before it."""

    block: Block
    index: int
    inline: bool


class CudaPrinter(KernelPrinter):
    """Kernel IR as CUDA C (see the module docstring for the mapping)."""

    FUNCS = {fn: f for fn, (f, _) in MATH_FUNCS.items()}
    PRECEDENCE = {op: p for op, (_, p) in OPERATORS.items()}

    def __init__(self) -> None:
        self.types: dict[str, str] = {}
        self.declare: dict[str, _Scope] = {}
        self.at: tuple[Block, int] = ((), 0)  # the block and index being printed
        self.unused: set[str] = set()  # locals assigned and never read
        self.elements: dict[str, str] = {}  # array parameter -> the C type of its elements

    # -- types ------------------------------------------------------------------------------
    def type_of(self, e: Expr) -> str:
        """The C type of expression ``e`` in the current kernel."""
        if isinstance(e, Const):
            if isinstance(e.value, float):
                return "float"
            return "int" if -2**31 <= e.value < 2**31 else "long long"
        if isinstance(e, F64):
            return "double"
        if isinstance(e, Var):
            if e.name not in self.types:
                raise ValueError(f"variable {e.name!r} is used before it is assigned")
            return self.types[e.name]
        if isinstance(e, Load):
            return self.elements.get(e.array, "float")
        if isinstance(e, BinOp):
            if e.op in _COMPARISONS:
                return "bool"
            t = _wider(_wider(self.type_of(e.a), self.type_of(e.b)), "int")
            if e.op in ("//", "%", *BITWISE) and t not in _INTEGERS:
                raise TypeError(f"{e.op} on values of type {t} (the IR's {e.op} is on "
                                "non-negative integers)")
            return t
        if isinstance(e, Div):
            t = _wider(self.type_of(e.a), self.type_of(e.b))
            return "double" if t in ("int", "long long", "bool") else t
        if isinstance(e, Select):
            return _wider(self.type_of(e.a), self.type_of(e.b))
        if isinstance(e, Call):
            return self._call_type(e)
        if isinstance(e, (VZero, VLoad, VBroadcast, VSplat)):
            return _vector(e.lanes)
        if isinstance(e, (VFma, VBin, VAlign)):
            return _vector(_lanes(self.type_of(e.a)))
        if isinstance(e, (VUnary, VSpread)):
            return _vector(_lanes(self.type_of(e.value)))
        if isinstance(e, VJoin):
            return _vector(2 * _lanes(self.type_of(e.a)))
        if isinstance(e, VHalf):
            return _vector(_lanes(self.type_of(e.value)) // 2)
        raise TypeError(f"cannot type expression {e!r}")

    def _call_type(self, e: Call) -> str:
        if e.fn == "int":
            return "int"
        if e.fn in ("f32", "vsum"):
            return "float"
        if e.fn == "f64":
            return "double"
        if e.fn == "thread_id":
            raise ValueError("thread_id (per-thread scratch of the CPU's worker threads) has "
                             "no CUDA form")
        t = self.type_of(e.args[0])
        for a in e.args[1:]:
            t = _wider(t, self.type_of(a))
        if e.fn == "abs" and t in _INTEGERS:
            return t
        return "double" if t in ("int", "long long", "bool", "double") else t

    def infer_locals(self, k: Kernel) -> None:
        """Type every local of ``k`` (parameters, loop variables, ``Let`` targets), widening a
        local assigned values of different types, until nothing changes."""
        self.elements = {p.name: ELEMENT[p.kind] for p in k.params if p.kind in ELEMENT}
        self.elements |= {s.name: "double" if s.double else "float"
                          for s, _ in _walk(k.body) if isinstance(s, Shared)}
        base = {p.name: {"int": "int", "float": "float"}.get(p.kind, "array") for p in k.params}
        self.types = dict(base)
        for _ in range(8):
            before = dict(self.types)
            self.types = dict(base) | {n: t for n, t in before.items() if n not in base}
            self._infer_body(k.body)
            if self.types == before:
                return
        raise ValueError(f"kernel {k.name}: the types of its locals do not settle")

    def _infer_body(self, stmts: list[Stmt]) -> None:
        for s in stmts:
            if isinstance(s, Let):
                t = self.type_of(s.value)
                old = self.types.get(s.var)
                self.types[s.var] = t if old is None else _wider(old, t)
            elif isinstance(s, Loop):
                self.types[s.var] = "int"
                self._infer_body(s.body)
            elif isinstance(s, If):
                self._infer_body(s.body)
                self._infer_body(s.orelse)

    # -- names ------------------------------------------------------------------------------
    @staticmethod
    def name(n: str) -> str:
        if not _IDENT.match(n):
            raise ValueError(f"invalid identifier in kernel IR: {n!r}")
        return f"{n}_" if n in RESERVED else n

    # -- expressions ------------------------------------------------------------------------
    def expr_Const(self, e: Const, prec: int) -> str:
        if isinstance(e.value, float):
            s = _float_literal(e.value)
        else:
            if not -2**63 <= e.value < 2**63:
                raise ValueError(f"integer literal {e.value} does not fit a 64-bit integer")
            s = str(e.value) if -2**31 <= e.value < 2**31 else f"{e.value}LL"
        return f"({s})" if s.startswith("-") and prec > 0 else s

    def expr_F64(self, e: F64, prec: int) -> str:
        s = _double_literal(e.value)
        return f"({s})" if s.startswith("-") and prec > 0 else s

    def expr_Var(self, e: Var, prec: int) -> str:
        return self.name(e.name)

    def expr_Load(self, e: Load, prec: int) -> str:
        return f"{self.name(e.array)}[{self.expr(e.index)}]"

    def expr_BinOp(self, e: BinOp, prec: int) -> str:
        if e.op in ("max", "min"):
            t = self.type_of(e)
            fn = {"float": f"f{e.op}f", "double": f"f{e.op}"}.get(t, e.op)
            return f"{fn}({self.cast(e.a, t)}, {self.cast(e.b, t)})"
        if e.op in BITWISE:
            self.type_of(e)  # refused on other than integers
            return super().expr_BinOp(e, prec)
        if e.op == "+" and self.type_of(e) == "float":  # a * b + c and c + a * b: one fmaf
            for prod, other in ((e.a, e.b), (e.b, e.a)):
                if isinstance(prod, BinOp) and prod.op == "*":
                    return (f"fmaf({self.cast(prod.a, 'float')}, {self.cast(prod.b, 'float')}, "
                            f"{self.cast(other, 'float')})")
        if e.op not in OPERATORS:
            raise ValueError(f"unknown operator {e.op!r}")
        spelled, p = OPERATORS[e.op]
        s = f"{self.expr(e.a, p)} {spelled} {self.expr(e.b, p + 1)}"
        return f"({s})" if p < prec else s

    def cast(self, e: Expr, t: str) -> str:
        """``e`` as a value of scalar type ``t`` (a cast where its own type differs: C's
        ``fmaxf(int, float)`` and ``max(int, double)`` would be ambiguous or narrowing)."""
        if self.type_of(e) == t:
            return self.expr(e)
        return f"({t})({self.expr(e)})" if not isinstance(e, (Var, Const, Load)) else \
            f"({t}){self.expr(e, 10)}"

    def expr_Div(self, e: Div, prec: int) -> str:
        t = self.type_of(e)
        s = f"{self.cast(e.a, t) if self.type_of(e.a) in _INTEGERS else self.expr(e.a, 7)} / " \
            f"{self.expr(e.b, 8)}"
        return f"({s})" if prec > 7 else s

    def expr_Select(self, e: Select, prec: int) -> str:
        t = self.type_of(e)
        a = self.cast(e.a, t) if t in _SCALAR_RANK else self.expr(e.a)
        b = self.cast(e.b, t) if t in _SCALAR_RANK else self.expr(e.b)
        s = f"{self.expr(e.cond, 1)} ? {a} : {b}"
        return f"({s})" if prec > 0 else s

    def expr_Call(self, e: Call, prec: int) -> str:
        t = self.type_of(e)
        if e.fn in ("int", "f32", "f64"):
            return f"({t})({self.expr(e.args[0])})"
        if e.fn == "vsum":
            return f"vsum({self.expr(e.args[0])})"
        if e.fn not in MATH_FUNCS:
            raise ValueError(f"function {e.fn!r} has no spelling in CudaPrinter")
        if t == "int":  # abs of an integer
            return f"abs({self.expr(e.args[0])})"
        if t == "long long":
            return f"llabs({self.expr(e.args[0])})"
        fn = MATH_FUNCS[e.fn][0 if t == "float" else 1]
        return f"{fn}({', '.join(self.cast(a, t) for a in e.args)})"

    def expr_VZero(self, e: VZero, prec: int) -> str:
        return f"vzero<{e.lanes}>()"

    def expr_VLoad(self, e: VLoad, prec: int) -> str:
        return f"vload<{e.lanes}>({self.name(e.array)}, {self.expr(e.index)})"

    def expr_VBroadcast(self, e: VBroadcast, prec: int) -> str:
        return f"vbroadcast<{e.lanes}>({self.name(e.array)}, {self.expr(e.index)})"

    def expr_VSplat(self, e: VSplat, prec: int) -> str:
        return f"vsplat<{e.lanes}>({self.cast(e.value, 'float')})"

    def expr_VFma(self, e: VFma, prec: int) -> str:
        return f"vfma({self.expr(e.a)}, {self.expr(e.b)}, {self.expr(e.c)})"

    def expr_VJoin(self, e: VJoin, prec: int) -> str:
        return f"vjoin({self.expr(e.a)}, {self.expr(e.b)})"

    def expr_VAlign(self, e: VAlign, prec: int) -> str:
        lanes = _lanes(self.type_of(e.a))
        if not 1 <= e.shift < lanes:
            raise ValueError(f"valign shifts by 1 to {lanes - 1} lanes, not {e.shift}")
        return f"valign({self.expr(e.a)}, {self.expr(e.b)}, {int(e.shift)})"

    # -- statements -------------------------------------------------------------------------
    def empty_body(self) -> str:
        return ";"

    def stmt_Let(self, s: Let, depth: int, out: list[str]) -> None:
        if s.var in self.unused:  # a value nothing reads (pure: dropped, as C++ would warn)
            return
        t = self.types[s.var]
        value = self.cast(s.value, t) if t in _SCALAR_RANK else self.expr(s.value)
        scope = self.declare.get(s.var)
        decl = f"{t} " if scope is not None and scope.inline and \
            (scope.block, scope.index) == self.at else ""
        out.append(f"{self.INDENT * depth}{decl}{self.name(s.var)} = {value};")

    def stmt_Store(self, s: Store, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}{self.name(s.array)}[{self.expr(s.index)}] = "
                   f"{self.cast(s.value, self.elements.get(s.array, 'float'))};")

    def stmt_VStore(self, s: VStore, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}vstore({self.name(s.array)}, {self.expr(s.index)}, "
                   f"{self.expr(s.value)});")

    def stmt_Loop(self, s: Loop, depth: int, out: list[str]) -> None:
        pad = self.INDENT * depth
        v = self.name(s.var)
        if s.kind in ("parallel", "block"):
            raise ValueError(f"{s.kind} loop {s.var!r} below the top level of its kernel")
        if s.kind == "thread":  # the block's threads: checked by check_blocks
            out.append(f"{pad}{{")
            out.append(f"{pad}{self.INDENT}const int {v} = {self.offset(s.start, 'threadIdx.x')};")
            self.block(s.body, self.child(0), depth + 1, out)
            out.append(f"{pad}}}")
            return
        start = self.expr(s.start)
        stop = s.start + s.extent
        if isinstance(stop, Const):
            head = f"for (int {v} = {start}; {v} < {self.expr(stop, 5)}; ++{v})"
        else:  # Python evaluates a range's bounds once
            head = f"for (int {v} = {start}, {v}_stop = {self.expr(stop)}; {v} < {v}_stop; ++{v})"
        out.append(f"{pad}{head} {{")
        self.block(s.body, self.child(0), depth + 1, out)
        out.append(f"{pad}}}")

    def stmt_If(self, s: If, depth: int, out: list[str]) -> None:
        pad = self.INDENT * depth
        out.append(f"{pad}if ({self.expr(s.cond)}) {{")
        inner = self.child(0), self.child(1)
        self.block(s.body, inner[0], depth + 1, out)
        if s.orelse:
            out.append(f"{pad}}} else {{")
            self.block(s.orelse, inner[1], depth + 1, out)
        out.append(f"{pad}}}")

    def stmt_Comment(self, s: Comment, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}// {cuda_comment(s.text)}")

    def stmt_Shared(self, s: Shared, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}__shared__ {'double' if s.double else 'float'} "
                   f"{self.name(s.name)}[{int(s.size)}];")

    def stmt_Barrier(self, s: Barrier, depth: int, out: list[str]) -> None:
        out.append(f"{self.INDENT * depth}__syncthreads();")

    def offset(self, start: Expr, index: str) -> str:
        """``start + index`` (just ``index`` from 0)."""
        if isinstance(start, Const) and start.value == 0:
            return index
        return f"{self.expr(start, 6)} + {index}"

    def child(self, branch: int) -> Block:
        """The block of the statement being printed: its body (0) or else branch (1)."""
        block, index = self.at
        return block + ((index, branch),)

    def block(self, stmts: list[Stmt], block: Block, depth: int, out: list[str]) -> None:
        """The statements of ``block``, each local declared where :meth:`place_locals` put
        it."""
        for i, s in enumerate(stmts):
            self.declarations(block, i, depth, out)
            self.at = (block, i)
            self.body([s], depth, out)
        if not stmts:
            out.append(self.INDENT * depth + self.empty_body())

    def declarations(self, block: Block, index: int, depth: int, out: list[str]) -> None:
        """The declarations placed just before statement ``index`` of ``block``."""
        for var, scope in self.declare.items():
            if (scope.block, scope.index) == (block, index) and not scope.inline \
                    and var not in self.unused:
                out.append(f"{self.INDENT * depth}{self.types[var]} {self.name(var)};")

    # -- where locals are declared ----------------------------------------------------------
    def place_locals(self, k: Kernel) -> None:
        """Choose, for every ``Let`` target, the block it is declared in (the innermost that
        holds every statement naming it) and the place there (see the module docstring)."""
        seen: dict[str, list[tuple[Block, int, Stmt]]] = {}
        lets: set[str] = set()

        def visit(stmts: list[Stmt], block: Block, shadowed: frozenset[str]) -> None:
            for i, s in enumerate(stmts):
                for name in _names_of(s) - shadowed:
                    seen.setdefault(name, []).append((block, i, s))
                if isinstance(s, Let):
                    lets.add(s.var)
                if isinstance(s, Loop):  # its variable is a new one in its body
                    visit(s.body, block + ((i, 0),), shadowed | {s.var})
                elif isinstance(s, If):
                    visit(s.body, block + ((i, 0),), shadowed)
                    visit(s.orelse, block + ((i, 1),), shadowed)

        visit(k.body, (), frozenset())
        read: set[str] = set()
        for st, _ in _walk(k.body):
            names = _names_of(st)
            read |= names - {st.var} if isinstance(st, Let) and not _uses(st.value, st.var) \
                else names
        self.unused = lets - read
        self.declare = {}
        for var in sorted(lets):
            places = seen[var]
            common = places[0][0]
            for block, _, _ in places[1:]:
                n = 0
                while n < min(len(common), len(block)) and common[n] == block[n]:
                    n += 1
                common = common[:n]
            depth = len(common)
            first = min(places, key=lambda p: p[1] if len(p[0]) == depth else p[0][depth][0])
            f_block, f_index, f_stmt = first
            index = f_index if len(f_block) == depth else f_block[depth][0]
            inline = len(f_block) == depth and isinstance(f_stmt, Let) and f_stmt.var == var \
                and not _uses(f_stmt.value, var)
            self.declare[var] = _Scope(common, index, inline)

    # -- functions --------------------------------------------------------------------------
    def kernel(self, k: Kernel, with_comment: bool = True) -> str:
        """The ``extern "C" __global__`` function of kernel ``k``."""
        self.check_parallel_loops(k.name, k.body)
        check_blocks(k)
        self.infer_locals(k)
        self.place_locals(k)
        stored = {s.array for s, _ in _walk(k.body) if isinstance(s, (Store, VStore))}
        params = []
        for p in k.params:
            if p.kind in ("int", "float"):
                params.append(f"{p.kind} {self.name(p.name)}")
            else:
                const_ = "" if p.name in stored else "const "
                params.append(f"{const_}{ELEMENT[p.kind]}* {self.name(p.name)}")
        out: list[str] = []
        if k.comment and with_comment:
            out += [f"// {cuda_comment(line)}" for line in k.comment.split("\n")]
        out.append(f'extern "C" __global__ void {self.name(k.name)}({", ".join(params)}) {{')
        ind = self.INDENT
        for i, s in enumerate(k.body):
            self.declarations((), i, 1, out)
            self.at = ((), i)
            if isinstance(s, Loop) and s.kind in ("parallel", "block"):
                if any(not isinstance(r, (Let, Comment)) for r in k.body[i + 1:]):
                    raise ValueError(f"kernel {k.name}: statements after its {s.kind} loop "
                                     "(each thread would run them)")
                v = self.name(s.var)
                index = "blockIdx.x * blockDim.x + threadIdx.x" if s.kind == "parallel" \
                    else "blockIdx.x"
                out.append(f"{ind}const int {v} = {self.offset(s.start, index)};")
                out.append(f"{ind}if ({v} < {self.expr(s.start + s.extent, 5)}) {{")
                self.block(s.body, self.child(0), 2, out)
                out.append(f"{ind}}}")
            else:
                self.body([s], 1, out)
        out.append("}")
        return "\n".join(out) + "\n"


def check_blocks(k: Kernel) -> None:
    """Refuse a kernel whose threads would not cooperate as the IR says: a ``"block"`` loop
    only at the top level and not beside a parallel loop, holding exactly one ``"thread"``
    loop of literal extent (at most 1024 threads) directly in its body; ``Shared`` arrays
    only directly in a block loop's body; ``Barrier`` only inside the thread loop, never under
    an ``If`` (threads that disagree on the condition would wait forever)."""
    tops = [s for s in k.body if isinstance(s, Loop) and s.kind in ("parallel", "block")]
    if len(tops) > 1:
        raise ValueError(f"kernel {k.name}: more than one parallel or block loop")

    def visit(stmts: list[Stmt], where: str) -> None:
        for s in stmts:
            if isinstance(s, Shared) and where != "block":
                raise ValueError(f"kernel {k.name}: shared array {s.name!r} outside the body "
                                 "of a block loop")
            if isinstance(s, Barrier) and where != "thread":
                raise ValueError(f"kernel {k.name}: a barrier outside the thread loop or under "
                                 "a condition")
            if isinstance(s, Loop):
                if s.kind == "block" and where != "top":
                    raise ValueError(f"kernel {k.name}: block loop {s.var!r} is nested")
                if s.kind == "thread":
                    if where != "block":
                        raise ValueError(f"kernel {k.name}: thread loop {s.var!r} outside the "
                                         "body of a block loop")
                    if not (isinstance(s.extent, Const) and isinstance(s.extent.value, int)
                            and 1 <= s.extent.value <= 1024):
                        raise ValueError(f"kernel {k.name}: thread loop {s.var!r} needs a "
                                         "literal extent of 1 to 1024 threads")
                if s.kind == "block":
                    threads = [t for t in s.body if isinstance(t, Loop) and t.kind == "thread"]
                    if len(threads) != 1:
                        raise ValueError(f"kernel {k.name}: block loop {s.var!r} holds "
                                         f"{len(threads)} thread loops, not one")
                inner = {"block": "block", "thread": "thread"}.get(
                    s.kind, "thread" if where == "thread" else "other")
                visit(s.body, inner)
            elif isinstance(s, If):
                visit(s.body, "other")
                visit(s.orelse, "other")

    visit(k.body, "top")


def block_threads(k: Kernel) -> int | None:
    """The threads of a block of GPU kernel ``k`` (its thread loop's extent), or None for a
    kernel without a block loop."""
    for s in k.body:
        if isinstance(s, Loop) and s.kind == "block":
            return next(t.extent.value for t in s.body
                        if isinstance(t, Loop) and t.kind == "thread")
    return None


@cache
def _field_names(kind: type) -> tuple[str, ...]:
    """The fields of an expression class (``dataclasses.fields`` once a class: the walks below
    visit every node of every statement, millions for a deep network's kernels)."""
    return tuple(f.name for f in fields(kind))


def _uses(e: Expr, var: str) -> bool:
    if isinstance(e, Var):
        return e.name == var
    return any(isinstance(getattr(e, f), Expr) and _uses(getattr(e, f), var)
               for f in _field_names(type(e)))


def _expr_names(e: Expr, out: set[str]) -> None:
    if isinstance(e, Var):
        out.add(e.name)
    for f in _field_names(type(e)):
        value = getattr(e, f)
        if isinstance(value, Expr):
            _expr_names(value, out)
        elif isinstance(value, tuple):
            for a in value:
                if isinstance(a, Expr):
                    _expr_names(a, out)


def _names_of(s: Stmt) -> set[str]:
    """The variables statement ``s`` itself names (not those of its nested blocks)."""
    out: set[str] = set()
    if isinstance(s, Let):
        out.add(s.var)
        _expr_names(s.value, out)
    elif isinstance(s, (Store, VStore)):
        _expr_names(s.index, out)
        _expr_names(s.value, out)
    elif isinstance(s, Loop):
        _expr_names(s.start, out)
        _expr_names(s.extent, out)
    elif isinstance(s, If):
        _expr_names(s.cond, out)
    return out


def _walk(stmts: list[Stmt]):
    for s in stmts:
        yield s, 0
        if isinstance(s, Loop):
            yield from _walk(s.body)
        elif isinstance(s, If):
            yield from _walk(s.body)
            yield from _walk(s.orelse)


def kernel_type_errors(k: Kernel) -> str | None:
    """Why kernel ``k`` cannot be printed for CUDA, or None."""
    try:
        CudaPrinter().kernel(k)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def print_kernel(k: Kernel, with_comment: bool = True) -> str:
    """CUDA source of one kernel (its ``__global__`` function, without the prelude)."""
    return CudaPrinter().kernel(k, with_comment=with_comment)


def print_module(kernels: list[Kernel], header: str = "") -> str:
    """A complete CUDA translation unit: the prelude, then ``kernels``."""
    lines = ["// Generated by cnnc (cnnc.compiler.backends.cuda). "
             "Do not edit: regenerated on demand."]
    if header:
        lines.append(f"// {cuda_comment(header)}")
    lines += ["", PRELUDE, ""]
    for k in kernels:
        lines.append("")
        lines.append(print_kernel(k))
    return "\n".join(lines)
