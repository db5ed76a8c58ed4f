"""Kernel IR builders for the backward graph's own ops (``compiler/ops``' ``backward`` ops):
sums over the batch (bias and dense weight gradients; the convolution's weight gradient is a
GEMM, ``gemm.gemm_batch_sum_kernel``), the global pools' gradients, softmax cross-entropy and
its gradient, and the softmax Jacobian product.

A sum over the batch writes an unbatched value (``TensorType.batched``): its parallel loop runs
over the value's own elements and reads every image; sums accumulate in float64. Everything
else runs one parallel iteration per image (or image and channel) like the forward kernels.
The window ops' gradients are in ``pool.py`` beside the forward windows they invert.
"""

from __future__ import annotations

from collections.abc import Sequence

from .common import N_BATCH, Sizes, arrays, fmax, rows_kernel, unflatten
from .kernel_ir import (
    F64,
    Const,
    Expr,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Param,
    Select,
    Stmt,
    Store,
    Var,
    call,
    cmp,
    const,
    div,
)


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _whole_batch(name: str, params: list[Param], extent: Expr | int, body: list[Stmt],
                 comment: str, sz: Sizes) -> Kernel:
    """``for t in prange(extent)``: one iteration per element of an unbatched result."""
    return Kernel(name, params + sz.params() + [Param("n_batch", "int")],
                  [Loop("t", const(extent), body, kind="parallel")], comment)


