"""The algorithms that compute a convolution, one object each: which shapes it takes, its cost,
the channel-blocked storage it reads and writes, its buffer sizes, its weight packing, its
compute kernel and that kernel's size arguments. ``lowering.lower_conv`` turns the one a node
records (``lowering``, chosen by ``select_lowering`` among :data:`ALGORITHMS`) into kernel calls.

``direct``
    The register-tiled micro-kernel of PERF-NOTES.md over channel-blocked tensors. Input
    ``[N, g*Cgb, Hp, Wp, CB]`` (pre-padded, each group's channels zero-padded to a multiple of
    the channel block ``CB``: 8, or ``Cg`` itself when a group has fewer than 8 channels, e.g.
    the 3-channel stem); weights ``[g*Kgb, Cgb, R, S, CB, 16]``; output ``[N, g*Kgb*2, P, Q,
    8]`` (each group's output channels zero-padded to a multiple of 16). A tile is 6 output
    pixels x 16 output channels: 12 ``<8 x float>`` accumulators + 2 weight vectors + 1
    broadcast (wider tiles on 16-lane targets: ``select_tile``). One flattened parallel loop
    over (n, k-block, output row); q-tiles (the last ending at the row's end; on 8 lanes
    6-pixel tiles, then the 4-pixel ones of ``tiles.split_8``); then c-block, r, s and the
    ``CB`` lanes. Strides and dilations only change literal offsets.
    Groups run group by group; when a group is whole input blocks (``C/groups`` a multiple of
    8) and whole output block pairs (``K/groups`` of 16), its input and output are the dense
    channel-blocked layout and stay blocked between kernels. In NCHW16c regions the kernel
    reads each 16-channel block as two 8-channel halves and stores whole 16-lane accumulators.

``channelwise``
    Depthwise convolutions and narrow groups (``C == K``, ``C/groups`` dividing 8: ResNeXt's
    4-channel groups): 8 (or 16) lanes are 8 (16) output channels, ``[N, C8, Hp, Wp, L]`` x
    ``[C8, R, S, Cg, L]`` (``vspread`` picks each lane's group input). Its user-facing family
    is ``direct``: ``--lowering direct`` means this kernel for such shapes.

``implicit_gemm`` (GPU targets only)
    NCHW in and out, nothing packed: the GEMM of ``kernels/gpu_conv.py`` over the weights as
    they are and the im2col matrix read from the input where a tile needs it, tiled through
    shared memory by blocks of 64 to 256 threads (a tile per layer). The bias and a leading
    ReLU are applied in its stores; another fused epilogue makes it write a scratch buffer
    that the crop kernel copies out through the epilogue.

``gpu_direct`` (GPU targets only)
    The implicit GEMM's arrays, sizes and output handling, a thread per output value summing
    its window in order: depthwise layers and groups of one or two output channels, whose
    GEMM tiles would be mostly padding rows.

``im2col``
    NCHW. ``im2col`` writes, per image and group, the matrix ``col[Cg*R*S, PQp]`` (``PQp`` =
    ``P*Q`` rounded up to 16, zero columns; stored as 16-column panels), then a blocked GEMM
    ``W[Kgp, Cg*R*S] @ col`` with a 6 x 16 register tile on the same vector intrinsics (the
    epilogue fused into its stores), and a crop kernel copies the valid part to ``[N, K, P,
    Q]``. Our own GEMM rather than BLAS sgemm: scipy is not a runtime dependency, two thread
    pools (Numba's and BLAS's) fight unless BLAS is pinned to one thread, and the GEMM goes
    through the same printers as every other kernel. PERF-NOTES measured im2col + BLAS at
    18-71% of peak, below the direct kernel everywhere; this is the general fallback.

``winograd_f4``, ``winograd_f2`` (family ``winograd``)
    Winograd F(4x4, 3x3) and F(2x2, 3x3) (``kernels/winograd.py``) for 3x3, stride-1,
    ungrouped convolutions of at least 8 input channels: the same channel-blocked input and
    output storage as ``direct`` (and its packed scratch buffers where a side is NCHW); one
    fused kernel transforms 6 input tiles of every channel block into a per-thread scratch,
    runs the 36 (16) GEMMs over the input channels on the direct kernel's 6 x 16 register
    tile, and transforms back at the store, with the epilogue. The weights are the filter
    transform ``U = G g G^T``, computed in float64 when parameters are set (the ``conv_pack``
    derived parameter). Its float32 error is larger than a direct sum's: :meth:`error_bound`.
    Refused elsewhere (stride, dilation, groups, other kernel sizes, a 3-channel stem): the
    multiplications it saves are those of the 3x3 window sliding by one pixel.

Every kernel takes its sizes as runtime integers where that costs nothing: the compute kernels
keep literal only what shapes their unrolled inner loops (channel block, kernel size, stride,
dilation, tile structure), so one compiled kernel serves many layers and models. The bias is
always added (zeros for a convolution without one); weights are packed with NumPy once per
weight set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...decisions import own_attrs
from ...kernels.conv_direct import channelwise_conv_kernel, direct_conv_kernel
from ...kernels.conv_geometry import ConvGeometry, ceil_div
from ...kernels.gemm import gemm_kernel
from ...kernels.gpu_conv import (
    GemmTile,
    choose_gemm_tile,
    gpu_direct_conv_kernel,
    implicit_gemm_conv_kernel,
)
from ...kernels.kernel_ir import Kernel
from ...kernels.layout import crop_epilogue_kernel, im2col_strides, unpack_epilogue_kernel
from ...kernels.tiles import GEMM_M, GEMM_N, TILE_8, TILE_K, DirectTile, gather_groups
from ...kernels.winograd import (
    F2,
    F4,
    TILES,
    WinogradTransform,
    pack_filters,
    scratch_floats,
    winograd_conv_kernel,
)
from ...kernels.winograd import applies as winograd_applies
from ...kernels.winograd import tiles as winograd_tiles
from ...target import DEFAULT_CACHES, Caches
from ...types import Storage
from .. import EPS32, BoundCtx, own_input_types, sum_bound
from .padding import pad_nchw
from .transpose import transpose_as_conv

__all__ = ["LoweringChoice", "ConvAlgorithm", "DIRECT", "CHANNELWISE", "IM2COL", "WINOGRAD_F4",
           "WINOGRAD_F2", "IMPLICIT_GEMM", "GPU_DIRECT", "ALGORITHMS", "by_name", "geometry",
           "node_geometry", "kernel_lanes", "FLOPS_PER_FLOAT_MOVED"]

def geometry(op: str, attrs: dict, in_shape: tuple[int, ...],
              activation: str | None = None) -> ConvGeometry:
    """The geometry of a ``conv`` (or of the stuffed convolution a ``conv_transpose`` runs)
    from its canonical attributes and input shape."""
    if op == "conv_transpose":
        attrs, in_shape, _, _ = transpose_as_conv(attrs, in_shape)
    return ConvGeometry.from_attrs(attrs, in_shape, activation)


def node_geometry(node, in_types) -> ConvGeometry:
    """The geometry of a ``conv`` / ``conv_transpose`` node given its input types (its own
    input seen through a fused prologue)."""
    return geometry(node.op, own_attrs(node.attrs),
                    own_input_types(in_types, node.attrs)[0].shape)


def kernel_lanes(g: ConvGeometry, x_lanes: int | None, y_lanes: int | None) -> tuple[int, int]:
    """The block widths the compute kernel reads and writes: those of the input's and the
    output's channel-blocked storage (None: not stored blocked; the kernel then reads or writes
    its own packed scratch buffer, of 8-channel blocks). The channel-wise kernel works in one
    width, the stored side's."""
    lanes_in, lanes_out = x_lanes or 8, y_lanes or 8
    if g.channelwise:
        lanes_in = lanes_out = lanes_in if x_lanes is not None else lanes_out
    return lanes_in, lanes_out


