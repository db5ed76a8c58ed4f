"""Optimizers and learning-rate schedules over one flat parameter buffer and one flat gradient
buffer (the layout data-parallel training will all-reduce), with PyTorch's update rules
(``torch.optim``, in the order PyTorch computes them, in float32):

- SGD: ``g = g + wd p``; with momentum ``v = mu v + g`` (PyTorch: no dampening, the first step
  ``v = g``); Nesterov ``g = g + mu v``, else ``g = v``; ``p = p - lr g``.
- Adam: ``g = g + wd p``; ``m = lerp(m, g, 1 - b1)``, ``v = b2 v + (1 - b2) g g``,
  ``p = p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
- AdamW: Adam without ``wd p`` in g, and ``p = p (1 - lr wd)`` before the step (decoupled).

Gradient clipping by global norm (``torch.nn.utils.clip_grad_norm_``) first scales g by
``min(1, clip / (norm + 1e-6))``. Each update is one generated kernel over the whole buffers
(``compiler/kernels/optimizer.py``: one per kind, the learning rate and the step's scalars as
run-time arguments), and the global norm another: no per-parameter or per-op Python work.
Schedules give the learning rate of step ``t`` of ``total``: constant, ``step`` (times
``gamma`` every ``step_size`` steps) or ``cosine`` (to 0 at the end), after a linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compiler.kernels.kernel_ir import Kernel
from ..compiler.kernels.optimizer import UPDATE_KERNELS, block_count, block_norms_kernel
from ..compiler.lower import load_kernel

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")

#: ``torch.nn.utils.clip_grad_norm_`` divides the limit by the norm plus this.
CLIP_EPS = 1e-6


class OptimizerError(ValueError):
    """An optimizer or schedule setting that is not valid (named, with the valid range)."""


#: How a kernel's scalar arguments are passed (float32 scalars: float32 arithmetic, and one
#: compiled signature whatever Python number the caller has).
SCALARS: dict[str, Callable[[Any], Any]] = {"float": np.float32, "int": int}


class BoundKernel:
    """A loaded kernel called with its arguments by parameter name (the builder's names)."""

    def __init__(self, kernel: Kernel, cache_dir: str | Path | None) -> None:
        self.names = [p.name for p in kernel.params]
        self.kinds = {p.name: p.kind for p in kernel.params}
        self.fn: Callable[..., Any] = load_kernel(kernel, cache_dir=cache_dir)

    def __call__(self, **args: Any) -> None:
        self.fn(*(SCALARS.get(self.kinds[n], _flat)(args[n]) for n in self.names))

    def compile(self) -> None:
        """Compile it now (Numba compiles at the first call: one on empty buffers)."""
        self(**{n: {"float": 0.0, "int": 0}.get(k, np.empty(0, np.float32))
                for n, k in self.kinds.items()})


def _flat(a: np.ndarray) -> np.ndarray:
    """``a``, refused unless it is a flat contiguous float32 buffer (what the kernels index)."""
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.ndim != 1:
        raise OptimizerError(f"optimizer buffers are flat contiguous float32, got {a.dtype} "
                             f"{a.shape}")
    return a


@dataclass
class Optimizer:
    """One optimizer's settings and state (``state`` holds its flat buffers by name)."""

    kind: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float | None = None
    step_count: int = 0
    state: dict[str, np.ndarray] = field(default_factory=dict)
    cache_dir: str | Path | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise OptimizerError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                                 f"{self.kind!r}")
        for name, value, lo in (("lr", self.lr, 0.0), ("momentum", self.momentum, 0.0),
                                ("weight_decay", self.weight_decay, 0.0),
                                ("eps", self.eps, 0.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= lo):
                raise OptimizerError(f"{name} must be a finite number >= {lo:g}, got {value!r}")
        if self.nesterov and (self.kind != "sgd" or self.momentum <= 0):
            raise OptimizerError("nesterov needs the sgd optimizer with momentum > 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise OptimizerError(f"betas must be in [0, 1), got {self.betas}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise OptimizerError(f"clip_norm must be positive, got {self.clip_norm!r}")
        self._kernels: tuple[BoundKernel, BoundKernel] | None = None

    @property
    def kernel_name(self) -> str:
        """The update kernel of these settings (``compiler.kernels.optimizer``)."""
        if self.kind == "sgd":
            return "sgd_momentum" if self.momentum else "sgd"
        return "adam"

    def kernels(self) -> tuple[BoundKernel, BoundKernel]:
        """The update kernel and the gradient norm kernel, loaded (from the cache under
        ``cache_dir``) at the first call."""
        if self._kernels is None:
            self._kernels = (BoundKernel(UPDATE_KERNELS[self.kernel_name](), self.cache_dir),
                             BoundKernel(block_norms_kernel(), self.cache_dir))
        return self._kernels

    def compile(self) -> None:
        """Load and compile the kernels now rather than in the first step."""
        for kernel in self.kernels():
            kernel.compile()

    def gradient_norm(self, grads: np.ndarray) -> float:
        """The global 2-norm of the flat gradients (non-finite if any gradient is)."""
        norms = np.empty(block_count(grads.size), np.float32)
        self.kernels()[1](g=grads, norms=norms, n=grads.size)
        return math.sqrt(float(np.dot(norms.astype(np.float64), norms)))

    def update(self, params: np.ndarray, grads: np.ndarray, lr: float | None = None,
               norm: float | None = None) -> None:
        """One step over the flat float32 buffers, ``params`` in place (``grads`` is only
        read); ``norm``: the gradients' global norm where the caller has it (clipping)."""
        lr = self.lr if lr is None else lr
        self.step_count += 1
        scale = 1.0
        if self.clip_norm is not None:
            norm = self.gradient_norm(grads) if norm is None else norm
            scale = min(1.0, self.clip_norm / (norm + CLIP_EPS))
        update = self.kernels()[0]
        common = {"p": params, "g": grads, "scale": scale, "n": params.size}
        if self.kind == "sgd" and not self.momentum:
            update(**common, lr=lr, weight_decay=self.weight_decay)
        elif self.kind == "sgd":
            buf = self.state.setdefault("momentum", np.zeros_like(params))
            update(**common, buf=buf, lr=lr, weight_decay=self.weight_decay,
                   momentum=self.momentum, nesterov=int(self.nesterov))
        else:
            b1, b2 = self.betas
            t = self.step_count
            decoupled = self.kind == "adamw"
            update(**common, exp_avg=self.state.setdefault("exp_avg", np.zeros_like(params)),
                   exp_avg_sq=self.state.setdefault("exp_avg_sq", np.zeros_like(params)),
                   step_size=lr / (1 - b1 ** t), bias2_sqrt=math.sqrt(1 - b2 ** t),
                   decay=1 - lr * self.weight_decay if decoupled else 1.0,
                   weight_decay=0.0 if decoupled else self.weight_decay,
                   beta1_weight=1 - b1, beta2=b2, beta2_weight=1 - b2, eps=self.eps)


@dataclass(frozen=True)
class Schedule:
    """The learning rate of step ``t`` (0-based) of ``total`` steps."""

    kind: str = "constant"
    warmup: int = 0
    step_size: int = 1
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise OptimizerError(f"schedule must be one of {', '.join(SCHEDULES)}, got "
                                 f"{self.kind!r}")
        if self.warmup < 0 or self.step_size < 1:
            raise OptimizerError("warmup must be >= 0 and step_size >= 1")

    def lr(self, base: float, t: int, total: int) -> float:
        if t < self.warmup:
            return base * (t + 1) / self.warmup
        if self.kind == "step":
            return base * self.gamma ** ((t - self.warmup) // self.step_size)
        if self.kind == "cosine":
            span = max(1, total - self.warmup)
            return base * 0.5 * (1 + math.cos(math.pi * min(t - self.warmup, span) / span))
        return base
