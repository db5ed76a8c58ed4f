"""Handlers by op family: each turns one ONNX operator into cnnc layers (or refuses it, naming
the operator, node and opset). `HANDLERS` is every family's table in one."""

from __future__ import annotations

from ..importer import Handler
from . import activation, arithmetic, conv, dense, detect, norm, pool, reduce, resize, shape, tensor

FAMILIES = (activation, arithmetic, conv, dense, detect, norm, pool, reduce, resize, shape, tensor)

HANDLERS: dict[str, Handler] = {op: handler for family in FAMILIES
                                for op, handler in family.HANDLERS.items()}
