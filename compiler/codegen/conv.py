"""Convolution kernel builders (kernel IR) and the Python-level convolution API.

Two lowerings, both cross-correlation as in PyTorch:

``direct``
    The register-tiled micro-kernel of PERF-NOTES.md over channel-blocked tensors. Input
    ``[N, g*Cgb, Hp, Wp, CB]`` (pre-padded, each group's channels zero-padded to a multiple of the
    channel block ``CB``: 8, or ``Cg`` itself when a group has fewer than 8 channels, e.g. the
    3-channel stem); weights ``[g*Kgb, Cgb, R, S, CB, 16]``; output ``[N, g*Kgb*2, P, Q, 8]``
    (each group's output channels zero-padded to a multiple of 16). A tile is 6 output pixels x
    16 output channels: 12 ``<8 x float>`` accumulators + 2 weight vectors + 1 broadcast. One
    flattened ``prange`` over (n, k-block, output row), row fastest so a thread keeps one
    k-block's weights in cache; q-tiles of 6 plus one unrolled tail tile for ``Q % 6``; then
    c-block, r, s and the ``CB`` lanes. Strides and dilations only change literal offsets.
    Depthwise convolutions and narrow groups (``C == K``, ``C/groups`` dividing 8: ResNeXt's
    4-channel groups) use the channel-wise kernel, whose 8 lanes are 8 output channels:
    ``[N, C8, Hp, Wp, 8]`` x ``[C8, R, S, Cg, 8]`` (``vspread`` picks each lane's group input).
    Wider groups run the direct kernel group by group; when a group is whole input blocks
    (``C/groups`` a multiple of 8) and whole output block pairs (``K/groups`` of 16), its
    input and output are the dense channel-blocked layout and stay blocked between kernels.
    In NCHW16c regions (``select_layout``) the same kernels read and write 16-channel blocks
    (``lanes_in`` / ``lanes_out``): the direct kernel reads each as two 8-channel halves and
    stores whole 16-lane accumulators; the depthwise kernel has 16 lanes.

``im2col``
    NCHW. ``im2col`` writes, per image and group, the matrix ``col[Cg*R*S, PQp]`` (``PQp`` =
    ``P*Q`` rounded up to 16, zero columns; stored as 16-column panels), then a blocked GEMM
    ``W[Kgp, Cg*R*S] @ col`` with a 6 x 16 register tile on the same vector intrinsics (the
    epilogue fused into its stores), and a crop kernel copies the valid part to
    ``[N, K, P, Q]``. We use our own GEMM rather than BLAS sgemm:
    scipy is not a runtime dependency, two thread pools (Numba's and BLAS's) fight unless BLAS
    is pinned to one thread, and the GEMM goes through the same printers as every other kernel
    (so a CUDA printer gets it for free). PERF-NOTES measured im2col + BLAS at 18-71% of peak,
    below the direct kernel everywhere; this lowering is the simple, general fallback.

Files: ``conv_direct.py`` (direct and channel-wise builders), ``gemm.py`` (the GEMM),
``layout.py`` (the layout kernels and their epilogue variants), ``tiles.py`` (tile pieces they
share); this file holds the geometry, the weight packing, the cost model and the lowering rule
that turns a ``conv`` / ``conv_transpose`` node into plan steps.

Every kernel takes its sizes as runtime integers: the layout kernels (conversion, im2col, the
crop) entirely; the compute kernels keep literal only what shapes their unrolled inner loops
(channel block, kernel size, stride, dilation, tile structure), while channel-block counts,
spatial sizes, the Q % 6 tail (a runtime branch between unrolled tail tiles) and the fused ReLU
(a runtime flag) are arguments. A fused epilogue other than a lone ReLU is applied by the
output kernel (the NCHWc unpack or the GEMM crop) at its store, with its operands in NCHW.
Each is compiled once per kind and cached, shared by every layer and model (ResNet-18 needs
four direct-convolution kernels). The bias is always added (zeros for a convolution without
one).
Weights and biases are repacked with NumPy (once per weight set, not per inference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numba
import numpy as np

from ..ops import operand_kind as _operand_kind
from ..ops import own_attrs, own_input_types, prologue_of, spatial_out
from ..ops.conv import channelwise, transposed_as_conv_weight
from ..plan import Arg, Call, Step, Storage
from .conv_direct import channelwise_conv_kernel, direct_conv_kernel
from .gemm import gemm_kernel
from .kernel_ir import Kernel
from .layout import crop_epilogue_kernel, layout_module, unpack_epilogue_kernel
from .lowering import LoweringError, step_name, step_ops
from .numba_printer import print_tasked
from .tiles import GEMM_M, GEMM_N, TILE_8, TILE_K, DirectTile

__all__ = ["ConvGeometry", "build_conv_kernels", "kernel_int_args", "pack_weights",
           "estimate_cost", "lower_conv", "conv_module"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ConvGeometry:
    """Every size a convolution kernel needs (batch excluded), validated."""

    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    dh: int
    dw: int
    groups: int
    bias: bool
    activation: str | None
    # Channels a block of the channel-blocked storage the compute kernel reads (a producer's
    # NCHW16c storage: 16; the kernel's own packed input: 8) and writes (its NCHW16c output
    # storage: 16; NCHW8c storage or the packed output an unpack reads: 8). The channel-wise
    # kernel works in one block width: its lanes are channels in and out.
    lanes_in: int = 8
    lanes_out: int = 8
    # Whether that storage is NHWC (8-channel blocks, the blocks of a pixel adjacent: a
    # producer's or consumer's storage only; the packed scratch buffers are NCHW8c).
    nhwc_in: bool = False
    nhwc_out: bool = False

    @classmethod
    def from_attrs(cls, attrs: dict, in_shape: tuple[int, ...],
                   activation: str | None = None) -> ConvGeometry:
        """From a conv node's canonical attributes (``compiler/ops/conv.py``)."""
        C, H, W = (int(d) for d in in_shape)
        g = cls(C, H, W, attrs["out_channels"], *attrs["kernel"], *attrs["stride"],
                *attrs["pads"], *attrs["dilation"], attrs["groups"], bool(attrs["bias"]),
                activation)
        g.validate()
        return g

    def validate(self) -> None:
        if min(self.C, self.H, self.W, self.K, self.R, self.S) < 1:
            raise ValueError(f"conv sizes must be positive: {self}")
        if min(self.sh, self.sw, self.dh, self.dw, self.groups) < 1:
            raise ValueError(f"conv stride, dilation and groups must be >= 1: {self}")
        if min(self.pt, self.pl, self.pb, self.pr) < 0:
            raise ValueError(f"conv pads must be >= 0: {self}")
        if self.C % self.groups or self.K % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels={self.C} and "
                             f"out_channels={self.K}")
        if self.P < 1 or self.Q < 1:
            raise ValueError(f"conv output would be empty ({self.P}x{self.Q}): {self}")
        if self.lanes_in not in (8, 16) or self.lanes_out not in (8, 16):
            raise ValueError(f"conv blocks are 8 or 16 channels: {self}")
        if self.channelwise and self.lanes_in != self.lanes_out:
            raise ValueError(f"a channel-wise convolution reads and writes one block width: "
                             f"{self}")
        if (self.nhwc_in and self.lanes_in != 8) or (self.nhwc_out and self.lanes_out != 8):
            raise ValueError(f"NHWC storage is read and written in 8-channel blocks: {self}")
        if self.lanes_in == 16 and not self.channelwise and self.Cg % 8 and self.groups > 1:
            raise ValueError(f"blocked input needs whole 8-channel blocks per group: {self}")

    @property
    def P(self) -> int:
        return spatial_out(self.H, self.R, self.sh, self.pt, self.pb, self.dh)

    @property
    def Q(self) -> int:
        return spatial_out(self.W, self.S, self.sw, self.pl, self.pr, self.dw)

    @property
    def Cg(self) -> int:
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        return self.K // self.groups

    @property
    def channelwise(self) -> bool:
        """Run by the channel-wise kernel (its lanes are channels; depthwise and narrow
        groups: ``ops.conv.channelwise``) rather than the register-tiled direct one."""
        return channelwise(self.C, self.K, self.groups)

    @property
    def C8(self) -> int:
        """Input blocks of ``lanes_in`` channels (channel-wise: of the output too)."""
        return _ceil_div(self.C, self.lanes_in)

    @property
    def Hp(self) -> int:
        # Only rows the kernel reads: (P-1)*sh + (R-1)*dh + 1 <= H + pt + pb.
        return (self.P - 1) * self.sh + (self.R - 1) * self.dh + 1

    @property
    def Wp(self) -> int:
        return (self.Q - 1) * self.sw + (self.S - 1) * self.dw + 1

    # Blocking of the direct kernel -----------------------------------------------------------
    @property
    def CB(self) -> int:
        """Channel block of the direct kernel's loops and weights: 8, or the group's channel
        count when smaller (3-channel stem), whatever the input storage's block (an NCHW16c
        input is read as two 8-channel halves a block, in the order of NCHW8c: the same sums);
        the channel-wise kernel's: ``lanes_in``."""
        return self.lanes_in if self.channelwise else min(8, self.Cg)

    @property
    def Cgb(self) -> int:
        """Channel blocks per group (direct kernel)."""
        return self.C8 if self.channelwise else _ceil_div(self.Cg, self.CB)

    @property
    def Kgb(self) -> int:
        """16-channel output blocks per group (direct kernel)."""
        return _ceil_div(self.Kg, TILE_K)

    def k_tiles(self, tile: DirectTile) -> int:
        """Register tiles of ``tile.channels`` output channels per group (direct kernel)."""
        if (self.Kgb * TILE_K) % tile.channels:
            raise ValueError(f"tile {tile} does not divide {self.Kg} output channels per group "
                             f"(padded to {self.Kgb * TILE_K})")
        return self.Kgb * TILE_K // tile.channels

    @property
    def out_blocks(self) -> int:
        """Blocks of ``lanes_out`` channels of the compute kernel's output (the direct kernel
        pads each group's output channels to a multiple of 16)."""
        if self.channelwise:
            return self.C8
        return TILE_K // self.lanes_out * self.groups * self.Kgb

    def pack_ints(self) -> tuple[int, int, int, int]:
        """``pack_nchw_blocked``'s blocking of the input: blocks per image, channel block,
        channels and blocks per group (channel-wise: one group of all channels)."""
        if self.channelwise:
            return self.C8, self.lanes_in, self.C, self.C8
        return self.groups * self.Cgb, self.CB, self.Cg, self.Cgb

    def unpack_ints(self) -> tuple[int, ...]:
        """``unpack_blocked_nchw``'s sizes of the packed output: K, P, Q, channels per group,
        their padded count, blocks per image."""
        if self.channelwise:
            return self.K, self.P, self.Q, self.K, self.C8 * self.lanes_out, self.C8
        return self.K, self.P, self.Q, self.Kg, self.Kgb * TILE_K, self.out_blocks

    @property
    def flops_per_image(self) -> int:
        return 2 * self.K * self.Cg * self.R * self.S * self.P * self.Q

    def describe(self) -> str:
        return (f"conv {self.C}x{self.H}x{self.W} -> {self.K}x{self.P}x{self.Q} "
                f"k{self.R}x{self.S} s{self.sh}x{self.sw} d{self.dh}x{self.dw} "
                f"pads{(self.pt, self.pl, self.pb, self.pr)} g{self.groups}"
                f"{' bias' if self.bias else ''}{' ' + self.activation if self.activation else ''}")

    def tag(self) -> str:
        """A short identifier-safe name built from numbers only."""
        return (f"c{self.C}_{self.H}x{self.W}_k{self.K}_{self.R}x{self.S}_s{self.sh}{self.sw}"
                f"_p{self.pt}{self.pl}{self.pb}{self.pr}_d{self.dh}{self.dw}_g{self.groups}")


