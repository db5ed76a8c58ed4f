"""The `cnnc` command line. Every user mistake ends in a located message and exit status 2,
never a Python traceback."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..compiler.ir import Graph
from ..dsl.errors import DslError


class CliError(Exception):
    """A usage problem: bad file, bad option value."""


def _user_errors() -> tuple[type[Exception], ...]:
    from ..compiler.ops import AttrError, ShapeError
    from .reference import InputError
    from .weights import WeightsError

    errors: list[type[Exception]] = [DslError, CliError, InputError, WeightsError, ShapeError,
                                     AttrError]
    try:
        from ..runtime.onnx_io import OnnxImportError

        errors.append(OnnxImportError)
    except ImportError:
        pass
    return tuple(errors)


def parse_params(items: Sequence[str] | None) -> dict[str, object]:
    """`--param classes=10` -> {"classes": 10}."""
    out: dict[str, object] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                raise CliError(f"--param {key}: {value!r} is not a number") from None
    return out


def load_graph(args: argparse.Namespace) -> Graph:
    from ..dsl.builder import load_network

    return load_network(args.model, **parse_params(getattr(args, "param", None)))


def load_array(path: str, graph: Graph) -> dict[str, np.ndarray]:
    """Inputs from .npy (the single input), .npz (by input name) or an image file."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"no such input file: {path}")
    names = list(graph.inputs)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    if p.suffix == ".npy":
        try:
            x = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise CliError(f"cannot read {path}: {e}") from None
        if len(names) != 1:
            raise CliError(f"the network has {len(names)} inputs ({', '.join(names)}); give "
                           "them as an .npz keyed by input name")
        want = graph.node(graph.inputs[names[0]]).type.shape
        if x.ndim == len(want):
            x = x[None]
        return {names[0]: x}
    from .images import load_image

    if len(names) != 1:
        raise CliError("an image can feed only a network with one input")
    return {names[0]: load_image(p, graph.node(graph.inputs[names[0]]).type.shape)}


# -- commands ---------------------------------------------------------------------------------

def cmd_summary(args: argparse.Namespace) -> int:
    from .summary import format_receptive_fields, format_summary, summarize

    graph = load_graph(args)
    print(format_summary(summarize(graph), all_rows=args.all))
    if args.receptive_field:
        print("\n" + format_receptive_fields(graph, all_rows=args.all))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    print(load_graph(args).dump())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .reference import run_reference
    from .weights import init_params, load_weights

    graph = load_graph(args)
    inputs = load_array(args.input, graph)
    params = load_weights(graph, args.weights) if args.weights else init_params(graph, args.seed)
    t0 = time.perf_counter()
    if args.reference:
        outputs = run_reference(graph, inputs, params)
        engine = "float64 reference"
    else:
        from .model import compile as compile_model

        model = compile_model(graph, weights=params, lowering=args.lowering)
        outputs = model.run({k: np.asarray(v, np.float32) for k, v in inputs.items()})
        engine = "compiled (Numba CPU)"
    elapsed = time.perf_counter() - t0
    print(f"{graph.name}: {engine}, {elapsed * 1e3:.1f} ms")
    report_outputs(outputs)
    if args.output:
        np.savez(args.output, **{k: np.asarray(v) for k, v in outputs.items()})
        print(f"saved outputs to {args.output}")
    return 0


def report_outputs(outputs: dict[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        print(f"output {name}: shape {'x'.join(map(str, value.shape))}, "
              f"min {value.min():.6g}, max {value.max():.6g}, mean {value.mean():.6g}")
        if value.ndim == 2 and value.shape[1] >= 5:
            for b, row in enumerate(value[:4]):
                top = np.argsort(-row)[:5]
                items = ", ".join(f"{int(i)}: {row[i]:.4g}" for i in top)
                print(f"  image {b} top-5 (class: score): {items}")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnc", description="cnnc: a compiler for convolutional neural networks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def model_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="a .cnn file or a zoo name (e.g. resnet18)")
        p.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="override a network parameter, e.g. --param classes=10")

    p = sub.add_parser("summary", help="layer table: shapes, parameters, MACs, activations")
    model_arg(p)
    p.add_argument("--all", action="store_true",
                   help="also list layers without parameters or new activations")
    p.add_argument("--receptive-field", action="store_true",
                   help="also print each layer's receptive field (size, jump, start)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("dump", help="print the IR graph")
    model_arg(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("run", help="run a network on an input")
    model_arg(p)
    p.add_argument("--input", required=True, help=".npy, .npz or an image (.png/.jpg)")
    p.add_argument("--weights", help=".npz of parameters keyed by layer name")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights")
    p.add_argument("--reference", action="store_true", help="use the float64 interpreter")
    p.add_argument("--lowering", default="auto", choices=("auto", "direct", "im2col"))
    p.add_argument("--output", "-o", help="save outputs to this .npz")
    p.set_defaults(func=cmd_run)

    for name, (func, help_text, configure) in _EXTRA.items():
        p = sub.add_parser(name, help=help_text)
        configure(p, model_arg)
        p.set_defaults(func=func)
    return parser


# Commands contributed by other modules: name -> (function, help, configure(parser, model_arg)).
_EXTRA: dict[str, tuple[Callable, str, Callable]] = {}


EXTRA_MODULES = ("commands", "onnx_io")


def _register_extras() -> None:
    """Import the modules that add commands (compile, check, demo, import, export)."""
    import importlib

    for name in EXTRA_MODULES:
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user mistake prints a located message and returns 2, never a
    traceback. An unexpected exception is a bug in cnnc: it says so (set CNNC_TRACEBACK=1 to
    see the Python traceback) and returns 70."""
    _register_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except _user_errors() as e:
        print(e.render() if isinstance(e, DslError) else f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("CNNC_TRACEBACK"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\n  this is a bug in cnnc, not in your "
              "input; run again with CNNC_TRACEBACK=1 to see where it happened",
              file=sys.stderr)
        return 70

if __name__ == "__main__":
    sys.exit(main())
