"""Explicit 8- and 16-lane float32 vector types for Numba, built on llvmlite.

LLVM does not turn scalar register tiles into SIMD by itself (see PERF-NOTES.md: with
``fastmath`` it vectorizes the wrong dimension, producing gathers and spills). This module gives
generated kernels explicit vector value types, :data:`vec8` (``<8 x float>``, a ymm register)
and :data:`vec16` (``<16 x float>``, a zmm register with AVX-512; LLVM splits it into two ymm
halves on a CPU without AVX-512, so 16-lane code is correct everywhere, only slower). Locals of
these types are plain SSA values after ``mem2reg``, so they live in registers, and the
intrinsics below map one-to-one onto SIMD instructions:

========================  ==============================================  ==================
intrinsic                 meaning                                         instruction
========================  ==============================================  ==================
``vzero()``               8 lanes of 0.0 (``vzero16()``: 16)              ``vxorps``
``vload(a, i)``           ``a[i:i+8]``, unaligned (``vload16``: 16)       ``vmovups``
``vstore(a, i, v)``       ``a[i:i+n] = v`` for a vector of n lanes        ``vmovups``
``vbroadcast(a, i)``      8 lanes of ``a[i]`` (``vbroadcast16``: 16)      ``vbroadcastss``
``vsplat(x)``             8 lanes of the scalar ``x``                     ``vbroadcastss``
``vfma(a, b, c)``         ``a * b + c``, one rounding (``llvm.fma``)      ``vfmadd231ps``
``vadd/vmul/vmax/vmin``   lane-wise ``+``, ``*``, ``max``, ``min``        ``vaddps`` ...
``vdiv(a, b)``            lane-wise ``a / b`` (correctly rounded)         ``vdivps``
``vsqrt(v)``              lane-wise square root (correctly rounded)       ``vsqrtps``
``valign(a, b, k)``       lanes ``k .. k+7`` of ``a`` then ``b`` (literal   ``valignd``
                          ``k`` in 1..7, 1..15 with 16 lanes: a window
                          across two blocks)
``vspread(v, k, j)``      lane ``j`` of each run of ``k`` lanes, over      ``vpermps``
                          that run (literal ``k`` in 2, 4, and 8 with 16
                          lanes; ``j < k``)
``vexp(v)``               lane-wise ``e ** v`` (within 2 ulps)            ~12 FMAs, vscalefps
``vtanh(v)``              lane-wise ``tanh(v)`` (within 4 ulps)           vexp, vdivps, 7 FMAs
``vlow(v)/vhigh(v)``      lanes 0-7 / 8-15 of a 16-lane vector (a vec8)   ``vextractf32x8``
``vsum(v)``               horizontal sum of the lanes (a float32)         shuffles + adds
========================  ==============================================  ==================

``vfma``, ``vadd``, ``vmul``, ``vmax``, ``vmin``, ``vdiv``, ``vsqrt``, ``valign``, ``vstore`` and
``vsum`` take either width (both operands the same), and so does ``vspread``. ``a`` is a flat
(1-D, C-contiguous) float32 array and ``i`` an element offset. Loads and stores deliberately skip
bounds checks and Numba's negative-index wraparound: generated kernels compute their indices
from literal shapes, and the wraparound costs a compare and a cmov per access. Calling these
helpers outside ``@njit`` code is not supported.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ...target import host_has

__all__ = [
    "VecType", "vec8", "vec16", "LANES",
    "vzero", "vzero16", "vload", "vload16", "vstore", "vbroadcast", "vbroadcast16", "vsplat",
    "vfma", "vadd", "vmul", "vmax", "vmin", "vdiv", "vsqrt", "valign", "vspread", "vexp", "vtanh",
    "vlow", "vhigh", "vsum", "make_vexp", "make_vtanh", "TANH_SMALL",
]

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
#: The vector widths this module defines.
LANES = (8, 16)


class VecType(types.Type):
    """The Numba type of a ``<lanes x float>`` value."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        super().__init__(name=f"Vec{lanes}")


