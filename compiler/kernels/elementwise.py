"""Kernel IR builders for everything that is not a convolution or a window op.

Every builder returns a :class:`Kernel` over flat float32 arrays. The per-sample sizes are
literals or, for a builder given a :class:`~.common.Sizes`, runtime integers (then one compiled
kernel serves every shape); the batch size is the runtime integer ``n_batch``, so one kernel
serves every batch size. Each kernel has one flattened ``prange`` over (image, row) and a serial
inner loop over a contiguous row, which is what LLVM vectorizes. Array parameters are named
``x0, x1, ...`` (tensor inputs), ``y`` (output) and ``c_*`` (constants prepared once per weight
set, e.g. folded batch-norm scale and shift).
"""

from __future__ import annotations

from collections.abc import Sequence

from .common import (
    N_BATCH,
    FusedOp,
    Sizes,
    apply_epilogue,
    arrays,
    as_f64,
    fmax,
    prod,
    rows_kernel,
    unflatten,
)
from .kernel_ir import (
    F64,
    BinOp,
    Const,
    Expr,
    ExprLike,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Select,
    Stmt,
    Store,
    VAlign,
    Var,
    VBin,
    VFma,
    VLoad,
    VSplat,
    VStore,
    VUnary,
    VZero,
    call,
    cmp,
    const,
    div,
)
from .tiles import (
    BLOCKED_INTS,
    StorageIndex,
    operand_ints,
    operand_plane,
    operand_row,
    operand_step,
    store_epilogue,
)


def _split_rows(size: int, target: int = 4096) -> tuple[int, int]:
    """(rows, row length) for a flat per-sample array of ``size`` elements: rows give the
    parallel loop enough iterations, rows of a few thousand keep the inner loop long."""
    if size <= target:
        return 1, size
    for length in range(target, 0, -1):
        if size % length == 0 and length >= 256:
            return size // length, length
    return 1, size


# -- elementwise ------------------------------------------------------------------------------

def broadcast_plan(out_shape: Sequence[int], in_shapes: Sequence[Sequence[int]]):
    """Collapse the per-sample output shape into as few dims as broadcasting allows.

    Returns ``(dims, strides)``: ``dims`` the collapsed output extents, ``strides[j]`` the
    per-dim element strides of input ``j`` (0 where it broadcasts), plus each input's
    per-sample size as the batch stride.
    """
    rank = len(out_shape)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in in_shapes]
    full = []
    for s in padded:
        st, acc = [0] * rank, 1
        for d in range(rank - 1, -1, -1):
            st[d] = 0 if (s[d] == 1 and out_shape[d] != 1) else acc
            acc *= s[d]
        full.append(st)
    dims: list[int] = []
    strides: list[list[int]] = [[] for _ in in_shapes]
    for d in range(rank):
        if out_shape[d] == 1:
            continue
        if dims and all(strides[j][-1] == full[j][d] * out_shape[d] for j in range(len(full))):
            dims[-1] *= out_shape[d]
            for j in range(len(full)):
                strides[j][-1] = full[j][d]
            continue
        dims.append(out_shape[d])
        for j in range(len(full)):
            strides[j].append(full[j][d])
    if not dims:
        dims, strides = [1], [[1] for _ in in_shapes]
    return dims, strides


def elementwise_kernel(name: str, op: str, out_shape: Sequence[int],
                       in_shapes: Sequence[Sequence[int]], epilogue: Sequence[FusedOp],
                       comment: str = "", sz: Sizes | None = None, n_own: int = 0) -> Kernel:
    """``y = epilogue(x0 op x1 op ... op x<n_own - 1>)`` with NumPy broadcasting over the
    per-sample shapes; inputs from ``n_own`` on are the epilogue's operands.

    ``op`` is ``add``, ``sub``, ``mul`` or ``copy`` (a single own input, the epilogue being
    the activations). The collapsed output's last dim is the serial inner loop. Extents and
    strides are runtime sizes (``sz``) except strides 0 and 1, which decide broadcasting and
    vectorization.
    """
    n_own = n_own or len(in_shapes)
    sz = sz if sz is not None else Sizes(literal=True)
    dims, strides = broadcast_plan(out_shape, in_shapes)
    sizes = [prod(s) for s in in_shapes]
    total = prod(out_shape)
    if len(dims) == 1 and all(st == [1] for st in strides):
        # Same shapes everywhere: split the flat sample into rows for the parallel loop.
        rows, inner = _split_rows(total)
        dims, strides = [rows, inner], [[inner, 1] for _ in in_shapes]
    dimv = [sz(f"D{i}", d) for i, d in enumerate(dims[:-1])]
    rows: ExprLike = 1
    for d in dimv:
        rows = rows * d
    inner = sz("L", dims[-1])
    names = [f"d{i}" for i in range(len(dims) - 1)]
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH)] + list(zip(names, dimv)))
    j = Var("j")
    for k, (st, size) in enumerate(zip(strides, sizes)):
        base: ExprLike = Var("n") * sz(f"N{k}", size)
        for i, (nm, s) in enumerate(zip(names, st[:-1])):
            base = base + Var(nm) * (s if s in (0, 1) else sz(f"S{k}_{i}", s))
        body.append(Let(f"b{k}", base))
    body.append(Let("yb", Var("t") * inner))
    loads = [Load(f"x{k}", Var(f"b{k}") + j * st[-1]) for k, st in enumerate(strides)]
    value = loads[0]
    for ld in loads[1:n_own]:
        value = {"add": value + ld, "sub": value - ld, "mul": value * ld}[op]
    inner_body = apply_epilogue(value, epilogue, dict(enumerate(loads))) + \
        [Store("y", Var("yb") + j, Var("v"))]
    body.append(Loop("j", const(inner), inner_body))
    params = arrays(*[f"x{k}" for k in range(len(in_shapes))], "y")
    return rows_kernel(name, params, rows, body, comment, sz)


