"""The DSL writer: imported layers printed as readable DSL, one chain per straight run of
layers, with `as` labels on layers that own parameters so the weights' keys
(`<label>.weight`) are the names the builder gives them, and a `shared` statement for a layer
applied several times with the same weights."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ...compiler.ops import REQUIRED, all_names, get_op
from .errors import OnnxImportError
from .importer import Importer, Layer

KEYWORDS = {"network", "input", "output", "block", "shared", "return", "import", "from", "true",
            "false", "in"}


def tidy(name: str) -> str:
    """A short identifier-ish form of an ONNX name: '/layer1/layer1.0/conv1/Conv' ->
    'layer1_0_conv1' (the op type and repeated path prefixes dropped)."""
    parts = [p for p in re.split(r"[/:]", name) if p]
    if len(parts) > 1 and re.fullmatch(r"[A-Z][A-Za-z]*(_\d+)?(_output_\d+)?", parts[-1]):
        parts.pop()
    parts = [p for i, p in enumerate(parts)
             if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    s = re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(parts))
    s = re.sub(r"_+", "_", s).strip("_")
    if s and s[0].isdigit():
        s = "n" + s
    return s


class Names:
    """Unique DSL identifiers that cannot be mistaken for layers or keywords. Labels also avoid
    the builder's automatic names (relu1, maxpool2, ...) of the ops in `auto_ops`: a label the
    builder has already given away automatically is an error."""

    def __init__(self, auto_ops: set[str] | frozenset[str] = frozenset(),
                 layer_names: bool = True) -> None:
        self.taken: set[str] = set()
        self.reserved = (set(all_names()) if layer_names else set()) | KEYWORDS
        ops = sorted(auto_ops, key=len, reverse=True)
        self.auto = re.compile(r"(" + "|".join(map(re.escape, ops)) + r")\d+") if ops else None

    def make(self, raw: str, fallback: str) -> str:
        base = tidy(raw) or fallback
        if base in self.reserved or (self.auto and self.auto.fullmatch(base)):
            base += "_"
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


COMPACT = {"kernel", "stride", "pad", "dilation", "output_padding", "scale"}


def _fmt(v: Any, compact: bool = False) -> str:
    """A DSL literal. With `compact`, window pairs and pads are shortened: (3, 3) -> 3,
    (1, 2, 1, 2) -> (1, 2)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return f"{v:.1f}"
        return repr(v)
    if isinstance(v, str):
        return v
    if isinstance(v, tuple):
        items = list(v)
        if compact and len(items) == 4 and items[:2] == items[2:]:
            items = items[:2]
        if compact and len(items) == 2 and items[0] == items[1]:
            return _fmt(items[0])
        return "(" + ", ".join(_fmt(i) for i in items) + ")"
    raise TypeError(f"cannot print {v!r} as a DSL value")


def _call(layer: Layer, extra_inputs: list[str], shared_def: bool = False) -> str:
    """`conv(64, 3, stride=2, pad=1) as stem` for a layer; tensor inputs after the first are
    leading positional arguments. An application of a shared layer is its name; `shared_def`
    gives the call of its `shared` statement."""
    if layer.shared and not shared_def:
        return layer.label
    opdef = get_op(layer.op)
    parts = list(extra_inputs)
    positional = True
    for attr in opdef.signature:
        if attr.name not in layer.args:
            positional = False
            continue
        value = layer.args[attr.name]
        if attr.default is REQUIRED and positional:
            parts.append(_fmt(value, attr.name in COMPACT))
            continue
        positional = False
        if attr.default is not REQUIRED and _same(value, attr.default):
            continue
        parts.append(f"{attr.name}={_fmt(value, attr.name in COMPACT)}")
    text = layer.op + (f"({', '.join(parts)})" if parts else "")
    return text + (f" as {layer.label}" if layer.label and not shared_def else "")


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(_same(v, default) for v in value)
    return type(value) is type(default) and value == default or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and
        isinstance(default, (int, float)) and not isinstance(default, bool) and
        value == default)


def _same_weights(a: Layer, b: Layer) -> bool:
    return a.op == b.op and a.args == b.args and a.weights.keys() == b.weights.keys() and all(
        np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)


def _comment(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)


def _live(imp: Importer) -> list[Layer]:
    """The layers some output depends on, in order."""
    live: set[str] = set()
    stack = [imp.name_of(o) for o in imp.graph_outputs]
    while stack:
        v = stack.pop()
        if v in live:
            continue
        live.add(v)
        layer = imp.producer.get(v)
        if layer is not None:
            stack.extend(layer.inputs)
    return [la for la in imp.layers if not la.removed and la.output in live]