#: The instances used in signatures.
vec8 = VecType(8)
vec16 = VecType(16)
_BY_LANES = {8: vec8, 16: vec16}


def _llvm(lanes: int) -> ir.VectorType:
    return ir.VectorType(_F32, lanes)


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    """Represent a vector as a bare LLVM vector so it is kept in one SIMD register."""

    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _llvm(fe_type.lanes))


def _is_vec(*tys) -> bool:
    return all(isinstance(t, VecType) for t in tys) and len({t.lanes for t in tys}) == 1


def _is_f32_array(ty) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == types.float32


def _element_ptr(context, builder, arrty, arr, idxty, idx):
    """Pointer to element ``idx`` of a flat float32 array, with no checks at all."""
    ary = context.make_array(arrty)(context, builder, arr)
    idx = context.cast(builder, idx, idxty, types.intp)
    return builder.gep(ary.data, [idx], inbounds=True)


def _splat(builder, scalar, lanes: int):
    """Broadcast an LLVM float into every lane (insertelement + zero shuffle)."""
    vt = _llvm(lanes)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), mask)


def _shuffle(builder, v, lanes_in: int, picks: list[int]):
    mask = ir.Constant(ir.VectorType(_I32, len(picks)), picks)
    return builder.shuffle_vector(v, ir.Constant(_llvm(lanes_in), ir.Undefined), mask)


# Loads and constants: one intrinsic per width (the width is not in the arguments) ------------


def _zero(lanes: int):
    def impl(typingctx):
        def codegen(context, builder, signature, args):
            return ir.Constant(_llvm(lanes), [0.0] * lanes)

        return _BY_LANES[lanes](), codegen

    impl.__name__ = impl.__qualname__ = "vzero" if lanes == 8 else f"vzero{lanes}"
    return intrinsic(impl)


