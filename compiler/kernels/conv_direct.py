"""The direct convolution builders: the register-tiled NCHW8c micro-kernel of PERF-NOTES.md
and the channel-wise kernel of depthwise and narrow-group convolutions (see ``conv.py`` for
the layouts and the geometry)."""

from __future__ import annotations

from typing import Literal

from .common import int_params, unflatten
from .conv_geometry import ConvGeometry
from .kernel_ir import (
    Comment,
    Const,
    Epilogue,
    Expr,
    ExprLike,
    If,
    Kernel,
    Let,
    Loop,
    Param,
    Select,
    Var,
    VBin,
    VBroadcast,
    VFma,
    VHalf,
    VJoin,
    VLoad,
    VSpread,
    VStore,
    VUnary,
    call,
    cmp,
    const,
    contains,
)
from .pool import blocked_window
from .tiles import (
    TILE_8,
    TILE_DW,
    DirectTile,
    StorageIndex,
    epilogue_stores,
    floor_let,
    floored,
    operand_ints,
    operand_plane,
    operand_row,
    operand_step,
    residual_let,
    residual_store,
    store_epilogue,
    tile_stmts,
    vector_head,
    zero_row_halo,
)

#: Runtime integer arguments of each compute kernel, in order (after the arrays ``x``, ``w``,
#: ``bias``, ``y`` and the epilogue operands ``e<k>``; then each operand's geometry, ``relu``
#: and ``n_batch``). ``Hp`` x ``Wp`` is the stored input plane and ``XT``/``XL`` where the
#: window origin of output (0, 0) sits in it (a producer's halo larger than this layer's
#: padding); ``YB`` blocks per image, ``YH`` x ``YW`` the stored output plane, ``YT``/``YL``
#: where the output starts in it (the halo the next convolution reads as padding).
IO_INTS = ("Hp", "Wp", "XT", "XL", "YB", "YH", "YW", "YT", "YL")
#: ``ZH``: 1 when the kernel zeroes the halo of every block of its output buffer on each call
#: (a buffer whose slot other values used before: see ``_zero_halo``).
DIRECT_INTS = ("NB", "Cgb", "KB", "Kgb", "P", "Q") + IO_INTS + ("ZH",)
#: ``C8``: the 8-channel blocks computed; ``XB``: blocks per image of the input's storage (a
#: direct convolution producer stores 2 * ceil(C/16) blocks, one more than C8 for 116 channels).
DEPTHWISE_INTS = ("C8", "XB", "P", "Q") + IO_INTS + ("ZH",)