class Printer:
    """Layers -> DSL statements: one chain per straight run of layers."""

    def __init__(self, imp: Importer):
        self.imp = imp
        self.layers = _live(imp)
        self.values = Names()
        self.labels = Names({la.op for la in self.layers if not la.weights})
        self.var: dict[str, str] = {}  # ONNX tensor -> DSL value name
        self.uses: dict[str, int] = {}
        self.first_use: dict[str, Layer] = {}
        self.outputs: dict[str, list[str]] = {}
        for layer in self.layers:
            for k, x in enumerate(layer.inputs):
                self.uses[x] = self.uses.get(x, 0) + 1
                if k == 0:
                    self.first_use.setdefault(x, layer)
        for o in imp.graph_outputs:
            self.outputs.setdefault(imp.name_of(o), []).append(o)

    def continues(self, value: str) -> bool:
        """Whether `value` flows straight into the next layer of its chain."""
        return (value in self.imp.producer and self.uses.get(value, 0) == 1 and
                value not in self.outputs and value in self.first_use)

    def render(self, title: str, network: str) -> str:
        imp = self.imp
        lines = [f"# {_comment(title)}"]
        for name in imp.inputs:
            self.var[name] = self.values.make(name, "input")
        outs = Names(layer_names=False)  # (an output may be called `distance`)
        out_names = {o: outs.make(o, "output") for o in imp.graph_outputs}
        shared: dict[tuple, list[Layer]] = {}
        self.labels.taken |= set(self.var.values())  # a shared layer's name is a stage
        for layer in self.layers:
            if not layer.weights:
                continue
            group = shared.get(layer.share) if layer.share else None
            if group and _same_weights(group[0], layer) and [
                    self.imp.shapes[x] for x in layer.inputs] == [
                    self.imp.shapes[x] for x in group[0].inputs]:
                group.append(layer)
                layer.label = group[0].label
                continue
            layer.label = self.labels.make(layer.hint, layer.op)
            if layer.share:
                shared.setdefault(layer.share, [layer])
        shared_defs = []
        for group in shared.values():
            if len(group) > 1:
                for layer in group:
                    layer.shared = True
                self.values.taken.add(group[0].label)
                shared_defs.append(f"shared {group[0].label} = {_call(group[0], [], True)}")
        renamed = [(o, n) for o, n in list(zip(imp.inputs, [self.var[i] for i in imp.inputs]))
                   + list(out_names.items()) if o != n]
        if renamed:
            lines.append("# renamed: " + _comment(", ".join(f"{o!r} -> {n}" for o, n in
                                                          renamed)))
        lines.append(f"network {network}")
        for name in imp.inputs:
            dims = " x ".join(str(d) for d in imp.shapes[name])
            lines.append(f"input {self.var[name]}: {dims}")
        lines.append("")
        lines += shared_defs
        for layer in self.layers:
            if not self.continues(layer.output) and layer.output in self.uses:
                producer_hint = layer.label or layer.hint
                self.var[layer.output] = self.values.make(producer_hint, "v")
        chains = self.chains()
        # Outputs end their chains when that keeps the model's order of outputs; otherwise
        # they are declared at the end, in order.
        inline_order = [o for run in chains for o in self.outputs.get(run[-1].output, [])]
        inline_order += [o for v, outs in self.outputs.items() if v in imp.inputs for o in outs]
        inline = inline_order == imp.graph_outputs
        if not inline:
            for value in self.outputs:
                if value not in self.var:
                    self.var[value] = self.values.make(self.imp.producer[value].hint, "y")
        for chain in chains:
            lines.append(self.chain_text(chain, out_names if inline else None))
        for o in imp.graph_outputs:
            value = imp.name_of(o)
            if not inline or value in imp.inputs:
                lines.append(f"{self.var[value]} -> output {out_names[o]}")
        return "\n".join(lines) + "\n"

    def chains(self) -> list[list[Layer]]:
        """Straight runs of layers, ordered so that every name is defined before its use."""
        starts = [la for la in self.layers if not self.continues(la.inputs[0])]
        runs = []
        for layer in starts:
            run = [layer]
            while self.continues(run[-1].output):
                run.append(self.first_use[run[-1].output])
            runs.append(run)
        defined = set(self.imp.inputs)
        ordered: list[list[Layer]] = []
        pending = runs
        while pending:
            rest = []
            for run in pending:
                needs = {x for la in run for x in la.inputs} - {la.output for la in run}
                if needs <= defined:
                    ordered.append(run)
                    defined.add(run[-1].output)
                else:
                    rest.append(run)
            if len(rest) == len(pending):  # pragma: no cover - the ONNX graph is a DAG
                raise OnnxImportError("internal error: cyclic dependencies between chains")
            pending = rest
        return ordered

    def chain_text(self, run: list[Layer], out_names: dict[str, str] | None) -> str:
        first = run[0]
        if first.op in ("add", "sub", "mul") and len(first.inputs) == 2:
            sym = {"add": "+", "sub": "-", "mul": "*"}[first.op]
            head = f"{self.var[first.inputs[0]]} {sym} {self.var[first.inputs[1]]}"
            stages = []
        else:
            head = self.var[first.inputs[0]]
            stages = [_call(first, [self.var[x] for x in first.inputs[1:]])]
        for layer in run[1:]:
            stages.append(_call(layer, [self.var[x] for x in layer.inputs[1:]]))
        end = run[-1].output
        if out_names is not None:
            stages += [f"output {out_names[o]}" for o in self.outputs.get(end, [])]
        target = f"{self.var[end]} = " if end in self.var else ""
        one_line = target + " -> ".join([head] + stages)
        if len(one_line) <= 100 or not stages:
            return one_line
        # Long chains: one stage per line, the arrows under the first one.
        indent = " " * (len(target) + len(head) + 1)
        return target + head + " -> " + stages[0] + "".join(f"\n{indent}-> {s}"
                                                          for s in stages[1:])
