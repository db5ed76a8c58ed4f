"""The pass manager: runs a named pipeline over a graph, verifies after every pass, times each
pass, records what it changed (``--explain``), can dump the IR after each pass, and on failure
names the pass, the passes before it and the node it was working on, with its DSL location."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import Graph, Node, model_folder, shown_path
from ..target import Target, resolve_target

__all__ = ["PassContext", "PassRecord", "PassError", "OptionError", "DumpFolderError",
           "run_passes"]


@dataclass
class PassContext:
    """Settings and the change log shared by the passes of one compile.

    ``lowering``: the user's override for every convolution (``auto`` lets the cost model
    choose) or a mapping from layer name to choice. ``layout``: ``auto`` (layout selection keeps
    activations channel-blocked where every rule allows, each region in the block width its
    cost model picks), ``NCHW`` (every activation stays plain; each blocked kernel packs and
    unpacks its own), ``NCHW8c``, ``NCHW16c`` or ``NHWC`` (every region in that storage where
    its kernels have it, else NCHW8c). ``training``: passes that are valid
    only for inference (batch-norm folding) leave the graph alone. ``replace_dump``: an IR dump
    may go into a folder that is not empty, replacing the earlier dump there (``--force``).
    """

    training: bool = False
    lowering: str | Mapping[str, str] = "auto"
    layout: str = "auto"
    opt_level: int = 2
    # The CPU the kernels are generated for (vector width: ``compiler/target.py``); by default
    # this machine's, asked when the context is made (through ``resolve_target``, the one place
    # that decides what "cpu" means).
    target: Target = field(default_factory=lambda: resolve_target("cpu"))
    # ``measure(graph, node, candidates) -> winner``: times the candidate algorithms of one
    # node (``--autotune``). The runtime provides it: the compiler runs no kernels itself.
    measure: Callable[[Graph, Node, tuple[str, ...]], str] | None = None
    replace_dump: bool = False
    # Training (``compiler/autodiff.py``): parameter name patterns left as they are (fnmatch),
    # whether the network's inputs get gradients too (``input_gradient``), and the layers
    # whose values get them (the explanations' Grad-CAM).
    frozen: tuple[str, ...] = ()
    input_gradients: bool = False
    gradients_of: tuple[str, ...] = ()
    # Data-parallel training: batch norm's statistics are those of the global batch of this
    # many replicas' equal shards (``sync_batch_norm``); 1: each replica's own.
    sync_bn_replicas: int = 1
    # The input size (height, width) a fully convolutional compile runs the network at
    # (``convolutionalize``); None: as declared.
    input_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    current: Node | None = None
    folder: str | None = None  # the model's folder: DSL files are named relative to it

    def where(self, node: Node | None) -> str:
        """``file:line`` of a node's DSL (file relative to the model's folder), or ""."""
        if node is None or node.span is None:
            return ""
        return f"{shown_path(node.span.file, self.folder)}:{node.span.line}"

    def at(self, node: Node | None) -> None:
        """Name the node a pass is working on (for the error if it fails)."""
        self.current = node

    def note(self, text: str, node: Node | None = None) -> None:
        """Record one change for ``--explain`` (with the node's DSL location)."""
        where = self.where(node)
        self.notes.append(text + (f" ({where})" if where else ""))


@dataclass
class PassRecord:
    name: str
    seconds: float
    changed: bool
    nodes_before: int
    nodes_after: int
    notes: list[str]


class PassError(Exception):
    """A pass failed or left an invalid graph: a bug in cnnc, reported with its context."""


class OptionError(Exception):
    """A compile option that does not fit the graph: the user's mistake, passed through."""


class DumpFolderError(OptionError):
    """A folder for the IR dump that cannot take it: not a folder, or not empty (without
    ``replace_dump``)."""


#: The files of an IR dump: ``00-input.ir``, then ``NN-<pass>.ir`` after each pass.
DUMP_FILE = re.compile(r"\d{2,}-\w+\.ir")


def prepare_dump_folder(folder: Path, replace: bool) -> None:
    """Make ``folder`` ready for a new IR dump, so two runs never mix: created when missing;
    refused when it holds anything, unless ``replace``: then the files of an earlier dump are
    removed (other files stay)."""
    if folder.exists() and not folder.is_dir():
        raise DumpFolderError(f"cannot write the IR dump to {folder}: not a folder")
    entries = sorted(folder.iterdir()) if folder.exists() else []
    if entries and not replace:
        raise DumpFolderError(f"{folder} is not empty; give --force to replace the IR dump in "
                              "it (nothing was written)")
    for path in entries:
        if DUMP_FILE.fullmatch(path.name) and (path.is_symlink() or path.is_file()):
            path.unlink()  # a link itself, never what it points to
    folder.mkdir(parents=True, exist_ok=True)


def write_memory_plan(folder: Path, passes: int, listing: str) -> None:
    """The last file of an IR dump after ``passes`` passes: the lowered graph with its memory
    plan (``Plan.dump``)."""
    (folder / f"{passes + 1:02d}-memory_plan.ir").write_text(listing + "\n", encoding="utf-8")


Pass = Callable[[Graph, PassContext], bool]


def describe(node: Node | None) -> str:
    if node is None:
        return ""
    where = f" at {node.span}" if node.span else ""
    return f" while rewriting %{node.id} {node.op} {node.name!r}{where}"


def run_passes(graph: Graph, passes: list[tuple[str, Pass]], ctx: PassContext, *,
               dump_dir: str | Path | None = None) -> list[PassRecord]:
    """Run ``passes`` in order over ``graph`` (in place); returns one record per pass. With
    ``dump_dir``, the IR before the first pass and after each one is written there (a new or
    empty folder, or one with an earlier dump when ``ctx.replace_dump``)."""
    records: list[PassRecord] = []
    ctx.folder = model_folder(graph)
    if dump_dir is not None:
        dump_dir = Path(dump_dir)
        prepare_dump_folder(dump_dir, ctx.replace_dump)
        (dump_dir / "00-input.ir").write_text(graph.dump() + "\n", encoding="utf-8")
    for i, (name, fn) in enumerate(passes):
        before = len(graph)
        ctx.notes = []
        ctx.at(None)
        t0 = time.perf_counter()
        try:
            changed = bool(fn(graph, ctx))
        except OptionError:
            raise
        except Exception as e:
            raise PassError(f"pass {name} failed{describe(ctx.current)} (after "
                            f"{_names(passes[:i])}): {type(e).__name__}: {e}") from e
        try:
            graph.verify()
        except Exception as e:
            bad = getattr(e, "node", None)
            node = graph.node(bad) if isinstance(bad, int) and bad in graph else ctx.current
            raise PassError(f"pass {name} left an invalid graph{describe(node)} (after "
                            f"{_names(passes[:i])}): {e}") from e
        records.append(PassRecord(name, time.perf_counter() - t0, changed, before, len(graph),
                                  list(ctx.notes)))
        if dump_dir is not None:
            (dump_dir / f"{i + 1:02d}-{name}.ir").write_text(graph.dump() + "\n",
                                                            encoding="utf-8")
    return records


def _names(passes: list[tuple[str, Any]]) -> str:
    return ", ".join(n for n, _ in passes) or "no other pass"


def format_explain(records: list[PassRecord]) -> str:
    """Per pass, what it changed, then totals (``cnnc compile --explain``)."""
    lines = []
    for r in records:
        delta = r.nodes_after - r.nodes_before
        head = (f"{r.name}: {'changed' if r.changed else 'no change'}, nodes {r.nodes_before} "
                f"-> {r.nodes_after} ({delta:+d}), {r.seconds * 1e3:.1f} ms")
        lines.append(head)
        lines += [f"  {n}" for n in r.notes]
    total = sum(r.seconds for r in records)
    if records:
        lines.append(f"{len(records)} passes, nodes {records[0].nodes_before} -> "
                     f"{records[-1].nodes_after}, {total * 1e3:.1f} ms")
    return "\n".join(lines)