def kernel_int_args(g: ConvGeometry, lowering: str, x: Storage | None = None,
                    y: Storage | None = None, tile: DirectTile = TILE_8,
                    zero_halo: bool = False) -> tuple[int, ...]:
    """The runtime size arguments of the compute kernel of ``g`` (see ``*_INTS``): with ``x``
    the input is read where a producer stored it channel-blocked (else from the packed scratch
    buffer), with ``y`` the output is written into its channel-blocked storage (else into the
    packed scratch buffer the output kernel reads); ``zero_halo``: the kernel zeroes the halo
    of ``y``'s whole buffer on every call."""
    if lowering == "im2col":
        Kgp = _ceil_div(g.Kg, GEMM_M) * GEMM_M
        PQp = _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        return (Kgp, g.Cg * g.R * g.S, PQp, g.groups)
    if x is None:
        nb = g.pack_ints()[0]
        xin = (g.Hp, g.Wp, 0, 0)
    else:
        nb = x.blocks
        xin = (x.height, x.width, x.top - g.pt, x.left - g.pl)
    if y is None:
        yout = (g.out_blocks, g.P, g.Q, 0, 0)
    else:
        yout = y.ints()
    if g.channelwise:
        return (g.C8, nb, g.P, g.Q) + xin + yout + (int(zero_halo),)
    kt = g.k_tiles(tile)
    return (nb, g.Cgb, g.groups * kt, kt, g.P, g.Q) + xin + yout + (int(zero_halo),)


