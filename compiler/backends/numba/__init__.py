"""The Numba CPU backend: the printer (kernel IR -> Python source for ``numba.njit``), the
8- and 16-lane SIMD extension the printed code calls (``simd``), the on-disk module cache
(``cache``), the parallel warm-up of a cold cache (``warm``), and the object the lowering
driver loads kernels through (``loader.NumbaBackend``).

Importing this package does not import Numba; the modules that need it do.
"""
