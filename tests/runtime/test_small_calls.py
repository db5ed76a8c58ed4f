"""A call below ``SERIAL_WORK`` multiply-accumulates runs its kernels on one thread: the same
numbers as on the whole pool, and the pool's size is given back afterwards."""

from __future__ import annotations

import numba
import numpy as np

import cnnc
from cnnc.runtime import executor


def test_small_calls_run_on_one_thread_with_the_same_numbers(monkeypatch):
    model = cnnc.compile("lenet5")
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    assert model.executor.macs_per_image * 2 < executor.SERIAL_WORK  # LeNet-5: small
    seen: list[int] = []
    real = executor.call_all

    def watch(calls, inputs):
        seen.append(numba.get_num_threads())
        real(calls, inputs)
    monkeypatch.setattr(executor, "call_all", watch)
    before = numba.get_num_threads()
    serial = model(x)
    assert seen == [1] and numba.get_num_threads() == before
    monkeypatch.setattr(executor, "SERIAL_WORK", 0)  # everything on the whole pool
    pooled = model(x)
    assert seen[-1] == before
    np.testing.assert_array_equal(serial, pooled)
