"""A compiled model runs its kernels as one task program: no Python between kernels, the
caller's arrays patched in at each call, new parameters bound in place."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.runtime.executor import PythonCall, TaskRange
from cnnc.runtime.reference import run_reference


@pytest.fixture(scope="module")
def lenet():
    return cnnc.compile("lenet5")


def test_every_kernel_of_a_model_runs_in_one_range(lenet):
    arena = lenet.executor.arena(2)
    calls = sum(len(step.calls) for step in lenet.plan.steps)
    assert arena.items == [TaskRange(0, calls)]
    assert len(arena.program) == calls


def test_each_call_reads_its_own_input(lenet):
    """The input's address is patched in per call: two inputs in turn, each answered as the
    float64 reference answers it (a stale address would repeat the first answer)."""
    rng = np.random.default_rng(1)
    images = [rng.standard_normal((2, 1, 32, 32)).astype(np.float32) for _ in range(2)]
    for x in images + images[::-1]:
        got = lenet(x)
        (name,) = lenet.graph.inputs
        want = next(iter(run_reference(lenet.graph, {name: x}, lenet.params).values()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_new_parameters_replace_the_bound_ones(lenet):
    x = np.random.default_rng(2).standard_normal((1, 1, 32, 32)).astype(np.float32)
    before = lenet(x)
    params = {k: v * np.float32(0.5) for k, v in lenet.params.items()}
    model = cnnc.compile("lenet5", weights=params)
    lenet.set_params(params)
    try:
        np.testing.assert_array_equal(lenet(x), model(x))
        assert not np.array_equal(lenet(x), before)
    finally:
        lenet.set_params({k: v * np.float32(2.0) for k, v in params.items()})
    np.testing.assert_array_equal(lenet(x), before)


DETECTOR = """network tiny_detector
input image: 3 x 16 x 16
g = image -> conv(8, 3, stride=2, pad=1) -> relu -> conv(8, 1) as head
output grid = g
g -> yolo_decode(anchors=[1.0, 1.0], classes=3, format=localization)
  -> nms(iou=0.5, score=0.0, top_k=4, max_boxes=4) -> output detections
"""


def test_host_steps_run_as_python_calls_after_the_kernels_range():
    """Host steps (decoding and non-maximum suppression) are Python calls after the range of
    the kernels they read; the kernels' output is the reference's."""
    model = cnnc.compile(DETECTOR)
    items = model.executor.arena(1).items
    assert isinstance(items[0], TaskRange) and items[0].first == 0
    assert all(isinstance(item, PythonCall) for item in items[1:]) and len(items) >= 2
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = model.run({"image": x})
    want = run_reference(model.graph, {"image": x}, model.params)
    np.testing.assert_allclose(got["grid"], want["grid"], rtol=1e-4, atol=1e-5)
