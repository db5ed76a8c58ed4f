"""Lark grammar -> syntax tree with source spans, and syntax errors that point at the text."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from ..compiler.backends.numba.cache import auxiliary_file
from ..compiler.ir import Span
from . import ast
from .errors import DslError, remember_source, source_lines
from .limits import MAX_INT, MAX_NESTING

GRAMMAR = Path(__file__).with_name("cnnc.lark")

KEYWORDS = ("network", "input", "import", "from", "block", "shared", "return", "output", "as",
            "true", "false")

# How the grammar's terminals read in an error message, in the order they are listed.
_PUNCTUATION = {
    "_RPAR": "`)`", "RSQB": "`]`", "_RBRACE": "`}`", "COMMA": "`,`", "_ARROW": "`->`",
    "EQUAL": "`=`", "COLON": "`:`", "_LBRACE": "`{`", "_TIMES": "`x`", "AS": "`as`",
    "IMPORT": "`import`", "OUTPUT": "`output`", "RETURN": "`return`", "SHARED": "`shared`",
    "NETWORK": "`network`", "INPUT": "`input`", "BLOCK": "`block`", "FROM": "`from`",
    "STRING": 'a file name in quotes ("blocks.cnn")',
}
# Terminals that can start a value, and the arithmetic operators: each group reads as one item.
_VALUE_START = {"NAME", "INT", "FLOAT", "_LPAR", "LSQB", "TRUE", "FALSE"}
_OPERATORS = {"PLUS": "+", "MINUS": "-", "STAR": "*", "SLASH": "/", "_FLOORDIV": "//",
              "PERCENT": "%"}
# Tokens after which a statement cannot end (so "end of line" is never a sensible expectation).
_CONTINUING = {"EQUAL", "COMMA", "_LPAR", "LSQB", "_ARROW", "COLON", "_TIMES", "PLUS", "MINUS",
               "STAR", "SLASH", "_FLOORDIV", "PERCENT", "NETWORK", "INPUT", "IMPORT", "FROM",
               "BLOCK", "SHARED", "RETURN", "OUTPUT", "AS"}
_OPENERS = {"_LPAR": "_RPAR", "LSQB": "RSQB", "_LBRACE": "_RBRACE"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}
_OPENER_TEXT = {"_RPAR": "(", "RSQB": "[", "_RBRACE": "{"}
# Characters people paste from papers, and what to write instead.
_LOOKALIKES = {"×": "write `x` between dimensions (3 x 224 x 224)", "→": "write the arrow as `->`",
               "−": "write minus as `-`", "“": 'write quotes as "', "”": 'write quotes as "',
               "'": 'file names are written in double quotes: "blocks.cnn"'}


class LineJoiner:
    """Drops line ends that do not end a statement: inside ( ) or [ ], and after `->`.

    (A line end before a line starting with `->` is ignored by the grammar itself.) A final
    line end is added so that the last statement needs none. It remembers the open brackets
    and the last tokens, so that a syntax error can say which bracket is still open.
    """

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.open: list[Token] = []  # brackets not yet closed, innermost last
        self.recent: list[Token] = []  # the last two tokens passed on
        self.statement: Token | None = None  # the first token of the current statement

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        self.open, self.recent, self.statement = [], [], None
        for tok in stream:
            if tok.type == "_NL" and (self._inside_parens() or not self.recent
                                      or self.recent[-1].type in ("_ARROW", "_NL")):
                continue
            self._track(tok)
            yield tok
        if self.open:
            raise _Unclosed(self.open[-1])
        if self.recent and self.recent[-1].type != "_NL":
            last = self.recent[-1]
            yield _token_at("_NL", "\n", last.end_line, last.end_column)

    def _inside_parens(self) -> bool:
        return bool(self.open) and self.open[-1].type != "_LBRACE"

    def _track(self, tok: Token) -> None:
        if tok.type in _OPENERS:
            self.open.append(tok)
        elif tok.type in _CLOSERS and self.open and self.open[-1].type == _CLOSERS[tok.type]:
            self.open.pop()
        if tok.type != "_NL" and (not self.recent or self.recent[-1].type in ("_NL", "_LBRACE")):
            self.statement = tok
        self.recent = (self.recent + [tok])[-2:]


class _Unclosed(Exception):
    """Raised by the line joiner at the end of the text when a bracket is still open."""

    def __init__(self, opener: Token):
        super().__init__(str(opener))
        self.opener = opener


def _token_at(kind: str, text: str, line: int, column: int) -> Token:
    tok = Token(kind, text)
    tok.line, tok.column, tok.end_line, tok.end_column = line, column, line, column
    return tok


_JOINER = LineJoiner()


#: The file Lark keeps its LALR tables in: building them takes a fifth of a second, a tenth of
#: a cached compile. Lark checks the file against a hash of the grammar and the options (and
#: its own version) and rebuilds and rewrites it when they differ or it cannot be read.
PARSER_CACHE = "dsl-parser.lark"


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer="contextual",
                postlex=_JOINER, propagate_positions=True, maybe_placeholders=True,
                cache=str(auxiliary_file(PARSER_CACHE)))


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse DSL source into a Module; raises DslError with the location of any mistake."""
    remember_source(file, text)
    try:
        tree = _parser().parse(text)
    except _Unclosed as e:
        raise _unclosed_error(e.opener, file) from None
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file) from None
    check_nesting(tree, file)
    module = ast.Module(file)
    try:
        module.items = _ToAst(file).transform(tree)
    except VisitError as e:  # lark wraps what a transformer method raises
        if isinstance(e.orig_exc, DslError):
            raise e.orig_exc from None
        raise
    return module


