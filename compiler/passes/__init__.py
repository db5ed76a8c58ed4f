"""Optimization passes: graph rewrites, one file each, run by the manager over the explicit
pipelines of ``pipelines.py``.

    records = optimize(graph, opt_level=2)      # rewrites ``graph`` in place
"""

from __future__ import annotations

from pathlib import Path

from ..ir import Graph
from .manager import PassContext, PassError, PassRecord, format_explain, run_passes
from .pipelines import pipeline
from .select_lowering import LoweringError

__all__ = ["optimize", "PassContext", "PassError", "PassRecord", "LoweringError",
           "format_explain", "pipeline"]


def optimize(graph: Graph, opt_level: int = 2, *, ctx: PassContext | None = None,
             dump_dir: str | Path | None = None) -> list[PassRecord]:
    """Run the pipeline of ``-O<opt_level>`` over ``graph`` in place."""
    ctx = ctx or PassContext(opt_level=opt_level)
    ctx.opt_level = opt_level
    return run_passes(graph, pipeline(opt_level, ctx.training), ctx, dump_dir=dump_dir)
