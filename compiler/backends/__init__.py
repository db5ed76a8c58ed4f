"""Code generation backends, one package per target: each prints the target-neutral kernel IR
(``compiler/kernels``) in its language, loads the result, and caches it: Numba (CPU) and CUDA
(a GPU through CuPy, or the CPU through its emulation)."""


class KernelRefused(ValueError):
    """A kernel the target's printer cannot print (the lowering names the node)."""
