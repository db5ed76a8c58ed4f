"""Kernel IR builders of the optimizer's updates over one flat parameter buffer ``p`` and one
flat gradient buffer ``g`` of ``n`` floats (the layout data-parallel training will all-reduce).

The updates are PyTorch's (``torch.optim``, single-tensor form, no dampening, no amsgrad),
written with the same operations in the same order, in float32. The scalars that change from
step to step (the learning rate, the bias corrections, the clipping factor ``scale``) and the
settings are run-time arguments, so one compiled kernel serves every model and step:

- ``sgd``: ``d = g scale + weight_decay p``; ``p = p - lr d``.
- ``sgd_momentum``: ``d`` as above; ``v = momentum v + d``; ``p = p - lr (d + momentum v)``
  with ``nesterov`` (an integer flag), else ``p = p - lr v``. PyTorch's first step sets
  ``v = d``: ``v`` starts at zero here, and ``momentum 0 + d`` is ``d``.
- ``adam`` (Adam and AdamW): ``q = decay p`` (AdamW: ``decay = 1 - lr weight_decay`` and no
  weight decay in ``d``; Adam: ``decay = 1``); ``d`` as above; ``m = lerp(m, d, 1 - beta1)``
  (PyTorch's ``lerp``: ``m + w (d - m)`` for a weight ``w < 0.5``, else
  ``d - (d - m) (1 - w)``); ``v = beta2 v + ((1 - beta2) d) d``;
  ``p = q - step_size m / (sqrt(v) / bias2_sqrt + eps)``, where the caller passes
  ``step_size = lr / (1 - beta1^t)`` and ``bias2_sqrt = sqrt(1 - beta2^t)``.

``block_norms`` writes the 2-norm of each block of ``UPDATE_BLOCK`` gradients (summed in
float64): the global norm that clipping scales by, and the step's check that every gradient is
finite, without a pass of NumPy over the buffer. The blocks are fixed, so the norm does not
depend on the thread count.

``gather_constants`` makes the kernels' packed constants from the updated parameters where
the packing only moves values (``runtime/executor.py``, on a GPU target): ``out[t] =
p[index[t]]``, zero where ``index[t]`` is negative (padding).

Each update kernel is a parallel loop over blocks of ``block`` floats with a serial inner loop
over one contiguous block: ``UPDATE_BLOCK`` on the CPU (the loop LLVM vectorizes), one on a GPU
(``GPU_UPDATE_BLOCK``: a thread per float, neighbouring threads reading neighbouring floats).
"""

from __future__ import annotations

from collections.abc import Callable

from .common import fmin
from .kernel_ir import (
    Const,
    Div,
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
)

__all__ = ["UPDATE_BLOCK", "GPU_UPDATE_BLOCK", "UPDATE_KERNELS", "block_count",
           "block_norms_kernel", "gather_kernel", "sgd_kernel", "sgd_momentum_kernel",
           "adam_kernel"]

#: Floats per task of the parallel loop, and per partial norm of ``block_norms``.
UPDATE_BLOCK = 4096
#: Floats per thread of a GPU's update kernels.
GPU_UPDATE_BLOCK = 1

N = Var("n")
I = Var("i")  # noqa: E741 - the element's index


