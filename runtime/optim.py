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
run-time arguments), and the global norm another: no per-parameter or per-op Python work. On a
GPU target (``Optimizer.load`` with the model's CUDA backend) the kernels are CUDA kernels of
the model's module and the buffers (parameters, gradients, the optimizer's state) the GPU's:
an update moves nothing between host and device but the gradients' per-block norms.
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

from ..compiler.backends import HOST, Backend, Memory
from ..compiler.kernels.kernel_ir import Kernel
from ..compiler.kernels.optimizer import (
    GPU_UPDATE_BLOCK,
    UPDATE_BLOCK,
    UPDATE_KERNELS,
    block_count,
    block_norms_kernel,
)
from ..compiler.lower import load_kernel

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")

#: ``torch.nn.utils.clip_grad_norm_`` divides the limit by the norm plus this.
CLIP_EPS = 1e-6


class OptimizerError(ValueError):
    """An optimizer or schedule setting that is not valid (named, with the valid range)."""


def _flat(a: Any) -> Any:
    """``a``, refused unless it is a flat contiguous float32 buffer (what the kernels index; a
    device array is contiguous when flat)."""
    if a.dtype != np.float32 or a.ndim != 1 or \
            (isinstance(a, np.ndarray) and not a.flags.c_contiguous):
        raise OptimizerError(f"optimizer buffers are flat contiguous float32, got {a.dtype} "
                             f"{a.shape}")
    return a


def _flat_int64(a: Any) -> Any:
    """``a``, refused unless it is a flat int64 array (an ``int_array`` parameter)."""
    if a.dtype != np.int64 or a.ndim != 1:
        raise OptimizerError(f"index arrays are flat int64, got {a.dtype} {a.shape}")
    return a


#: How an argument is passed, by the kernel parameter's kind (float32 scalars: float32
#: arithmetic, and one compiled signature whatever Python number the caller has).
ARGUMENTS: dict[str, Callable[[Any], Any]] = {"float": np.float32, "int": int,
                                              "int_array": _flat_int64, "array": _flat}


class BoundKernel:
    """A loaded kernel called with its arguments by parameter name (the builder's names)."""

    def __init__(self, kernel: Kernel, cache_dir: str | Path | None,
                 backend: Backend | None = None) -> None:
        self.names = [p.name for p in kernel.params]
        self.kinds = {p.name: p.kind for p in kernel.params}
        self.fn: Callable[..., Any] = load_kernel(kernel, cache_dir=cache_dir, backend=backend)

    def __call__(self, **args: Any) -> None:
        self.fn(*(ARGUMENTS[self.kinds[n]](args[n]) for n in self.names))

    def compile(self) -> None:
        """Compile it now (Numba compiles at the first call: one on empty buffers)."""
        empty = {"float": 0.0, "int": 0, "int_array": np.empty(0, np.int64)}
        self(**{n: empty.get(k, np.empty(0, np.float32)) for n, k in self.kinds.items()})


@dataclass
class Optimizer:
    """One optimizer's settings and state (``state`` holds its flat buffers by name, in
    ``memory``: the host's, or the GPU's after :meth:`load`)."""

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
    memory: Memory = field(default=HOST, repr=False, compare=False)

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
        self._backend: Backend | None = None

    @property
    def kernel_name(self) -> str:
        """The update kernel of these settings (``compiler.kernels.optimizer``)."""
        if self.kind == "sgd":
            return "sgd_momentum" if self.momentum else "sgd"
        return "adam"

    def load(self, backend: Backend) -> None:
        """Put the kernels in ``backend``'s CUDA module (before it is printed: the model's
        lowering prints it) and keep the buffers in its memory, the GPU's."""
        if self._kernels is not None:
            raise OptimizerError("the optimizer's kernels are loaded already")
        self._backend = backend
        self.memory = backend.memory
        self.kernels()

    def kernels(self) -> tuple[BoundKernel, BoundKernel]:
        """The update kernel and the gradient norm kernel, loaded (Numba's from the cache under
        ``cache_dir``; or added to the CUDA module given to :meth:`load`) at the first call."""
        if self._kernels is None:
            block = UPDATE_BLOCK if self._backend is None else GPU_UPDATE_BLOCK
            self._kernels = (BoundKernel(UPDATE_KERNELS[self.kernel_name](block),
                                         self.cache_dir, self._backend),
                             BoundKernel(block_norms_kernel(), self.cache_dir, self._backend))
        return self._kernels

    def compile(self) -> None:
        """Load and compile the kernels now rather than in the first step."""
        for kernel in self.kernels():
            kernel.compile()

    def gradient_norm(self, grads: Any) -> float:
        """The global 2-norm of the flat gradients (non-finite if any gradient is); on a GPU
        only the per-block norms come back to the host."""
        norms = self.memory.empty(block_count(grads.size))
        self.kernels()[1](g=grads, norms=norms, n=grads.size)
        host = self.memory.download(norms)
        return math.sqrt(float(np.dot(host.astype(np.float64), host)))

    def update(self, params: Any, grads: Any, lr: float | None = None,
               norm: float | None = None) -> None:
        """One step over the flat float32 buffers (in :attr:`memory`), ``params`` in place
        (``grads`` is only read); ``norm``: the gradients' global norm where the caller has it
        (clipping)."""
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
            buf = self._buffer("momentum", params.size)
            update(**common, buf=buf, lr=lr, weight_decay=self.weight_decay,
                   momentum=self.momentum, nesterov=int(self.nesterov))
        else:
            b1, b2 = self.betas
            t = self.step_count
            decoupled = self.kind == "adamw"
            update(**common, exp_avg=self._buffer("exp_avg", params.size),
                   exp_avg_sq=self._buffer("exp_avg_sq", params.size),
                   step_size=lr / (1 - b1 ** t), bias2_sqrt=math.sqrt(1 - b2 ** t),
                   decay=1 - lr * self.weight_decay if decoupled else 1.0,
                   weight_decay=0.0 if decoupled else self.weight_decay,
                   beta1_weight=1 - b1, beta2=b2, beta2_weight=1 - b2, eps=self.eps)


    def _buffer(self, name: str, size: int) -> Any:
        """State buffer ``name`` (``size`` zeros in :attr:`memory` at its first use)."""
        if name not in self.state:
            self.state[name] = self.memory.zeros(size)
        return self.state[name]

    def host_state(self) -> dict[str, np.ndarray]:
        """The state buffers as host arrays (copies where they live on a GPU)."""
        return {k: np.array(self.memory.download(v), np.float32) for k, v in self.state.items()}

    def set_state(self, buffers: dict[str, np.ndarray]) -> None:
        """Replace the state buffers by host arrays (copied into :attr:`memory`)."""
        self.state = {k: self.memory.upload(np.require(v, np.float32, ["C", "W"]).reshape(-1))
                      for k, v in buffers.items()}


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
