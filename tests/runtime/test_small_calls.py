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
    real = executor.Arena.call

    def watch(arena, items, inputs):
        seen.append(numba.get_num_threads())
        real(arena, items, inputs)
    monkeypatch.setattr(executor.Arena, "call", watch)
    before = numba.get_num_threads()
    serial = model(x)
    assert seen == [1] and numba.get_num_threads() == before
    monkeypatch.setattr(executor, "SERIAL_WORK", 0)  # everything on the whole pool
    pooled = model(x)
    assert seen[-1] == before
    np.testing.assert_array_equal(serial, pooled)


def test_a_model_compiled_without_warm_compiles_its_kernels_on_first_call(tmp_path):
    """``warm=False``: nothing is compiled ahead (Numba's cache index files appear only once
    the model runs), and the first call compiles what it needs."""
    net = "network tiny\ninput x: 3 x 6 x 6\nx -> conv(5, 3) -> relu -> flatten -> dense(2)" \
          " -> output y\n"
    model = cnnc.compile(net, cache_dir=tmp_path, warm=False)
    assert not list(tmp_path.rglob("*.nbi"))
    y = model(np.ones((1, 3, 6, 6), np.float32))
    assert y.shape == (1, 2) and list(tmp_path.rglob("*.nbi"))
