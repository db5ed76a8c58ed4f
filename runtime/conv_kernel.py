"""One convolution compiled on its own: ``compile_conv(attrs, (C, H, W))(x, w, b)``.

For the kernel tests and the per-layer benchmark: the same compute and layout kernels, with the
same arguments, that a compiled model's convolution steps call, described by the same algorithm
object (``compiler/ops/conv/algorithms.py``: its kernel, its input and output layout calls, its
size arguments, its weight packing), without a graph. The pieces are exposed for a caller that
keeps operands packed (``pack_input`` / ``pack_weights`` / ``run`` / ``unpack_output``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ..compiler.backends.numba.loader import NumbaBackend, layout_module
from ..compiler.backends.numba.printer import sanitize_comment
from ..compiler.kernels.conv_geometry import ConvGeometry
from ..compiler.kernels.tiles import TILE_8, DirectTile
from ..compiler.ops.conv.algorithms import ALGORITHMS, ConvAlgorithm
from ..compiler.target import host_caches

__all__ = ["ConvKernel", "compile_conv", "normalize_attrs", "gflops"]


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(x) for x in v)
    if len(t) != 2:
        raise ValueError(f"conv attribute {name!r} must be an int or a pair, got {v!r}")
    return t


def normalize_attrs(attrs: dict) -> dict:
    """Attributes as a test writes them (ints for pairs, 1, 2 or 4 pads, an ``activation``)
    -> the canonical conv attributes of ``compiler/ops/conv.py`` plus ``activation``."""
    a = dict(attrs)
    pads = a.get("pads", 0)
    pads = (int(pads),) * 4 if isinstance(pads, (int, np.integer)) else tuple(map(int, pads))
    if len(pads) == 2:  # (vertical, horizontal)
        pads = (pads[0], pads[1], pads[0], pads[1])
    if len(pads) != 4:
        raise ValueError(f"conv pads must be (top, left, bottom, right), got {a.get('pads')!r}")
    out = {"out_channels": int(a["out_channels"]), "kernel": _pair(a["kernel"], "kernel"),
           "stride": _pair(a.get("stride", 1), "stride"),
           "dilation": _pair(a.get("dilation", 1), "dilation"),
           "groups": int(a.get("groups", 1)), "bias": bool(a.get("bias", False)),
           "pads": pads, "activation": a.get("activation")}
    if out["activation"] not in (None, "relu"):
        raise ValueError(f"unsupported conv activation {out['activation']!r}")
    return out


def geometry(attrs: dict, in_shape: tuple[int, int, int]) -> ConvGeometry:
    a = normalize_attrs(attrs)
    return ConvGeometry.from_attrs(a, in_shape, a["activation"])


class ConvKernel:
    """A compiled convolution: ``kernel(x, w, b) -> y`` on NCHW float32 arrays."""

    def __init__(self, g: ConvGeometry, lowering: str, comment: str = "", root=None,
                 tile: DirectTile = TILE_8) -> None:
        self.geometry = g
        self.algorithm = _algorithm(g, lowering)
        self.lowering = self.algorithm.name
        self.tile = tile
        kernel, tag = self.algorithm.kernel(g, tile=tile)
        backend = NumbaBackend(root)
        self.kernel, _, self.source = backend.load_tasked(kernel, tag, "convolution kernel")
        self.path = str(self.kernel.path)
        self.comment = sanitize_comment(f"{comment + ': ' if comment else ''}{g.describe()}")
        self.layout = layout_module(root)
        # the groups of k-tiles of a gathering tile: as the select_tile pass sizes them
        kgroups = self.algorithm.k_groups(g, tile, backend.threads, host_caches().l2)
        self.int_args = self.algorithm.int_args(g, tile=tile, threads=backend.threads,
                                                kgroups=kgroups)
        self.relu = int(g.activation == "relu")
        per_thread = self.algorithm.thread_scratch(g, tile)
        # the compute kernel's per-thread work space, for as many threads as it may run
        self.work = [np.empty(backend.threads * per_thread, np.float32)] \
            if per_thread else []

    def _check(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> None:
        g = self.geometry
        if x.ndim != 4 or tuple(x.shape[1:]) != (g.C, g.H, g.W):
            raise ValueError(f"conv input must be [N, {g.C}, {g.H}, {g.W}], got {x.shape}")
        if tuple(w.shape) != (g.K, g.Cg, g.R, g.S):
            raise ValueError(f"conv weight must be {(g.K, g.Cg, g.R, g.S)}, got {w.shape}")
        if g.bias and (b is None or tuple(b.shape) != (g.K,)):
            raise ValueError(f"conv bias must be [{g.K}], got "
                             f"{None if b is None else b.shape}")
        if not g.bias and b is not None:
            raise ValueError("this conv was compiled without bias, but a bias was given")

    def pack_weights(self, w: np.ndarray, b: np.ndarray | None = None):
        return self.algorithm.pack_weights(self.geometry, w, b, self.tile)

    def pack_input(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        N = x.shape[0]
        xp = np.empty(N * self.algorithm.in_floats(self.geometry), np.float32)
        name, sizes = self.algorithm.input_call(self.geometry)
        self.layout[name](x.ravel(), xp, N, *sizes)
        return xp

    def run(self, xp, wp, bp, N: int, out: np.ndarray | None = None) -> np.ndarray:
        """The compute kernel on packed operands; returns the packed (flat) output."""
        if out is None:
            out = np.empty(N * self.algorithm.out_floats(self.geometry), np.float32)
        self.kernel(xp, wp, bp, out, *self.work, *self.int_args, self.relu, int(N))
        return out

    def unpack_output(self, yp: np.ndarray, N: int) -> np.ndarray:
        g = self.geometry
        out = np.empty((N, g.K, g.P, g.Q), np.float32)
        name, sizes = self.algorithm.output_call(g)
        self.layout[name](yp, out.reshape(-1), N, *sizes)
        return out

    def signature(self) -> tuple[str, ...]:
        return ("array",) * (4 + len(self.work)) + ("int",) * (len(self.int_args) + 2)

    def inspect_asm(self) -> str:
        """Machine code of the compute kernel's task function."""
        return self.kernel.inspect_asm()

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        x, w = np.asarray(x), np.asarray(w)
        b = None if b is None else np.asarray(b)
        self._check(x, w, b)
        N = x.shape[0]
        wp, bp = self.pack_weights(w, b)
        return self.unpack_output(self.run(self.pack_input(x), wp, bp, N), N)


