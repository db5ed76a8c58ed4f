"""A convolution for GPUs: implicit GEMM tiled through shared memory.

Per image ``n`` and group ``g`` a convolution is the GEMM ``Y[m, j] = sum_k A[m, k] B[k, j]``
with ``m`` the group's output channels, ``j = p * Q + q`` the output pixels, ``k = (c * R +
r) * S + s`` over the group's input channels and the kernel window; ``A`` is the weight tensor
``[K, C/G, R, S]`` as it is, and ``B`` the im2col matrix, never written out: each element is
read from the NCHW input where the tile needs it,

    B[(c, r, s), (p, q)] = x[n, g C/G + c, p sh - ph + r dh, q sw - pw + s dw]

(zero outside the image). A block of :data:`THREADS` threads computes a :data:`TILE_M` x
:data:`TILE_N` tile of ``Y``: for each slice of :data:`TILE_K` values of ``k`` the threads
copy the slice's ``A`` and ``B`` tiles into shared memory (two elements each, consecutive
threads reading consecutive addresses), meet at a barrier, and each multiplies its 4 x 4
micro-tile out of shared memory into registers; a second barrier keeps the next slice's copy
from overwriting a tile still being read. The bias and a ReLU (a runtime flag, as in the CPU
GEMM) are applied in the stores. Every size is a runtime integer: one kernel serves every
convolution.
"""

from __future__ import annotations

