"""CLI commands beyond the basics: compile, check and demo."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from ..compiler.types import LAYOUT_CHOICES
from .cli_common import (
    EXTRA,
    CliError,
    compile_source,
    convolutionalized,
    force_arg,
    fully_convolutional_args,
    input_size_of,
    load_graph,
    parse_params,
    report_outputs,
    write_files,
)


def parse_lowering(items: list[str] | None) -> str | dict[str, str]:
    """``--lowering direct`` (every convolution) and/or ``--lowering layer=im2col``."""
    from ..compiler.passes.select_lowering import CHOICES as LOWERINGS

    default, per_layer = "auto", {}
    for item in items or ():
        name, sep, choice = item.rpartition("=")
        if choice not in LOWERINGS:
            raise CliError(f"--lowering takes one of {', '.join(LOWERINGS)} or LAYER=CHOICE, "
                           f"got {item!r}")
        if sep:
            per_layer[name] = choice
        else:
            default = choice
    if not per_layer:
        return default
    if default != "auto":
        raise CliError("give either one --lowering for every layer or LAYER=CHOICE entries, "
                       "not both")
    return per_layer


def _lowering_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lowering", action="append", metavar="CHOICE|LAYER=CHOICE",
                   help="convolution lowering: auto (default), direct, im2col or winograd; repeat "
                        "LAYER=CHOICE to choose per layer")


# -- compile ----------------------------------------------------------------------------------

def cmd_compile(args: argparse.Namespace) -> int:
    from ..compiler.passes import format_explain
    from .model import compile as compile_model

    graph = load_graph(args)
    size = input_size_of(args)
    if size is not None:
        graph = convolutionalized(graph, size)
    if args.target == "cuda" and (args.emit or args.resources):  # printed without a GPU
        return _emit_cuda(graph, args)
    if args.resources:
        raise CliError("--resources reports the CUDA kernels' registers and shared memory: "
                       "use it with --target cuda")
    t0 = time.perf_counter()
    model = compile_model(compile_source(args, graph), lowering=parse_lowering(args.lowering),
                          target=args.target, cache_dir=args.cache_dir, opt_level=args.opt_level,
                          layout=args.layout,
                          dump_ir=args.dump_ir, force=args.force, autotune=args.autotune)
    elapsed = time.perf_counter() - t0
    if args.stats:  # exactly the stats lines first (scripts parse them), then what else was asked
        for key, value in model.stats().items():
            print(f"{key}: {value}")
    else:
        steps = [s for s in model.steps if not s.view]
        print(f"{graph.name}: compiled at -O{args.opt_level}, {len(steps)} steps, "
              f"{model.plan.kernel_calls} kernels per call, in {elapsed:.2f} s "
              f"(kernels cached under {model.plan.cache_path})")
        print(f"buffers at batch 1: {model.bytes_needed(1) / 2**20:.1f} MiB "
              f"({len(model.plan.buffers.slot_sizes)} activation slots after reuse)")
    if args.explain:
        print(format_explain(model.passes))
    if args.dump_ir:
        print(f"wrote the IR after each pass to {args.dump_ir}")
    if args.emit:
        from pathlib import Path

        files = write_files({Path(args.emit) / name: text
                             for name, text in model.sources().items()},
                            force=args.force, create_folders=True)
        print(f"wrote {len(files)} generated source files to {args.emit}: "
              f"{', '.join(f.name for f in files)}")
    return 0


def _emit_cuda(graph, args: argparse.Namespace) -> int:
    """``--target cuda --emit DIR``: the model's CUDA module, written without a GPU;
    ``--resources``: each kernel's registers, shared memory and spills, as nvcc reports them
    for ``--arch``."""
    from pathlib import Path

    from ..compiler.backends.cuda.nvrtc import (
        CudaCompileError,
        nvcc_compile,
        nvcc_path,
        resource_usage,
    )
    from .model import cuda_sources

    if args.resources and nvcc_path() is None:
        raise CliError("--resources asks nvcc (the CUDA toolkit) for each kernel's registers "
                       "and shared memory, and nvcc is not on PATH (nor in $CUDA_HOME/bin)")
    t0 = time.perf_counter()
    sources = cuda_sources(graph, parse_lowering(args.lowering), opt_level=args.opt_level,
                           layout=args.layout)
    kernels = sum(text.count("__global__ void") for text in sources.values())
    wrote = ""
    if args.emit:
        files = write_files({Path(args.emit) / name: text for name, text in sources.items()},
                            force=args.force, create_folders=True)
        wrote = f"; wrote {', '.join(f.name for f in files)} to {args.emit}"
    print(f"{graph.name}: printed {kernels} CUDA kernels at -O{args.opt_level} in "
          f"{time.perf_counter() - t0:.2f} s{wrote}")
    if args.resources:
        rows = []
        for name, text in sources.items():
            try:
                rows += resource_usage(nvcc_compile(text, args.arch, name, resources=True))
            except CudaCompileError as e:
                raise CliError(str(e)) from None
        head = ("kernel", "registers", "shared bytes", "stack bytes", "spill stores",
                "spill loads")
        table = [head] + [(r.kernel, str(r.registers), str(r.shared_bytes), str(r.stack_bytes),
                           str(r.spill_stores), str(r.spill_loads)) for r in rows]
        widths = [max(len(t[i]) for t in table) for i in range(len(head))]
        print(f"resources for {args.arch} (nvcc):")
        for t in table:
            print("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(t, widths))))
    return 0


def _opt_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-O", dest="opt_level", type=int, choices=(0, 1, 2), default=2,
                   help="optimization level: 0 none, 1 folding and fusion, 2 everything "
                        "(default)")
    p.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                   help="activation layout at -O2: auto (channel-blocked where the rules "
                        "allow, 8 or 16 channels a block by a cost model per region; default), "
                        "NCHW (every activation plain), NCHW8c, NCHW16c or NHWC (every "
                        "blocked region in that storage where its kernels have it, else "
                        "NCHW8c)")
    p.add_argument("--target", choices=("cpu", "avx2", "avx512", "cuda", "cuda-emu"),
                   default="cpu",
                   help="the kernels: cpu (Numba, this machine's vector width: 16 lanes with "
                        "AVX-512, else 8; default), avx2 (8) or avx512 (16); cuda (CUDA C for "
                        "an NVIDIA GPU: with --emit, printed without one) or cuda-emu (the "
                        "same CUDA source run on the CPU, for checking it)")


def _configure_compile(p: argparse.ArgumentParser, model_arg) -> None:
    model_arg(p)
    _lowering_arg(p)
    _opt_arg(p)
    p.add_argument("--emit", metavar="DIR", help="write the generated kernel sources here "
                   "(created if missing; existing files are kept unless --force)")
    p.add_argument("--resources", action="store_true",
                   help="with --target cuda: print each kernel's registers, shared memory and "
                        "spills as nvcc compiles them for --arch (needs nvcc, not a GPU)")
    p.add_argument("--arch", default="sm_80", choices=("sm_70", "sm_75", "sm_80", "sm_86",
                                                       "sm_89", "sm_90"),
                   help="the GPU architecture of --resources (default sm_80)")
    p.add_argument("--cache-dir", help="kernel cache (default $CNNC_CACHE_DIR or ~/.cache/cnnc)")
    force_arg(p)
    p.add_argument("--explain", action="store_true",
                   help="per pass, what it changed (with DSL locations), then totals")
    p.add_argument("--stats", action="store_true",
                   help="kernels and layout transforms per call, arena bytes and "
                        "multiply-accumulates per image, one per line")
    p.add_argument("--dump-ir", metavar="DIR",
                   help="write the IR after each pass here (created if missing; a folder that "
                        "is not empty is refused unless --force, which replaces an earlier "
                        "dump there)")
    p.add_argument("--autotune", action="store_true",
                   help="time each convolution's algorithms once (cached) instead of trusting "
                        "the cost model")
    fully_convolutional_args(p)


# -- check ------------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from .check import check_model, format_rows
    from .model import compile as compile_model

    if args.batch < 1:
        raise CliError(f"--batch must be at least 1, got {args.batch}")
    if not args.tolerance > 0:
        raise CliError(f"--tolerance must be positive, got {args.tolerance}")
    graph = load_graph(args)
    model = compile_model(compile_source(args, graph), lowering=parse_lowering(args.lowering),
                          seed=args.seed,
                          opt_level=args.opt_level, layout=args.layout,
                          target=args.target)
    rows = check_model(model, batch=args.batch, tol=args.tolerance, seed=args.seed)
    print(f"{graph.name}: every kernel vs the float64 reference, batch {args.batch}")
    print(format_rows(rows, args.tolerance))
    return 0 if all(r.ok for r in rows) else 1


def _configure_check(p: argparse.ArgumentParser, model_arg) -> None:
    model_arg(p)
    _lowering_arg(p)
    _opt_arg(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="pass when every element's error is at most T x its float32 error "
                        "bound (default 1)")
    p.add_argument("--seed", type=int, default=0)


# -- demo -------------------------------------------------------------------------------------

# as a user's program would: the network's name or file (DSL parameters: its graph)
_CACHED_COMPILE = """
import json, sys, time
t0 = time.perf_counter()
import cnnc
params = json.loads(sys.argv[2])
cnnc.compile(cnnc.load(sys.argv[1], **params) if params else sys.argv[1])
print(time.perf_counter() - t0)
"""


def _cached_compile_seconds(model: str, params: dict) -> float | None:
    """Compile time in a fresh process, every kernel already in the disk cache (includes
    importing numba and cnnc)."""
    try:
        out = subprocess.run([sys.executable, "-c", _CACHED_COMPILE, model, json.dumps(params)],
                             capture_output=True, text=True, timeout=600, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: compile a zoo network, check it against the reference, run it."""
    from .check import check_model, worst_row
    from .model import compile as compile_model
    from .summary import format_giga, summarize

    graph = load_graph(args)
    s = summarize(graph)
    print(f"{graph.name}: {len(s.rows)} layers, {s.params:,} parameters, "
          f"{format_giga(s.flops)} GFLOPs per image")
    t0 = time.perf_counter()
    model = compile_model(compile_source(args, graph), seed=args.seed)
    compile_s = time.perf_counter() - t0
    cached = _cached_compile_seconds(args.model, parse_params(args.param))
    kind = "cold" if cached is not None and compile_s > 2 * cached else "from the disk cache"
    line = f"compile: {compile_s:.2f} s ({kind})"
    if cached is not None:
        line += f"; in a fresh process with a warm cache: {cached:.2f} s"
    print(line)

    t0 = time.perf_counter()
    rows = check_model(model, batch=1, seed=args.seed)
    worst = worst_row(rows)
    bad = [r for r in rows if not r.ok]
    print(f"check vs float64 reference, batch 1 ({time.perf_counter() - t0:.1f} s): "
          f"{len(rows)} steps, {len(bad)} failed; worst error {worst.fraction:.3g} of its "
          f"float32 bound ({worst.name})")

    rng = np.random.default_rng(args.seed)
    inputs = {name: rng.standard_normal((args.batch,) + graph.node(nid).type.shape)
              .astype(np.float32) for name, nid in graph.inputs.items()}
    model.run(inputs)  # allocate the arena of this batch size
    times = []
    deadline = time.perf_counter() + 2.0
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 50):
        t1 = time.perf_counter()
        outputs = model.run(inputs)
        times.append(time.perf_counter() - t1)
    med = statistics.median(times)
    print(f"latency, batch {args.batch}: median {med * 1e3:.3g} ms, best "
          f"{min(times) * 1e3:.3g} ms over {len(times)} runs "
          f"({s.flops * args.batch / med / 1e9:.1f} GFLOP/s)")
    report_outputs(outputs)
    return 1 if bad else 0


def _configure_demo(p: argparse.ArgumentParser, model_arg) -> None:
    p.add_argument("model", nargs="?", default="resnet18", help="zoo name or .cnn file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


EXTRA["compile"] = (cmd_compile, "compile a network to cached Numba kernels",
                     _configure_compile)
EXTRA["check"] = (cmd_check, "compare every generated kernel with the float64 reference",
                   _configure_check)
EXTRA["demo"] = (cmd_demo, "compile a network, check it against the reference, run it",
                  _configure_demo)