def channel_affine_kernel(name: str, shape: Sequence[int], epilogue: Sequence[FusedOp],
                          comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``y[n, c, ...] = epilogue(x[n, c, ...] * c_scale[c] + c_shift[c])`` (inference batch
    norm with precomputed scale and shift; activations only in the epilogue)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, inner = sz("C", shape[0]), sz("L", prod(shape[1:]))
    body: list[Stmt] = [Let("c", Var("t") % C), Let("base", Var("t") * inner),
                        Let("sc", Load("c_scale", Var("c"))), Let("sh", Load("c_shift", Var("c")))]
    j = Var("j")
    inner_body = apply_epilogue(Load("x0", Var("base") + j) * Var("sc") + Var("sh"), epilogue) + \
        [Store("y", Var("base") + j, Var("v"))]
    body.append(Loop("j", const(inner), inner_body))
    return rows_kernel(name, arrays("x0", "c_scale", "c_shift", "y"), C, body, comment, sz)


def channel_prelu_kernel(name: str, shape: Sequence[int], epilogue: Sequence[FusedOp],
                         comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``y[n, c, ...] = epilogue(x if x >= 0 else x * c_slope[c])`` (PReLU; a feature vector
    is C channels of one element; activations only in the epilogue)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, inner = sz("C", shape[0]), sz("L", prod(shape[1:]))
    body: list[Stmt] = [Let("c", Var("t") % C), Let("base", Var("t") * inner),
                        Let("sl", Load("c_slope", Var("c")))]
    j = Var("j")
    inner_body = [Let("xv", Load("x0", Var("base") + j))]
    inner_body += apply_epilogue(Select(cmp(">=", Var("xv"), Const(0.0)), Var("xv"),
                                        Var("xv") * Var("sl")), epilogue)
    inner_body.append(Store("y", Var("base") + j, Var("v")))
    body.append(Loop("j", const(inner), inner_body))
    return rows_kernel(name, arrays("x0", "c_slope", "y"), C, body, comment, sz)


def softmax_kernel(name: str, shape: Sequence[int], axis: int, log: bool,
                   comment: str = "", sz: Sizes | None = None) -> Kernel:
    """Softmax (or log-softmax) over per-sample ``axis``: per (outer, inner) position, the max,
    the sum of exponentials (float64), then the outputs."""
    sz = sz if sz is not None else Sizes(literal=True)
    outer, L, inner = (sz("O", prod(shape[:axis])), sz("L", shape[axis]),
                       sz("I", prod(shape[axis + 1:])))
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("o", outer), ("i", inner)])
    body.append(Let("base", ((Var("n") * outer + Var("o")) * L) * inner + Var("i")))
    idx = Var("base") + Var("l") * inner
    body.append(Let("m", Load("x0", Var("base"))))
    body.append(Loop("l", const(L - 1), [Let("m", fmax(Var("m"), Load("x0", idx)))],
                     start=Const(1)))
    body.append(Let("s", call("f64", Const(0))))
    body.append(Loop("l", const(L), [Let("s", Var("s") + call("exp", call(
        "f64", Load("x0", idx) - Var("m"))))]))
    if log:
        body.append(Let("ls", call("log", Var("s"))))
        value: Expr = Load("x0", idx) - Var("m") - Var("ls")
    else:
        body.append(Let("inv", div(F64(1.0), Var("s"))))
        value = call("exp", call("f64", Load("x0", idx) - Var("m"))) * Var("inv")
    body.append(Loop("l", const(L), [Store("y", idx, value)]))
    return rows_kernel(name, arrays("x0", "y"), outer * inner, body, comment, sz)


def groupnorm_kernel(name: str, shape: Sequence[int], groups: int, eps: float,
                     comment: str = "", epilogue: Sequence[FusedOp] = (),
                     sz: Sizes | None = None) -> Kernel:
    """Group norm: per (image, group) mean and variance (two passes, float64), then
    ``epilogue((x - mean) / sqrt(var + eps) * c_weight[c] + c_bias[c])`` (activations only;
    instance norm is the case groups = C). The sizes (``_group_sizes``) are runtime integers
    recorded in ``sz`` (literals without one); ``eps`` stays in the code."""
    sz = sz if sz is not None else Sizes(literal=True)
    G, cg, hw = _group_sizes(shape, groups, sz)
    size = cg * hw
    body: list[Stmt] = [Let("base", Var("t") * size), Let("g", Var("t") % G)]
    body += [*_group_stats("x0", size, eps),
             Loop("cl", const(cg), [
                 Let("c", Var("g") * cg + Var("cl")),
                 Let("a", Load("c_weight", Var("c")) * Var("rstd")),
                 Let("b", Load("c_bias", Var("c")) - Var("mean") * Var("a")),
                 Loop("j", const(hw), [
                     Let("o", Var("base") + Var("cl") * hw + Var("j")), *_store_through(
                         "y", Var("o"), Load("x0", Var("o")) * Var("a") + Var("b"), epilogue)]),
             ])]
    return rows_kernel(name, arrays("x0", "c_weight", "c_bias", "y"), G, body, comment, sz)


