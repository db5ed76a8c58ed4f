"""`cnnc bench MODEL`: cnnc against PyTorch, ONNX Runtime and OpenVINO on the same weights, each
engine in its own process, with the peak of this machine measured in the same run."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from ..compiler.target import host_target
from .bench import (
    PEERS,
    BenchError,
    bar_chart,
    bench_engines,
    installed,
    markdown_table,
    prepare,
    spawn_peak,
)
from .cli_common import EXTRA, CliError, force_arg, load_graph, write_files
from .summary import summarize

#: A relative error against the float64 reference above this means an engine computed
#: something else (float32 engines stay near 1e-5 on the zoo's networks).
AGREE = 1e-3


def parse_peers(text: str) -> list[str]:
    """``--against torch,onnxruntime`` -> the peers in that order; unknown names are refused."""
    peers = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise CliError(f"--against: unknown engine {', '.join(map(repr, unknown))}; the peers "
                       f"are {', '.join(PEERS)}")
    return list(dict.fromkeys(peers))


def _check_args(args: argparse.Namespace) -> None:
    for name in ("batch", "threads", "rounds", "repeat"):
        value = getattr(args, name)
        if value < 1:
            raise CliError(f"--{name} must be at least 1, got {value}")
    if args.min_time < 0:
        raise CliError(f"--min-time must not be negative, got {args.min_time}")
    if args.plot:
        if not args.plot.endswith(".png"):
            raise CliError(f"--plot writes a PNG picture: give a .png file, got {args.plot}")
        if os.path.lexists(args.plot) and not args.force:
            raise CliError(f"{args.plot} already exists; give --force to replace it")
        if not installed("matplotlib"):
            raise CliError("--plot needs matplotlib (make bench-deps installs it)")


def format_table(rows: list[dict]) -> str:
    """The result as a Markdown table, one row per engine."""
    head = ["engine", "median ms", "p99 ms", "max ms", "runs", "GFLOP/s", "% of peak",
            "vs best peer", "max rel err"]
    cells = [[r["engine"], f"{r['median_ms']:.3g}", f"{r['p99_ms']:.3g}", f"{r['max_ms']:.3g}",
              str(r["runs"]), f"{r['gflops']:.3g}", f"{r['pct_peak']:.0f}%",
              f"{r['vs_best_peer']:.2f}x" if "vs_best_peer" in r else "",
              f"{r['max_rel_err']:.1e}"] for r in rows]
    return markdown_table(head, cells)


def cmd_bench(args: argparse.Namespace) -> int:
    _check_args(args)
    peers = parse_peers(args.against)
    graph = load_graph(args)
    for peer in peers:
        if not installed(peer):
            print(f"{peer}: not installed, skipped (make bench-deps installs the peers)")
    # cnnc compiles for this machine's target, named in the table, at the peak loop's width
    target = host_target()
    engines = [f"cnnc-{target.name}"] + [p for p in peers if installed(p)]
    # a worker loads the network again: by its zoo name, or by the file's absolute path
    model = str(Path(args.model).resolve()) if Path(args.model).is_file() else args.model
    lanes = target.lanes
    try:
        with tempfile.TemporaryDirectory(prefix="cnnc-bench-") as tmp:
            workdir = Path(tmp)
            with tqdm(total=1 + args.rounds * len(engines), desc=f"bench {graph.name}",
                      unit="run", leave=False) as bar:
                bar.set_postfix_str("weights, ONNX file, float64 reference")
                prepare(graph, [args.batch], workdir)
                bar.set_postfix_str("peak")
                peak = spawn_peak(args.threads, lanes, args.min_time)
                bar.update(1)

                def step(engine: str, finished: bool) -> None:
                    if finished:
                        bar.update(1)
                    else:
                        bar.set_postfix_str(engine)

                rows = bench_engines(engines, workdir, model, args.batch, args.threads,
                                     rounds=args.rounds, repeat=args.repeat,
                                     min_time=args.min_time, flops=summarize(graph).flops,
                                     peak=peak, progress=step)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{graph.name}, batch {args.batch}, {args.threads} threads, {args.rounds} rounds "
          f"in alternating order, each engine in its own process")
    print(format_table(rows))
    print(f"peak: {peak:.0f} GFLOP/s ({lanes}-lane FMA loop on {args.threads} threads, "
          "measured in this run)")
    cnnc = rows[0]
    if "vs_best_peer" in cnnc:
        best = min((r for r in rows if r["engine"] in PEERS), key=lambda r: r["median_ms"])
        print(f"cnnc / best peer: {cnnc['vs_best_peer']:.2f}x the time of {best['engine']}")
    worst = max(rows, key=lambda r: r["max_rel_err"])
    print(f"outputs compared with the float64 reference: largest relative error "
          f"{worst['max_rel_err']:.1e} ({worst['engine']})")
    status = 0
    for r in rows:
        if r["max_rel_err"] > AGREE:
            print(f"warning: {r['engine']}'s output differs from the reference by "
                  f"{r['max_rel_err']:.1e} (more than {AGREE:.0e})", file=sys.stderr)
            status = 1
    if args.plot:
        names = [r["engine"] for r in rows]
        series = {"median": [r["median_ms"] for r in rows], "p99": [r["p99_ms"] for r in rows]}
        write_files({args.plot: lambda f: bar_chart(names, series, "ms per call", f)},
                    force=args.force)
        print(f"wrote {args.plot}")
    return status


def _configure(p: argparse.ArgumentParser, model_arg) -> None:
    p.add_argument("model", help="a .cnn file or a zoo name (e.g. resnet18)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads of every engine and of the peak loop (default 2)")
    p.add_argument("--against", default=",".join(PEERS), metavar="PEER[,PEER...]",
                   help=f"the peers, from {', '.join(PEERS)} (default: all); one that is not "
                        "installed is skipped (make bench-deps installs them)")
    p.add_argument("--rounds", type=int, default=3,
                   help="processes per engine, run in alternating order (default 3)")
    p.add_argument("--repeat", type=int, default=10,
                   help="timed calls at least, per process (default 10)")
    p.add_argument("--min-time", type=float, default=1.0, metavar="SECONDS",
                   help="time each process for at least this long (default 1); also the "
                        "peak loop's time")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the medians and p99s as a bar chart (needs matplotlib)")
    force_arg(p)


EXTRA["bench"] = (cmd_bench, "time cnnc against PyTorch, ONNX Runtime and OpenVINO", _configure)
