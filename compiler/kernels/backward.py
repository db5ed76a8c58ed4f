"""Kernel IR builders for the backward graph's own ops (``compiler/ops``' ``backward`` ops):
sums over the batch (bias and dense weight gradients; the convolution's weight gradient is
``weight_grad.py``'s direct kernel or a GEMM, ``gemm.gemm_batch_sum_kernel``), the global
pools' gradients, softmax cross-entropy and
its gradient, and the softmax Jacobian product.

A sum over the batch writes an unbatched value (``TensorType.batched``): its parallel loop runs
over the value's own elements and reads every image; sums accumulate in float64. Everything
else runs one parallel iteration per image (or image and channel) like the forward kernels.
A per-channel sum (bias gradients, batch norm's statistics and gradient sums) is one thread per
channel on the CPU; on a GPU (``blocks``) it is a block of :data:`SUM_THREADS` threads per
channel, each summing every :data:`SUM_THREADS`-th value of the channel (neighbouring threads
reading neighbouring values) in float64, then adding the threads' sums pairwise in shared
memory (:func:`_block_channel_sums`): one thread per channel of a GPU would read a ResNet
layer's 100,000 values a channel one after another.
The window ops' gradients are in ``pool.py`` beside the forward windows they invert; the
gradients that reuse a forward kernel's arithmetic (padding, group norm, LRN) are beside it in
``elementwise.py``. Batch norm's training kernels, the losses' and the dropout mask are here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .common import (
    N_BATCH,
    FusedOp,
    Sizes,
    apply_epilogue,
    arrays,
    fmax,
    prod,
    rows_kernel,
    unflatten,
)
from .gpu_schedule import pairwise_rounds
from .kernel_ir import (
    F64,
    Barrier,
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
    Shared,
    Stmt,
    Store,
    Var,
    call,
    cmp,
    const,
    div,
    shr,
    xor,
)


def _whole_batch(name: str, params: list[Param], extent: Expr | int, body: list[Stmt],
                 comment: str, sz: Sizes, parallel: bool = True) -> Kernel:
    """``for t in prange(extent)``: one iteration per element of an unbatched result (or per
    channel, each reading and writing every image of it). Not ``parallel``: a plain loop, for
    a few operations per element over C values, where starting the worker threads costs more
    than the work (and, on a loaded machine, waits for a descheduled thread)."""
    return Kernel(name, params + sz.params() + [Param("n_batch", "int")],
                  [Loop("t", const(extent), body, kind="parallel" if parallel else "serial")],
                  comment)


def channel_sum_kernel(name: str, shape: Sequence[int], comment: str = "",
                       sz: Sizes | None = None, blocks: bool = False) -> Kernel:
    """``y[c] = sum over n and the rest of x[n, c, ...]`` (bias gradients); ``blocks``: a
    GPU's form (the module docstring)."""
    sz = sz if sz is not None else Sizes(literal=True)
    return _channel_sums_kernel(name, arrays("x0", "y"), shape, sz,
                                [("acc", lambda o: call("f64", Load("x0", o)))], [],
                                [Store("y", Var("t"), Var("acc"))], comment, blocks)


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
    C, hw = sz("C", shape[0]), sz("L", prod(shape[1:]))
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
    K, L = sz("K", shape[0]), sz("L", prod(shape[1:]))
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


def upstream(dy: int | None) -> Expr:
    """The whole-batch scalar gradient reaching a loss, read from ``x<dy>[0]``; 1 at the root of
    the training graph (``dy`` None: the gradient kernel reads no such input)."""
    return F64(1.0) if dy is None else call("f64", Load(f"x{dy}", Const(0)))


def _loss_grad_arrays(count: int, dy: int | None) -> list[Param]:
    """``x0 .. x<count-1>`` (the loss's inputs), ``x<dy>`` when given, and ``y``."""
    names = [f"x{k}" for k in range(count)] + ([f"x{dy}"] if dy is not None else [])
    return arrays(*names, "y")


def cross_entropy_grad_kernel(name: str, shape: Sequence[int], smoothing: float,
                              dy: int | None = None, comment: str = "",
                              sz: Sizes | None = None) -> Kernel:
    """``dy (softmax(z) - q) / (N pixels)`` per image and pixel (``cross_entropy_kernel``'s
    inputs; ``dy`` as :func:`upstream` reads it)."""
    sz = sz if sz is not None else Sizes(literal=True)
    K, L = sz("K", shape[0]), sz("L", prod(shape[1:]))
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("j", L)])
    base = Var("n") * (K * L) + Var("j")
    idx = base + Var("l") * L
    body += _log_sum_exp(base, L, K)
    body += [Let("label", call("int", Load("x1", Var("n") * L + Var("j")))),
             Let("scale", div(upstream(dy), call("f64", N_BATCH * L))),
             Loop("l", const(K), [Store("y", idx, (
                 call("exp", call("f64", Load("x0", idx)) - Var("lse")) -
                 Select(cmp("==", Var("l"), Var("label")), F64(1.0 - smoothing), F64(0.0)) -
                 div(F64(smoothing), call("f64", K))) * Var("scale"))])]
    return rows_kernel(name, _loss_grad_arrays(2, dy), L, body, comment, sz)


def softmax_grad_kernel(name: str, shape: Sequence[int], axis: int, log: bool,
                        comment: str = "", sz: Sizes | None = None) -> Kernel:
    """softmax: ``y (dy - sum(dy y))``; log-softmax: ``dy - exp(y) sum(dy)`` along ``axis``
    (``x0`` = the forward output y, ``x1`` = dy; float64 sums)."""
    sz = sz if sz is not None else Sizes(literal=True)
    outer, L, inner = (sz("O", prod(shape[:axis])), sz("L", shape[axis]),
                       sz("I", prod(shape[axis + 1:])))
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


# -- sums back to a broadcast shape, channel padding, losses -------------------------------------

