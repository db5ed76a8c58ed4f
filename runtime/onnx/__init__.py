"""ONNX in and out, as a library (the `cnnc import` and `cnnc export` commands are in
`runtime/onnx_commands.py`).

- `export_onnx(graph, params, path)` writes a network as an ONNX model (opset 21, IR version
  10: `export.OPSET`, `export.IR_VERSION`), weights as initializers named like cnnc's
  parameters (`export.py`).
- `import_onnx(path_or_model)` turns an ONNX model into readable DSL source plus a weights
  dictionary keyed `<layer>.weight` etc. (`convert.py`, the driver: `load.py` reads and
  checks the model, `fold.py` folds constants, `handlers/` maps each op family, `writer.py`
  prints the DSL); `onnx_to_graph` also builds it.
- `backend.py`: cnnc behind ONNX's backend interface (importing it imports `onnx`).

`onnx` (and `onnxruntime`, for tests and `cnnc import --check`) are optional: they are imported
inside the functions, and a clear message says what to install when they are missing.
"""

from __future__ import annotations

from .convert import import_onnx, onnx_to_graph
from .errors import OnnxImportError, OnnxImportNote, require_onnx
from .export import OnnxExportError, export_onnx

__all__ = ["OnnxExportError", "OnnxImportError", "OnnxImportNote", "export_onnx", "import_onnx",
           "onnx_to_graph", "require_onnx"]
