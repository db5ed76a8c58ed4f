"""DSL errors: `file:line:col: message`, the source line, a caret under the offending text, and
what would be valid. Never a Python traceback."""

from __future__ import annotations

from ..compiler.ir import Span

# Source texts by file name, so an error can quote its line wherever it is raised.
_SOURCES: dict[str, str] = {}


def remember_source(name: str, text: str) -> None:
    _SOURCES[name] = text


class DslError(Exception):
    """A problem in a network definition, located at a span of its source."""

    def __init__(self, message: str, span: Span | None = None, hint: str = "",
                 notes: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = list(notes or [])

    def render(self) -> str:
        span = self.span
        if span is None:
            head = f"error: {self.message}"
            lines = [head]
        else:
            lines = [f"{span.file}:{span.line}:{span.column}: error: {self.message}"]
            text = _SOURCES.get(span.file)
            if text is not None:
                src_lines = text.splitlines()
                if 1 <= span.line <= len(src_lines):
                    line = src_lines[span.line - 1].rstrip("\n")
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


def _indent_like(line: str, n: int) -> str:
    """Whitespace that lines a caret up under column n, keeping the line's tabs."""
    return "".join("\t" if ch == "\t" else " " for ch in line[:n])
