"""Syntax tree -> IR graph: evaluates a network definition.

Values during evaluation are numbers, bare words (`same`, `bilinear`), tuples, tensors (graph
nodes), blocks and shared instances. Layers get readable names: `conv1`, `conv2`, ... per scope,
block instances `basic1.conv1`, or the name given with `as`. Parameters are named after their
layer (`basic1.conv1.weight`); a `shared` instance creates its parameters once and reuses them
every time it is applied (siamese towers): `shared fc = dense(10)` owns `fc.weight`, and
`shared tower = embed(128)` owns `tower.conv1.weight`, ...
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.ir import Graph, Span, TensorType
from ..compiler.ops import (
    REQUIRED,
    Attr,
    AttrError,
    OpDef,
    ParamSpec,
    ShapeError,
    all_names,
    get_op,
    infer_node,
)
from ..zoo import ZOO_DIR
from ..zoo import path as zoo_path
from . import ast
from .errors import DslError, LimitError
from .limits import (
    MAX_DEPTH,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_INT,
    MAX_NODES,
    MAX_REPEAT,
    MAX_STEPS,
)
from .parser import parse
from .source import TEXT_SOURCE, read_file, read_source

# Attributes that take literal (fixed) parameter values, and the parameter each one fills.
LITERAL_PARAMS = {"weights": "weight", "bias": "bias"}


# -- values -----------------------------------------------------------------------------------

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
    """`shared name = layer(args)`: one set of parameters, applied any number of times."""

    name: str
    call: ast.Call  # the declaration's layer or block call
    env: dict[str, Any]  # the names visible where it was declared
    param_base: str  # `tower` (or `basic1.tower` when declared inside a block instance)
    params: dict[str, int] = field(default_factory=dict)  # parameter name -> node id
    uses: int = 0
    first_input: tuple[TensorType, Span] | None = None


@dataclass
class ModuleEnv:
    file: str
    names: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scope:
    """Where layers are named: `basic1.` for nodes and parameters inside block instance 1."""

    node_prefix: str = ""
    param_prefix: str = ""
    counters: Counter = field(default_factory=Counter)
    labels: set[str] = field(default_factory=set)

    def layer_name(self, base: str, label: str | None, span: Span) -> str:
        """The `as` label, or `base` with the next free number (`conv3`, `stage2_1`)."""
        if label is not None:
            if label in self.labels:
                raise DslError(f"the name {label!r} is already used for a layer here", span,
                               "give each layer in a scope its own `as` name")
            self.labels.add(label)
            return label
        sep = "_" if base[-1:].isdigit() else ""  # a block `b2` numbers `b2_1`, not `b21`
        while True:
            self.counters[base] += 1
            name = f"{base}{sep}{self.counters[base]}"
            if name not in self.labels:
                self.labels.add(name)
                return name

    def child(self, name: str) -> Scope:
        return Scope(self.node_prefix + name + ".", self.param_prefix + name + ".")


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

    def visible(self) -> list[str]:
        return list(self.local) + [n for n in self.module.names if n not in self.local]


@dataclass
class LayerSite:
    """How a new layer node is named and where it sits in the source."""

    span: Span  # the call (for shape errors and the node's span)
    node_name: str
    param_base: str
    shared_params: dict[str, int] | None = None  # a shared instance's parameters, to reuse


# -- the builder ------------------------------------------------------------------------------

class Builder:
    def __init__(self, file: str, overrides: dict[str, Any] | None = None,
                 search_dirs: tuple[Path, ...] = ()):
        self.graph = Graph(type_rule=infer_node)
        self.file = file
        self.overrides = dict(overrides or {})
        self.search_dirs = search_dirs
        self.params: dict[str, int] = {}
        self.output_spans: dict[str, Span] = {}
        self.block_stack: list[tuple[str, Span]] = []
        # The parameters of the shared block instance being applied, if any (see _sharing).
        self.current_shared: dict[str, int] | None = None
        real_file = file and not file.startswith("<")
        self.importing: list[str] = [str(Path(file).resolve())] if real_file else []
        self.loaded: dict[str, ModuleEnv] = {}  # imported modules by resolved path
        self.depth = 0  # expressions, chains and block calls being evaluated, nested
        self.steps = 0  # evaluation steps so far (bounded by MAX_STEPS)

    # -- bounds -------------------------------------------------------------------------------
    def enter(self, span: Span) -> None:
        """One more evaluation step, one level deeper; a located error past a limit (deep block
        nesting and runaway repetition would otherwise recurse or run without bound)."""
        self.steps += 1
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise LimitError(f"evaluation nested too deeply: more than {MAX_DEPTH} expressions "
                           "and block calls inside each other (the limit)", span,
                           "blocks calling blocks this deep, or deeply nested values: "
                           "flatten them into a chain")
        if self.steps > MAX_STEPS:
            raise LimitError(f"the program takes too long to evaluate: more than {MAX_STEPS:,} "
                           "steps (expressions, layers and block calls; the limit)", span,
                           "lower the repetition counts (`* n`), especially of blocks that "
                           "repeat inside repeated blocks")

    def check_node_budget(self, span: Span, adding: int = 1) -> None:
        """Refuse a network that grows past MAX_NODES before adding more."""
        if len(self.graph) + adding > MAX_NODES:
            raise LimitError(f"the network is too large: more than {MAX_NODES:,} nodes (layers, "
                           "parameters and inputs; the limit)", span,
                           "lower the repetition counts (`* n`); nested repetitions multiply")

    # -- entry --------------------------------------------------------------------------------
    def build_module(self, module: ast.Module) -> Graph:
        env = ModuleEnv(module.file)
        frame = Frame(env.names, env, Scope())
        header: ast.Header | None = None
        body_started = False  # the header may follow imports, nothing else
        for item in module.items:
            if isinstance(item, ast.Header):
                if body_started:
                    raise DslError("the `network` header must come first", item.span,
                                   "move it above the inputs and blocks (imports may precede "
                                   "it)")
                header = self.apply_header(item, header, frame)
            else:
                body_started = body_started or not isinstance(item, ast.Import)
                self.exec_stmt(item, frame, top_level=True)
        self.check_overrides(header)
        if not self.graph.outputs:
            raise DslError("the network has no output", _file_start(module.file),
                           "end a chain with `-> output NAME`, or write `output NAME = chain`")
        return self.graph

    def apply_header(self, item: ast.Header, previous: ast.Header | None,
                     frame: Frame) -> ast.Header:
        """`network name(p = default, ...)`: binds the parameters, overridden by the caller's."""
        if previous is not None:
            raise DslError("a second `network` header", item.span,
                           "a file describes one network", [f"the first is at {previous.span}"])
        self.graph.name = item.name
        for p in item.params:
            if p.name in frame.local:
                raise DslError(f"network parameter {p.name!r} is declared twice", p.span)
            if p.name in self.overrides:
                frame.local[p.name] = _check_override(p, self.overrides[p.name])
            elif p.default is None:
                raise DslError(f"network parameter {p.name!r} has no default and no value was "
                               "given", p.span,
                               f"give it one: `{p.name} = ...` here, or "
                               f"load_network(..., {p.name}=...) / --param {p.name}=...")
            else:
                frame.local[p.name] = self.eval(p.default, frame)
        return item

    def check_overrides(self, header: ast.Header | None) -> None:
        declared = [p.name for p in header.params] if header else []
        unknown = sorted(set(self.overrides) - set(declared))
        if not unknown:
            return
        close = difflib.get_close_matches(unknown[0], declared, n=1)
        what = (f"{self.graph.name} takes: {', '.join(declared)}" if declared else
                "the network declares no parameters: network name(param = default)")
        raise DslError(f"unknown network parameter{'s' * (len(unknown) > 1)}: "
                       f"{', '.join(unknown)}", _header_span(header),
                       (f"did you mean {close[0]!r}? " if close else "") + what)

    # -- statements ---------------------------------------------------------------------------
    def exec_stmt(self, stmt: ast.Stmt, frame: Frame, top_level: bool = False) -> None:
        handler = getattr(self, f"stmt_{type(stmt).__name__.lower()}", None)
        if handler is None:  # pragma: no cover - the grammar has no other statements
            raise DslError(f"unsupported statement {type(stmt).__name__}", stmt.span)
        handler(stmt, frame, top_level)

    def stmt_inputdecl(self, stmt: ast.InputDecl, frame: Frame, top_level: bool) -> None:
        if not top_level:
            raise DslError("inputs are declared at the top level, not inside a block", stmt.span)
        if stmt.name in self.graph.inputs or frame.lookup(stmt.name) is not None:
            raise DslError(f"{stmt.name!r} is already defined", stmt.span)
        dims = tuple(self.input_dim(d, frame) for d in stmt.dims)
        if len(dims) not in (1, 2, 3):  # rows x columns: boxes x 4, the inputs of nms
            raise DslError(f"an input is channels x height x width, rows x columns (boxes) or "
                           f"a feature count, got {len(dims)} dimensions", stmt.span,
                           "e.g. `input image: 3 x 224 x 224`, `input boxes: 100 x 4` or "
                           "`input features: 128`")
        _check_elements(f"input {stmt.name!r}", dims, stmt.span)
        self.check_node_budget(stmt.span)
        node = self.graph.add("input", attrs={"shape": dims}, type=TensorType(dims),
                              name=stmt.name, span=stmt.span)
        self.graph.inputs[stmt.name] = node.id
        frame.local[stmt.name] = Tensor(node.id)

    def input_dim(self, expr: ast.Expr, frame: Frame) -> int:
        v = self.eval(expr, frame)
        if isinstance(v, Word):
            raise self.undefined(v, frame)
        if not _is_int(v) or v < 1:
            raise DslError(f"input dimensions must be positive integers, got {_show(v)}",
                           expr.span, "write channels x height x width, e.g. 3 x 224 x 224")
        if v > MAX_DIM:
            raise LimitError(f"input dimension {v:,} is larger than the limit of {MAX_DIM:,} "
                           "(2^20) per dimension", expr.span)
        return v

    def stmt_import(self, stmt: ast.Import, frame: Frame, top_level: bool) -> None:
        if not top_level:
            raise DslError("imports belong at the top level", stmt.span)
        self.do_import(stmt, frame.module)

    def stmt_blockdef(self, stmt: ast.BlockDef, frame: Frame, top_level: bool) -> None:
        if not top_level:
            raise DslError("blocks are defined at the top level, not inside a block", stmt.span)
        if stmt.name in frame.module.names or _is_op(stmt.name):
            what = "the name of a layer" if _is_op(stmt.name) else "already defined"
            raise DslError(f"block name {stmt.name!r} is {what}", stmt.span,
                           "choose another name")
        seen: set[str] = set()
        for p in stmt.params:
            if p.name in seen or p.name == "in":
                raise DslError(f"block parameter {p.name!r} is "
                               f"{'reserved for the input' if p.name == 'in' else 'repeated'}",
                               p.span)
            seen.add(p.name)
        frame.module.names[stmt.name] = Block(stmt, frame.module)

    def stmt_assign(self, stmt: ast.Assign, frame: Frame, top_level: bool) -> None:
        if stmt.name == "in":
            raise DslError("`in` is the block's input and cannot be reassigned", stmt.span)
        if stmt.name in self.graph.inputs and top_level:
            raise DslError(f"{stmt.name!r} is a network input and cannot be reassigned",
                           stmt.span, "choose another name")
        frame.local[stmt.name] = self.eval_chain(stmt.value, frame)

    def stmt_shared(self, stmt: ast.Shared, frame: Frame, top_level: bool) -> None:
        call = stmt.call
        target = frame.lookup(call.name)
        if isinstance(target, SharedInstance):
            raise DslError(f"{call.name!r} is already a shared instance", call.name_span,
                           f"apply it directly: `x -> {call.name}`")
        if not isinstance(target, Block) and not _is_op(call.name):
            raise self.unknown_layer(call, frame)
        if stmt.name in frame.local:
            raise DslError(f"{stmt.name!r} is already defined", stmt.span)
        if call.label is not None:
            raise DslError("a shared instance is named by its declaration; drop the `as`",
                           call.span)
        frame.scope.labels.add(stmt.name)  # no other layer in this scope may take its name
        frame.local[stmt.name] = SharedInstance(stmt.name, call, frame.local,
                                                frame.scope.param_prefix + stmt.name)

    def stmt_outputstmt(self, stmt: ast.OutputStmt, frame: Frame, top_level: bool) -> None:
        value = self.expect_tensor(self.eval_chain(stmt.value, frame), stmt.value.span, frame)
        self.add_output(stmt.name, value, stmt.span)

    def stmt_chainstmt(self, stmt: ast.ChainStmt, frame: Frame, top_level: bool) -> None:
        if not any(isinstance(s, ast.OutputStage) for s in stmt.value.stages):
            raise DslError("this chain's result is never used", stmt.span,
                           "assign it (`y = ...`), end it with `-> output NAME`, or return it "
                           "from a block")
        self.eval_chain(stmt.value, frame)

    def stmt_return(self, stmt: ast.Return, frame: Frame, top_level: bool) -> None:
        if top_level:
            raise DslError("`return` is only valid inside a block", stmt.span,
                           "at the top level, end the chain with `-> output NAME`")
        frame.returned = (self.eval_chain(stmt.value, frame), stmt.span)

    def stmt_header(self, stmt: ast.Header, frame: Frame, top_level: bool) -> None:
        raise DslError("`network` header inside a block", stmt.span)

    def add_output(self, name: str, value: Tensor, span: Span) -> None:
        if name in self.graph.outputs:
            raise DslError(f"output {name!r} is declared twice", span,
                           "give each output its own name",
                           [f"the first {name!r} is at {self.output_spans[name]}"])
        self.graph.outputs[name] = value.node
        self.output_spans[name] = span

    # -- imports ------------------------------------------------------------------------------
    def do_import(self, stmt: ast.Import, env: ModuleEnv) -> None:
        """Run another file's imports and block definitions; bind the blocks asked for."""
        path = self.resolve_import(stmt.path, env.file, stmt.span)
        key = str(path)
        if key in self.importing:
            cycle = self.importing[self.importing.index(key):] + [key]
            raise DslError("import cycle: " + " -> ".join(Path(f).name for f in cycle),
                           stmt.span, "move the shared blocks into a third file that both "
                           "import")
        sub = self.load_module(path)
        available = [n for n, v in sub.names.items() if isinstance(v, Block)]
        for name in stmt.names if stmt.names is not None else available:
            value = sub.names.get(name)
            if not isinstance(value, Block):
                close = difflib.get_close_matches(name, available, n=1)
                raise DslError(f"{path.name} defines no block {name!r}", stmt.span,
                               (f"did you mean {close[0]!r}? " if close else "") +
                               f"it defines: {', '.join(available) or 'no blocks'}")
            if name in env.names and env.names[name] is not value:
                raise DslError(f"imported block {name!r} clashes with an existing name",
                               stmt.span)
            env.names[name] = value

    def load_module(self, path: Path) -> ModuleEnv:
        """A module's blocks, loaded once per build (a file imported by many files is read and
        run once, so a diamond of imports does not multiply the work)."""
        if str(path) in self.loaded:
            return self.loaded[str(path)]
        module = parse(read_file(path), str(path))
        sub = ModuleEnv(str(path))
        self.loaded[str(path)] = sub
        self.importing.append(str(path))
        try:
            frame = Frame(sub.names, sub, Scope())
            for item in module.items:
                if isinstance(item, (ast.BlockDef, ast.Import)):
                    self.exec_stmt(item, frame, top_level=True)
        finally:
            self.importing.pop()
        return sub

    def resolve_import(self, rel: str, importer: str, span: Span) -> Path:
        candidates = []
        if importer and not importer.startswith("<"):
            candidates.append(Path(importer).parent / rel)
        candidates += [Path(rel)] + [d / rel for d in self.search_dirs]
        for c in candidates:
            if c.is_file():
                return c.resolve()
        where = Path(importer).parent if importer and not importer.startswith("<") else None
        raise DslError(f"cannot find {rel!r} to import", span,
                       "paths are relative to the importing file" +
                       (f" (looked in {where}/ and the zoo)" if where else ""))

    # -- chains -------------------------------------------------------------------------------
    def eval_chain(self, chain: ast.Chain, frame: Frame) -> Any:
        self.enter(chain.span)
        try:
            value = self.eval(chain.head, frame)
            for stage in chain.stages:
                value = self.eval_stage(stage, value, frame, chain.head.span)
            return value
        finally:
            self.depth -= 1

    def eval_stage(self, stage: ast.Stage, value: Any, frame: Frame, head: Span) -> Any:
        if isinstance(stage, ast.OutputStage):
            self.add_output(stage.name, self.expect_tensor(value, head, frame), stage.span)
            return value
        value = self.expect_tensor(value, head, frame)
        if isinstance(stage, ast.CallStage):
            return self.apply(stage.call, frame, value)
        times = self.repeat_count(stage.times, frame) if stage.times is not None else 1
        for _ in range(times):
            self.steps += 1  # a repetition may add nothing (a block returning `in`)
            if isinstance(stage, ast.RepeatStage):
                value = self.apply(stage.call, frame, value)
            else:
                for inner in stage.stages:
                    value = self.eval_stage(inner, value, frame, head)
        return value

    def repeat_count(self, expr: ast.Expr, frame: Frame) -> int:
        times = self.eval(expr, frame)
        if isinstance(times, Word):
            raise self.undefined(times, frame)
        if not _is_int(times) or not 1 <= times <= MAX_REPEAT:
            raise DslError(f"repetition count must be an integer from 1 to {MAX_REPEAT}, got "
                           f"{_show(times)}", expr.span,
                           "to leave a stage out, delete it from the chain" if times == 0
                           else "")
        return times

    # -- expressions --------------------------------------------------------------------------
    def eval(self, expr: ast.Expr, frame: Frame) -> Any:
        self.enter(expr.span)
        try:
            return self.eval_expr(expr, frame)
        finally:
            self.depth -= 1

    def eval_expr(self, expr: ast.Expr, frame: Frame) -> Any:
        if isinstance(expr, (ast.Num, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.Chain):
            return self.eval_chain(expr, frame)
        if isinstance(expr, ast.Seq):
            return tuple(self.eval(i, frame) for i in expr.items)
        if isinstance(expr, ast.Neg):
            v = self.eval(expr.operand, frame)
            if isinstance(v, Word):
                raise self.undefined(v, frame)
            if _is_number(v):
                return -v
            raise DslError(f"cannot negate {_show(v)}", expr.span, "only numbers have a sign")
        if isinstance(expr, ast.BinOp):
            return self.eval_binop(expr, frame)
        if isinstance(expr, ast.Call):
            return self.eval_call(expr, frame)
        raise DslError(f"unsupported expression {type(expr).__name__}", expr.span)

    def eval_binop(self, expr: ast.BinOp, frame: Frame) -> Any:
        a, b = self.eval(expr.left, frame), self.eval(expr.right, frame)
        for v in (a, b):
            if isinstance(v, Word):
                raise self.undefined(v, frame)
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            return self.tensor_binop(expr, a, b, frame)
        if not (_is_number(a) and _is_number(b)):
            raise DslError(f"cannot apply {expr.op!r} to {_show(a)} and {_show(b)}", expr.span,
                           "arithmetic works on numbers")
        if expr.op in ("//", "%", "/") and b == 0:
            raise DslError("division by zero", expr.right.span)
        if expr.op == "*" and _is_int(a) and _is_int(b) and \
                a.bit_length() + b.bit_length() > MAX_INT.bit_length() + 1:
            raise _too_large(expr)  # before multiplying: squaring runs away fast
        try:
            value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                     "//": lambda: a // b, "/": lambda: a / b, "%": lambda: a % b}[expr.op]()
        except (OverflowError, ZeroDivisionError):
            raise _too_large(expr) from None
        if (_is_int(value) and abs(value) > MAX_INT) or \
                (isinstance(value, float) and not math.isfinite(value)):
            raise _too_large(expr)
        return value

    def tensor_binop(self, expr: ast.BinOp, a: Any, b: Any, frame: Frame) -> Tensor:
        """`a + b`, `a - b`, `a * b` of two tensors: elementwise with broadcasting."""
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or expr.op not in "+-*":
            raise DslError(
                f"cannot apply {expr.op!r} to {_show(a)} and {_show(b)}", expr.span,
                "tensors combine with + (residual add), - and * (elementwise product); "
                "repeat a block in a chain with `-> block(...) * 2`")
        op = get_op({"+": "add", "-": "sub", "*": "mul"}[expr.op])
        return self.make_node(op, [a, b], {}, {}, self.site(frame.scope, op.name, None,
                                                            expr.span))

    def eval_call(self, call: ast.Call, frame: Frame) -> Any:
        """A bare name is its value (or a Word); `name(args)` applies a layer or block."""
        if call.args is None and call.label is None:
            value = frame.lookup(call.name)
            if value is None:
                return Word(call.name, call.span)
            if isinstance(value, (Block, SharedInstance)):
                raise _needs_input(call.name, call.span)
            return value
        return self.apply(call, frame, None)

    def expect_tensor(self, value: Any, span: Span, frame: Frame | None) -> Tensor:
        if isinstance(value, Tensor):
            return value
        if isinstance(value, Word):
            raise self.undefined(value, frame)
        raise DslError(f"expected a tensor here, got {_show(value)}", span)

    def undefined(self, word: Word, frame: Frame | None) -> DslError:
        """The error for a bare name used as a value: a layer without input, or unknown."""
        if _is_op(word.name):
            return _needs_input(word.name, word.span)
        names = list(self.graph.inputs) + (frame.visible() if frame is not None else [])
        close = difflib.get_close_matches(word.name, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else ""
        if word.name == "in" and not close:
            hint = "`in` is a block's input; at the top level use an input's name"
        return DslError(f"undefined name {word.name!r}", word.span, hint)

    def unknown_layer(self, call: ast.Call, frame: Frame) -> DslError:
        value = frame.lookup(call.name)
        if isinstance(value, Tensor):
            return DslError(f"{call.name!r} is a tensor, not a layer", call.name_span,
                            "combine tensors with +, * or concat(a, b)")
        if value is not None:
            return DslError(f"{call.name!r} is {_show(value)}, not a layer", call.name_span)
        blocks = [n for n in frame.visible()
                  if isinstance(frame.lookup(n), (Block, SharedInstance))]
        layers = [n for n in all_names() if _is_op(n)]
        close = difflib.get_close_matches(call.name, blocks + layers, n=1, cutoff=0.5)
        hint = (f"did you mean {close[0]!r}?" if close else
                "valid layers: " + ", ".join(layers) +
                (f"; blocks: {', '.join(blocks)}" if blocks else ""))
        return DslError(f"unknown layer {call.name!r}", call.name_span, hint)

    # -- applying layers, blocks and shared instances ------------------------------------------
    def apply(self, call: ast.Call, frame: Frame, piped: Tensor | None) -> Any:
        target = frame.lookup(call.name)
        if isinstance(target, SharedInstance):
            return self.apply_shared(target, call, frame, piped)
        if isinstance(target, Block):
            return self.call_block(target, call, frame, piped)
        if call.name in SHAPE_BUILTINS and target is None:
            return self.shape_builtin(call, frame, piped)
        if _is_op(call.name) and target is None:
            op = get_op(call.name)
            return self.apply_op(op, call, frame, piped,
                                 self.site(frame.scope, op.name, call.label, call.span))
        raise self.unknown_layer(call, frame)

    def shape_builtin(self, call: ast.Call, frame: Frame, piped: Tensor | None) -> int:
        """`channels(x)`, `height(x)`, `width(x)`: a dimension of a tensor, as a number
        (`conv(channels(in), 3, groups=channels(in))` is a depthwise convolution)."""
        if piped is not None:
            raise DslError(f"{call.name}(x) gives a number, not a layer", call.name_span,
                           f"write `{call.name}(x)` where a number is expected")
        positional, keywords = self.eval_args(call, frame)
        if keywords or len(positional) != 1 or not isinstance(positional[0][0], Tensor):
            raise DslError(f"{call.name} takes one tensor", call.span,
                           f"e.g. `{call.name}(in)`")
        t = self.graph.node(positional[0][0].node).type
        axis = SHAPE_BUILTINS[call.name]
        if t.rank != 3 and axis != 0:
            raise DslError(f"{call.name}: the tensor is {t}, not channels x height x width",
                           call.span)
        return t.shape[axis]

    def eval_args(self, call: ast.Call, frame: Frame) -> tuple[list[tuple[Any, ast.Arg]],
                                                                dict[str, tuple[Any, ast.Arg]]]:
        positional: list[tuple[Any, ast.Arg]] = []
        keywords: dict[str, tuple[Any, ast.Arg]] = {}
        for arg in call.args or ():
            if arg.keyword is None:
                if keywords:
                    raise DslError("positional argument after a keyword argument", arg.span,
                                   "put positional arguments first")
                positional.append((self.eval(arg.value, frame), arg))
            else:
                if arg.keyword in keywords:
                    raise DslError(f"argument {arg.keyword!r} given twice", arg.keyword_span)
                keywords[arg.keyword] = (self.eval(arg.value, frame), arg)
        return positional, keywords

    def site(self, scope: Scope, base: str, label: str | None, span: Span) -> LayerSite:
        """Name a new layer in `scope`: `conv3`, or its `as` label."""
        name = scope.layer_name(base, label, span)
        return LayerSite(span, scope.node_prefix + name, scope.param_prefix + name,
                         self.current_shared)

    def apply_op(self, op: OpDef, call: ast.Call, frame: Frame, piped: Tensor | None,
                 site: LayerSite) -> Tensor:
        positional, keywords = self.eval_args(call, frame)
        inputs = self.op_inputs(op, call, piped, positional)
        raw, spans = self.bind_attrs(op, call, positional, keywords, frame)
        return self.make_node(op, inputs, raw, spans, site)

    def op_inputs(self, op: OpDef, call: ast.Call, piped: Tensor | None,
                  positional: list[tuple[Any, ast.Arg]]) -> list[Tensor]:
        """The tensor inputs: the piped one, then leading tensor arguments (`add(a, b)`)."""
        inputs: list[Tensor] = [piped] if piped is not None else []
        while positional and isinstance(positional[0][0], Tensor):
            inputs.append(positional.pop(0)[0])
        want = op.arity
        if want is None:
            need = 2 if op.name in ("add", "mul") else 1
            if len(inputs) < need:
                words = "two or more" if need == 2 else "one or more"
                raise DslError(f"{op.name} takes {words} tensors, got {len(inputs)}", call.span,
                               f"e.g. {op.name}(a, b)")
        elif len(inputs) != want:
            hint = (f"give it its input from the chain: `x -> {op.name}`" if want == 1 else
                    f"e.g. {op.name}(a, b)")
            raise DslError(f"{op.name} takes {want} input tensor{'s' * (want != 1)}, got "
                           f"{len(inputs)}", call.span, hint)
        return inputs

    def bind_attrs(self, op: OpDef, call: ast.Call, positional: list[tuple[Any, ast.Arg]],
                   keywords: dict[str, tuple[Any, ast.Arg]], frame: Frame
                   ) -> tuple[dict[str, Any], dict[str, Span]]:
        """Match arguments to the op's signature: values by attribute name, and their spans."""
        sig = op.signature
        if len(positional) > len(sig):
            extra = positional[len(sig)][1]
            if not sig:
                raise DslError(f"{op.name} takes no arguments, got {len(positional)}",
                               extra.span, f"write `x -> {op.name}`")
            raise DslError(f"{op.name} takes at most {len(sig)} argument"
                           f"{'s' * (len(sig) != 1)} ({', '.join(a.name for a in sig)}), got "
                           f"{len(positional)}", extra.span)
        raw: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        for (value, arg), attr in zip(positional, sig):
            raw[attr.name], spans[attr.name] = value, arg.span
        for key, (value, arg) in keywords.items():
            if op.attr(key) is None:
                raise self.unknown_keyword(op, key, arg.keyword_span)
            if key in raw:
                raise DslError(f"argument {key!r} given twice (once by position)",
                               arg.keyword_span)
            raw[key], spans[key] = value, arg.value.span
        for attr in sig:
            if attr.name not in raw:
                if attr.default is REQUIRED:
                    raise DslError(f"{op.name} needs {attr.name!r}"
                                   f"{' (' + attr.doc + ')' if attr.doc else ''}", call.span,
                                   f"e.g. {_example(op)}")
                raw[attr.name] = attr.default
            else:
                raw[attr.name] = self.attr_value(op, attr, raw[attr.name], spans[attr.name],
                                                 frame)
        return raw, spans

    def unknown_keyword(self, op: OpDef, key: str, span: Span) -> DslError:
        valid = [a.name for a in op.signature]
        close = difflib.get_close_matches(key, valid, n=1)
        hint = (f"did you mean {close[0]!r}? " if close else "") + \
            (f"{op.name} takes: {', '.join(valid)}" if valid else
             f"{op.name} takes no arguments")
        return DslError(f"{op.name} has no argument {key!r}", span, hint)

    def attr_value(self, op: OpDef, attr: Attr, value: Any, span: Span, frame: Frame) -> Any:
        """An argument as the op sees it: words become strings, literal lists arrays."""
        if isinstance(value, Word):
            if not _takes_words(attr):
                raise self.undefined(value, frame)
            return value.name
        if isinstance(value, Tensor):
            raise DslError(f"{op.name}: argument {attr.name!r} must not be a tensor", span,
                           "tensor inputs come first, or from the chain")
        if isinstance(value, (Block, SharedInstance)):
            raise DslError(f"{op.name}: argument {attr.name!r} must be a value, not a layer",
                           span)
        if attr.name in LITERAL_PARAMS and (isinstance(value, tuple) or attr.kind == "tensor"):
            return _literal_array(value, span, attr.name) if value is not None else None
        if isinstance(value, tuple):
            return tuple(self.attr_value(op, attr, v, span, frame) for v in value)
        return value

    def make_node(self, op: OpDef, inputs: list[Tensor], raw: dict[str, Any],
                  spans: dict[str, Span], site: LayerSite) -> Tensor:
        """Canonicalize the attributes, create the parameters and add the op's node."""
        in_types = [self.graph.node(t.node).type for t in inputs]
        _check_attr_sizes(op, raw, spans, site.span)
        try:
            attrs = op.canonicalize(raw, in_types) if op.canonicalize else dict(raw)
            specs = op.param_specs(attrs, in_types)
        except AttrError as e:
            raise DslError(f"{op.name}: {e}", spans.get(e.attr or "", site.span),
                           _attr_hint(op, e.attr, raw)) from None
        except ShapeError as e:
            raise DslError(str(e), site.span, _shape_hint(op, in_types)) from None
        for spec in specs:  # before anything is created (or, later, allocated)
            _check_elements(f"{op.name}: its {spec.suffix}", spec.shape, site.span)
        if "pads" in attrs and in_types and in_types[0].rank == 3:  # a padded copy is made
            (c, h, w), (t, left, b, r) = in_types[0].shape, attrs["pads"]
            _check_elements(f"{op.name}: its padded input", (c, h + t + b, w + left + r),
                            site.span)
        self.check_node_budget(site.span, len(specs) + 1)
        param_ids = [self.make_param(site, spec, raw, spans) for spec in specs]
        try:
            node = self.graph.add(op.name, [t.node for t in inputs] + param_ids, attrs,
                                  name=site.node_name, span=site.span)
        except ShapeError as e:
            raise DslError(str(e), site.span, _shape_hint(op, in_types)) from None
        _check_elements(f"{op.name}: its output", node.type.shape, site.span)
        return Tensor(node.id)

    def make_param(self, site: LayerSite, spec: ParamSpec, raw: dict[str, Any],
                   spans: dict[str, Span]) -> int:
        """A param node `<layer>.<suffix>`, or a shared instance's existing one."""
        full = f"{site.param_base}.{spec.suffix}"
        if site.shared_params is not None and full in site.shared_params:
            existing = self.graph.node(site.shared_params[full])
            if existing.type.shape != spec.shape:  # the input check makes this a safety net
                raise DslError(f"shared parameter {full!r} is {existing.type} but this use "
                               f"needs {_dims(spec.shape)}", site.span)
            return existing.id
        if full in self.params:
            raise DslError(f"parameter name {full!r} is already used by another layer",
                           site.span, "rename one of the layers with `as`")
        attrs: dict[str, Any] = {"init": spec.init, "trainable": spec.trainable,
                                 "fan_in": spec.fan_in, "fan_out": spec.fan_out}
        literal_key = next((k for k, s in LITERAL_PARAMS.items() if s == spec.suffix), None)
        value = raw.get(literal_key) if literal_key else None
        if isinstance(value, np.ndarray):
            attrs.update(init="literal", trainable=False,
                         value=_fit_literal(value, spec, literal_key,
                                            spans.get(literal_key, site.span)))
        node = self.graph.add("param", attrs=attrs, type=TensorType(spec.shape), name=full,
                              span=site.span)
        self.params[full] = node.id
        if site.shared_params is not None:
            site.shared_params[full] = node.id
        return node.id

    # -- shared instances ---------------------------------------------------------------------
    def apply_shared(self, inst: SharedInstance, call: ast.Call, frame: Frame,
                     piped: Tensor | None) -> Any:
        """Apply a shared layer or block: new compute nodes, the same parameters."""
        piped = self.shared_input(inst, call, frame, piped)
        self.check_shared_input(inst, piped, call.span)
        inst.uses += 1
        use_name = inst.name if inst.uses == 1 else f"{inst.name}@{inst.uses}"
        target_frame = Frame(inst.env, frame.module, frame.scope)
        target = target_frame.lookup(inst.call.name)
        if isinstance(target, Block):
            scope = Scope(frame.scope.node_prefix + use_name + ".", inst.param_base + ".")
            return self.call_block(target, inst.call, target_frame, piped, scope, inst.params)
        site = LayerSite(call.span, frame.scope.node_prefix + use_name, inst.param_base,
                         inst.params)
        return self.apply_op(get_op(inst.call.name), inst.call, target_frame, piped, site)

    def shared_input(self, inst: SharedInstance, call: ast.Call, frame: Frame,
                     piped: Tensor | None) -> Tensor:
        """The input of a shared instance: piped (`x -> tower`) or the one argument `tower(x)`."""
        if call.label is not None:
            raise DslError(f"shared instance {inst.name!r} keeps its own name; drop the `as`",
                           call.span)
        positional, keywords = self.eval_args(call, frame)
        tensors = [v for v, _ in positional if isinstance(v, Tensor)]
        if keywords or len(tensors) != len(positional) or len(tensors) + (piped is not None) != 1:
            raise DslError(f"shared instance {inst.name!r} takes only its input tensor", call.span,
                           f"its arguments were given where it was declared ({inst.call.span}); "
                           f"write `x -> {inst.name}` or `{inst.name}(x)`")
        return piped if piped is not None else tensors[0]

    def check_shared_input(self, inst: SharedInstance, x: Tensor, span: Span) -> None:
        in_type = self.graph.node(x.node).type
        if inst.first_input is None:
            inst.first_input = (in_type, span)
            return
        first, where = inst.first_input
        if first.shape != in_type.shape:
            raise DslError(f"shared instance {inst.name!r} is applied to a {in_type} input, but "
                           f"its first use was on {first}", span,
                           "its weights are shared, so every input must have the same shape",
                           [f"first used at {where}"])

    # -- blocks -------------------------------------------------------------------------------
    def call_block(self, block: Block, call: ast.Call, frame: Frame, piped: Tensor | None,
                   scope: Scope | None = None, shared_params: dict[str, int] | None = None
                   ) -> Any:
        """Run a block's body on its input; `scope` is given for a shared instance."""
        defn = block.defn
        self.check_recursion(defn.name, call.span)
        self.enter(call.span)
        try:
            return self.run_block(block, call, frame, piped, scope, shared_params)
        finally:
            self.depth -= 1

    def run_block(self, block: Block, call: ast.Call, frame: Frame, piped: Tensor | None,
                  scope: Scope | None, shared_params: dict[str, int] | None) -> Any:
        defn = block.defn
        positional, keywords = self.eval_args(call, frame)
        local = self.bind_block_args(defn, call, positional, keywords, piped)
        if scope is None:
            scope = frame.scope.child(frame.scope.layer_name(defn.name, call.label, call.span))
        inner = Frame(local, block.module, scope)
        site_note = f"in block {defn.name!r} called at {call.span}"
        try:
            self.bind_block_defaults(defn, call, inner)
            with self._entered(defn.name, call.span), self._sharing(shared_params):
                self.run_block_body(defn, inner)
        except DslError as e:
            e.notes.append(site_note)
            raise
        return inner.returned[0]

    def check_recursion(self, name: str, span: Span) -> None:
        names = [n for n, _ in self.block_stack]
        if name not in names:
            return
        cycle = names[names.index(name):] + [name]
        if len(cycle) == 2:
            raise DslError(f"block {name!r} calls itself", span,
                           f"blocks cannot be recursive; repeat a block with `-> {name}(...) * n`")
        raise DslError(f"blocks call each other in a cycle: {' -> '.join(cycle)}", span,
                       "blocks cannot be recursive; repeat a block with `-> block(...) * n`")

    def bind_block_args(self, defn: ast.BlockDef, call: ast.Call,
                        positional: list[tuple[Any, ast.Arg]],
                        keywords: dict[str, tuple[Any, ast.Arg]],
                        piped: Tensor | None) -> dict[str, Any]:
        """`in` and the parameters given by position or keyword."""
        if piped is None:
            if not positional or not isinstance(positional[0][0], Tensor):
                raise DslError(f"block {defn.name!r} needs an input tensor", call.span,
                               f"write `x -> {defn.name}(...)` or `{defn.name}(x, ...)`")
            piped = positional.pop(0)[0]
        local: dict[str, Any] = {"in": piped}
        names = [p.name for p in defn.params]
        if len(positional) > len(names):
            raise DslError(f"block {defn.name!r} takes {len(names)} argument"
                           f"{'s' * (len(names) != 1)} ({', '.join(names) or 'none'}), got "
                           f"{len(positional)}", positional[len(names)][1].span)
        for (value, _arg), name in zip(positional, names):
            local[name] = value
        for key, (value, arg) in keywords.items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                raise DslError(f"block {defn.name!r} has no parameter {key!r}",
                               arg.keyword_span,
                               (f"did you mean {close[0]!r}? " if close else "") +
                               f"its parameters: {', '.join(names) or 'none'}")
            if key in local:
                raise DslError(f"parameter {key!r} given twice (once by position)",
                               arg.keyword_span)
            local[key] = value
        return local

    def bind_block_defaults(self, defn: ast.BlockDef, call: ast.Call, inner: Frame) -> None:
        """Defaults in order, so that `d = c * 2` sees `c`."""
        for p in defn.params:
            if p.name in inner.local:
                continue
            if p.default is None:
                raise DslError(f"block {defn.name!r} needs its parameter {p.name!r}", call.span,
                               f"pass it: {defn.name}(..., {p.name}=...)",
                               [f"{p.name!r} is declared at {p.span}"])
            inner.local[p.name] = self.eval(p.default, inner)

    def run_block_body(self, defn: ast.BlockDef, inner: Frame) -> None:
        for stmt in defn.body:
            self.exec_stmt(stmt, inner)
            if inner.returned is not None:
                return
        raise DslError(f"block {defn.name!r} does not return a value", defn.span,
                       "end it with `return <chain>`")

    @contextmanager
    def _entered(self, name: str, span: Span) -> Iterator[None]:
        self.block_stack.append((name, span))
        try:
            yield
        finally:
            self.block_stack.pop()

    @contextmanager
    def _sharing(self, shared_params: dict[str, int] | None) -> Iterator[None]:
        """While a shared block runs, every layer in it reuses the instance's parameters."""
        saved = self.current_shared
        if shared_params is not None:
            self.current_shared = shared_params
        try:
            yield
        finally:
            self.current_shared = saved


# -- helpers ----------------------------------------------------------------------------------

# Built-in functions that read a tensor's dimensions (the axis of the per-sample shape).
SHAPE_BUILTINS = {"channels": 0, "height": 1, "width": 2}


def _check_override(param: ast.Param, value: Any) -> Any:
    """A value given from outside (`--param`, load_network keywords) obeys the program's
    number limits; it is located at the parameter it sets."""
    if (_is_int(value) and abs(value) > MAX_INT) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise DslError(f"the value given for network parameter {param.name!r} is too large "
                       f"(numbers are at most 2^53 = {MAX_INT:,}; floats must be finite)",
                       param.span)
    return value


def _too_large(expr: ast.BinOp) -> DslError:
    return DslError(f"the result of {expr.op!r} is too large (numbers are at most 2^53 = "
                    f"{MAX_INT:,}; floats must stay finite)", expr.span)


_FLOAT32_MAX = float(np.finfo(np.float32).max)  # kernels compute in float32

# Attribute kinds that hold sizes (channels, features, kernel, stride, pads, shapes, factors).
_SIZE_KINDS = ("int", "ints", "pads", "shape")


def _check_attr_sizes(op: OpDef, raw: dict[str, Any], spans: dict[str, Span],
                      where: Span) -> None:
    """Every integer in a size attribute is at most MAX_DIM, located at the argument: a
    400-digit channel count must not reach the shape rules, the accounting or NumPy."""
    for attr in op.signature:
        if attr.kind == "float" and _is_number(raw.get(attr.name)) and \
                abs(raw[attr.name]) > _FLOAT32_MAX:
            raise DslError(f"{op.name}: {attr.name} {raw[attr.name]:g} does not fit a 32-bit "
                           f"float (at most about {_FLOAT32_MAX:.3g})",
                           spans.get(attr.name, where))
        if attr.kind not in _SIZE_KINDS or attr.name not in raw:
            continue
        for v in _ints_in(raw[attr.name]):
            if abs(v) > MAX_DIM:
                raise LimitError(f"{op.name}: {attr.name} {v:,} is larger than the limit of "
                               f"{MAX_DIM:,} (2^20) per dimension",
                               spans.get(attr.name, where))


def _ints_in(value: Any) -> Iterator[int]:
    if _is_int(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _ints_in(v)


def _check_elements(what: str, shape: tuple[int, ...], span: Span) -> None:
    """A tensor of more than MAX_ELEMENTS elements is refused where it is written."""
    size = math.prod(shape)
    if size > MAX_ELEMENTS:
        raise LimitError(f"{what} would be {_dims(shape)} = {size:,} elements; a tensor may "
                         f"have at most {MAX_ELEMENTS:,} (2^30, 4 GiB of float32)", span)


def _is_op(name: str) -> bool:
    return name in all_names() and name not in ("input", "param")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _takes_words(attr: Attr) -> bool:
    """Whether a bare word is a value of this attribute (`pad=same`, `axis=channels`)."""
    return bool(attr.choices) or attr.kind in ("choice", "pads", "any") or \
        isinstance(attr.default, str)


def _needs_input(name: str, span: Span) -> DslError:
    return DslError(f"{name!r} is a layer and needs an input", span,
                    f"write `x -> {name}` or `{name}(x)`")


def _show(v: Any) -> str:
    """A value as the user wrote it, never a Python repr of an internal object."""
    if isinstance(v, Tensor):
        return "a tensor"
    if isinstance(v, Word):
        return f"the name {v.name!r}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (Block, SharedInstance)):
        return "a layer"
    if isinstance(v, tuple):
        return "(" + ", ".join(_show(i) for i in v) + ")"
    if isinstance(v, np.ndarray):
        return f"a list of {v.size} numbers"
    return repr(v) if isinstance(v, str) else str(v)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _example(op: OpDef) -> str:
    examples = {"conv": "conv(64, 3, stride=1, pad=same)", "dense": "dense(1000)",
                "maxpool": "maxpool(2)", "avgpool": "avgpool(2)",
                "conv_transpose": "conv_transpose(64, 2, stride=2)"}
    return examples.get(op.name, f"{op.name}(" + ", ".join(a.name for a in op.signature
                                                            if a.default is REQUIRED) + ")")


def _attr_hint(op: OpDef, attr_name: str | None, raw: dict[str, Any]) -> str:
    """For a misspelt word (`pad=sam`): the closest valid word."""
    attr = op.attr(attr_name) if attr_name else None
    value = raw.get(attr_name) if attr_name else None
    if attr is None or not attr.choices or not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, attr.choices, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _shape_hint(op: OpDef, in_types: list[TensorType]) -> str:
    if not in_types:
        return ""
    if op.name in ("add", "sub", "mul") and len(in_types) == 2:
        return ("shapes must be equal, or 1 where they differ (broadcasting: a C x 1 x 1 gate "
                "scales a C x H x W map)")
    return "input shape" + ("s " if len(in_types) > 1 else " ") + \
        ", ".join(str(t) for t in in_types)


def _literal_array(value: Any, span: Span, key: str) -> np.ndarray:
    """Nested lists of numbers -> an array; anything else is an exact error."""
    if not isinstance(value, tuple):
        raise DslError(f"{key} takes a list of numbers such as [1, 0, -1] (nested for several "
                       f"dimensions), got {_show(value)}", span)
    _check_numbers(value, span, key)
    try:
        return np.array(value, dtype=np.float64)
    except ValueError:
        raise DslError(f"{key} must be nested lists with rows of equal length", span) from None


def _check_numbers(value: tuple, span: Span, key: str) -> None:
    for item in value:
        if isinstance(item, tuple):
            _check_numbers(item, span, key)
        elif not _is_number(item):
            raise DslError(f"{key} must contain only numbers, got {_show(item)}", span)


def _fit_literal(value: np.ndarray, spec: ParamSpec, key: str, span: Span) -> np.ndarray:
    """Literal values in the parameter's shape: the same shape, a flat list, or the same shape
    without its size-1 dimensions (a 3 x 3 list for a 1 x 1 x 3 x 3 kernel)."""
    need = int(np.prod(spec.shape))
    if value.size != need:
        raise DslError(f"{key} has {value.size} values; {spec.suffix} {_dims(spec.shape)} "
                       f"needs {need}", span)
    squeezed = tuple(d for d in spec.shape if d != 1)
    if value.ndim > 1 and value.shape != spec.shape and \
            tuple(d for d in value.shape if d != 1) != squeezed:
        raise DslError(f"{key} is {_dims(value.shape)}; {spec.suffix} needs "
                       f"{_dims(spec.shape)}", span,
                       "write it in that shape, or as one flat list")
    big = np.abs(value) > _FLOAT32_MAX
    if big.any():
        raise DslError(f"{key} value {value[big].flat[0]:g} does not fit a 32-bit float (at most "
                       f"about {_FLOAT32_MAX:.3g})", span)
    return value.reshape(spec.shape).astype(np.float32)


def _file_start(file: str) -> Span:
    return Span(file, 1, 1, 1, 2)


def _header_span(header: ast.Header | None) -> Span | None:
    return header.span if header is not None else None


def load_network(source_or_path: str | Path, **overrides: Any) -> Graph:
    """Build the IR for a zoo name, a path to a .cnn file, or DSL source text."""
    text, file = read_source(source_or_path)
    try:
        module = parse(text, file)
        builder = Builder(file, overrides, search_dirs=(ZOO_DIR,))
        graph = builder.build_module(module)
    except DslError as e:
        if file != TEXT_SOURCE:
            e.folder = str(Path(file).parent)
        if file == TEXT_SOURCE and "\n" not in text.strip():
            # A one-line string might have been meant as a path: say how it was read.
            e.notes.append(f"read as program text: there is no file named {text.strip()!r}")
        raise
    graph.verify()
    return graph


def load_zoo(name: str, **params: Any) -> Graph:
    """Build the IR graph of the zoo network ``name`` (``cnnc.zoo.names()``); network
    parameters such as ``classes=10`` override its header. KeyError naming the zoo's networks
    for an unknown name."""
    return load_network(zoo_path(name), **params)