#: Flop-equivalents per float moved by a layout kernel (pack, im2col, unpack, crop).
FLOPS_PER_FLOAT_MOVED = 8.0

#: A pooling prologue of the compute kernel: ``(op, attrs)``.
Prologue = tuple[str, dict]


def _window_tag(g: ConvGeometry, epilogue, kinds, prologue: Prologue | None,
                residual: bool = False) -> str:
    """The literal part of a compute kernel's cache tag: window, stride, dilation, fused ops."""
    rs = f"{g.R}x{g.S}_s{g.sh}x{g.sw}_d{g.dh}x{g.dw}"
    if residual:
        rs += "_residual"
    if epilogue:
        rs += "_" + "-".join(e.op for e in epilogue) + "".join(f"_{k}" for k in kinds)
    if prologue is not None:
        op, a = prologue
        rs += f"_pro_{op}_k{'x'.join(map(str, a['kernel']))}_s{'x'.join(map(str, a['stride']))}" \
            f"_p{''.join(map(str, a['pads']))}_d{'x'.join(map(str, a.get('dilation', (1, 1))))}"
    return rs


def _fused_note(epilogue, prologue: Prologue | None) -> str:
    fused = f"; epilogue {', '.join(map(str, epilogue))}" if epilogue else ""
    if prologue is not None:
        fused += f"; prologue {prologue[0]} kernel {prologue[1]['kernel']} stride " \
                 f"{prologue[1]['stride']} pads {prologue[1]['pads']}"
    return fused