def _algorithm(g: ConvGeometry, lowering: str) -> ConvAlgorithm:
    """The algorithm named ``lowering`` (a name or a family: ``direct`` is the channel-wise
    kernel for depthwise and narrow-group shapes) that computes ``g``."""
    for a in ALGORITHMS:
        if a.is_named(lowering) and a.applies(g):
            return a
    raise ValueError(f"no {lowering!r} algorithm computes {g.describe()}")


def compile_conv(attrs: dict, in_shape: tuple[int, int, int],
                 lowering: Literal["direct", "channelwise", "im2col", "winograd", "winograd_f4",
                                   "winograd_f2"] = "direct", *,
                 comment: str = "",
                 root=None, tile: DirectTile | str = TILE_8) -> ConvKernel:
    """Generate, cache and load the kernels of one convolution (see the module docstring);
    ``tile`` is the direct kernel's register tile (``"14x32/16"``: see ``DirectTile``)."""
    if isinstance(tile, str):
        tile = DirectTile.parse(tile)
    return ConvKernel(geometry(attrs, in_shape), lowering, comment, root, tile)


def gflops(g: ConvGeometry, N: int, seconds: float) -> float:
    """GFLOP/s of one convolution of batch ``N`` that took ``seconds``."""
    return g.flops_per_image * N / seconds / 1e9 if seconds > 0 else math.inf
