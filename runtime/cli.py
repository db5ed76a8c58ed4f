"""The `cnnc` command line. Every user mistake ends in a located message and exit status 2,
never a Python traceback."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import paused_collection
from ..dsl.errors import DslError
from .cli_common import (  # noqa: F401 - CliError, load_array, parse_params: re-exported
    EXTRA,
    CliError,
    compile_source,
    convolutionalized,
    force_arg,
    fully_convolutional_args,
    input_size_of,
    load_array,
    load_graph,
    load_inputs,
    parse_params,
    report_outputs,
    write_files,
)


def user_errors() -> tuple[type[Exception], ...]:
    """The exception types that are the user's mistake: ``main`` prints them as one located
    message and returns 2 (the fuzz tests accept exactly these)."""
    from ..compiler.ops import AttrError, ShapeError
    from .images import ImageError
    from .reference import InputError
    from .weights import WeightsError

    errors: list[type[Exception]] = [DslError, CliError, InputError, WeightsError, ShapeError,
                                     AttrError, ImageError]
    try:
        from .onnx import OnnxImportError

        errors.append(OnnxImportError)
    except ImportError:
        pass
    return tuple(errors)


# -- commands ---------------------------------------------------------------------------------

def cmd_summary(args: argparse.Namespace) -> int:
    from ..compiler.ops import count_macs
    from ..compiler.passes import optimize
    from ..compiler.passes.convolutionalize import window_saving
    from .summary import (
        format_receptive_fields,
        format_summary,
        format_window_saving,
        summarize,
    )

    classifier = load_graph(args)
    size = input_size_of(args)
    graph = classifier if size is None else convolutionalized(classifier, size)
    print(format_summary(summarize(graph), all_rows=args.all))
    optimized = graph.copy()
    optimize(optimized, 2)
    before, after = count_macs(graph), count_macs(optimized)
    print(f"after the -O2 passes:           {after:,} multiply-accumulates per image "
          f"({before - after:,} saved)")
    if size is not None:
        print(format_window_saving(window_saving(classifier, graph)))
    if args.receptive_field:
        print("\n" + format_receptive_fields(graph, all_rows=args.all))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    print(load_graph(args).dump())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .images import ImageOptions
    from .reference import run_reference
    from .weights import init_params, load_weights

    if args.output and not args.output.endswith(".npz"):
        raise CliError(f"the output should be an .npz file, got {args.output}")
    if args.draw and not args.draw.lower().endswith(".png"):
        raise CliError(f"--draw writes a .png file, got {args.draw}")
    if args.check_numerics and args.reference:
        raise CliError("--check-numerics watches the compiled kernels; the float64 reference "
                       "has no kernels to watch (drop --reference)")
    if args.dask and (args.reference or args.check_numerics):
        raise CliError("--dask runs the compiled model on its workers: drop --reference and "
                       "--check-numerics")
    declared = load_graph(args)
    size = input_size_of(args)
    graph = declared if size is None else convolutionalized(declared, size)
    options = ImageOptions(resize=args.resize, mean=args.mean, std=args.std)

    def params() -> dict[str, np.ndarray]:
        return (load_weights(declared, args.weights) if args.weights else
                init_params(declared, args.seed))

    if args.dask:
        return run_over_dask(args, graph, params(), options)
    inputs = load_inputs(args.input, graph, options)
    t0 = time.perf_counter()
    if args.reference:
        outputs = run_reference(graph, inputs, params())
        engine = "float64 reference"
    else:
        from .model import NumericsError
        from .model import compile as compile_model

        source = compile_source(args, graph)
        if source is graph:
            model = compile_model(graph, args.target, weights=params(), lowering=args.lowering)
        else:  # the weights made or read by the compile: its caches then apply
            model = compile_model(source, args.target, weights=args.weights, seed=args.seed,
                                  lowering=args.lowering)
        try:
            outputs = model.run({k: np.asarray(v, np.float32) for k, v in inputs.items()},
                                check_numerics=args.check_numerics)
        except NumericsError as e:
            print(f"numerics: {e}", file=sys.stderr)
            return 1
        engine = f"compiled ({engine_name(args.target)})" + (
            ", numerics checked" if args.check_numerics else "")
    elapsed = time.perf_counter() - t0
    batch = next(iter(inputs.values())).shape[0] if inputs else 1
    print(f"{graph.name}: {engine}, batch {batch}, {elapsed * 1e3:.1f} ms")
    report_outputs(outputs)
    files = {}
    if args.output:
        values = {k: np.asarray(v) for k, v in outputs.items()}
        files[args.output] = lambda f: np.savez(f, **values)
    if args.draw:
        files.update(drawings(graph, inputs, outputs, args.draw))
    if files:
        write_files(files, force=args.force)
    if args.output:
        print(f"wrote outputs to {args.output}")
    if args.draw:
        print(f"drew the boxes in {', '.join(str(f) for f in files if f != args.output)}")
    return 0


def engine_name(target: str) -> str:
    """What runs the kernels of ``target``, as ``cnnc run`` reports it."""
    return {"cpu": "Numba CPU", "avx2": "Numba CPU, 8 lanes", "avx512": "Numba CPU, 16 lanes",
            "cuda": "CUDA GPU", "cuda-emu": "CUDA emulated on the CPU"}.get(target, target)


def run_over_dask(args: argparse.Namespace, graph, params, options) -> int:
    """``cnnc run --dask``: the images in chunks over a Dask cluster, outputs in input order."""
    from .dask_inference import run_on_dask
    from .images import image_files

    if any(Path(p).suffix.lower() in (".npy", ".npz") for p in args.input):
        raise CliError("--dask runs on image files or folders of them, not .npy / .npz inputs")
    files = image_files(args.input)
    t0 = time.perf_counter()
    outputs = run_on_dask(args.dask, graph, params, files, options, chunk=args.chunk,
                          lowering=args.lowering, target=args.target)
    elapsed = time.perf_counter() - t0
    print(f"{graph.name}: compiled ({engine_name(args.target)}) over Dask ({args.dask}), "
          f"{len(files)} images "
          f"in chunks of {args.chunk}, {elapsed:.1f} s")
    report_outputs(outputs)
    if args.output:
        write_files({args.output: lambda f: np.savez(f, **outputs)}, force=args.force)
        print(f"wrote outputs to {args.output}")
    return 0


def drawings(graph, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
             path: str) -> dict[str, bytes]:
    """``--draw``: each image with its detections (printed too), as PNG files by name."""
    from ..compiler.ops.detect import detections
    from .detection import DetectionError, draw_detections, find_detector, in_pixels, png_bytes

    try:
        detector = find_detector(graph)
    except DetectionError as e:
        raise CliError(f"--draw needs a detector: {e}") from None
    (images,) = [inputs[name] for name in graph.inputs]
    found = detections(outputs[detector.detections])
    stem = path[: -len(".png")]
    files = {}
    for n, (image, rows) in enumerate(zip(images, found)):
        boxes = in_pixels(rows, image.shape[1:])
        shown = ", ".join(f"class {int(r[5])} {r[4]:.2f} at ({r[0]:.1f}, {r[1]:.1f})-"
                          f"({r[2]:.1f}, {r[3]:.1f})" for r in boxes)
        print(f"image {n}: {len(boxes)} box{'' if len(boxes) == 1 else 'es'}"
              f"{': ' if shown else ''}{shown}")
        name = path if len(images) == 1 else f"{stem}-{n}.png"
        files[name] = png_bytes(draw_detections(image, boxes))
    return files


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {}


def build_parser() -> argparse.ArgumentParser:
    from ..compiler.passes.select_lowering import CHOICES as LOWERINGS
    from .images import channel_values

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
    fully_convolutional_args(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("dump", help="print the IR graph")
    model_arg(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("run", help="run a network on an input")
    model_arg(p)
    p.add_argument("--input", "--images", required=True, nargs="+", metavar="FILE",
                   help="one .npy (the single input) or .npz (by input name), or images "
                        "(.jpg, .png, ...; files or folders) run as one batch in the order "
                        "given, a folder's images sorted by name")
    p.add_argument("--dask", nargs="?", const="local", metavar="SCHEDULER|local:N",
                   help="run the images in chunks over Dask: a new local cluster of N "
                        "workers ('local': one per core) or the scheduler at an address "
                        "(tcp://host:8786; it must see the image files under the same paths); "
                        "needs the distributed extra")
    p.add_argument("--chunk", type=int, default=32, metavar="IMAGES",
                   help="with --dask: images per task (default 32)")
    p.add_argument("--resize", choices=("stretch", "crop"), default="stretch",
                   help="images to the input's height x width: stretch both axes (default) "
                        "or crop: scale the shorter side to fit, keep the centre")
    p.add_argument("--mean", type=channel_values, default=(0.0,), metavar="M[,M,...]",
                   help="per-channel mean subtracted after scaling pixels to [0, 1] "
                        "(default 0), e.g. 0.485,0.456,0.406")
    p.add_argument("--std", type=channel_values, default=(1.0,), metavar="S[,S,...]",
                   help="per-channel divisor applied after the mean (default 1), e.g. "
                        "0.229,0.224,0.225")
    p.add_argument("--weights", help=".npz of parameters keyed by layer name")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights")
    p.add_argument("--reference", action="store_true", help="use the float64 interpreter")
    p.add_argument("--lowering", default="auto", choices=LOWERINGS)
    p.add_argument("--target", choices=("cpu", "avx2", "avx512", "cuda", "cuda-emu"),
                   default="cpu",
                   help="the kernels: cpu (this machine's vector width: 16 lanes with AVX-512, "
                        "else 8; default), avx2 (8) or avx512 (16); cuda (an NVIDIA GPU through "
                        "CuPy) or cuda-emu (the same CUDA kernels run on the CPU, slowly)")
    p.add_argument("--check-numerics", action="store_true",
                   help="check every layer's output for NaN and Inf; report the first layer "
                        "that produces one (with its DSL line) and exit with status 1")
    p.add_argument("--output", "-o", metavar="FILE.npz",
                   help="also write the outputs to this .npz (keyed by output name)")
    p.add_argument("--draw", metavar="FILE.png",
                   help="a detector (an output made by nms): draw each image's boxes on it, "
                        "into FILE.png (several images: FILE-0.png, FILE-1.png, ...)")
    force_arg(p)
    fully_convolutional_args(p)
    p.set_defaults(func=cmd_run)

    for name, (func, help_text, configure) in EXTRA.items():
        p = sub.add_parser(name, help=help_text)
        configure(p, model_arg)
        p.set_defaults(func=func)
    return parser


#: The commands this module defines (``build_parser``).
BASIC_COMMANDS = ("summary", "dump", "run")
#: The module that adds each further command (``cli_common.EXTRA``), imported only when its
#: command runs: ``cnnc run`` needs none of them (0.06-0.13 s of imports), the help or an
#: unknown name all of them. The CLI's tests check the table against what they register.
COMMAND_MODULES = {"compile": "commands", "check": "commands", "demo": "commands",
                   "export": "onnx_commands", "import": "onnx_commands", "show": "show",
                   "train": "train_command", "bench": "bench_command",
                   "explain": "explain.command"}
EXTRA_MODULES = tuple(dict.fromkeys(COMMAND_MODULES.values()))


def _register_extras(command: str | None = None) -> None:
    """Import the modules that add commands: none for a basic command, the one that adds
    ``command``, or (None, or a name nobody adds) all of them."""
    import importlib

    if command in BASIC_COMMANDS:
        return
    names = (COMMAND_MODULES[command],) if command in COMMAND_MODULES else EXTRA_MODULES
    for name in names:
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user mistake prints a located message and returns 2, never a
    traceback. An unexpected exception is a bug in cnnc: it says so (set CNNC_TRACEBACK=1 to
    see the Python traceback) and returns 70."""
    given = list(sys.argv[1:] if argv is None else argv)
    with paused_collection():
        _register_extras(next((a for a in given if not a.startswith("-")), None))
    if argv is None:
        # the process's own command (its arguments from sys.argv): what its imports made
        # lives until it exits, so it is frozen for the collector (the collections of the
        # command and of the exit skip it); not when a program calls main() with arguments,
        # whose objects that later become garbage would stay
        gc.freeze()
    parser = build_parser()
    args = parser.parse_args(given)
    args.argv = given  # a command that starts others
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except user_errors() as e:
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