def _from_pointer(name: str, lanes: int, emit):
    """An intrinsic ``f(arr, i)`` of ``lanes`` lanes built by ``emit(builder, ptr)`` from the
    unchecked pointer to ``arr[i]`` (named ``name`` for 8 lanes, ``name<lanes>`` otherwise)."""
    def impl(typingctx, arr, i):
        if not (_is_f32_array(arr) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            return emit(builder, _element_ptr(context, builder, signature.args[0], args[0],
                                              signature.args[1], args[1]))

        return _BY_LANES[lanes](arr, i), codegen

    impl.__name__ = impl.__qualname__ = name if lanes == 8 else f"{name}{lanes}"
    return intrinsic(impl)


def _load(lanes: int):
    return _from_pointer("vload", lanes, lambda builder, ptr: builder.load(
        builder.bitcast(ptr, _llvm(lanes).as_pointer()), align=4))


def _broadcast(lanes: int):
    return _from_pointer("vbroadcast", lanes, lambda builder, ptr: _splat(
        builder, builder.load(ptr, align=4), lanes))


vzero, vzero16 = _zero(8), _zero(16)
vzero.__doc__ = "All-zero 8-lane vector."
vzero16.__doc__ = "All-zero 16-lane vector."
vload, vload16 = _load(8), _load(16)
vload.__doc__ = "Unaligned load of the 8 float32 ``arr[i:i+8]``."
vload16.__doc__ = "Unaligned load of the 16 float32 ``arr[i:i+16]``."
vbroadcast, vbroadcast16 = _broadcast(8), _broadcast(16)
vbroadcast.__doc__ = "All 8 lanes set to ``arr[i]`` (a load-and-broadcast)."
vbroadcast16.__doc__ = "All 16 lanes set to ``arr[i]`` (a load-and-broadcast)."


def _splat_scalar(lanes: int):
    def impl(typingctx, x):
        if not isinstance(x, (types.Float, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            scalar = context.cast(builder, args[0], signature.args[0], types.float32)
            return _splat(builder, scalar, lanes)

        return _BY_LANES[lanes](x), codegen

    impl.__name__ = impl.__qualname__ = "vsplat" if lanes == 8 else f"vsplat{lanes}"
    return intrinsic(impl)


vsplat, vsplat16 = _splat_scalar(8), _splat_scalar(16)
vsplat.__doc__ = "All 8 lanes set to the scalar ``x`` (converted to float32)."
vsplat16.__doc__ = "All 16 lanes set to the scalar ``x`` (converted to float32)."


# Width-generic operations --------------------------------------------------------------------


@intrinsic
def vstore(typingctx, arr, i, v):
    """Unaligned store of the vector ``v`` into ``arr[i:i+lanes]``."""
    if not (_is_f32_array(arr) and isinstance(i, types.Integer) and _is_vec(v)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature.args[0], args[0], signature.args[1],
                           args[1])
        builder.store(args[2], builder.bitcast(ptr, _llvm(v.lanes).as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, i, v), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """Fused multiply-add ``a * b + c`` through ``llvm.fma.v<lanes>f32``.

    The intrinsic is declared by name: llvmlite's ``declare_intrinsic`` cannot build the
    overloaded vector form of ``fma``.
    """
    if not _is_vec(a, b, c):
        return None

    def codegen(context, builder, signature, args):
        vt = _llvm(a.lanes)
        fnty = ir.FunctionType(vt, [vt, vt, vt])
        fma = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{a.lanes}f32")
        return builder.call(fma, list(args))

    return a(a, b, c), codegen


def _binary(name: str, emit):
    def impl(typingctx, a, b):
        if not _is_vec(a, b):
            return None

        def codegen(context, builder, signature, args):
            return emit(builder, args[0], args[1])

        return a(a, b), codegen

    impl.__name__ = impl.__qualname__ = name
    return intrinsic(impl)


vadd = _binary("vadd", lambda b, x, y: b.fadd(x, y))
vadd.__doc__ = "Lane-wise ``a + b``."
vmul = _binary("vmul", lambda b, x, y: b.fmul(x, y))
vmul.__doc__ = "Lane-wise ``a * b``."
# fcmp + select is exactly the semantics of vmaxps (returns b when either is NaN), so LLVM emits
# one instruction; llvm.maxnum would add NaN fix-up code.
vmax = _binary("vmax", lambda b, x, y: b.select(b.fcmp_ordered(">", x, y), x, y))
vmax.__doc__ = "Lane-wise ``max(a, b)`` (``vmaxps``; ReLU is ``vmax(v, vzero())``)."
vmin = _binary("vmin", lambda b, x, y: b.select(b.fcmp_ordered("<", x, y), x, y))
vmin.__doc__ = "Lane-wise ``min(a, b)`` (``vminps``; ReLU6 is ``vmin(vmax(v, 0), 6)``)."


vdiv = _binary("vdiv", lambda b, x, y: b.fdiv(x, y))
vdiv.__doc__ = "Lane-wise ``a / b``."


@intrinsic
def vsqrt(typingctx, v):
    """Lane-wise square root through ``llvm.sqrt.v<lanes>f32`` (correctly rounded)."""
    if not _is_vec(v):
        return None

    def codegen(context, builder, signature, args):
        vt = _llvm(v.lanes)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]),
                                            f"llvm.sqrt.v{v.lanes}f32")
        return builder.call(fn, [args[0]])

    return v(v), codegen


#: ``vexp``: e ** x = 2 ** n * e ** r with n = round(x / ln 2) and r = x - n ln 2 in two
#: steps (Cody-Waite: ``LN2_HI`` has few bits, so ``n * LN2_HI`` is exact), e ** r by the
#: degree-6 polynomial of Cephes' ``expf`` on |r| <= ln 2 / 2, times 2 ** n (``vscalefps`` with
#: AVX-512, else two exponent-field powers; results that underflow do so gradually). Inputs are
#: clamped to [-104, 89.5] first: below, e ** x rounds to 0; above, the product overflows to
#: inf; NaN stays NaN (through the arithmetic: the clamps keep it).
_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)


