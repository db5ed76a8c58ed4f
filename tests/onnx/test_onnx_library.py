"""The ONNX library (`cnnc.runtime.onnx`) stands on its own: importing and exporting models never
loads the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("onnx")


def test_import_and_export_load_no_command_line_module():
    """`cnnc.compile("model.onnx")` and the backend go through the library alone."""
    code = (
        "import sys\n"
        "from cnnc.dsl.builder import load_network\n"
        "from cnnc.runtime.onnx import export_onnx, import_onnx\n"
        "from cnnc.runtime.onnx.backend import CnncBackend\n"
        "graph = load_network('network n\\ninput x: 3 x 4 x 4\\nx -> conv(2, 3) -> relu -> "
        "output y\\n')\n"
        "model = export_onnx(graph)\n"
        "text, weights = import_onnx(model)\n"
        "CnncBackend.prepare(model)\n"
        "print(sorted(m for m in sys.modules if m.startswith('cnnc.runtime.cli')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
