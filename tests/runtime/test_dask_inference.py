"""Batch inference over Dask: a local cluster of 2 workers gives one process's outputs bit for
bit, in input order; a worker killed mid-run loses nothing (its chunks run again elsewhere)
and duplicates nothing; bad ``--dask`` values are refused in one sentence."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from cnnc.dsl.builder import load_zoo
from cnnc.runtime import dask_inference
from cnnc.runtime.cli import main
from cnnc.runtime.dask_inference import dask_client, gather, submit
from cnnc.runtime.images import ImageOptions, image_files
from cnnc.runtime.weights import init_params

IMAGES = 300
TARGET = ["--target", "avx2"]  # the rest of the suite's kernels (tests/conftest.py)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """300 random 12 x 12 gray images, each different (LeNet-5 resizes them to 32 x 32)."""
    path = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(
            path / f"{i:04d}.png")
    return path


@pytest.fixture(scope="module")
def one_process(folder, tmp_path_factory):
    """``cnnc run`` in this process on the whole folder as one batch (the oracle; it also
    compiles LeNet-5, so the workers load its kernels from the cache)."""
    out = tmp_path_factory.mktemp("one") / "one.npz"
    assert main(["run", "lenet5", "--images", str(folder), *TARGET, "-o", str(out)]) == 0
    with np.load(out) as data:
        return {k: data[k] for k in data.keys()}


@pytest.fixture(scope="module")
def client():
    """A local cluster of 2 worker processes (``--dask local:2``), for the module's tests."""
    with dask_client("local:2") as client:
        yield client


def test_two_workers_equal_one_process_bit_for_bit_in_order(folder, one_process, client,
                                                            tmp_path):
    out = tmp_path / "dask.npz"
    address = client.scheduler.address  # the command line connects to the cluster
    assert main(["run", "lenet5", "--images", str(folder), "--dask", address, "--chunk",
                 "16", *TARGET, "-o", str(out)]) == 0
    with np.load(out) as data:
        assert data.keys() == one_process.keys()
        for k in one_process:
            assert data[k].shape == (IMAGES, 10)
            np.testing.assert_array_equal(data[k], one_process[k])
    # the images differ, so equal rows in equal places is the input order
    assert len(np.unique(one_process["probabilities"], axis=0)) == IMAGES


def test_chunks_of_another_size_are_other_tasks(folder, one_process, client):
    """Two runs in flight on one cluster, the same images cut differently: each gets its own
    chunks' outputs (a task named by its place alone would be the other run's)."""
    graph = load_zoo("lenet5")
    files = image_files([folder])[:40]
    params = init_params(graph, 0)
    runs = [submit(client, graph, params, files, ImageOptions(), chunk=chunk, target="avx2")
            for chunk in (20, 10)]
    for run in runs:
        np.testing.assert_array_equal(gather(client, run)["probabilities"],
                                      one_process["probabilities"][:40])


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(folder, one_process, client):
    graph = load_zoo("lenet5")
    files = image_files([folder])
    # 150 small tasks (new ones: another chunk size than the last test's), so that many are
    # left when the first is done
    run = submit(client, graph, init_params(graph, 0), files, ImageOptions(), chunk=2,
                 target="avx2")
    futures = run.futures
    deadline = time.monotonic() + 60
    while not any(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.01)
    busy = {w: tasks for w, tasks in client.processing().items() if tasks}
    assert busy, "every chunk was done before a worker could be killed"
    victim = next(iter(busy))
    pids = client.run(os.getpid)
    os.kill(pids[victim], signal.SIGKILL)  # mid-run: it holds unfinished chunks
    outputs = gather(client, run)
    assert outputs.keys() == one_process.keys()
    np.testing.assert_array_equal(outputs["probabilities"], one_process["probabilities"])


def test_bad_dask_values_are_refused(folder, capsys, monkeypatch):
    assert main(["run", "lenet5", "--images", str(folder), "--dask", "local:0"]) == 2
    assert "--dask local:N takes a number of workers of at least 1" in capsys.readouterr().err
    assert main(["run", "lenet5", "--images", str(folder), "--dask", "--chunk", "0"]) == 2
    assert "--chunk must be at least 1, got 0" in capsys.readouterr().err
    monkeypatch.setattr(dask_inference, "CONNECT_TIMEOUT", 1)  # nothing listens there
    assert main(["run", "lenet5", "--images", str(folder), "--dask", "tcp://127.0.0.1:9",
                 "--seed", "0"]) == 2
    assert "cannot reach a Dask scheduler there within 1 s" in capsys.readouterr().err
    assert main(["run", "lenet5", "--images", str(folder), "--dask", "--reference"]) == 2
    assert "drop --reference" in capsys.readouterr().err
