"""A convolution for GPUs: implicit GEMM tiled through shared memory.

Per image ``n`` and group ``g`` a convolution is the GEMM ``Y[m, j] = sum_k A[m, k] B[k, j]``
with ``m`` the group's output channels, ``j = p * Q + q`` the output pixels, ``k = (c * R +
r) * S + s`` over the group's input channels and the kernel window; ``A`` is the weight tensor
``[K, C/G, R, S]`` as it is, and ``B`` the im2col matrix, never written out: each element is
read from the NCHW input where the tile needs it,

    B[(c, r, s), (p, q)] = x[n, g C/G + c, p sh - ph + r dh, q sw - pw + s dw]

(zero outside the image). A block computes an ``m`` x ``n`` tile of ``Y`` (:class:`GemmTile`:
64 or 32 output channels by 64 or 32 pixels, one thread per 4 x 4 micro-tile): for each
slice of :data:`TILE_K` values of ``k`` the threads copy the slice's ``A`` and ``B`` tiles
into shared memory (two to four elements each, consecutive threads reading consecutive
addresses), meet at a barrier, and each multiplies its micro-tile out of shared memory into
registers; a second barrier keeps the next slice's copy from overwriting a tile still being
read. The bias and a ReLU (a runtime flag, as in the CPU GEMM) are applied in the stores.
Every size is a runtime integer: one kernel per tile serves every convolution.

The tile is chosen per layer (:func:`choose_gemm_tile`, recorded as the node's ``tile``): the
64 x 64 tile reads the fewest tile elements per multiply-add, a smaller one wastes less where
a layer's output channels or pixels leave most of a 64-wide tile's last row or column empty
(16 channels; a 14 x 14 plane is 196 pixels, 3.06 tiles of 64, 6.1 of 32). The relative
speeds of the tiles (:data:`TILE_EFFICIENCY`) are estimates, not measured on a GPU.

Where a group has few output channels (depthwise convolutions: one), a tile's rows are mostly
padding: :func:`gpu_direct_conv_kernel` computes such layers a thread per output value
instead, its window summed in a loop, neighbouring threads on neighbouring pixels, and
:func:`gpu_direct_weight_grad_kernel` their weight gradient a row per weight summing over the
images and pixels (which the lowering's GPU schedule runs as a block a weight,
``gpu_schedule``).

The weight gradient is the same GEMM turned around (:func:`implicit_gemm_weight_grad_kernel`):

    dw[g Kg + m, k] = sum over images n and pixels j of dy[n, g Kg + m, j] B_n[k, j]

a tile of 64 output channels by 64 values of ``k = (c, r, s)`` per block
(:data:`WEIGHT_GRAD_TILE`), its reduction over the batch and the pixels, :data:`TILE_K`
values a slice, ``dy`` read as it is and ``B`` from the input as above. Early layers have
few such tiles (ResNet's 64 -> 64 3x3: 9) and a long reduction (``N P Q``), so the pixels
are cut into ``splits`` equal ranges, each range's blocks summing over every image into a
partial gradient of their own, and :func:`split_sum_kernel` adds the partials in a fixed
order: no atomics, the same bits whatever order the blocks run in.

A dense layer ``y[n, o] = sum_i x[n, i] w[o, i]`` is the same GEMM with the images as its
columns (:func:`dense_gemm_kernel`: ``A = w``, ``B[i, n] = x[n, i]``); its weight gradient is
the convolution's, of a 1x1 kernel over 1x1 images (``ops/dense.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .common import FusedOp, int_params
from .kernel_ir import (
    Barrier,
    BinOp,
    Const,
    Expr,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Select,
    Shared,
    Stmt,
    Store,
    Var,
    cmp,
)
from .tiles import floor_let

__all__ = ["GemmTile", "GEMM_TILES", "DEFAULT_TILE", "WEIGHT_GRAD_TILE", "TILE_K",
           "TILE_EFFICIENCY", "choose_gemm_tile", "IMPLICIT_GEMM_INTS", "gpu_direct_conv_kernel",
           "gpu_direct_weight_grad_kernel",
           "IMPLICIT_WEIGHT_GRAD_INTS", "implicit_gemm_conv_kernel", "implicit_gemm_blocks",
           "implicit_gemm_weight_grad_kernel", "weight_grad_splits", "split_sum_kernel",
           "dense_gemm_kernel", "DENSE_GEMM_INTS"]

#: Reduction values of a block's slice (the shared tiles' depth).
TILE_K = 8
#: Each thread's micro-tile: MICRO x MICRO outputs in registers.
MICRO = 4


@dataclass(frozen=True)
class GemmTile:
    """A block's output tile: ``m`` output channels (rows of ``Y``) by ``n`` pixels (or, in
    the weight gradient, ``k`` values), one thread per :data:`MICRO` x :data:`MICRO`
    micro-tile; printed and parsed as ``<m>x<n>`` (the node's ``tile``)."""

    m: int = 64
    n: int = 64

    def __post_init__(self) -> None:
        if self.m not in (32, 64) or self.n not in (32, 64):
            raise ValueError(f"not an implicit-GEMM tile: {self.m}x{self.n} (rows and columns "
                             "of 32 or 64)")

    @property
    def threads(self) -> int:
        return (self.m // MICRO) * (self.n // MICRO)

    def __str__(self) -> str:
        return f"{self.m}x{self.n}"

    @classmethod
    def parse(cls, text: str) -> GemmTile:
        m, _, n = text.partition("x")
        if not (m.isdigit() and n.isdigit()):
            raise ValueError(f"not an implicit-GEMM tile: {text!r} (expected <m>x<n>)")
        return cls(int(m), int(n))


#: The tiles a layer may take, the preferred first.
GEMM_TILES = (GemmTile(64, 64), GemmTile(64, 32), GemmTile(32, 64), GemmTile(32, 32))
DEFAULT_TILE = GEMM_TILES[0]
WEIGHT_GRAD_TILE = DEFAULT_TILE
#: Multiply-adds per unit of time of each tile relative to 64 x 64: a smaller tile copies
#: more tile elements (from L2) per multiply-add, ``(m + n) / (m n)``, with the same shared
#: memory reads per thread. Estimates: no GPU has run them yet.
TILE_EFFICIENCY = {"64x64": 1.0, "64x32": 0.9, "32x64": 0.9, "32x32": 0.8}


def choose_gemm_tile(kg: int, pq: int) -> GemmTile:
    """The tile of the least estimated time for ``kg`` output channels per group and ``pq``
    output pixels: the multiply-adds of the padded tiles over the tile's efficiency (ties to
    the larger tile). The batch is a runtime size: blocks per multiprocessor are not
    counted."""
    def cost(t: GemmTile) -> float:
        return -(-kg // t.m) * t.m * -(-pq // t.n) * t.n / TILE_EFFICIENCY[str(t)]
    return min(GEMM_TILES, key=cost)


#: The kernel's integer arguments after its arrays (``x, w, bias, y``): the sizes, then the
#: ReLU flag and the batch size (the order every convolution's compute kernel takes them in).
IMPLICIT_GEMM_INTS = ("C", "H", "W", "K", "P", "Q", "R", "S", "sh", "sw", "ph", "pw", "dh", "dw",
                      "G", "relu", "n_batch")


#: The weight gradient kernel's integer arguments after its arrays (``x, dy, grad``).
IMPLICIT_WEIGHT_GRAD_INTS = ("C", "H", "W", "K", "P", "Q", "R", "S", "sh", "sw", "ph", "pw",
                             "dh", "dw", "G", "splits", "n_batch")
#: Blocks a weight gradient aims at (a GPU's multiprocessors, a few times over).
WEIGHT_GRAD_BLOCKS = 256
#: Fewest pixels of one split's range (shorter ranges cost more in partial sums than their
#: blocks gain).
SPLIT_PIXELS = 256
#: Most floats of the partial gradients (the arena's scratch is sized per image: this many
#: per image of the batch).
SPLIT_FLOATS = 1 << 20


def weight_grad_splits(k: int, kd: int, pq: int, groups: int) -> int:
    """Pixel ranges of :func:`implicit_gemm_weight_grad_kernel` for ``k`` output channels,
    ``kd = C/G R S`` reduction values per output channel and ``pq`` pixels: enough blocks for
    :data:`WEIGHT_GRAD_BLOCKS`, each range at least :data:`SPLIT_PIXELS` pixels, the partials
    at most :data:`SPLIT_FLOATS`; 1 (no partials) where that leaves no choice."""
    t = WEIGHT_GRAD_TILE
    tiles = groups * -(-(k // groups) // t.m) * -(-kd // t.n)
    splits = min(-(-WEIGHT_GRAD_BLOCKS // tiles), -(-pq // SPLIT_PIXELS),
                 SPLIT_FLOATS // max(k * kd, 1))
    return max(splits, 1)


def implicit_gemm_blocks(n_batch: int, k: int, p: int, q: int, groups: int,
                         tile: GemmTile = DEFAULT_TILE) -> int:
    """Blocks of a launch: one per image, group and tile of the output."""
    return n_batch * groups * -(-(k // groups) // tile.m) * -(-(p * q) // tile.n)


def _and(*conds) -> BinOp:
    out = conds[0]
    for c in conds[1:]:
        out = cmp("and", out, c)
    return out


def _input_row(p: Expr, r: Expr) -> Expr:
    """The input row that output row ``p`` reads at kernel row ``r``."""
    return p * Var("sh") - Var("ph") + r * Var("dh")


def _input_col(q: Expr, s: Expr) -> Expr:
    """The input column that output column ``q`` reads at kernel column ``s``."""
    return q * Var("sw") - Var("pw") + s * Var("dw")


def _input_value(image: Expr, c: Expr, ih: Expr, iw: Expr, valid: Expr | None = None) -> Expr:
    """``x[image, g C/G + c, ih, iw]`` of NCHW ``x`` (group ``g``), zero in the padding or
    where not ``valid``."""
    H, W = Var("H"), Var("W")
    inside = _and(*([valid] if valid is not None else []),
                  cmp(">=", ih, 0), cmp("<", ih, H), cmp(">=", iw, 0), cmp("<", iw, W))
    at = ((image * Var("C") + Var("g") * Var("cg") + c) * H + ih) * W + iw
    return Select(inside, Load("x", at), Const(0.0))


def _window_element(tag: str, image: Expr, k: Expr, pixel: Expr,
                    valid: Expr) -> tuple[list[Stmt], Expr]:
    """Element ``(k, pixel)`` of image ``image``'s im2col matrix ``B`` of group ``g`` (the
    module docstring; ``k = (c, r, s)``, ``pixel = (p, q)``): the locals it needs (suffixed
    ``tag``) and its value, zero in the padding or where not ``valid``."""
    Q, R, S = Var("Q"), Var("R"), Var("S")
    c, rs, ih, iw = (Var(f"{v}{tag}") for v in ("c", "rs", "ih", "iw"))
    lets: list[Stmt] = [Let(c.name, k // (R * S)), Let(rs.name, k % (R * S)),
                        Let(ih.name, _input_row(pixel // Q, rs // S)),
                        Let(iw.name, _input_col(pixel % Q, rs % S))]
    return lets, _input_value(image, c, ih, iw, valid)


def _block_gemm(origin: list[Stmt], slices: Loop, stores: list[Stmt],
                tile: GemmTile = DEFAULT_TILE) -> list[Stmt]:
    """A block's body: its shared tiles, ``origin`` (where its output tile lies), and its
    threads: each zeroes its micro-tile's accumulators, runs ``slices`` (a loop over the
    reduction's slices whose body copies the slice into the shared tiles) with the barriers
    and the micro-tile products appended to its body, then ``stores``."""
    t = Var("t")
    loop = Loop(slices.var, slices.extent, [
        *slices.body, Barrier(), Loop("ks", Const(TILE_K), _micro_products(tile)), Barrier()])
    thread_body: list[Stmt] = [
        Let("tm", (t // (tile.n // MICRO)) * MICRO), Let("tn", (t % (tile.n // MICRO)) * MICRO),
        *[Let(f"acc_{i}_{jj}", Const(0.0)) for i in range(MICRO) for jj in range(MICRO)],
        loop, *stores]
    return [Shared("a_tile", TILE_K * tile.m), Shared("b_tile", TILE_K * tile.n), *origin,
            Loop("t", Const(tile.threads), thread_body, kind="thread")]


def _micro_stores(m0: Expr, n0: Expr, rows: Expr, cols: Expr,
                  store: Callable[[Expr, Expr, Expr], Stmt]) -> list[Stmt]:
    """The thread's micro-tile written out: ``store(row, col, accumulator)`` for each of its
    accumulators whose place in the output tile at ``(m0, n0)`` lies inside ``rows`` x
    ``cols``."""
    stores: list[Stmt] = []
    for i in range(MICRO):
        row = m0 + Var("tm") + i
        for jj in range(MICRO):
            col = n0 + Var("tn") + jj
            stores.append(If(_and(cmp("<", row, rows), cmp("<", col, cols)),
                             [store(row, col, Var(f"acc_{i}_{jj}"))]))
    return stores


def _micro_products(tile: GemmTile) -> list[Stmt]:
    """One step ``ks`` of a slice: the thread's micro-tile at rows ``tm`` and columns ``tn``
    of the shared tiles ``a_tile [TILE_K, m]`` and ``b_tile [TILE_K, n]``, multiplied into
    its accumulators ``acc_i_j``."""
    products: list[Stmt] = []
    for i in range(MICRO):
        products.append(Let(f"a{i}", Load("a_tile", Var("ks") * tile.m + Var("tm") + i)))
    for jj in range(MICRO):
        products.append(Let(f"b{jj}", Load("b_tile", Var("ks") * tile.n + Var("tn") + jj)))
    for i in range(MICRO):
        for jj in range(MICRO):
            acc = Var(f"acc_{i}_{jj}")
            products.append(Let(acc.name, Var(f"a{i}") * Var(f"b{jj}") + acc))
    return products


def implicit_gemm_conv_kernel(name: str = "conv_implicit_gemm", comment: str = "",
                              tile: GemmTile = DEFAULT_TILE) -> Kernel:
    """``y = relu?(conv(x, w) + bias)`` over NCHW ``x [n_batch, C, H, W]``, weights ``w [K,
    C/G, R, S]``, ``bias [K]`` and ``y [n_batch, K, P, Q]``, in ``tile``s (see the module
    docstring)."""
    C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, G, _, n_batch = \
        (Var(v) for v in IMPLICIT_GEMM_INTS)
    cg, kg, kd, pq = Var("cg"), Var("kg"), Var("kd"), Var("pq")
    mtiles, jtiles = Var("mtiles"), Var("jtiles")
    blk, t = Var("blk"), Var("t")
    m0, j0, g, n = Var("m0"), Var("j0"), Var("g"), Var("n")
    threads = tile.threads

    copies: list[Stmt] = []
    for e in range(TILE_K * tile.m // threads):  # the A tile's elements a thread copies
        # A: consecutive threads take consecutive k of a row (consecutive weights)
        ae = t + e * threads
        am, ak = Var(f"am{e}"), Var(f"ak{e}")
        copies += [Let(f"am{e}", ae // TILE_K), Let(f"ak{e}", ae % TILE_K),
                   Let(f"acol{e}", Var("k0") * TILE_K + ak)]
        inside = _and(cmp("<", m0 + am, kg), cmp("<", Var(f"acol{e}"), kd))
        copies.append(Store("a_tile", ak * tile.m + am, Select(
            inside, Load("w", (g * kg + m0 + am) * kd + Var(f"acol{e}")), Const(0.0))))
    for e in range(TILE_K * tile.n // threads):  # the B tile's
        # B: consecutive threads take consecutive pixels (consecutive input columns)
        be = t + e * threads
        bk, bj = Var(f"bk{e}"), Var(f"bj{e}")
        kk, j = Var(f"kk{e}"), Var(f"pix{e}")
        copies += [Let(f"bk{e}", be // tile.n), Let(f"bj{e}", be % tile.n),
                   Let(f"kk{e}", Var("k0") * TILE_K + bk), Let(f"pix{e}", j0 + bj)]
        lets, value = _window_element(str(e), n, kk, j, _and(cmp("<", kk, kd), cmp("<", j, pq)))
        copies += [*lets, Store("b_tile", bk * tile.n + bj, value)]

    stores = _micro_stores(m0, j0, kg, pq, lambda row, col, acc: Store(
        "y", (n * K + g * kg + row) * pq + col,
        BinOp("max", acc + Load("bias", g * kg + row), Var("floor"))))

    block_body = _block_gemm(
        [Let("n", blk // (G * mtiles * jtiles)), Let("g", (blk // (mtiles * jtiles)) % G),
         Let("m0", ((blk // jtiles) % mtiles) * tile.m), Let("j0", (blk % jtiles) * tile.n)],
        Loop("k0", (kd + (TILE_K - 1)) // TILE_K, copies), stores, tile)
    body: list[Stmt] = [
        floor_let(),
        Let("cg", C // G), Let("kg", K // G), Let("kd", cg * R * S), Let("pq", P * Q),
        Let("mtiles", (kg + (tile.m - 1)) // tile.m), Let("jtiles", (pq + (tile.n - 1)) // tile.n),
        Loop("blk", n_batch * G * mtiles * jtiles, block_body, kind="block"),
    ]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + int_params(*IMPLICIT_GEMM_INTS)
    return Kernel(name, params, body, comment)


def gpu_direct_conv_kernel(name: str = "conv_gpu_direct", comment: str = "") -> Kernel:
    """``y = relu?(conv(x, w) + bias)`` with the arrays and integers of
    :func:`implicit_gemm_conv_kernel`, a thread per output value ``(n, k, p, q)`` (``q``
    fastest: neighbouring threads read neighbouring input columns and write neighbouring
    outputs) summing its group's ``C/G x R x S`` products in order; no shared memory, nothing
    padded (the module docstring)."""
    C, _, _, K, P, Q, R, S, *_, G, _, n_batch = (Var(v) for v in IMPLICIT_GEMM_INTS)
    i, c, r, s_ = Var("i"), Var("c"), Var("r"), Var("s")
    w_at = ((Var("k") * Var("cg") + c) * R + r) * S + s_
    taps = Loop("c", Var("cg"), [Loop("r", R, [
        Let("ih", _input_row(Var("p"), r)),
        Loop("s", S, [Let("iw", _input_col(Var("q"), s_)),
                      Let("acc", Var("acc") + _input_value(Var("n"), c, Var("ih"), Var("iw"))
                          * Load("w", w_at))])])])
    body: list[Stmt] = [
        Let("q", i % Q), Let("p", (i // Q) % P), Let("k", (i // (P * Q)) % K),
        Let("n", i // (K * P * Q)), Let("g", Var("k") // Var("kg")), Let("acc", Const(0.0)),
        taps, Store("y", i, BinOp("max", Var("acc") + Load("bias", Var("k")), Var("floor")))]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + int_params(*IMPLICIT_GEMM_INTS)
    return Kernel(name, params, [floor_let(), Let("cg", C // G), Let("kg", K // G),
                                 Loop("i", n_batch * K * P * Q, body, kind="parallel")], comment)


def gpu_direct_weight_grad_kernel(name: str = "conv_weight_grad_gpu_direct",
                                  comment: str = "") -> Kernel:
    """``grad [K, C/G, R, S]``, the arrays and integers of
    :func:`implicit_gemm_weight_grad_kernel` (``splits`` 1): a row per weight ``(k, c, r,
    s)``, its sum of ``dy[n, k, p, q] x[n, g C/G + c, p sh - ph + r dh, q sw - pw + s dw]``
    over the images and output pixels in order, in float32 as the GEMM's; nothing padded."""
    C, _, _, K, P, Q, R, S, *_, G, _, n_batch = (Var(v) for v in IMPLICIT_WEIGHT_GRAD_INTS)
    i, u, pq = Var("i"), Var("u"), Var("pq")
    dy_at = (Var("n") * K + Var("k")) * pq + u % pq
    terms = Loop("u", n_batch * pq, [
        Let("n", u // pq), Let("ih", _input_row((u // Q) % P, Var("r"))),
        Let("iw", _input_col(u % Q, Var("s"))),
        Let("acc", Var("acc") + _input_value(Var("n"), Var("c"), Var("ih"), Var("iw"))
            * Load("dy", dy_at))])
    body: list[Stmt] = [
        Let("s", i % S), Let("r", (i // S) % R), Let("c", (i // (R * S)) % Var("cg")),
        Let("k", i // (Var("cg") * R * S)), Let("g", Var("k") // Var("kg")),
        Let("acc", Const(0.0)), terms, Store("grad", i, Var("acc"))]
    params = [Param("x"), Param("dy"), Param("grad")] + int_params(*IMPLICIT_WEIGHT_GRAD_INTS)
    return Kernel(name, params, [Let("cg", C // G), Let("kg", K // G), Let("pq", P * Q),
                                 Loop("i", K * Var("cg") * R * S, body, kind="parallel")],
                  comment)


def implicit_gemm_weight_grad_kernel(name: str = "conv_weight_grad_implicit_gemm",
                                     comment: str = "") -> Kernel:
    """``grad [splits, K, C/G, R, S]``: the weight gradient of the convolution of NCHW ``x
    [n_batch, C, H, W]`` whose output gradient is ``dy [n_batch, K, P, Q]``, range ``s`` of
    the pixels summed over every image into ``grad[s]`` (see the module docstring); with one
    split, the gradient itself."""
    C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, G, splits, n_batch = \
        (Var(v) for v in IMPLICIT_WEIGHT_GRAD_INTS)
    cg, kg, kd, pq = Var("cg"), Var("kg"), Var("kd"), Var("pq")
    span, count = Var("span"), Var("count")
    mtiles, ctiles = Var("mtiles"), Var("ctiles")
    blk, t = Var("blk"), Var("t")
    m0, k0, g, split = Var("m0"), Var("k0"), Var("g"), Var("split")
    tile = WEIGHT_GRAD_TILE
    threads = tile.threads

    def reduction(tag: str, u: Expr) -> tuple[list[Stmt], Var, Var, Expr]:
        """Reduction value ``u`` of this block's range: its image and pixel, and whether it
        is one (the last slice runs past the range; the last range past the pixels)."""
        img, pix = Var(f"img{tag}"), Var(f"pix{tag}")
        lets: list[Stmt] = [Let(f"u{tag}", u), Let(img.name, Var(f"u{tag}") // span),
                            Let(pix.name, split * span + Var(f"u{tag}") % span)]
        return lets, img, pix, _and(cmp("<", Var(f"u{tag}"), count), cmp("<", pix, pq))

    copies: list[Stmt] = []
    for e in range(TILE_K * tile.m // threads):
        # dy: consecutive threads take consecutive reduction values (consecutive pixels)
        ae = t + e * threads
        am, ak = Var(f"am{e}"), Var(f"ak{e}")
        lets, img, pix, valid = reduction(f"a{e}", Var("u0") + ak)
        copies += [Let(am.name, ae // TILE_K), Let(ak.name, ae % TILE_K), *lets]
        copies.append(Store("a_tile", ak * tile.m + am, Select(
            _and(cmp("<", m0 + am, kg), valid),
            Load("dy", (img * K + g * kg + m0 + am) * pq + pix), Const(0.0))))
    for e in range(TILE_K * tile.n // threads):
        # B transposed: consecutive threads take consecutive reduction values again
        be = t + e * threads
        bk, bj = Var(f"bk{e}"), Var(f"bj{e}")
        col = Var(f"col{e}")
        lets, img, pix, valid = reduction(f"b{e}", Var("u0") + bk)
        copies += [Let(bk.name, be % TILE_K), Let(bj.name, be // TILE_K), *lets,
                   Let(col.name, k0 + bj)]
        window, value = _window_element(str(e), img, col, pix, _and(cmp("<", col, kd), valid))
        copies += [*window, Store("b_tile", bk * tile.n + bj, value)]

    stores = _micro_stores(m0, k0, kg, kd, lambda row, col, acc: Store(
        "grad", (split * K + g * kg + row) * kd + col, acc))

    block_body = _block_gemm(
        [Let("split", blk // (G * mtiles * ctiles)), Let("g", (blk // (mtiles * ctiles)) % G),
         Let("m0", ((blk // ctiles) % mtiles) * tile.m), Let("k0", (blk % ctiles) * tile.n)],
        Loop("slice", (count + (TILE_K - 1)) // TILE_K,
             [Let("u0", Var("slice") * TILE_K), *copies]), stores, tile)
    body: list[Stmt] = [
        Let("cg", C // G), Let("kg", K // G), Let("kd", cg * R * S), Let("pq", P * Q),
        # each split: a range of ``span`` pixels, over every image
        Let("span", (pq + (splits - 1)) // splits), Let("count", n_batch * span),
        Let("mtiles", (kg + (tile.m - 1)) // tile.m), Let("ctiles", (kd + (tile.n - 1)) // tile.n),
        Loop("blk", splits * G * mtiles * ctiles, block_body, kind="block"),
    ]
    params = [Param("x"), Param("dy"), Param("grad")] + int_params(*IMPLICIT_WEIGHT_GRAD_INTS)
    return Kernel(name, params, body, comment)


def split_sum_kernel(name: str = "sum_splits", comment: str = "") -> Kernel:
    """``out[i] = part[0, i] + part[1, i] + ... + part[splits - 1, i]`` for ``i < n``, in that
    order (``part [splits, n]``): a thread per float."""
    i = Var("i")
    body: list[Stmt] = [Let("total", Load("part", i)),
                        Loop("s", Var("splits") - 1, [
                            Let("total", Var("total") + Load("part", Var("s") * Var("n") + i))],
                             start=Const(1)),
                        Store("out", i, Var("total"))]
    return Kernel(name, [Param("part"), Param("out")] + int_params("splits", "n"),
                  [Loop("i", Var("n"), body, kind="parallel")],
                  comment or "partial sums of a split reduction added, in order")


#: The dense GEMM's integer arguments after its arrays: inputs and outputs of a row, the batch.
DENSE_GEMM_INTS = ("NI", "NO", "n_batch")


def dense_gemm_kernel(name: str, bias: bool, epilogue: Sequence[FusedOp],
                      comment: str = "") -> Kernel:
    """``y[n, o] = epilogue(sum_i x0[n, i] c_w[o, i] + c_b[o])`` for ``x0 [n_batch, NI]``,
    ``c_w [NO, NI]`` and ``y [n_batch, NO]`` (the module docstring): a block per tile of
    :data:`DEFAULT_TILE` (64 outputs by 64 images), the slices of ``w`` and ``x`` copied into
    shared memory (consecutive threads, consecutive inputs of a row), then the unary
    ``epilogue`` (the ops' scalar rules) at the stores."""
    ni, no, n_batch = (Var(v) for v in DENSE_GEMM_INTS)
    t, m0, j0 = Var("t"), Var("m0"), Var("j0")
    tile = DEFAULT_TILE  # square: a thread copies as many elements of either tile
    per_slice = TILE_K * tile.m // tile.threads
    copies: list[Stmt] = []
    for e in range(per_slice):
        # both tiles: consecutive threads take consecutive inputs of a row
        at = t + e * tile.threads
        row, k = Var(f"row{e}"), Var(f"kc{e}")
        col, kk = Var(f"col{e}"), Var(f"kk{e}")
        copies += [Let(row.name, at // TILE_K), Let(k.name, at % TILE_K),
                   Let(kk.name, Var("k0") * TILE_K + k), Let(col.name, j0 + row)]
        copies.append(Store("a_tile", k * tile.m + row, Select(
            _and(cmp("<", m0 + row, no), cmp("<", kk, ni)),
            Load("c_w", (m0 + row) * ni + kk), Const(0.0))))
        copies.append(Store("b_tile", k * tile.n + row, Select(
            _and(cmp("<", col, n_batch), cmp("<", kk, ni)), Load("x0", col * ni + kk),
            Const(0.0))))

    def store(out: Expr, image: Expr, acc: Expr) -> Stmt:
        value: Expr = acc + Load("c_b", out) if bias else acc
        for op in epilogue:
            value = op.scalar(value, op.attr_dict, None)
        return Store("y", image * no + out, value)

    block_body = _block_gemm(
        [Let("m0", (Var("blk") // Var("jtiles")) * tile.m),
         Let("j0", (Var("blk") % Var("jtiles")) * tile.n)],
        Loop("k0", (ni + (TILE_K - 1)) // TILE_K, copies),
        _micro_stores(m0, j0, no, n_batch, store), tile)
    body: list[Stmt] = [
        Let("mtiles", (no + (tile.m - 1)) // tile.m),
        Let("jtiles", (n_batch + (tile.n - 1)) // tile.n),
        Loop("blk", Var("mtiles") * Var("jtiles"), block_body, kind="block"),
    ]
    params = [Param("x0"), Param("c_w")] + ([Param("c_b")] if bias else []) + [Param("y")] + \
        int_params(*DENSE_GEMM_INTS)
    return Kernel(name, params, body, comment)
