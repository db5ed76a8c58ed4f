"""Code generation backends, one package per target: each prints the target-neutral kernel IR
(``compiler/kernels``) in its language, loads the result, and caches it. Numba (CPU) now."""