def build_conv_kernels(g: ConvGeometry, lowering: str, epilogue=(), kinds=(),
                       tile: DirectTile = TILE_8,
                       prologue: tuple[str, dict] | None = None) -> tuple[Kernel, str, str]:
    """The compute kernel of a convolution (kernel IR), its function name and a cache tag.

    The kernel depends only on what stays literal (lowering, channel block, kernel size,
    stride, dilation, register tile, the ops of an epilogue applied at its store), so layers
    and models that share those share one compiled kernel.
    """
    rs = f"{g.R}x{g.S}_s{g.sh}x{g.sw}_d{g.dh}x{g.dw}"
    if epilogue:
        rs += "_" + "-".join(e.op for e in epilogue) + "".join(f"_{k}" for k in kinds)
    if prologue is not None:
        op, a = prologue
        rs += f"_pro_{op}_k{'x'.join(map(str, a['kernel']))}_s{'x'.join(map(str, a['stride']))}" \
            f"_p{''.join(map(str, a['pads']))}_d{'x'.join(map(str, a.get('dilation', (1, 1))))}"
    if lowering == "direct":
        fused = f"; epilogue {', '.join(map(str, epilogue))}" if epilogue else ""
        if prologue is not None:
            fused += f"; prologue {prologue[0]} kernel {prologue[1]['kernel']} stride " \
                     f"{prologue[1]['stride']} pads {prologue[1]['pads']}"
        if g.channelwise:
            kind = "depthwise" if g.Cg == 1 else f"grouped ({g.Cg} channels a group)"
            note = f"{kind} convolution, kernel {g.R}x{g.S}, stride {g.sh}x{g.sw}, " \
                   f"dilation {g.dh}x{g.dw}{fused}; sizes are runtime arguments"
            name = "conv_depthwise" if g.Cg == 1 else "conv_grouped"
            tag = f"depthwise_{rs}" if g.Cg == 1 else f"grouped{g.Cg}_{rs}"
            if g.lanes_in == 16:
                note = f"NCHW16c {note}"
                tag = f"l16_{tag}"
            tag += "_xhwc" if g.nhwc_in else ""
            tag += "_yhwc" if g.nhwc_out else ""
            if g.nhwc_in or g.nhwc_out:
                note = f"{note}; NHWC {'in' if g.nhwc_in else ''}" \
                       f"{' and ' if g.nhwc_in and g.nhwc_out else ''}" \
                       f"{'out' if g.nhwc_out else ''}"
            return channelwise_conv_kernel(g, name, note, epilogue, kinds), name, tag
        note = f"direct NCHW{16 if g.lanes_in == 16 else g.CB}c convolution, kernel " \
               f"{g.R}x{g.S}, stride {g.sh}x{g.sw}, " \
               f"dilation {g.dh}x{g.dw}, tile {tile}{fused}; sizes are runtime arguments"
        tag = f"direct_cb{g.CB}_{rs}" if tile == TILE_8 else \
            f"direct_cb{g.CB}_t{tile.pixels}x{tile.channels}l{tile.lanes}_{rs}"
        if g.lanes_in == 16:
            tag += "_x16"
        if g.lanes_out == 16:
            note = note.replace(" convolution,", " convolution into NCHW16c,")
            tag += "_y16"
        if g.nhwc_in:
            note = note.replace(f"direct NCHW{g.CB}c", "direct NHWC")
            tag += "_xhwc"
        if g.nhwc_out:
            note = note.replace(" convolution,", " convolution into NHWC,")
            tag += "_yhwc"
        return direct_conv_kernel(g, comment=note, epilogue=epilogue, kinds=kinds,
                                  tile_shape=tile, prologue=prologue), "conv_direct", tag
    if prologue is not None:
        raise ValueError("a pooling prologue runs only in the direct convolution kernel")
    if lowering == "im2col":
        note = "im2col GEMM, 6 x 16 register tile; sizes are runtime arguments"
        return gemm_kernel(comment=note), "gemm", "gemm"
    raise ValueError(f"unknown conv lowering {lowering!r} (expected 'direct' or 'im2col')")