def reduce_to_kernel(name: str, in_shape: Sequence[int], out_shape: Sequence[int],
                     batched: bool, comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``x0`` (per image ``in_shape``) summed over the axes ``out_shape`` was broadcast along
    (NumPy's right-aligned rule) and, for an unbatched result, over the batch: one parallel
    iteration per output element (per image when ``batched``), float64 sums. The input's
    extents ``D<axis>`` are runtime integers recorded in ``sz`` (literals without one); which
    axes are reduced, and the axes of extent 1, shape the code."""
    sz = sz if sz is not None else Sizes(literal=True)
    xs = [int(d) for d in in_shape]
    os = [1] * (len(xs) - len(out_shape)) + [int(d) for d in out_shape]
    reduced = [d for d in range(len(xs)) if os[d] == 1 and xs[d] != 1]
    dims: list[ExprLike] = [1 if xs[d] == 1 else sz(f"D{d}", xs[d]) for d in range(len(xs))]
    kept = [(f"o{d}", 1 if d in reduced else dims[d]) for d in range(len(xs))]
    # Adjacent reduced axes are one run, read with one index (no division by a runtime
    # extent in the inner loop where the reduced axes are contiguous, e.g. the pixels).
    runs: list[list[int]] = []
    for d in reduced:
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    at: ExprLike = 0
    for d in range(len(xs)):
        if d not in reduced:
            at = at + Var(f"o{d}") * _product(dims[d + 1:])
    for k, run in enumerate(runs):
        at = at + Var(f"r{k}") * _product(dims[run[-1] + 1:])
    size, total = _product([e for _, e in kept]), _product(dims)
    tap: list[Stmt] = [
        *unflatten(Var("j"), [(f"r{k}", _product([dims[d] for d in run]))
                              for k, run in enumerate(runs)]),
        Let("acc", Var("acc") + Load("x0", Var("n") * total + at))]
    span = _product([dims[d] for d in reduced])
    if batched:
        body = unflatten(Var("t"), [("n", N_BATCH)] + kept)
        body += [Let("acc", call("f64", Const(0))), Loop("j", const(span), tap),
                 Store("y", Var("t"), Var("acc"))]
        return rows_kernel(name, arrays("x0", "y"), size, body, comment, sz)
    body = unflatten(Var("t"), kept) + [
        Let("acc", call("f64", Const(0))),
        Loop("n", N_BATCH, [Loop("j", const(span), tap)]), Store("y", Var("t"), Var("acc"))]
    return _whole_batch(name, arrays("x0", "y"), size, body, comment, sz)


def _product(extents: Sequence[ExprLike]) -> ExprLike:
    """The product of literal or runtime extents (1 for none)."""
    out: ExprLike = 1
    for e in extents:
        out = out * e
    return out


def channel_pad_kernel(name: str, shape: Sequence[int], before: int, after: int,
                       comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``before`` zero channels, the channels of ``x0`` (per image ``shape``), ``after`` zero
    channels: one parallel iteration per (image, output channel)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    out_c = C + before + after
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("c", out_c)])
    body += [Let("ci", Var("c") - before), Let("yb", Var("t") * L),
             If(cmp("and", cmp(">=", Var("ci"), 0), cmp("<", Var("ci"), C)), [
                 Let("xb", (Var("n") * C + Var("ci")) * L),
                 Loop("j", const(L), [Store("y", Var("yb") + Var("j"),
                                            Load("x0", Var("xb") + Var("j")))])],
                [Loop("j", const(L), [Store("y", Var("yb") + Var("j"), Const(0.0))])])]
    return rows_kernel(name, arrays("x0", "y"), out_c, body, comment, sz)


def mse_kernel(name: str, size: int, comment: str = "", sz: Sizes | None = None) -> Kernel:
    """The mean of ``(x0 - x1)^2`` over every element of the batch (``size`` per image), in
    float64. One serial loop: a scalar result."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    d = call("f64", Load("x0", Var("i"))) - call("f64", Load("x1", Var("i")))
    body: list[Stmt] = [Let("total", call("f64", Const(0))), Loop("i", N_BATCH * L, [
        Let("d", d), Let("total", Var("total") + Var("d") * Var("d"))]),
        Store("y", Const(0), div(Var("total"), call("f64", N_BATCH * L)))]
    return Kernel(name, arrays("x0", "x1", "y") + sz.params() + [Param("n_batch", "int")],
                  body, comment)


def mse_grad_kernel(name: str, size: int, dy: int | None = None, comment: str = "",
                    sz: Sizes | None = None) -> Kernel:
    """``dy 2 (x0 - x1) / count``, count the elements of the batch (``size`` per image)."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    at = Var("t") * L + Var("j")
    body: list[Stmt] = [Let("scale", div(F64(2.0) * upstream(dy), call("f64", N_BATCH * L))),
                        Loop("j", const(L), [Store("y", at, (call("f64", Load("x0", at)) - call(
                            "f64", Load("x1", at))) * Var("scale"))])]
    return rows_kernel(name, _loss_grad_arrays(2, dy), 1, body, comment, sz)


def weighted_sum_kernel(name: str, size: int, comment: str = "",
                        sz: Sizes | None = None) -> Kernel:
    """The sum of ``x0 x1`` over every element of the batch (``size`` per image), in float64.
    One serial loop: a scalar result."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    term = call("f64", Load("x0", Var("i"))) * call("f64", Load("x1", Var("i")))
    body: list[Stmt] = [Let("total", call("f64", Const(0))), Loop("i", N_BATCH * L, [
        Let("total", Var("total") + term)]), Store("y", Const(0), Var("total"))]
    return Kernel(name, arrays("x0", "x1", "y") + sz.params() + [Param("n_batch", "int")],
                  body, comment)


def weighted_sum_grad_kernel(name: str, size: int, dy: int | None = None, comment: str = "",
                             sz: Sizes | None = None) -> Kernel:
    """``dy x1``: the weights themselves, scaled by the gradient reaching the sum."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    at = Var("t") * L + Var("j")
    body: list[Stmt] = [Let("scale", upstream(dy)), Loop("j", const(L), [
        Store("y", at, call("f64", Load("x1", at)) * Var("scale"))])]
    return rows_kernel(name, _loss_grad_arrays(2, dy), 1, body, comment, sz)


def distance_grad_kernel(name: str, size: int, p: float, comment: str = "",
                         sz: Sizes | None = None) -> Kernel:
    """``dy sign(a - b) (|a - b| / y)^(p - 1)`` per element of an image's embedding (``x0`` =
    a, ``x1`` = b, ``x2`` = the distance y, ``x3`` = dy; 0 where y or a - b is 0), float64:
    ``g = dy / y^(p - 1)`` once per image, then ``sign(d) |d|^(p - 1) g`` (p = 2: ``d g``)."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    at = Var("t") * L + Var("j")
    diff, g = Var("diff"), Var("g")
    signed = Select(cmp(">", diff, F64(0.0)), g, F64(0.0) - g)
    if p == 2.0:
        value: Expr = diff * g
    elif p == 1.0:
        value = signed
    else:
        value = signed * call("pow", call("abs", diff), F64(p - 1.0))
    dist = call("f64", Load("x2", Var("t")))
    body: list[Stmt] = [
        Let("dist", dist),
        If(cmp(">", Var("dist"), F64(0.0)), [
            Let("g", div(call("f64", Load("x3", Var("t"))),
                         call("pow", Var("dist"), F64(p - 1.0)))),
            Loop("j", const(L), [
                Let("diff", call("f64", Load("x0", at)) - call("f64", Load("x1", at))),
                Store("y", at, Select(cmp("==", diff, F64(0.0)), F64(0.0), value))])],
           [Loop("j", const(L), [Store("y", at, Const(0.0))])])]
    return rows_kernel(name, arrays("x0", "x1", "x2", "x3", "y"), 1, body, comment, sz)


# -- the other losses: one serial loop for the batch mean, one row per image for the gradient ---
# ``x<k>`` are the loss's inputs in the op's order; a gradient kernel's ``dy`` is as
# :func:`upstream` reads it. Sums and the per-element arithmetic run in float64.

def _batch_mean(name: str, inputs: int, count: Expr, body: list[Stmt], comment: str,
                sz: Sizes) -> Kernel:
    """``y = total / count`` after ``body`` (which adds each sample's term to ``total``)."""
    return Kernel(name, _loss_grad_arrays(inputs, None) + sz.params() +
                  [Param("n_batch", "int")],
                  [Let("total", call("f64", Const(0))), *body,
                   Store("y", Const(0), div(Var("total"), call("f64", count)))], comment)


def _f64(array: str, at: Expr) -> Expr:
    return call("f64", Load(array, at))


def bce_with_logits_kernel(name: str, size: int, comment: str = "",
                           sz: Sizes | None = None) -> Kernel:
    """The mean over every element of ``max(x, 0) - x t + log(1 + exp(-|x|))`` (logits ``x0``,
    targets ``x1``, ``size`` per image)."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    x = Var("x")
    body: list[Stmt] = [Loop("i", N_BATCH * L, [
        Let("x", _f64("x0", Var("i"))),
        Let("total", Var("total") + fmax(x, F64(0.0)) - x * _f64("x1", Var("i")) +
            call("log1p", call("exp", F64(0.0) - call("abs", x))))])]
    return _batch_mean(name, 2, N_BATCH * L, body, comment, sz)


def bce_with_logits_grad_kernel(name: str, size: int, dy: int | None = None, comment: str = "",
                                sz: Sizes | None = None) -> Kernel:
    """``dy (sigmoid(x) - t) / count`` per element, the sigmoid from ``e = exp(-|x|)`` (1 / (1 +
    e) or e / (1 + e): no overflow)."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    at = Var("t") * L + Var("j")
    e = Var("e")
    body: list[Stmt] = [Let("scale", div(upstream(dy), call("f64", N_BATCH * L))), Loop(
        "j", const(L), [
            Let("x", _f64("x0", at)), Let("e", call("exp", F64(0.0) - call("abs", Var("x")))),
            Let("sig", Select(cmp(">=", Var("x"), F64(0.0)), div(F64(1.0), F64(1.0) + e),
                              div(e, F64(1.0) + e))),
            Store("y", at, (Var("sig") - _f64("x1", at)) * Var("scale"))])]
    return rows_kernel(name, _loss_grad_arrays(2, dy), 1, body, comment, sz)


def _triplet_distances(base: Expr, L: Expr | int, eps: float) -> list[Stmt]:
    """``dp`` = ||a - p + eps|| and ``dn`` = ||a - n + eps|| of one sample (``x0``, ``x1``,
    ``x2`` from ``base``), PyTorch's ``pairwise_distance``."""
    at = base + Var("j")
    return [Let("sp", call("f64", Const(0))), Let("sn", call("f64", Const(0))),
            Loop("j", const(L), [
                Let("u", _f64("x0", at) - _f64("x1", at) + F64(eps)),
                Let("v", _f64("x0", at) - _f64("x2", at) + F64(eps)),
                Let("sp", Var("sp") + Var("u") * Var("u")),
                Let("sn", Var("sn") + Var("v") * Var("v"))]),
            Let("dp", call("sqrt", Var("sp"))), Let("dn", call("sqrt", Var("sn")))]


def triplet_kernel(name: str, size: int, margin: float, eps: float, comment: str = "",
                   sz: Sizes | None = None) -> Kernel:
    """The batch mean of ``max(||a - p + eps|| - ||a - n + eps|| + margin, 0)``: anchors
    ``x0``, positives ``x1``, negatives ``x2``, ``size`` values each per image."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    body: list[Stmt] = [Loop("n", N_BATCH, [
        *_triplet_distances(Var("n") * L, L, eps),
        Let("total", Var("total") + fmax(Var("dp") - Var("dn") + F64(margin), F64(0.0)))])]
    return _batch_mean(name, 3, N_BATCH, body, comment, sz)


def triplet_grad_kernel(name: str, size: int, margin: float, eps: float, wrt: str,
                        dy: int | None = None, comment: str = "",
                        sz: Sizes | None = None) -> Kernel:
    """The gradient of :func:`triplet_kernel`'s loss with respect to the ``anchor``,
    ``positive`` or ``negative`` (``wrt``) of each image: where the hinge is open (its argument
    >= 0, as PyTorch's ``clamp_min``), ``g = dy / N`` times ``u / dp - v / dn``, ``-u / dp`` or
    ``v / dn`` (u = a - p + eps, v = a - n + eps; a zero distance passes nothing)."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    at = Var("t") * L + Var("j")
    u = _f64("x0", at) - _f64("x1", at) + F64(eps)
    v = _f64("x0", at) - _f64("x2", at) + F64(eps)
    gp, gn = Var("gp"), Var("gn")
    value = {"anchor": u * gp - v * gn, "positive": F64(0.0) - u * gp, "negative": v * gn}[wrt]
    body: list[Stmt] = [
        *_triplet_distances(Var("t") * L, L, eps),
        Let("g", Select(cmp(">=", Var("dp") - Var("dn") + F64(margin), F64(0.0)),
                        div(upstream(dy), call("f64", N_BATCH)), F64(0.0))),
        Let("gp", Select(cmp(">", Var("dp"), F64(0.0)), div(Var("g"), Var("dp")), F64(0.0))),
        Let("gn", Select(cmp(">", Var("dn"), F64(0.0)), div(Var("g"), Var("dn")), F64(0.0))),
        Loop("j", const(L), [Store("y", at, value)])]
    return rows_kernel(name, _loss_grad_arrays(3, dy), 1, body, comment, sz)


def contrastive_kernel(name: str, size: int, margin: float, comment: str = "",
                       sz: Sizes | None = None) -> Kernel:
    """The mean over every pair of ``(1 - Y) d^2 / 2 + Y max(margin - d, 0)^2 / 2`` (distances
    ``x0``, labels ``x1``: 0 similar, 1 dissimilar; ``size`` per image)."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    d, y, h = Var("d"), Var("lab"), Var("h")
    body: list[Stmt] = [Loop("i", N_BATCH * L, [
        Let("d", _f64("x0", Var("i"))), Let("lab", _f64("x1", Var("i"))),
        Let("h", fmax(F64(margin) - d, F64(0.0))),
        Let("total", Var("total") + F64(0.5) * ((F64(1.0) - y) * d * d + y * h * h))])]
    return _batch_mean(name, 2, N_BATCH * L, body, comment, sz)


def contrastive_grad_kernel(name: str, size: int, margin: float, dy: int | None = None,
                            comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``dy ((1 - Y) d - Y max(margin - d, 0)) / count`` per pair."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    at = Var("t") * L + Var("j")
    d, y = Var("d"), Var("lab")
    body: list[Stmt] = [Let("scale", div(upstream(dy), call("f64", N_BATCH * L))), Loop(
        "j", const(L), [
            Let("d", _f64("x0", at)), Let("lab", _f64("x1", at)),
            Store("y", at, ((F64(1.0) - y) * d - y * fmax(F64(margin) - d, F64(0.0))) *
                  Var("scale"))])]
    return rows_kernel(name, _loss_grad_arrays(2, dy), 1, body, comment, sz)


def localization_kernel(name: str, classes: int, box: int, box_weight: float, cells: int = 1,
                        comment: str = "", sz: Sizes | None = None) -> Kernel:
    """The mean over images and cells of ``-log softmax(s)_c + box_weight [c != 0] mean_j
    (b_j - t_j)^2``: outputs ``x0`` [N, classes + box, cells] (class scores s, then the box b,
    per cell of a grid; one cell for a whole-image output), labels ``x1`` [N, 1 + box, cells]
    (the class c, 0 meaning no object, then the box t)."""
    sz = sz if sz is not None else Sizes(literal=True)
    K, L = sz("K", classes), sz("L", cells)
    width, lwidth = K + box, 1 + box
    base, lbase = Var("base"), Var("lbase")
    sq = _f64("x0", base + (K + Var("j")) * L) - _f64("x1", lbase + (1 + Var("j")) * L)
    body: list[Stmt] = [Loop("n", N_BATCH, [Loop("p", const(L), [
        Let("base", Var("n") * (width * L) + Var("p")),
        Let("lbase", Var("n") * (lwidth * L) + Var("p")),
        *_log_sum_exp(base, L, K),
        Let("label", call("int", Load("x1", lbase))),
        Let("total", Var("total") + Var("lse") - _f64("x0", base + Var("label") * L)),
        If(cmp("!=", Var("label"), 0), [
            Let("sq", call("f64", Const(0))),
            Loop("j", const(box), [Let("d", sq), Let("sq", Var("sq") + Var("d") * Var("d"))]),
            Let("total", Var("total") + F64(box_weight / box) * Var("sq"))])])])]
    return _batch_mean(name, 2, N_BATCH * L, body, comment, sz)


def localization_grad_kernel(name: str, classes: int, box: int, box_weight: float,
                             dy: int | None = None, cells: int = 1, comment: str = "",
                             sz: Sizes | None = None) -> Kernel:
    """Per image and cell, ``g = dy / (N cells)``: ``g (softmax(s) - onehot(c))`` for the class
    scores and ``g box_weight 2 (b - t) / box`` for the box where c != 0 (0 where no
    object)."""
    sz = sz if sz is not None else Sizes(literal=True)
    K, L = sz("K", classes), sz("L", cells)
    width, lwidth = K + box, 1 + box
    base, lbase = Var("base"), Var("lbase")
    label = Var("label")
    diff = _f64("x0", base + (K + Var("j")) * L) - _f64("x1", lbase + (1 + Var("j")) * L)
    body: list[Stmt] = [
        *unflatten(Var("t"), [("n", N_BATCH), ("p", L)]),
        Let("base", Var("n") * (width * L) + Var("p")),
        Let("lbase", Var("n") * (lwidth * L) + Var("p")),
        *_log_sum_exp(base, L, K),
        Let("label", call("int", Load("x1", lbase))),
        Let("g", div(upstream(dy), call("f64", N_BATCH * L))),
        Loop("l", const(K), [Store("y", base + Var("l") * L, (
            call("exp", _f64("x0", base + Var("l") * L) - Var("lse")) -
            Select(cmp("==", Var("l"), label), F64(1.0), F64(0.0))) * Var("g"))]),
        Let("gb", Select(cmp("!=", label, 0), Var("g") * F64(2.0 * box_weight / box),
                         F64(0.0))),
        Loop("j", const(box), [Store("y", base + (K + Var("j")) * L, diff * Var("gb"))])]
    return rows_kernel(name, _loss_grad_arrays(2, dy), L, body, comment, sz)


def loss_sum_kernel(name: str, weights: Sequence[float], comment: str = "") -> Kernel:
    """``y = sum_i weights[i] x<i>[0]``: the weighted sum of whole-batch losses, in float64."""
    total: Expr = call("f64", Const(0))
    for k, w in enumerate(weights):
        total = total + F64(float(w)) * _f64(f"x{k}", Const(0))
    return Kernel(name, _loss_grad_arrays(len(weights), None) + [Param("n_batch", "int")],
                  [Store("y", Const(0), total)], comment)


def loss_weight_kernel(name: str, weight: float, dy: int | None = None,
                       comment: str = "") -> Kernel:
    """``y = weight`` (times ``dy`` as :func:`upstream` reads it): the gradient of a weighted
    sum of losses with respect to one term."""
    params = arrays(*([f"x{dy}"] if dy is not None else []), "y")  # x0 only orders the step
    return Kernel(name, params + [Param("n_batch", "int")],
                  [Store("y", Const(0), F64(float(weight)) * upstream(dy))], comment)


# -- batch norm in training: the batch's statistics, their gradients, the running updates --------
# Every kernel reads its per-channel operands from the arrays its lowering names (``arrays``:
# ``x<k>`` an activation or statistic, ``c_<k>`` a parameter packed as a constant), in the op's
# input order. Channel sums run one parallel iteration per channel over every image, float64.

def _channel_loop(shape: Sequence[int], sz: Sizes, body: list[Stmt]) -> tuple[Expr, Expr,
                                                                            list[Stmt]]:
    """``(C, L, loop)``: ``body`` run at every element ``o`` of channel ``t`` of every image
    (``o`` the element's offset in an NCHW batch)."""
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    return C, L, [Loop("n", N_BATCH, [Let("xb", (Var("n") * C + Var("t")) * L), Loop(
        "j", const(L), [Let("o", Var("xb") + Var("j")), *body])])]


#: Independent float64 partial sums of a channel sum: one chain of float64 adds waits on each
#: add's latency (about 4 cycles an element); 8 chains keep the adders busy. They are added in
#: a fixed order at the end, so the sum does not depend on the thread count.
SUM_CHAINS = 8


def _channel_sums(sums: Sequence[tuple[str, Callable[[Expr], Expr]]], shape: Sequence[int],
                  sz: Sizes) -> list[Stmt]:
    """For each ``(var, term)``, ``var``: the float64 sum of ``term(o)`` over every element
    ``o`` of channel ``t`` of every image (``o`` its offset in an NCHW batch), all in one pass;
    element ``j`` of a plane goes to partial sum ``j mod SUM_CHAINS`` (the plane's last ``L mod
    SUM_CHAINS`` elements to the first)."""
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    jj = Var("jj")
    init, run, tail, totals = [], [], [], []
    for var, term in sums:
        parts = [f"{var}_{k}" for k in range(SUM_CHAINS)]
        init += [Let(part, call("f64", Const(0))) for part in parts]
        run += [Let(part, Var(part) + term(Var("xb") + jj * SUM_CHAINS + k))
                for k, part in enumerate(parts)]
        tail.append(Let(parts[0], Var(parts[0]) + term(Var("xb") + Var("j"))))
        total: Expr = Var(parts[0])
        for part in parts[1:]:
            total = total + Var(part)
        totals.append(Let(var, total))
    return [*init,
            Loop("n", N_BATCH, [Let("xb", (Var("n") * C + Var("t")) * L),
                                Loop("jj", const(L // SUM_CHAINS), run),
                                Loop("j", const(L % SUM_CHAINS), tail,
                                     start=const(L - L % SUM_CHAINS))]),
            *totals]


#: Threads of a block of a GPU's per-channel sum (a power of two: the pairwise additions).
SUM_THREADS = 256


def _channel_sums_kernel(name: str, params: list[Param], shape: Sequence[int], sz: Sizes,
                         sums: Sequence[tuple[str, Callable[[Expr], Expr]]],
                         before: list[Stmt], after: list[Stmt], comment: str,
                         blocks: bool) -> Kernel:
    """Per channel ``t``: ``before`` (its invariants), each ``(var, term)`` of ``sums`` the
    float64 sum of ``term(o)`` over the channel's elements in every image, then ``after``,
    which reads the sums: one thread per channel (:func:`_channel_sums`), or with ``blocks``
    a GPU block per channel (:func:`_block_channel_sums`)."""
    if not blocks:
        return _whole_batch(name, params, sz("C", shape[0]), [
            *before, *_channel_sums(sums, shape, sz), *after], comment, sz)
    loop = _block_channel_sums(sums, shape, sz, before, after)  # names its sizes first
    return Kernel(name, params + sz.params() + [Param("n_batch", "int")], [loop], comment)


def _block_channel_sums(sums: Sequence[tuple[str, Callable[[Expr], Expr]]],
                        shape: Sequence[int], sz: Sizes, before: list[Stmt],
                        after: list[Stmt]) -> Loop:
    """The block loop of :func:`_channel_sums_kernel`'s GPU form: block ``t`` for channel
    ``t``; thread ``th`` sums values ``th``, ``th + SUM_THREADS``, ... of the channel's ``N
    L`` (image-major) into float64 partials, which meet in shared memory and are added
    pairwise (thread ``i`` adds ``i + h`` for ``h`` = 128, 64, ..., 1, a barrier after each
    round: the same order whatever order the threads run in); thread 0 runs ``after``."""
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    th, i = Var("th"), Var("i")
    step: list[Stmt] = [Let("e", th + i * SUM_THREADS),
                        Let("o", ((Var("e") // L) * C + Var("t")) * L + Var("e") % L)]
    step += [Let(f"{var}_part", Var(f"{var}_part") + term(Var("o"))) for var, term in sums]
    thread: list[Stmt] = [Let(f"{var}_part", call("f64", Const(0))) for var, _ in sums]
    thread += [Loop("i", (N_BATCH * L - th + (SUM_THREADS - 1)) // SUM_THREADS, step),
               *(Store(f"{var}_shared", th, Var(f"{var}_part")) for var, _ in sums),
               Barrier()]
    thread += pairwise_rounds(th, SUM_THREADS, [(f"{var}_shared", _add) for var, _ in sums])
    thread.append(If(cmp("==", th, 0), [
        *(Let(var, Load(f"{var}_shared", Const(0))) for var, _ in sums), *after]))
    return Loop("t", C, [*(Shared(f"{var}_shared", SUM_THREADS, double=True) for var, _ in sums),
                         *before, Loop("th", const(SUM_THREADS), thread, kind="thread")],
                kind="block")


def _add(a: Expr, b: Expr) -> Expr:
    return a + b


def _channel_sum(var: str, shape: Sequence[int], sz: Sizes,
                 term: Callable[[Expr], Expr]) -> list[Stmt]:
    """``var``: the float64 sum of ``term(o)`` (:func:`_channel_sums` of one sum)."""
    return _channel_sums([(var, term)], shape, sz)


def _channel_mean(x: str, shape: Sequence[int], sz: Sizes) -> list[Stmt]:
    """``mean``: the float64 mean of channel ``t`` of ``x`` over the batch and the pixels."""
    L = sz("L", prod(shape[1:]))
    return [*_channel_sum("s", shape, sz, lambda o: call("f64", Load(x, o))),
            Let("mean", div(Var("s"), call("f64", N_BATCH * L)))]


def batch_stat_kernel(name: str, shape: Sequence[int], of: str, comment: str = "",
                      sz: Sizes | None = None, blocks: bool = False) -> Kernel:
    """The mean (``of`` = mean) or biased variance of each channel of ``x0`` over the batch
    and the pixels. The variance in one pass of float64 sums about ``x1[c]``, the channel's
    float32 mean (the shift): ``d = x - x1[c]``, ``var = sum d^2 / M - (sum d / M)^2``; the
    second term corrects for the shift not being the exact mean and, the shift that close,
    cancels nothing (``ops.norm``'s ``batch_var`` bound). ``blocks``: a GPU's form (the
    module docstring)."""
    sz = sz if sz is not None else Sizes(literal=True)
    count = call("f64", N_BATCH * sz("L", prod(shape[1:])))
    if of == "mean":
        return _channel_sums_kernel(
            name, arrays("x0", "y"), shape, sz, [("s", lambda o: call("f64", Load("x0", o)))],
            [], [Let("mean", div(Var("s"), count)), Store("y", Var("t"), Var("mean"))], comment,
            blocks)

    def deviation(o: Expr) -> Expr:
        return call("f64", Load("x0", o)) - Var("m")

    def square(o: Expr) -> Expr:
        return deviation(o) * deviation(o)
    return _channel_sums_kernel(
        name, arrays("x0", "x1", "y"), shape, sz, [("s1", deviation), ("s2", square)],
        [Let("m", call("f64", Load("x1", Var("t"))))],
        [Let("d", div(Var("s1"), count)),
         Store("y", Var("t"), div(Var("s2"), count) - Var("d") * Var("d"))], comment, blocks)


def batch_stat_grad_kernel(name: str, shape: Sequence[int], of: str, comment: str = "",
                           sz: Sizes | None = None) -> Kernel:
    """The input gradient of a channel's batch mean (``x1[c] / M``) or variance (``2 (x -
    mean) x1[c] / M``), M the values per channel; ``x0`` = x."""
    sz = sz if sz is not None else Sizes(literal=True)
    body: list[Stmt] = []
    C, L, _ = _channel_loop(shape, sz, [])
    scale = div(call("f64", Load("x1", Var("t"))), call("f64", N_BATCH * L))
    if of == "mean":
        value: Expr = Var("g")
    else:
        body += _channel_mean("x0", shape, sz)
        value = F64(2.0) * (call("f64", Load("x0", Var("o"))) - Var("mean")) * Var("g")
    body.append(Let("g", scale))
    body += _channel_loop(shape, sz, [Store("y", Var("o"), value)])[2]
    return _whole_batch(name, arrays("x0", "x1", "y"), C, body, comment, sz)


def _rstd(var: Expr, eps: float) -> Expr:
    """``1 / sqrt(var + eps)`` in float64."""
    return div(F64(1.0), call("sqrt", call("f64", var) + F64(float(eps))))


def batchnorm_train_kernel(name: str, shape: Sequence[int], eps: float, operands: Sequence[str],
                           comment: str = "", sz: Sizes | None = None,
                           epilogue: Sequence[FusedOp] = (), blocks: bool = False) -> Kernel:
    """``(x - mean) gamma / sqrt(var + eps) + beta`` per (image, channel), the scale and
    shift in float64 (``operands``: x, gamma, beta, mean, var), then the fused unary
    ``epilogue`` (a ReLU) at the store; ``blocks``: a GPU's form (:func:`_plane_kernel`)."""
    sz = sz if sz is not None else Sizes(literal=True)
    x, gamma, beta, mean, var = operands
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("c", C)])
    body += [Let("a", call("f64", Load(gamma, Var("c"))) * _rstd(Load(var, Var("c")), eps)),
             Let("b", call("f64", Load(beta, Var("c"))) - call("f64", Load(mean, Var("c"))) *
                 Var("a")),
             Let("xb", Var("t") * L),
             Loop("j", const(L), [
                 *apply_epilogue(call("f64", Load(x, Var("xb") + Var("j"))) * Var("a")
                                 + Var("b"), epilogue),
                 Store("y", Var("xb") + Var("j"), Var("v"))])]
    return _plane_kernel(name, arrays(*_distinct(operands), "y"), C, body, comment, sz, blocks)


def _plane_kernel(name: str, params: list[Param], C: ExprLike, body: list[Stmt], comment: str,
                  sz: Sizes, blocks: bool) -> Kernel:
    """``rows_kernel`` over (image, channel) planes ``t``, ``body`` ending in the serial loop
    over the plane's values. With ``blocks`` (a GPU's form) a block per plane instead, whose
    :data:`SUM_THREADS` threads each run the plane's invariants (the statements before the
    loop) and every :data:`SUM_THREADS`-th value of the loop (neighbouring threads,
    neighbouring values): one thread per plane would read its values one after another."""
    if not blocks:
        return rows_kernel(name, params, C, body, comment, sz)
    *invariants, values = body
    if not (isinstance(values, Loop) and values.kind == "serial"
            and isinstance(values.start, Const) and values.start.value == 0):
        raise ValueError(f"kernel {name}: a plane kernel's body ends in its values' loop")
    th, i = Var("th"), Var("i")
    loop = Loop("i", (values.extent - th + (SUM_THREADS - 1)) // SUM_THREADS,
                [Let(values.var, th + i * SUM_THREADS), *values.body])
    return Kernel(name, params + sz.params() + [Param("n_batch", "int")], [Loop(
        "t", N_BATCH * C, [*invariants, Loop("th", const(SUM_THREADS), [loop], kind="thread")],
        kind="block")], comment)


def _distinct(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def bn_input_grad_kernel(name: str, shape: Sequence[int], eps: float, operands: Sequence[str],
                         comment: str = "", sz: Sizes | None = None) -> Kernel:
    """``dy gamma / sqrt(var + eps)`` per (image, channel) (``operands``: dy, gamma, var)."""
    sz = sz if sz is not None else Sizes(literal=True)
    dy, gamma, var = operands
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("c", C)])
    body += [Let("a", call("f64", Load(gamma, Var("c"))) * _rstd(Load(var, Var("c")), eps)),
             Let("xb", Var("t") * L),
             Loop("j", const(L), [Store("y", Var("xb") + Var("j"), call(
                 "f64", Load(dy, Var("xb") + Var("j"))) * Var("a"))])]
    return rows_kernel(name, arrays(*_distinct(operands), "y"), C, body, comment, sz)


def bn_channel_grad_kernel(name: str, shape: Sequence[int], eps: float, wrt: str,
                           operands: Sequence[str], comment: str = "",
                           sz: Sizes | None = None) -> Kernel:
    """Per channel: ``rstd sum dy (x - mean)`` (``wrt`` weight), ``-gamma rstd sum dy``
    (mean) or ``-gamma rstd^3 / 2 sum dy (x - mean)`` (var), sums over the batch and the
    pixels (``operands``: x, gamma, mean, var, dy)."""
    sz = sz if sz is not None else Sizes(literal=True)
    x, gamma, mean, var, dy = operands

    def term(o: Expr) -> Expr:
        g = call("f64", Load(dy, o))
        return g if wrt == "mean" else g * (call("f64", Load(x, o)) - Var("m"))
    C = sz("C", shape[0])
    body: list[Stmt] = [Let("m", call("f64", Load(mean, Var("t")))),
                        Let("r", _rstd(Load(var, Var("t")), eps)),
                        *_channel_sum("s", shape, sz, term)]
    gamma_r = call("f64", Load(gamma, Var("t"))) * Var("r")
    value = {"weight": Var("s") * Var("r"), "mean": F64(0.0) - gamma_r * Var("s"),
             "var": F64(-0.5) * gamma_r * Var("r") * Var("r") * Var("s")}[wrt]
    body.append(Store("y", Var("t"), value))
    return _whole_batch(name, arrays(*_distinct(operands), "y"), C, body, comment, sz)


#: A gate on dy (``ops.norm``'s ``gate``): ``(y, dy) -> the gated dy``, the activation's
#: gradient at its output y.
Gate = Callable[[Expr, Expr], Expr]


def _upstream(operands: Sequence[str], gate: Gate | None) -> Callable[[Expr], Expr]:
    """``o -> dy[o]`` in float64, ``operands[1]`` read through ``gate`` at the last operand
    (the activation's output) where there is one."""
    dy = operands[1]
    if gate is None:
        return lambda o: call("f64", Load(dy, o))
    return lambda o: call("f64", gate(Load(operands[-1], o), Load(dy, o)))


def bn_grad_sums_kernel(name: str, shape: Sequence[int], operands: Sequence[str],
                        comment: str = "", sz: Sizes | None = None,
                        gate: Gate | None = None, blocks: bool = False) -> Kernel:
    """Per channel, in one pass over x and dy: ``y[c] = sum dy`` and ``y[C + c] = sum dy (x -
    mean)``, over the batch and the pixels (``operands``: x, dy, mean, and with a ``gate``
    the activation's output it reads dy through); ``blocks``: a GPU's form (the module
    docstring)."""
    sz = sz if sz is not None else Sizes(literal=True)
    x, mean = operands[0], operands[2]
    C = sz("C", shape[0])
    upstream = _upstream(operands, gate)

    def centred(o: Expr) -> Expr:
        return upstream(o) * (call("f64", Load(x, o)) - Var("m"))
    return _channel_sums_kernel(
        name, arrays(*_distinct(operands), "y"), shape, sz, [("s0", upstream), ("s1", centred)],
        [Let("m", call("f64", Load(mean, Var("t"))))],
        [Store("y", Var("t"), Var("s0")), Store("y", C + Var("t"), Var("s1"))], comment, blocks)


def bn_grad_input_kernel(name: str, shape: Sequence[int], eps: float, operands: Sequence[str],
                         comment: str = "", sz: Sizes | None = None,
                         gate: Gate | None = None, blocks: bool = False) -> Kernel:
    """``gamma rstd (dy - s0 / M - (x - mean) rstd^2 s1 / M)`` per (image, channel), ``s0``
    and ``s1`` the channel's sums (:func:`bn_grad_sums_kernel`), M the values per channel, in
    float64 (``operands``: x, dy, gamma, mean, var, sums, and with a ``gate`` the
    activation's output it reads dy through); ``blocks``: a GPU's form
    (:func:`_plane_kernel`)."""
    sz = sz if sz is not None else Sizes(literal=True)
    x, _, gamma, mean, var, sums = operands[:6]
    upstream = _upstream(operands, gate)
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    count = call("f64", N_BATCH * L)
    body: list[Stmt] = unflatten(Var("t"), [("n", N_BATCH), ("c", C)])
    body += [Let("r", _rstd(Load(var, Var("c")), eps)),
             Let("a", call("f64", Load(gamma, Var("c"))) * Var("r")),
             Let("b", div(call("f64", Load(sums, Var("c"))), count)),
             Let("k", div(Var("r") * Var("r") * call("f64", Load(sums, C + Var("c"))), count)),
             Let("m", call("f64", Load(mean, Var("c")))),
             Let("xb", Var("t") * L),
             Loop("j", const(L), [
                 Let("o", Var("xb") + Var("j")),
                 Store("y", Var("o"), Var("a") * (upstream(Var("o")) - Var("b") - (
                     call("f64", Load(x, Var("o"))) - Var("m")) * Var("k")))])]
    return _plane_kernel(name, arrays(*_distinct(operands), "y"), C, body, comment, sz, blocks)


def bn_grad_param_kernel(name: str, channels: int, eps: float, wrt: str,
                         operands: Sequence[str], comment: str = "",
                         sz: Sizes | None = None) -> Kernel:
    """Per channel from the sums: ``s1 rstd`` (``wrt`` weight; ``operands``: sums, var) or
    ``s0`` (bias; ``operands``: sums)."""
    sz = sz if sz is not None else Sizes(literal=True)
    C = sz("C", channels)
    sums = operands[0]
    value: Expr = call("f64", Load(sums, Var("t")))
    if wrt == "weight":
        value = call("f64", Load(sums, C + Var("t"))) * _rstd(Load(operands[1], Var("t")), eps)
    return _whole_batch(name, arrays(*_distinct(operands), "y"), C,
                        [Store("y", Var("t"), value)], comment, sz, parallel=False)


def running_update_kernel(name: str, shape: Sequence[int], momentum: float, unbiased: bool,
                          operands: Sequence[str], comment: str = "",
                          sz: Sizes | None = None, replicas: int = 1) -> Kernel:
    """``(1 - momentum) running + momentum stat`` per channel, the variance made unbiased
    (times M / (M - 1), M = replicas x n_batch x the pixels of ``shape``, the normalized
    input's: the statistic is of ``replicas`` such batches) where ``unbiased`` (``operands``:
    running, stat)."""
    sz = sz if sz is not None else Sizes(literal=True)
    running, stat = operands
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    value: Expr = call("f64", Load(stat, Var("t")))
    if unbiased:
        m = call("f64", N_BATCH * L * replicas if replicas != 1 else N_BATCH * L)
        value = value * div(m, m - F64(1.0))
    body: list[Stmt] = [Store("y", Var("t"), F64(1.0 - momentum) * call(
        "f64", Load(running, Var("t"))) + F64(momentum) * value)]
    return _whole_batch(name, arrays(*_distinct(operands), "y"), C, body, comment, sz,
                        parallel=False)


# -- prelu, dropout, resizing ----------------------------------------------------------------------

def prelu_input_grad_kernel(name: str, shape: Sequence[int], shared: bool,
                            operands: Sequence[str], comment: str = "",
                            sz: Sizes | None = None) -> Kernel:
    """``dy`` where ``x > 0``, else ``slope dy``, per (image, channel); one slope for every
    channel where ``shared`` (``operands``: x, slope, dy)."""
    sz = sz if sz is not None else Sizes(literal=True)
    x, slope, dy = operands
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    at = Var("xb") + Var("j")
    body: list[Stmt] = [Let("c", Var("t") % C), Let("xb", Var("t") * L),
                        Let("a", Load(slope, Const(0) if shared else Var("c"))),
                        Loop("j", const(L), [Store("y", at, Select(
                            cmp(">", Load(x, at), Const(0.0)), Load(dy, at),
                            Var("a") * Load(dy, at)))])]
    return rows_kernel(name, arrays(*_distinct(operands), "y"), C, body, comment, sz)


def prelu_slope_grad_kernel(name: str, shape: Sequence[int], num_parameters: int,
                            comment: str = "", sz: Sizes | None = None) -> Kernel:
    """The sum of ``dy x`` where ``x <= 0`` over the batch and the pixels of each slope's
    channels (every channel for one shared slope); ``x0`` = x, ``x1`` = dy, float64."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, L = sz("C", shape[0]), sz("L", prod(shape[1:]))
    per_slope = C if num_parameters == 1 else 1
    at = Var("xb") + Var("j")
    x = Load("x0", at)
    body: list[Stmt] = [Let("acc", call("f64", Const(0))), Loop("cl", const(per_slope), [
        Loop("n", N_BATCH, [
            Let("xb", (Var("n") * C + Var("t") * per_slope + Var("cl")) * L),
            Loop("j", const(L), [If(cmp("<=", x, Const(0.0)), [Let("acc", Var("acc") + call(
                "f64", x) * call("f64", Load("x1", at)))])])])]),
        Store("y", Var("t"), Var("acc"))]
    return _whole_batch(name, arrays("x0", "x1", "y"), 1 if num_parameters == 1 else C, body,
                        comment, sz)


#: 2^32: the dropout hash works on unsigned 32-bit values, held in int64 (no overflow).
_TWO32 = 2 ** 32


def _mul32(v: Expr, c: int) -> Expr:
    """``v c mod 2^32`` for ``v`` and ``c`` below 2^32, without a product past 2^49 (int64
    arithmetic cannot hold v c itself)."""
    low, high = c & 0xFFFF, c >> 16
    return (v * low + ((v * high) % 65536) * 65536) % _TWO32


def mix32(var: str, value: Expr) -> list[Stmt]:
    """``var = lowbias32(value mod 2^32)``: the reference's ``mix32`` (``compiler/ops/tensor``),
    step by step in integer arithmetic."""
    v = Var(var)
    return [Let(var, value % _TWO32), Let(var, xor(v, shr(v, 16))),
            Let(var, _mul32(v, 0x7FEB352D)), Let(var, xor(v, shr(v, 15))),
            Let(var, _mul32(v, 0x846CA68B)), Let(var, xor(v, shr(v, 16)))]


def dropout_train_kernel(name: str, size: int, rate: float, stream: int, comment: str = "",
                         sz: Sizes | None = None) -> Kernel:
    """``x0 / (1 - rate)`` where the counter-based hash of the element's index in the batch
    keeps it, else 0 (the reference's ``dropout_keep``): ``key`` = mix(mix(mix(seed) + stream)
    + step) from the int64 ``x1`` = [seed, step, first], then an element is kept where mix(key
    + index) >= floor(rate 2^32), its index counted from image ``first`` of the global batch.
    One parallel iteration per image."""
    sz = sz if sz is not None else Sizes(literal=True)
    L = sz("L", size)
    at = Var("t") * L + Var("j")
    body: list[Stmt] = [*mix32("key", Load("x1", Const(0))),
                        *mix32("key", Var("key") + stream),
                        *mix32("key", Var("key") + Load("x1", Const(1))),
                        Let("first", Load("x1", Const(2)) * L),
                        Loop("j", const(L), [
                            *mix32("h", Var("key") + Var("first") + at),
                            Store("y", at, Select(
                                cmp(">=", Var("h"), Const(math.floor(rate * _TWO32))),
                                call("f64", Load("x0", at)) * F64(1.0 / (1.0 - rate)),
                                F64(0.0)))])]
    return Kernel(name, [Param("x0"), Param("x1", "int_array"), Param("y")] + sz.params() +
                  [Param("n_batch", "int")], [Loop("t", N_BATCH, body, kind="parallel")],
                  comment)


def upsample_grad_kernel(name: str, shape: Sequence[int], in_size: Sequence[int],
                         taps: tuple[int, int], comment: str = "",
                         sz: Sizes | None = None) -> Kernel:
    """The adjoint of a separable resize, per (image, channel) plane of ``x0`` = dy (``shape``
    C x OH x OW) into ``in_size`` (H, W): ``dx[i, j] = sum_a sum_b c_hw[i, a] c_ww[j, b]
    dy[c_hrow[i, a], c_wcol[j, b]]``, the tables listing for each input row (column) the
    ``taps`` output rows (columns) that read it and their weights (zero-padded), in float64."""
    sz = sz if sz is not None else Sizes(literal=True)
    C, OH, OW = (sz(n, d) for n, d in zip(("C", "OH", "OW"), shape))
    H, W = sz("H", in_size[0]), sz("W", in_size[1])
    KH, KW = sz("KH", taps[0]), sz("KW", taps[1])
    ra, cb = Var("i") * KH + Var("a"), Var("j") * KW + Var("b")
    tap: list[Stmt] = [Let("acc", Var("acc") + Var("wr") * call("f64", Load("c_ww", cb)) * call(
        "f64", Load("x0", Var("gb") + Var("p") * OW + call("int", Load("c_wcol", cb)))))]
    body: list[Stmt] = [Let("gb", Var("t") * (OH * OW)), Let("yb", Var("t") * (H * W)),
                        Loop("i", const(H), [Loop("j", const(W), [
                            Let("acc", call("f64", Const(0))),
                            Loop("a", const(KH), [
                                Let("p", call("int", Load("c_hrow", ra))),
                                Let("wr", call("f64", Load("c_hw", ra))),
                                Loop("b", const(KW), tap)]),
                            Store("y", Var("yb") + Var("i") * W + Var("j"), Var("acc"))])])]
    return rows_kernel(name, arrays("x0", "c_hrow", "c_hw", "c_wcol", "c_ww", "y"), C, body,
                       comment, sz)
