"""The GEMM of the im2col lowering: ``c[b] = w[b % G] @ col[b]``, 6 x 16 register tiles."""

from __future__ import annotations

from .common import int_params, unflatten
from .kernel_ir import (
    Epilogue,
    Kernel,
    Let,
    Loop,
    Param,
    Var,
    VBroadcast,
    VFma,
    VLoad,
    VStore,
)
from .tiles import GEMM_M, GEMM_N, epilogue_stores, floor_let, floored, tile_stmts

GEMM_INTS = ("M", "Kd", "Nc", "G")


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
    kk = Var("kk")
    upd: list = [Let("b0", VLoad("col", Var("panel") + kk * GEMM_N)),
                 Let("b1", VLoad("col", Var("panel") + kk * GEMM_N + 8))]
    for i in range(GEMM_M):
        upd.append(Let("av", VBroadcast("w", Var("arow") + i * Kd + kk)))
        for h in range(2):
            acc = f"acc_{i}_{h}"
            upd.append(Let(acc, VFma(Var("av"), Var(f"b{h}"), Var(acc))))

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

