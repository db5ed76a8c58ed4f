"""The convolution's weight gradient as a direct register-tiled kernel over the channel-blocked
input: no im2col matrix.

    dw[k, c, r, s] = sum over n, p, q of dy[n, k, p, q] * xp[n, c, p sh + r dh, q sw + s dw]

is, for each tap (r, s), a GEMM ``[K, N P Q] @ [N P Q, C]`` whose reduction runs over the batch
and the output pixels. ``xp`` is the padded input packed channel-blocked by the shared
``pack_nchw_blocked`` kernel (``[N, G Cgb, Hp, Wp, L]``, each group's channels zero-padded to
``Cgb`` blocks of ``L`` lanes, ``Cgb`` even); ``dy`` is read as it is, NCHW. A register tile is
``rows`` output channels (each a broadcast of one ``dy`` value) times two vectors of ``L``
input channels (two blocks of ``xp`` at one pixel): per output pixel two vector loads,
``rows`` broadcasts and ``2 rows`` fused multiply-adds, the GEMM's ratio without its im2col
pass (which cost as much as the GEMM itself at 56 x 56). For inputs of few channels (a
3-channel stem), where blocks of input channels would be mostly padding,
:func:`conv_weight_grad_by_output_kernel` turns the tile around: its lanes are output
channels of dy packed channel-blocked, its broadcasts the taps of the zero-padded input.
"""

from __future__ import annotations

from .common import N_BATCH, int_params
from .kernel_ir import (
    BinOp,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Store,
    Var,
    VBin,
    VBroadcast,
    VFma,
    VLoad,
    VStore,
    call,
    cmp,
    const,
)
from .tiles import tile_stmts

#: Runtime sizes of :func:`conv_weight_grad_kernel`: groups, output and input channels per
#: group, input blocks per group, output rows and columns, packed input rows and columns, the
#: window, stride and dilation (``dwd``: ``dw`` is the output).
WEIGHT_GRAD_INTS = ("G", "Kg", "Cg", "Cgb", "P", "Q", "Hp", "Wp", "R", "S", "sh", "sw", "dh",
                    "dwd")


def weight_grad_tile(lanes: int) -> tuple[int, int]:
    """``(rows, lanes)`` of the register tile on a target of ``lanes``-lane vectors: 6 rows of
    two 8-lane vectors (12 accumulators + 2 loads + 1 broadcast of the 16 ymm registers), or 8
    rows of two 16-lane vectors (16 + 3 of the 32 zmm registers; 8 divides every ResNet
    width, so no row is computed for nothing)."""
    return (6, 8) if lanes == 8 else (8, 16)


def weight_grad_tile_name(lanes: int) -> str:
    """The tile of :func:`weight_grad_tile` as a node records it: ``<rows>x<channels>/<lanes>``
    (``select_tile``)."""
    rows, width = weight_grad_tile(lanes)
    return f"{rows}x{2 * width}/{width}"


def parse_weight_grad_tile(text: str) -> tuple[int, int]:
    """``(rows, lanes)`` from :func:`weight_grad_tile_name`'s text."""
    shape, lanes = text.split("/")
    return int(shape.split("x")[0]), int(lanes)


