"""`cnnc show`: the network as a picture (Graphviz DOT).

Blocks are clusters (a layer ``stage2_1.conv1`` sits in the cluster of its block instance
``stage2_1``), edges carry the tensor shapes, parameters are left out (a layer's label says
how many it owns), and with ``--after-passes`` the optimized graph is drawn: a node that fused
other ops is outlined in bold and lists them (folded batch norms, its epilogue), and a node kept
channel-blocked says so. Rendering to SVG or PNG uses Graphviz's ``dot`` when it is installed;
without it the DOT text is written and the message says how to render it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from ..compiler.ir import Graph, Node
from ..compiler.ops import epilogue_of, is_constant, own_input_count
from .cli_common import EXTRA, CliError, force_arg, load_graph, write_files

FORMATS = (".svg", ".png", ".dot", ".gv")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(graph: Graph, node: Node) -> str:
    lines = [node.name or f"%{node.id}", node.op if node.op != "input" else "input"]
    params = [graph.node(i) for i in node.inputs if graph.node(i).op == "param"]
    if params:
        lines.append(f"{sum(p.type.size for p in params):,} parameters")
    fused = [f"+ {name}" for name in node.attrs.get("folded", ())]
    fused += [f"+ {e}" for e in epilogue_of(node.attrs)]
    lines += fused
    if node.attrs.get("lowering"):
        lines.append(str(node.attrs["lowering"]))
    if node.attrs.get("layout"):
        lines.append(f"out {node.attrs['layout']}")
    return "\n".join(lines)


def to_dot(graph: Graph) -> str:
    """The DOT text of ``graph`` (see the module docstring)."""
    shown = [n for n in graph.topo_order() if not is_constant(graph, n)]
    ids = {n.id for n in shown}
    clusters: dict[str, list[Node]] = {}
    for n in shown:
        block = n.name.rsplit(".", 1)[0] if "." in n.name else ""
        clusters.setdefault(block, []).append(n)
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for k, (block, nodes) in enumerate(clusters.items()):
        indent = "  "
        if block:
            lines.append(f"  subgraph cluster_{k} {{")
            lines.append(f"    label={_quote(block)}; style=dashed; color=gray50;")
            indent = "    "
        for n in nodes:
            attrs = [f"label={_quote(_label(graph, n))}"]
            if n.attrs.get("folded") or epilogue_of(n.attrs):
                attrs.append('style="rounded,bold"')
                attrs.append("penwidth=2.5")
            if n.op == "input" or graph.is_output(n.id):
                attrs.append("shape=oval")
            lines.append(f"{indent}n{n.id} [{', '.join(attrs)}];")
        if block:
            lines.append("  }")
    for n in shown:
        own = own_input_count(len(n.inputs), n.attrs)
        for pos, i in enumerate(n.inputs):
            if i not in ids:
                continue
            shape = "x".join(map(str, graph.node(i).type.shape))
            style = ", style=dashed" if pos >= own else ""
            lines.append(f"  n{i} -> n{n.id} [label={_quote(shape)}{style}];")
    for name, nid in graph.outputs.items():
        lines.append(f"  out_{name} [label={_quote(name)}, shape=plaintext];")
        lines.append(f"  n{nid} -> out_{name} [label="
                     f"{_quote('x'.join(map(str, graph.node(nid).type.shape)))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot: str, fmt: str) -> bytes | None:
    """The picture of ``dot`` in ``fmt`` (svg, png) by Graphviz, or None without it."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    done = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise CliError(f"Graphviz failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def cmd_show(args: argparse.Namespace) -> int:
    graph = load_graph(args)
    if args.after_passes:
        from ..compiler.passes import optimize

        graph = graph.copy()
        optimize(graph, args.opt_level)
    out = Path(args.output)
    if out.suffix.lower() not in FORMATS:
        raise CliError(f"-o must end in one of {', '.join(FORMATS)}, got {out.name!r}")
    dot = to_dot(graph)
    if out.suffix.lower() in (".dot", ".gv"):
        write_files({out: dot}, force=args.force)
        print(f"wrote {out}")
        return 0
    picture = render(dot, out.suffix.lower()[1:])
    if picture is None:
        dot_path = out.with_suffix(".dot")
        write_files({dot_path: dot}, force=args.force)
        print(f"Graphviz's `dot` is not installed: wrote {dot_path}; render it with "
              f"`dot -T{out.suffix[1:].lower()} {dot_path} -o {out}` (Debian: apt install "
              "graphviz)")
        return 0
    write_files({out: picture}, force=args.force)
    print(f"wrote {out}")
    return 0


def _configure_show(p: argparse.ArgumentParser, model_arg) -> None:
    model_arg(p)
    p.add_argument("-o", "--output", required=True, help="graph.svg, graph.png or graph.dot")
    p.add_argument("--after-passes", action="store_true",
                   help="draw the optimized graph (fused groups outlined)")
    p.add_argument("-O", dest="opt_level", type=int, choices=(0, 1, 2), default=2,
                   help="optimization level for --after-passes (default 2)")
    force_arg(p)


EXTRA["show"] = (cmd_show, "draw the network (Graphviz): blocks, shapes, fused groups",
                 _configure_show)
