"""Bitwise reproducibility: the same model, weights, input and settings give the same bits, run
after run, in a separately compiled model, with any thread count and in any batch (each output
element is computed by one thread, in an order fixed by the generated code). Which settings do
change the bits is measured in the README (Reproducibility), not promised here."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from cnnc.compiler.backends.numba.tasks import CHUNKS_PER_THREAD
from cnnc.runtime import executor
from cnnc.runtime.model import compile as compile_model

NET = """network repro
input image: 5 x 17 x 15
block res(c) {
    y = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu -> conv(c, 3, pad=1)
    return relu(y + in)
}
image -> conv(16, 3, stride=2, pad=1) -> batchnorm -> relu -> res(16)
      -> maxpool(2) -> conv(24, 1) -> swish -> globalavgpool -> flatten -> dense(7)
      -> softmax -> output p
"""


def _bits(model, x: np.ndarray) -> np.ndarray:
    return model(x).view(np.uint32).copy()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(4).standard_normal((6, 5, 17, 15)).astype(np.float32)


@pytest.mark.parametrize("level", (0, 2))
def test_same_settings_give_the_same_bits(image, level):
    model = compile_model(NET, seed=3, opt_level=level)
    first = _bits(model, image)
    for _ in range(4):
        np.testing.assert_array_equal(_bits(model, image), first)
    again = compile_model(NET, seed=3, opt_level=level)  # compiled (or loaded) separately
    np.testing.assert_array_equal(_bits(again, image), first)


@pytest.mark.parametrize("level", (0, 2))
def test_thread_count_does_not_change_the_bits(image, level):
    threads = numba.get_num_threads()
    if threads < 2:
        pytest.skip("one thread only: nothing to compare")
    model = compile_model(NET, seed=3, opt_level=level)
    many = _bits(model, image)
    try:
        numba.set_num_threads(1)
        one = _bits(model, image)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("level", (0, 2))
def test_batch_size_does_not_change_an_images_bits(image, level):
    model = compile_model(NET, seed=3, opt_level=level)
    whole = _bits(model, image)
    for i in (0, 5):
        np.testing.assert_array_equal(_bits(model, image[i:i + 1])[0], whole[i])


@pytest.mark.parametrize("level", (0, 2))
def test_task_order_does_not_change_the_bits(image, level, monkeypatch):
    """Every call on the threads (no small call kept on one), its tasks claimed in chunks of
    half a call, the default chunks, or one task at a time: the bits of one thread's run."""
    threads = numba.get_num_threads()
    if threads < 2:
        pytest.skip("one thread only: nothing to compare")
    monkeypatch.setattr(executor, "SERIAL_WORK", 0)
    model = compile_model(NET, seed=3, opt_level=level)
    try:
        numba.set_num_threads(1)
        one = _bits(model, image)
    finally:
        numba.set_num_threads(threads)
    program = model.executor.arena(len(image)).program
    for per_thread in (1, CHUNKS_PER_THREAD, 10 ** 6):
        program.per_thread = per_thread
        for _ in range(3):
            np.testing.assert_array_equal(_bits(model, image), one)
