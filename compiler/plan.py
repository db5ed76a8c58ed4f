"""The plan: what the compiler hands an executor.

A plan lists the steps of one call in order. A step computes one IR node (its fused epilogue
included) by calling one or more compiled kernels; every argument of every kernel call is bound
here, once, as an :class:`Arg` that says where the value comes from (a tensor value, a scratch
buffer, a packed constant, a literal integer or the batch size). An executor resolves the
arguments to arrays once per batch size and then only calls functions.

The compiler never imports the runtime: the executor (``runtime/executor.py``) reads this
module's dataclasses and nothing else of the compiler's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ir import Graph
from .types import BLOCKED, BLOCKED16, NHWC, PLAIN, blocked_layout  # re-exported for executors

__all__ = ["Arg", "Call", "Step", "BufferPlan", "Plan", "Storage", "BLOCKED", "BLOCKED16",
           "NHWC", "PLAIN"]


@dataclass(frozen=True)
class Storage:
    """How a channel-blocked tensor is stored: ``[N, blocks, height, width, lanes]`` floats
    (``lanes`` 8: NCHW8c, 16: NCHW16c), or with ``nhwc`` ``[N, height, width, blocks, lanes]``
    (NHWC, its channels padded to whole 8-channel blocks), the tensor's C x H x W at rows
    ``top ..`` and columns ``left ..``, zeros around it (the halo a consuming convolution reads
    as its padding) and in the lanes past C. Buffers are zeroed once and shared only between
    tensors of equal storage, so the halo stays zero. The kernels' index arithmetic of the same
    storage is ``codegen.tiles.StorageIndex``."""

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
class Arg:
    """One kernel argument.

    ``kind``:
    - ``value``: the flat float32 buffer of tensor ``ref`` (a node id: a graph input, a step's
      output, or a view of one);
    - ``output``: the step's own output buffer;
    - ``scratch``: the shared scratch buffer named ``ref`` (sized per image, times the batch);
    - ``const``: the packed constant ``ref`` of this step (prepared when parameters are set);
    - ``int``: the literal integer ``ref``;
    - ``batch``: the batch size of the call.
    """

    kind: str
    ref: Any = None


@dataclass
class Call:
    """``fn(*args)``: one compiled kernel call. ``kernel`` names it for listings; ``ir`` is
    the kernel IR of a generated per-model kernel until the compiler has loaded it into
    ``fn`` (kernels of their own cached modules, such as convolutions, come with ``fn``)."""

    fn: Callable[..., Any] | None
    args: tuple[Arg, ...]
    kernel: str = ""
    ir: Any = None


Packer = Callable[[Mapping[int, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Step:
    """One IR node lowered: its kernel calls, and how its constants come from parameters.

    ``pack`` maps parameter values by node id (float64: source parameters and the derived ones
    evaluated at parameter time) to this step's constants (``const`` arguments); it runs when
    parameters are set, never per call.
    """

    node: int
    name: str
    op: str
    inputs: list[int]
    out_size: int
    calls: list[Call] = field(default_factory=list)
    pack: Packer | None = None
    scratch: dict[str, int] = field(default_factory=dict)
    lowering: str = "kernel"
    view: bool = False
    inplace: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    storage: Storage | None = None  # the output's channel-blocked storage, None for NCHW
    # A concatenation done in place: its inputs were written into its buffer, which it owns
    # (``view`` is then set too: it runs no kernel).
    owner: bool = False

    @property
    def output(self) -> int:
        return self.node


@dataclass
class BufferPlan:
    """Where every value lives: graph inputs are the caller's arrays, views alias their base,
    every other step output is a slot of the arena (float32 elements per image)."""

    slot_of: dict[int, int] = field(default_factory=dict)
    slot_sizes: list[int] = field(default_factory=list)
    alias: dict[int, int] = field(default_factory=dict)
    storage: dict[int, Storage] = field(default_factory=dict)  # blocked values by node id

    def root(self, value: int) -> int:
        while value in self.alias:
            value = self.alias[value]
        return value

    @property
    def floats_per_image(self) -> int:
        return sum(self.slot_sizes)


@dataclass
class Plan:
    """Everything an executor needs to run a compiled graph.

    ``param_nodes`` are the parameter-time nodes (derived parameters, folded constants) in
    topological order: the executor evaluates them in float64 (``compiler.ops.evaluate``)
    from the source parameters whenever parameters are set, before calling the packers.
    """

    graph: Graph
    steps: list[Step]
    buffers: BufferPlan
    scratch: dict[str, int]
    param_nodes: list[int]
    listing: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    cache_path: str = ""
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def kernel_calls(self) -> int:
        return sum(len(s.calls) for s in self.steps)
