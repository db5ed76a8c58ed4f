"""The generated update kernels (``compiler/kernels/optimizer.py``) through ``Optimizer.update``,
against the textbook formulas in NumPy (float64) on random buffers of odd lengths (one element,
less than a block, just over one and several blocks), three steps with a changing learning
rate, with and without clipping; the gradient norm kernel against NumPy's norm; the kernels
printed for CUDA, and run on the emulated GPU (SGD with momentum, Adam, AdamW) against the
formulas and the CPU's kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnc.compiler.backends.cuda.emulate import compiler_path
from cnnc.compiler.backends.cuda.loader import CudaBackend
from cnnc.compiler.backends.cuda.memory import EmulatedArray
from cnnc.compiler.backends.cuda.printer import kernel_type_errors, print_kernel
from cnnc.compiler.kernels.optimizer import UPDATE_KERNELS, block_norms_kernel
from cnnc.runtime.optim import Optimizer, OptimizerError

LENGTHS = (1, 7, 4097, 3 * 4096 + 5)
LRS = (0.1, 0.05, 0.2)


def numpy_steps(kind: str, p: np.ndarray, grads: list[np.ndarray], *, momentum: float = 0.0,
                nesterov: bool = False, weight_decay: float = 0.0,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                clip_norm: float | None = None) -> np.ndarray:
    """The parameters after one step per gradient (learning rates ``LRS``), in float64."""
    p = p.astype(np.float64)
    v = np.zeros_like(p)
    m = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, LRS), start=1):
        g = g.astype(np.float64)
        if clip_norm is not None:
            g = g * min(1.0, clip_norm / (np.linalg.norm(g) + 1e-6))
        if kind == "adamw":
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        if kind == "sgd":
            if momentum:
                v = momentum * v + g if t > 1 else g
                g = g + momentum * v if nesterov else v
            p = p - lr * g
            continue
        b1, b2 = betas
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


CASES = [
    ("sgd", {}),
    ("sgd", {"weight_decay": 0.01}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {}),
    ("adam", {"weight_decay": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adam", {"betas": (0.3, 0.99)}),  # beta1 < 0.5: PyTorch's lerp takes its other form
    ("adamw", {"weight_decay": 0.01}),
]


@pytest.mark.parametrize("clipped", (False, True))
@pytest.mark.parametrize("kind, options", CASES)
@pytest.mark.parametrize("n", LENGTHS)
def test_updates_follow_the_formulas(kind, options, n, clipped):
    rng = np.random.default_rng(n)
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in LRS]
    # clipped to about half: gradients far larger than the weight decay's share, so that no
    # gradient of Adam is a float32 cancellation of the two near its eps (ill-conditioned)
    clip = 0.5 * math.sqrt(n) if clipped else None
    opt = Optimizer(kind, 0.1, clip_norm=clip, **options)
    p = p0.copy()
    for g, lr in zip(grads, LRS):
        before = g.copy()
        opt.update(p, g, lr)
        np.testing.assert_array_equal(g, before)  # the gradients are only read
    want = numpy_steps(kind, p0, grads, clip_norm=clip, **options)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
    assert opt.step_count == len(LRS)


def test_clipping_scales_only_gradients_over_the_limit():
    """Under the limit the step is the unclipped one (factor 1), over it the clipped one."""
    rng = np.random.default_rng(1)
    g = rng.standard_normal(4097).astype(np.float32)
    norm = float(np.linalg.norm(g.astype(np.float64)))
    for clip, factor in ((2 * norm, 1.0), (norm / 4, (norm / 4) / (norm + 1e-6))):
        p = np.zeros_like(g)
        Optimizer("sgd", 1.0, clip_norm=clip).update(p, g)
        np.testing.assert_allclose(p, -factor * g.astype(np.float64), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", LENGTHS)
def test_the_gradient_norm_is_numpys(n):
    g = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 1e3
    got = Optimizer().gradient_norm(g)
    assert got == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-6)


@pytest.mark.parametrize("bad", (np.nan, np.inf, -np.inf))
def test_a_non_finite_gradient_makes_the_norm_non_finite(bad):
    g = np.ones(3 * 4096 + 5, np.float32)
    g[2 * 4096 + 3] = bad
    assert not math.isfinite(Optimizer().gradient_norm(g))


def test_buffers_must_be_flat_float32():
    with pytest.raises(OptimizerError, match="flat contiguous float32"):
        Optimizer().update(np.zeros(5), np.zeros(5))


@pytest.mark.parametrize("build", [*UPDATE_KERNELS.values(), block_norms_kernel])
def test_the_kernels_print_for_cuda_too(build):
    """Kernel IR like any other: the CUDA printer types and prints them (float scalars as
    ``float`` arguments)."""
    kernel = build()
    assert kernel_type_errors(kernel) is None
    source = print_kernel(kernel)
    assert f"void {kernel.name}(" in source
    floats = [p.name for p in kernel.params if p.kind == "float"]
    assert all(f"float {name}," in source for name in floats)


EMULATED = [
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adam", {"weight_decay": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adamw", {"weight_decay": 0.01}),
]


@pytest.mark.skipif(compiler_path() is None, reason="no C++ compiler for the CUDA emulation")
@pytest.mark.parametrize("kind, options", EMULATED)
def test_updates_on_the_emulated_gpu_follow_the_formulas_and_the_cpu(kind, options, tmp_path):
    """Three clipped steps over buffers of the emulated GPU (the update kernel a thread per
    float, its learning rate and corrections float arguments; the norm's blocks downloaded):
    within the formulas' float64 tolerance above, and within a few float32 roundings of the
    CPU kernels' parameters and state (the same operations in the same order, but CUDA fuses
    ``a * b + c`` into one rounding where LLVM rounds twice: each element may differ by a few
    roundings of its terms, which are at most about the buffer's largest value, so the
    difference is bounded absolutely, by 8 units in the last place of that value)."""

    def assert_roundings(got: np.ndarray, want: np.ndarray, name: str) -> None:
        np.testing.assert_allclose(got, want, rtol=0, atol=2.0**-20 * np.abs(want).max(),
                                   err_msg=name)
    n = 3 * 4096 + 5
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in LRS]
    clip = 0.5 * math.sqrt(n)
    gpu = Optimizer(kind, 0.1, clip_norm=clip, **options)
    gpu.load(CudaBackend(tmp_path, "optimizer", device="emulate"))
    cpu = Optimizer(kind, 0.1, clip_norm=clip, **options)
    memory = gpu.memory
    p, p_cpu = memory.upload(p0), p0.copy()
    for g, lr in zip(grads, LRS):
        device_g = memory.upload(g)
        gpu.update(p, device_g, lr)
        cpu.update(p_cpu, g, lr)
        np.testing.assert_array_equal(memory.download(device_g), g)  # only read
    assert isinstance(p, EmulatedArray)
    got = memory.download(p)
    want = numpy_steps(kind, p0, grads, clip_norm=clip, **options)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert_roundings(got, p_cpu, "parameters")
    state = gpu.host_state()
    assert set(state) == set(cpu.state)
    for name, v in state.items():
        assert_roundings(v, cpu.state[name], name)
    assert gpu.gradient_norm(memory.upload(grads[0])) == pytest.approx(
        float(np.linalg.norm(grads[0].astype(np.float64))), rel=1e-6)