@dataclass(frozen=True)
class LoweringChoice:
    """What lowering selection (``passes/select_lowering.py``) asks of an algorithm, of a
    convolution or of a convolution's weight gradient. ``family`` is the name a user asks for
    (``--lowering``): the channel-wise kernel is the ``direct`` family's form for its shapes.
    ``efficiency``: the fraction of the 8-lane fp32 peak its compute kernel reaches on
    well-shaped layers."""

    name: str
    family: str
    efficiency: float
    #: What it does not compute, for the refusal of a ``--lowering`` that names it ("" when it
    #: computes every node of its family).
    refusal: str = ""
    #: Whether its compute kernel indexes per-thread scratch (``thread_scratch``), which has
    #: no CUDA form: a CPU-only algorithm.
    cpu_only: bool = False
    #: Whether its kernels are a GPU's (threads of a block cooperating): CUDA targets only.
    gpu_only: bool = False
    #: Whether the cost model (and ``--autotune``) may choose it in a training graph, whose
    #: packed weights are made again after every update (Winograd's filter transform: not
    #: counted by the cost model; asked for by name, it runs).
    auto_in_training: bool = True

    def runs_on(self, target) -> bool:
        """Whether it can compute on ``target`` (a :class:`~cnnc.compiler.target.Target`)."""
        return not self.cpu_only if target.cuda else not self.gpu_only

    def is_named(self, choice: str) -> bool:
        """Whether a user's ``--lowering`` choice names it: its name, or its family."""
        return choice in (self.name, self.family)

    def applies_to(self, node, in_types) -> bool:
        """Whether it computes this node."""
        raise NotImplementedError

    def estimate(self, node, in_types, lanes: int = 8,
                 caches: Caches = DEFAULT_CACHES) -> float:
        """Its relative time on this node on a target of ``lanes`` lanes and these ``caches``
        (comparable between the algorithms of one node only)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ConvAlgorithm(LoweringChoice):
    """What every convolution algorithm answers. ``speedup_16_lanes``: how much faster it runs
    on a 16-lane target."""

    speedup_16_lanes: float = 1.0
    #: Whether it reads and writes channel-blocked storage (NCHW8c, NCHW16c, NHWC).
    blocked: bool = False
    #: Whether its compute kernel reads the NCHW input as it is and writes the NCHW output
    #: itself (an output kernel then only applies an epilogue beyond the bias and ReLU).
    plain_io: bool = False
    #: Whether its compute kernel can take a residual add as a runtime choice
    #: (``kernel(..., residual=True)``).
    runtime_residual: bool = False

    def applies(self, g: ConvGeometry) -> bool:
        raise NotImplementedError

    def applies_to(self, node, in_types) -> bool:
        """Whether it computes this node (lowering selection's question)."""
        return self.applies(node_geometry(node, in_types))

    def estimate(self, node, in_types, lanes: int = 8,
                 caches: Caches = DEFAULT_CACHES) -> float:
        """:meth:`cost` of this node on a target of ``lanes`` lanes and these ``caches``."""
        return self.cost(node_geometry(node, in_types), lanes, caches)

    def work(self, g: ConvGeometry) -> int:
        """Multiply-adds per image of its padded tiling."""
        raise NotImplementedError

    def in_floats(self, g: ConvGeometry) -> int:
        """Floats per image of the packed input (im2col: the col matrices)."""
        raise NotImplementedError

    def out_floats(self, g: ConvGeometry) -> int:
        """Floats per image of the packed output."""
        raise NotImplementedError

    def cost(self, g: ConvGeometry, lanes: int = 8, caches: Caches = DEFAULT_CACHES) -> float:
        """Relative time: the multiply-adds of its padded tiling divided by the fraction of
        peak it reaches, plus the floats its layout kernels move. Only the comparison between
        algorithms of one layer is meaningful. ``caches``: the target's (Winograd's)."""
        speed = self.efficiency * (self.speedup_16_lanes if lanes == 16 else 1.0)
        moved = self.in_floats(g) + self.out_floats(g)
        return 2 * self.work(g) / speed + FLOPS_PER_FLOAT_MOVED * moved

    def reads_blocked(self, g: ConvGeometry) -> bool:
        """Whether its compute kernel can read a producer's channel-blocked storage."""
        return False

    def writes_blocked(self, g: ConvGeometry) -> bool:
        """Whether its compute kernel can write channel-blocked storage for a consumer."""
        return False

    def refuse_fusions(self, prologue: Prologue | None, residual: bool) -> None:
        """For a kernel that fuses neither a pooling prologue nor a runtime residual: refuse
        them (``kernel``'s arguments)."""
        if residual:
            raise ValueError(f"the {self.name} kernel takes no runtime residual")
        if prologue is not None:
            raise ValueError("a pooling prologue runs only in the direct convolution kernel")

    def parse_tile(self, text: str | None, g: ConvGeometry) -> DirectTile | GemmTile:
        """The tile a node records (``select_tile``: its ``tile``; None: a graph lowered
        without the pass, the algorithm's default for ``g``)."""
        return DirectTile.parse(text) if text is not None else TILE_8

    def kernel(self, g: ConvGeometry, epilogue=(), kinds=(), tile: DirectTile = TILE_8,
               prologue: Prologue | None = None, residual: bool = False) -> tuple[Kernel, str]:
        """The compute kernel (kernel IR) and a cache tag. The kernel depends only on what
        stays literal (channel block, kernel size, stride, dilation, register tile, the ops of
        an epilogue applied at its store), so layers and models that share those share it.
        ``residual``: the residual add (and a ReLU after it) as a runtime choice instead of
        an ``epilogue`` (:attr:`runtime_residual` algorithms only: ``tiles.residual_store``)."""
        raise NotImplementedError

    def k_groups(self, g: ConvGeometry, tile: DirectTile, threads: int, l2: int) -> int | None:
        """The groups of output-channel tiles a task of the compute kernel runs where the
        kernel takes their count as a runtime size (``kgroups`` of :meth:`int_args`), sized
        by the target's ``l2`` bytes per core and the ``threads``; None where it takes none."""
        return None

    def int_args(self, g: ConvGeometry, x: Storage | None = None, y: Storage | None = None,
                 tile: DirectTile = TILE_8, zero_halo: bool = False,
                 threads: int = 1, kgroups: int | None = None) -> tuple[int, ...]:
        """The runtime size arguments of the compute kernel: with ``x`` the input is read
        where a producer stored it channel-blocked (else from the packed scratch buffer), with
        ``y`` the output is written into its channel-blocked storage (else into the packed
        scratch buffer the output kernel reads); ``zero_halo``: the kernel zeroes the halo of
        ``y``'s whole buffer on every call; ``threads``: the threads its parallel loop's tasks
        run on (a kernel that sizes its tasks by them: Winograd's); ``kgroups``: the groups
        of k-tiles of a direct kernel whose tasks take several (``Direct.k_groups``)."""
        raise NotImplementedError

    def pack_weights(self, g: ConvGeometry, w: np.ndarray, b: np.ndarray | None,
                     tile: DirectTile = TILE_8) -> tuple[np.ndarray, np.ndarray]:
        """Weights ``[K, C/groups, R, S]`` and bias (zeros when None: the kernels always add
        one) in the compute kernel's layout, flat float32."""
        raise NotImplementedError

    def packed_sizes(self, g: ConvGeometry, tile: DirectTile = TILE_8) -> tuple[int, int]:
        """Floats of the packed weights and of the packed bias (:meth:`pack_weights`)."""
        raise NotImplementedError

    def pack_flat(self, g: ConvGeometry, w: np.ndarray, b: np.ndarray | None,
                  tile: DirectTile = TILE_8, out: np.ndarray | None = None) -> np.ndarray:
        """:meth:`pack_weights`' weights then bias in one flat float32 array (the
        ``conv_pack`` node's value, made again after every training update), written into
        ``out`` where one is given."""
        return np.concatenate(self.pack_weights(g, w, b, tile), out=out)

    def input_call(self, g: ConvGeometry) -> tuple[str, tuple[int, ...]]:
        """The shared layout kernel (``kernels.layout``) that brings an NCHW input to the
        compute kernel's packed input, and its size arguments (after the source, the packed
        buffer and the batch size)."""
        raise NotImplementedError

    def output_call(self, g: ConvGeometry) -> tuple[str, tuple[int, ...]]:
        """The shared layout kernel that brings the packed output to NCHW, and its size
        arguments (after the packed buffer, the output and the batch size)."""
        raise NotImplementedError

    def output_epilogue_kernel(self, name: str, g: ConvGeometry, epilogue, kinds,
                               comment: str) -> Kernel:
        """The output kernel with a fused epilogue applied at its store (its operands after
        the output, then the batch size and the sizes of :meth:`output_call`)."""
        raise NotImplementedError

    def thread_scratch(self, g: ConvGeometry, tile: DirectTile = TILE_8) -> int:
        """Floats of scratch the compute kernel with ``tile`` needs per worker thread (its
        ``work`` argument, after the epilogue operands), 0 for none."""
        return 0

    def error_bound(self, ctx: BoundCtx) -> np.ndarray:
        """How far its float32 output may be from the float64 reference (``cnnc check``,
        ``docs/numerics.md``): a sum of C/groups x R x S products in any order, Higham's
        ``(K + 2) x 2^-24 x sum |terms|`` (``ops.sum_bound``)."""
        return _SUM_BOUND(ctx)


_SUM_BOUND = sum_bound()


def _blocked_int_args(g: ConvGeometry, x: Storage | None, y: Storage | None
                      ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Input blocks per image, the input's geometry and the output's, as the direct and
    channel-wise kernels take them (the packed scratch buffers where no storage is given)."""
    if x is None:
        nb = g.pack_ints()[0]
        xin = (g.Hp, g.Wp, 0, 0)
    else:
        nb = x.blocks
        xin = (x.height, x.width, x.top - g.pt, x.left - g.pl)
    yout = (g.out_blocks, g.P, g.Q, 0, 0) if y is None else y.ints()
    return nb, xin, yout


@dataclass(frozen=True)
class _BlockedAlgorithm(ConvAlgorithm):
    """The direct and channel-wise kernels: input packed to (or read from) channel-blocked
    storage, output written to it (unpacked to NCHW by the output kernel where needed)."""

    def in_floats(self, g: ConvGeometry) -> int:
        nb, cb, _, _ = g.pack_ints()
        return nb * g.Hp * g.Wp * cb

    def out_floats(self, g: ConvGeometry) -> int:
        return g.out_blocks * g.P * g.Q * g.lanes_out

    def input_call(self, g: ConvGeometry) -> tuple[str, tuple[int, ...]]:
        return "pack_nchw_blocked", (g.C, g.H, g.W, g.Hp, g.Wp, g.pt, g.pl, *g.pack_ints())

    def output_call(self, g: ConvGeometry) -> tuple[str, tuple[int, ...]]:
        plain = "unpack_blocked_nchw" if g.lanes_out == 8 else "unpack_blocked16_nchw"
        return plain, g.unpack_ints()

    def output_epilogue_kernel(self, name, g, epilogue, kinds, comment):
        return unpack_epilogue_kernel(name, epilogue, kinds, comment, lanes=g.lanes_out)


@dataclass(frozen=True)
class Direct(_BlockedAlgorithm):
    def applies(self, g: ConvGeometry) -> bool:
        return not g.channelwise

    def work(self, g: ConvGeometry) -> int:
        return g.groups * g.Kgb * TILE_K * g.Cgb * g.CB * g.R * g.S * g.P * g.Q

    def reads_blocked(self, g: ConvGeometry) -> bool:
        """An ungrouped convolution whose channels fill 8-channel blocks (``CB`` 8: at least
        ``PAD_TO_BLOCK``; a stem with fewer packs its own block of 3), or groups of whole
        8-channel blocks."""
        return g.CB == 8 if g.groups == 1 else g.Cg % 8 == 0

    def writes_blocked(self, g: ConvGeometry) -> bool:
        """Unless each group's outputs would be padded inside the tensor (``K/groups`` is
        padded to whole 16-channel block pairs)."""
        return g.output_blocks_dense

    def kernel(self, g, epilogue=(), kinds=(), tile=TILE_8, prologue=None, residual=False):
        rs = _window_tag(g, epilogue, kinds, prologue, residual)
        note = f"direct NCHW{16 if g.lanes_in == 16 else g.CB}c convolution, kernel " \
               f"{g.R}x{g.S}, stride {g.sh}x{g.sw}, " \
               f"dilation {g.dh}x{g.dw}, tile {tile}{_fused_note(epilogue, prologue)}; " \
               "sizes are runtime arguments"
        tag = f"direct_cb{g.CB}_{rs}" if tile == TILE_8 else \
            f"direct_cb{g.CB}_t{tile.pixels}x{tile.channels}l{tile.lanes}_{rs}"
        if tile.order == "gather":  # the other orders' tags predate the order's choice
            tag += "_gather"
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
        if residual:
            note += "; residual add (and ReLU) a runtime choice"
        return direct_conv_kernel(g, comment=note, epilogue=epilogue, kinds=kinds,
                                  tile_shape=tile, prologue=prologue, residual=residual), tag

    def k_groups(self, g, tile, threads, l2):
        """The groups of k-tiles a task of ``tile``'s order runs (``tiles.gather_groups``:
        each group's packed weights within ``l2`` bytes, enough tasks for ``threads`` at
        batch 1); None for orders whose task is one k-tile."""
        if tile.order != "gather":
            return None
        return gather_groups(g.k_tiles(tile), 4 * g.Cgb * g.CB * tile.channels, g.P, threads,
                             l2)

    def int_args(self, g, x=None, y=None, tile=TILE_8, zero_halo=False, threads=1,
                 kgroups=None):
        """:data:`~...kernels.conv_direct.DIRECT_INTS`; with the ``gather`` order then its
        groups of k-tiles ``KG`` (``kgroups``: the node's recorded :meth:`k_groups`)."""
        nb, xin, yout = _blocked_int_args(g, x, y)
        kt = g.k_tiles(tile)
        ints = (nb, g.Cgb, g.groups * kt, kt, g.P, g.Q) + xin + yout + (int(zero_halo),)
        if tile.order == "gather":
            if kgroups is None:
                raise ValueError(f"a {tile} kernel needs its groups of k-tiles (kgroups)")
            ints += (kgroups,)
        return ints

    def thread_scratch(self, g: ConvGeometry, tile: DirectTile = TILE_8) -> int:
        """With the ``gather`` order, a row of every input channel (8 floats a pixel)."""
        return g.Cgb * g.Q * 8 if tile.order == "gather" else 0


    def packed_sizes(self, g, tile=TILE_8):
        padded = g.groups * g.Kgb * TILE_K
        return padded * g.Cgb * g.CB * g.R * g.S, padded

    def pack_flat(self, g, w, b, tile=TILE_8, out=None):
        """Where no channel is padded (every ResNet layer but the stem): one copy of the
        weights straight into their place, the bias after them (a training step makes it
        again for every layer: the padded copy, the transposed copy and the concatenation
        were three passes over ResNet-18's 11.7M weights and cost 5% of its step)."""
        G, Kg, Cg, R, S = g.groups, g.Kg, g.Cg, g.R, g.S
        CB, Cgb, Kgb, kt, TK = g.CB, g.Cgb, g.Kgb, g.k_tiles(tile), tile.channels
        if Kgb * TILE_K != Kg or Cgb * CB != Cg:
            return super().pack_flat(g, w, b, tile, out)
        n_w, n_b = self.packed_sizes(g, tile)
        flat = np.empty(n_w + n_b, np.float32) if out is None else out
        # the packed order [G, kt, Cgb, R, S, CB, TK], seen in the weights' own order
        into = flat[:n_w].reshape(G, kt, Cgb, R, S, CB, TK).transpose(0, 1, 6, 2, 5, 3, 4)
        into[...] = np.asarray(w, np.float32).reshape(G, kt, TK, Cgb, CB, R, S)
        flat[n_w:] = 0.0 if b is None else np.asarray(b, np.float32)
        return flat

    def pack_weights(self, g, w, b, tile=TILE_8):
        """``[G, k-tiles, Cgb, R, S, CB, tile.channels]``."""
        w = np.asarray(w, dtype=np.float32)
        b = np.zeros(g.K, np.float32) if b is None else np.asarray(b, np.float32)
        G, Kg, Cg, R, S = g.groups, g.Kg, g.Cg, g.R, g.S
        CB, Cgb, Kgb, kt, TK = g.CB, g.Cgb, g.Kgb, g.k_tiles(tile), tile.channels
        wpad = np.zeros((G, Kgb * TILE_K, Cgb * CB, R, S), np.float32)
        wpad[:, :Kg, :Cg] = w.reshape(G, Kg, Cg, R, S)
        # [G, kt, TK, Cgb, CB, R, S] -> [G, kt, Cgb, R, S, CB, TK]
        wp = wpad.reshape(G, kt, TK, Cgb, CB, R, S).transpose(0, 1, 3, 5, 6, 4, 2)
        bp = np.zeros((G, Kgb * TILE_K), np.float32)
        bp[:, :Kg] = b.reshape(G, Kg)
        return np.ascontiguousarray(wp).ravel(), bp.ravel()


@dataclass(frozen=True)
class ChannelWise(_BlockedAlgorithm):
    def applies(self, g: ConvGeometry) -> bool:
        return g.channelwise

    def work(self, g: ConvGeometry) -> int:
        return g.C8 * 8 * g.Cg * g.R * g.S * g.P * g.Q

    def reads_blocked(self, g: ConvGeometry) -> bool:
        return True

    def writes_blocked(self, g: ConvGeometry) -> bool:
        return True

    def kernel(self, g, epilogue=(), kinds=(), tile=TILE_8, prologue=None, residual=False):
        self.refuse_fusions(prologue, residual)
        rs = _window_tag(g, epilogue, kinds, prologue)
        kind = "depthwise" if g.Cg == 1 else f"grouped ({g.Cg} channels a group)"
        note = f"{kind} convolution, kernel {g.R}x{g.S}, stride {g.sh}x{g.sw}, " \
               f"dilation {g.dh}x{g.dw}{_fused_note(epilogue, prologue)}; " \
               "sizes are runtime arguments"
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
        return channelwise_conv_kernel(g, name, note, epilogue, kinds), tag

    def int_args(self, g, x=None, y=None, tile=TILE_8, zero_halo=False, threads=1,
                 kgroups=None):
        nb, xin, yout = _blocked_int_args(g, x, y)
        return (g.C8, nb, g.P, g.Q) + xin + yout + (int(zero_halo),)

    def packed_sizes(self, g, tile=TILE_8):
        padded = g.C8 * g.lanes_in
        return padded * g.Cg * g.R * g.S, padded

    def pack_weights(self, g, w, b, tile=TILE_8):
        """``[C8, R, S, Cg, L]``: lane l of block cb is output channel ``L cb + l``."""
        w = np.asarray(w, dtype=np.float32)
        b = np.zeros(g.K, np.float32) if b is None else np.asarray(b, np.float32)
        L, Cg, R, S = g.lanes_in, g.Cg, g.R, g.S
        wd = np.zeros((g.C8 * L, Cg, R, S), np.float32)
        wd[: g.C] = w
        bp = np.zeros(g.C8 * L, np.float32)
        bp[: g.C] = b
        wd = wd.reshape(g.C8, L, Cg, R, S).transpose(0, 3, 4, 2, 1)
        return np.ascontiguousarray(wd).ravel(), bp


@dataclass(frozen=True)
class Im2col(ConvAlgorithm):
    def applies(self, g: ConvGeometry) -> bool:
        return True

    def padded(self, g: ConvGeometry) -> tuple[int, int]:
        """Output channels per group and pixels, each padded to the GEMM's tile."""
        return ceil_div(g.Kg, GEMM_M) * GEMM_M, ceil_div(g.P * g.Q, GEMM_N) * GEMM_N

    def work(self, g: ConvGeometry) -> int:
        kgp, pqp = self.padded(g)
        return g.groups * kgp * g.Cg * g.R * g.S * pqp

    def in_floats(self, g: ConvGeometry) -> int:
        return g.groups * g.Cg * g.R * g.S * self.padded(g)[1]

    def out_floats(self, g: ConvGeometry) -> int:
        kgp, pqp = self.padded(g)
        return g.groups * kgp * pqp

    def kernel(self, g, epilogue=(), kinds=(), tile=TILE_8, prologue=None, residual=False):
        self.refuse_fusions(prologue, residual)
        note = "im2col GEMM, 6 x 16 register tile; sizes are runtime arguments"
        return gemm_kernel(comment=note), "gemm"

    def int_args(self, g, x=None, y=None, tile=TILE_8, zero_halo=False, threads=1,
                 kgroups=None):
        kgp, pqp = self.padded(g)
        return (kgp, g.Cg * g.R * g.S, pqp, g.groups)

    def input_call(self, g: ConvGeometry) -> tuple[str, tuple[int, ...]]:
        pqp = self.padded(g)[1]
        return "im2col", (g.C, g.H, g.W, g.groups, g.Cg, g.R, g.S, g.P, g.Q, g.sh, g.sw, g.dh,
                          g.dw, g.pt, g.pl, pqp, *im2col_strides(g.Cg * g.R * g.S, pqp))

    def output_call(self, g: ConvGeometry) -> tuple[str, tuple[int, ...]]:
        kgp, pqp = self.padded(g)
        return "crop_gemm", (g.K, g.Kg, kgp, g.P * g.Q, pqp)

    def output_epilogue_kernel(self, name, g, epilogue, kinds, comment):
        return crop_epilogue_kernel(name, epilogue, kinds, comment)

    def packed_sizes(self, g, tile=TILE_8):
        padded = g.groups * self.padded(g)[0]
        return padded * g.Cg * g.R * g.S, padded

    def pack_weights(self, g, w, b, tile=TILE_8):
        """``[G, Kg padded, Cg R S]``."""
        w = np.asarray(w, dtype=np.float32)
        b = np.zeros(g.K, np.float32) if b is None else np.asarray(b, np.float32)
        G, Kg, Cg, R, S = g.groups, g.Kg, g.Cg, g.R, g.S
        kgp = self.padded(g)[0]
        wp = np.zeros((G, kgp, Cg * R * S), np.float32)
        wp[:, :Kg] = w.reshape(G, Kg, Cg * R * S)
        bp = np.zeros((G, kgp), np.float32)
        bp[:, :Kg] = b.reshape(G, Kg)
        return wp.ravel(), bp.ravel()


@dataclass(frozen=True)
class Winograd(_BlockedAlgorithm):
    """Winograd F(m x m, 3 x 3) with ``transform`` (``kernels/winograd.py``)."""

    transform: WinogradTransform = F4

    def applies(self, g: ConvGeometry) -> bool:
        return winograd_applies(g)

    def applies_to(self, node, in_types) -> bool:
        """Convolutions only: a transposed convolution runs on its zero-stuffed input (or as
        phase convolutions, which are convolutions), and keeps the direct sum's bound."""
        return node.op == "conv" and super().applies_to(node, in_types)

    def cost(self, g: ConvGeometry, lanes: int = 8, caches: Caches = DEFAULT_CACHES) -> float:
        """:meth:`ConvAlgorithm.cost`, plus the filter transform streamed from memory where it
        does not fit the cache (:data:`U_IN_CACHE` of the target's L3): each task passes over
        all of ``U`` (36 x C x K floats for F(4x4): 38 MB at 512 channels, where F(4x4) ran
        0.88x direct's speed at 7x7)."""
        u = self.packed_sizes(g)[0]
        streamed = u * -(-self.tiles(g) // TILES) if 4 * u > U_IN_CACHE * caches.l3 else 0
        return super().cost(g, lanes, caches) + FLOPS_PER_FLOAT_STREAMED * streamed

    def tiles(self, g: ConvGeometry) -> int:
        """Output tiles per image."""
        rows, cols = winograd_tiles(g, self.transform)
        return rows * cols

    def work(self, g: ConvGeometry) -> int:
        """The GEMMs' multiply-adds over the tiles and padded channels (a task's tiles run
        across images, so only the batch's last task has idle rows), plus the two transforms'
        vector operations counted as multiply-adds of 8 lanes."""
        t = self.transform
        a, m = t.alpha, t.m
        gemm = a * a * g.Kgb * TILE_K * g.Cgb * 8 * self.tiles(g)
        nnz_b = sum(v != 0 for row in t.BT for v in row)
        nnz_a = sum(v != 0 for row in t.AT for v in row)
        transforms = self.tiles(g) * (2 * a * nnz_b * g.Cgb * 8 +
                                      (a + m) * nnz_a * g.Kgb * TILE_K)
        return gemm + transforms

    def reads_blocked(self, g: ConvGeometry) -> bool:
        return True

    def writes_blocked(self, g: ConvGeometry) -> bool:
        return True
    def kernel(self, g, epilogue=(), kinds=(), tile=TILE_8, prologue=None, residual=False):
        if prologue is not None:
            raise ValueError("a pooling prologue runs only in the direct convolution kernel")
        m = self.transform.m
        rs = _window_tag(g, epilogue, kinds, prologue, residual)
        note = f"Winograd F({m}x{m}, 3x3) convolution{_fused_note(epilogue, prologue)}; " \
               "sizes are runtime arguments"
        if residual:
            note += "; residual add (and ReLU) a runtime choice"
        tag = f"winograd{m}_{rs}"
        tag += "_x16" if g.lanes_in == 16 else ""
        tag += "_y16" if g.lanes_out == 16 else ""
        tag += "_xhwc" if g.nhwc_in else ""
        tag += "_yhwc" if g.nhwc_out else ""
        return winograd_conv_kernel(g, self.transform, f"conv_winograd{m}", note, epilogue,
                                    kinds, residual), tag

    def int_args(self, g, x=None, y=None, tile=TILE_8, zero_halo=False, threads=1,
                 kgroups=None):
        nb, xin, yout = _blocked_int_args(g, x, y)
        rows, cols = winograd_tiles(g, self.transform)
        return (nb, g.Cgb, g.Kgb, g.P, g.Q, cols, rows * cols, g.Hp, g.Wp) + xin + yout + \
            (int(zero_halo), threads)

    def packed_sizes(self, g, tile=TILE_8):
        a = self.transform.alpha
        return a * a * g.Kgb * TILE_K * g.Cgb * 8, g.Kgb * TILE_K

    def pack_weights(self, g, w, b, tile=TILE_8):
        """``U = G w G^T`` as ``[alpha^2, K/16, C/8, 8, 16]``, bias padded to 16 channels:
        the two parts of :meth:`pack_flat`'s array (views)."""
        return np.split(self.pack_flat(g, w, b, tile), [self.packed_sizes(g, tile)[0]])

    def pack_flat(self, g, w, b, tile=TILE_8, out=None):
        """The filters transformed straight into the flat array (``out`` where one is given),
        then the bias (no copy of the whole into a concatenation: these are the largest
        packed weights)."""
        n_w, n_b = self.packed_sizes(g, tile)
        flat = np.empty(n_w + n_b, np.float32) if out is None else out
        pack_filters(self.transform, g, np.asarray(w, np.float32), out=flat[:n_w])
        flat[n_w:] = 0.0  # the padded channels' bias, and all of it without one
        if b is not None:
            flat[n_w:n_w + g.K] = np.asarray(b, np.float32)
        return flat

    def thread_scratch(self, g: ConvGeometry, tile: DirectTile = TILE_8) -> int:
        return scratch_floats(g, self.transform)

    def error_bound(self, ctx: BoundCtx) -> np.ndarray:
        """Every output is ``A^T [sum over c of U_c * (B^T d_c B)] A + bias``, a sum over
        paths from each input x weight product through the transforms, each path rounded at
        most ``D = C + depth + 3`` times: ``depth`` in the input and output transforms
        (``WinogradTransform.rounding_depth``, 10 for F(2,3), 18 for F(4,3)), C in the sum
        over channels, and the float32 weights, their transform ``U`` and the bias add. So
        (Higham 3.1 along each path)

            |err| <= err_in + D x 2^-24 x ( |A^T| [sum_c (|G| |g_c| |G^T|) * (|B^T| |d_c| |B|)]
                                            |A| + |bias| )

        the same algorithm run on absolute values with absolute matrices. Where the direct
        bound has sum |x w| over the 3x3 window, this one adds the input tile's other pixels
        with the transforms' coefficients (up to 8 x 5 x 1/6 on a path of F(4,3)): the growth
        with the transforms' norms that Barabasz et al. (2018) measure, about 1.7x the direct
        error for F(2,3) and 7x for F(4,3) in one dimension."""
        t = self.transform
        x, w = (np.abs(np.asarray(v, np.float64)) for v in ctx.inputs[:2])
        bias = np.abs(np.asarray(ctx.inputs[2], np.float64)) if len(ctx.inputs) > 2 else None
        n, c = x.shape[:2]
        k = w.shape[0]
        p, q = ctx.out.shape[2:]
        rows, cols = -(-p // t.m), -(-q // t.m)
        a = t.alpha
        # the padded input, zeros past the last tile (as the kernel reads it)
        xp = np.zeros((n, c, rows * t.m + 2, cols * t.m + 2))
        padded = pad_nchw(x, ctx.attrs["pads"])[:, :, :rows * t.m + 2, :cols * t.m + 2]
        xp[:, :, :padded.shape[2], :padded.shape[3]] = padded
        win = np.lib.stride_tricks.sliding_window_view(xp, (a, a), axis=(2, 3))
        d = win[:, :, ::t.m, ::t.m]  # [n, c, rows, cols, a, a]
        BT, G, AT = (np.abs(t.array(name)) for name in ("BT", "G", "AT"))
        v = np.einsum("au,ncyxuv,bv->nyxabc", BT, d, BT, optimize=True)
        u = np.einsum("ar,kcrs,bs->abck", G, w, G, optimize=True)
        mm = np.einsum("nyxabc,abck->nkyxab", v, u, optimize=True)
        y = np.einsum("ia,nkyxab,jb->nkyixj", AT, mm, AT, optimize=True)
        y = y.reshape(n, k, rows * t.m, cols * t.m)[:, :, :p, :q]
        if bias is not None:
            y = y + bias[None, :, None, None]
        depth = c + t.rounding_depth() + 3
        return ctx.err_in + depth * EPS32 * y


@dataclass(frozen=True)
class ImplicitGemm(ConvAlgorithm):
    def applies(self, g: ConvGeometry) -> bool:
        return True

    def work(self, g: ConvGeometry) -> int:
        t = choose_gemm_tile(g.Kg, g.P * g.Q)
        return g.groups * ceil_div(g.Kg, t.m) * t.m * g.Cg * g.R * g.S * \
            ceil_div(g.P * g.Q, t.n) * t.n

    def parse_tile(self, text: str | None, g: ConvGeometry) -> GemmTile:
        return GemmTile.parse(text) if text is not None else choose_gemm_tile(g.Kg, g.P * g.Q)

    def in_floats(self, g: ConvGeometry) -> int:
        return 0

    def out_floats(self, g: ConvGeometry) -> int:
        """The scratch output an epilogue beyond the bias and ReLU is applied from."""
        return g.K * g.P * g.Q

    def kernel(self, g, epilogue=(), kinds=(), tile=TILE_8, prologue=None, residual=False):
        self.refuse_fusions(prologue, residual)
        note = (f"implicit GEMM convolution, {tile.m} x {tile.n} tiles through shared memory; "
                "sizes are runtime arguments")
        name = "conv_implicit_gemm" + ("" if (tile.m, tile.n) == (64, 64) else f"_{tile}")
        return implicit_gemm_conv_kernel(name, note, tile), "implicit_gemm"

    def int_args(self, g, x=None, y=None, tile=TILE_8, zero_halo=False, threads=1,
                 kgroups=None):
        return (g.C, g.H, g.W, g.K, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw,
                g.groups)

    def output_call(self, g: ConvGeometry) -> tuple[str, tuple[int, ...]]:
        pq = g.P * g.Q  # the scratch output is already NCHW: a crop that keeps everything
        return "crop_gemm", (g.K, g.Kg, g.Kg, pq, pq)

    def output_epilogue_kernel(self, name, g, epilogue, kinds, comment):
        return crop_epilogue_kernel(name, epilogue, kinds, comment)

    def packed_sizes(self, g, tile=TILE_8):
        return g.K * g.Cg * g.R * g.S, g.K

    def pack_weights(self, g, w, b, tile=TILE_8):
        """The weights as they are, ``[K, C/groups, R, S]``."""
        b = np.zeros(g.K, np.float32) if b is None else np.asarray(b, np.float32)
        return np.asarray(w, np.float32).ravel(), b.ravel()


@dataclass(frozen=True)
class GpuDirect(ImplicitGemm):
    """A thread per output value (``gpu_direct_conv_kernel``): the implicit GEMM's arrays,
    integers and output handling, none of its tiles; for layers whose groups have too few
    output channels to fill a tile's rows (depthwise ones: one)."""

    def work(self, g: ConvGeometry) -> int:
        return g.groups * g.Kg * g.Cg * g.R * g.S * g.P * g.Q

    def parse_tile(self, text: str | None, g: ConvGeometry) -> DirectTile:
        return TILE_8  # no tile (select_tile records none): the default stands for it

    def kernel(self, g, epilogue=(), kinds=(), tile=TILE_8, prologue=None, residual=False):
        self.refuse_fusions(prologue, residual)
        note = "convolution, a thread per output value; sizes are runtime arguments"
        return gpu_direct_conv_kernel(comment=note), "gpu_direct"


#: PERF-NOTES and bench/RESULTS.md: the direct kernel reaches 55-79% of the 8-lane peak, its
#: 16-lane tiles 1.4-1.8x its 8-lane speed on 3x3 layers; the channel-wise kernel is memory
#: bound (no 16-lane gain counted); im2col + our GEMM well below, its gather costing about as
#: much as a pass over the col matrix at memory speed (the GEMM stays 8-lane).
DIRECT = Direct("direct", "direct", efficiency=0.6, speedup_16_lanes=1.5, blocked=True,
                runtime_residual=True)
CHANNELWISE = ChannelWise("channelwise", "direct", efficiency=0.6, blocked=True)
IM2COL = Im2col("im2col", "im2col", efficiency=0.3)
#: Winograd: its GEMMs run the direct kernel's register tile, its transforms are vector
#: loads, adds and stores (bench/RESULTS.md).
#: The share of the target's last-level cache (``target.Caches.l3``) that Winograd's filter
#: transform may take before it streams from memory, and what streaming a float of it costs in
#: flop-equivalents (bench/RESULTS.md: F(4x4) at 7x7 with 512 channels). Measured on a 2-vCPU
#: Zen 4 with a 32 MiB last-level cache, one thread, batch 1 and 8: a U of 8 MiB stays in cache
#: between tasks (VGG-16's 28x28 256->512 layer, F(2x2) 9.1 ms against direct's 16.2), one of
#: 16 MiB does not (F(2x2) at 512->512: 28x28 38-47 ms against direct's 34, 14x14 11-14
#: against 8.5, ResNet-18's 7x7 3.2-3.6 against 2.2): 12 MiB of 32, in proportion elsewhere
#: (an assumption: measured on that one L3 only).
U_IN_CACHE = 3 / 8
FLOPS_PER_FLOAT_STREAMED = 16.0
_WINOGRAD_REFUSAL = "Winograd computes 3x3, stride-1, undilated, ungrouped convolutions of " \
    "at least 8 input channels"
WINOGRAD_F4 = Winograd("winograd_f4", "winograd", efficiency=0.5, blocked=True,
                       refusal=_WINOGRAD_REFUSAL, cpu_only=True, auto_in_training=False,
                       runtime_residual=True, transform=F4)
WINOGRAD_F2 = Winograd("winograd_f2", "winograd", efficiency=0.75, blocked=True,
                       refusal=_WINOGRAD_REFUSAL, cpu_only=True, auto_in_training=False,
                       runtime_residual=True, transform=F2)
#: On a GPU target the one algorithm written for a GPU (the others are the CPU's schedules,
#: printed for CUDA: correct, one thread per register tile); its efficiency is not comparable
#: with the CPU algorithms' and is not compared: ``select_lowering`` prefers it on a GPU.
IMPLICIT_GEMM = ImplicitGemm("implicit_gemm", "implicit_gemm", efficiency=0.5, gpu_only=True,
                             plain_io=True)
#: Each thread reads its window's inputs and weights from the caches, no reuse through shared
#: memory: a tenth of the implicit GEMM's rate assumed (an estimate: not measured on a GPU),
#: so it wins where the GEMM's tiles would be mostly padding: fewer than about 3 output
#: channels a group (depthwise layers), against the GEMM's 32-row tiles.
GPU_DIRECT = GpuDirect("gpu_direct", "gpu_direct", efficiency=0.05, gpu_only=True,
                       plain_io=True)
#: Every convolution algorithm, the default first (``select_lowering`` takes the first that
#: applies at -O0 and -O1, a GPU algorithm first on a GPU target).
ALGORITHMS = (DIRECT, CHANNELWISE, IM2COL, WINOGRAD_F4, WINOGRAD_F2, IMPLICIT_GEMM,
              GPU_DIRECT)


def by_name(name: str) -> ConvAlgorithm:
    for a in ALGORITHMS:
        if a.name == name:
            return a
    raise ValueError(f"unknown convolution algorithm {name!r} (expected one of "
                     f"{', '.join(a.name for a in ALGORITHMS)})")
