"""Convolution kernels (kernel IR): which builder, its size arguments, its packed weights.

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

Files: ``conv_geometry.py`` (the sizes), ``conv_direct.py`` (direct and channel-wise
builders), ``gemm.py`` (the GEMM), ``layout.py`` (the layout kernels and their epilogue
variants), ``tiles.py`` (tile pieces they share); this file chooses among the builders, gives
their runtime size arguments and the packed operands' sizes, and packs the weights. The
lowering rule that turns a ``conv`` / ``conv_transpose`` node into plan steps, and the cost
model, are the op's (``compiler/ops/conv.py``).

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

import numpy as np

from ..types import Storage
from .conv_direct import channelwise_conv_kernel, direct_conv_kernel
from .conv_geometry import ConvGeometry, ceil_div
from .gemm import gemm_kernel
from .kernel_ir import Kernel
from .tiles import GEMM_M, GEMM_N, TILE_8, TILE_K, DirectTile

__all__ = ["build_conv_kernels", "kernel_int_args", "pack_weights", "in_floats", "out_floats"]


def kernel_int_args(g: ConvGeometry, lowering: str, x: Storage | None = None,
                    y: Storage | None = None, tile: DirectTile = TILE_8,
                    zero_halo: bool = False) -> tuple[int, ...]:
    """The runtime size arguments of the compute kernel of ``g`` (see ``*_INTS``): with ``x``
    the input is read where a producer stored it channel-blocked (else from the packed scratch
    buffer), with ``y`` the output is written into its channel-blocked storage (else into the
    packed scratch buffer the output kernel reads); ``zero_halo``: the kernel zeroes the halo
    of ``y``'s whole buffer on every call."""
    if lowering == "im2col":
        Kgp = ceil_div(g.Kg, GEMM_M) * GEMM_M
        PQp = ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
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
        return g.groups * g.Cg * g.R * g.S * ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
    nb, cb, _, _ = g.pack_ints()
    return nb * g.Hp * g.Wp * cb


def out_floats(g: ConvGeometry, lowering: str) -> int:
    """Floats per image of the packed output."""
    if lowering == "im2col":
        return g.groups * ceil_div(g.Kg, GEMM_M) * GEMM_M * ceil_div(g.P * g.Q, GEMM_N) * GEMM_N
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
        Kgp = ceil_div(Kg, GEMM_M) * GEMM_M
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
