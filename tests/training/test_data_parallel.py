"""Data-parallel training over MPI (``cnnc train --ranks N``, ``mpiexec -n N cnnc train``):
the weights equal one process's on the concatenated batch within float32 reduction-order
error; a run resumed under MPI ends bitwise where an uninterrupted one does; a rank that dies
or hangs stops the job with a message instead of a hang.

The oracle is single-process ``cnnc train`` with the same arguments: it takes the same global
batches (same data order and augmentation), each as one batch.

The bound: a rank's gradient is its shard's mean and the ranks' are averaged (weighted by
their shares where the shards differ), so the average is the whole batch's mean gradient
computed with the batch's float32 sums split at the shard boundaries and the parts added
afterwards: a different summation order, and with 3 ranks two more roundings (the weight and
the division by 3), each of u relative. Reordering a float32 sum of K terms moves it by
at most about K u times the sum of the terms' magnitudes (u = 2^-24); the longest sums here
are c1's weight gradient, K = 32 images x 28 x 28 pixels = 25,088, so K u < 2^-9. We allow
2^-9 of each tensor's largest change over the run, plus one ulp of its largest value per step
(the update itself rounds once, on inputs that may differ in their last bit). A wrong shard
(one image counted twice or missed, a gradient not averaged) moves the result by 1/32 of the
update or more: 16 times the bound.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnc.runtime.cli import main
from cnnc.runtime.distributed import DistributedError, mpiexec_path, shard

STEPS = 4  # 2 epochs of 2 steps
# the 8-lane kernels the rest of the suite compiles (tests/conftest.py), in the ranks too
# (a constant learning rate: a run of 1 epoch is the first epoch of a run of 2)
ARGS = ["--epochs", "2", "--batch", "32", "--lr", "0.1", "--schedule", "constant", "--mirror",
        "--crop", "2", "--quiet", "--target", "avx2"]
TINY_DROPOUT = """
network tiny_dropout(classes = 10)
input image: 1 x 8 x 8
image -> conv(8, 3, pad=1) -> relu -> dropout(0.5) -> flatten -> dense(classes) -> output logits
"""
TINY_RESNET = """
network tiny_resnet(classes = 10)
input image: 1 x 16 x 16

block basic(c) {
    y = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
           -> conv(c, 3, pad=1, bias=false) -> batchnorm
    return relu(y + in)
}

image -> conv(4, 3, stride=2, pad=1, bias=false) -> batchnorm -> relu -> basic(4)
      -> globalavgpool -> flatten -> dense(classes) -> output logits
"""
RANK_FAILURE = Path(__file__).with_name("mpi_rank_failure.py")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """80 of the 8x8 digits: 64 to train on (2 batches of 32), 16 to test; LeNet-5's training
    step compiled on them here first, so that the ranks load its kernels from the cache."""
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits80.npz"
    np.savez(path, images=(d.images[:80] / 16).astype(np.float32), labels=d.target[:80])
    assert main(["train", "lenet5", "--data", str(path), *ARGS, "--epochs", "1"]) == 0
    return path


def weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.keys()}


def beyond_reduction_order(got: dict, expected: dict, start: dict, steps: int) -> list[str]:
    """The tensors whose difference passes the module docstring's bound."""
    assert got.keys() == expected.keys()
    beyond = []
    for k in expected:
        change = np.abs(expected[k] - start[k]).max()
        bound = 2.0 ** -9 * change + steps * np.spacing(np.abs(expected[k]).max())
        error = np.abs(got[k] - expected[k]).max()
        if not error <= bound:
            beyond.append(f"{k}: {error:.3g} > {bound:.3g}")
    return beyond


def start_weights(model: list[str], data: Path, path: Path) -> dict[str, np.ndarray]:
    """The weights a run starts from (a run at learning rate 0 saves them)."""
    assert main(["train", *model, "--data", str(data), "--epochs", "1", "--batch", "32",
                 "--lr", "0", "--quiet", "--target", "avx2", "--save", str(path)]) == 0
    return weights(path)


def test_runs_that_cannot_be_split_are_refused_before_any_rank_starts(capsys):
    for argv, message in (
            (["--ranks", "4", "--batch", "3"], "--batch 3 cannot be split between 4 ranks"),
            (["--ranks", "2", "--rank-timeout", "0"], "--rank-timeout must be a positive"),
            (["--ranks", "0"], "--ranks must be at least 1")):
        assert main(["train", "lenet5", *argv]) == 2
        assert message in capsys.readouterr().err


def test_shards_cover_the_batch_once():
    for batch, size in ((32, 2), (29, 4), (4, 4), (7, 3)):
        parts = [shard(batch, r, size) for r in range(size)]
        covered = np.concatenate([np.arange(batch)[p] for p in parts])
        np.testing.assert_array_equal(covered, np.arange(batch))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    with pytest.raises(DistributedError, match="cannot be split between 4 ranks"):
        shard(3, 0, 4)


@pytest.fixture(scope="module")
def two_ranks(digits, tmp_path_factory) -> Path:
    """The checkpoint folder of LeNet-5 trained by 2 ranks (its weights.npz: the end's)."""
    folder = tmp_path_factory.mktemp("two_ranks")
    assert main(["train", "lenet5", "--data", str(digits), *ARGS, "--ranks", "2",
                 "--checkpoint", str(folder)]) == 0
    return folder


