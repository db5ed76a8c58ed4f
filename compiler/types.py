"""Value types shared by the IR, the op registry and the front end: source spans and tensor
types. A module of its own so that the ops never import the graph module (which imports them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

#: Activation layouts: plain NCHW, and channel-blocked NCHW8c (``[N, C/8, H, W, 8]``),
#: NCHW16c (``[N, C/16, H, W, 16]``: one AVX-512 vector a pixel) and NHWC (``[N, H, W, C]``,
#: C padded to whole 8-channel blocks: the kernels see ``[N, H, W, C/8, 8]``).
PLAIN, BLOCKED, BLOCKED16, NHWC = "NCHW", "NCHW8c", "NCHW16c", "NHWC"
#: Channels per block (vector lanes) of each channel-blocked layout.
BLOCK_LANES = {BLOCKED: 8, BLOCKED16: 16, NHWC: 8}
#: What a user may ask for (``compile(layout=...)``, ``--layout``): layout selection's choice,
#: every activation plain, or every channel-blocked region in one storage (NCHW16c or NHWC
#: where each of its ops has a kernel for it, else NCHW8c).
LAYOUT_CHOICES = ("auto", PLAIN, BLOCKED, BLOCKED16, NHWC)


def in_every_blocked_layout(pairs, layouts=(BLOCKED16, NHWC)) -> tuple[tuple[str, str], ...]:
    """A layout rule's ``(input, output)`` pairs, and each pair with NCHW8c in it again with
    NCHW8c replaced by each of ``layouts``: for ops whose kernels have every channel-blocked
    form (the same operations lane for lane, in another storage order or block width)."""
    pairs = tuple(pairs)
    return pairs + tuple(tuple(other if x == BLOCKED else x for x in pair)
                         for other in layouts for pair in pairs if BLOCKED in pair)


def blocked_layout(lanes: int) -> str:
    """The channel-blocked NCHWc layout of ``lanes`` channels a block."""
    return {8: BLOCKED, 16: BLOCKED16}[lanes]


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
