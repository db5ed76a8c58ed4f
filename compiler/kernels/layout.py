"""Layout kernels shared by every layer (all sizes are runtime arguments): NCHW to the padded,
channel-blocked NCHWc of the direct convolution and back, im2col and the GEMM crop; and the
variants of the two output kernels that apply a fused epilogue at their store."""

from __future__ import annotations

from .common import apply_epilogue, int_params, unflatten
from .kernel_ir import (
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
    Store,
    Var,
    cmp,
)
from .tiles import GEMM_N

#: The strides that place im2col's matrix elements (see ``layout_kernels``).
IM2COL_STRIDES = ("MS", "RS", "RL", "JS", "JL")


def im2col_strides(rows: int, cols: int) -> tuple[int, int, int, int, int]:
    """:data:`IM2COL_STRIDES` of ``[rows, cols]`` matrices (``cols`` a multiple of 16) stored
    as 16-column panels ``[cols/16, rows, 16]``: the convolution's GEMM operand."""
    return rows * cols, GEMM_N * GEMM_N, GEMM_N, rows * GEMM_N, 1


def im2col_transposed_strides(rows: int, cols: int) -> tuple[int, int, int, int, int]:
    """:data:`IM2COL_STRIDES` of ``[rows, cols]`` matrices stored transposed, as ``[rows/16,
    cols, 16]`` (``rows`` a multiple of 16): 16-column panels of the ``[cols, rows]``
    transpose, the weight gradient's GEMM operand."""
    return rows * cols, cols * GEMM_N, 1, GEMM_N * GEMM_N, GEMM_N


