"""The vocabulary every floor of the compiler shares: activation layouts and how a
channel-blocked value is stored (:class:`Storage`), tensor types, source spans, and the output
size of a window. It imports nothing of the project's."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

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
class Storage:
    """How a channel-blocked tensor is stored: ``[N, blocks, height, width, lanes]`` floats
    (``lanes`` 8: NCHW8c, 16: NCHW16c), or with ``nhwc`` ``[N, height, width, blocks, lanes]``
    (NHWC, its channels padded to whole 8-channel blocks), the tensor's C x H x W at rows
    ``top ..`` and columns ``left ..``, zeros around it (the halo a consuming convolution reads
    as its padding) and in the lanes past C. Buffers are zeroed once and shared only between
    tensors of equal storage, so the halo stays zero. The kernels' index arithmetic of the same
    storage is ``kernels.tiles.StorageIndex``."""

    channels: int
    blocks: int
    height: int
    width: int
    top: int
    left: int
    # A tensor written straight into its channel range of a concatenation: its channels start
    # at this block of a buffer of ``blocks`` blocks per image (the concatenation's).
    first_block: int = 0
    lanes: int = 8  # channels a block
    nhwc: bool = False  # the blocks of a pixel adjacent

    @property
    def layout(self) -> str:
        """The layout's name (``NCHW8c``, ``NCHW16c``, ``NHWC``)."""
        return NHWC if self.nhwc else blocked_layout(self.lanes)

    @property
    def floats(self) -> int:
        """Floats per image of the whole buffer."""
        return self.blocks * self.height * self.width * self.lanes

    @property
    def strides(self) -> tuple[int, int, int, int]:
        """Floats between consecutive blocks, rows and columns of an image, and images."""
        b = self.lanes
        if self.nhwc:
            return b, self.width * self.blocks * b, self.blocks * b, self.floats
        return self.height * self.width * b, self.width * b, b, self.floats

    @property
    def offset(self) -> int:
        """Where the tensor starts in its buffer (floats; independent of the batch size)."""
        return self.first_block * self.strides[0]

    def index(self, c, h, w):
        """Offset of channel ``c`` at the tensor's pixel (``h``, ``w``) from the tensor's first
        element (numbers or integer arrays)."""
        block, row, col, _ = self.strides
        return (c // self.lanes) * block + (h + self.top) * row + (w + self.left) * col + \
            c % self.lanes

    def _view(self, buffer: np.ndarray, n: int) -> np.ndarray:
        """``[n, C/lanes blocks, height, width, lanes]`` view of the tensor's blocks in
        ``buffer`` (the buffer from the tensor's first element on)."""
        item, b = buffer.itemsize, self.lanes
        block, row, col, image = self.strides
        return np.lib.stride_tricks.as_strided(
            buffer, (n, -(-self.channels // b), self.height, self.width, b),
            (image * item, block * item, row * item, col * item, item))

    def ints(self) -> tuple[int, int, int, int, int]:
        """``(blocks, height, width, top, left)``: the geometry arguments kernels take."""
        return (self.blocks, self.height, self.width, self.top, self.left)

    def store(self, x: np.ndarray, out: np.ndarray) -> None:
        """Write NCHW ``x`` ``[N, C, H, W]`` into its storage (``out`` starts at the tensor's
        first element; halo and other channel ranges untouched)."""
        n, c, h, w = x.shape
        b = self.lanes
        cb = -(-c // b)
        padded = np.zeros((n, cb * b, h, w), np.float32)
        padded[:, :c] = x
        blocked = padded.reshape(n, cb, b, h, w).transpose(0, 1, 3, 4, 2)
        self._view(out, n)[:, :, self.top:self.top + h, self.left:self.left + w] = blocked

    def load(self, flat: np.ndarray, n: int, shape: tuple[int, ...]) -> np.ndarray:
        """The NCHW ``[n, *shape]`` tensor held in its storage (``flat`` starts at the
        tensor's first element)."""
        c, h, w = shape
        inner = self._view(flat, n)[:, :, self.top:self.top + h, self.left:self.left + w]
        return inner.transpose(0, 1, 4, 2, 3).reshape(n, -1, h, w)[:, :c]


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
    """Per-sample shape (no batch dimension), element type and memory layout.

    ``batched`` is False for a value of the whole batch rather than one per sample: a loss
    averaged over the batch, a parameter's gradient summed over it (``compiler/autodiff.py``),
    batch statistics. Such a value has exactly ``shape`` (no batch dimension at run time)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    batched: bool = True

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

    def unbatched(self) -> TensorType:
        """The same shape, one value for the whole batch."""
        return replace(self, batched=False)

    def __str__(self) -> str:
        text = "x".join(str(d) for d in self.shape) or "scalar"
        return text if self.batched else f"{text} (whole batch)"


def spatial_out(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output size of a window op: floor((H + p - d(k-1) - 1) / s) + 1, p the total padding.

    With ceil mode the division rounds up, but, as in PyTorch and ONNX Runtime, a last window
    that would start in the trailing padding is dropped.
    """
    span = dilation * (kernel - 1) + 1
    numer = size + pad_begin + pad_end - span
    if not ceil_mode:
        return numer // stride + 1
    out = -(-numer // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out
