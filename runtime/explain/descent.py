"""Minimizing a smooth function of an image: L-BFGS with a backtracking line search (the seed
recommends L-BFGS for neural style: "a lightweight optimization problem with just 2 images"),
and Adam. Both take ``fun(x) -> (f, df/dx)`` over a float64 vector and return the last
point and the objective at every accepted point, the start first.

L-BFGS (Nocedal and Wright, Algorithm 7.4 with the two-loop recursion 7.5): the direction is
the inverse-Hessian estimate of the last ``memory`` steps applied to -g (a pair whose
curvature s.y is not positive is left out, keeping the estimate positive definite; a
direction that is not downhill falls back to -g); the step starts at 1 (the first one at
1/|g|) and halves until Armijo's condition f(x + t d) <= f(x) + c1 t g.d holds. Every accepted
step therefore lowers f: the objective falls monotonically, as it is computed. When no step
down to ``min_step`` lowers it, the search stops there (a minimum, to the precision of f).
scipy is not a dependency of cnnc; this is a page of NumPy.

Adam (Kingma and Ba 2015): first and second moment estimates with bias correction; a
``project`` callback may change the point after each step (the class model's blurring and
clipping), so its objective need not fall at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _two_loop(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The inverse-Hessian estimate of ``pairs`` (s, y), oldest first, applied to ``g``."""
    q = g.copy()
    alphas = []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        alphas.append(a)
        q -= a * y
    if pairs:
        s, y = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y), a in zip(pairs, reversed(alphas)):
        q += (a - (y @ q) / (y @ s)) * s
    return q


def lbfgs(fun: Objective, x0: np.ndarray, steps: int = 50, memory: int = 10,
          c1: float = 1e-4, min_step: float = 1e-10) -> tuple[np.ndarray, list[float]]:
    """Minimize ``fun`` from ``x0`` by at most ``steps`` L-BFGS steps (module docstring)."""
    x = np.asarray(x0, np.float64).ravel().copy()
    f, g = fun(x)
    history = [f]
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(steps):
        d = -_two_loop(g, pairs)
        slope = float(g @ d)
        if slope >= 0:  # not downhill: forget the estimate
            pairs.clear()
            d, slope = -g, -float(g @ g)
        if slope == 0:
            break
        t = 1.0 if pairs else 1.0 / max(float(np.sqrt(g @ g)), 1e-12)
        while True:
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            if np.isfinite(f_new) and f_new <= f + c1 * t * slope:
                break
            t *= 0.5
            if t < min_step:
                return x, history
        s, y = x_new - x, g_new - g
        if s @ y > 1e-12 * float(np.sqrt((s @ s) * (y @ y))):
            pairs = (pairs + [(s, y)])[-memory:]
        x, f, g = x_new, f_new, g_new
        history.append(f)
    return x, history


def adam(fun: Objective, x0: np.ndarray, steps: int = 100, lr: float = 0.05,
         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         project: Callable[[np.ndarray, int], np.ndarray] | None = None
         ) -> tuple[np.ndarray, list[float]]:
    """Minimize ``fun`` from ``x0`` by ``steps`` Adam steps; ``project(x, step)`` may change
    the point after each one."""
    x = np.asarray(x0, np.float64).ravel().copy()
    m, v = np.zeros_like(x), np.zeros_like(x)
    f, g = fun(x)
    history = [f]
    for k in range(1, steps + 1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        x = x - lr * (m / (1 - betas[0] ** k)) / (np.sqrt(v / (1 - betas[1] ** k)) + eps)
        if project is not None:
            x = project(x, k)
        f, g = fun(x)
        history.append(f)
    return x, history


#: The optimizers by the name a user gives.
OPTIMIZERS = {"lbfgs": lbfgs, "adam": adam}
