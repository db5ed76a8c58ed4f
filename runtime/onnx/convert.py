"""ONNX model -> readable DSL source and a weights dictionary: the importer's driver.

The importer walks the ONNX nodes in order. Constant values are folded with NumPy (`fold.py`);
every other node goes to its op family's handler (`handlers/`), which turns it into cnnc layers
whose attributes are DSL values (`importer.py`). Finally the layers are printed as chains
(`writer.py`) and the source is built again to check it takes exactly the weights.
Anything without an exact cnnc equivalent is refused with the operator, node and opset.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...compiler.ir import Graph
from ...dsl.builder import load_network
from ...dsl.errors import DslError, LimitError
from ..weights import WeightsError, check_weights
from .errors import OnnxImportError, OnnxImportNote
from .fold import FOLDERS, constant_value
from .handlers import HANDLERS
from .importer import BATCH, Importer, node_attrs, node_place, refuse
from .load import load_model, upgrade
from .writer import Names, Printer


def import_onnx(path_or_model: str | Path | bytes | Any,
                name: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """(DSL source, weights by parameter name) for an ONNX model file, bytes or ModelProto.

    Raises OnnxImportError, naming the operator, node and opset, for anything it cannot map.
    """
    model, source = load_model(path_or_model)
    declared = {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx")
    model, notes = upgrade(model, source)
    for note in notes:
        warnings.warn(f"{source}: {note}", OnnxImportNote, stacklevel=2)
    imp = Importer(model, source, declared)
    read_nodes(imp)
    for err in imp.bad_inputs.values():  # (unused, or used only where any value would do)
        raise err
    for o in imp.graph_outputs:
        if imp.name_of(o) not in imp.shapes:
            raise OnnxImportError(f"output {o!r} is a constant, not computed from the inputs")
    if not imp.inputs:
        raise OnnxImportError("the model has no tensor inputs")
    printer = Printer(imp)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    title = (f"Imported from {source} by `cnnc import` (opset {imp.opset}"
             f"{', producer ' + producer if producer else ''}, {len(model.graph.node)} nodes)")
    network = Names().make(name or model.graph.name or Path(source).stem, "imported")
    title += "".join(f"; {note}" for note in notes)
    text = printer.render(title, network)
    weights = {f"{la.label}.{k}": v for la in printer.layers for k, v in la.weights.items()}
    _verify(text, weights)
    return text, weights


def _verify(text: str, weights: dict[str, np.ndarray]) -> None:
    """The generated source must build and take exactly these weights."""
    try:
        graph = load_network(text)
        check_weights(graph, weights, "imported weights")
    except LimitError as e:  # the model's sizes, not the importer's mistake
        raise OnnxImportError(f"the model is beyond cnnc's limits: {e.message}") from None
    except (DslError, WeightsError) as e:
        raise OnnxImportError(f"internal error: the generated network does not build:\n{e}\n"
                              f"--- generated source ---\n{text}") from None


def onnx_to_graph(path_or_model: str | Path | bytes | Any) -> tuple[Graph, dict[str, np.ndarray]]:
    """Import an ONNX model and build its IR graph: (graph, weights)."""
    text, weights = import_onnx(path_or_model)
    return load_network(text), weights


# -- the walk ---------------------------------------------------------------------------------

def read_nodes(imp: Importer) -> None:
    """Fold every node of the model or turn it into layers, in order."""
    for i, node in enumerate(imp.model.graph.node):
        if i in imp.skip:
            continue
        if not node.output or not node.output[0]:
            raise OnnxImportError(f"{node.op_type} node {node.name!r} has no output")
        # Malformed nodes are refused by the checks that read them (onnx's checker: inputs,
        # attributes and their types; the importer: constants' shapes, axes, lengths); any
        # other exception from a handler is a bug in cnnc, and surfaces as one.
        read_node(imp, i, node)


def read_node(imp: Importer, i: int, node: Any) -> None:
    """Fold one node or turn it into layers."""
    if node.domain not in ("", "ai.onnx"):
        raise refuse(node, imp.opset, f"operator domain {node.domain!r} is not "
                     "supported (only the default ONNX domain)")
    if node.op_type == "Constant":
        imp.consts[node.output[0]] = constant_value(node, imp.opset)
        return
    present = [imp.name_of(n) for n in node.input if n]
    if node.op_type == "Shape" and present and present[0] in imp.shapes:
        attrs = node_attrs(node)
        full = (BATCH, *imp.shapes[present[0]])
        imp.consts[node.output[0]] = np.array(
            full[attrs.get("start", 0):attrs.get("end", None)], np.int64)
        return
    if all(imp.is_const(n) for n in present) and node.op_type in FOLDERS:
        fold_node(imp, node)
        return
    handler = HANDLERS.get(node.op_type)
    if handler is None:
        raise unsupported(node, imp.opset)
    handler(imp, node, i)


def fold_node(imp: Importer, node: Any) -> None:
    """A node whose inputs are all constants, computed with NumPy."""
    ins = [imp.consts[imp.name_of(n)] if n else None for n in node.input]
    try:
        value = FOLDERS[node.op_type](imp, node, ins, node_attrs(node))
    except (ValueError, TypeError, IndexError, ArithmeticError) as e:
        # NumPy's errors for inconsistent shape arithmetic in the model's constants
        raise refuse(node, imp.opset, f"cannot fold its constant inputs: {e}") from None
    imp.consts[node.output[0]] = value if isinstance(value, np.ndarray) else \
        np.asarray(value)


def unsupported(node: Any, opset: int) -> OnnxImportError:
    """The error for an operator cnnc has no handler for, listing those it has."""
    return OnnxImportError(
        f"unsupported ONNX operator {node.op_type} ({node_place(node)}, opset {opset}); cnnc "
        f"imports {', '.join(sorted(HANDLERS))}, and folds constant shape arithmetic "
        f"({', '.join(sorted(FOLDERS))})")
