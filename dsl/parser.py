"""Lark grammar -> syntax tree with source spans, and syntax errors that point at the text."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..compiler.ir import Span
from . import ast
from .errors import DslError, remember_source

GRAMMAR = Path(__file__).with_name("cnnc.lark")

KEYWORDS = ("network", "input", "import", "from", "block", "shared", "return", "output", "as",
            "true", "false")

# How the grammar's terminal names read in an error message.
_READABLE = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": 'a "file.cnn" string',
    "_NL": "end of line", "_ARROW": "->", "_TIMES": "x", "_LPAR": "(", "_RPAR": ")",
    "_LBRACE": "{", "_RBRACE": "}", "LSQB": "[", "RSQB": "]", "COMMA": ",", "EQUAL": "=",
    "COLON": ":", "PLUS": "+", "MINUS": "-", "STAR": "*", "SLASH": "/", "PERCENT": "%",
    "__ANON_0": "//", "$END": "end of file",
}


class LineJoiner:
    """Drops line ends that do not end a statement: inside ( ) or [ ], and after `->`.

    (A line end before a line starting with `->` is ignored by the grammar itself.) A final
    line end is added so that the last statement needs none.
    """

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        previous: Token | None = None
        for tok in stream:
            if tok.type == "_NL" and (depth > 0 or previous is None
                                      or previous.type in ("_ARROW", "_NL")):
                continue
            if tok.type in ("_LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("_RPAR", "RSQB"):
                depth = max(0, depth - 1)
            previous = tok
            yield tok
        if previous is not None and previous.type != "_NL":
            end = Token("_NL", "\n")
            end.line, end.column = previous.end_line, previous.end_column
            end.end_line, end.end_column = previous.end_line, previous.end_column
            yield end


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer="contextual",
                postlex=LineJoiner(), propagate_positions=True, maybe_placeholders=True)


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse DSL source into a Module; raises DslError with the location of any mistake."""
    remember_source(file, text)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    module = ast.Module(file)
    module.items = _ToAst(file).transform(tree)
    return module


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> DslError:
    line, column = max(getattr(e, "line", 1) or 1, 1), max(getattr(e, "column", 1) or 1, 1)
    width = 1
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "end of file"
        message = f"unexpected character {char!r}"
        expected = e.allowed or set()
    elif isinstance(e, UnexpectedToken):
        tok = e.token
        expected = e.expected or set()
        if tok.type == "$END":
            message = "unexpected end of file"
            lines = text.splitlines() or [""]
            line, column = len(lines), len(lines[-1]) + 1
        elif tok.type == "_NL":
            message = "unexpected end of line"
            line, column = tok.line, tok.column
        else:
            message = f"unexpected {_describe(tok)}"
            width = max(1, len(str(tok)))
        if tok.type == "NAME" and "NAME" not in expected:
            close = difflib.get_close_matches(str(tok), KEYWORDS, n=1)
            if close:
                message += f" (did you mean the keyword {close[0]!r}?)"
    elif isinstance(e, UnexpectedEOF):
        message, expected = "unexpected end of file", set(e.expected or ())
    else:  # pragma: no cover - lark has no other kinds
        message, expected = str(e), set()
    hint = ""
    readable = sorted({_READABLE.get(t, t.strip('"').lower()) for t in expected
                       if not t.startswith("__ANON") or t in _READABLE})
    if readable:
        hint = "expected " + _one_of(readable)
    span = Span(file, line, column, line, column + width)
    return DslError(message, span, hint)


def _describe(tok: Token) -> str:
    if tok.type == "NAME":
        return f"name {str(tok)!r}"
    if tok.type in ("INT", "FLOAT"):
        return f"number {str(tok)}"
    return f"{str(tok)!r}"


def _one_of(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) > 8:
        items = items[:8] + ["..."]
    return "one of: " + ", ".join(items)


def _span(file: str, meta) -> Span:
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark parse tree -> ast dataclasses with spans."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _s(self, meta) -> Span:
        return _span(self.file, meta)

    # -- top level ----------------------------------------------------------------------------
    def start(self, meta, items):
        return [i for i in items if i is not None]

    def header(self, meta, children):
        name, *params = children
        return ast.Header(self._s(meta), str(name), tuple(p for p in params if p is not None))

    def param(self, meta, children):
        name, default = children
        return ast.Param(self._s(meta), str(name), default)

    def input_decl(self, meta, children):
        name, *dims = children
        return ast.InputDecl(self._s(meta), str(name), tuple(dims))

    def import_all(self, meta, children):
        return ast.Import(self._s(meta), str(children[0])[1:-1], None)

    def import_from(self, meta, children):
        path, *names = children
        return ast.Import(self._s(meta), str(path)[1:-1], tuple(str(n) for n in names))

    def block_def(self, meta, children):
        name, *rest = children
        params = tuple(c for c in rest if isinstance(c, ast.Param))
        body = tuple(c for c in rest if isinstance(c, ast.Stmt))
        return ast.BlockDef(self._s(meta), str(name), params, body)

    # -- statements ---------------------------------------------------------------------------
    def assign(self, meta, children):
        return ast.Assign(self._s(meta), str(children[0]), children[1])

    def shared(self, meta, children):
        return ast.Shared(self._s(meta), str(children[0]), children[1])

    def return_stmt(self, meta, children):
        return ast.Return(self._s(meta), children[0])

    def output_stmt(self, meta, children):
        return ast.OutputStmt(self._s(meta), str(children[0]), children[1])

    def chain_stmt(self, meta, children):
        return ast.ChainStmt(self._s(meta), children[0])

    def chain(self, meta, children):
        head, *stages = children
        return ast.Chain(self._s(meta), head, tuple(stages))

    def stage_call(self, meta, children):
        return ast.CallStage(self._s(meta), children[0])

    def stage_repeat(self, meta, children):
        return ast.RepeatStage(self._s(meta), children[0], children[1])

    def stage_group(self, meta, children):
        *stages, times = children
        return ast.GroupStage(self._s(meta), tuple(stages), times)

    def stage_output(self, meta, children):
        return ast.OutputStage(self._s(meta), str(children[0]))

    # -- expressions --------------------------------------------------------------------------
    def call(self, meta, children):
        name, args, label = children
        return ast.Call(self._s(meta), str(name), _tok_span(self.file, name), args,
                        str(label) if label is not None else None)

    def arglist(self, meta, children):
        return tuple(a for a in children if a is not None)

    def positional(self, meta, children):
        return ast.Arg(self._s(meta), children[0])

    def keyword(self, meta, children):
        name, value = children
        return ast.Arg(self._s(meta), value, str(name), _tok_span(self.file, name))

    def int(self, meta, children):
        return ast.Num(self._s(meta), int(children[0]))

    def float(self, meta, children):
        return ast.Num(self._s(meta), float(children[0]))

    def true(self, meta, children):
        return ast.Bool(self._s(meta), True)

    def false(self, meta, children):
        return ast.Bool(self._s(meta), False)

    def tuple(self, meta, children):
        return ast.Seq(self._s(meta), tuple(c for c in children if c is not None), "()")

    def list(self, meta, children):
        return ast.Seq(self._s(meta), tuple(c for c in children if c is not None), "[]")

    def neg(self, meta, children):
        return ast.Neg(self._s(meta), children[0])

    def _bin(op):  # noqa: N805 - a small factory used only in this class body
        def method(self, meta, children):
            return ast.BinOp(self._s(meta), op, children[0], children[1])
        return method

    add = _bin("+")
    sub = _bin("-")
    mul = _bin("*")
    floordiv = _bin("//")
    truediv = _bin("/")
    mod = _bin("%")
