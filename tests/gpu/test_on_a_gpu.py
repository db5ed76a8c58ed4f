"""The CUDA target on a real GPU, through CuPy: zoo networks checked step by step against the
float64 reference, device arrays in and out, training steps against the CPU's, and ResNet-50
at batch 32. Skipped on a machine without a GPU (CI's); ``bench/gpu_session.sh`` runs them on
one, with the GPU benchmark after. ``CNNC_GPU_TEST_TARGET=cuda-emu`` runs the same tests (all
but the batch of 32) through the CPU emulation of the same CUDA source: a check of the tests
themselves, not of a GPU."""

from __future__ import annotations

import os

import numpy as np
import pytest

import cnnc
from cnnc.compiler.backends.cuda.loader import gpu_problem
from cnnc.dsl.builder import load_zoo
from cnnc.runtime.check import check, format_rows
from cnnc.runtime.reference import run_reference
from cnnc.runtime.weights import init_params

TARGET = os.environ.get("CNNC_GPU_TEST_TARGET", "cuda")
PROBLEM = gpu_problem() if TARGET == "cuda" else None
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"no GPU here: {PROBLEM}")

# A small ResNet trained on both targets: batch norm in training, a residual add, a
# strided 3x3 and a 1x1 shortcut, a weight gradient split over pixel ranges (24 x 24 at the
# first convolution), dropout.
TRAIN = """network gpu_train
input image: 3 x 24 x 24

block down(c) {
    y = in -> conv(c, 3, stride=2, pad=1, bias=false) -> batchnorm -> relu
           -> conv(c, 3, pad=1, bias=false) -> batchnorm
    s = in -> conv(c, 1, stride=2, bias=false) -> batchnorm
    return relu(y + s)
}

image -> conv(8, 3, pad=1, bias=false) -> batchnorm -> relu -> down(16) -> dropout(0.1)
      -> globalavgpool -> flatten -> dense(4) -> output logits
"""


@pytest.mark.parametrize("net, size", [("lenet5", None), ("squeezenet1_1", 64),
                                       ("resnet18", 64), ("mobilenet_v2", 64)])
def test_zoo_networks_every_step_within_its_bound(net, size, tmp_path):
    graph = load_zoo(net, **({"size": size} if size else {}))
    _, rows = check(graph, target=TARGET, batch=2, cache_dir=tmp_path)
    assert rows and all(r.ok for r in rows), format_rows(rows, 1.0)


def test_device_arrays_in_and_out(tmp_path):
    """A device array is read where it lies and the outputs come back on the device, equal to
    the NumPy call's; two batch sizes."""
    model = cnnc.compile("squeezenet1_1", target=TARGET, cache_dir=tmp_path)
    memory = model.executor.memory
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 224, 224)).astype(np.float32)
        want = model(x)
        got = model(memory.upload(x).reshape(x.shape))
        assert memory.owns(got)
        np.testing.assert_array_equal(memory.download(got), want)
        name = next(iter(model.graph.inputs))
        ref = next(iter(run_reference(model.graph, {name: x[:1]}, model.params).values()))
        assert np.abs(want[:1] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_training_steps_follow_the_cpus(tmp_path):
    """Three SGD-with-momentum steps from the same weights on the GPU and on the CPU: the
    losses agree to 1e-5 relative, the parameters to float32 rounding of reordered sums; the
    parameters stay on the device (the constants gathered there)."""
    graph = cnnc.load(TRAIN)
    params = init_params(graph, seed=3)
    options = dict(loss="cross_entropy", optimizer="sgd", lr=0.05, momentum=0.9)
    gpu = cnnc.compile(graph, weights=params, mode="train", target=TARGET, cache_dir=tmp_path,
                       **options)
    cpu = cnnc.compile(graph, weights=params, mode="train", target="avx2", **options)
    assert gpu.executor.device is not None and not gpu.executor.device.host_reads
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 3, 24, 24)).astype(np.float32)
    y = rng.integers(0, 4, 8)
    for _ in range(3):
        assert gpu.train_step(x, y) == pytest.approx(cpu.train_step(x, y), rel=1e-5)
    p_gpu, p_cpu = gpu.params, cpu.params
    for name, value in p_gpu.items():
        np.testing.assert_allclose(value, p_cpu[name], rtol=1e-4,
                                   atol=1e-5 * np.abs(p_cpu[name]).max(), err_msg=name)


@pytest.mark.skipif(TARGET != "cuda", reason="a batch of 32 ResNet-50s is a GPU's work")
def test_resnet50_at_batch_32(tmp_path):
    """The arena of a batch of 32 fits; the first image's scores are the reference's."""
    model = cnnc.compile("resnet50", target=TARGET, cache_dir=tmp_path)
    x = np.random.default_rng(5).standard_normal((32, 3, 224, 224)).astype(np.float32)
    out = model(x)
    name = next(iter(model.graph.inputs))
    ref = next(iter(run_reference(model.graph, {name: x[:1]}, model.params).values()))
    assert out.shape[0] == 32
    assert np.abs(out[:1] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
