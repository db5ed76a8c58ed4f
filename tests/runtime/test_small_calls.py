"""A call below ``SERIAL_WORK`` multiply-accumulates runs its kernels' tasks in order on the
calling thread (no parallel region): the same numbers as on the whole pool, whose size is
left as it is."""

from __future__ import annotations

import numba
import numpy as np

import cnnc
from cnnc.compiler.backends.numba.tasks import TaskProgram
from cnnc.runtime import executor


def test_small_calls_run_their_tasks_in_order_with_the_same_numbers(monkeypatch):
    model = cnnc.compile("lenet5")
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    assert model.executor.macs_per_image * 2 < executor.SERIAL_WORK  # LeNet-5: small
    seen: list[bool] = []
    real = TaskProgram.run

    def watch(program, first, last, serial=False):
        seen.append(serial)
        real(program, first, last, serial)
    monkeypatch.setattr(TaskProgram, "run", watch)
    before = numba.get_num_threads()
    serial = model(x)  # the first call at this batch size (``run``), then the one-array call
    again = model(x)
    assert seen == [True, True] and numba.get_num_threads() == before
    monkeypatch.setattr(executor, "SERIAL_WORK", 0)  # everything over the whole pool
    pooled = model(x)
    assert seen[-1] is False
    np.testing.assert_array_equal(serial, pooled)
    np.testing.assert_array_equal(again, pooled)


def test_a_model_compiled_without_warm_compiles_its_kernels_on_first_call(tmp_path):
    """``warm=False``: nothing is compiled ahead (Numba's cache index files appear only once
    the model runs), and the first call compiles what it needs."""
    net = "network tiny\ninput x: 3 x 6 x 6\nx -> conv(5, 3) -> relu -> flatten -> dense(2)" \
          " -> output y\n"
    model = cnnc.compile(net, cache_dir=tmp_path, warm=False)
    assert not list(tmp_path.rglob("*.nbi"))
    y = model(np.ones((1, 3, 6, 6), np.float32))
    assert y.shape == (1, 2) and list(tmp_path.rglob("*.nbi"))
