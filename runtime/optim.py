"""Optimizers and learning-rate schedules over one flat parameter buffer and one flat gradient
buffer (the layout data-parallel training will all-reduce), with PyTorch's update rules:

- SGD: ``g += wd p``; with momentum ``v = mu v + g`` (PyTorch: no dampening, the first step
  ``v = g``); Nesterov ``g += mu v``, else ``g = v``; ``p -= lr g``.
- Adam: ``g += wd p``; ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
  ``p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
- AdamW: Adam without ``wd p`` in g, and ``p -= lr wd p`` before the step (decoupled decay).

Gradient clipping by global norm scales g by ``clip / max(norm, clip)``. Each update is a few
whole-buffer NumPy operations, in place: no per-parameter or per-op Python work.
Schedules give the learning rate of step ``t`` of ``total``: constant, ``step`` (times
``gamma`` every ``step_size`` steps) or ``cosine`` (to 0 at the end), after a linear warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


class OptimizerError(ValueError):
    """An optimizer or schedule setting that is not valid (named, with the valid range)."""


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

    def update(self, params: np.ndarray, grads: np.ndarray, lr: float | None = None) -> None:
        """One step over the flat float32 buffers (``grads`` is used as scratch)."""
        lr = self.lr if lr is None else lr
        self.step_count += 1
        if self.clip_norm is not None:
            norm = float(np.sqrt(np.dot(grads.astype(np.float64), grads)))
            if norm > self.clip_norm:
                grads *= np.float32(self.clip_norm / norm)
        if self.kind == "adamw" and self.weight_decay:
            params *= np.float32(1.0 - lr * self.weight_decay)
        elif self.weight_decay:
            grads += np.float32(self.weight_decay) * params
        if self.kind == "sgd":
            if self.momentum:
                v = self.state.get("momentum")
                if v is None:
                    v = self.state["momentum"] = grads.copy()
                else:
                    v *= np.float32(self.momentum)
                    v += grads
                if self.nesterov:
                    grads += np.float32(self.momentum) * v
                else:
                    grads = v
            params -= np.float32(lr) * grads
            return
        b1, b2 = self.betas
        m = self.state.setdefault("exp_avg", np.zeros_like(params))
        v = self.state.setdefault("exp_avg_sq", np.zeros_like(params))
        m *= np.float32(b1)
        m += np.float32(1 - b1) * grads
        v *= np.float32(b2)
        v += np.float32(1 - b2) * grads * grads
        t = self.step_count
        step = lr / (1 - b1 ** t)
        denom = np.sqrt(v) / np.float32(math.sqrt(1 - b2 ** t)) + np.float32(self.eps)
        params -= np.float32(step) * m / denom


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