# ----------------------------------------------------------------------------------------------
# Sizes of the packed operands, weight packing
# ----------------------------------------------------------------------------------------------


def in_floats(g: ConvGeometry, lowering: str) -> int:
    """Floats per image of the packed input (im2col: the col matrices)."""
    if lowering == "im2col":
        return g.groups * g.Cg * g.R * g.S * _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
    nb, cb, _, _ = g.pack_ints()
    return nb * g.Hp * g.Wp * cb


def out_floats(g: ConvGeometry, lowering: str) -> int:
    """Floats per image of the packed output."""
    if lowering == "im2col":
        return g.groups * _ceil_div(g.Kg, GEMM_M) * GEMM_M * _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
    return g.out_blocks * g.P * g.Q * g.lanes_out


def pack_weights(g: ConvGeometry, lowering: str, w: np.ndarray, b: np.ndarray | None,
                 tile: DirectTile = TILE_8) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``[K, C/groups, R, S]`` and bias (zeros when None: the kernels always add one)
    in the compute kernel's layout, flat float32 (direct: ``[G, k-tiles, Cgb, R, S, CB,
    tile.channels]``)."""
    w = np.asarray(w, dtype=np.float32)
    b = np.zeros(g.K, np.float32) if b is None else np.asarray(b, np.float32)
    G, Kg, Cg, R, S = g.groups, g.Kg, g.Cg, g.R, g.S
    if lowering == "im2col":
        Kgp = _ceil_div(Kg, GEMM_M) * GEMM_M
        wp = np.zeros((G, Kgp, Cg * R * S), np.float32)
        wp[:, :Kg] = w.reshape(G, Kg, Cg * R * S)
        bp = np.zeros((G, Kgp), np.float32)
        bp[:, :Kg] = b.reshape(G, Kg)
        return wp.ravel(), bp.ravel()
    if g.channelwise:  # [C8, R, S, Cg, L]: lane l of block cb is output channel L cb + l
        L = g.lanes_in
        wd = np.zeros((g.C8 * L, Cg, R, S), np.float32)
        wd[: g.C] = w
        bp = np.zeros(g.C8 * L, np.float32)
        bp[: g.C] = b
        wd = wd.reshape(g.C8, L, Cg, R, S).transpose(0, 3, 4, 2, 1)
        return np.ascontiguousarray(wd).ravel(), bp
    CB, Cgb, Kgb, kt, TK = g.CB, g.Cgb, g.Kgb, g.k_tiles(tile), tile.channels
    wpad = np.zeros((G, Kgb * TILE_K, Cgb * CB, R, S), np.float32)
    wpad[:, :Kg, :Cg] = w.reshape(G, Kg, Cg, R, S)
    # [G, kt, TK, Cgb, CB, R, S] -> [G, kt, Cgb, R, S, CB, TK]
    wp = wpad.reshape(G, kt, TK, Cgb, CB, R, S).transpose(0, 1, 3, 5, 6, 4, 2)
    bp = np.zeros((G, Kgb * TILE_K), np.float32)
    bp[:, :Kg] = b.reshape(G, Kg)
    return np.ascontiguousarray(wp).ravel(), bp.ravel()


def conv_module(g: ConvGeometry, lowering: str, root=None, epilogue=(), kinds=(),
                tile: DirectTile = TILE_8,
                prologue: tuple[str, dict] | None = None) -> tuple[Any, str, str]:
    """``(module, function name, source)`` of the compute kernel, from the cache."""
    from . import cache

    kernel, name, tag = build_conv_kernels(g, lowering, epilogue, kinds, tile, prologue)
    src = print_tasked(kernel, "convolution kernel")
    return cache.load_module(src, tag, root), name, src


# ----------------------------------------------------------------------------------------------
# Cost model (lowering selection)
# ----------------------------------------------------------------------------------------------

#: Fraction of the 8-lane fp32 peak each compute kernel reaches on well-shaped layers
#: (PERF-NOTES and bench/RESULTS.md: the direct kernel 55-79%, im2col + our GEMM well below
#: it, its gather costing about as much as a pass over the col matrix at memory speed). The
#: direct kernel's 16-lane tiles measured 1.4-1.8x its 8-lane speed on 3x3 layers (the GEMM
#: stays 8-lane).
EFFICIENCY = {"direct": 0.6, "im2col": 0.3}
SPEEDUP_16_LANES = {"direct": 1.5, "im2col": 1.0}
#: Flop-equivalents per float moved by a layout kernel (pack, im2col, unpack, crop).
FLOPS_PER_FLOAT_MOVED = 8.0


def estimate_cost(op: str, attrs: Mapping[str, Any], in_shape: tuple[int, ...],
                  lowering: str, lanes: int = 8) -> float:
    """Relative time of a convolution under ``lowering``: the multiply-adds of each kernel's
    padded tiling divided by the fraction of peak it reaches, plus the floats its layout
    kernels move. Only the comparison between lowerings of one layer is meaningful."""
    g = _geometry(op, dict(attrs), in_shape)
    if lowering == "im2col":
        work = g.groups * _ceil_div(g.Kg, GEMM_M) * GEMM_M * g.Cg * g.R * g.S * \
            _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
    elif g.channelwise:
        work = g.C8 * 8 * g.Cg * g.R * g.S * g.P * g.Q
    else:
        work = g.groups * g.Kgb * TILE_K * g.Cgb * g.CB * g.R * g.S * g.P * g.Q
    moved = in_floats(g, lowering) + out_floats(g, lowering)
    speed = EFFICIENCY[lowering] * (SPEEDUP_16_LANES[lowering] if lanes == 16 and not
                                    g.channelwise else 1.0)
    return 2 * work / speed + FLOPS_PER_FLOAT_MOVED * moved


# ----------------------------------------------------------------------------------------------
# The lowering rule of conv and conv_transpose
# ----------------------------------------------------------------------------------------------


def _transpose_as_conv(attrs: dict, in_shape: tuple[int, ...]):
    """conv_transpose as a stride-1 convolution of the zero-stuffed, re-padded input with the
    flipped, transposed kernel: ``(conv attrs, stuffed shape, padding before, stuffed hw)``."""
    C, H, W = in_shape
    (R, S), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    t, l, b, r = attrs["pads"]
    oph, opw = attrs["output_padding"]
    before = (dh * (R - 1) - t, dw * (S - 1) - l)
    zh = (H - 1) * sh + 1 + before[0] + dh * (R - 1) - b + oph
    zw = (W - 1) * sw + 1 + before[1] + dw * (S - 1) - r + opw
    conv = {"out_channels": attrs["out_channels"], "kernel": (R, S), "stride": (1, 1),
            "pads": (0, 0, 0, 0), "dilation": (dh, dw), "groups": attrs["groups"],
            "bias": attrs["bias"]}
    return conv, (C, zh, zw), before, (zh, zw)


def _geometry(op: str, attrs: dict, in_shape: tuple[int, ...],
              activation: str | None = None) -> ConvGeometry:
    if op == "conv_transpose":
        attrs, in_shape, _, _ = _transpose_as_conv(attrs, in_shape)
    return ConvGeometry.from_attrs(attrs, in_shape, activation)


def lower_conv(ctx, node) -> Step:
    """A ``conv`` / ``conv_transpose`` node as kernel calls: [zero-stuff,] pack (or im2col)
    unless the input is already channel-blocked, the compute kernel, then unpack (or crop) with
    the fused epilogue unless the output stays channel-blocked, in which case the compute
    kernel applies the epilogue at its store. The compute kernel always fuses the bias and a
    leading ReLU (a runtime flag, so layers with and without share a kernel)."""
    from .elementwise import zero_stuff_kernel

    lowering = node.attrs["lowering"]
    attrs = own_attrs(node.attrs)
    x = ctx.tensor_inputs[0]
    # the convolution's own input: x, or the pool of x its prologue computes
    x_shape = own_input_types([ctx.graph.node(i).type for i in node.inputs], node.attrs)[0].shape
    x_store, y_store = ctx.storage(x), ctx.out_storage
    pre = prologue_of(node.attrs)
    prologue = (pre[0].op, pre[0].attr_dict) if pre else None
    if prologue is not None and (x_store is None or lowering != "direct" or len(pre) > 1):
        raise LoweringError(f"{ctx.kname}: a pooling prologue needs one pool of a "
                            "channel-blocked input and the direct lowering")
    epilogue = list(ctx.epilogue)
    relu = bool(epilogue) and epilogue[0].op == "relu"
    if relu:
        epilogue = epilogue[1:]
    operands = [ctx.operand(e) for e in epilogue if e.operand is not None]
    in_kernel = epilogue if y_store is not None else []
    kinds = [_operand_kind(ctx.graph.node(o).type.shape, node.type.shape) for o in operands]
    g = _geometry(node.op, attrs, x_shape, "relu" if relu else None)
    # the block widths of the storage read and written (the packed scratch buffers: 8)
    lanes_in = x_store.lanes if x_store is not None else 8
    lanes_out = y_store.lanes if y_store is not None else 8
    if g.channelwise:  # one width in and out: the stored side's
        lanes_in = lanes_out = lanes_in if x_store is not None else lanes_out
    nhwc_in = x_store is not None and x_store.nhwc
    nhwc_out = y_store is not None and y_store.nhwc
    if (lanes_in, lanes_out, nhwc_in, nhwc_out) != (8, 8, False, False):
        g = replace(g, lanes_in=lanes_in, lanes_out=lanes_out, nhwc_in=nhwc_in,
                    nhwc_out=nhwc_out)
        g.validate()
    # The register tile chosen by the select_tile pass (absent: depthwise, im2col, or a graph
    # lowered without the pipeline).
    tile = DirectTile.parse(node.attrs["tile"]) if "tile" in node.attrs else TILE_8
    root = ctx.cache_dir
    layout = layout_module(root)
    mod, fname, src = conv_module(g, lowering, root, in_kernel, kinds if in_kernel else (), tile,
                                  prologue)
    calls: list[Call] = []
    scratch: dict[str, int] = {}
    source = Arg("value", x)
    if node.op == "conv_transpose":
        _, stuffed, before, hw = _transpose_as_conv(attrs, x_shape)
        k = zero_stuff_kernel(f"n{node.id}_zero_stuff", x_shape, attrs["stride"], before, hw,
                              ctx.comment)
        calls.append(Call(None, (Arg("value", x), Arg("scratch", "stuffed"), Arg("batch")),
                          k.name, k))
        scratch["stuffed"] = int(np.prod(stuffed))
        source = Arg("scratch", "stuffed")
    xp, yp = Arg("scratch", "conv_in"), Arg("scratch", "conv_out")
    ints = [Arg("int", v) for v in (g.C, g.H, g.W)]
    if x_store is not None:
        xp = source  # read where the producer stored it
    elif lowering == "im2col":
        pqp = _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        calls.append(Call(layout.im2col, (source, xp, Arg("batch"), *ints, *(
            Arg("int", v) for v in (g.groups, g.Cg, g.R, g.S, g.P, g.Q, g.sh, g.sw, g.dh, g.dw,
                                    g.pt, g.pl, pqp))), "im2col"))
    else:
        calls.append(Call(layout.pack_nchw_blocked, (source, xp, Arg("batch"), *ints, *(
            Arg("int", v) for v in (g.Hp, g.Wp, g.pt, g.pl, *g.pack_ints()))),
            "pack_nchw_blocked"))
    if x_store is None:
        scratch["conv_in"] = in_floats(g, lowering)
    if y_store is not None:
        yp = Arg("output")
    else:
        scratch["conv_out"] = out_floats(g, lowering)
    op_args = [Arg("value", o) for o in operands] if in_kernel else []
    pooled: list[Arg] = []  # the prologue's scratch (one pooled row per thread), x's H x W
    pooled_ints: list[Arg] = []
    if prologue is not None:
        scratch["pooled"] = numba.config.NUMBA_NUM_THREADS * g.Cgb * g.Q * 8
        pooled = [Arg("scratch", "pooled")]
        pooled_ints = [Arg("int", v) for v in ctx.graph.node(x).type.shape[1:]]
    op_ints = [Arg("int", v) for o in operands for v in ctx.operand_geometry(o)] \
        if in_kernel else []
    calls.append(Call(getattr(mod, fname), (xp, Arg("const", "w"), Arg("const", "b"), yp,
                                            *op_args, *pooled,
                                            *(Arg("int", v) for v in kernel_int_args(
                                                g, lowering, x_store, y_store, tile,
                                                bool(node.attrs.get("zero_halo")))),
                                            *pooled_ints, *op_ints, Arg("int", int(relu)),
                                            Arg("batch")),
                      fname))
    if y_store is None:
        calls.append(_output_call(ctx, node, g, lowering, layout, epilogue, operands))
    w, *b = ctx.param_inputs

    def pack(values: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
        weight = np.asarray(values[w], np.float64)
        if node.op == "conv_transpose":
            weight = transposed_as_conv_weight(weight, attrs["groups"])
        wp, bp = pack_weights(g, lowering, weight, values[b[0]] if b else None, tile)
        return {"w": wp, "b": bp}

    return Step(node.id, step_name(node), step_ops(node), [x] + operands,
                y_store.floats if y_store is not None else node.type.size, calls, pack=pack,
                scratch=scratch, lowering=lowering, storage=y_store,
                # packing reads the whole input before the output is written; a blocked input
                # or output is read and written in place by the compute kernel itself
                inplace=x_store is None and y_store is None,
                sources={Path(mod.__file__).parent.name + ".py": src})


def _output_call(ctx, node, g: ConvGeometry, lowering: str, layout, epilogue,
                 operands: list[int]) -> Call:
    """The kernel that brings the packed output to NCHW, applying the epilogue at its store."""
    yp = Arg("scratch", "conv_out")
    if lowering == "im2col":
        pqp = _ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
        out_ints = (g.K, g.Kg, _ceil_div(g.Kg, GEMM_M) * GEMM_M, g.P * g.Q, pqp)
        plain, with_epilogue = layout.crop_gemm, crop_epilogue_kernel
    else:
        out_ints = g.unpack_ints()
        plain = layout.unpack_blocked_nchw if g.lanes_out == 8 else layout.unpack_blocked16_nchw
        with_epilogue = partial(unpack_epilogue_kernel, lanes=g.lanes_out)
    ints = tuple(Arg("int", v) for v in out_ints)
    if not epilogue:
        return Call(plain, (yp, Arg("output"), Arg("batch"), *ints), plain.py_func.__name__)
    kinds = [_operand_kind(ctx.graph.node(o).type.shape, node.type.shape) for o in operands]
    name = f"n{node.id}_{'unpack' if lowering != 'im2col' else 'crop'}_epilogue"
    k = with_epilogue(name, epilogue, kinds, ctx.comment)
    return Call(None, (yp, Arg("output"), *(Arg("value", o) for o in operands), Arg("batch"),
                       *ints), name, k)
