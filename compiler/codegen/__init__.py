"""CPU code generation: kernel IR, the Numba printer, the 8-lane vector extension, the on-disk
kernel cache and the convolution kernel builders.

The entry point for the rest of the compiler is :func:`compile_conv`::

    kernel = compile_conv(attrs, (C, H, W), lowering="direct", comment="model.cnn:12 conv1")
    y = kernel(x, w, b)  # NCHW float32 in and out

Submodules: ``vec8`` (Numba extension), ``kernel_ir``, ``numba_printer``, ``cache``, ``conv``.
Importing this package does not import Numba; the submodules that need it do.
"""

from __future__ import annotations

__all__ = ["compile_conv", "ConvKernel", "ConvGeometry", "sanitize_comment", "load_module"]


def __getattr__(name: str):
    # Lazy: `import cnnc.compiler.codegen` stays cheap (Numba costs ~0.7 s to import).
    if name in ("compile_conv", "ConvKernel", "ConvGeometry"):
        from . import conv

        return getattr(conv, name)
    if name == "sanitize_comment":
        from .numba_printer import sanitize_comment

        return sanitize_comment
    if name == "load_module":
        from .cache import load_module

        return load_module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
