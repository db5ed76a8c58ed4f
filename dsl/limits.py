"""The bounds every program is held to, so that any input is answered in bounded time and memory.

Each limit is far above what real networks need (the largest zoo networks use a few percent of
it) and is named in the located error a program gets when it goes past it.
"""

from __future__ import annotations

MAX_SOURCE_BYTES = 10 * 1024 * 1024  # a program file or text
MAX_NESTING = 100  # brackets, operators and chains inside each other, in the source
MAX_DEPTH = 100  # expressions and block calls being evaluated inside each other
MAX_REPEAT = 10_000  # one `* n` repetition
MAX_NODES = 50_000  # IR nodes (layers, parameters, inputs) one program may build
MAX_STEPS = 250_000  # evaluation steps (expressions, layer applications, block calls)
MAX_INT = 2**53  # integers in the program and in its arithmetic (exact in a float64, too)
MAX_DIM = 2**20  # one size attribute or dimension: channels, features, kernel, stride, ...
MAX_ELEMENTS = 2**30  # elements of one tensor (activation per sample, or parameter): 4 GiB f32
