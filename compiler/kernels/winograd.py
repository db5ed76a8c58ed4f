"""Winograd convolution F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016): the transform matrices, derived in exact rationals, and the kernel.

One-dimensional F(m, r) computes ``m`` outputs of a correlation with an ``r``-tap filter
from ``alpha = m + r - 1`` inputs as

    y = A^T [(G g) * (B^T d)]       (``*`` element-wise; ``alpha`` multiplications, not m r)

and the two-dimensional F(m x m, r x r) nests it: ``Y = A^T [(G g G^T) * (B^T d B)] A``. The
matrices come from the Chinese remainder theorem over the polynomials ``x - p`` of
``alpha - 1`` finite interpolation points ``p`` and the point at infinity (Toom-Cook):

- ``A^T[i, j] = p_j^i`` (the ``i``-th power of finite point ``j``); the infinite point's column
  is ``e_{m-1}``;
- ``G[j, k] = p_j^k / f_j`` with ``f_j = prod over finite l != j of (p_j - p_l)``; the
  infinite point's row is ``e_{r-1}``;
- ``B^T``'s row ``j`` holds the coefficients (of ``x^0 .. x^{alpha-1}``) of ``prod over
  finite l != j of (x - p_l)``; the infinite point's row those of ``prod over all finite l``.

The divisions by ``f_j`` sit in ``G``, so ``B^T`` and ``A^T`` are small integers, exact in
float32; the filter transform ``U = G g G^T`` is computed in float64 once, when parameters are
set (a derived parameter) and rounded once. Points: F(2, 3) ``0, 1, -1, inf``; F(4, 3) ``0,
1, -1, 2, -2, inf`` (Lavin & Gray's; Barabasz et al. 2018 show these small points, symmetric
about 0, keep the transforms' norms, and so the error, lowest).

The kernel (:func:`winograd_conv_kernel`) fuses the three stages per task: a task is
:data:`TILES` consecutive output tiles of the batch (numbered image after image, so a small
image's last tiles share a task with the next image's first), for every output channel (or,
where the groups are few and would share out unevenly between the threads, a task is an
equal share of all the groups' (group, output-channel tile) pairs: :func:`task_count`); it
transforms their input tiles, every channel block, into a per-thread scratch ``V``
(``[alpha^2, C8, TILES, 8]``), then for each 16-channel tile of its output channels runs the
``alpha^2`` GEMMs ``M[xi] = V[xi] @ U[xi]`` on the 6 x 16 register tile of the direct kernel
(6 tiles broadcast against 2 weight vectors, summed over the input channels) into a scratch
``M`` (``[alpha^2, TILES, 16]``, in L1), and transforms that back into the output pixels with
the bias, the ReLU floor and the fused epilogue at the store. Each tile's sums are its own
accumulators, in the same order whatever its place in a task: an image's outputs do not
depend on the batch it runs in.
Vectors are 8 channels wide throughout: the transforms are lane-wise.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np

from .common import int_params, unflatten
from .conv_direct import IO_INTS, epilogue_params, residual_params
from .conv_geometry import ConvGeometry, ceil_div
from .kernel_ir import (
    Comment,
    Const,
    Expr,
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
    VLoad,
    VSplat,
    VStore,
    VZero,
    call,
    cmp,
    const,
)
from .tiles import (
    TILE_K,
    StorageIndex,
    floor_let,
    floored,
    operand_plane,
    operand_row,
    operand_step,
    residual_let,
    residual_store,
    store_epilogue,
    zero_row_halo,
)

#: Output tiles a task computes together: the rows of the GEMM's register tile.
TILES = 6
#: Lanes of every vector of the kernel (channels).
LANES = 8

Matrix = tuple[tuple[Fraction, ...], ...]

#: Filters per matrix product of the filter transform (``[2048 x 3, 3] @ [3, 6]``): large
#: enough that a product's call costs little, small enough that the BLAS library runs it on
#: the calling thread (NumPy's OpenBLAS threads a product of 4 x 65536 multiply-adds or more;
#: its threads wait spinning between such short products, which cost 10x their work on a
#: loaded machine).
FILTERS_A_PRODUCT = 2048


def _poly_mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def _poly_of_roots(roots: list[Fraction]) -> list[Fraction]:
    """Coefficients (of x^0 upwards) of prod (x - root)."""
    poly = [Fraction(1)]
    for p in roots:
        poly = _poly_mul(poly, [-p, Fraction(1)])
    return poly


@dataclass(frozen=True)
class WinogradTransform:
    """F(m, r) with the finite interpolation ``points`` (and the point at infinity): the exact
    matrices ``AT`` (m x alpha), ``G`` (alpha x r) and ``BT`` (alpha x alpha)."""

    m: int
    r: int
    points: tuple[Fraction, ...]

    def __post_init__(self) -> None:
        if len(self.points) != self.alpha - 1 or len(set(self.points)) != len(self.points):
            raise ValueError(f"F({self.m}, {self.r}) needs {self.alpha - 1} distinct finite "
                             f"points, got {self.points}")

    @property
    def alpha(self) -> int:
        """Input tile size: ``m + r - 1``."""
        return self.m + self.r - 1

    @cached_property
    def AT(self) -> Matrix:
        rows = [[p ** i for p in self.points] + [Fraction(int(i == self.m - 1))]
                for i in range(self.m)]
        return tuple(tuple(r) for r in rows)

    @cached_property
    def G(self) -> Matrix:
        rows = []
        for j, p in enumerate(self.points):
            f = Fraction(1)
            for q in self.points[:j] + self.points[j + 1:]:
                f *= p - q
            rows.append([p ** k / f for k in range(self.r)])
        rows.append([Fraction(int(k == self.r - 1)) for k in range(self.r)])
        return tuple(tuple(r) for r in rows)

    @cached_property
    def BT(self) -> Matrix:
        rows = []
        for j in range(len(self.points)):
            poly = _poly_of_roots(list(self.points[:j] + self.points[j + 1:]))
            rows.append(poly + [Fraction(0)] * (self.alpha - len(poly)))
        rows.append(_poly_of_roots(list(self.points)))
        return tuple(tuple(r) for r in rows)

    def array(self, name: str) -> np.ndarray:
        """``AT``, ``G`` or ``BT`` in float64 (exact for ``AT`` and ``BT``)."""
        return np.array([[float(v) for v in row] for row in getattr(self, name)])

    @cached_property
    def _gt(self) -> np.ndarray:
        """``G^T`` in float64, read-only (the filter transform's, made once)."""
        gt = self.array("G").T
        gt.setflags(write=False)
        return gt

    def filter_transform(self, w: np.ndarray) -> np.ndarray:
        """``U = G w G^T`` of filters ``[..., r, r]`` in float64: ``[..., alpha, alpha]``.

        Computed as ``T^T = w^T G^T``, then ``U = T G^T``, each a matrix product over up to
        :data:`FILTERS_A_PRODUCT` filters at a time (their rows stacked): NumPy's batched ``G
        @ w @ G.T`` calls the BLAS library twice per 3 x 3 filter, several times slower for a
        ResNet's filters. Each value is the same sum in the same order as that of ``G @ w @
        G.T``: the same float64 result."""
        a, r = self.alpha, self.r
        w = np.asarray(w, np.float64)
        if w.shape[-2:] != (r, r):
            raise ValueError(f"F({self.m}, {self.r}): filters must be {r} x {r}, got "
                             f"{w.shape[-2:]}")
        GT = self._gt
        flat = w.reshape(-1, r, r)
        n = flat.shape[0]
        products = max(1, -(-n // FILTERS_A_PRODUCT))
        per = -(-n // products)  # filters a product, the last padded with zero filters
        if per * products != n:
            flat = np.concatenate([flat, np.zeros((per * products - n, r, r))])
        # rows (filter, j) of T^T = w^T G^T, then rows (filter, p) of U = T G^T
        tt = np.matmul(flat.transpose(0, 2, 1).reshape(products, per * r, r), GT)
        t = tt.reshape(products, per, r, a).transpose(0, 1, 3, 2).reshape(products, per * a, r)
        u = np.matmul(t, GT).reshape(-1, a, a)[:n]
        return u.reshape(w.shape[:-2] + (a, a))

    def rounding_depth(self) -> int:
        """The most float32 roundings on any path from one input to one output through the
        two transforms the kernel computes in float32 (B^T d B and A^T M A): each 1-D pass
        sums at most ``max nonzeros a row`` products (one rounding each, with FMA or not),
        and each transform is two passes."""
        def widest(m: Matrix) -> int:
            return max(sum(v != 0 for v in row) for row in m)
        return 2 * widest(self.BT) + 2 * widest(self.AT)


def _fractions(*values: int) -> tuple[Fraction, ...]:
    return tuple(Fraction(v) for v in values)


#: F(2x2, 3x3): 16 multiplications per 4 outputs (2.25x fewer than direct).
F2 = WinogradTransform(2, 3, _fractions(0, 1, -1))
#: F(4x4, 3x3): 36 multiplications per 16 outputs (4x fewer than direct).
F4 = WinogradTransform(4, 3, _fractions(0, 1, -1, 2, -2))


def applies(g: ConvGeometry) -> bool:
    """The convolutions the kernel computes: 3 x 3, stride 1, no dilation, ungrouped, at least
    8 input channels (the kernel's vectors are 8-channel blocks; a 3-channel stem reads one
    block of 3, and has few channels to save multiplications on anyway)."""
    return (g.R, g.S, g.sh, g.sw, g.dh, g.dw, g.groups) == (3, 3, 1, 1, 1, 1, 1) and g.C >= 8


def tiles(g: ConvGeometry, t: WinogradTransform) -> tuple[int, int]:
    """Output tiles per image: rows and columns of ``m x m`` tiles covering P x Q."""
    return ceil_div(g.P, t.m), ceil_div(g.Q, t.m)


def scratch_floats(g: ConvGeometry, t: WinogradTransform) -> int:
    """Floats of one thread's scratch: ``V``, ``M``, then the transforms' ``T``."""
    return t.alpha ** 2 * (TILES * (g.Cgb * LANES + TILE_K) + LANES)


#: Runtime integer arguments of the kernel (after the arrays ``x``, ``w``, ``bias``, ``y``,
#: the epilogue operands ``e<k>`` and the scratch ``work``): input blocks of the storage
#: read, input blocks computed, 16-channel output tiles, output size, tile columns and tiles
#: per image, the rows and columns of the padded input that exist (``VH`` x ``VW``: tiles past
#: them read zeros), then the input's and output's storage (``conv_direct.IO_INTS``), ZH, and
#: the threads the tasks are balanced for (``TH``: :func:`task_count`).
WINOGRAD_INTS = ("NB", "C8", "KT", "P", "Q", "TQ", "NT", "VH", "VW") + IO_INTS + ("ZH", "TH")

#: From this many tile groups per thread on, a layer runs a task per group: the unevenness
#: of whole groups between the threads (at most one in this many) is small, and many tasks
#: keep the threads' shares even on fewer threads than ``TH`` too (:func:`task_count`).
GROUPS_PER_THREAD = 8


def task_count(groups: Expr, TH: Expr) -> Expr:
    """The kernel's tasks: one per tile group, or ``TH`` equal shares of all the groups'
    (group, 16-channel output tile) pairs where the groups are few (under
    :data:`GROUPS_PER_THREAD` a thread) and do not share out evenly between ``TH`` threads.
    A parallel loop gives each thread one contiguous range of its tasks: 9 groups of a 14 x 14
    F(2x2) or 28 x 28 F(4x4) layer at batch 1 ran as 5 against 4 on 2 threads, and two
    shares of 4.5 groups are even. A group cut between two shares has its input tiles
    transformed by both (at most ``TH - 1`` groups transformed twice); the sums of every
    output are the same, in the same order, whatever the shares."""
    few = cmp("and", cmp("!=", groups % TH, 0), cmp("<", groups, GROUPS_PER_THREAD * TH))
    return Select(few, TH, groups)


def _apply(matrix: Matrix, values: list[Expr]) -> list[Expr]:
    """``matrix @ values`` on vectors: each output a chain of FMAs over the row's nonzeros
    (coefficients +-1 as plain adds; every coefficient here is an integer, exact in float32)."""
    out = []
    for row in matrix:
        acc: Expr | None = None
        for coef, v in zip(row, values):
            if coef == 0:
                continue
            c = float(coef)
            if acc is None:
                acc = v if c == 1 else VBin("mul", VSplat(Const(c)), v)
            elif c == 1:
                acc = VBin("add", acc, v)
            else:
                acc = VFma(VSplat(Const(c)), v, acc)
        out.append(acc if acc is not None else VZero())
    return out


def winograd_conv_kernel(g: ConvGeometry, t: WinogradTransform, name: str = "conv_winograd",
                         comment: str = "", epilogue=(), kinds=(),
                         residual: bool = False) -> Kernel:
    """The fused Winograd convolution of ``g`` (3x3, stride 1: :func:`applies`) with the
    transform ``t``, over channel-blocked input and output storage (NCHW8c, NCHW16c read and
    written as 8-channel halves, NHWC), or the packed scratch buffers of the direct kernel.

    Weights ``w``: ``U`` ``[alpha^2, KT, C8, 8, 16]`` (:func:`pack_filters`); bias padded to
    ``16 KT``. Literal: the transform (``m``) and the storage kinds; runtime:
    :data:`WINOGRAD_INTS`, ``relu`` and ``n_batch``; one compiled kernel per transform and
    layout serves every 3x3 stride-1 layer. ``residual``: a runtime residual instead of a fused
    epilogue, as in ``conv_direct.direct_conv_kernel``.
    """
    if residual:
        if epilogue:
            raise ValueError("a kernel with a runtime residual takes no other epilogue")
        kinds = ("full",)
    if not applies(g):
        raise ValueError(f"Winograd computes 3x3 stride-1 ungrouped convolutions of at least "
                         f"8 channels, not {g.describe()}")
    m, a = t.m, t.alpha
    a2 = a * a
    NB, C8, KT, P, Q, TQ, NT, VH, VW, Hp, Wp, XT, XL, YB, YH, YW, YT, YL, ZH, TH = (
        Var(v) for v in WINOGRAD_INTS)
    x = StorageIndex(NB, Hp, Wp, XT, XL, g.lanes_in, g.nhwc_in)
    yl = g.lanes_out
    y = StorageIndex(YB, YH, YW, YT, YL, yl, g.nhwc_out)
    n, i, cb, kt = Var("n"), Var("i"), Var("cb"), Var("kt")
    vsize = C8 * (TILES * LANES)  # floats of V per transform point

    # Each 2-D transform is two 1-D passes through a small per-thread scratch ``T``: the
    # columns (a runtime loop over them), then the rows. Unrolled over the whole tile, the
    # F(4x4) kernel took Numba over ten times as long to compile as the direct one.
    tbase = Var("tbase")
    # tile i of the task: its image and where it starts in the output (and padded input)
    tile_origin = [Let("n", (Var("g0") + i) // NT), Let("lt", (Var("g0") + i) % NT),
                   Let("y0", Var("lt") // TQ * m), Let("x0", Var("lt") % TQ * m)]
    # -- input transform: tile i, channel block cb -> V[xi, cb, i, :] --------------------
    def x_at(u: int, v: Expr) -> Expr:
        """Offset of padded-input pixel (y0 + u, x0 + v) of 8-channel block cb."""
        if g.lanes_in == 16:
            return x.at(n, cb // 2, Var("y0") + u, Var("x0") + v) + cb % 2 * 8
        return x.at(n, cb, Var("y0") + u, Var("x0") + v)

    # Each value a transform reads is loaded once into a local (``d<u>``, ``t<c>``, ``m<u>``)
    # and its address computed once: the transforms read each several times, and repeating
    # the load in every expression gave Numba several times the code to type and lower (LLVM
    # merged the copies again; the machine code is the same).
    v, r = Var("v"), Var("r")
    column = [Let("vok", cmp("<", Var("x0") + v, VW)), Let("xcol", x_at(0, v))]
    column += [Let(f"d{u}", Select(cmp("and", Var(f"rok{u}"), Var("vok")),
                                   VLoad("x", Var("xcol") + u * Var("xline")), VZero()))
               for u in range(a)]
    column += [VStore("work", tbase + (u * a + v) * LANES, e)
               for u, e in enumerate(_apply(t.BT, [Var(f"d{u}") for u in range(a)]))]
    row = [Let(f"t{c}", VLoad("work", tbase + (r * a + c) * LANES)) for c in range(a)]
    row.append(Let("vrow", Var("vbase") + cb * (TILES * LANES) + i * LANES + r * (a * vsize)))
    row += [VStore("work", Var("vrow") + c * vsize, e)
            for c, e in enumerate(_apply(t.BT, [Var(f"t{c}") for c in range(a)]))]
    transform_in = [Loop("i", Var("nt"), [
        *tile_origin,
        Comment("rows of the tile inside the padded input (the others read as zeros)"),
        *(Let(f"rok{u}", cmp("<", Var("y0") + u, VH)) for u in range(a)),
        Loop("cb", C8, [Loop("v", Const(a), column), Loop("r", Const(a), row)])])]

    # -- the alpha^2 GEMMs of one 16-channel output tile kt: M[xi, i, 16] ---------------------
    l, xi = Var("l"), Var("xi")
    lane: list = [Let(f"w{h}", VLoad("w", Var("ws") + l * TILE_K + h * LANES))
                  for h in range(2)]
    for j in range(TILES):
        lane.append(Let("xb", VBroadcast("work", Var("vs") + j * LANES + l)))
        for h in range(2):
            acc = f"acc_{j}_{h}"
            lane.append(Let(acc, VFma(Var("xb"), Var(f"w{h}"), Var(acc))))
    gemm = Loop("xi", Const(a2), [
        *(Let(f"acc_{j}_{h}", VZero()) for j in range(TILES) for h in range(2)),
        Loop("cb", C8, [
            Let("vs", Var("vbase") + xi * vsize + cb * (TILES * LANES)),
            Let("ws", ((xi * KT + kt) * C8 + cb) * (LANES * TILE_K)),
            Loop("l", Const(LANES), lane)]),
        *(VStore("work", Var("mbase") + (xi * TILES + j) * TILE_K + h * LANES,
                 Var(f"acc_{j}_{h}")) for j in range(TILES) for h in range(2))])

    # -- output transform of tile i, half h of the 16 channels, with the epilogue -------------
    ops, op_ints = residual_params() if residual else epilogue_params(epilogue)
    h = Var("h")
    # the output block of half h of the 16 channels and the lane it starts at
    ob = kt * 2 + h if yl == LANES else kt
    lane0 = Const(0) if yl == LANES else h * LANES
    out_column = [Let("mcol", Var("mbase") + (v * TILES + i) * TILE_K + h * LANES)]
    out_column += [Let(f"m{u}", VLoad("work", Var("mcol") + u * (a * TILES * TILE_K)))
                   for u in range(a)]
    out_column += [VStore("work", tbase + (j * a + v) * LANES, e)
                   for j, e in enumerate(_apply(t.AT, [Var(f"m{u}") for u in range(a)]))]
    out_row_in = [Let(f"t{c}", VLoad("work", tbase + (r * a + c) * LANES)) for c in range(a)]
    p = Var("y0") + r

    def pixel_store(c: int, value: Expr) -> list:
        q = Var("x0") + c
        if residual:
            return residual_store("y", y.at(n, ob, p, q) + lane0,
                                  floored(VBin("add", value, Var("bv"))),
                                  operand_row(0, n, ob, p, "full", yl, g.nhwc_out) +
                                  operand_step(0, "full", q, 0, yl, 0, g.nhwc_out) + lane0)
        return store_epilogue(
            "y", y.at(n, ob, p, q) + lane0, floored(VBin("add", value, Var("bv"))), epilogue,
            lambda k: operand_row(k, n, ob, p, kinds[k], yl, g.nhwc_out) +
            operand_step(k, kinds[k], q, 0, yl, 0, g.nhwc_out) + lane0)

    out_row = out_row_in + [
        If(cmp("and", cmp("<", p, P), cmp("<", Var("x0") + c, Q)), pixel_store(c, e))
        for c, e in enumerate(_apply(t.AT, [Var(f"t{c}") for c in range(a)]))]
    transform_out = Loop("i", Var("nt"), [
        *tile_origin,
        Loop("h", Const(2), [
            Let("bv", VLoad("bias", kt * TILE_K + h * LANES)),
            Loop("v", Const(a), out_column),
            Loop("r", Const(m), out_row)])])

    # task: the (group, output-channel tile) pairs u0 .. u1 - 1 of all groups x KT, in order;
    # each group it touches: the input transform, then its output-channel tiles in the range
    per_group = [
        Let("g0", Var("grp") * TILES),
        Let("nt", Select(cmp("<", Var("alltiles") - Var("g0"), TILES),
                         Var("alltiles") - Var("g0"), Const(TILES))),
        Let("kt0", Select(cmp(">", Var("u0"), Var("grp") * KT), Var("u0") - Var("grp") * KT,
                          Const(0))),
        Let("kt1", Select(cmp("<", Var("u1"), (Var("grp") + 1) * KT),
                          Var("u1") - Var("grp") * KT, KT)),
        Comment(f"input transform B^T d B of the group's tiles ({a}x{a} inputs each)"),
        *transform_in,
        Comment(f"per 16 output channels: the {a2} GEMMs over the input channels, then the "
                f"output transform A^T M A ({m}x{m} outputs each)"),
        Loop("kt", Var("kt1") - Var("kt0"), [gemm, transform_out], start=Var("kt0")),
    ]
    work = [
        Let("u0", Var("task") * Var("units") // Var("ntasks")),
        Let("u1", (Var("task") + 1) * Var("units") // Var("ntasks")),
        Let("vbase", call("thread_id") * Var("WS")),
        Let("mbase", Var("vbase") + a2 * vsize),
        Let("tbase", Var("mbase") + a2 * (TILES * TILE_K)),
        Loop("grp", Select(cmp(">", Var("u1"), Var("u0")),
                           (Var("u1") + KT - 1) // KT - Var("u0") // KT, Const(0)),
             per_group, start=Var("u0") // KT),
    ]
    # with ZH, each task also zeroes the halo of its share of the output rows (R = n_batch *
    # YB * P rows of blocks of images: task t's are t R / tasks .. (t + 1) R / tasks - 1).
    # Not tasks of their own after the tile groups: a parallel loop's iterations go to the
    # threads as contiguous ranges, and one thread got every tile (ResNet-18's Winograd
    # layers ran no faster on 2 threads than on 1). Halo and interior are disjoint: no race
    # with the tiles' stores.
    share = [Let("zlo", Var("task") * Var("hrows") // Var("ntasks")),
             Let("zhi", (Var("task") + 1) * Var("hrows") // Var("ntasks"))]
    row = unflatten(Var("zlo") + Var("zh"), [("zn", Var("n_batch")), ("zb", YB), ("zp", P)])
    halo = Loop("zh", ZH * (Var("zhi") - Var("zlo")),
                row + zero_row_halo(Var("zn"), Var("zb"), Var("zp"), P, Q, yl, g.nhwc_out))
    body = work + share + [halo]
    pre = [floor_let(), *([residual_let()] if residual else []),
           Let("alltiles", Var("n_batch") * NT),
           Let("groups", (Var("n_batch") * NT + (TILES - 1)) // TILES),
           Let("ntasks", task_count(Var("groups"), TH)),
           Let("units", Var("groups") * KT),
           Let("hrows", Var("n_batch") * (YB * P)),
           Let("WS", a2 * (vsize + TILES * TILE_K + LANES)),
           Let("xline", const(x.line))]
    pre += [Let(f"eplane{k}", operand_plane(k, kinds[k], yl, g.nhwc_out))
            for k in range(len(ops))]
    params = [Param("x"), Param("w"), Param("bias"), Param("y")] + ops + [Param("work")] + \
        int_params(*WINOGRAD_INTS) + op_ints + int_params("relu", "n_batch")
    params += int_params("residual") if residual else []
    # the extent spelt out: the task count function evaluates the Lets it names
    tasks = Loop("task", task_count(Var("groups"), TH), body, kind="parallel")
    return Kernel(name, params, pre + [tasks], comment)


def pack_filters(t: WinogradTransform, g: ConvGeometry, w: np.ndarray,
                 out: np.ndarray | None = None) -> np.ndarray:
    """``U = G w G^T`` (float64, rounded once to float32) in the kernel's order ``[alpha^2,
    KT, C8, 8, 16]``: transform point, 16-channel output tile, input block, input lane,
    output lane; zero for the padded channels. Transformed one output tile at a time, so each
    tile's float64 values are reordered while they are still in cache. ``out``: a flat
    contiguous float32 array of that size to write every value into (returned), else a new
    one."""
    a2 = t.alpha ** 2
    KT = ceil_div(g.K, TILE_K)
    Cp = g.Cgb * LANES
    w = np.asarray(w)
    shape = (a2, KT, g.Cgb, LANES, TILE_K)
    if out is None:
        out = np.empty(int(np.prod(shape)), np.float32)
    packed = out.reshape(shape)  # a view: ``out`` is flat and contiguous
    for kt in range(KT):
        k0, k1 = kt * TILE_K, min(g.K, (kt + 1) * TILE_K)
        u = t.filter_transform(w[k0:k1]).reshape(k1 - k0, g.C, a2)  # float64
        if (k1 - k0, g.C) != (TILE_K, Cp):
            padded = np.zeros((TILE_K, Cp, a2))
            padded[:k1 - k0, :g.C] = u
            u = padded
        packed[:, kt] = u.reshape(TILE_K, g.Cgb, LANES, a2).transpose(3, 1, 2, 0)
    return out
