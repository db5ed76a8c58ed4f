"""DSL errors: `file:line:col: message`, the source line, a caret under the offending text, and
what would be valid. Never a Python traceback."""

from __future__ import annotations

import unicodedata

from ..compiler.ir import Span
from ..compiler.types import shown_path

# Source texts by file name, so an error can quote its line wherever it is raised: the most
# recent ones only, so that a long-lived process that parses many files does not keep them all.
_SOURCES: dict[str, str] = {}
_KEEP_SOURCES = 256


def remember_source(name: str, text: str) -> None:
    _SOURCES.pop(name, None)
    _SOURCES[name] = text  # now the newest
    while len(_SOURCES) > _KEEP_SOURCES:
        del _SOURCES[next(iter(_SOURCES))]


def source_lines(text: str) -> list[str]:
    """The lines of a program as the lexer counts them: split at `\\n` only (a `\\r` before it
    belongs to the line end). Other characters Python's `str.splitlines` breaks at (U+2028,
    U+0085, form feed, ...) are ordinary characters inside a line here, so line numbers in
    errors and the quoted line always agree with lark's positions. Every line count in the DSL
    uses this function."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def printable_line(line: str) -> str:
    """A source line safe to print under its header: control and line-separator characters
    (which a terminal would break or hide) become one space each, so the caret columns stay."""
    return "".join(" " if ch != "\t" and unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cf")
                   else ch for ch in line)


def display_file(name: str) -> str:
    """A file name as it appears in an error header: escaped when it holds control characters
    (a newline in a file name must not split the header)."""
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name):
        return ascii(name)
    return name


class DslError(Exception):
    """A problem in a network definition, located at a span of its source."""

    def __init__(self, message: str, span: Span | None = None, hint: str = "",
                 notes: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = list(notes or [])
        # The folder of the model being built (set by ``load_network``): the header names the
        # file relative to it, never by an absolute path of this machine.
        self.folder: str | None = None

    def render(self) -> str:
        span = self.span
        if span is None:
            head = f"error: {self.message}"
            lines = [head]
        else:
            lines = [f"{display_file(shown_path(span.file, self.folder))}:{span.line}:"
                     f"{span.column}: error: "
                     f"{self.message}"]
            text = _SOURCES.get(span.file)
            if text is not None:
                src_lines = source_lines(text)
                if 1 <= span.line <= len(src_lines):
                    line = printable_line(src_lines[span.line - 1])
                    width = (span.end_column - span.column if span.end_line == span.line
                             else len(line) - span.column + 1)
                    width = max(1, width)
                    lines.append(f"    {line}")
                    lines.append("    " + _indent_like(line, span.column - 1) + "^" * width)
        if self.hint:
            lines.append(f"  {self.hint}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class LimitError(DslError):
    """A program beyond one of cnnc's bounds (``dsl/limits.py``: sizes, element counts, total
    work): still a located user error, and one an importer reports as the model's, not its own."""


def _indent_like(line: str, n: int) -> str:
    """Whitespace that lines a caret up under column n, keeping the line's tabs."""
    return "".join("\t" if ch == "\t" else " " for ch in line[:n])