def layout_kernels() -> list[Kernel]:
    """Kernels shared by all layers; every size is a runtime integer argument.

    - ``pack_nchw_blocked(x, xp, ...)``: NCHW ``[N, C, H, W]`` -> padded, channel-blocked
      ``[N, NB, Hp, Wp, CB]`` where block ``b`` holds channels ``(b // Cgb) * Cg + (b % Cgb) *
      CB + lane`` (zero where that exceeds the group, and in the padding).
    - ``unpack_blocked_nchw(y, out, ...)``: ``[N, K8, P, Q, 8]`` -> ``[N, K, P, Q]``, channel
      ``k`` being at position ``(k // Kg) * KgPad + k % Kg`` of the blocked channel axis.
    - ``im2col(x, col, ...)``: NCHW -> per image and group the matrix ``[Cg*R*S, PQp]`` (zero
      beyond ``P*Q``), element ``(row, j)`` of matrix ``m = n g + gi`` at ``m MS + (row // 16)
      RS + (row % 16) RL + (j // 16) JS + (j % 16) JL``. The convolution's GEMM reads it in
      16-column panels ``[N, g, PQp/16, Cg*R*S, 16]`` (:func:`im2col_strides`); the weight
      gradient's GEMM reads its transpose ``[P*Q, Cg*R*S]`` in 16-column panels
      (:func:`im2col_transposed_strides`).
    - ``pad_gemm_rows(x, out, ...)``: ``[N, K, L]`` -> ``[N, g, Kgp, L]``, each group's ``Kg``
      rows then zero rows up to ``Kgp`` (a GEMM's row operand in whole 6-row tiles).
    - ``crop_gemm(c, out, ...)``: ``[N, g, Kgp, PQp]`` -> ``[N, K, P*Q]`` (the GEMM already
      applied the epilogue).
    """
    N, C, H, W = Var("N"), Var("C"), Var("H"), Var("W")
    Hp, Wp, pt, pl = Var("Hp"), Var("Wp"), Var("pt"), Var("pl")
    NB, CB, Cg, Cgb = Var("NB"), Var("CB"), Var("Cg"), Var("Cgb")
    n, b, hp, wp, l = Var("n"), Var("b"), Var("hp"), Var("wp"), Var("l")

    # ---- pack: NCHW -> padded NCHWc. Per padded row and lane: zeros left of the image, a
    # contiguous read of one input row, zeros right of it (no per-element bounds test).
    cin = (b % Cgb) * CB + l  # channel within the group
    src = ((n * C + (b // Cgb) * Cg + cin) * H + Var("ih")) * W - pl
    wl, wr = Var("wl"), Var("wr")
    zero_row = [Loop("wp", Wp, [Store("xp", Var("dst") + wp * CB + l, Const(0.0))])]
    pack_body = unflatten(Var("t"), [("n", N), ("b", NB), ("hp", Hp)]) + [
        Let("ih", hp - pt),
        Let("dst", ((n * NB + b) * Hp + hp) * Wp * CB),
        # [0, wl) left padding, [wl, wr) image columns, [wr, Wp) right padding
        Let("wl", BinOp("min", pl, Wp)),
        Let("wr", BinOp("max", wl, BinOp("min", Wp, pl + W))),
        Loop("l", CB, [
            If(cmp("and", cmp("and", cmp(">=", Var("ih"), 0), cmp("<", Var("ih"), H)),
                   cmp("<", cin, Cg)),
               [Let("src", src),
                Loop("wp", wl, [Store("xp", Var("dst") + wp * CB + l, Const(0.0))]),
                Loop("wp", wr - wl, [Store("xp", Var("dst") + wp * CB + l,
                                           Load("x", Var("src") + wp))], start=wl),
                Loop("wp", Wp - wr, [Store("xp", Var("dst") + wp * CB + l, Const(0.0))],
                     start=wr)],
               zero_row),
        ]),
    ]
    pack = Kernel("pack_nchw_blocked",
                  [Param("x"), Param("xp")] + int_params("N", "C", "H", "W", "Hp", "Wp", "pt", "pl",
                                                    "NB", "CB", "Cg", "Cgb"),
                  [Loop("t", N * NB * Hp, pack_body, kind="parallel")],
                  "NCHW -> zero-padded channel-blocked NCHWc")

    # ---- unpack: NCHW8c -> NCHW (and NCHW16c, the depthwise kernel's 16-lane output)
    unpack = unpack_epilogue_kernel("unpack_blocked_nchw", (), [],
                                    "channel-blocked NCHW8c -> NCHW")
    unpack16 = unpack_epilogue_kernel("unpack_blocked16_nchw", (), [],
                                      "channel-blocked NCHW16c -> NCHW", lanes=16)

    # ---- im2col: NCHW -> [N, g, PQp/16, Cg*R*S, 16]
    P, Q, p, q = Var("P"), Var("Q"), Var("p"), Var("q")
    G, R, S, sh, sw, dh, dw, PQp = (Var(s) for s in ("G", "R", "S", "sh", "sw", "dh", "dw",
                                                     "PQp"))
    MS, RS, RL, JS, JL = (Var(s) for s in IM2COL_STRIDES)
    row, gi = Var("row"), Var("gi")
    CRS = Cg * R * S
    iw = q * sw - pl + Var("s") * dw
    im_src = ((n * C + gi * Cg + Var("c")) * H + Var("ih")) * W + iw
    ok = cmp("and", Var("rowok"), cmp("and", cmp(">=", iw, 0), cmp("<", iw, W)))
    im_body = unflatten(Var("t"), [("n", N), ("gi", G), ("row", CRS)]) + [
        Let("c", row // (R * S)),
        Let("r", (row // S) % R),
        Let("s", row % S),
        Let("dst", (n * G + gi) * MS + (row // GEMM_N) * RS + (row % GEMM_N) * RL),
        Loop("p", P, [
            Let("ih", p * sh - pt + Var("r") * dh),
            Let("rowok", cmp("and", cmp(">=", Var("ih"), 0), cmp("<", Var("ih"), H))),
            Loop("q", Q, [
                Let("j", p * Q + q),
                Store("col", Var("dst") + (Var("j") // GEMM_N) * JS + (Var("j") % GEMM_N) * JL,
                      Select(ok, Load("x", im_src), Const(0.0)))]),
        ]),
        Loop("j", PQp - P * Q, [Store("col", Var("dst") + (Var("j") // GEMM_N) * JS
                                       + (Var("j") % GEMM_N) * JL, Const(0.0))], start=P * Q),
    ]
    im2col = Kernel("im2col",
                    [Param("x"), Param("col")] + int_params("N", "C", "H", "W", "G", "Cg", "R", "S",
                                                       "P", "Q", "sh", "sw", "dh", "dw", "pt",
                                                       "pl", "PQp", *IM2COL_STRIDES),
                    [Loop("t", N * G * CRS, im_body, kind="parallel")],
                    "im2col: NCHW -> per image and group [Cg*R*S, P*Q padded to 16], "
                    "in 16-column panels")

    # ---- pad_gemm_rows: [N, K, L] -> [N, g, Kgp, L], each group's rows padded with zeros
    K, Kg, Kgp, L = Var("K"), Var("Kg"), Var("Kgp"), Var("L")
    m, kr, j = Var("m"), Var("kr"), Var("j")
    pad_body = unflatten(Var("t"), [("m", N * (K // Kg)), ("kr", Kgp)]) + [
        Let("dst", Var("t") * L),
        If(cmp("<", kr, Kg),
           [Let("src", (m * Kg + kr) * L),
            Loop("j", L, [Store("out", Var("dst") + j, Load("x", Var("src") + j))])],
           [Loop("j", L, [Store("out", Var("dst") + j, Const(0.0))])])]
    pad_rows = Kernel("pad_gemm_rows",
                      [Param("x"), Param("out")] + int_params("N", "K", "Kg", "Kgp", "L"),
                      [Loop("t", N * (K // Kg) * Kgp, pad_body, kind="parallel")],
                      "[N, K, L] -> [N, g, Kg padded, L]: a GEMM's rows, zero beyond each "
                      "group's Kg")

    # ---- crop: [N, g, Kgp, PQp] -> [N, K, PQ]
    crop = crop_epilogue_kernel("crop_gemm", (), [],
                                "GEMM output [N, g, Kg padded, PQ padded] -> NCHW")
    return [pack, unpack, unpack16, im2col, pad_rows, crop]


def _operand_load(name: str, kind: str, full_index: Expr, n: Expr, nk: Expr) -> Expr:
    """The element of a fused epilogue operand that meets output element ``full_index``:
    ``full`` operands share the output's index, a ``channel`` gate is indexed by (image,
    channel) ``nk``, a ``scalar`` by the image ``n`` (``ops.operand_kind``)."""
    index = {"full": full_index, "channel": nk, "scalar": n}[kind]
    return Load(name, index)


def unpack_epilogue_kernel(name: str, epilogue, kinds: list[str], comment: str = "",
                           lanes: int = 8) -> Kernel:
    """Channel-blocked ``[N, K8, P, Q, lanes]`` -> NCHW, applying ``epilogue`` at its store;
    operand ``i`` of the epilogue (of kind ``kinds[i]``) is the array parameter ``e<i>``. With
    no epilogue this is the shared ``unpack_blocked_nchw`` (``unpack_blocked16_nchw``)."""
    N, K, P, Q, Kg, KgPad, K8 = (Var(s) for s in ("N", "K", "P", "Q", "Kg", "KgPad", "K8"))
    n, k, p, q = Var("n"), Var("k"), Var("p"), Var("q")
    operands = _epilogue_operands(epilogue, kinds, Var("dst") + q, n, n * K + k)
    body = unflatten(Var("t"), [("n", N), ("k", K), ("p", P)]) + [
        Let("cpos", (k // Kg) * KgPad + k % Kg),
        Let("src", ((n * K8 + Var("cpos") // lanes) * P + p) * Q * lanes +
            Var("cpos") % lanes),
        Let("dst", ((n * K + k) * P + p) * Q),
        Loop("q", Q, apply_epilogue(Load("y", Var("src") + q * lanes), epilogue, operands)
             + [Store("out", Var("dst") + q, Var("v"))]),
    ]
    params = [Param("y"), Param("out")] + [Param(f"e{i}") for i in range(len(kinds))] + \
        int_params("N", "K", "P", "Q", "Kg", "KgPad", "K8")
    return Kernel(name, params, [Loop("t", N * K * P, body, kind="parallel")], comment)


def crop_epilogue_kernel(name: str, epilogue, kinds: list[str], comment: str = "") -> Kernel:
    """The GEMM's ``[N, g, Kgp, PQp]`` -> NCHW ``[N, K, PQ]``, applying ``epilogue`` at its
    store (operands as in :func:`unpack_epilogue_kernel`). With no epilogue this is the shared
    ``crop_gemm``."""
    N, K, Kg, Kgp, PQ, PQp = (Var(s) for s in ("N", "K", "Kg", "Kgp", "PQ", "PQp"))
    n, k, j = Var("n"), Var("k"), Var("j")
    operands = _epilogue_operands(epilogue, kinds, Var("dst") + j, n, n * K + k)
    body = unflatten(Var("t"), [("n", N), ("k", K)]) + [
        Let("src", ((n * (K // Kg) + k // Kg) * Kgp + k % Kg) * PQp),
        Let("dst", (n * K + k) * PQ),
        Loop("j", PQ, apply_epilogue(Load("c", Var("src") + j), epilogue, operands)
             + [Store("out", Var("dst") + j, Var("v"))]),
    ]
    params = [Param("c"), Param("out")] + [Param(f"e{i}") for i in range(len(kinds))] + \
        int_params("N", "K", "Kg", "Kgp", "PQ", "PQp")
    return Kernel(name, params, [Loop("t", N * K, body, kind="parallel")], comment)


def _epilogue_operands(epilogue, kinds: list[str], full: Expr, n: Expr, nk: Expr) -> dict:
    """Loads of the epilogue's operands by their input position (``EpilogueOp.operand``)."""
    positions = [e.operand for e in epilogue if e.operand is not None]
    return {pos: _operand_load(f"e{i}", kinds[i], full, n, nk)
            for i, pos in enumerate(positions)}
