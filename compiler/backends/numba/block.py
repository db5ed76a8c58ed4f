"""The argument block: how a compiled task function reads its kernel's arguments.

Every generated CPU kernel is compiled as one C-callable function of two arguments,
``kernel(task, block)``: ``task`` is the index of the piece of work to do (one output row, one
channel block ...; 0 for a kernel that is one piece) and ``block`` points to the kernel's
arguments laid out as 64-bit words, in the order of its parameters:

=============  =======  ==============================================================
parameter      words    meaning
=============  =======  ==============================================================
``array``      2        address of the first float32, number of floats
``int_array``  2        address of the first int64, number of ints
``int``        1        the integer
``float``      1        the float32's bits in the low 32 bits
=============  =======  ==============================================================

One signature for every kernel is what lets a single parallel loop, compiled once
(:mod:`tasks`), call any of them through its address, and what keeps Numba's parallel
machinery out of each kernel's own compilation (it cost 1-2 s per kernel). The helpers below
are what the generated code calls to turn words back into arrays and scalars; their source is
part of the kernel cache's key (``cache._versions``), like :mod:`simd`'s.
"""

from __future__ import annotations

from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

__all__ = ["BLOCK", "f32_array", "i64_array", "f32_scalar", "WORDS"]

#: Words of the block each parameter kind takes.
WORDS = {"array": 2, "int_array": 2, "int": 1, "float": 1}

#: The block's Numba type: a pointer to its 64-bit words.
BLOCK = types.CPointer(types.int64)


def _pointer_intrinsic(element: types.Type):
    @intrinsic
    def pointer(typingctx, address):
        """A typed pointer from an address held in an int64 word."""
        sig = types.CPointer(element)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    return pointer


_f32_pointer = _pointer_intrinsic(types.float32)
_i64_pointer = _pointer_intrinsic(types.int64)


@intrinsic
def _f32_from_bits(typingctx, word):
    """The float32 whose bits are the low 32 bits of ``word``."""
    sig = types.float32(types.int64)

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return sig, codegen


@njit(cache=True)
def f32_array(block, i):
    """The float32 array of words ``i`` and ``i + 1`` of ``block``."""
    return carray(_f32_pointer(block[i]), block[i + 1])


@njit(cache=True)
def i64_array(block, i):
    """The int64 array of words ``i`` and ``i + 1`` of ``block``."""
    return carray(_i64_pointer(block[i]), block[i + 1])


@njit(cache=True)
def f32_scalar(block, i):
    """The float32 of word ``i`` of ``block``."""
    return _f32_from_bits(block[i])