def _scale_by_scalef(builder, y, n, lanes: int):
    """``y * 2 ** n`` in one ``vscalefps`` (AVX-512F; 8 lanes also need AVX-512VL), exact
    unless the result is subnormal, where it rounds once: the same value as the two
    exponent-field products of ``_scale_by_exponent_bits``."""
    vt = _llvm(lanes)
    if lanes == 16:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt, ir.IntType(16), _I32]),
            "llvm.x86.avx512.mask.scalef.ps.512")
        # mask all ones: every lane; rounding 4: the current mode (MXCSR, round to nearest)
        return builder.call(fn, [y, n, y, ir.Constant(ir.IntType(16), -1), ir.Constant(_I32, 4)])
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vt, [vt, vt, vt, ir.IntType(8)]),
        "llvm.x86.avx512.mask.scalef.ps.256")
    return builder.call(fn, [y, n, y, ir.Constant(ir.IntType(8), -1)])


def _truncate_to_int(builder, n, lanes: int):
    """``n`` (integral floats) as int32 lanes. With AVX, ``vcvttps2dq`` itself (an x86
    intrinsic, per 8 lanes), whose NaN lanes are defined (the integer indefinite, 0x80000000);
    LLVM's ``fptosi`` makes a NaN lane poison, which only a select of the result can keep out
    (:func:`_exp_ir`)."""
    it = ir.VectorType(_I32, lanes)
    if not host_has("avx"):
        return builder.fptosi(n, it)
    v8, i8 = _llvm(8), ir.VectorType(_I32, 8)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i8, [v8]),
                                        "llvm.x86.avx.cvtt.ps2dq.256")
    if lanes == 8:
        return builder.call(fn, [n])
    halves = [builder.call(fn, [_shuffle(builder, n, lanes, list(range(h, h + 8)))])
              for h in (0, 8)]
    return builder.shuffle_vector(halves[0], halves[1],
                                  ir.Constant(ir.VectorType(_I32, 16), list(range(16))))


def _scale_by_exponent_bits(builder, y, n, lanes: int):
    """``y * 2 ** n`` as two products with powers of two built in the exponent field (each
    factor in the normal range, so a result that underflows does so gradually): 9
    instructions where ``vscalefps`` is one."""
    vt, it = _llvm(lanes), ir.VectorType(_I32, lanes)
    ni = _truncate_to_int(builder, n, lanes)
    half = builder.ashr(ni, ir.Constant(it, [1] * lanes))
    for part in (half, builder.sub(ni, half)):
        bits = builder.shl(builder.add(part, ir.Constant(it, [127] * lanes)),
                           ir.Constant(it, [23] * lanes))
        y = builder.fmul(y, builder.bitcast(bits, vt))
    return y


def _exp_ir(builder, x, lanes: int, use_scalef: bool):
    """The IR of ``vexp`` on ``x`` (the module's table; its constants above), the scaling by
    ``vscalefps`` or by exponent bits."""
    vt = _llvm(lanes)

    def c(value: float):
        return ir.Constant(vt, [value] * lanes)

    clamped = builder.select(builder.fcmp_ordered("<", x, c(-104.0)), c(-104.0), x)
    clamped = builder.select(builder.fcmp_ordered(">", clamped, c(89.5)), c(89.5), clamped)
    n = _llvm_call(builder, "floor", lanes, _llvm_call(builder, "fma", lanes, clamped,
                                                       c(_LOG2E), c(0.5)))
    r = _llvm_call(builder, "fma", lanes, builder.fneg(n), c(_LN2_HI), clamped)
    r = _llvm_call(builder, "fma", lanes, builder.fneg(n), c(_LN2_LO), r)
    p = c(_EXP_POLY[0])
    for coef in _EXP_POLY[1:]:
        p = _llvm_call(builder, "fma", lanes, p, r, c(coef))
    y = builder.fadd(_llvm_call(builder, "fma", lanes, p, builder.fmul(r, r), r), c(1.0))
    scale = _scale_by_scalef if use_scalef else _scale_by_exponent_bits
    y = scale(builder, y, n, lanes)
    if use_scalef or host_has("avx"):
        # a NaN x gives a NaN r and polynomial, and NaN times any scale is NaN: no select
        # (cmp and blend, a fifth of the AVX2 function's time); without AVX the fptosi of
        # a NaN n is poison, and only the select keeps it out of the result
        return y
    return builder.select(builder.fcmp_unordered("uno", x, x), x, y)


