"""The GEMMs on 6 x 16 register tiles: the im2col lowering's ``c[b] = w[b % G] @ col[b]``, and
the weight gradient's sum over the batch ``c[g] = sum_n w[n G + g] @ col[n G + g]``."""

from __future__ import annotations

from .common import int_params, unflatten
from .kernel_ir import (
    Epilogue,
    If,
    Kernel,
    Let,
    Loop,
    Param,
    Var,
    VBin,
    VBroadcast,
    VFma,
    VLoad,
    VStore,
    cmp,
)
from .tiles import GEMM_M, GEMM_N, epilogue_stores, floor_let, floored, tile_stmts

GEMM_INTS = ("M", "Kd", "Nc", "G")


def _tile_update(Kd: Var) -> list:
    """One step ``kk`` of the reduction of a 6 x 16 tile: two vectors of the panel at
    ``panel``, each of the 6 rows of ``w`` from ``arow`` broadcast against them."""
    kk = Var("kk")
    upd: list = [Let("b0", VLoad("col", Var("panel") + kk * GEMM_N)),
                 Let("b1", VLoad("col", Var("panel") + kk * GEMM_N + 8))]
    for i in range(GEMM_M):
        upd.append(Let("av", VBroadcast("w", Var("arow") + i * Kd + kk)))
        for h in range(2):
            acc = f"acc_{i}_{h}"
            upd.append(Let(acc, VFma(Var("av"), Var(f"b{h}"), Var(acc))))
    return upd


def gemm_kernel(name: str = "gemm", comment: str = "") -> Kernel:
    """``c[b] = w[b % G] @ col[b]`` for ``b < n_batch * G``, blocked 6 x 16; every size is a
    runtime integer (:data:`GEMM_INTS`), so one compiled GEMM serves every layer.

    ``w`` is ``[G, M, Kd]`` (``M`` a multiple of 6, the weights of each group); ``col`` is
    ``[n_batch * G, Nc/16, Kd, 16]``: the ``[Kd, Nc]`` im2col matrices stored as 16-column
    panels (``Nc`` a multiple of 16); ``c`` is ``[n_batch * G, M, Nc]``. One task per
    (matrix, panel): the panel (``Kd`` x 64 bytes) stays in L1/L2 while every 6-row tile of
    ``w`` (kept in L2) passes over it. The epilogue bias is per row
    (``bias[(b % G) * M + m]``); ``relu`` fuses a ReLU.
    """
    M, Kd, Nc, G = (Var(v) for v in GEMM_INTS)
    jt_count = Var("jtn")
    b, mt, jt = Var("b"), Var("mt"), Var("jt")
    ga = b % G
    upd = _tile_update(Kd)

    def stores_for(epi: Epilogue) -> list:
        out = []
        for i in range(GEMM_M):
            for h in range(2):
                val = floored(epi.apply_vec(Var(f"acc_{i}_{h}"), ga * M + mt * GEMM_M + i,
                                             same_channel=True))
                out.append(VStore("c", Var("crow") + i * Nc + h * 8, val))
        return out

    mt_body = [Let("arow", (ga * M + mt * GEMM_M) * Kd),
               Let("crow", (b * M + mt * GEMM_M) * Nc + jt * GEMM_N)] + \
        tile_stmts(GEMM_M, 2, [Loop("kk", Kd, upd)], epilogue_stores(stores_for))
    body = unflatten(Var("t"), [("b", Var("n_batch") * G), ("jt", jt_count)])
    body += [Let("panel", (b * jt_count + jt) * (Kd * GEMM_N)),
             Loop("mt", M // GEMM_M, mt_body)]
    params = [Param("col"), Param("w"), Param("bias"), Param("c")] + int_params(*GEMM_INTS) + \
        int_params("relu", "n_batch")
    loop = Loop("t", Var("n_batch") * (G * jt_count), body, kind="parallel")
    return Kernel(name, params, [floor_let(), Let("jtn", Nc // GEMM_N), loop], comment)



def gemm_batch_sum_kernel(name: str = "gemm_batch_sum", comment: str = "") -> Kernel:
    """``c[g] = sum over n < n_batch of w[n G + g] @ col[n G + g]`` for each of ``G`` groups:
    :func:`gemm_kernel`'s tiles and operand layouts (``w`` ``[n_batch * G, M, Kd]``, ``col``
    ``[n_batch * G, Nc/16, Kd, 16]``), its result ``c`` ``[G, M, Nc]`` one matrix per group,
    summed over the batch (no bias, no epilogue). One task per (group, panel); inside it, image
    after image, so each image's panel stays in L1/L2 while every 6-row tile of its ``w`` passes
    over it; the first image stores its tiles, the others add theirs to them."""
    M, Kd, Nc, G = (Var(v) for v in GEMM_INTS)
    jt_count = Var("jtn")
    b, g, mt, jt = Var("b"), Var("g"), Var("mt"), Var("jt")
    stores, sums = [], []
    for i in range(GEMM_M):
        for h in range(2):
            at = Var("crow") + i * Nc + h * 8
            acc = Var(f"acc_{i}_{h}")
            stores.append(VStore("c", at, acc))
            sums.append(VStore("c", at, VBin("add", VLoad("c", at), acc)))
    mt_body = [Let("arow", (b * M + mt * GEMM_M) * Kd),
               Let("crow", (g * M + mt * GEMM_M) * Nc + jt * GEMM_N)] + \
        tile_stmts(GEMM_M, 2, [Loop("kk", Kd, _tile_update(Kd))],
                   [If(cmp("==", Var("n"), 0), stores, sums)])
    image = [Let("b", Var("n") * G + g),
             Let("panel", (b * jt_count + jt) * (Kd * GEMM_N)),
             Loop("mt", M // GEMM_M, mt_body)]
    body = unflatten(Var("t"), [("g", G), ("jt", jt_count)]) + [
        Loop("n", Var("n_batch"), image)]
    params = [Param("col"), Param("w"), Param("c")] + int_params(*GEMM_INTS, "n_batch")
    loop = Loop("t", G * jt_count, body, kind="parallel")
    return Kernel(name, params, [Let("jtn", Nc // GEMM_N), loop], comment)
