"""CLI commands beyond the basics: demo (and, as they land, compile, check, import, export)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from .cli import _EXTRA, load_graph, report_outputs


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: build a zoo network, run it, and check it against the reference."""
    from .reference import run_reference
    from .summary import summarize
    from .weights import init_params

    t0 = time.perf_counter()
    graph = load_graph(args)
    s = summarize(graph)
    print(f"{graph.name}: {len(s.rows)} layers, {s.params:,} parameters, "
          f"{s.flops / 1e9:.3f} GFLOPs per image (built in {time.perf_counter() - t0:.2f} s)")
    rng = np.random.default_rng(args.seed)
    inputs = {name: rng.standard_normal((args.batch,) + graph.node(nid).type.shape)
              .astype(np.float32) for name, nid in graph.inputs.items()}
    params = init_params(graph, args.seed)
    t0 = time.perf_counter()
    outputs = run_reference(graph, inputs, params)
    print(f"float64 reference, batch {args.batch}: {(time.perf_counter() - t0) * 1e3:.0f} ms")
    report_outputs(outputs)
    return 0


def _configure_demo(p: argparse.ArgumentParser, model_arg) -> None:
    p.add_argument("model", nargs="?", default="resnet18", help="zoo name or .cnn file")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


_EXTRA["demo"] = (cmd_demo, "compile a network, check it against the reference, run it",
                  _configure_demo)