def _row_tiles(Q: Expr, full: int, tile, narrow: int = 0) -> list:
    """Tiles of ``full`` pixels over ``Q`` consecutive output pixels (a row, or a plane with
    ``order="plane"``), ``Q`` a runtime value.

    Instead of one unrolled tile per possible tail width (long compiles), ``ceil(Q / full)``
    tiles run in one loop, the last one ending at the last pixel: it overlaps pixels already
    written (it writes the same values again: same operands, same order); a row shorter than
    ``full`` runs one-pixel tiles. One loop for the full tiles and the tail, so the kernel
    holds one unrolled body of ``full`` pixels (a separate tail tile was a second copy: about
    a third of a 16-lane kernel's source) and one of a single pixel.

    ``narrow`` (the channel-wise kernel, whose rows may be shorter than its tile: rows of 7 at
    the last stages of MobileNetV2 and EfficientNet-B0 with an 8-pixel tile): a row shorter
    than ``full`` but of ``narrow`` pixels or more runs two overlapping ``narrow``-pixel
    tiles, the first at pixel 0, the second ending at the last pixel, instead of one-pixel
    tiles, whose multiply-adds over all the taps form one dependent chain (latency-bound: 4
    chains keep the FMA unit busy); shorter rows run one-pixel tiles. One tile body more.
    """
    q0 = Var("qt") * full
    short = cmp("<", Q, full)
    stmts = [
        Let("ntiles", Select(short, Const(0), (Q + (full - 1)) // full)),
        Loop("qt", Var("ntiles"), [
            Let("q0", Select(cmp("<", q0, Q - full), q0, Q - full)),
            *tile(full, Var("q0"))]),
    ]
    if narrow:
        stmts.append(If(cmp("and", short, cmp(">=", Q, narrow)),
                        tile(narrow, Const(0)) + tile(narrow, Q - narrow)))
        short = cmp("<", Q, narrow)
    return stmts + [If(short, [Loop("q1", Q, tile(1, Var("q1")))])]


#: The narrow tile of a channel-wise kernel's rows shorter than its full tile.
NARROW_DW = 4
#: Pixels per tile of the 16-lane channel-wise kernel: 7 divides every row of a 224 x 224
#: network (112, 56, 28, 14, 7), where 8 pixels run rows of 28 and 14 as 32 and 16 (an
#: overlapping last tile) and rows of 7 as two 4-pixel tiles.
TILE_DW_16 = 7


def _split_8(Q: Expr, tile) -> list:
    """The tiles of the 8-lane kernel over ``Q`` consecutive output pixels (a row, or a plane
    with ``order="plane"``), ``Q`` a runtime value: ``nfull`` tiles of 6 pixels, then ``n4``
    of 4, the last ending at the last pixel (it may overlap the one before, which writes the
    same values again: same operands, same order); fewer than 4 pixels run one-pixel tiles.
    The counts are ``tiles.split_8``'s (the cost model's copy): a rest of 1, 2 or 5 pixels
    takes one 6-pixel tile back and runs 7, 8 or 11 pixels as 4-pixel tiles, which keep both
    FMA units busy where a 2-pixel tile (the earlier tail of rows of 14 and 56) ran at half
    rate. Three tile bodies: 6, 4 and 1 pixels (each unrolled body lengthens the compile)."""
    t, six, rest, q4 = Var("tail"), Var("nfull"), Var("rest"), Var("q4") * 4
    drop = cmp("and", cmp(">=", Q, 6), cmp("or", cmp("==", t, 1),
                                           cmp("or", cmp("==", t, 2), cmp("==", t, 5))))
    return [
        Let("tail", Q % 6),
        Let("nfull", Select(cmp("<", Q, 4), Const(0),
                            Q // 6 - Select(drop, Const(1), Const(0)))),
        Let("rest", Q - six * 6),
        Loop("qt", six, tile(6, Var("qt") * 6)),
        Comment("the rest: 4-pixel tiles, the last ending at the last pixel"),
        If(cmp(">=", Q, 4), [Loop("q4", (rest + 3) // 4, [
            Let("q0", six * 6 + Select(cmp("<", q4, rest - 4), q4, rest - 4)),
            *tile(4, Var("q0"))])]),
        If(cmp("<", Q, 4), [Loop("q1", Q, tile(1, Var("q1")))]),
    ]


def _zero_halo(lanes: int = 8, nhwc: bool = False) -> list:
    """Zero the halo of row ``p`` in every ``KB``-th block of the output buffer from ``kb``:
    together the tasks zero the halo of all ``YB`` blocks of the buffer, including ranges that
    other kernels fill (a concatenation's buffer after a merged 1x1's ``prefix``), so the
    buffer may reuse a slot other values dirtied."""
    kb, zb = Var("kb"), Var("zb")
    KB, YB = Var("KB"), Var("YB")
    return [Comment("with ZH: zero this row's halo in every KB-th block of the whole buffer"),
            If(cmp(">", Var("ZH"), 0), [Loop("zi", (YB + KB - 1) // KB, [
                Let("zb", kb + Var("zi") * KB),
                If(cmp("<", zb, YB), zero_row_halo(Var("n"), zb, Var("p"), Var("P"),
                                                   Var("Q"), lanes, nhwc))])])]


def epilogue_params(epilogue) -> tuple[list[Param], list[Param]]:
    """Array parameters ``e<k>`` of the fused epilogue's operands and their geometry ints."""
    count = sum(e.operand is not None for e in epilogue)
    return [Param(f"e{k}") for k in range(count)], \
        int_params(*[n for k in range(count) for n in operand_ints(k)])


def residual_params() -> tuple[list[Param], list[Param]]:
    """The parameters of a runtime residual (``residual=True``): the array ``e0`` and its
    geometry ints, as :func:`epilogue_params` gives those of a fused ``add``'s operand."""
    return [Param("e0")], int_params(*operand_ints(0))


def direct_conv_kernel(g: ConvGeometry, name: str = "conv_direct", comment: str = "",
                       order: Literal["rows", "kblocks", "plane", "gather"] | None = None,
                       epilogue=(), kinds=(), tile_shape: DirectTile = TILE_8,
                       prologue: tuple[str, dict] | None = None,
                       residual: bool = False) -> Kernel:
    """The register-tiled direct convolution (not depthwise) over NCHW8c, NCHW16c or NHWC
    activations (``g.lanes_in`` / ``g.lanes_out``: the block widths of the storage it reads
    and writes; a 16-channel input block is read as two 8-channel halves, in NCHW8c's order;
    ``g.nhwc_in`` / ``g.nhwc_out``: NHWC storage, whose pixel stride ``xpix`` / ``ypix`` is
    the runtime ``blocks * 8``, the index arithmetic of ``tiles.StorageIndex``).

    Literal: the channel block ``CB``, kernel size, stride, dilation and the register tile
    (``tile_shape``: pixels x vectors of 8 or 16 lanes; they shape the unrolled inner loops).
    Runtime integers (:data:`DIRECT_INTS`): channel-block counts (``KB``/``Kgb`` count tiles of
    ``tile_shape.channels`` output channels), output and padded input sizes, and ``relu`` (fuse
    a ReLU or not); the bias is always added (zeros for a convolution without one). So one
    compiled kernel serves every layer with the same ``CB``, ``R x S``, stride, dilation and tile.

    A 16-lane accumulator holds two 8-channel output blocks of NCHW8c: its halves are stored
    (with the epilogue) one block apart; in NCHW16c it is one block, stored whole. An 8-lane
    accumulator is one NCHW8c block or half an NCHW16c one.

    ``order`` (by default the tile's, ``tiles.ORDERS``) picks the tasks of the parallel loop:
    ``"rows"`` (n, k-tile, row: the PERF-NOTES order), ``"kblocks"`` (n, row, k-tile), or
    ``"plane"`` (n, k-tile: the tiles run through the plane's pixels in row-major order, a
    tile's pixels crossing into the next row, each with its own input and output offset);
    ``"gather"`` (a strided 1x1, unpadded, ungrouped convolution): tasks (n, k-tile group,
    row), ``KG`` groups (a runtime int, the last of the sizes), each task first copying
    every ``sw``-th pixel of input row ``p * sh`` of every channel into its thread's row of
    the scratch ``xpool`` (``[threads, Cgb, Q, 8]``, the prologue's), then running its
    group's k-tiles over that row at stride 1: the same sums in the same order as the
    strided loops, read once per group instead of once per k-tile, and contiguous.
    A pooling prologue has tasks of its own (n, row) and takes its rows in any order.

    ``prologue`` (a pooling op and its attributes; a 1x1, stride-1, unpadded, ungrouped
    convolution only): ``x`` is the pool's input, and each task (n, row) first pools its row
    of every input block into the scratch ``xpool`` (``[n, P, Cgb, Q, 8]``, ``blocked_window``;
    an NCHW16c input block as two 8-channel halves),
    then runs every k-tile over it while it is in cache. The pool's input sizes are the
    runtime ints ``H`` and ``W``; ``Hp``/``Wp``/``XT``/``XL`` then describe ``x``'s storage.

    ``residual``: instead of a fused ``epilogue``, the residual operand ``e0`` (a full tensor
    of the output's storage) and the runtime ``residual`` (last argument) choosing among the
    epilogues of ``tiles.RESIDUAL_CODES`` (``tiles.residual_store``).
    """
    if residual:
        if epilogue:
            raise ValueError("a kernel with a runtime residual takes no other epilogue")
        kinds = ("full",)
    if g.channelwise:
        raise ValueError("use channelwise_conv_kernel for depthwise and narrow groups")
    if prologue is not None and (
            (g.R, g.S, g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, g.groups, g.CB) !=
            (1, 1, 1, 1, 0, 0, 0, 0, 1, 8)):
        raise ValueError("a pooling prologue needs a 1x1, stride-1, unpadded, ungrouped "
                         f"convolution of at least 8 channels, not {g.describe()}")
    if order is None:
        order = tile_shape.order
    # ``gather``: a strided 1x1 convolution whose tasks first copy their row's input pixels
    # (every sh-th row, every sw-th column) into ``xpool``, then run over it at stride 1
    gather = order == "gather"
    if gather and (prologue is not None or (g.R, g.S, g.pt, g.pl, g.pb, g.pr, g.groups, g.CB)
                   != (1, 1, 0, 0, 0, 0, 1, 8)):
        raise ValueError("the gather order needs a 1x1, unpadded, ungrouped convolution of at "
                         f"least 8 channels without a prologue, not {g.describe()}")
    pooled = prologue is not None or gather  # the loops read xpool, 8 channels a pixel
    sw = 1 if gather else g.sw  # the input pixels' stride where the loops read them
    xarr = "xpool" if pooled else "x"
    CB, R, S = g.CB, g.R, g.S
    lanes, nvec, TK = tile_shape.lanes, tile_shape.vectors, tile_shape.channels
    yl = g.lanes_out  # channels a block of the output storage
    # lanes of each store: the accumulator, or its halves when they go to two NCHW8c blocks
    # (in NHWC the blocks of a pixel are adjacent: a whole 16-lane accumulator is one store)
    piece = lanes if g.nhwc_out else min(lanes, yl)
    NB, Cgb, KB, Kgb, P, Q, Hp, Wp, XT, XL, YB, YH, YW, YT, YL, _ = (Var(v) for v in DIRECT_INTS)
    # the input's blocks: of the channel block of NCHW8c (or of the stem's packed input), of
    # 16 in NCHW16c, whose blocks the loops read as two 8-channel halves, or of 8 in NHWC
    x = StorageIndex(NB, Hp, Wp, XT, XL, CB if g.lanes_in == 8 else g.lanes_in, g.nhwc_in)
    y = StorageIndex(YB, YH, YW, YT, YL, yl, g.nhwc_out)
    # floats between the pixels the loops read and between output pixels: literal in NCHWc
    # and in the prologue's pooled rows, a runtime local in NHWC
    nhwc_x = g.nhwc_in and not pooled
    if pooled:
        xpix: ExprLike = CB
    else:
        xpix = Var("xpix") if nhwc_x else x.pixel
    ypix = Var("ypix") if g.nhwc_out else y.pixel
    # 16-channel input blocks read as 8-channel halves (not the prologue's pooled rows)
    halves = g.lanes_in == 16 and not pooled
    n, kb, p = Var("n"), Var("kb"), Var("p")
    t = Var("t")

    plane = order == "plane" and not pooled

    def plane_pixels(T: int, f0: ExprLike) -> list:
        """The row ``pp<i>`` and column ``pq<i>`` of pixel ``f0 + i`` of the plane, the offset
        ``xd<i>`` of its input window from pixel 0's (``xq``) and its output offset ``yo<i>``."""
        stmts: list = [Let("pp0", f0 // Q), Let("pq0", f0 % Q)]
        for i in range(1, T):
            nxt = Var(f"pq{i - 1}") + 1
            stmts += [Let(f"pq{i}", Select(cmp("==", nxt, Q), Const(0), nxt)),
                      Let(f"pp{i}", Select(cmp("==", Var(f"pq{i}"), 0), Var(f"pp{i - 1}") + 1,
                                           Var(f"pp{i - 1}")))]
        for i in range(T):
            pp, pq = Var(f"pp{i}"), Var(f"pq{i}")
            if i:
                stmts.append(Let(f"xd{i}", (pp - Var("pp0")) * Var("xpline") +
                                 (pq - Var("pq0")) * (g.sw * xpix)))
            stmts.append(Let(f"yo{i}", y.row(n, kb * (TK // yl), pp) + pq * ypix))
        return stmts

    def tile(T: int, q0: ExprLike) -> list:
        l = Var("l")
        xs, ws = Var("xs"), Var("ws")
        lane: list = [Let(f"w{h}", VLoad("w", ws + l * TK + h * lanes, lanes))
                      for h in range(nvec)]
        for i in range(T):
            xoff = (Var(f"xd{i}") if i else 0) if plane else i * sw * xpix
            lane.append(Let("xb", VBroadcast(xarr, xs + xoff + l, lanes)))
            for h in range(nvec):
                acc = f"acc_{i}_{h}"
                lane.append(Let(acc, VFma(Var("xb"), Var(f"w{h}"), Var(acc))))
        inner = [Loop("cb", Cgb, [
            Let("xc", Var("xq") + Var("cb") * Var("xplane") if not halves else
                Var("xq") + (Var("xg") + Var("cb")) // 2 * Var("xplane") +
                (Var("xg") + Var("cb")) % 2 * 8),
            Let("wc", Var("wk") + Var("cb") * (R * S * CB * TK)),
            Loop("r", Const(R), [
                Let("xr", Var("xc") + Var("r") * Var("xrstep")),
                Let("wr", Var("wc") + Var("r") * (S * CB * TK)),
                Loop("s", Const(S), [
                    Let("xs", Var("xr") + Var("s") * (g.dw * xpix)),
                    Let("ws", Var("wr") + Var("s") * (CB * TK)),
                    Loop("l", Const(CB), lane),
                ]),
            ]),
        ])]

        def stores_for(epi: Epilogue) -> list:
            # bias, floor and the operand-free head of the epilogue on the whole accumulator
            # (16 lanes: one vexp for swish, not two), the rest on each stored piece (an
            # 8-channel block of NCHW8c, a half or a whole 16-channel block of NCHW16c, two
            # adjacent 8-channel blocks of NHWC)
            # the bias of the tile's channels, loaded once for all its pixels (per pixel it was
            # a load and its index arithmetic more for Numba to type; LLVM merged them)
            out: list = [Let(f"bias{h}", VLoad(epi.bias_array, kb * TK + h * lanes, lanes))
                         for h in range(nvec)]
            for i in range(T):
                for h in range(nvec):
                    acc = floored(VBin("add", Var(f"acc_{i}_{h}"), Var(f"bias{h}")), lanes)
                    rest = epilogue
                    if lanes == 16:  # each step once for both halves
                        out.append(Let(f"acc_{i}_{h}", acc))
                        acc, rest = vector_head(Var(f"acc_{i}_{h}"), epilogue, lanes)
                        if len(rest) < len(epilogue):
                            out.append(Let(f"acc_{i}_{h}", acc))
                        acc = Var(f"acc_{i}_{h}")
                    for j in range(lanes // piece):
                        # the output block within the tile, and the lane in it
                        block, lane0 = divmod(h * lanes + j * piece, yl)
                        part = VHalf(acc, j == 1) if piece < lanes else acc
                        if plane:
                            idx = Var(f"yo{i}") + block * Var("yplane")
                        else:
                            idx = Var("yrow") + (q0 + i) * ypix + block * Var("yplane")
                        if lane0:
                            idx = idx + lane0
                        if residual:
                            out += residual_store("y", idx, part,
                                                  operand_at(0, i, q0, block, lane0), piece)
                            continue
                        out += store_epilogue("y", idx, part, rest, lambda k, i=i, b=block,
                                              l0=lane0: operand_at(k, i, q0, b, l0),
                                              lanes=piece)
            return out

        if plane:
            return plane_pixels(T, q0) + [
                Let("xq", Var("xrow") + Var("pp0") * Var("xpline") +
                    Var("pq0") * (g.sw * xpix))] + \
                tile_stmts(T, nvec, inner, epilogue_stores(stores_for), lanes=lanes)
        return [Let("xq", Var("xrow") + q0 * (sw * xpix))] + \
            tile_stmts(T, nvec, inner, epilogue_stores(stores_for), lanes=lanes)

    def operand_at(k: int, i: int, q0: ExprLike, block: int, lane0: int) -> Expr:
        """Offset in operand ``e<k>`` of lane ``lane0`` of block ``block`` of the tile's pixel
        ``i``."""
        if plane:
            return operand_row(k, n, kb * (TK // yl), Var(f"pp{i}"), kinds[k], yl,
                               g.nhwc_out) + operand_step(k, kinds[k], Var(f"pq{i}"), block,
                                                          yl, lane0, g.nhwc_out)
        return Var(f"erow{k}") + operand_step(k, kinds[k], q0 + i, block, yl, lane0,
                                              g.nhwc_out)

    gi = kb // Kgb
    T = tile_shape.pixels
    split_8 = lanes == 8 and T == 6  # else one tile width and an overlapping last tile
    per_tile: list = [
        Let("wk", kb * (Cgb * (R * S * CB * TK))),
        Let("yrow", y.row(n, kb * (TK // yl), p)),
    ]
    ops, op_ints = residual_params() if residual else epilogue_params(epilogue)
    per_tile += [Let(f"erow{k}", operand_row(k, n, kb * (TK // yl), p, kinds[k], yl,
                                             g.nhwc_out)) for k in range(len(ops))]
    if split_8:
        per_tile += _split_8(Q, tile)
    else:
        per_tile += [Comment(f"tiles of {T} pixels, the last ending at the last pixel")]
        per_tile += _row_tiles(Q, T, tile)
    per_tile += _zero_halo(yl, g.nhwc_out)
    per_plane: list = []
    if plane:
        # the same tiles over the P * Q pixels of the plane, then the halo of every row
        count = P * Q
        per_plane = [Let("wk", kb * (Cgb * (R * S * CB * TK)))]
        if split_8:
            per_plane += _split_8(count, tile)
        else:
            per_plane += _row_tiles(count, T, tile)
        per_plane += [Loop("p", P, _zero_halo(yl, g.nhwc_out))]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + ops
    ints = int_params(*DIRECT_INTS)
    if not pooled:
        xstrides = [Let("xplane", const(x.plane)), Let("xrstep", Wp * (g.dh * xpix))]
        if plane:
            body = unflatten(t, [("n", Var("n_batch")), ("kb", KB)])
            row0: ExprLike = 0
            xstrides.append(Let("xpline", const(x.line) * g.sh))
            tasks = Var("n_batch") * KB
        else:
            body = unflatten(t, [("n", Var("n_batch")), ("kb", KB), ("p", P)]
                             if order == "rows" else
                             [("n", Var("n_batch")), ("p", P), ("kb", KB)])
            row0 = p * g.sh
            tasks = Var("n_batch") * (KB * P)
        if g.lanes_in == 8:
            body.append(Let("xrow", x.row(n, gi * Cgb, row0)))
        else:  # the group's first 8-channel half-block xg, added in the channel loop
            body += [Let("xg", gi * Cgb), Let("xrow", x.row(n, 0, row0))]
        body += per_plane if plane else per_tile
    else:
        q = Var("q")
        xblk = x.block_start(n, Var("cb")) if g.lanes_in == 8 else \
            x.block_start(n, Var("cb") // 2) + Var("cb") % 2 * 8
        if gather:
            # the k-tiles in KG groups (a runtime int), a task each with the row: a group's
            # weights stay in L2 while its rows pass, and short planes still make tasks for
            # every thread; each task gathers its row again (a copy of Cgb * Q * 8 floats)
            what, then = "every sw-th pixel of row p * sh", "the group's k-tiles"
            window = [Let("acc", VLoad("x", x.tap(Var("xblk"), Var("win_r"), q * g.sw), 8))]
            body = unflatten(t, [("n", Var("n_batch")), ("kg", Var("KG")), ("p", P)])
            body += [Let("ks", (KB + Var("KG") - 1) // Var("KG")),
                     Let("kb0", Var("kg") * Var("ks"))]
            win_r: ExprLike = p * g.sh
            kloop = Loop("kb", Select(cmp("<", Var("kb0") + Var("ks"), KB), Var("ks"),
                                      KB - Var("kb0")), per_tile, start=Var("kb0"))
            tasks = Var("n_batch") * (Var("KG") * P)
        else:
            op, attrs = prologue
            what, then = f"{op} of row p", "every k-tile"
            window = blocked_window(op, attrs, "x", Var("xblk"), q, Var("H"), Var("W"), x,
                                    lanes=8)
            body = unflatten(t, [("n", Var("n_batch")), ("p", P)])
            win_r = p * attrs["stride"][0] - attrs["pads"][0]
            kloop = Loop("kb", KB, per_tile)
            tasks = Var("n_batch") * P
        body += [
            Comment(f"prologue: {what} of every input block, into xpool"),
            Let("win_r", win_r),
            Let("xrow", call("thread_id") * (Cgb * Q * 8)),
            Loop("cb", Cgb, [
                Let("xblk", xblk),
                Let("xcb", Var("xrow") + Var("cb") * (Q * 8)),
                Loop("q", Q, window + [VStore("xpool", Var("xcb") + q * 8, Var("acc"))]),
            ]),
            Comment(f"then {then} of the row over the pooled row"),
            kloop,
        ]
        xstrides = [Let("xplane", Q * 8), Let("xrstep", Const(0))]
        params.append(Param("xpool"))
        ints += int_params("KG") if gather else int_params("H", "W")
    params += ints + op_ints + int_params("relu", "n_batch")
    params += int_params("residual") if residual else []
    # Loop-invariant strides, computed once (runtime sizes).
    pre = [floor_let()] + ([residual_let()] if residual else [])
    pre += [Let("xpix", x.pixel)] if nhwc_x else []
    pre += [Let("ypix", y.pixel)] if g.nhwc_out else []
    pre += [*xstrides, Let("yplane", const(y.plane))]
    pre += [Let(f"eplane{k}", operand_plane(k, kinds[k], yl, g.nhwc_out))
            for k in range(len(ops))]
    loop = Loop("t", tasks, body, kind="parallel")
    return Kernel(name, params, pre + [loop], comment)


def channelwise_conv_kernel(g: ConvGeometry, name: str = "conv_depthwise",
                            comment: str = "", epilogue=(), kinds=()) -> Kernel:
    """Depthwise and narrow-group convolution (``g.channelwise``): the 8 lanes are 8 output
    channels (16 lanes in NCHW16c: ``g.lanes_in``), and each reads the ``Cg`` input channels
    of its own group, which lie in the same input block. Per tap and pixel the kernel loads
    that block once and, for each ``j < Cg``, multiplies the ``j``-th input channel of every
    lane's group (the vector itself when ``Cg == 1``, ``vspread`` for groups narrower than the
    vector, a broadcast of channel ``j`` for 8 channels in 8 lanes) by the weights ``w[C8, R,
    S, Cg, lanes]``: exactly the multiply-adds of the convolution, no padded group. A tile is 8
    output pixels (6 when 8 weight vectors must stay in 16 registers; 7 with 16 lanes:
    :data:`TILE_DW_16`); rows shorter than a tile run narrower ones (:func:`_row_tiles`).
    Literal: kernel size, stride, dilation, ``Cg``, lanes; runtime: :data:`DEPTHWISE_INTS` and
    ``relu``."""
    R, S, cg = g.R, g.S, g.Cg
    if not g.channelwise:
        raise ValueError(f"not a channel-wise convolution: {g.describe()}")
    L = g.lanes_in  # channels a block, in and out: the vector width
    T = TILE_DW_16 if L == 16 else TILE_DW if cg <= 4 else 6
    C8, XB, P, Q, Hp, Wp, XT, XL, YB, YH, YW, YT, YL, _ = (Var(v) for v in DEPTHWISE_INTS)
    n, cb, p = Var("n"), Var("cb"), Var("p")
    x = StorageIndex(XB, Hp, Wp, XT, XL, L, g.nhwc_in)
    y = StorageIndex(YB, YH, YW, YT, YL, L, g.nhwc_out)
    # floats between input (output) pixels: literal in NCHWc, a runtime local in NHWC
    xpix = Var("xpix") if g.nhwc_in else x.pixel
    ypix = Var("ypix") if g.nhwc_out else y.pixel

    # An epilogue of operand-free vector ops with an exp or square root in it (sigmoid,
    # swish) runs on two pixels at a time (in NCHW8c: 16 floats in a row, one vexp for both).
    head, rest = vector_head(Var("v"), epilogue, 16)
    pairs = L == 8 and not rest and contains(head, VUnary) and not g.nhwc_out

    def tile(T: int, q0: ExprLike) -> list:
        xs = Var("xs")
        wtap = (((cb * R + Var("r")) * S + Var("s")) * cg) * L
        upd: list = [Let(f"wv{j}", VLoad("w", wtap + j * L, L)) for j in range(cg)]
        for i in range(T):
            acc, xi = f"acc_{i}_0", xs + i * g.sw * xpix
            if 1 < cg < L:
                upd.append(Let("xv", VLoad("x", xi, L)))
            for j in range(cg):
                xj = (VLoad("x", xi, L) if cg == 1 else VBroadcast("x", xi + j, 8) if cg == L
                      else VSpread(Var("xv"), cg, j))
                upd.append(Let(acc, VFma(xj, Var(f"wv{j}"), Var(acc))))
        inner = [Loop("r", Const(R), [Loop("s", Const(S), [
            Let("xs", Var("xq") + Var("r") * Var("xrstep") + Var("s") * (g.dw * xpix)),
            *upd])])]

        def stores_for(epi: Epilogue) -> list:
            out = []
            i = 0
            while i < T:
                val = floored(epi.apply_vec(Var(f"acc_{i}_0"), cb * L, lanes=L), L)
                if L == 16:  # bias and floor once, before an epilogue that reads them twice
                    out.append(Let(f"acc_{i}_0", val))
                    val = Var(f"acc_{i}_0")
                if pairs and i + 1 < T:  # pixels i and i + 1 are 16 floats in a row
                    nxt = floored(epi.apply_vec(Var(f"acc_{i + 1}_0"), cb * 8))
                    out.append(Let(f"pair_{i}", VJoin(val, nxt)))
                    head, _ = vector_head(Var(f"pair_{i}"), epilogue, 16)
                    out.append(VStore("y", Var("yrow") + (q0 + i) * 8, head))
                    i += 2
                    continue
                out += store_epilogue("y", Var("yrow") + (q0 + i) * ypix, val, epilogue,
                                      lambda k, i=i: Var(f"erow{k}") + operand_step(
                                          k, kinds[k], q0 + i, lanes=L, nhwc=g.nhwc_out),
                                      lanes=L)
                i += 1
            return out

        return [Let("xq", Var("xrow") + q0 * (g.sw * xpix))] + \
            tile_stmts(T, 1, inner, epilogue_stores(stores_for), lanes=L)

    ops, op_ints = epilogue_params(epilogue)

    def in_block(stmts: list) -> list:  # stmts with the block's rows in scope
        return [Let("xrow", x.row(n, cb, p * g.sh)), Let("yrow", y.row(n, cb, p)),
                *(Let(f"erow{k}", operand_row(k, n, cb, p, kinds[k], L, g.nhwc_out))
                  for k in range(len(ops)))] + stmts

    halo = [Comment("with ZH: zero this row's halo (the tasks cover every block and row)"),
            If(cmp(">", Var("ZH"), 0), zero_row_halo(n, cb, p, P, Q, L, g.nhwc_out))]
    if g.nhwc_in or g.nhwc_out:
        # a task is a row, its blocks innermost: in NHWC a tile's pixels hold the blocks side
        # by side, so the next block reads (and writes) the other halves of the cache lines
        # this one fetched
        body = unflatten(Var("t"), [("n", Var("n_batch")), ("p", P)])
        body += _row_tiles(Q, T, lambda T, q0: [Loop("cb", C8, in_block(tile(T, q0)))],
                           NARROW_DW)
        body.append(Loop("cb", C8, in_block(halo)))
        tasks = Var("n_batch") * P
    else:
        body = unflatten(Var("t"), [("n", Var("n_batch")), ("cb", C8), ("p", P)])
        body += in_block([Comment(f"tiles of {T} pixels, the last ending at the last pixel"),
                          *_row_tiles(Q, T, tile, NARROW_DW), *halo])
        tasks = Var("n_batch") * (C8 * P)
    pre = [floor_let()]
    pre += [Let("xpix", x.pixel)] if g.nhwc_in else []
    pre += [Let("ypix", y.pixel)] if g.nhwc_out else []
    pre += [Let("xrstep", Wp * (g.dh * xpix))]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + ops + \
        int_params(*DEPTHWISE_INTS) + op_ints + int_params("relu", "n_batch")
    loop = Loop("t", tasks, body, kind="parallel")
    return Kernel(name, params, pre + [loop], comment)