def block_count(n: int) -> int:
    """The blocks of ``UPDATE_BLOCK`` floats that cover ``n`` (``block_norms``' outputs)."""
    return -(-n // UPDATE_BLOCK)


def _over_blocks(body: list[Stmt], block: int) -> Loop:
    """``for b in prange(blocks): for i in <block b of block floats>: body``."""
    inner = Loop("i", fmin(block, N - Var("start")), body, start=Var("start"))
    return Loop("b", (N + (block - 1)) // block, [Let("start", Var("b") * block), inner],
                kind="parallel")


def _floats(*names: str) -> list[Param]:
    return [Param(n, "float") for n in names]


def _arrays(*names: str) -> list[Param]:
    return [Param(n) for n in names]


def _decayed_gradient(p: Expr) -> Let:
    """``d = g scale + weight_decay p``: the (clipped) gradient with coupled weight decay."""
    return Let("d", Load("g", I) * Var("scale") + Var("weight_decay") * p)


def sgd_kernel(block: int = UPDATE_BLOCK) -> Kernel:
    """SGD without momentum (the module docstring)."""
    body: list[Stmt] = [Let("w", Load("p", I)), _decayed_gradient(Var("w")),
                        Store("p", I, Var("w") - Var("lr") * Var("d"))]
    return Kernel("sgd_update", _arrays("p", "g") + _floats("lr", "weight_decay", "scale")
                  + [Param("n", "int")], [_over_blocks(body, block)], "SGD update (PyTorch's)")


def sgd_momentum_kernel(block: int = UPDATE_BLOCK) -> Kernel:
    """SGD with momentum, Nesterov's or not (the module docstring)."""
    mu = Var("momentum")
    step = Select(cmp("!=", Var("nesterov"), 0), Var("d") + mu * Var("v"), Var("v"))
    body: list[Stmt] = [Let("w", Load("p", I)), _decayed_gradient(Var("w")),
                        Let("v", mu * Load("buf", I) + Var("d")), Store("buf", I, Var("v")),
                        Store("p", I, Var("w") - Var("lr") * step)]
    return Kernel("sgd_momentum_update",
                  _arrays("p", "g", "buf") + _floats("lr", "weight_decay", "momentum", "scale")
                  + [Param("nesterov", "int"), Param("n", "int")], [_over_blocks(body, block)],
                  "SGD update with momentum (PyTorch's)")


def adam_kernel(block: int = UPDATE_BLOCK) -> Kernel:
    """Adam and AdamW (the module docstring)."""
    w1 = Var("beta1_weight")
    m, d = Var("m"), Var("d")
    lerp = Select(cmp("<", w1, Const(0.5)), m + w1 * (d - m), d - (d - m) * (Const(1.0) - w1))
    denom = Div(call("sqrt", Var("v")), Var("bias2_sqrt")) + Var("eps")
    body: list[Stmt] = [
        Let("q", Load("p", I) * Var("decay")),
        _decayed_gradient(Var("q")),
        Let("m", Load("exp_avg", I)),
        Let("m", lerp),
        Let("v", Load("exp_avg_sq", I) * Var("beta2") + Var("beta2_weight") * d * d),
        Store("exp_avg", I, Var("m")),
        Store("exp_avg_sq", I, Var("v")),
        Store("p", I, Var("q") - Div(Var("step_size") * Var("m"), denom)),
    ]
    return Kernel("adam_update",
                  _arrays("p", "g", "exp_avg", "exp_avg_sq")
                  + _floats("step_size", "decay", "weight_decay", "beta1_weight", "beta2",
                            "beta2_weight", "bias2_sqrt", "eps", "scale") + [Param("n", "int")],
                  [_over_blocks(body, block)], "Adam and AdamW update (PyTorch's)")


#: Independent float64 sums per block of ``block_norms``: one chain of dependent additions
#: waits an addition's latency per float (11.7M floats: 10 ms on 2 threads); eight chains
#: overlap (LLVM may not reorder the sums itself: the norm would change with it).
NORM_CHAINS = 8


def block_norms_kernel() -> Kernel:
    """``norms[b]``: the 2-norm of block ``b`` of ``g``, its squares summed in float64 in
    ``NORM_CHAINS`` interleaved sums (float ``i`` into sum ``i % NORM_CHAINS``, the last
    ``count % NORM_CHAINS`` into the first), added pairwise at the end."""
    k = NORM_CHAINS
    count, groups = Var("count"), Var("count") // k

    def square(index: Expr) -> Expr:
        x = call("f64", Load("g", index))
        return x * x
    chains = [f"s{c}" for c in range(k)]
    at = Var("start") + Var("j") * k
    grouped = Loop("j", groups, [Let(s, Var(s) + square(at + c)) for c, s in enumerate(chains)])
    tail = Loop("i", count - groups * k, [Let("s0", Var("s0") + square(I))],
                start=Var("start") + groups * k)
    sums: list[Expr] = [Var(s) for s in chains]
    while len(sums) > 1:
        sums = [sums[i] + sums[i + 1] for i in range(0, len(sums), 2)]
    body: list[Stmt] = [Let("start", Var("b") * UPDATE_BLOCK),
                        Let("count", fmin(UPDATE_BLOCK, N - Var("start"))),
                        *(Let(s, call("f64", Const(0))) for s in chains), grouped, tail,
                        Store("norms", Var("b"), call("sqrt", sums[0]))]
    loop = Loop("b", (N + (UPDATE_BLOCK - 1)) // UPDATE_BLOCK, body, kind="parallel")
    return Kernel("gradient_block_norms", _arrays("g", "norms") + [Param("n", "int")], [loop],
                  "2-norms of blocks of the flat gradient buffer")


def gather_kernel() -> Kernel:
    """``out[t] = p[index[t]]`` for ``t < n``, zero where ``index[t] < 0``: a thread per float
    (on a GPU, neighbouring threads writing neighbouring floats)."""
    at = Var("at")
    body: list[Stmt] = [Let("at", Load("index", I)),
                        If(cmp(">=", at, 0), [Store("out", I, Load("p", at))],
                           [Store("out", I, Const(0.0))])]
    return Kernel("gather_constants", [Param("p"), Param("index", "int_array"), Param("out"),
                                       Param("n", "int")],
                  [Loop("i", N, body, kind="parallel")],
                  "packed constants gathered from the flat parameter buffer (-1: zero)")


#: The update kernels by name (``runtime/optim.py`` picks one per optimizer).
UPDATE_KERNELS: dict[str, Callable[[int], Kernel]] = {
    "sgd": sgd_kernel, "sgd_momentum": sgd_momentum_kernel, "adam": adam_kernel}