from .common import int_params
from .kernel_ir import (
    Barrier,
    BinOp,
    Const,
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

__all__ = ["TILE_M", "TILE_N", "TILE_K", "THREADS", "IMPLICIT_GEMM_INTS",
           "implicit_gemm_conv_kernel", "implicit_gemm_blocks"]

#: Output channels, output pixels and reduction values of a block's tile.
TILE_M, TILE_N, TILE_K = 64, 64, 8
#: Threads of a block: 16 x 16, each computing a 4 x 4 micro-tile.
THREADS = 256
MICRO = 4

#: The kernel's integer arguments after its arrays (``x, w, bias, y``): the sizes, then the
#: ReLU flag and the batch size (the order every convolution's compute kernel takes them in).
IMPLICIT_GEMM_INTS = ("C", "H", "W", "K", "P", "Q", "R", "S", "sh", "sw", "ph", "pw", "dh", "dw",
                      "G", "relu", "n_batch")


def implicit_gemm_blocks(n_batch: int, k: int, p: int, q: int, groups: int) -> int:
    """Blocks of a launch: one per image, group and tile of the output."""
    return n_batch * groups * -(-(k // groups) // TILE_M) * -(-(p * q) // TILE_N)


def _and(*conds) -> BinOp:
    out = conds[0]
    for c in conds[1:]:
        out = cmp("and", out, c)
    return out


def implicit_gemm_conv_kernel(name: str = "conv_implicit_gemm", comment: str = "") -> Kernel:
    """``y = relu?(conv(x, w) + bias)`` over NCHW ``x [n_batch, C, H, W]``, weights ``w [K,
    C/G, R, S]``, ``bias [K]`` and ``y [n_batch, K, P, Q]`` (see the module docstring)."""
    C, H, W, K, P, Q, R, S, sh, sw, ph, pw, dh, dw, G, _, n_batch = \
        (Var(v) for v in IMPLICIT_GEMM_INTS)
    cg, kg, kd, pq = Var("cg"), Var("kg"), Var("kd"), Var("pq")
    mtiles, jtiles = Var("mtiles"), Var("jtiles")
    blk, t = Var("blk"), Var("t")
    m0, j0, g, n = Var("m0"), Var("j0"), Var("g"), Var("n")
    per_slice = TILE_K * TILE_M // THREADS  # elements of each tile a thread copies

    copies: list[Stmt] = []
    for e in range(per_slice):
        # A: consecutive threads take consecutive k of a row (consecutive weights)
        ae = t + e * THREADS
        am, ak = Var(f"am{e}"), Var(f"ak{e}")
        copies += [Let(f"am{e}", ae // TILE_K), Let(f"ak{e}", ae % TILE_K),
                   Let(f"acol{e}", Var("k0") * TILE_K + ak)]
        inside = _and(cmp("<", m0 + am, kg), cmp("<", Var(f"acol{e}"), kd))
        copies.append(Store("a_tile", ak * TILE_M + am, Select(
            inside, Load("w", (g * kg + m0 + am) * kd + Var(f"acol{e}")), Const(0.0))))
    for e in range(per_slice):
        # B: consecutive threads take consecutive pixels (consecutive input columns)
        be = t + e * THREADS
        bk, bj = Var(f"bk{e}"), Var(f"bj{e}")
        kk, j = Var(f"kk{e}"), Var(f"pix{e}")
        c, rs = Var(f"c{e}"), Var(f"rs{e}")
        ih, iw = Var(f"ih{e}"), Var(f"iw{e}")
        copies += [Let(f"bk{e}", be // TILE_N), Let(f"bj{e}", be % TILE_N),
                   Let(f"kk{e}", Var("k0") * TILE_K + bk), Let(f"pix{e}", j0 + bj),
                   Let(f"c{e}", kk // (R * S)), Let(f"rs{e}", kk % (R * S)),
                   Let(f"ih{e}", (j // Q) * sh - ph + (rs // S) * dh),
                   Let(f"iw{e}", (j % Q) * sw - pw + (rs % S) * dw)]
        inside = _and(cmp("<", kk, kd), cmp("<", j, pq), cmp(">=", ih, 0), cmp("<", ih, H),
                      cmp(">=", iw, 0), cmp("<", iw, W))
        copies.append(Store("b_tile", bk * TILE_N + bj, Select(
            inside, Load("x", ((n * C + g * cg + c) * H + ih) * W + iw), Const(0.0))))

    products: list[Stmt] = []
    for i in range(MICRO):
        products.append(Let(f"a{i}", Load("a_tile", Var("ks") * TILE_M + Var("tm") + i)))
    for jj in range(MICRO):
        products.append(Let(f"b{jj}", Load("b_tile", Var("ks") * TILE_N + Var("tn") + jj)))
    for i in range(MICRO):
        for jj in range(MICRO):
            acc = Var(f"acc_{i}_{jj}")
            products.append(Let(acc.name, Var(f"a{i}") * Var(f"b{jj}") + acc))

    stores: list[Stmt] = []
    for i in range(MICRO):
        row = m0 + Var("tm") + i
        for jj in range(MICRO):
            col = j0 + Var("tn") + jj
            value = BinOp("max", Var(f"acc_{i}_{jj}") + Load("bias", g * kg + row),
                          Var("floor"))
            stores.append(If(_and(cmp("<", row, kg), cmp("<", col, pq)), [
                Store("y", (n * K + g * kg + row) * pq + col, value)]))

    thread_body: list[Stmt] = [
        Let("tm", (t // (TILE_N // MICRO)) * MICRO), Let("tn", (t % (TILE_N // MICRO)) * MICRO),
        *[Let(f"acc_{i}_{jj}", Const(0.0)) for i in range(MICRO) for jj in range(MICRO)],
        Loop("k0", (kd + (TILE_K - 1)) // TILE_K, copies + [
            Barrier(), Loop("ks", Const(TILE_K), products), Barrier()]),
        *stores,
    ]
    block_body: list[Stmt] = [
        Shared("a_tile", TILE_K * TILE_M), Shared("b_tile", TILE_K * TILE_N),
        Let("n", blk // (G * mtiles * jtiles)),
        Let("g", (blk // (mtiles * jtiles)) % G),
        Let("m0", ((blk // jtiles) % mtiles) * TILE_M),
        Let("j0", (blk % jtiles) * TILE_N),
        Loop("t", Const(THREADS), thread_body, kind="thread"),
    ]
    body: list[Stmt] = [
        floor_let(),
        Let("cg", C // G), Let("kg", K // G), Let("kd", cg * R * S), Let("pq", P * Q),
        Let("mtiles", (kg + (TILE_M - 1)) // TILE_M), Let("jtiles", (pq + (TILE_N - 1)) // TILE_N),
        Loop("blk", n_batch * G * mtiles * jtiles, block_body, kind="block"),
    ]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + int_params(*IMPLICIT_GEMM_INTS)
    return Kernel(name, params, body, comment)