def test_two_and_three_ranks_train_as_one_process(digits, two_ranks, tmp_path, capfd):
    """LeNet-5, 4 steps of SGD with momentum, mirrored and cropped batches; 3 ranks split each
    batch of 32 into shards of 11, 11 and 10, and the 16 test images into 6, 5 and 5."""
    common = ["train", "lenet5", "--data", str(digits), *ARGS]
    start = start_weights(["lenet5"], digits, tmp_path / "start.npz")
    capfd.readouterr()
    assert main([*common, "--save", str(tmp_path / "one.npz")]) == 0
    alone = capfd.readouterr().out
    assert main([*common, "--ranks", "3", "--save", str(tmp_path / "three.npz")]) == 0
    # the ranks' counts of right answers summed: the accuracy one process measures
    assert capfd.readouterr().out == alone and alone.startswith("test accuracy: ")
    one = weights(tmp_path / "one.npz")
    for got in (two_ranks / "weights.npz", tmp_path / "three.npz"):
        assert not beyond_reduction_order(weights(got), one, start, STEPS)


def test_sync_bn_trains_a_resnet_as_one_process(digits, tmp_path):
    """A small ResNet (three batch norms, a residual block): with --sync-bn two ranks end
    where one process does, batch-norm running statistics included; without it each rank
    normalizes by its own shard's statistics, and they do not (the bound can fail)."""
    (tmp_path / "tiny_resnet.cnn").write_text(TINY_RESNET)
    model = [str(tmp_path / "tiny_resnet.cnn")]
    common = ["train", *model, "--data", str(digits), *ARGS]
    start = start_weights(model, digits, tmp_path / "start.npz")
    assert main([*common, "--save", str(tmp_path / "one.npz")]) == 0
    assert main([*common, "--ranks", "2", "--sync-bn", "--save", str(tmp_path / "sync.npz")]) == 0
    assert main([*common, "--ranks", "2", "--save", str(tmp_path / "own.npz")]) == 0
    one, sync, own = (weights(tmp_path / f"{n}.npz") for n in ("one", "sync", "own"))
    assert not beyond_reduction_order(sync, one, start, STEPS)
    assert any(k.endswith(".running_var") for k in sync)
    beyond = beyond_reduction_order(own, one, start, STEPS)
    assert any(".running_mean" in b for b in beyond) and any(".running_var" in b for b in beyond)


def test_dropout_ranks_draw_their_rows_of_one_process_masks(digits, tmp_path):
    """Each rank's dropout masks are its shard's rows of the global batch's mask."""
    (tmp_path / "tiny_dropout.cnn").write_text(TINY_DROPOUT)
    model = [str(tmp_path / "tiny_dropout.cnn")]
    common = ["train", *model, "--data", str(digits), *ARGS]
    start = start_weights(model, digits, tmp_path / "start.npz")
    assert main([*common, "--save", str(tmp_path / "one.npz")]) == 0
    assert main([*common, "--ranks", "2", "--save", str(tmp_path / "two.npz")]) == 0
    assert not beyond_reduction_order(weights(tmp_path / "two.npz"),
                                      weights(tmp_path / "one.npz"), start, STEPS)


def test_a_resumed_mpi_run_ends_bitwise_where_an_uninterrupted_one_does(digits, two_ranks,
                                                                          tmp_path):
    common = ["train", "lenet5", "--data", str(digits), *ARGS, "--ranks", "2"]
    assert main([*common, "--epochs", "1", "--checkpoint", str(tmp_path / "b")]) == 0
    # rank 0 alone wrote, atomically: the two files and nothing else
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint.npz",
                                                                 "weights.npz"]
    assert main([*common, "--checkpoint", str(tmp_path / "b"), "--resume"]) == 0
    a, b = weights(two_ranks / "weights.npz"), weights(tmp_path / "b" / "weights.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def run_failing_job(digits: Path, how: str, timeout: float) -> subprocess.CompletedProcess:
    """``mpiexec -n 2`` of cnnc train whose rank 1 fails ``how`` at its third step (the ranks
    wait 3 s for one another where it hangs)."""
    wait = ["--rank-timeout", "3"] if how == "hangs" else []
    command = [mpiexec_path(), "-n", "2", sys.executable, str(RANK_FAILURE), how, "train",
               "lenet5", "--data", str(digits), *ARGS, *wait]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("how", ["killed", "error", "hangs"])
def test_a_failing_rank_stops_the_job_with_a_message(digits, how):
    job = run_failing_job(digits, how, timeout=60)
    assert job.returncode != 0
    if how == "killed":  # mpiexec notices and ends the other rank
        assert "BAD TERMINATION" in job.stdout + job.stderr
    elif how == "error":
        assert "rank 1 of 2: error: rank 1 fails at step 2" in job.stderr
    else:  # at step 2, or sooner where rank 1 started more than 3 s after rank 0 (on a
        # loaded machine: even before the first step's collective)
        assert re.search(r"rank 0 of 2: no answer from the other ranks in 3 s at (training "
                         r"step [012]|the first collective) \(a rank stopped or hangs\); "
                         r"stopping the job", job.stderr)