def _group_sizes(shape: Sequence[int], groups: int, sz: Sizes) -> tuple[ExprLike, ...]:
    """The groups ``G``, channels per group ``CG`` and pixels per channel ``HW`` of a
    C x ... sample, through ``sz``."""
    C, hw = int(shape[0]), prod(shape[1:])
    return sz("G", groups), sz("CG", C // groups), sz("HW", hw)


def _group_stats(x: str, size: ExprLike, eps: float) -> list[Stmt]:
    """``mean`` and ``rstd`` = 1 / sqrt(var + eps) of the ``size`` values of ``x`` from
    ``base`` on: two float64 passes (the mean, then the squared deviations)."""
    value = Load(x, Var("base") + Var("e"))
    return [Let("s", call("f64", Const(0))),
            Loop("e", const(size), [Let("s", Var("s") + value)]),
            Let("mean", div(Var("s"), as_f64(size))),
            Let("s2", call("f64", Const(0))),
            Loop("e", const(size), [Let("dv", value - Var("mean")),
                                    Let("s2", Var("s2") + Var("dv") * Var("dv"))]),
            Let("rstd", div(F64(1.0), call("sqrt", div(Var("s2"), as_f64(size))
                                               + F64(float(eps)))))]


def groupnorm_input_grad_kernel(name: str, shape: Sequence[int], groups: int, eps: float,
                                operands: Sequence[str], comment: str = "",
                                sz: Sizes | None = None) -> Kernel:
    """Group norm's input gradient per (image, group): with the group's statistics
    (``_group_stats``, as the forward kernel), ``dxhat = dy gamma[c]`` and xhat,
    ``dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))``, float64 (``operands``: x,
    gamma, dy). Sizes as the forward kernel's."""
    sz = sz if sz is not None else Sizes(literal=True)
    x, gamma, dy = operands
    G, cg, hw = _group_sizes(shape, groups, sz)
    size = cg * hw
    at = Var("base") + Var("cl") * hw + Var("j")
    xhat = (call("f64", Load(x, at)) - Var("mean")) * Var("rstd")
    dxhat = call("f64", Load(dy, at)) * Var("gam")

    def over_group(stmts: list[Stmt]) -> Stmt:  # each channel's gamma loaded once
        return Loop("cl", const(cg), [
            Let("gam", call("f64", Load(gamma, Var("g") * cg + Var("cl")))),
            Loop("j", const(hw), stmts)])

    body: list[Stmt] = [Let("base", Var("t") * size), Let("g", Var("t") % G),
                        *_group_stats(x, size, eps),
                        Let("m1", call("f64", Const(0))), Let("m2", call("f64", Const(0))),
                        over_group([Let("d", dxhat), Let("m1", Var("m1") + Var("d")),
                                    Let("m2", Var("m2") + Var("d") * xhat)]),
                        Let("m1", div(Var("m1"), as_f64(size))),
                        Let("m2", div(Var("m2"), as_f64(size))),
                        over_group([Store("y", at, Var("rstd") * (
                            dxhat - Var("m1") - xhat * Var("m2")))])]
    return rows_kernel(name, arrays(*dict.fromkeys(operands), "y"), G, body, comment, sz)


def groupnorm_weight_grad_kernel(name: str, shape: Sequence[int], groups: int, eps: float,
                                 comment: str = "", sz: Sizes | None = None) -> Kernel:
    """Group norm's scale gradient: ``sum dy xhat`` over the batch and the pixels, one
    parallel iteration per channel (its group's statistics per image, ``_group_stats``);
    ``x0`` = x, ``x1`` = dy, float64. Sizes as the forward kernel's."""
    sz = sz if sz is not None else Sizes(literal=True)
    G, cg, hw = _group_sizes(shape, groups, sz)
    size = cg * hw
    at = Var("base") + (Var("t") % cg) * hw + Var("j")
    body: list[Stmt] = [Let("acc", call("f64", Const(0))), Loop("n", N_BATCH, [
        Let("base", (Var("n") * G + Var("t") // cg) * size), *_group_stats("x0", size, eps),
        Loop("j", const(hw), [Let("acc", Var("acc") + call("f64", Load("x1", at)) * (
            call("f64", Load("x0", at)) - Var("mean")) * Var("rstd"))])]),
        Store("y", Var("t"), Var("acc"))]
    return Kernel(name, arrays("x0", "x1", "y") + sz.params() + [Param("n_batch", "int")],
                  [Loop("t", G * cg, body, kind="parallel")], comment)


def _store_through(array: str, index: Expr, value: Expr,
                   epilogue: Sequence[FusedOp]) -> list[Stmt]:
    """``array[index] = value``, through the fused epilogue when there is one (without one,
    the code is what it was before kernels took epilogues)."""
    if not epilogue:
        return [Store(array, index, value)]
    return apply_epilogue(value, epilogue) + [Store(array, index, Var("v"))]


def lrn_kernel(name: str, shape: Sequence[int], size: int, alpha: float, beta: float,
               k: float, comment: str = "", sz: Sizes | None = None) -> Kernel:
    """Local response normalization across channels (ONNX window placement). The channels
    ``C`` and pixels ``HW`` are runtime integers recorded in ``sz`` (literals without one); the
    window and the float attributes stay in the code."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, hw = sz("C", int(shape[0])), sz("HW", prod(shape[1:]))
    body: list[Stmt] = [Let("n", Var("t") // C), Let("c", Var("t") % C),
                        *_lrn_window(Var("c"), C, size),
                        Let("base", Var("n") * (C * hw))]
    j = Var("j")

    def x_at(c: Expr) -> Expr:
        return Load("x0", Var("base") + c * hw + j)

    inner = _lrn_store(Var("base") + Var("c") * hw + j, x_at, Var("c"), size, alpha, beta, k)
    body.append(Loop("j", const(hw), inner))
    return rows_kernel(name, arrays("x0", "y"), C, body, comment, sz)


#: The exponents ``beta`` the vector LRN kernel raises to with square roots (the divisor
#: ``t ** beta``): AlexNet's and GoogLeNet's 0.75 is ``sqrt(t) * sqrt(sqrt(t))``.
LRN_ROOT_EXPONENTS = (0.5, 0.75, 1.0)


def lrn_blocked_kernel(name: str, size: int, alpha: float, beta: float,
                       k: float, comment: str = "", lanes: int = 8,
                       nhwc: bool = False) -> Kernel:
    """Local response normalization over channel-blocked storage (geometry ``X*`` in, ``Y*``
    out), per (image, block, row).

    Where ``beta`` is one of :data:`LRN_ROOT_EXPONENTS` and ``k > 0``, a block (``lanes``
    channels: 8 or 16) a vector:
    the squares of the block and of the neighbouring blocks the window reaches (zeros past
    the tensor's blocks; padding lanes are stored zeros), the window sum as ``size`` shifted
    vectors (``valign`` across a block boundary), ``norm = k + alpha / size * sum`` in one fused
    multiply-add and ``x / norm ** beta`` with square roots, all in float32; padding lanes get
    ``0 / norm = 0``. Otherwise each lane's window is summed and raised with ``pow`` per lane in
    float64 (as the NCHW kernel), padding lanes stored as zeros. The sizes are runtime
    integers (the channels ``C`` too where lanes are looked at one by one)."""

    L = lanes
    n, cb, p, q, j = Var("n"), Var("cb"), Var("p"), Var("q"), Var("j")
    x, y = StorageIndex.named("X", L, nhwc), StorageIndex.named("Y", L, nhwc)
    C8, P, Q = Var("C8"), Var("P"), Var("Q")

    def block_at(b: ExprLike) -> Expr:  # index of pixel (p, q) of block b
        return x.at(n, b, p, q)

    if beta in LRN_ROOT_EXPONENTS and k > 0:
        before, after = (size - 1) // 2, size // 2
        pieces = [(d // L, d % L) for d in range(-before, after + 1)]
        blocks = sorted({b for b, m in pieces} | {b + 1 for b, m in pieces if m})

        def sq(b: int) -> Var:
            return Var(f"sq{b}" if b >= 0 else f"sq_m{-b}")

        pixel: list[Stmt] = [Let("xc", VLoad("x0", block_at(cb), L))]
        for b in blocks:
            if b == 0:
                pixel.append(Let(sq(0).name, VBin("mul", Var("xc"), Var("xc"))))
                continue
            inside = cmp("and", cmp(">=", cb + b, 0), cmp("<", cb + b, C8))
            v = Select(inside, VLoad("x0", block_at(cb + b), L), VZero(L))
            pixel += [Let("v", v), Let(sq(b).name, VBin("mul", Var("v"), Var("v")))]
        window: Expr | None = None
        for b, m in pieces:
            piece: Expr = sq(b) if m == 0 else VAlign(sq(b), sq(b + 1), m)
            window = piece if window is None else VBin("add", window, piece)
        assert window is not None
        pixel.append(Let("norm", VFma(VSplat(Const(alpha / size), L), window,
                                      VSplat(Const(k), L))))
        if beta == 1.0:
            den: Expr = Var("norm")
        elif beta == 0.5:
            den = VUnary("sqrt", Var("norm"))
        else:
            pixel.append(Let("r", VUnary("sqrt", Var("norm"))))
            den = VBin("mul", Var("r"), VUnary("sqrt", Var("r")))
        pixel.append(VStore("y", Var("yrow") + q * y.pixel, VBin("div", Var("xc"), den)))
        row: Stmt = Loop("q", Q, pixel)
        channels: list[str] = []
    else:
        def x_at(c: Expr) -> Expr:  # channel c of pixel (p, q)
            return Load("x0", block_at(c // L) + c % L)

        c, C = Var("c"), Var("C")
        lane = [Let("c", cb * L + j), Let("o", Var("yrow") + q * y.pixel + j),
                If(cmp("<", c, C), [*_lrn_window(c, C, size),
                                    *_lrn_store(Var("o"), x_at, c, size, alpha, beta, k)],
                   [Store("y", Var("o"), Const(0.0))])]
        row = Loop("q", Q, [Loop("j", Const(L), lane)])
        channels = ["C"]
    body: list[Stmt] = unflatten(Var("t"), y.tasks(("n", N_BATCH), ("cb", C8), ("p", P))) + [
        Let("yrow", y.row(n, cb, p)), row]
    ints = ["C8", "P", "Q"] + ["X" + s for s in BLOCKED_INTS] + \
        ["Y" + s for s in BLOCKED_INTS] + channels
    params = [Param("x0"), Param("y")] + [Param(i, "int") for i in ints] + \
        [Param("n_batch", "int")]
    return Kernel(name, params, [Loop("t", N_BATCH * (C8 * P), body, kind="parallel")],
                  comment)


def _lrn_window(c: Expr, C: ExprLike, size: int, lo: str = "lo", hi: str = "hi") -> list[Stmt]:
    """``lo .. hi``: the channels in the window of channel ``c`` (ONNX: ``(size - 1) // 2``
    before, ``size // 2`` after, clipped to the tensor)."""
    before, after = (size - 1) // 2, size // 2
    return [Let(lo, fmax_i(c - before, 0)), Let(hi, fmin_i(c + (after + 1), C))]


def _lrn_store(index: Expr, x_at, c: Expr, size: int, alpha: float, beta: float,
               k: float) -> list[Stmt]:
    """``y[index] = x_c / (k + alpha / size * sum of x^2 over lo .. hi) ** beta``, where
    ``x_at(channel)`` loads the pixel's value of a channel."""
    sums, divisor = _lrn_divisor(x_at, size, alpha, k)
    return sums + [Store("y", index, div(x_at(c), call("pow", divisor, F64(float(beta)))))]


def _lrn_divisor(x_at, size: int, alpha: float, k: float, lo: str = "lo", hi: str = "hi",
                 s: str = "s", cc: str = "cc") -> tuple[list[Stmt], Expr]:
    """Statements summing the squares of channels ``lo .. hi`` into ``s`` (float32), and the
    divisor ``k + alpha / size * s`` (float64)."""
    return ([Let(s, Const(0.0)),
             Loop(cc, Var(hi) - Var(lo), [Let(s, Var(s) + x_at(Var(cc)) * x_at(Var(cc)))],
                  start=Var(lo))],
            F64(float(k)) + F64(alpha / size) * Var(s))


def lrn_grad_kernel(name: str, shape: Sequence[int], size: int, alpha: float, beta: float,
                    k: float, comment: str = "", sz: Sizes | None = None) -> Kernel:
    """LRN's input gradient per (image, channel j): ``dy_j D_j^-beta - 2 beta alpha / size x_j
    sum_c dy_c x_c D_c^(-beta - 1)`` over the channels c whose window holds j (``size // 2``
    before j to ``(size - 1) // 2`` after: the window mirrored), each divisor D as the forward
    kernel sums it (``_lrn_window``, ``_lrn_divisor``); ``x0`` = x, ``x1`` = dy. Sizes as the
    forward kernel's."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, hw = sz("C", int(shape[0])), sz("HW", prod(shape[1:]))
    j = Var("j")

    def x_at(c: Expr) -> Expr:
        return Load("x0", Var("base") + c * hw + j)

    def dy_at(c: Expr) -> Expr:
        return call("f64", Load("x1", Var("base") + c * hw + j))

    own_sums, own = _lrn_divisor(x_at, size, alpha, k)
    # the window of channel m (lo2 .. hi2) for every m whose window holds c
    reach = _lrn_window(Var("m"), C, size, "lo2", "hi2")
    sums, divisor = _lrn_divisor(x_at, size, alpha, k, "lo2", "hi2", "s2", "cc2")
    through = [*reach, *sums, Let("acc", Var("acc") + dy_at(Var("m")) * call(
        "f64", x_at(Var("m"))) * call("pow", divisor, F64(-float(beta) - 1.0)))]
    inner = [*own_sums, Let("acc", call("f64", Const(0))),
             Loop("m", Var("mhi") - Var("mlo"), through, start=Var("mlo")),
             Store("y", Var("base") + Var("c") * hw + j, dy_at(Var("c")) * call(
                 "pow", own, F64(-float(beta))) - F64(2.0 * beta * alpha / size) * call(
                 "f64", x_at(Var("c"))) * Var("acc"))]
    body: list[Stmt] = [Let("n", Var("t") // C), Let("c", Var("t") % C),
                        *_lrn_window(Var("c"), C, size),
                        Let("mlo", fmax_i(Var("c") - size // 2, 0)),
                        Let("mhi", fmin_i(Var("c") + ((size - 1) // 2 + 1), C)),
                        Let("base", Var("n") * (C * hw)), Loop("j", const(hw), inner)]
    return rows_kernel(name, arrays("x0", "x1", "y"), C, body, comment, sz)


def fmax_i(a: ExprLike, b: ExprLike) -> Expr:
    return BinOp("max", const(a), const(b))


def fmin_i(a: ExprLike, b: ExprLike) -> Expr:
    return BinOp("min", const(a), const(b))


def concat_kernel(name: str, shapes: Sequence[Sequence[int]], axis: int,
                  comment: str = "", sz: Sizes | None = None, gpu: bool = False) -> Kernel:
    """Concatenation along per-sample ``axis``: per (image, outer index), one contiguous copy
    per input into its slice of the output row. With ``gpu`` one loop over the output row,
    each value taken from the input whose slice holds it (a GPU runs a thread per value:
    ``gpu_schedule``)."""
    sz = sz if sz is not None else Sizes(literal=True)
    outer = sz("O", prod(shapes[0][:axis]))
    inners = [sz(f"L{k}", prod(s[axis:])) for k, s in enumerate(shapes)]
    total: ExprLike = 0
    for inner in inners:
        total = total + inner
    body: list[Stmt] = [Let("ob", Var("t") * total)]
    if gpu:
        j = Var("j")
        starts: list[ExprLike] = [0]
        for inner in inners[:-1]:
            starts.append(starts[-1] + inner)
        value: Expr = Load(f"x{len(inners) - 1}", Var("t") * inners[-1] + j - starts[-1])
        for k in range(len(inners) - 2, -1, -1):
            value = Select(cmp("<", j, starts[k + 1]),
                           Load(f"x{k}", Var("t") * inners[k] + j - starts[k]), value)
        body.append(Loop("j", const(total), [Store("y", Var("ob") + j, value)]))
        return rows_kernel(name, arrays(*[f"x{k}" for k in range(len(shapes))], "y"), outer,
                           body, comment, sz)
    off: ExprLike = 0
    for k, inner in enumerate(inners):
        body.append(Let(f"ib{k}", Var("t") * inner))
        body.append(Loop("j", const(inner), [
            Store("y", Var("ob") + (off + Var("j")), Load(f"x{k}", Var(f"ib{k}") + Var("j")))]))
        off = off + inner
    return rows_kernel(name, arrays(*[f"x{k}" for k in range(len(shapes))], "y"), outer,
                        body, comment, sz)


def concat_blocked_kernel(name: str, n_inputs: int, comment: str = "",
                          lanes: int = 8, nhwc: bool = False) -> Kernel:
    """Channel concatenation over channel-blocked storage: per (image, row), input ``k``'s
    ``K<k>`` blocks of ``lanes`` channels (geometry ``X<k>*``) are copied, a vector per pixel,
    to the output blocks from ``O<k>`` on (geometry ``Y*``). Every input starts at a block
    boundary; the sizes are runtime integers, so one kernel serves every concatenation of
    ``n_inputs``."""

    n, p, q, cb = Var("n"), Var("p"), Var("q"), Var("cb")
    P, Q = Var("P"), Var("Q")
    y = StorageIndex.named("Y", lanes, nhwc)
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("p", P)])
    ints = ["P", "Q"]
    for k in range(n_inputs):
        x = StorageIndex.named(f"X{k}", lanes, nhwc)
        body.append(Loop("cb", Var(f"K{k}"), [
            Let("xrow", x.row(n, cb, p)),
            Let("yrow", y.row(n, Var(f"O{k}") + cb, p)),
            Loop("q", Q, [VStore("y", Var("yrow") + q * y.pixel,
                                 VLoad(f"x{k}", Var("xrow") + q * x.pixel, lanes))]),
        ]))
        ints += [f"K{k}", f"O{k}"] + [f"X{k}{s}" for s in BLOCKED_INTS]
    ints += ["Y" + s for s in BLOCKED_INTS]
    params = [Param(f"x{k}") for k in range(n_inputs)] + [Param("y")] + \
        [Param(i, "int") for i in ints] + [Param("n_batch", "int")]
    return Kernel(name, params, [Loop("t", N_BATCH * P, body, kind="parallel")], comment)


def pad_kernel(name: str, shape: Sequence[int], pads: Sequence[int], value: float,
               comment: str = "", mode: str = "constant", sz: Sizes | None = None,
               gpu: bool = False) -> Kernel:
    """Padding of a C x H x W sample: per output row, fill or copy (``constant``), or copy
    from the mirrored (``reflect``) or clamped (``edge``) source row and columns. The sizes
    (``C H W``, the pads ``T L R``, the output ``P Q``) are runtime integers recorded in ``sz``
    (literals without one); the fill value and the mode stay in the code. With ``gpu`` a row
    is one loop over its values, the borders chosen per value (a GPU runs a thread per value:
    ``gpu_schedule``), not a loop per border and one for the middle (which vectorize)."""
    if mode != "constant" and not gpu:
        return _mirror_pad_kernel(name, shape, pads, mode, comment, sz)
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W, t, l, r, OH, OW = _pad_sizes(shape, pads, sz)
    body: list[Stmt] = unflatten(Var("t"), [("nc", N_BATCH * C), ("oh", OH)])
    body += [Let("ih", Var("oh") - t), Let("yb", Var("t") * OW)]
    fill = Const(float(value))
    ok = cmp("and", cmp(">=", Var("ih"), 0), cmp("<", Var("ih"), H))
    if gpu:
        j = Var("j")
        if mode == "constant":
            inside = cmp("and", ok, cmp("and", cmp(">=", j, l), cmp("<", j, l + W)))
            value_at: Expr = Select(inside, Load("x0", (Var("nc") * H + Var("ih")) * W + j - l),
                                    fill)
        else:
            source_row = (Var("nc") * H + _source_index(Var("ih"), H, mode)) * W
            value_at = Load("x0", source_row + _source_index(j - l, W, mode))
        body.append(Loop("j", const(OW), [Store("y", Var("yb") + j, value_at)]))
        return rows_kernel(name, arrays("x0", "y"), C * OH, body, comment, sz)
    copy_row = [Let("xb", (Var("nc") * H + Var("ih")) * W),
                Loop("j", const(l), [Store("y", Var("yb") + Var("j"), fill)]),
                Loop("j", const(W), [Store("y", Var("yb") + l + Var("j"),
                                           Load("x0", Var("xb") + Var("j")))]),
                Loop("j", const(r), [Store("y", Var("yb") + (l + W) + Var("j"), fill)])]
    body.append(If(ok, copy_row, [Loop("j", const(OW), [Store("y", Var("yb") + Var("j"),
                                                              fill)])]))
    return rows_kernel(name, arrays("x0", "y"), C * OH, body, comment, sz)


def _pad_sizes(shape: Sequence[int], pads: Sequence[int], sz: Sizes) -> tuple[ExprLike, ...]:
    """``C H W`` of the unpadded sample, the pads ``T L R`` (the bottom one is implied) and
    the padded ``P Q``, through ``sz``."""
    C, H, W = (int(d) for d in shape)
    t, l, b, r = (int(p) for p in pads)
    return (sz("C", C), sz("H", H), sz("W", W), sz("T", t), sz("L", l), sz("R", r),
            sz("P", H + t + b), sz("Q", W + l + r))


def _source_index(i: Expr, n: ExprLike, mode: str) -> Expr:
    """The input index an output index ``i`` (in input coordinates, -pad .. n - 1 + pad)
    reads: mirrored about the first and last index without repeating them (``reflect``; the
    shape rule keeps the padding below ``n``, so one reflection suffices), or clamped
    (``edge``)."""
    if mode == "edge":
        return fmin_i(fmax_i(i, 0), n - 1)
    mirrored = Select(cmp("<", i, 0), Const(0) - i, i)
    return Select(cmp(">=", mirrored, n), (2 * (n - 1)) - mirrored, mirrored)


def pad_grad_kernel(name: str, shape: Sequence[int], pads: Sequence[int], mode: str,
                    comment: str = "", sz: Sizes | None = None) -> Kernel:
    """The adjoint of ``pad_kernel`` per (image, channel) plane of ``x0`` = dy (``shape``, the
    padded size): the inner window, plus (reflect, edge) every padded value added onto the
    pixel it copies (``_source_index``, as the forward kernel reads it). Sizes as
    ``pad_kernel``'s."""
    sz = sz if sz is not None else Sizes(literal=True)
    t, l, b, r = (int(p) for p in pads)
    unpadded = (int(shape[0]), int(shape[1]) - t - b, int(shape[2]) - l - r)
    C, H, W, t, l, r, OH, OW = _pad_sizes(unpadded, pads, sz)
    body: list[Stmt] = [Let("gb", Var("t") * (OH * OW)), Let("yb", Var("t") * (H * W))]
    if mode == "constant":
        body.append(Loop("i", const(H), [Loop("j", const(W), [Store(
            "y", Var("yb") + Var("i") * W + Var("j"),
            Load("x0", Var("gb") + (Var("i") + t) * OW + Var("j") + l))])]))
        return rows_kernel(name, arrays("x0", "y"), C, body, comment, sz)
    # Per row of dy: its source row, then the left border, the middle (a contiguous run) and
    # the right border added onto the pixels they copy: the additions in the order of the
    # output pixels, with no mirroring in the middle.
    j = Var("j")

    def add(column: Expr, source: Expr) -> Stmt:
        at = Var("yr") + column
        return Store("y", at, Load("y", at) + Load("x0", Var("gr") + source))

    body += [Loop("e", const(H * W), [Store("y", Var("yb") + Var("e"), Const(0.0))]),
             Loop("p", const(OH), [
                 Let("yr", Var("yb") + _source_index(Var("p") - t, H, mode) * W),
                 Let("gr", Var("gb") + Var("p") * OW),
                 Loop("j", const(l), [add(_source_index(j - l, W, mode), j)]),
                 Loop("j", const(W), [add(j, j + l)]),
                 Loop("j", const(r), [add(_source_index(j + W, W, mode), j + (l + W))])])]
    return rows_kernel(name, arrays("x0", "y"), C, body, comment, sz)


def _mirror_pad_kernel(name: str, shape: Sequence[int], pads: Sequence[int], mode: str,
                       comment: str = "", sz: Sizes | None = None) -> Kernel:
    """Reflect or edge padding: per output row, its source row; the left and right borders
    read their mirrored or clamped columns, the middle is a contiguous copy."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W, t, l, r, OH, OW = _pad_sizes(shape, pads, sz)
    j = Var("j")
    body: list[Stmt] = unflatten(Var("t"), [("nc", N_BATCH * C), ("oh", OH)])
    body += [Let("ih", _source_index(Var("oh") - t, H, mode)),
             Let("xb", (Var("nc") * H + Var("ih")) * W), Let("yb", Var("t") * OW),
             Loop("j", const(l), [Store("y", Var("yb") + j, Load(
                 "x0", Var("xb") + _source_index(j - l, W, mode)))]),
             Loop("j", const(W), [Store("y", Var("yb") + l + j, Load("x0", Var("xb") + j))]),
             Loop("j", const(r), [Store("y", Var("yb") + (l + W) + j, Load(
                 "x0", Var("xb") + _source_index(j + W, W, mode)))])]
    return rows_kernel(name, arrays("x0", "y"), C * OH, body, comment, sz)


def channel_slice_kernel(name: str, shape: Sequence[int], start: int, stop: int,
                         comment: str = "", sz: Sizes | None = None) -> Kernel:
    """Channels ``start .. stop-1`` of a C x H x W sample: one contiguous copy per image. The
    sizes are runtime integers (``XS`` floats an input image, the copy's offset ``X0`` in it,
    ``YS`` floats copied) recorded in ``sz``: one compiled kernel for every slice."""
    C, H, W = (int(d) for d in shape)
    hw = H * W
    sz = sz if sz is not None else Sizes(literal=True)
    xs, x0, ys = sz("XS", C * hw), sz("X0", start * hw), sz("YS", (stop - start) * hw)
    body: list[Stmt] = [Let("xb", Var("t") * xs + x0), Let("yb", Var("t") * ys),
                        Loop("j", ys, [Store("y", Var("yb") + Var("j"),
                                             Load("x0", Var("xb") + Var("j")))])]
    return Kernel(name, arrays("x0", "y") + sz.params() + [Param("n_batch", "int")],
                  [Loop("t", N_BATCH, body, kind="parallel")], comment)


def flip_kernel(name: str, shape: Sequence[int], axis: str, comment: str = "",
                sz: Sizes | None = None) -> Kernel:
    """A C x H x W sample mirrored along ``axis``, one parallel iteration per row; the sizes
    ``C H W`` are runtime integers recorded in ``sz`` (literals without one)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W = (sz(n, int(d)) for n, d in zip("CHW", shape))
    body: list[Stmt] = unflatten(Var("t"), [("nc", N_BATCH * C), ("h", H)])
    src_h = (H - 1) - Var("h") if axis in ("vertical", "both") else Var("h")
    body += [Let("xb", (Var("nc") * H + src_h) * W), Let("yb", Var("t") * W)]
    src_w = (W - 1) - Var("j") if axis in ("horizontal", "both") else Var("j")
    body.append(Loop("j", const(W), [Store("y", Var("yb") + Var("j"),
                                           Load("x0", Var("xb") + src_w))]))
    return rows_kernel(name, arrays("x0", "y"), C * H, body, comment, sz)


def distance_kernel(name: str, size: int, p: float, comment: str = "",
                    sz: Sizes | None = None) -> Kernel:
    """Lp distance of two embeddings per image (float64 sum); the embedding's length ``S`` is
    a runtime integer recorded in ``sz`` (a literal without one), ``p`` stays in the code."""
    sz = sz if sz is not None else Sizes(literal=True)
    S = sz("S", int(size))
    j = Var("j")
    d = Load("x0", Var("b") + j) - Load("x1", Var("b") + j)
    term = d * d if p == 2.0 else call("pow", call("abs", call("f64", d)), F64(p))
    root = call("sqrt", Var("s")) if p == 2.0 else call("pow", Var("s"), F64(1.0 / p))
    body: list[Stmt] = [Let("b", Var("t") * S), Let("s", call("f64", Const(0))),
                        Loop("j", const(S), [Let("s", Var("s") + term)]),
                        Store("y", Var("t"), root)]
    return Kernel(name, arrays("x0", "x1", "y") + sz.params() + [Param("n_batch", "int")],
                  [Loop("t", N_BATCH, body, kind="parallel")], comment)


def zero_stuff_kernel(name: str, shape: Sequence[int], stride: tuple[int, int],
                      before: tuple[int, int], out_hw: tuple[int, int],
                      comment: str = "", sz: Sizes | None = None, gpu: bool = False) -> Kernel:
    """Input of a transposed convolution as a plain one: ``stride - 1`` zeros between pixels,
    ``before`` rows/columns of zeros in front (negative: cropped), zeros after, to
    ``out_hw``: per output row, zeros or an input row's pixels each followed by ``stride - 1``
    zeros, every output written once. The sizes (``C H W``, ``before`` as ``BT BL``,
    ``out_hw`` as ``P Q``, the input columns that land in the output ``J0 .. J1 - 1``, the
    output columns ``C0 .. CE - 1`` they span) are runtime integers recorded in ``sz``
    (literals without one); the stride stays in the code (its zeros unrolled). With ``gpu``
    a row is one loop over its values, each an input pixel or a zero (a GPU runs a thread per
    value: ``gpu_schedule``; the sizes then ``C H W BT BL P Q``)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, H, W = (sz(n, int(d)) for n, d in zip("CHW", shape))
    sh, sw = stride
    bt, bl = sz("BT", before[0]), sz("BL", before[1])
    OH, OW = sz("P", out_hw[0]), sz("Q", out_hw[1])
    if gpu:
        sr, sc = Var("sr"), Var("sc")
        pixel = cmp("and", cmp(">=", sr, 0), cmp("and", cmp("<", sr, (H - 1) * sh + 1),
                                                  cmp("==", sr % sh, 0)))
        pixel = cmp("and", pixel, cmp("and", cmp(">=", sc, 0), cmp("and", cmp(
            "<", sc, (W - 1) * sw + 1), cmp("==", sc % sw, 0))))
        body = unflatten(Var("t"), [("nc", N_BATCH * C), ("oh", OH)])
        body += [Let("sr", Var("oh") - bt), Let("yb", Var("t") * OW), Loop("j", const(OW), [
            Let("sc", Var("j") - bl),
            Store("y", Var("yb") + Var("j"), Select(pixel, Load(
                "x0", (Var("nc") * H + sr // sh) * W + sc // sw), Const(0.0)))])]
        return rows_kernel(name, arrays("x0", "y"), C * OH, body, comment, sz)
    # The input columns that land in the output, ``j0 .. j1 - 1`` (bl + j sw in [0, OW)), and
    # the output columns before the first and from past the last of them (all zeros).
    j0 = max(0, -(before[1] // sw))
    j1 = max(j0, min(int(shape[2]), -(-(out_hw[1] - before[1]) // sw)))
    first = min(out_hw[1], before[1] + j0 * sw) if j1 > j0 else out_hw[1]
    end = min(out_hw[1], before[1] + j1 * sw) if j1 > j0 else out_hw[1]
    j0, j1, first, end = sz("J0", j0), sz("J1", j1), sz("C0", first), sz("CE", end)
    body: list[Stmt] = unflatten(Var("t"), [("nc", N_BATCH * C), ("oh", OH)])
    body += [Let("sr", Var("oh") - bt), Let("yb", Var("t") * OW)]
    row_ok = cmp("and", cmp(">=", Var("sr"), 0),
                 cmp("and", cmp("<", Var("sr"), (H - 1) * sh + 1),
                     cmp("==", Var("sr") % sh, 0)))
    zero = Const(0.0)

    def pixel(j: Expr, guarded: bool) -> list[Stmt]:
        """Input column ``j`` and the stride's zeros after it (unrolled; past the row's end
        only after the last pixel, where they are guarded)."""
        col = bl + j * sw
        stmts: list[Stmt] = [Store("y", Var("yb") + col, Load("x0", Var("xb") + j))]
        for k in range(1, sw):
            store = Store("y", Var("yb") + col + k, zero)
            stmts.append(If(cmp("<", col + k, OW), [store]) if guarded else store)
        return stmts

    copy = [Let("xb", (Var("nc") * H + Var("sr") // sh) * W),
            Loop("j", const(first), [Store("y", Var("yb") + Var("j"), zero)]),
            # the guard-free loop over all pixels but the last vectorizes
            Loop("j", const(j1 - j0 - 1), pixel(Var("j"), False), start=const(j0)),
            If(cmp(">", j1, j0), pixel(j1 - 1, True)),
            Loop("j", const(OW - end), [Store("y", Var("yb") + Var("j"), zero)],
                 start=const(end))]
    body.append(If(row_ok, copy, [Loop("j", const(OW), [Store("y", Var("yb") + Var("j"),
                                                              zero)])]))
    return rows_kernel(name, arrays("x0", "y"), C * OH, body, comment, sz)


def dense_kernel(name: str, n_in: int, n_out: int, bias: bool,
                 epilogue: Sequence[FusedOp], comment: str = "",
                 sz: Sizes | None = None) -> Kernel:
    """``y[n, o] = epilogue(sum_i x[n, i] * w[o, i] + b[o])`` (activations only): one parallel
    iteration per output feature (a row of ``w``, read once and kept in cache across the
    batch), 4 x 8-lane accumulators over ``i`` (the last 1-3 vectors into the first of them),
    a scalar tail. ``NI`` and ``NO`` are runtime integers recorded in ``sz``: one compiled
    kernel per epilogue serves every dense layer (a literal-size kernel per layer cost a Numba
    compile each)."""
    sz = sz if sz is not None else Sizes(literal=True)
    ni, no = sz("NI", n_in), sz("NO", n_out)
    o, n, i = Var("o"), Var("n"), Var("i")
    body: list[Stmt] = [Let("wb", o * ni)]
    per_image: list[Stmt] = [Let("xb", n * ni)] + [Let(f"a{k}", VZero()) for k in range(4)]
    per_image.append(Loop("i", Var("nquad"), [
        Let(f"a{k}", VFma(VLoad("x0", Var("xb") + i * 32 + 8 * k),
                          VLoad("c_w", Var("wb") + i * 32 + 8 * k), Var(f"a{k}")))
        for k in range(4)]))
    for k in range(3):  # the vectors after the last whole group of four
        off = Var("nquad") * 32 + 8 * k
        per_image.append(If(cmp(">", Var("vrem"), k), [
            Let(f"a{k}", VFma(VLoad("x0", Var("xb") + off), VLoad("c_w", Var("wb") + off),
                              Var(f"a{k}")))]))
    per_image.append(Let("s", call("vsum", VBin("add", VBin("add", Var("a0"), Var("a1")),
                                                 VBin("add", Var("a2"), Var("a3"))))))
    # the scalar tail from the inputs the vectors covered (one Var object in start and extent,
    # so the loop prints as range(done, NI))
    done = Var("done")
    per_image.append(Loop("i", ni - done, [Let("s", Var("s") + Load(
        "x0", Var("xb") + i) * Load("c_w", Var("wb") + i))], start=done))
    value: Expr = Var("s") + Load("c_b", o) if bias else Var("s")
    per_image += apply_epilogue(value, epilogue) + [Store("y", n * no + o, Var("v"))]
    body.append(Loop("n", N_BATCH, per_image))
    params = arrays("x0", "c_w") + (arrays("c_b") if bias else []) + arrays("y")
    pre: list[Stmt] = [Let("nvec", ni // 8), Let("nquad", Var("nvec") // 4),
                       Let("vrem", Var("nvec") % 4), Let("done", Var("nvec") * 8)]
    return Kernel(name, params + sz.params() + [Param("n_batch", "int")],
                  pre + [Loop("o", no, body, kind="parallel")], comment)


#: Floats of a block's plane up to which a task of a channel-blocked element-wise kernel takes
#: the whole plane, not one row: a task of one short row (7 pixels of 8 lanes: 224 bytes)
#: costs its claim and set-up more than its loads (EfficientNet-B0's gate products on 7 x 7
#: planes ran at 24 GB/s with 8 lanes, 35 with 16). A choice without a division: a task's
#: index splits by runtime divisions already, and two more cost a 56 x 56 plane's rows 40%.
PLANE_TASK_FLOATS = 4096


def elementwise_blocked_kernel(name: str, op: str, n_own: int, kinds: Sequence[str],
                               epilogue: Sequence[FusedOp], comment: str = "",
                               lanes: int = 8, nhwc: bool = False) -> Kernel:
    """``y = epilogue(x0 op x1 op ...)`` over channel-blocked storage, ``lanes`` (8 or 16)
    channels a block and a vector.

    ``x0`` is blocked storage (geometry ``X0*``), the output too (``Y*``); every other input
    ``x<k>`` (the op's own, then the epilogue's operands) is either blocked storage of the
    same tensor shape (``kinds[k-1] == "full"``) or a plain per-channel gate ``[N, C]``
    (``"channel"``). ``op`` is ``add``, ``sub``, ``mul``, ``copy`` (``n_own`` = 1) or
    ``affine``: ``x0 * c_scale[c] + c_shift[c]`` (an inference batch norm; the packed scale and
    shift padded with zeros to whole blocks; ``n_own`` = 1). A task is one row of one block
    of one image, or the block's whole plane where it holds at most
    :data:`PLANE_TASK_FLOATS` floats.
    """

    C8, P, Q = Var("C8"), Var("P"), Var("Q")
    n, cb, p, q = Var("n"), Var("cb"), Var("p"), Var("q")
    x, y = StorageIndex.named("X", lanes, nhwc), StorageIndex.named("Y", lanes, nhwc)
    others = len(kinds)
    whole = cmp("<=", P * Q * lanes, PLANE_TASK_FLOATS)  # a task is the whole plane
    groups = Select(whole, Const(1), P)
    head: list[Stmt] = unflatten(Var("t"), y.tasks(("n", N_BATCH), ("cb", C8), ("pg", groups)))
    body: list[Stmt] = [
        Let("p", Var("pg") + Var("pr")),  # one of them is 0
        Let("xrow", x.row(n, cb, p)),
        Let("yrow", y.row(n, cb, p)),
    ]
    body += [Let(f"erow{k}", operand_row(k, n, cb, p, kinds[k], lanes, nhwc))
             for k in range(others)]

    def load(k: int) -> Expr:  # input x<k+1>
        return VLoad(f"x{k + 1}", Var(f"erow{k}") + operand_step(k, kinds[k], q, lanes=lanes,
                                                                   nhwc=nhwc), lanes)

    value: Expr = VLoad("x0", Var("xrow") + q * x.pixel, lanes)
    if op == "affine":
        value = VFma(value, Var("sc"), Var("sh"))
        body += [Let("sc", VLoad("c_scale", cb * lanes, lanes)),
                 Let("sh", VLoad("c_shift", cb * lanes, lanes))]
    for k in range(n_own - 1):
        other = load(k)
        if op == "sub":
            other = VBin("mul", other, VSplat(Const(-1.0), lanes))
        value = VBin({"add": "add", "sub": "add", "mul": "mul"}[op], value, other)
    # the epilogue's operands (numbered in epilogue order by store_epilogue) are the inputs
    # after the op's own: x<n_own + k>, whose offsets are erow<n_own - 1 + k>

    def operand_index(k: int) -> Expr:
        j = n_own - 1 + k
        return Var(f"erow{j}") + operand_step(j, kinds[j], q, lanes=lanes, nhwc=nhwc)

    body.append(Loop("q", Q, store_epilogue("y", Var("yrow") + q * y.pixel, value, epilogue,
                                            operand_index, lambda k: f"x{n_own + k}", lanes)))
    body = head + [Loop("pr", Select(whole, P, Const(1)), body)]
    ints = ["C8", "P", "Q"] + ["X" + s for s in BLOCKED_INTS] + \
        [n for k in range(others) for n in operand_ints(k)] + ["Y" + s for s in BLOCKED_INTS]
    pre = [Let(f"eplane{k}", operand_plane(k, kinds[k], lanes, nhwc)) for k in range(others)]
    consts = [Param("c_scale"), Param("c_shift")] if op == "affine" else []
    params = [Param(f"x{k}") for k in range(others + 1)] + consts + [Param("y")] + \
        [Param(i, "int") for i in ints] + [Param("n_batch", "int")]
    return Kernel(name, params, pre + [Loop("t", N_BATCH * (C8 * groups), body,
                                            kind="parallel")], comment)