def check_nesting(tree: Tree, file: str) -> None:
    """Refuse a parse tree nested deeper than MAX_NESTING (600 nested parentheses, a long
    `- - - 1`): the syntax-tree conversion and the builder recurse once per level, so without
    this a deep program ends in Python's RecursionError. Walks the tree without recursion."""
    stack: list[tuple[Tree, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            span = (Span(file, meta.line, meta.column, meta.line, meta.column + 1)
                    if not meta.empty else Span(file, 1, 1, 1, 2))
            raise DslError(f"nesting too deep: more than {MAX_NESTING} levels of brackets, "
                           "operators and chains inside each other (the limit)", span,
                           "split the expression: give inner parts names (`a = ...`) or blocks")
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


def _unclosed_error(opener: Token, file: str) -> DslError:
    closer = {"_LPAR": ")", "LSQB": "]", "_LBRACE": "}"}[opener.type]
    return DslError(f"{str(opener)!r} is never closed", _tok_span(file, opener),
                    f"add the matching {closer!r}")


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> DslError:
    """A lark error -> a DslError that names the unexpected text and what was expected."""
    line, column = max(getattr(e, "line", 1) or 1, 1), max(getattr(e, "column", 1) or 1, 1)
    width, notes, hint = 1, [], ""
    previous = _JOINER.recent[-1] if _JOINER.recent else None
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "end of file"
        message = f"unexpected character {char!r}"
        expected = set(e.allowed or ())
        hint = _LOOKALIKES.get(char, "")
        if char == '"':
            hint = 'a file name in quotes ends on the same line: "blocks.cnn"'
    elif isinstance(e, UnexpectedToken):
        tok = e.token
        expected = set(e.expected or ())
        if len(_JOINER.recent) > 1 and _JOINER.recent[-1] is tok:
            previous = _JOINER.recent[-2]
        if tok.type == "$END":
            message = "unexpected end of file"
            lines = source_lines(text.removesuffix("\n"))  # point after the last text
            line, column = len(lines), len(lines[-1]) + 1
        elif tok.type == "_NL":
            message = "unexpected end of line"
            line, column = tok.line, tok.column
        else:
            message = f"unexpected {_describe(tok)}"
            width = max(1, len(str(tok)))
        if tok.type in _CLOSERS and not any(o.type == _CLOSERS[tok.type] for o in _JOINER.open):
            message += f": no {_OPENER_TEXT[tok.type]!r} is open"
        hint = _keyword_hint(tok, previous, expected)
    else:  # UnexpectedEOF: lark raises it only for other parser kinds
        message, expected = "unexpected end of file", set(getattr(e, "expected", ()) or ())
    if _JOINER.open:
        opener = _JOINER.open[-1]
        notes.append(f"the {str(opener)!r} at {file}:{opener.line}:{opener.column} is still open")
    if not hint:  # a specific hint says more than the list of what the grammar allows here
        hint = expected_text(expected, _JOINER.open, previous, _JOINER.statement)
    return DslError(message, Span(file, line, column, line, column + width), hint, notes)


def expected_text(expected: set[str], open_brackets: list[Token], previous: Token | None,
                  statement: Token | None) -> str:
    """'expected `)`, `,` or an operator': lark's terminal set, filtered and in words.

    LALR states are shared between contexts, so lark offers closers of brackets that are not
    open and line ends where a statement cannot end; the open brackets, the previous token and
    the statement's first token say which of them make sense here.
    """
    innermost = open_brackets[-1].type if open_brackets else None
    keep = set(expected)
    for closer, opener in _CLOSERS.items():
        if innermost != opener:
            keep.discard(closer)
    if innermost in ("_LPAR", "LSQB"):
        keep -= {"_NL", "$END"}  # line ends inside brackets are dropped before the parser
    else:
        keep.discard("COMMA")
    if previous is not None and previous.type in _CONTINUING:
        keep -= {"_NL", "$END"}
    if statement is None or statement.type != "INPUT":
        keep.discard("_TIMES")  # `x` separates dimensions only in an input declaration
    if previous is not None and previous.type == "_ARROW" and "NAME" in keep:
        return "expected a layer or block, stages in ( ), or `output NAME`"
    items = [_PUNCTUATION[t] for t in _PUNCTUATION if t in keep]
    values = keep & _VALUE_START
    ops = keep & set(_OPERATORS)
    if values & {"INT", "FLOAT"}:
        items.append("a value (a number, a name or a layer)")
        if ops == {"MINUS"}:
            ops = set()  # a leading minus is part of a value
    elif "NAME" in values:
        items.append("a name")
    if len(ops) > 1:
        items.append("an operator (+ - * / // %)")
    elif ops:
        items.append(f"`{_OPERATORS[ops.pop()]}`")
    if "_NL" in keep:
        items.append("end of line")
    elif "$END" in keep:
        items.append("end of file")
    if not items:
        return ""
    return "expected " + (items[0] if len(items) == 1 else
                          ", ".join(items[:-1]) + " or " + items[-1])


def _keyword_hint(tok: Token, previous: Token | None, expected: set[str]) -> str:
    """'did you mean the keyword `network`?' for `netwrk n`, `outptu o` or `import blocks`."""
    # The unexpected word itself, where a keyword (not a name) would be valid ...
    allowed = [k for k in KEYWORDS if k.upper() in expected]
    close = difflib.get_close_matches(str(tok), allowed, n=1, cutoff=0.7)
    if tok.type == "NAME" and close:
        return f"did you mean the keyword `{close[0]}` instead of `{tok}`?"
    # ... or the word before it, read as a name: `netwrk n`, `-> outptu o`.
    if previous is not None and previous.type == "NAME" and previous is not tok:
        close = difflib.get_close_matches(str(previous), KEYWORDS, n=1, cutoff=0.7)
        if close and str(previous) not in KEYWORDS:
            return f"did you mean the keyword `{close[0]}` instead of `{previous}`?"
    return ""


def _describe(tok: Token) -> str:
    if tok.type == "NAME":
        return f"name {str(tok)!r}"
    if tok.type in ("INT", "FLOAT"):
        return f"number {str(tok)}"
    if tok.type == "STRING":
        return f"string {str(tok)}"
    return f"{str(tok)!r}"


def _abbrev(text: str) -> str:
    """A long number as `123456...789 (400 digits)`."""
    return text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} characters)"


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
        text = str(children[0])
        # Checked on the digits first: int() of thousands of digits is slow (and refused).
        if len(text.lstrip("0")) > len(str(MAX_INT)) or int(text) > MAX_INT:
            raise DslError(f"number too large: {_abbrev(text)} (numbers are at most "
                           f"2^53 = {MAX_INT:,})", self._s(meta))
        return ast.Num(self._s(meta), int(text))

    def float(self, meta, children):
        value = float(children[0])  # never raises: too large reads as inf
        if value == float("inf"):
            raise DslError(f"number too large: {_abbrev(str(children[0]))} is beyond the "
                           "range of a 64-bit float (about 1.8e308)", self._s(meta))
        return ast.Num(self._s(meta), value)

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
