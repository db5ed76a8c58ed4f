"""Kernel IR builders for the rearranging ops: depth_to_space, space_to_depth, channel_shuffle,
and the channel gather that passes compose them into.

Each output element is a copy of one input element; the builders only compute where from. Sizes
(channels, heights, widths) are runtime integers (``Sizes``), so one compiled kernel serves every
layer with the same block size (or every channel shuffle); the block size and the depth-to-space
mode are literal, since they decide the index arithmetic. Formulas as in
``compiler/ops/rearrange.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .common import N_BATCH, Sizes, rows_kernel, unflatten
from .kernel_ir import (
    Const,
    Expr,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Stmt,
    Store,
    Var,
    VLoad,
    VStore,
    call,
    cmp,
    const,
)
from .tiles import BLOCKED_INTS, StorageIndex, zero_row_halo

#: Input counts of the generated channel-gather kernels: a gather of fewer inputs repeats its
#: last one, so a network needs few variants (each a compile on a cold cache).
GATHER_ARITIES = (1, 2, 4, 8, 16)


def gather_arity(n_inputs: int) -> int:
    """The kernel variant that takes ``n_inputs`` inputs."""
    for arity in GATHER_ARITIES:
        if n_inputs <= arity:
            return arity
    raise ValueError(f"a channel gather takes at most {GATHER_ARITIES[-1]} inputs, "
                     f"not {n_inputs}")


def channel_gather_kernel(name: str, n_inputs: int, blocked: bool, comment: str = "",
                          lanes: int = 8, nhwc: bool = False) -> Kernel:
    """``y[n, o] = x_i[n, c]`` with ``(i, c)`` = ``c_table[2 o], c_table[2 o + 1]`` (small
    integers, exact in float32): any channel of any input to any output channel.

    Plain NCHW (``blocked=False``): one H x W plane copied per (image, output channel);
    ``X<k>C`` is input ``k``'s channel count. Channel-blocked (NCHW8c, or NCHW16c with
    ``lanes`` 16): per (image, output block, row), each lane copies its source channel's row
    (a stride-``lanes`` scalar copy: the
    channel may sit in any lane of any block of its input), and the padding lanes of the
    last block get zeros; ``X<k>*`` and ``Y*`` are the storages' geometry (blocks, stored
    height and width, halo); with ``ZH`` each task also zeroes its row's halo
    (``zero_row_halo``). Sizes are runtime integers: one kernel per arity and layout."""
    n, o, p, q = Var("n"), Var("o"), Var("p"), Var("q")
    C, P, Q = Var("C"), Var("P"), Var("Q")
    src, ch = Var("src"), Var("ch")
    lookup = [Let("src", call("int", Load("c_table", o * 2))),
              Let("ch", call("int", Load("c_table", o * 2 + 1)))]
    ints = ["C", "P", "Q"]
    if not blocked:
        L = P * Q
        body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("o", C)]) + lookup
        body.append(Let("yb", Var("t") * L))
        for k in range(n_inputs):
            body.append(If(cmp("==", src, k), [
                Let("xb", (n * Var(f"X{k}C") + ch) * L),
                Loop("j", L, [Store("y", Var("yb") + Var("j"), Load(f"x{k}", Var("xb") +
                                                                       Var("j")))])]))
            ints.append(f"X{k}C")
        tasks = N_BATCH * C
    else:
        y = StorageIndex.named("Y", lanes, nhwc)
        ob, lane = Var("ob"), Var("l")
        body = unflatten(Var("t"), y.tasks(("n", N_BATCH), ("ob", (C + (lanes - 1)) // lanes),
                                            ("p", P)))
        body.append(Let("yrow", y.row(n, ob, p)))
        copies: list[Stmt] = []
        for k in range(n_inputs):
            x = StorageIndex.named(f"X{k}", lanes, nhwc)
            copies.append(If(cmp("==", src, k), [
                Let("xrow", x.row(n, ch // lanes, p) + ch % lanes),
                Loop("q", Q, [Store("y", Var("yrow") + q * y.pixel + lane,
                                    Load(f"x{k}", Var("xrow") + q * x.pixel))])]))
            ints += [f"X{k}{s}" for s in BLOCKED_INTS]
        ints += ["Y" + s for s in BLOCKED_INTS]
        body.append(Loop("l", Const(lanes), [
            Let("o", ob * lanes + lane),
            If(cmp("<", o, C), lookup + copies,
               [Loop("q", Q, [Store("y", Var("yrow") + q * y.pixel + lane, Const(0.0))])])]))
        body.append(If(cmp(">", Var("ZH"), 0), zero_row_halo(n, ob, p, P, Q, lanes, nhwc)))
        ints.append("ZH")
        tasks = N_BATCH * ((C + (lanes - 1)) // lanes) * P
    params = [Param(f"x{k}") for k in range(n_inputs)] + [Param("c_table"), Param("y")] + \
        [Param(i, "int") for i in ints] + [Param("n_batch", "int")]
    return Kernel(name, params, [Loop("t", tasks, body, kind="parallel")], comment)


def channel_shuffle_kernel(name: str, shape: Sequence[int], groups: int, comment: str = "",
                           sz: Sizes | None = None) -> Kernel:
    """``y[n, o] = x[n, (o % g) * (C / g) + o // g]``, one H x W plane copied per (image,
    output channel)."""
    sz = sz if sz is not None else Sizes(literal=True)
    c, h, w = (int(d) for d in shape)
    C, G, K, L = sz("C", c), sz("G", groups), sz("K", c // groups), sz("L", h * w)
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("o", C)])
    body += [Let("src", (Var("o") % G) * K + Var("o") // G),
             Let("xb", (Var("n") * C + Var("src")) * L), Let("yb", Var("t") * L),
             Loop("j", const(L), [Store("y", Var("yb") + Var("j"),
                                        Load("x0", Var("xb") + Var("j")))])]
    return rows_kernel(name, [Param("x0"), Param("y")], C, body, comment, sz)


def depth_to_space_kernel(name: str, shape: Sequence[int], block: int, mode: str,
                          comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``y[n, c, h*b + i, w*b + j] = x[n, src(c, i, j), h, w]`` with ``src`` = ``(i*b + j) *
    C/b^2 + c`` (DCR) or ``c*b^2 + i*b + j`` (CRD); one output row per parallel iteration."""
    sz = sz if sz is not None else Sizes(literal=True)
    b = int(block)
    c, h, w = (int(d) for d in shape)
    CO, H, W = sz("CO", c // (b * b)), sz("H", h), sz("W", w)
    CI = sz("C", c)
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("c", CO), ("oh", H * b)])
    body += [Let("h", Var("oh") // b), Let("i", Var("oh") % b), Let("yb", Var("t") * (W * b))]
    j = Var("j")
    src: Expr = ((Var("i") * b + j) * CO + Var("c")) if mode == "DCR" else \
        (Var("c") * (b * b) + Var("i") * b + j)
    row = [Let("xb", ((Var("n") * CI + src) * H + Var("h")) * W),
           Loop("w", const(W), [Store("y", Var("yb") + Var("w") * b + j,
                                      Load("x0", Var("xb") + Var("w")))])]
    body.append(Loop("j", const(b), row))
    return rows_kernel(name, [Param("x0"), Param("y")], CO * (H * b), body, comment, sz)


def space_to_depth_kernel(name: str, shape: Sequence[int], block: int, mode: str,
                          comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``y[n, oc, h, w] = x[n, c, h*b + i, w*b + j]`` with ``oc`` = ``(i*b + j)*C + c`` (DCR)
    or ``c*b^2 + i*b + j`` (CRD); one output row per parallel iteration."""
    sz = sz if sz is not None else Sizes(literal=True)
    b = int(block)
    c, h, w = (int(d) for d in shape)
    C, OH, OW = sz("C", c), sz("OH", h // b), sz("OW", w // b)
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("oc", C * (b * b)), ("oh", OH)])
    if mode == "DCR":
        body += [Let("q", Var("oc") // C), Let("c", Var("oc") % C)]
    else:
        body += [Let("q", Var("oc") % (b * b)), Let("c", Var("oc") // (b * b))]
    body += [Let("i", Var("q") // b), Let("j", Var("q") % b),
             Let("xb", ((Var("n") * C + Var("c")) * (OH * b) + Var("oh") * b + Var("i"))
                 * (OW * b) + Var("j")),
             Let("yb", Var("t") * OW),
             Loop("w", const(OW), [Store("y", Var("yb") + Var("w"),
                                         Load("x0", Var("xb") + Var("w") * b))])]
    return rows_kernel(name, [Param("x0"), Param("y")], C * (b * b) * OH, body, comment, sz)


def depth_to_space_blocked_kernel(name: str, block: int, comment: str = "", lanes: int = 8,
                                  nhwc: bool = False) -> Kernel:
    """Mode DCR on channel-blocked storage (``lanes`` channels a block, NCHWc or NHWC): output
    block ``ob`` of pixel ``(h*b + i, w*b + j)`` is input block ``(i*b + j) * CO8 + ob`` of
    pixel ``(h, w)`` (``CO8`` output blocks: the output channels a multiple of ``lanes``), one
    vector a copy; one output row per parallel iteration. ``X*`` and ``Y*`` are the storages'
    geometry (blocks, stored height and width, halo top and left); the block is literal, sizes
    are runtime integers."""
    b = int(block)
    CO8, H, W = Var("CO8"), Var("H"), Var("W")
    x, y = StorageIndex.named("X", lanes, nhwc), StorageIndex.named("Y", lanes, nhwc)
    n, ob, oh, j, w = Var("n"), Var("ob"), Var("oh"), Var("j"), Var("w")
    body: list[Stmt] = unflatten(Var("t"), y.tasks(("n", N_BATCH), ("ob", CO8), ("oh", H * b))) + [
        Let("yrow", y.row(n, ob, oh)),
        Loop("j", const(b), [
            Let("xrow", x.row(n, ((oh % b) * b + j) * CO8 + ob, oh // b)),
            Loop("w", W, [VStore("y", Var("yrow") + (w * b + j) * y.pixel,
                                 VLoad("x0", Var("xrow") + w * x.pixel, lanes))])]),
    ]
    return _blocked_rows_kernel(name, ["CO8", "H", "W"], N_BATCH * CO8 * (H * b), body, comment)


def space_to_depth_blocked_kernel(name: str, block: int, comment: str = "", lanes: int = 8,
                                  nhwc: bool = False) -> Kernel:
    """Mode DCR on channel-blocked storage, the inverse of ``depth_to_space_blocked_kernel``:
    output block ``(i*b + j) * C8 + cb`` of pixel ``(h, w)`` is input block ``cb`` of pixel
    ``(h*b + i, w*b + j)`` (the input channels a multiple of ``lanes``); one output row per
    parallel iteration, sizes of the output (``OH x OW``) runtime integers."""
    b = int(block)
    C8, OH, OW = Var("C8"), Var("OH"), Var("OW")
    x, y = StorageIndex.named("X", lanes, nhwc), StorageIndex.named("Y", lanes, nhwc)
    n, yb, oh, w = Var("n"), Var("yb"), Var("oh"), Var("w")
    q, cb = yb // C8, yb % C8
    body: list[Stmt] = unflatten(Var("t"), y.tasks(("n", N_BATCH), ("yb", C8 * (b * b)),
                                                    ("oh", OH)))
    body += [
        Let("yrow", y.row(n, yb, oh)),
        Let("xrow", x.row(n, cb, oh * b + q // b) + (q % b) * x.pixel),
        Loop("w", OW, [VStore("y", Var("yrow") + w * y.pixel,
                              VLoad("x0", Var("xrow") + w * (b * x.pixel), lanes))]),
    ]
    return _blocked_rows_kernel(name, ["C8", "OH", "OW"], N_BATCH * (C8 * (b * b)) * OH, body,
                                comment)


def _blocked_rows_kernel(name: str, sizes: list[str], tasks: Expr, body: list[Stmt],
                         comment: str) -> Kernel:
    """A kernel over ``tasks`` parallel rows of channel-blocked storage ``x0 -> y``."""
    ints = sizes + ["X" + s for s in BLOCKED_INTS] + ["Y" + s for s in BLOCKED_INTS]
    return Kernel(name, [Param("x0"), Param("y")] + [Param(i, "int") for i in ints]
                  + [Param("n_batch", "int")], [Loop("t", tasks, body, kind="parallel")],
                  comment)
