"""The ONNX library's errors and notes, and the one place the optional `onnx` package is
imported for them."""

from __future__ import annotations

from typing import Any


class OnnxImportError(Exception):
    """An ONNX model cnnc cannot read: not ONNX, damaged, or using an unsupported operator."""


class OnnxImportNote(UserWarning):
    """Something the importer did to read a model that the user should know, in one line
    (e.g. an old opset brought up with onnx's version converter)."""


def require_onnx(what: str = "ONNX import and export") -> Any:
    """The `onnx` module, or a clean error naming the package to install."""
    try:
        import onnx
    except ImportError:
        raise OnnxImportError(f"{what} needs the onnx package: pip install onnx "
                              "(or pip install -e '.[test]')") from None
    return onnx