def _llvm_call(builder, name: str, lanes: int, *operands):
    """A call of the LLVM intrinsic ``llvm.<name>.v<lanes>f32`` on ``operands``."""
    vt = _llvm(lanes)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vt, [vt] * len(operands)), f"llvm.{name}.v{lanes}f32")
    return builder.call(fn, list(operands))


def _scalef_for(scalef: bool | None, lanes: int) -> bool:
    """Whether to scale by ``vscalefps``: as asked, or (None) where the CPU compiled for has
    it."""
    if scalef is not None:
        return scalef
    return host_has("avx512f", *(("avx512vl",) if lanes == 8 else ()))


def _lanewise(name: str, ir_of, scalef: bool | None):
    """The intrinsic ``name(v)`` of a vector ``v`` of either width whose IR ``ir_of(builder,
    v, lanes, use_scalef)`` builds, scaling by powers of two as ``scalef`` says
    (:func:`make_vexp`)."""

    def typer(typingctx, v):
        if not _is_vec(v):
            return None
        lanes = v.lanes

        def codegen(context, builder, signature, args):
            return ir_of(builder, args[0], lanes, _scalef_for(scalef, lanes))

        return v(v), codegen

    typer.__name__ = typer.__qualname__ = name  # Numba names the intrinsic after it
    return intrinsic(typer)


def make_vexp(scalef: bool | None):
    """``vexp`` (lane-wise ``e ** v``, float32, within 2 ulps of the correctly rounded value),
    its ``2 ** n`` scaling by ``vscalefps`` (``scalef=True``), by exponent bits (``False``), or
    whichever the CPU compiled for has (``None``: the generated kernels'). Both give the same
    bits; ``tests/codegen/test_simd.py`` compares them."""
    return _lanewise("vexp", _exp_ir, scalef)


vexp = make_vexp(None)

#: ``vtanh`` below :data:`TANH_SMALL`: the odd Taylor polynomial x + c3 x^3 + ... + c15 x^15
#: (c_{2k+1} = 2^{2k+2} (2^{2k+2} - 1) B_{2k+2} / (2k+2)!, B the Bernoulli numbers); the
#: series alternates, so its truncation is below the first term left out, 5.9e-4 x^17: at
#: 0.55 that is 2.2e-8, 0.75 ulp of tanh(0.55) = 0.50, and less below.
_TANH_TAYLOR = (-929569 / 638512875, 21844 / 6081075, -1382 / 155925, 62 / 2835, -17 / 315,
                2 / 15, -1 / 3)
TANH_SMALL = 0.55


def _tanh_ir(builder, x, lanes: int, use_scalef: bool):
    """The IR of ``vtanh``: below :data:`TANH_SMALL` in magnitude the Taylor polynomial (no
    cancellation: x^3 c3 is at most a tenth of x there), else ``(1 - e) / (1 + e)`` with ``e =
    vexp(-2 |x|)`` and the sign of x (e <= e^-1.1 = 0.33: 1 - e cancels at most a third, so
    vexp's 2 ulps give at most 1.5 here, and three roundings). NaN gives NaN (the second
    branch), +-inf +-1 (vexp's clamp gives e ~ 0), -0 -0."""
    vt = _llvm(lanes)

    def c(value: float):
        return ir.Constant(vt, [value] * lanes)

    a = _llvm_call(builder, "fabs", lanes, x)
    e = _exp_ir(builder, builder.fmul(a, c(-2.0)), lanes, use_scalef)
    large = builder.fdiv(builder.fsub(c(1.0), e), builder.fadd(c(1.0), e))
    x2 = builder.fmul(x, x)
    p = c(_TANH_TAYLOR[0])
    for coef in _TANH_TAYLOR[1:]:
        p = _llvm_call(builder, "fma", lanes, p, x2, c(coef))
    small = _llvm_call(builder, "fma", lanes, builder.fmul(x, x2), p, x)
    # the sign of x on both (the polynomial's own is x's, but -0 + 0 sums to +0)
    either = builder.select(builder.fcmp_ordered("<", a, c(TANH_SMALL)), small, large)
    return _llvm_call(builder, "copysign", lanes, either, x)


