"""An 8-lane float32 vector type for Numba, built on llvmlite.

LLVM does not turn scalar register tiles into SIMD by itself (see PERF-NOTES.md: with
``fastmath`` it vectorizes the wrong dimension, producing gathers and spills). This module gives
generated kernels an explicit vector value type, :data:`vec8`, whose LLVM representation is
``<8 x float>``. Locals of this type are plain SSA values after ``mem2reg``, so they live in ymm
registers, and the intrinsics below map one-to-one onto AVX2 instructions:

=====================  ==============================================  =====================
intrinsic              meaning                                         typical instruction
=====================  ==============================================  =====================
``vzero()``            all lanes 0.0                                   ``vxorps``
``vload(a, i)``        ``a[i:i+8]`` (unaligned)                        ``vmovups``
``vstore(a, i, v)``    ``a[i:i+8] = v`` (unaligned)                    ``vmovups``
``vbroadcast(a, i)``   all lanes ``a[i]``                              ``vbroadcastss``
``vsplat(x)``          all lanes the scalar ``x``                      ``vbroadcastss``
``vfma(a, b, c)``      ``a * b + c`` (one rounding, ``llvm.fma``)      ``vfmadd231ps``
``vadd/vmul/vmax/vmin`` lane-wise ``+``, ``*``, ``max``, ``min``       ``vaddps`` ...
``vsum(v)``            horizontal sum of the 8 lanes (a float32)       shuffles + adds
=====================  ==============================================  =====================

``a`` is a flat (1-D, C-contiguous) float32 array and ``i`` an element offset. Loads and stores
deliberately skip bounds checks and Numba's negative-index wraparound: generated kernels compute
their indices from literal shapes, and the wraparound costs a compare and a cmov per access.
Calling these helpers outside ``@njit`` code is not supported.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = [
    "Vec8Type",
    "vec8",
    "vzero",
    "vload",
    "vstore",
    "vbroadcast",
    "vsplat",
    "vfma",
    "vadd",
    "vmul",
    "vmax",
    "vmin",
    "vsum",
]

_F32 = ir.FloatType()
_V8 = ir.VectorType(_F32, 8)
_I32 = ir.IntType(32)


class Vec8Type(types.Type):
    """The Numba type of an ``<8 x float>`` value."""

    def __init__(self) -> None:
        super().__init__(name="Vec8")


#: The single instance of :class:`Vec8Type` used in signatures.
vec8 = Vec8Type()


@register_model(Vec8Type)
class _Vec8Model(models.PrimitiveModel):
    """Represent a Vec8 as a bare LLVM vector so it is kept in one SIMD register."""

    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, _V8)


def _is_f32_array(ty) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == types.float32


def _element_ptr(context, builder, arrty, arr, idxty, idx):
    """Pointer to element ``idx`` of a flat float32 array, with no checks at all."""
    ary = context.make_array(arrty)(context, builder, arr)
    idx = context.cast(builder, idx, idxty, types.intp)
    return builder.gep(ary.data, [idx], inbounds=True)


def _splat(builder, scalar):
    """Broadcast an LLVM float into all 8 lanes (insertelement + zero shuffle)."""
    v = builder.insert_element(ir.Constant(_V8, ir.Undefined), scalar, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
    return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined), mask)


@intrinsic
def vzero(typingctx):
    """All-zero vector."""
    sig = vec8()

    def codegen(context, builder, signature, args):
        return ir.Constant(_V8, [0.0] * 8)

    return sig, codegen


@intrinsic
def vload(typingctx, arr, i):
    """Unaligned load of the 8 float32 ``arr[i:i+8]``."""
    if not (_is_f32_array(arr) and isinstance(i, types.Integer)):
        return None
    sig = vec8(arr, i)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load(builder.bitcast(ptr, _V8.as_pointer()), align=4)

    return sig, codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """Unaligned store of ``v`` into ``arr[i:i+8]``."""
    if not (_is_f32_array(arr) and isinstance(i, types.Integer) and v == vec8):
        return None
    sig = types.none(arr, i, v)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        builder.store(args[2], builder.bitcast(ptr, _V8.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vbroadcast(typingctx, arr, i):
    """All 8 lanes set to ``arr[i]`` (a load-and-broadcast: ``vbroadcastss mem, ymm``)."""
    if not (_is_f32_array(arr) and isinstance(i, types.Integer)):
        return None
    sig = vec8(arr, i)

    def codegen(context, builder, signature, args):
        ptr = _element_ptr(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return _splat(builder, builder.load(ptr, align=4))

    return sig, codegen


@intrinsic
def vsplat(typingctx, x):
    """All 8 lanes set to the scalar ``x`` (converted to float32)."""
    if not isinstance(x, (types.Float, types.Integer)):
        return None
    sig = vec8(x)

    def codegen(context, builder, signature, args):
        scalar = context.cast(builder, args[0], signature.args[0], types.float32)
        return _splat(builder, scalar)

    return sig, codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """Fused multiply-add ``a * b + c`` through ``llvm.fma.v8f32``.

    The intrinsic is declared by name: llvmlite's ``declare_intrinsic`` cannot build the
    overloaded vector form of ``fma``.
    """
    if not (a == vec8 and b == vec8 and c == vec8):
        return None
    sig = vec8(vec8, vec8, vec8)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_V8, [_V8, _V8, _V8])
        fma = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v8f32")
        return builder.call(fma, list(args))

    return sig, codegen


def _binary(name: str, emit):
    def impl(typingctx, a, b):
        if not (a == vec8 and b == vec8):
            return None

        def codegen(context, builder, signature, args):
            return emit(builder, args[0], args[1])

        return vec8(vec8, vec8), codegen

    impl.__name__ = name
    impl.__qualname__ = name
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


@intrinsic
def vsum(typingctx, v):
    """Horizontal sum of the 8 lanes, as a float32 scalar."""
    if v != vec8:
        return None
    sig = types.float32(vec8)

    def codegen(context, builder, signature, args):
        x = args[0]
        width = 8
        while width > 1:  # pairwise tree: hi half + lo half
            width //= 2
            idx = list(range(width, 2 * width)) + [0] * (8 - width)
            hi = builder.shuffle_vector(x, ir.Constant(_V8, ir.Undefined),
                                        ir.Constant(ir.VectorType(_I32, 8), idx))
            x = builder.fadd(x, hi)
        return builder.extract_element(x, ir.Constant(_I32, 0))

    return sig, codegen
