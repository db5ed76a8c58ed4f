"""Syntax tree -> IR graph: evaluates a network definition.

Values during evaluation are numbers, bare words (`same`, `bilinear`), tuples, tensors (graph
nodes), blocks and shared instances. Layers get readable names: `conv1`, `conv2`, ... per scope,
block instances `basic1.conv1`, or the name given with `as`. Parameters are named after their
layer (`basic1.conv1.weight`); a `shared` instance creates its parameters once and reuses them
every time it is applied (siamese towers).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.ir import Graph, Span, TensorType
from ..compiler.ops import REQUIRED, AttrError, OpDef, ParamSpec, ShapeError, all_names, get_op
from . import ast
from .errors import DslError
from .parser import parse

MAX_REPEAT = 10_000


@dataclass(frozen=True)
class Tensor:
    node: int


@dataclass(frozen=True)
class Word:
    """A bare name that is not bound: an attribute word such as `same`, or a mistake."""

    name: str
    span: Span


@dataclass
class Block:
    defn: ast.BlockDef
    module: ModuleEnv


@dataclass
class SharedInstance:
    name: str
    call: ast.Call
    env: dict[str, Any]
    param_prefix: str
    uses: int = 0


@dataclass
class ModuleEnv:
    file: str
    names: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scope:
    node_prefix: str = ""
    param_prefix: str = ""
    counters: Counter = field(default_factory=Counter)
    labels: set[str] = field(default_factory=set)

    def layer_name(self, base: str, label: str | None, span: Span) -> str:
        if label is not None:
            if label in self.labels:
                raise DslError(f"the name {label!r} is already used for a layer here", span)
            self.labels.add(label)
            return label
        while True:
            self.counters[base] += 1
            name = f"{base}{self.counters[base]}"
            if name not in self.labels:
                self.labels.add(name)
                return name

    def child(self, name: str, param_name: str | None = None) -> Scope:
        return Scope(self.node_prefix + name + ".",
                     self.param_prefix + (param_name or name) + ".")


@dataclass
class Frame:
    """One level of evaluation: local names and the scope layers are named in."""

    local: dict[str, Any]
    module: ModuleEnv
    scope: Scope
    returned: Any = None

    def lookup(self, name: str) -> Any:
        if name in self.local:
            return self.local[name]
        return self.module.names.get(name)


class Builder:
    def __init__(self, file: str, overrides: dict[str, Any] | None = None,
                 search_dirs: tuple[Path, ...] = ()):
        self.graph = Graph()
        self.file = file
        self.overrides = dict(overrides or {})
        self.search_dirs = search_dirs
        self.params: dict[str, int] = {}
        self.block_stack: list[tuple[str, Span]] = []
        self.importing: list[str] = []

    # -- entry --------------------------------------------------------------------------------
    def build_module(self, module: ast.Module) -> Graph:
        env = ModuleEnv(module.file)
        frame = Frame(env.names, env, Scope())
        header_seen = False
        unused = set(self.overrides)
        for item in module.items:
            if isinstance(item, ast.Header):
                if header_seen:
                    raise DslError("a second `network` header", item.span,
                                   "a file describes one network")
                header_seen = True
                self.graph.name = item.name
                for p in item.params:
                    if p.name in self.overrides:
                        env.names[p.name] = self.overrides[p.name]
                        unused.discard(p.name)
                    elif p.default is None:
                        raise DslError(f"network parameter {p.name!r} has no default and no "
                                       "value was given", p.span)
                    else:
                        env.names[p.name] = self.eval(p.default, frame)
            else:
                self.exec_stmt(item, frame, top_level=True)
        if unused:
            raise DslError(f"unknown network parameter(s): {', '.join(sorted(unused))}",
                           None, "declare them in the header: network name(param = default)")
        if not self.graph.outputs:
            raise DslError("the network has no output", _file_start(module.file),
                           "end a chain with `-> output NAME`")
        return self.graph

    # -- statements ---------------------------------------------------------------------------
    def exec_stmt(self, stmt: ast.Stmt, frame: Frame, top_level: bool = False) -> None:
        if isinstance(stmt, ast.InputDecl):
            if not top_level:
                raise DslError("inputs are declared at the top level, not inside a block",
                               stmt.span)
            self.declare_input(stmt, frame)
        elif isinstance(stmt, ast.Import):
            if not top_level:
                raise DslError("imports belong at the top level", stmt.span)
            self.do_import(stmt, frame.module)
        elif isinstance(stmt, ast.BlockDef):
            if stmt.name in frame.module.names or _is_op(stmt.name):
                what = "an operator" if _is_op(stmt.name) else "already defined"
                raise DslError(f"block name {stmt.name!r} is {what}", stmt.span)
            frame.module.names[stmt.name] = Block(stmt, frame.module)
        elif isinstance(stmt, ast.Assign):
            if stmt.name == "in":
                raise DslError("`in` is the block's input and cannot be reassigned", stmt.span)
            frame.local[stmt.name] = self.eval_chain(stmt.value, frame)
        elif isinstance(stmt, ast.Shared):
            self.declare_shared(stmt, frame)
        elif isinstance(stmt, ast.OutputStmt):
            value = self.expect_tensor(self.eval_chain(stmt.value, frame), stmt.value.span)
            self.add_output(stmt.name, value, stmt.span)
        elif isinstance(stmt, ast.ChainStmt):
            if not any(isinstance(s, ast.OutputStage) for s in stmt.value.stages):
                raise DslError("this chain's result is never used", stmt.span,
                               "assign it (`y = ...`), end it with `-> output NAME`, or return "
                               "it from a block")
            self.eval_chain(stmt.value, frame)
        elif isinstance(stmt, ast.Return):
            if top_level:
                raise DslError("`return` is only valid inside a block", stmt.span,
                               "at the top level, end the chain with `-> output NAME`")
            frame.returned = (self.eval_chain(stmt.value, frame), stmt.span)
        elif isinstance(stmt, ast.Header):
            raise DslError("`network` header inside a block", stmt.span)
        else:  # pragma: no cover - the grammar has no other statements
            raise DslError(f"unsupported statement {type(stmt).__name__}", stmt.span)

    def declare_input(self, stmt: ast.InputDecl, frame: Frame) -> None:
        if stmt.name in self.graph.inputs or frame.lookup(stmt.name) is not None:
            raise DslError(f"{stmt.name!r} is already defined", stmt.span)
        dims = []
        for d in stmt.dims:
            v = self.eval(d, frame)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DslError(f"input dimensions must be positive integers, got {_show(v)}",
                               d.span, "write channels x height x width, e.g. 3 x 224 x 224")
            dims.append(v)
        if len(dims) not in (1, 3):
            raise DslError(f"an input is channels x height x width (or a feature count), got "
                           f"{len(dims)} dimensions", stmt.span)
        node = self.graph.add("input", attrs={"shape": tuple(dims)},
                              type=TensorType(tuple(dims)), name=stmt.name, span=stmt.span)
        self.graph.inputs[stmt.name] = node.id
        frame.local[stmt.name] = Tensor(node.id)

    def declare_shared(self, stmt: ast.Shared, frame: Frame) -> None:
        target = frame.lookup(stmt.call.name)
        if not isinstance(target, Block) and not _is_op(stmt.call.name):
            raise self.unknown_layer(stmt.call, frame)
        if stmt.name in frame.local:
            raise DslError(f"{stmt.name!r} is already defined", stmt.span)
        frame.local[stmt.name] = SharedInstance(stmt.name, stmt.call, frame.local,
                                                frame.scope.param_prefix + stmt.name + ".")

    def add_output(self, name: str, value: Tensor, span: Span) -> None:
        if name in self.graph.outputs:
            raise DslError(f"output {name!r} is declared twice", span)
        self.graph.outputs[name] = value.node

    def do_import(self, stmt: ast.Import, env: ModuleEnv) -> None:
        path = self.resolve_import(stmt.path, env.file, stmt.span)
        key = str(path)
        if key in self.importing:
            raise DslError(f"import cycle: {' -> '.join(self.importing + [key])}", stmt.span)
        module = parse(path.read_text(), str(path))
        sub = ModuleEnv(str(path))
        self.importing.append(key)
        try:
            sub_frame = Frame(sub.names, sub, Scope())
            for item in module.items:
                if isinstance(item, (ast.BlockDef, ast.Import)):
                    self.exec_stmt(item, sub_frame, top_level=True)
        finally:
            self.importing.pop()
        wanted = stmt.names if stmt.names is not None else [
            n for n, v in sub.names.items() if isinstance(v, Block)]
        for name in wanted:
            value = sub.names.get(name)
            if not isinstance(value, Block):
                blocks = [n for n, v in sub.names.items() if isinstance(v, Block)]
                raise DslError(f"{path.name} defines no block {name!r}", stmt.span,
                               f"it defines: {', '.join(blocks) or 'no blocks'}")
            if name in env.names:
                raise DslError(f"imported block {name!r} clashes with an existing name",
                               stmt.span)
            env.names[name] = value

    def resolve_import(self, rel: str, importer: str, span: Span) -> Path:
        candidates = []
        if importer and not importer.startswith("<"):
            candidates.append(Path(importer).parent / rel)
        candidates += [Path(rel)] + [d / rel for d in self.search_dirs]
        for c in candidates:
            if c.is_file():
                return c.resolve()
        raise DslError(f"cannot find {rel!r} to import", span,
                       "paths are relative to the importing file")

    # -- chains -------------------------------------------------------------------------------
    def eval_chain(self, chain: ast.Chain, frame: Frame) -> Any:
        value = self.eval(chain.head, frame)
        for stage in chain.stages:
            value = self.eval_stage(stage, value, frame, chain.head.span)
        return value

    def eval_stage(self, stage: ast.Stage, value: Any, frame: Frame, head: Span) -> Any:
        if isinstance(stage, ast.OutputStage):
            self.add_output(stage.name, self.expect_tensor(value, head), stage.span)
            return value
        value = self.expect_tensor(value, head)
        if isinstance(stage, ast.CallStage):
            return self.apply(stage.call, frame, value)
        times = self.repeat_count(stage.times, frame) if stage.times is not None else 1
        for _ in range(times):
            if isinstance(stage, ast.RepeatStage):
                value = self.apply(stage.call, frame, value)
            else:
                for inner in stage.stages:
                    value = self.eval_stage(inner, value, frame, head)
        return value

    def repeat_count(self, expr: ast.Expr, frame: Frame) -> int:
        times = self.eval(expr, frame)
        if not isinstance(times, int) or isinstance(times, bool) or not 1 <= times <= MAX_REPEAT:
            raise DslError(f"repetition count must be an integer from 1 to {MAX_REPEAT}, got "
                           f"{_show(times)}", expr.span)
        return times

    # -- expressions --------------------------------------------------------------------------
    def eval(self, expr: ast.Expr, frame: Frame) -> Any:
        if isinstance(expr, ast.Num):
            return expr.value
        if isinstance(expr, ast.Bool):
            return expr.value
        if isinstance(expr, ast.Chain):
            return self.eval_chain(expr, frame)
        if isinstance(expr, ast.Seq):
            return tuple(self.eval(i, frame) for i in expr.items)
        if isinstance(expr, ast.Neg):
            v = self.eval(expr.operand, frame)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v
            raise DslError(f"cannot negate {_show(v)}", expr.span)
        if isinstance(expr, ast.BinOp):
            return self.eval_binop(expr, frame)
        if isinstance(expr, ast.Call):
            return self.eval_call(expr, frame)
        raise DslError(f"unsupported expression {type(expr).__name__}", expr.span)

    def eval_binop(self, expr: ast.BinOp, frame: Frame) -> Any:
        a, b = self.eval(expr.left, frame), self.eval(expr.right, frame)
        for v, e in ((a, expr.left), (b, expr.right)):
            if isinstance(v, Word):
                raise self.undefined(v, frame)
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or expr.op not in "+-*":
                raise DslError(
                    f"cannot apply {expr.op!r} to {_show(a)} and {_show(b)}", expr.span,
                    "tensors combine with + (residual add), - and * (elementwise product); "
                    "repeat a block in a chain with `-> block(...) * 2`")
            op = {"+": "add", "-": "sub", "*": "mul"}[expr.op]
            return self.make_node(get_op(op), [a, b], {}, expr.span, None, frame.scope)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            raise DslError(f"cannot apply {expr.op!r} to {_show(a)} and {_show(b)}", expr.span)
        if expr.op in ("//", "%", "/") and b == 0:
            raise DslError("division by zero", expr.right.span)
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                "//": lambda: a // b, "/": lambda: a / b, "%": lambda: a % b}[expr.op]()

    def eval_call(self, call: ast.Call, frame: Frame) -> Any:
        if call.args is None and call.label is None:
            value = frame.lookup(call.name)
            if value is not None and not isinstance(value, (Block, SharedInstance)):
                return value
            if value is None and not _is_op(call.name):
                return Word(call.name, call.span)
            raise DslError(f"{call.name!r} is a layer and needs an input", call.span,
                           f"write `x -> {call.name}` or `{call.name}(x)`")
        return self.apply(call, frame, None)

    def expect_tensor(self, value: Any, span: Span) -> Tensor:
        if isinstance(value, Tensor):
            return value
        if isinstance(value, Word):
            raise self.undefined(value, None)
        raise DslError(f"expected a tensor here, got {_show(value)}", span)

    def undefined(self, word: Word, frame: Frame | None) -> DslError:
        names = list(self.graph.inputs)
        if frame is not None:
            names += list(frame.local) + list(frame.module.names)
        close = difflib.get_close_matches(word.name, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else ""
        return DslError(f"undefined name {word.name!r}", word.span, hint)

    def unknown_layer(self, call: ast.Call, frame: Frame) -> DslError:
        blocks = [n for n, v in {**frame.module.names, **frame.local}.items()
                  if isinstance(v, (Block, SharedInstance))]
        close = difflib.get_close_matches(call.name, blocks + all_names(), n=1, cutoff=0.5)
        hint = (f"did you mean {close[0]!r}?" if close else
                "valid layers: " + ", ".join(n for n in all_names()
                                             if n not in ("input", "param")))
        value = frame.lookup(call.name)
        if isinstance(value, Tensor):
            return DslError(f"{call.name!r} is a tensor, not a layer", call.name_span,
                            "combine tensors with +, * or concat(a, b)")
        return DslError(f"unknown layer {call.name!r}", call.name_span, hint)

    # -- applying layers, blocks and shared instances ------------------------------------------
    def apply(self, call: ast.Call, frame: Frame, piped: Tensor | None) -> Any:
        target = frame.lookup(call.name)
        if isinstance(target, SharedInstance):
            if call.args:
                raise DslError(f"shared instance {call.name!r} takes no arguments; they were "
                               "given where it was declared", call.span)
            return self.apply_shared(target, call, frame, piped)
        if isinstance(target, Block):
            return self.call_block(target, call, frame, piped, frame.scope)
        if _is_op(call.name) and not isinstance(target, Tensor):
            return self.apply_op(get_op(call.name), call, frame, piped, frame.scope)
        raise self.unknown_layer(call, frame)

    def eval_args(self, call: ast.Call, frame: Frame) -> tuple[list[tuple[Any, ast.Arg]],
                                                                dict[str, tuple[Any, ast.Arg]]]:
        positional: list[tuple[Any, ast.Arg]] = []
        keywords: dict[str, tuple[Any, ast.Arg]] = {}
        for arg in call.args or ():
            if arg.keyword is None:
                if keywords:
                    raise DslError("positional argument after a keyword argument", arg.span)
                positional.append((self.eval(arg.value, frame), arg))
            else:
                if arg.keyword in keywords:
                    raise DslError(f"argument {arg.keyword!r} given twice", arg.keyword_span)
                keywords[arg.keyword] = (self.eval(arg.value, frame), arg)
        return positional, keywords

    def apply_op(self, op: OpDef, call: ast.Call, frame: Frame, piped: Tensor | None,
                 scope: Scope, param_scope: Scope | None = None) -> Tensor:
        positional, keywords = self.eval_args(call, frame)
        inputs: list[Tensor] = [piped] if piped is not None else []
        while positional and isinstance(positional[0][0], Tensor):
            inputs.append(positional.pop(0)[0])
        want = op.arity
        if want is None:
            if len(inputs) < 1 or (op.name in ("add", "mul") and len(inputs) < 2):
                need = "two or more" if op.name in ("add", "mul") else "one or more"
                raise DslError(f"{op.name} takes {need} tensors, got {len(inputs)}", call.span)
        elif len(inputs) != want:
            how = "from the chain (`x -> " + op.name + "(...)`)" if want == 1 else ""
            raise DslError(f"{op.name} takes {want} input tensor{'s' * (want != 1)}, got "
                           f"{len(inputs)}", call.span, f"give it its input {how}".strip())
        raw, spans = self.bind_attrs(op, call, positional, keywords, frame)
        return self.make_node(op, inputs, raw, call.span, call.label, scope, spans, param_scope)

    def bind_attrs(self, op: OpDef, call: ast.Call, positional, keywords, frame: Frame):
        raw: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        sig = op.signature
        if len(positional) > len(sig):
            extra = positional[len(sig)][1]
            names = ", ".join(a.name for a in sig) or "no arguments"
            raise DslError(f"{op.name} takes at most {len(sig)} argument"
                           f"{'s' * (len(sig) != 1)} ({names}), got {len(positional)}",
                           extra.span)
        for (value, arg), attr in zip(positional, sig):
            raw[attr.name] = value
            spans[attr.name] = arg.span
        for key, (value, arg) in keywords.items():
            if op.attr(key) is None:
                valid = [a.name for a in sig]
                close = difflib.get_close_matches(key, valid, n=1)
                hint = (f"did you mean {close[0]!r}? " if close else "") + \
                    (f"{op.name} takes: {', '.join(valid)}" if valid else
                     f"{op.name} takes no arguments")
                raise DslError(f"{op.name} has no argument {key!r}", arg.keyword_span, hint)
            if key in raw:
                raise DslError(f"argument {key!r} given twice", arg.keyword_span)
            raw[key] = value
            spans[key] = arg.span
        for attr in sig:
            if attr.name not in raw:
                if attr.default is REQUIRED:
                    raise DslError(f"{op.name} needs {attr.name!r}"
                                   f"{' (' + attr.doc + ')' if attr.doc else ''}", call.span,
                                   f"e.g. {_example(op)}")
                raw[attr.name] = attr.default
        for key, value in list(raw.items()):
            if isinstance(value, Word):
                attr = op.attr(key)
                if attr is not None and attr.kind in ("int", "float", "bool", "ints", "tensor",
                                                      "shape") and not attr.choices:
                    raise self.undefined(value, frame)
                raw[key] = value.name
            elif isinstance(value, Tensor):
                raise DslError(f"{op.name}: argument {key!r} must not be a tensor",
                               spans[key])
            elif isinstance(value, (Block, SharedInstance)):
                raise DslError(f"{op.name}: argument {key!r} must be a value, not a layer",
                               spans[key])
        return raw, spans

    def make_node(self, op: OpDef, inputs: list[Tensor], raw: dict[str, Any], span: Span,
                  label: str | None, scope: Scope, spans: dict[str, Span] | None = None,
                  param_scope: Scope | None = None) -> Tensor:
        spans = spans or {}
        in_types = [self.graph.node(t.node).type for t in inputs]
        literals = {k: raw[k] for k in ("weights", "bias") if k in raw and
                    isinstance(raw[k], tuple)}
        for k, v in literals.items():
            raw[k] = _literal_array(v, spans.get(k, span), k)
        try:
            attrs = op.canonicalize(raw, in_types) if op.canonicalize else dict(raw)
            specs = op.param_specs(attrs, in_types)
        except AttrError as e:
            raise DslError(f"{op.name}: {e}", spans.get(e.attr or "", span)) from None
        except ShapeError as e:
            raise DslError(str(e), span, _shape_hint(in_types)) from None
        name = scope.layer_name(op.name, label, span)
        pscope = param_scope or scope
        param_ids = [self.make_param(pscope.param_prefix + name, spec, raw, spans, span)
                     for spec in specs]
        try:
            node = self.graph.add(op.name, [t.node for t in inputs] + param_ids, attrs,
                                  name=scope.node_prefix + name, span=span)
        except ShapeError as e:
            raise DslError(str(e), span, _shape_hint(in_types)) from None
        return Tensor(node.id)

    def make_param(self, layer: str, spec: ParamSpec, raw: dict[str, Any],
                   spans: dict[str, Span], span: Span) -> int:
        full = f"{layer}.{spec.suffix}"
        if full in self.params:  # a shared instance applied again: reuse its parameters
            existing = self.graph.node(self.params[full])
            if existing.type.shape != spec.shape:
                raise DslError(f"shared layer {layer!r} is applied to an input that needs "
                               f"{spec.suffix} {_dims(spec.shape)}, but its first use made it "
                               f"{existing.type}", span,
                               "a shared instance must see inputs of the same shape")
            return existing.id
        attrs: dict[str, Any] = {"init": spec.init, "trainable": spec.trainable,
                                 "fan_in": spec.fan_in, "fan_out": spec.fan_out}
        literal_key = {"weight": "weights", "bias": "bias"}.get(spec.suffix)
        value = raw.get(literal_key) if literal_key else None
        if isinstance(value, np.ndarray):
            need = int(np.prod(spec.shape))
            if value.size != need:
                raise DslError(f"{literal_key} has {value.size} values; {spec.suffix} "
                               f"{_dims(spec.shape)} needs {need}",
                               spans.get(literal_key, span))
            attrs.update(init="literal", trainable=False,
                         value=value.reshape(spec.shape).astype(np.float32))
        node = self.graph.add("param", attrs=attrs, type=TensorType(spec.shape), name=full,
                              span=span)
        self.params[full] = node.id
        return node.id

    def apply_shared(self, inst: SharedInstance, call: ast.Call, frame: Frame,
                     piped: Tensor | None) -> Any:
        inst.uses += 1
        node_name = inst.name if inst.uses == 1 else f"{inst.name}@{inst.uses}"
        target_frame = Frame(inst.env, frame.module, frame.scope)
        # Layers inside are named per use (tower, tower@2) but parameters once (tower.*).
        node_scope = frame.scope.child(node_name, inst.name)
        param_scope = Scope(inst.param_prefix, inst.param_prefix)
        target = target_frame.lookup(inst.call.name)
        if isinstance(target, Block):
            return self.call_block(target, inst.call, target_frame, piped, frame.scope,
                                   fixed_scope=(node_scope, inst.param_prefix))
        op = get_op(inst.call.name)
        label_call = ast.Call(inst.call.span, inst.call.name, inst.call.name_span,
                              inst.call.args, None)
        return self.apply_op(op, label_call, target_frame, piped,
                             Scope(frame.scope.node_prefix + node_name + "."), param_scope)

    def call_block(self, block: Block, call: ast.Call, frame: Frame, piped: Tensor | None,
                   scope: Scope, fixed_scope: tuple[Scope, str] | None = None) -> Any:
        defn = block.defn
        for name, where in self.block_stack:
            if name == defn.name:
                raise DslError(f"block {defn.name!r} calls itself", call.span,
                               "blocks cannot be recursive; repeat them with `* n` instead",
                               [f"{defn.name!r} was entered at {where}"])
        positional, keywords = self.eval_args(call, frame)
        local: dict[str, Any] = {}
        if piped is None:
            if not positional or not isinstance(positional[0][0], Tensor):
                raise DslError(f"block {defn.name!r} needs an input tensor", call.span,
                               f"write `x -> {defn.name}(...)` or `{defn.name}(x, ...)`")
            piped = positional.pop(0)[0]
        local["in"] = piped
        params = {p.name: p for p in defn.params}
        if len(positional) > len(defn.params):
            raise DslError(f"block {defn.name!r} takes {len(defn.params)} argument"
                           f"{'s' * (len(defn.params) != 1)} "
                           f"({', '.join(params) or 'none'}), got {len(positional)}",
                           positional[len(defn.params)][1].span)
        for (value, _arg), p in zip(positional, defn.params):
            local[p.name] = value
        for key, (value, arg) in keywords.items():
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=1)
                raise DslError(f"block {defn.name!r} has no parameter {key!r}",
                               arg.keyword_span,
                               f"did you mean {close[0]!r}?" if close else
                               f"its parameters: {', '.join(params) or 'none'}")
            if key in local:
                raise DslError(f"parameter {key!r} given twice", arg.keyword_span)
            local[key] = value
        if fixed_scope is not None:
            inner_scope = fixed_scope[0]
            inner_scope = Scope(inner_scope.node_prefix, fixed_scope[1])
        else:
            name = scope.layer_name(defn.name, call.label, call.span)
            inner_scope = scope.child(name)
        inner = Frame(local, block.module, inner_scope)
        for p in defn.params:
            if p.name not in local:
                if p.default is None:
                    raise DslError(f"block {defn.name!r} needs its parameter {p.name!r}",
                                   call.span, f"declared at {p.span}")
                local[p.name] = self.eval(p.default, inner)
        for key, value in local.items():
            if isinstance(value, Word):
                raise self.undefined(value, frame)
        with self._entered(defn.name, call.span):
            for stmt in defn.body:
                try:
                    self.exec_stmt(stmt, inner)
                except DslError as e:
                    if not any(n.startswith(f"in block {defn.name!r}") for n in e.notes):
                        e.notes.append(f"in block {defn.name!r} called at {call.span}")
                    raise
                if inner.returned is not None:
                    break
        if inner.returned is None:
            raise DslError(f"block {defn.name!r} does not return a value", defn.span,
                           "end it with `return <chain>`")
        return inner.returned[0]

    @contextmanager
    def _entered(self, name: str, span: Span) -> Iterator[None]:
        self.block_stack.append((name, span))
        try:
            yield
        finally:
            self.block_stack.pop()


# -- helpers ----------------------------------------------------------------------------------

def _is_op(name: str) -> bool:
    return name in all_names() and name not in ("input", "param")


def _show(v: Any) -> str:
    if isinstance(v, Tensor):
        return "a tensor"
    if isinstance(v, Word):
        return f"the name {v.name!r}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (Block, SharedInstance)):
        return "a layer"
    return repr(v) if isinstance(v, str) else str(v)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _example(op: OpDef) -> str:
    examples = {"conv": "conv(64, 3, stride=1, pad=same)", "dense": "dense(1000)",
                "maxpool": "maxpool(2)", "avgpool": "avgpool(2)",
                "conv_transpose": "conv_transpose(64, 2, stride=2)"}
    return examples.get(op.name, f"{op.name}(" + ", ".join(a.name for a in op.signature
                                                            if a.default is REQUIRED) + ")")


def _shape_hint(in_types: list[TensorType]) -> str:
    if not in_types:
        return ""
    return "input shape" + ("s " if len(in_types) > 1 else " ") + \
        ", ".join(str(t) for t in in_types)


def _literal_array(value: tuple, span: Span, key: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise DslError(f"{key} must be a nested list of numbers with rows of equal length",
                       span) from None
    if arr.dtype == object:
        raise DslError(f"{key} must be a nested list of numbers", span)
    return arr


def _file_start(file: str) -> Span:
    return Span(file, 1, 1, 1, 2)


ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def load_network(source_or_path: str | Path, **overrides: Any) -> Graph:
    """Build the IR for a zoo name, a path to a .cnn file, or DSL source text."""
    text, file = read_source(source_or_path)
    module = parse(text, file)
    builder = Builder(file, overrides, search_dirs=(ZOO_DIR,))
    graph = builder.build_module(module)
    graph.verify()
    return graph


def read_source(source_or_path: str | Path) -> tuple[str, str]:
    """(text, file name) for a zoo name, a file path, or source text."""
    s = str(source_or_path)
    if "\n" in s or "->" in s:
        return s, "<string>"
    path = Path(s)
    if path.is_file():
        return path.read_text(), str(path)
    zoo = ZOO_DIR / f"{s}.cnn"
    if zoo.is_file():
        return zoo.read_text(), str(zoo)
    names = sorted(p.stem for p in ZOO_DIR.glob("*.cnn"))
    close = difflib.get_close_matches(s, names, n=1)
    raise DslError(f"no file {s!r} and no zoo network of that name",
                   hint=(f"did you mean {close[0]!r}? " if close else "") +
                   f"zoo: {', '.join(names) or '(empty)'}")
