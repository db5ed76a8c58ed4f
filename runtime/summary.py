"""Accounting: per-layer output shape, parameters, multiply-accumulates and activations."""

from __future__ import annotations

from dataclasses import dataclass

from ..compiler.ir import Graph
from ..compiler.ops import get_op
from ..compiler.passes.convolutionalize import WindowSaving


@dataclass(frozen=True)
class LayerRow:
    name: str
    op: str
    shape: tuple[int, ...]
    params: int  # trainable parameters first used by this layer
    buffers: int  # non-trainable state (batch-norm running statistics, fixed weights)
    macs: int  # per sample
    activations: int  # output elements per sample, where the op makes new ones (else 0)


@dataclass(frozen=True)
class Summary:
    name: str
    rows: list[LayerRow]
    input_shapes: dict[str, tuple[int, ...]]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def buffers(self) -> int:
        return sum(r.buffers for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def activations(self) -> int:
        return sum(r.activations for r in self.rows)


def _parameters_read(graph: Graph, node_id: int) -> list[int]:
    """The parameters a node input is: itself, or those a derived parameter (an internal op:
    a convolutionalized dense layer's reshaped weight) is computed from."""
    node = graph.node(node_id)
    if node.op == "param":
        return [node_id]
    if not get_op(node.op).internal:
        return []
    return [p for i in node.inputs for p in _parameters_read(graph, i)]


def summarize(graph: Graph) -> Summary:
    """One row per computing node, in execution order (derived parameters are counted where
    they are read, not as rows). A shared parameter counts once, at its first use."""
    seen: set[int] = set()
    rows = []
    for node in graph.compute_nodes():
        op = get_op(node.op)
        if op.internal:
            continue
        params = buffers = 0
        for pid in (p for i in node.inputs for p in _parameters_read(graph, i)):
            src = graph.node(pid)
            if pid in seen:
                continue
            seen.add(pid)
            if src.attrs.get("trainable", True):
                params += src.type.size
            else:
                buffers += src.type.size
        in_types = [graph.node(i).type for i in node.inputs]
        rows.append(LayerRow(node.name, node.op, node.type.shape, params, buffers,
                             op.macs(in_types, node.type, node.attrs),
                             node.type.size if op.new_activations else 0))
    shapes = {k: graph.node(v).type.shape for k, v in graph.inputs.items()}
    return Summary(graph.name, rows, shapes)


def format_summary(s: Summary, all_rows: bool = True) -> str:
    """The table `cnnc summary` prints."""
    header = ("layer", "op", "output", "params", "MACs", "activations")
    table = [header]
    for k, shape in s.input_shapes.items():
        table.append((k, "input", _dims(shape), "-", "-", "-"))
    for r in s.rows:
        if not all_rows and not (r.params or r.macs or r.activations):
            continue
        table.append((r.name, r.op, _dims(r.shape), f"{r.params:,}", f"{r.macs:,}",
                      f"{r.activations:,}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {3, 4, 5}

    def fmt(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [f"network {s.name}", fmt(header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt(r) for r in table[1:]]
    lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
    lines.append(f"total parameters:   {s.params:,}")
    if s.buffers:
        lines.append(f"non-trainable:      {s.buffers:,} (running statistics, fixed weights)")
    lines.append(f"multiply-accumulates per image: {s.macs:,} ({format_giga(s.flops)} GFLOPs)")
    lines.append(f"activations per image:          {s.activations:,}")
    return "\n".join(lines)


def format_window_saving(s: WindowSaving) -> str:
    """The line `cnnc summary --fully-convolutional` ends with: seed 000's point, the work of
    one convolutional pass against the classifier run on every window of the grid."""
    (p, q), (sh, sw) = s.windows, s.stride
    return (f"sliding windows: {p} x {q} = {p * q:,} windows at stride {sh}x{sw}: one pass "
            f"{s.one_pass_macs:,} multiply-accumulates, window by window {p * q:,} x "
            f"{s.window_macs:,} = {s.loop_macs:,} ({s.factor:.1f}x the work)")


def format_giga(n: int) -> str:
    """``n / 1e9`` with three decimals, in integer arithmetic: exact for counts of any size
    (a float division overflows beyond 1e308)."""
    thousandths = (int(n) + 500_000) // 1_000_000
    return f"{thousandths // 1000}.{thousandths % 1000:03d}"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def format_receptive_fields(graph: Graph, all_rows: bool = True) -> str:
    """The table `cnnc summary --receptive-field` prints: per layer, the receptive field
    (height x width, in input pixels), the jump between neighbouring outputs and the centre of
    the first output's window (see compiler/receptive_field.py)."""
    from ..compiler.receptive_field import describe, receptive_fields

    fields = receptive_fields(graph)
    shown = {r.name for r in summarize(graph).rows if all_rows or r.params or r.macs or
             r.activations}
    table = [("layer", "op", "output", "receptive field", "jump", "start")]
    for k, v in graph.inputs.items():
        table.append((k, "input", _dims(graph.node(v).type.shape), *describe(fields[v])))
    for node in graph.compute_nodes():
        if node.name in shown:
            table.append((node.name, node.op, _dims(node.type.shape), *describe(fields[node.id])))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join([f"receptive fields of {graph.name} (in input pixels)"] + lines)
