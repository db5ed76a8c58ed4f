"""Pieces shared by the register-tiled kernel builders (direct convolution, depthwise, GEMM):
tile sizes, accumulator blocks, the store epilogue's ReLU floor, integer parameters."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .common import apply_epilogue
from .kernel_ir import (
    Const,
    Epilogue,
    Expr,
    ExprLike,
    If,
    Let,
    Load,
    Loop,
    Select,
    Stmt,
    Store,
    Var,
    VBin,
    VLoad,
    VSplat,
    VStore,
    VZero,
    cmp,
    const,
    widened,
)

#: Output channels of one channel-blocked storage block pair: each group's output channels are
#: stored padded to a multiple of this (two 8-channel blocks), whatever the kernel's tile.
TILE_K = 16
#: Pixels per tile of the depthwise kernel (one accumulator per pixel).
TILE_DW = 8
#: GEMM register tile: rows (output channels) x columns (pixels).
GEMM_M, GEMM_N = 6, 16


def _prod(*xs: ExprLike) -> ExprLike:
    r: ExprLike = 1
    for x in xs:
        r = r * x
    return r


#: How the tasks of a direct convolution's parallel loop cover its output (``DirectTile.order``):
#: ``rows``: a task is one output row of one k-tile, the rows of a k-tile consecutive (its
#: weights stay in cache, the input streams once per k-tile); ``kblocks``: the same tasks, the
#: k-tiles of a row consecutive (the input rows stay in cache, all weights cycle through it);
#: ``plane``: a task is the whole output plane of one k-tile, whose pixels the tiles run through
#: in row-major order, a tile's pixels crossing from one row into the next (rows of 7 pixels
#: run full tiles instead of a full one and a short one); ``gather`` (strided 1x1 convolutions):
#: a task is one output row of a group of k-tiles (:func:`gather_groups`), which first copies
#: the row's input pixels (every ``sw``-th of input row ``p * sh``) of every channel into a
#: per-thread scratch row, then runs its k-tiles over that row at stride 1: the input is read
#: once per group of k-tiles instead of once per k-tile, contiguous where the loops read it.
ORDERS = ("rows", "kblocks", "plane", "gather")


@dataclass(frozen=True)
class DirectTile:
    """The register tile of the direct convolution: ``pixels`` output pixels (of one row, or
    consecutive in the plane with ``order="plane"``) times ``vectors`` vectors of ``lanes``
    output channels, ``pixels x vectors`` accumulators, and the ``order`` of its tasks
    (:data:`ORDERS`).

    The default is the 8-lane tile of PERF-NOTES.md (6 x 16: 12 ymm accumulators + 2 weight
    vectors + 1 broadcast, 15 of 16 registers); with AVX-512, 16-lane vectors and 32 registers
    allow up to 14 pixels x 32 channels (28 + 2 + 1 = 31). The activation layout does not
    change with the tile: the kernel splits each 16-lane accumulator into two 8-channel blocks
    at its store. Printed (and parsed) as ``<pixels>x<channels>/<lanes>[:<order>]``, e.g.
    ``14x32/16`` or ``6x16/8:plane`` (no suffix: ``rows``).
    """

    lanes: int = 8
    vectors: int = 2
    pixels: int = 6
    order: str = "rows"

    def __post_init__(self) -> None:
        if self.lanes not in (8, 16) or self.vectors not in (1, 2) or self.pixels < 1:
            raise ValueError(f"not a direct-convolution tile: {self!r}")
        if self.lanes == 8 and self.vectors != 2:
            raise ValueError("an 8-lane tile has two vectors (one 16-channel block pair)")
        if self.pixels * self.vectors + self.vectors + 1 > self.registers:
            raise ValueError(f"tile {self} needs more than {self.registers} vector registers")
        if self.order not in ORDERS:
            raise ValueError(f"unknown tile order {self.order!r}: expected one of "
                             f"{', '.join(ORDERS)}")

    @property
    def channels(self) -> int:
        """Output channels per tile (16 or 32)."""
        return self.lanes * self.vectors

    @property
    def registers(self) -> int:
        return 16 if self.lanes == 8 else 32

    def __str__(self) -> str:
        suffix = "" if self.order == "rows" else f":{self.order}"
        return f"{self.pixels}x{self.channels}/{self.lanes}{suffix}"

    @classmethod
    def parse(cls, text: str) -> DirectTile:
        """The tile printed as ``text`` (``str(tile)``); ValueError for anything else."""
        try:
            shape, _, order = text.partition(":")
            pixels, rest = shape.split("x")
            channels, lanes = (int(v) for v in rest.split("/"))
            return cls(lanes, channels // lanes, int(pixels), order or "rows")
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(f"not a direct-convolution tile: {text!r} ({e})") from None


#: The 8-lane tile (AVX2 and every CPU).
TILE_8 = DirectTile()
#: The pixel counts of 16-lane tiles: two, because each is a kernel of its own (a Numba compile
#: of several seconds): 14 is the most that fits 32 registers with two vectors, 7 divides the
#: rows of every ImageNet-sized layer (112, 56, 28, 14, 7) and is the tile of rows shorter than
#: 14 (a row shorter than 7 runs one-pixel tiles of the same kernel).
PIXELS_16 = (14, 7)


def split_8(Q: int) -> tuple[int, int]:
    """How the 8-lane kernel covers ``Q`` consecutive output pixels (a row, or a plane with
    ``order="plane"``): ``(six, four)`` tiles of 6 and 4 pixels, the 4-pixel ones after the
    6-pixel ones, the last ending at the last pixel (it may overlap the one before). A tile of
    4 pixels (8 accumulators, as many as two FMA units of 4 cycles' latency keep busy) runs
    at the rate of a 6-pixel one; a shorter one does not (a 2-pixel tile: half). So the rest
    of ``Q % 6`` pixels of 1, 2 or 5 takes one 6-pixel tile back: 7, 8 or 11 pixels in 2, 2
    or 3 four-pixel tiles. ``(0, 0)`` for ``Q < 4`` (one-pixel tiles). The kernel's
    ``_split_8`` computes the same at run time: this is the cost model's copy of its counts."""
    if Q < 4:
        return 0, 0
    six = Q // 6 - (Q >= 6 and Q % 6 in (1, 2, 5))
    return six, -(-(Q - 6 * six) // 4)


def cost_8(Q: int) -> int:
    """The cost model's time of covering ``Q`` pixels with the 8-lane tiles (:func:`split_8`),
    in cycles per input channel: a tile of ``T`` pixels takes ``max(T, 4)`` cycles of FMAs (2
    per cycle, 2 per pixel; under 8 accumulators the FMA latency of 4 cycles bounds it) plus
    2 for what every tile repeats whatever its width (its weight loads, its loop), so a
    4-pixel tile costs 6/4 a pixel where a 6-pixel one costs 8/6."""
    six, four = split_8(Q)
    return six * 8 + four * 6 if Q >= 4 else Q * 6


#: Tasks per CPU below which the plane order (one task per image and k-tile) is not chosen: its
#: tasks are few (64 channels at batch 1: 4), and threads left without one idle.
PLANE_TASKS_PER_THREAD = 2
#: The least saving of the cost model for which the plane order is chosen: rows of 7 save 19%,
#: of 14 6% (measured: 3-5% faster), but rows of 28 and 56 only 1.7% and of 112 and 224 under
#: 0.5% (one or two 4-pixel tiles a row, no pixel wasted), which measured as noise, or a few
#: percent slower for 1x1 layers at 56 px (bench/RESULTS.md): those stay row by row.
PLANE_MIN_SAVING = 0.02


def output_planes(groups: int, k: int) -> int:
    """An image's planes of :data:`TILE_K` output channels (each group's padded apart): the
    tasks of the plane order at batch 1."""
    return groups * -(-(k // groups) // TILE_K)


#: Tasks per thread (at batch 1) below which a ``gather`` kernel cuts its k-tiles into more
#: groups: 7 rows of a 7 x 7 output on 2 threads would split 4 : 3.
GATHER_TASKS_PER_THREAD = 4


def gather_groups(k_tiles: int, tile_weights: int, rows: int, threads: int, l2: int) -> int:
    """The groups of k-tiles of a ``gather`` kernel (its runtime ``KG``): as few as keep each
    group's weights (``tile_weights`` bytes a k-tile) within the target's L2 per core (``l2``
    bytes: ``target.Caches``), doubled (at most one per k-tile) until ``rows`` output rows
    make :data:`GATHER_TASKS_PER_THREAD` tasks for each of ``threads``.

    The whole L2, not half: on the 1 MiB L2 of Zen 4, ResNet-50's 1024 -> 2048 projection ran
    4.5% slower in groups of 512 KiB than of 1 MiB, each group gathering its rows again
    (bench/RESULTS.md, session 23)."""
    per = max(1, l2 // tile_weights)
    groups = -(-k_tiles // per)
    while groups < k_tiles and groups * rows < GATHER_TASKS_PER_THREAD * threads:
        groups = min(k_tiles, 2 * groups)
    return groups


def choose_tile(lanes: int, groups_k: int, Q: int, P: int = 1,
                planes: int | None = None, strided_1x1: bool = False) -> DirectTile:
    """The tile for a layer with ``groups_k`` output channels per group and ``P`` rows of ``Q``
    output pixels (``planes``: images times 16-channel k-tiles, the tasks of the plane order;
    None: many), on a target with ``lanes``-lane vectors.

    8 lanes: the 6 x 16 tile; its tasks take whole planes (``order="plane"``) where that costs
    at least :data:`PLANE_MIN_SAVING` less than row by row (:func:`cost_8`: a plane of 7 x 7
    is 7 full tiles and two of 4 where rows of 7 take two 4-pixel tiles each, 56 pixels' time
    for 49; rows of 14 take a 6- and two 4-pixel tiles, the plane 32 full tiles and one of 4)
    and there are at least :data:`PLANE_TASKS_PER_THREAD` planes for each of this machine's
    CPUs, else rows.

    16 lanes: two vectors (32 channels) when each group's channels, padded to 16, are a multiple
    of 32, else one; of :data:`PIXELS_16`, the pixel count ``T <= Q`` that minimizes
    ``ceil(Q / T) * (T + 2)``: the pixels computed, the last tile overlapping (see
    ``conv_direct._row_tiles``), plus about two pixels' worth of weight loads per tile (rows
    of 56 take 4 x 14, of 17 three 7-pixel tiles); rows shorter than 7 take the 7-pixel kernel.
    ``strided_1x1`` (a 1x1 convolution with a stride, unpadded, one group): with the
    14-pixel tile its tasks ``gather`` their input rows (ResNet-50's 56 -> 28 projection 18%
    faster at batch 8, 28 -> 14 7%); rows of 7 stay ``rows`` (gathered 2-5% slower: a task's
    copy is all loads at its start, one line a pixel per 16 channels, with no multiply-adds to
    hide them behind; bench/RESULTS.md, session 23).
    """
    if lanes == 8:
        busy = planes is None or planes >= PLANE_TASKS_PER_THREAD * (os.cpu_count() or 1)
        plane = busy and cost_8(P * Q) < (1 - PLANE_MIN_SAVING) * P * cost_8(Q)
        return DirectTile(order="plane") if plane else TILE_8
    vectors = 2 if -(-groups_k // TILE_K) % 2 == 0 else 1
    fitting = [t for t in PIXELS_16 if t <= Q] or [min(PIXELS_16)]
    pixels = min(fitting, key=lambda t: (-(-Q // t) * (t + 2), -t))
    gather = strided_1x1 and pixels == max(PIXELS_16)
    return DirectTile(16, vectors, pixels, "gather" if gather else "rows")


def tile_stmts(T: int, nvec: int, inner: list, stores, prefix: str = "acc",
                lanes: int = 8) -> list:
    """Zero ``T x nvec`` accumulators, run ``inner`` (loops that update them), then ``stores``."""
    body: list = [Let(f"{prefix}_{i}_{h}", VZero(lanes)) for i in range(T) for h in range(nvec)]
    body += inner
    body += stores
    return body



#: The lowest finite float32: ``max(v, LOWEST)`` is ``v`` for every finite ``v``.
LOWEST = -3.4028234663852886e38


def epilogue_stores(stores_for) -> list:
    """The stores of a tile: bias, then ``max(v, floor)`` where ``floor`` is 0 for a fused
    ReLU and the lowest float otherwise (a runtime choice: one ``vmaxps`` per store, outside
    the hot loop; branching between two store blocks instead compiled noticeably slower)."""
    return stores_for(Epilogue(bias=True, activation=None))


def floored(v: Expr, lanes: int = 8) -> Expr:
    return VBin("max", v, VSplat(Var("floor"), lanes))


def floor_let() -> Let:
    return Let("floor", Select(cmp("!=", Var("relu"), 0), Const(0.0), Const(LOWEST)))


#: The fused epilogues (after a leading ReLU, which is ``relu``) a kernel built with
#: ``residual=True`` computes as a runtime choice, and the value of its ``residual`` argument
#: for each: none, a residual add ``add(r)``, and ``add(r)`` then ReLU (ResNet's block end).
RESIDUAL_CODES = {(): 0, ("add",): 1, ("add", "relu"): 2}


def residual_let() -> Let:
    """``rfloor``: the floor after the residual add (0 for code 2, else the lowest float)."""
    return Let("rfloor", Select(cmp("==", Var("residual"), 2), Const(0.0), Const(LOWEST)))


def residual_store(array: str, index: Expr, value: Expr, operand_index: Expr,
                   lanes: int = 8) -> list[Stmt]:
    """Store ``value`` at ``array[index]``, first adding the residual operand ``e0`` at
    ``operand_index`` and flooring at ``rfloor`` where the runtime ``residual`` is not 0.

    The runtime form of the fused epilogues of :data:`RESIDUAL_CODES`, as ``floor`` is that of
    a leading ReLU: one compiled kernel serves the layers with and without a residual (ResNet's
    block ends and the convolutions before them), where each fused form was a kernel of its
    own. The same operations in the same order as the fused ``add`` and ``relu`` (``v + r``,
    then ``max(v, 0)``); without a residual the value is stored as it is and ``e0`` is not read
    (the caller may pass any array)."""
    v = f"rv{lanes}"  # one name per width: a 16-lane kernel also stores 8-lane halves
    return [Let(v, value),
            If(cmp("!=", Var("residual"), 0), [Let(v, VBin("max", VBin(
                "add", Var(v), VLoad("e0", operand_index, lanes)), VSplat(Var("rfloor"),
                                                                          lanes)))]),
            VStore(array, index, Var(v))]


#: Runtime integers describing a channel-blocked buffer an operand lives in: blocks per image,
#: stored height and width (halo included), and where the tensor starts in them.
BLOCKED_INTS = ("B", "H", "W", "T", "L")


@dataclass(frozen=True)
class StorageIndex:
    """The index arithmetic of one channel-blocked operand of a kernel: its geometry (``B``
    blocks of ``lanes`` channels per image, stored ``H x W``, the tensor from row ``T``,
    column ``L``: runtime integers, see :data:`BLOCKED_INTS`) and the literal order of the
    storage, the only place a kernel builder learns it:

        NCHWc (``nhwc=False``)  [N, B, H, W, lanes]   offset ((n*B + b)*H + h)*W*lanes + w*lanes
        NHWC  (``nhwc=True``)   [N, H, W, B, lanes]   offset ((n*H + h)*W + w)*B*lanes + b*lanes

    NHWC is the same storage with the blocks of a pixel adjacent: one pixel is the padded
    channel count ``B * lanes`` floats, and ``b * lanes`` is a block's place in it. Every
    offset below is one of these with ``h = T + row``, ``w = L + column``."""

    B: ExprLike
    H: ExprLike
    W: ExprLike
    T: ExprLike
    L: ExprLike
    lanes: int = 8
    nhwc: bool = False

    @classmethod
    def named(cls, prefix: str, lanes: int = 8, nhwc: bool = False) -> StorageIndex:
        """The operand whose geometry integers are ``<prefix>B``, ``<prefix>H``, ..."""
        return cls(*(Var(prefix + s) for s in BLOCKED_INTS), lanes=lanes, nhwc=nhwc)

    @property
    def pixel(self) -> ExprLike:
        """Floats between horizontally adjacent pixels of a block."""
        return self.B * self.lanes if self.nhwc else self.lanes

    @property
    def plane(self) -> ExprLike:
        """Floats between a pixel of block ``b`` and the same pixel of block ``b + 1``."""
        return self.lanes if self.nhwc else self.H * self.W * self.lanes

    @property
    def line(self) -> ExprLike:
        """Floats between vertically adjacent pixels."""
        return self.W * (self.B * self.lanes) if self.nhwc else self.W * self.lanes

    def tasks(self, n: tuple, blocks: tuple, rows: tuple) -> list:
        """The dimensions ``(name, extent)`` of a parallel loop over images, blocks and rows,
        outermost first (for ``unflatten``): each thread takes a contiguous range of tasks,
        so consecutive tasks should touch neighbouring memory, the rows of a block in NCHWc and
        the blocks of a row in NHWC (a block's pixels there are half cache lines apart from
        the next block's: in block order every line is fetched twice)."""
        return [n, rows, blocks] if self.nhwc else [n, blocks, rows]

    def row(self, n: ExprLike, block: ExprLike, p: ExprLike) -> Expr:
        """Offset of the first pixel of the tensor's row ``p`` in block ``block`` of image
        ``n``."""
        if self.nhwc:
            return ((n * self.H + p + self.T) * self.W + self.L) * (self.B * self.lanes) + \
                block * self.lanes
        return ((n * self.B + block) * self.H + p + self.T) * (self.W * self.lanes) + \
            self.L * self.lanes

    def at(self, n: ExprLike, block: ExprLike, p: ExprLike, q: ExprLike) -> Expr:
        """Offset of the tensor's pixel (``p``, ``q``) in block ``block`` of image ``n``."""
        if self.nhwc:
            return ((n * self.H + p + self.T) * self.W + self.L + q) * (self.B * self.lanes) + \
                block * self.lanes
        return ((n * self.B + block) * self.H + p + self.T) * (self.W * self.lanes) + \
            (self.L + q) * self.lanes

    def stored_row(self, n: ExprLike, block: ExprLike, r: ExprLike) -> Expr:
        """Offset of stored row ``r`` (halo rows included: ``T`` not added), column 0."""
        if self.nhwc:
            return (n * self.H + r) * self.line + block * self.lanes
        return ((n * self.B + block) * self.H + r) * (self.W * self.lanes)

    def block_start(self, n: ExprLike, block: ExprLike) -> Expr:
        """Offset of stored pixel (0, 0) of block ``block`` of image ``n``."""
        if self.nhwc:
            return n * self.H * self.line + block * self.lanes
        return (n * self.B + block) * self.H * (self.W * self.lanes)

    def tap(self, start: ExprLike, r: ExprLike, c: ExprLike) -> Expr:
        """Offset of the tensor's pixel (``r``, ``c``) from a ``block_start``."""
        return start + (r + self.T) * self.line + (c + self.L) * self.pixel


def zero_row_halo(n: Expr, block: Expr, p: Expr, P: ExprLike, Q: ExprLike,
                  lanes: int = 8, nhwc: bool = False) -> list[Stmt]:
    """Zero the halo of output row ``p`` of ``lanes``-channel block ``block`` of image ``n`` in
    ``y`` (geometry ``Y*``: ``BLOCKED_INTS``): its columns left and right of the ``Q`` pixels, and
    in the first and the last row's task the halo rows above and below the ``P`` rows. A
    row-parallel kernel whose tasks cover every (block, row) of its output zeroes the whole
    halo with it, so the buffer may reuse a slot other values dirtied (``zero_halo``). Halo
    and interior are disjoint: no race with the stores of the rows."""
    y = StorageIndex.named("Y", lanes, nhwc)
    YH, YW, YT, YL = y.H, y.W, y.T, y.L

    def row(r: ExprLike, cols: list) -> list:
        return [Let("zrow", y.stored_row(n, block, r)), *cols]

    def zero_cols(start: ExprLike, count: ExprLike) -> Loop:
        return Loop("zc", count, [VStore("y", Var("zrow") + Var("zc") * y.pixel,
                                         VZero(lanes))], start=start)

    stmts = row(p + YT, [zero_cols(Const(0), YL), zero_cols(YL + Q, YW - YL - Q)])
    stmts.append(If(cmp("==", p, 0), [Loop("zr", YT, row(Var("zr"), [zero_cols(Const(0),
                                                                                YW)]))]))
    stmts.append(If(cmp("==", p, const(P) - 1), [Loop("zr", YH - YT - P, row(
        Var("zr"), [zero_cols(Const(0), YW)]), start=YT + P)]))
    return stmts


def operand_ints(k: int) -> list[str]:
    """Names of the geometry integers of fused epilogue operand ``k`` (``e<k>``)."""
    return [f"E{k}{s}" for s in BLOCKED_INTS]


def operand_row(k: int, n: Expr, block: Expr, p: Expr, kind: str = "full",
                lanes: int = 8, nhwc: bool = False) -> Expr:
    """Offset of row ``p`` of ``lanes``-channel block ``block`` of image ``n`` in operand
    ``k``: a ``full`` operand is channel-blocked storage of that block width and order; a
    ``channel`` gate is the plain ``[N, C]`` vector (``E<k>B`` = C/lanes), ``lanes``
    consecutive channels per block, the same for every pixel."""
    e = StorageIndex.named(f"E{k}", lanes, nhwc)
    if kind == "channel":
        return (n * e.B + block) * lanes
    return e.row(n, block, p)


def operand_step(k: int, kind: str, pixel: ExprLike, half: ExprLike = 0, lanes: int = 8,
                 lane: int = 0, nhwc: bool = False) -> Expr:
    """The offset from ``operand_row`` to output pixel ``pixel`` of block ``half`` of a tile of
    16 or 32 channels (``eplane<k>``: one block further on), at lane ``lane`` of the block."""
    step = const(half) * Var(f"eplane{k}")
    if lane:
        step = step + lane
    if kind == "channel":
        return step
    return const(pixel) * StorageIndex.named(f"E{k}", lanes, nhwc).pixel + step


def operand_plane(k: int, kind: str, lanes: int = 8, nhwc: bool = False) -> Expr:
    """Floats between consecutive blocks of operand ``k`` (a ``Let`` of ``eplane<k>``)."""
    if kind == "channel":
        return Const(lanes)
    return const(StorageIndex.named(f"E{k}", lanes, nhwc).plane)


def vector_head(value: Expr, epilogue, lanes: int) -> tuple[Expr, list]:
    """Apply the leading element-wise ops of ``epilogue`` that need no operand and have a
    vector rule to the ``lanes``-wide ``value`` (a 16-lane accumulator before it is split into
    8-channel blocks: one ``vexp`` of 16 lanes for swish instead of two of 8); returns the new
    value and the ops left for ``store_epilogue``. Lane for lane the same operations in the
    same order: the numbers are those of applying every op to each half."""
    rest = list(epilogue)
    while rest and rest[0].operand is None:
        rule = rest[0].vector
        vec = rule(value, rest[0].attr_dict, None) if rule else None
        if vec is None:
            break
        value = widened(vec, lanes, keep=value)
        rest.pop(0)
    return value, rest


def store_epilogue(array: str, index: Expr, value: Expr, epilogue, operand_index,
                   operand_array=lambda k: f"e{k}", lanes: int = 8) -> list:
    """Store the ``lanes``-lane ``value`` at ``array[index]`` with the fused ``epilogue``
    applied.

    Ops with a vector rule (``OpDef.vector_epilogue``: ReLU, ReLU6, a residual add, ...) are
    applied to the vector; from the first op without one on, the stored lanes are rewritten one
    by one with the scalar rules (sigmoid, swish, GELU: their ``exp``/``erf`` have no vector
    form here). ``operand_index(k)`` is the element offset in operand ``e<k>`` that meets
    ``index``; operands are numbered in epilogue order.
    """
    numbers = {e.operand: k for k, e in enumerate(o for o in epilogue if o.operand is not None)}
    v = value
    rest = list(epilogue)
    while rest:
        e = rest[0]
        rule = e.vector
        operand = None if e.operand is None else VLoad(operand_array(numbers[e.operand]),
                                                        operand_index(numbers[e.operand]), lanes)
        vec = rule(v, e.attr_dict, operand) if rule else None
        if vec is None:
            break
        v = vec if lanes == 8 else widened(vec, lanes, keep=(v, operand))
        rest.pop(0)
    stmts: list = [VStore(array, index, v)]
    if rest:
        lane = Var("el")
        loads = {pos: Load(operand_array(k), operand_index(k) + lane)
                 for pos, k in numbers.items()}
        stmts.append(Loop("el", Const(lanes), apply_epilogue(
            Load(array, index + lane), rest, loads, var="ev")
            + [Store(array, index + lane, Var("ev"))]))
    return stmts