def conv_weight_grad_kernel(name: str, rows: int, lanes: int, comment: str = "") -> Kernel:
    """``dw`` ``[K, Cg, R, S]`` (``K = G Kg``) from ``xp`` and ``dy`` (module docstring); every
    size is a runtime integer (:data:`WEIGHT_GRAD_INTS`), so one compiled kernel serves every
    layer.

    One task per (group, tile of ``rows`` output channels, pair of input blocks); inside it,
    image after image and tap after tap, the tile's accumulators run over the image's output
    pixels in registers, then are stored (first image) or added to the tile's partial sums in
    ``part``, the running thread's ``rows R S 2L`` floats (``thread_id``): one image's packed
    input and output-gradient rows stay in L2 while its taps pass over them. Rows past ``Kg``
    read the group's last row (clamped) and columns past ``Cg`` read zero padding; neither is
    written. Last, the tile's sums go to ``dw``."""
    G, Kg, Cg, Cgb, P, Q, Hp, Wp, R, S, sh, sw, dh, dwd = (Var(v) for v in WEIGHT_GRAD_INTS)
    L, width = lanes, 2 * lanes
    gi, kt, cp, n, p, q, r, s = (Var(v) for v in ("gi", "kt", "cp", "n", "p", "q", "r", "s"))
    ktn, cpn = (Kg + (rows - 1)) // rows, Cgb // 2
    tap_floats = rows * width
    body: list = [
        Let("gi", Var("t") // (ktn * cpn)),
        Let("kt", (Var("t") // cpn) % ktn),
        Let("cp", Var("t") % cpn),
        Let("k0", kt * rows),
        Let("part0", call("thread_id") * (R * S * tap_floats)),
        Let("xb", gi * Cgb + cp * 2),
        Let("swl", sw * L),
        Let("plane", Hp * Wp * L),
    ]
    # dy's channel of each tile row, clamped to the group's last one
    body += [Let(f"kr{i}", gi * Kg + BinOp("min", Var("k0") + i, Kg - 1)) for i in range(rows)]

    update: list = [Let("b0", VLoad("xp", Var("x0") + q * Var("swl"), L)),
                    Let("b1", VLoad("xp", Var("x0") + Var("plane") + q * Var("swl"), L))]
    for i in range(rows):
        update.append(Let("av", VBroadcast("dy", Var(f"d{i}") + q, L)))
        for h in range(2):
            acc = f"acc_{i}_{h}"
            update.append(Let(acc, VFma(Var("av"), Var(f"b{h}"), Var(acc))))
    row = [Let("x0", (((n * (G * Cgb) + Var("xb")) * Hp + p * sh + r * dh) * Wp + s * dwd) * L)]
    row += [Let(f"d{i}", ((n * (G * Kg) + Var(f"kr{i}")) * P + p) * Q) for i in range(rows)]
    row.append(Loop("q", Q, update))

    stores, sums = [], []
    for i in range(rows):
        for h in range(2):
            at = Var("at") + (i * width + h * L)
            acc = Var(f"acc_{i}_{h}")
            stores.append(VStore("part", at, acc))
            sums.append(VStore("part", at, VBin("add", VLoad("part", at, L), acc)))
    tap = tile_stmts(rows, 2, [Loop("p", P, row)],
                     [Let("at", Var("part0") + (r * S + s) * tap_floats),
                      If(cmp("==", n, 0), stores, sums)], lanes=L)
    body.append(Loop("n", N_BATCH, [Loop("r", R, [Loop("s", S, tap)])]))

    # the tile's sums into dw[gi Kg + k, c, r, s], the rows and columns that exist
    i, c2, rs = Var("i"), Var("c2"), Var("rs")
    write = Loop("rs", R * S, [Store("dw", ((gi * Kg + Var("k")) * Cg + Var("c")) * (R * S) + rs,
                                     Load("part", Var("part0") + rs * tap_floats + i * width
                                          + c2))])
    body.append(Loop("i", const(rows), [
        Let("k", Var("k0") + i),
        If(cmp("<", Var("k"), Kg), [Loop("c2", const(width), [
            Let("c", cp * width + c2),
            If(cmp("<", Var("c"), Cg), [write])])])]))
    params = [Param("xp"), Param("dy"), Param("part"), Param("dw")] + \
        int_params(*WEIGHT_GRAD_INTS, "n_batch")
    return Kernel(name, params, [Loop("t", G * ktn * cpn, body, kind="parallel")], comment)


def conv_weight_grad_by_output_kernel(name: str, rows: int, lanes: int,
                                      comment: str = "") -> Kernel:
    """The same ``dw`` with the lanes over output channels, for inputs of few channels (the
    3-channel stem, where blocks of input channels would be mostly padding): ``dyb`` is dy
    packed channel-blocked (``[N, G Kgb, P, Q, L]``, ``Kgb`` even: each group's output
    channels in whole pairs of blocks) and ``xpad`` the input zero-padded, NCHW (``[N, C, Hp,
    Wp]``); a tile is ``rows`` taps ``(c, r, s)`` of one group's flattened ``Cg R S`` (each a
    broadcast of one input value) times two vectors of output channels. Sizes as
    :data:`WEIGHT_GRAD_INTS` (``Cgb`` read as ``Kgb``).

    One task per (group, pair of output blocks, tile of taps); its accumulators run over every
    image and pixel in registers (the taps are the rows: no loop over them), then go through
    the running thread's ``rows 2L`` floats of ``part`` into ``dw``. Taps past ``Cg R S`` read
    the last one (clamped) and channels past ``Kg`` zero padding; neither is written."""
    G, Kg, Cg, Kgb, P, Q, Hp, Wp, R, S, sh, sw, dh, dwd = (Var(v) for v in WEIGHT_GRAD_INTS)
    L, width = lanes, 2 * lanes
    gi, kp, rt, n, p, q = (Var(v) for v in ("gi", "kp", "rt", "n", "p", "q"))
    taps = Cg * R * S
    kpn, rtn = Kgb // 2, (taps + (rows - 1)) // rows
    body: list = [
        Let("gi", Var("t") // (kpn * rtn)),
        Let("kp", (Var("t") // rtn) % kpn),
        Let("rt", Var("t") % rtn),
        Let("part0", call("thread_id") * (rows * width)),
        Let("plane", Hp * Wp),
        Let("dplane", P * Q * L),
    ]
    for i in range(rows):  # each tap's offset in an image of xpad (clamped to the last tap)
        tap = f"tap{i}"
        body += [Let(tap, BinOp("min", rt * rows + i, taps - 1)),
                 Let(f"xo{i}", (gi * Cg + Var(tap) // (R * S)) * Var("plane")
                     + (Var(tap) // S) % R * dh * Wp + Var(tap) % S * dwd)]
    update: list = [Let("b0", VLoad("dyb", Var("d0") + q * L, L)),
                    Let("b1", VLoad("dyb", Var("d0") + Var("dplane") + q * L, L))]
    for i in range(rows):
        update.append(Let("av", VBroadcast("xpad", Var("xr") + Var(f"xo{i}") + q * sw, L)))
        for h in range(2):
            acc = f"acc_{i}_{h}"
            update.append(Let(acc, VFma(Var("av"), Var(f"b{h}"), Var(acc))))
    pixel_row = [Let("xr", (n * (G * Cg) * Hp + p * sh) * Wp),
                 Let("d0", (((n * (G * Kgb) + gi * Kgb + kp * 2) * P + p) * Q) * L),
                 Loop("q", Q, update)]
    stores = [VStore("part", Var("part0") + (i * width + h * L), Var(f"acc_{i}_{h}"))
              for i in range(rows) for h in range(2)]
    body += tile_stmts(rows, 2, [Loop("n", N_BATCH, [Loop("p", P, pixel_row)])], stores,
                       lanes=L)
    i, c2 = Var("i"), Var("c2")
    body.append(Loop("i", const(rows), [
        Let("tap", rt * rows + i),
        If(cmp("<", Var("tap"), taps), [Loop("c2", const(width), [
            Let("k", kp * width + c2),
            If(cmp("<", Var("k"), Kg), [
                Store("dw", (gi * Kg + Var("k")) * taps + Var("tap"),
                      Load("part", Var("part0") + i * width + c2))])])])]))
    params = [Param("xpad"), Param("dyb"), Param("part"), Param("dw")] + \
        int_params(*WEIGHT_GRAD_INTS, "n_batch")
    return Kernel(name, params, [Loop("t", G * kpn * rtn, body, kind="parallel")], comment)
