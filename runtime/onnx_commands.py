"""The `cnnc import` and `cnnc export` commands, over the ONNX library (`runtime/onnx/`)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.ir import Graph
from ..dsl.builder import load_network
from .cli_common import EXTRA, CliError, force_arg, load_graph, write_files
from .onnx import OnnxExportError, OnnxImportNote, export_onnx, import_onnx
from .onnx.export import OPSET
from .reference import run_reference
from .weights import init_params, load_weights, save_weights


def cmd_export(args: argparse.Namespace) -> int:
    graph = load_graph(args)
    if args.weights:
        params = load_weights(graph, args.weights)
    else:
        params = init_params(graph, args.seed)
    try:
        model = export_onnx(graph, params)
    except OnnxExportError as e:
        raise CliError(str(e)) from None
    write_files({args.output: model.SerializeToString()}, force=args.force)
    source = args.weights or f"initial weights (seed {args.seed})"
    print(f"wrote {args.output}: {graph.name}, {len(model.graph.node)} ONNX nodes, "
          f"{len(model.graph.initializer)} initializers, opset {OPSET}; weights from {source}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    src = Path(args.model)
    if not src.is_file():
        raise CliError(f"no such ONNX file: {args.model}")
    out = Path(args.output) if args.output else src.with_suffix(".cnn")
    if out.suffix != ".cnn":
        raise CliError(f"the output should be a .cnn file, got {out}")
    weights_path = Path(args.weights_out) if args.weights_out else out.with_suffix(".npz")
    if weights_path.suffix != ".npz":
        raise CliError(f"the weights file should be an .npz file, got {weights_path}")
    if src.resolve() in (out.resolve(), weights_path.resolve()):
        raise CliError(f"{src} is the model being imported; choose another output name")
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", OnnxImportNote)
        text, weights = import_onnx(src)
    for note in notes:
        if issubclass(note.category, OnnxImportNote):
            print(f"note: {note.message}")
        else:
            warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
    graph = load_network(text)
    write_files({out: text, weights_path: lambda f: save_weights(weights, f)},
                force=args.force)
    n_params = sum(int(np.prod(v.shape)) for v in weights.values())
    print(f"wrote {out} ({len(graph.compute_nodes())} layers) and {weights_path} "
          f"({len(weights)} tensors, {n_params:,} parameters)")
    print(f"run it: cnnc run {out} --weights {weights_path} --input x.npy")
    if args.check:
        _check_against_ort(src, graph, weights)
    return 0


def _check_against_ort(src: Path, graph: Graph, weights: dict[str, np.ndarray]) -> None:
    """Run ONNX Runtime and the float64 reference on one random input and compare."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CliError("--check needs onnxruntime: pip install onnxruntime") from None
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((2,) + graph.node(nid).type.shape).astype(np.float32)
             for name, nid in graph.inputs.items()}
    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    onnx_inputs = [i.name for i in session.get_inputs()]
    onnx_outputs = [o.name for o in session.get_outputs()]
    # Inputs and outputs keep their order; their names may have been made into identifiers.
    ort_out = session.run(None, dict(zip(onnx_inputs, feeds.values())))
    ref = run_reference(graph, feeds, weights)
    worst = 0.0
    for (name, value), theirs, onnx_name in zip(ref.items(), ort_out, onnx_outputs):
        scale = max(1.0, float(np.max(np.abs(value))))
        err = float(np.max(np.abs(value - theirs))) / scale
        worst = max(worst, err)
        print(f"  output {name} (ONNX {onnx_name!r}): max error {err:.2e} (relative to max |y|)")
    if worst > 1e-4:
        raise CliError(f"the imported network differs from ONNX Runtime by {worst:.2e}")
    print("check: matches ONNX Runtime")


def _configure_export(p: argparse.ArgumentParser, model_arg: Any) -> None:
    model_arg(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (the only "
                   "file written; an existing one is kept unless --force)")
    p.add_argument("--weights", help=".npz of parameters (default: initial weights)")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights")
    force_arg(p)


def _configure_import(p: argparse.ArgumentParser, model_arg: Any) -> None:
    p.add_argument("model", help="an .onnx file")
    p.add_argument("-o", "--output", metavar="FILE.cnn",
                   help="the DSL source to write (default: the model's name with .cnn)")
    p.add_argument("--weights-out", metavar="FILE.npz",
                   help="the weights to write (default: the .cnn file's name with .npz); "
                        "these two are the only files written, and existing ones are kept "
                        "unless --force")
    p.add_argument("--check", action="store_true",
                   help="compare with ONNX Runtime on a random input")
    force_arg(p)


EXTRA["export"] = (cmd_export, "write a network as an ONNX model", _configure_export)
EXTRA["import"] = (cmd_import, "turn an ONNX model into DSL source and weights",
                    _configure_import)
