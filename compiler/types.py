"""Value types shared by the IR, the op registry and the front end: source spans and tensor
types. A module of its own so that the ops never import the graph module (which imports them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

#: Activation layouts: plain NCHW, and channel-blocked NCHW8c (``[N, C/8, H, W, 8]``).
PLAIN, BLOCKED = "NCHW", "NCHW8c"
#: What a user may ask for (``compile(layout=...)``, ``--layout``): layout selection's choice,
#: or every activation plain.
LAYOUT_CHOICES = ("auto", PLAIN)


@dataclass(frozen=True)
class Span:
    """A region of DSL (or other) source: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{shown_path(self.file)}:{self.line}:{self.column}"


def shown_path(file: str, folder: str | None = None) -> str:
    """A source file as messages and generated code name it: relative to ``folder`` (the
    folder of the model's own file) when it lies inside it, else its file name; program text
    (``<string>``) as it is. Never an absolute path of this machine, so what is printed or
    emitted does not depend on where the model lives."""
    if not file or file.startswith("<"):
        return file
    path = Path(file)
    if folder is not None:
        try:
            return path.resolve().relative_to(Path(folder).resolve()).as_posix()
        except (OSError, ValueError):  # outside the folder (the zoo), or a name the OS refuses
            pass
    return path.name


@dataclass(frozen=True)
class TensorType:
    """Per-sample shape (no batch dimension), element type and memory layout."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, *shape: int) -> TensorType:
        return replace(self, shape=tuple(int(d) for d in shape))

    def __str__(self) -> str:
        return "x".join(str(d) for d in self.shape)