def channel_sum_kernel(name: str, shape: Sequence[int], comment: str = "",
                       sz: Sizes | None = None) -> Kernel:
    """``y[c] = sum over n and the rest of x[n, c, ...]`` (bias gradients)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, L = sz("C", shape[0]), sz("L", _prod(shape[1:]))
    body: list[Stmt] = [Let("acc", call("f64", Const(0))), Loop("n", N_BATCH, [
        Let("xb", (Var("n") * C + Var("t")) * L),
        Loop("j", const(L), [Let("acc", Var("acc") + Load("x0", Var("xb") + Var("j")))])]),
        Store("y", Var("t"), Var("acc"))]
    return _whole_batch(name, arrays("x0", "y"), C, body, comment, sz)


def dense_weight_grad_kernel(name: str, n_in: int, n_out: int, comment: str = "",
                             sz: Sizes | None = None) -> Kernel:
    """``y[o, i] = sum over n of dy[n, o] * x[n, i]`` (``x0`` = x, ``x1`` = dy): one parallel
    iteration per output feature o, its row of the weight gradient."""
    sz = sz if sz is not None else Sizes(literal=True)
    In, Out = sz("I", n_in), sz("O", n_out)
    row: list[Stmt] = [Loop("i", const(In), [Store("y", Var("t") * In + Var("i"), Const(0.0))]),
                       Loop("n", N_BATCH, [
                           Let("g", Load("x1", Var("n") * Out + Var("t"))),
                           Loop("i", const(In), [Store("y", Var("t") * In + Var("i"), Load(
                               "y", Var("t") * In + Var("i")) + Var("g") * Load(
                               "x0", Var("n") * In + Var("i")))])])]
    return _whole_batch(name, arrays("x0", "x1", "y"), Out, row, comment, sz)


def global_pool_grad_kernel(name: str, op: str, shape: Sequence[int], comment: str = "",
                            sz: Sizes | None = None) -> Kernel:
    """The input gradient of global average (``dy / HW`` everywhere) or max pooling (all of
    ``dy`` at the plane's first maximum), per (image, channel) plane; ``x0`` = x, ``x1`` = dy."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, hw = sz("C", shape[0]), sz("L", _prod(shape[1:]))
    x = Load("x0", Var("xb") + Var("j"))
    body: list[Stmt] = [Let("xb", Var("t") * hw), Let("g", Load("x1", Var("t")))]
    if op == "globalavgpool":
        body += [Let("share", div(Var("g"), call("f32", hw))),
                 Loop("j", const(hw), [Store("y", Var("xb") + Var("j"), Var("share"))])]
    else:
        body += [Let("acc", Load("x0", Var("xb"))), Let("best", Const(0)),
                 Loop("j", const(hw), [If(cmp(">", x, Var("acc")), [
                     Let("acc", x), Let("best", Var("j"))])]),
                 Loop("j", const(hw), [Store("y", Var("xb") + Var("j"), Select(
                     cmp("==", Var("j"), Var("best")), Var("g"), Const(0.0)))])]
    return rows_kernel(name, arrays("x0", "x1", "y"), C, body, comment, sz)


def _log_sum_exp(base: Expr, stride: Expr | int, classes: Expr | int) -> list[Stmt]:
    """``m`` the maximum and ``lse`` = m + log sum exp(z - m) of the scores ``x0[base + l
    stride]``, in float64."""
    z = Load("x0", base + Var("l") * stride)
    return [Let("m", Load("x0", base)),
            Loop("l", const(classes), [Let("m", fmax(Var("m"), z))]),
            Let("s", call("f64", Const(0))),
            Loop("l", const(classes), [Let("s", Var("s") + call("exp", call("f64", z) -
                                                                 Var("m")))]),
            Let("lse", Var("m") + call("log", Var("s")))]


def cross_entropy_kernel(name: str, shape: Sequence[int], smoothing: float,
                         comment: str = "", sz: Sizes | None = None) -> Kernel:
    """The batch mean of -sum_k q_k log softmax(z)_k over every image and pixel of scores
    ``x0`` ``[N, K, pixels]`` and float class labels ``x1`` ``[N, pixels]``; q the one-hot
    target mixed with the uniform one (``smoothing``). One serial loop: a scalar result."""
    sz = sz if sz is not None else Sizes(literal=True)
    K, L = sz("K", shape[0]), sz("L", _prod(shape[1:]))
    base = Var("n") * (K * L) + Var("j")
    z = Load("x0", base + Var("l") * L)
    pixel = _log_sum_exp(base, L, K) + [
        Let("label", call("int", Load("x1", Var("n") * L + Var("j")))),
        Let("picked", call("f64", Load("x0", base + Var("label") * L))),
        Let("total", Var("total") + F64(1.0 - smoothing) * (Var("lse") - Var("picked")))]
    if smoothing:
        pixel += [Let("zs", call("f64", Const(0))),
                  Loop("l", const(K), [Let("zs", Var("zs") + call("f64", z))]),
                  Let("total", Var("total") + F64(smoothing) * (
                      Var("lse") - div(Var("zs"), call("f64", K))))]
    body: list[Stmt] = [Let("total", call("f64", Const(0))), Loop("n", N_BATCH, [
        Loop("j", const(L), pixel)]),
        Store("y", Const(0), div(Var("total"), call("f64", N_BATCH * L)))]
    return Kernel(name, arrays("x0", "x1", "y") + sz.params() + [Param("n_batch", "int")],
                  body, comment)


def cross_entropy_grad_kernel(name: str, shape: Sequence[int], smoothing: float,
                              comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``(softmax(z) - q) / (N pixels)`` per image and pixel (``cross_entropy_kernel``'s
    inputs)."""
    sz = sz if sz is not None else Sizes(literal=True)
    K, L = sz("K", shape[0]), sz("L", _prod(shape[1:]))
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("j", L)])
    base = Var("n") * (K * L) + Var("j")
    idx = base + Var("l") * L
    body += _log_sum_exp(base, L, K)
    body += [Let("label", call("int", Load("x1", Var("n") * L + Var("j")))),
             Let("scale", div(F64(1.0), call("f64", N_BATCH * L))),
             Loop("l", const(K), [Store("y", idx, (
                 call("exp", call("f64", Load("x0", idx)) - Var("lse")) -
                 Select(cmp("==", Var("l"), Var("label")), F64(1.0 - smoothing), F64(0.0)) -
                 div(F64(smoothing), call("f64", K))) * Var("scale"))])]
    return rows_kernel(name, arrays("x0", "x1", "y"), L, body, comment, sz)


def softmax_grad_kernel(name: str, shape: Sequence[int], axis: int, log: bool,
                        comment: str = "", sz: Sizes | None = None) -> Kernel:
    """softmax: ``y (dy - sum(dy y))``; log-softmax: ``dy - exp(y) sum(dy)`` along ``axis``
    (``x0`` = the forward output y, ``x1`` = dy; float64 sums)."""
    sz = sz if sz is not None else Sizes(literal=True)
    outer, L, inner = (sz("O", _prod(shape[:axis])), sz("L", shape[axis]),
                       sz("I", _prod(shape[axis + 1:])))
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("o", outer), ("i", inner)])
    body.append(Let("base", ((Var("n") * outer + Var("o")) * L) * inner + Var("i")))
    idx = Var("base") + Var("l") * inner
    y, dy = Load("x0", idx), Load("x1", idx)
    term = dy if log else dy * y
    body += [Let("s", call("f64", Const(0))),
             Loop("l", const(L), [Let("s", Var("s") + call("f64", term))])]
    value = dy - call("exp", y) * Var("s") if log else y * (dy - Var("s"))
    body.append(Loop("l", const(L), [Store("y", idx, value)]))
    return rows_kernel(name, arrays("x0", "x1", "y"), outer * inner, body, comment, sz)