def make_vtanh(scalef: bool | None):
    """``vtanh`` (lane-wise ``tanh(v)``, float32, within 4 ulps), its ``vexp`` scaling as
    :func:`make_vexp`'s ``scalef`` says."""
    return _lanewise("vtanh", _tanh_ir, scalef)


vtanh = make_vtanh(None)


@intrinsic(prefer_literal=True)
def valign(typingctx, a, b, k):
    """Lanes ``k .. k+n-1`` of the ``2n`` lanes ``a`` then ``b`` (vectors of ``n`` = 8 or 16
    lanes; ``k`` a literal from 1 to ``n - 1``): the vector one block of channels further on
    by ``k``."""
    if not (isinstance(a, VecType) and b == a and isinstance(k, types.IntegerLiteral)):
        return None
    shift, lanes = k.literal_value, a.lanes
    if not 1 <= shift < lanes:
        return None

    def codegen(context, builder, signature, args):
        mask = ir.Constant(ir.VectorType(_I32, lanes), list(range(shift, shift + lanes)))
        return builder.shuffle_vector(args[0], args[1], mask)

    return a(a, b, k), codegen


@intrinsic(prefer_literal=True)
def vspread(typingctx, v, k, j):
    """Lane ``j`` of each run of ``k`` lanes, copied over that run (``k`` a literal 2 or 4 of
    an 8-lane vector, 2, 4 or 8 of a 16-lane one; ``j`` a literal below it): with the channels
    of ``k``-channel groups in a vector, the ``j``-th input channel of each lane's own group (a
    grouped convolution)."""
    if not (isinstance(v, VecType) and isinstance(k, types.IntegerLiteral)
            and isinstance(j, types.IntegerLiteral)):
        return None
    run, lane, lanes = k.literal_value, j.literal_value, v.lanes
    if run not in (2, 4, 8) or run >= lanes or not 0 <= lane < run:
        return None

    def codegen(context, builder, signature, args):
        return _shuffle(builder, args[0], lanes,
                        [(i // run) * run + lane for i in range(lanes)])

    return v(v, k, j), codegen


def _half(name: str, first: int):
    def impl(typingctx, v):
        if v != vec16:
            return None

        def codegen(context, builder, signature, args):
            return _shuffle(builder, args[0], 16, list(range(first, first + 8)))

        return vec8(vec16), codegen

    impl.__name__ = impl.__qualname__ = name
    return intrinsic(impl)


vlow = _half("vlow", 0)
vlow.__doc__ = "Lanes 0-7 of a 16-lane vector, as an 8-lane one."
vhigh = _half("vhigh", 8)
vhigh.__doc__ = "Lanes 8-15 of a 16-lane vector, as an 8-lane one."


@intrinsic
def vjoin(typingctx, a, b):
    """The 16-lane vector of ``a`` (lanes 0-7) then ``b`` (8-15): two 8-lane values that sit
    next to each other in memory (two pixels of a channel block), worked on as one."""
    if not (a == vec8 and b == vec8):
        return None

    def codegen(context, builder, signature, args):
        return builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(_I32, 16),
                                                                    list(range(16))))

    return vec16(a, b), codegen


@intrinsic
def vsum(typingctx, v):
    """Horizontal sum of the lanes, as a float32 scalar."""
    if not _is_vec(v):
        return None
    lanes = v.lanes

    def codegen(context, builder, signature, args):
        x = args[0]
        width = lanes
        while width > 1:  # pairwise tree: hi half + lo half
            width //= 2
            x = builder.fadd(x, _shuffle(builder, x, lanes,
                                         list(range(width, 2 * width)) + [0] * (lanes - width)))
        return builder.extract_element(x, ir.Constant(_I32, 0))

    return types.float32(v), codegen
