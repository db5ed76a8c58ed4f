"""CPU code generation: the kernel IR, the Numba printer, the 8-lane vector extension, the
on-disk kernel cache, the kernel builders (element-wise, pooling, convolution, GEMM, layout)
and the lowering of an optimized graph to a plan (``lowering.lower_graph``).

Importing this package does not import Numba; the submodules that need it do.
"""
