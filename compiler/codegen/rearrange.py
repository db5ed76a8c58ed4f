"""Kernel IR builders for the rearranging ops: depth_to_space, space_to_depth, channel_shuffle.

Each output element is a copy of one input element; the builders only compute where from. Sizes
(channels, heights, widths) are runtime integers (``Sizes``), so one compiled kernel serves every
layer with the same block size (or every channel shuffle); the block size and the depth-to-space
mode are literal, since they decide the index arithmetic. Formulas as in
``compiler/ops/rearrange.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .elementwise import N_BATCH, Sizes, _rows_kernel, _unflatten
from .kernel_ir import Expr, Kernel, Let, Load, Loop, Param, Stmt, Store, Var, const


def channel_shuffle_kernel(name: str, shape: Sequence[int], groups: int, comment: str = "",
                           sz: Sizes | None = None) -> Kernel:
    """``y[n, o] = x[n, (o % g) * (C / g) + o // g]``, one H x W plane copied per (image,
    output channel)."""
    sz = sz if sz is not None else Sizes(literal=True)
    c, h, w = (int(d) for d in shape)
    C, G, K, L = sz("C", c), sz("G", groups), sz("K", c // groups), sz("L", h * w)
    body: list[Stmt] = _unflatten(Var("t"), [("n", N_BATCH), ("o", C)])
    body += [Let("src", (Var("o") % G) * K + Var("o") // G),
             Let("xb", (Var("n") * C + Var("src")) * L), Let("yb", Var("t") * L),
             Loop("j", const(L), [Store("y", Var("yb") + Var("j"),
                                        Load("x0", Var("xb") + Var("j")))])]
    return _rows_kernel(name, [Param("x0"), Param("y")], C, body, comment, sz)


def depth_to_space_kernel(name: str, shape: Sequence[int], block: int, mode: str,
                          comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``y[n, c, h*b + i, w*b + j] = x[n, src(c, i, j), h, w]`` with ``src`` = ``(i*b + j) *
    C/b^2 + c`` (DCR) or ``c*b^2 + i*b + j`` (CRD); one output row per parallel iteration."""
    sz = sz if sz is not None else Sizes(literal=True)
    b = int(block)
    c, h, w = (int(d) for d in shape)
    CO, H, W = sz("CO", c // (b * b)), sz("H", h), sz("W", w)
    CI = sz("C", c)
    body: list[Stmt] = _unflatten(Var("t"), [("n", N_BATCH), ("c", CO), ("oh", H * b)])
    body += [Let("h", Var("oh") // b), Let("i", Var("oh") % b), Let("yb", Var("t") * (W * b))]
    j = Var("j")
    src: Expr = ((Var("i") * b + j) * CO + Var("c")) if mode == "DCR" else \
        (Var("c") * (b * b) + Var("i") * b + j)
    row = [Let("xb", ((Var("n") * CI + src) * H + Var("h")) * W),
           Loop("w", const(W), [Store("y", Var("yb") + Var("w") * b + j,
                                      Load("x0", Var("xb") + Var("w")))])]
    body.append(Loop("j", const(b), row))
    return _rows_kernel(name, [Param("x0"), Param("y")], CO * (H * b), body, comment, sz)


def space_to_depth_kernel(name: str, shape: Sequence[int], block: int, mode: str,
                          comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``y[n, oc, h, w] = x[n, c, h*b + i, w*b + j]`` with ``oc`` = ``(i*b + j)*C + c`` (DCR)
    or ``c*b^2 + i*b + j`` (CRD); one output row per parallel iteration."""
    sz = sz if sz is not None else Sizes(literal=True)
    b = int(block)
    c, h, w = (int(d) for d in shape)
    C, OH, OW = sz("C", c), sz("OH", h // b), sz("OW", w // b)
    body: list[Stmt] = _unflatten(Var("t"), [("n", N_BATCH), ("oc", C * (b * b)), ("oh", OH)])
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
    return _rows_kernel(name, [Param("x0"), Param("y")], C * (b * b) * OH, body, comment, sz)
