"""``cnnc train``: a stopped run resumed from its checkpoint ends bitwise where an
uninterrupted one does; a checkpoint write killed midway leaves the previous one intact; data
and checkpoints that do not fit are refused with the file and what was expected."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cnnc.runtime import train_command
from cnnc.runtime.cli import main
from cnnc.runtime.datasets import augment, load_dataset

FAST = ["--batch", "128", "--quiet", "--schedule", "cosine", "--mirror", "--crop", "2"]


def weights(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.keys()}


def test_a_resumed_run_ends_bitwise_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    assert main(["train", "lenet5", "--epochs", "4", "--checkpoint", str(tmp_path / "a"),
                 *FAST]) == 0
    save = train_command.save_checkpoint

    def stop_after_two(folder, tm, epoch, rng):
        save(folder, tm, epoch, rng)
        if epoch == 2:
            raise KeyboardInterrupt  # the run is stopped right after its second checkpoint
    monkeypatch.setattr(train_command, "save_checkpoint", stop_after_two)
    assert main(["train", "lenet5", "--epochs", "4", "--checkpoint", str(tmp_path / "b"),
                 *FAST]) == 130
    monkeypatch.setattr(train_command, "save_checkpoint", save)
    assert main(["train", "lenet5", "--epochs", "4", "--checkpoint", str(tmp_path / "b"),
                 "--resume", *FAST]) == 0
    a, b = weights(tmp_path / "a" / "weights.npz"), weights(tmp_path / "b" / "weights.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the folder holds a run: starting another there needs --force, resuming past it more epochs
    assert main(["train", "lenet5", "--epochs", "1", "--checkpoint", str(tmp_path / "b"),
                 "--quiet"]) == 2
    assert main(["train", "lenet5", "--epochs", "4", "--checkpoint", str(tmp_path / "b"),
                 "--resume", "--quiet"]) == 2


def test_a_killed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    assert main(["train", "lenet5", "--epochs", "1", "--checkpoint", str(folder), *FAST]) == 0
    before = weights(folder / "checkpoint.npz")

    def dies_midway(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt
    monkeypatch.setattr(train_command.np, "savez", dies_midway)
    assert main(["train", "lenet5", "--epochs", "2", "--checkpoint", str(folder), "--resume",
                 *FAST]) == 130
    after = weights(folder / "checkpoint.npz")
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.npz", "weights.npz"]


def test_a_checkpoint_of_another_network_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(["train", "lenet5", "--epochs", "1", "--checkpoint", str(folder), *FAST]) == 0
    state = weights(folder / "checkpoint.npz")
    state["network"] = np.array("alexnet")
    with open(folder / "checkpoint.npz", "wb") as f:
        np.savez(f, **state)
    capsys.readouterr()
    assert main(["train", "lenet5", "--epochs", "2", "--checkpoint", str(folder), "--resume",
                 "--quiet"]) == 2
    assert "a checkpoint of network 'alexnet', not 'lenet5'" in capsys.readouterr().err


def test_bad_data_is_refused_with_the_file(tmp_path, capsys):
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, images=np.zeros((6, 32, 32), np.float32),
             labels=np.array([0, 1, 2, 3, 4, 12]))
    assert main(["train", "lenet5", "--data", str(bad_labels), "--epochs", "1",
                 "--quiet"]) == 2
    assert "labels go up to 12" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((6, 5), np.float32), y=np.zeros(6))
    assert main(["train", "lenet5", "--data", str(wrong), "--epochs", "1", "--quiet"]) == 2
    assert f"{wrong}: 'x' must be N x H x W or N x C x H x W" in capsys.readouterr().err
    assert main(["train", "lenet5", "--data", str(tmp_path / "none.csv"), "--quiet"]) == 2


def test_a_folder_of_class_folders_is_a_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog", "eel"]):
        (tmp_path / name).mkdir()
        for i in range(4):
            pixels = np.full((10, 12), 60 * label + i, np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    data = load_dataset(str(tmp_path), (1, 8, 8), seed=1, test_fraction=0.25)
    assert data.classes == 3
    assert data.train_x.shape == (9, 1, 8, 8) and data.test_x.shape == (3, 1, 8, 8)
    x = np.concatenate([data.train_x, data.test_x])
    y = np.concatenate([data.train_y, data.test_y])
    # each image's constant gray level says its class (the subfolders in sorted order)
    np.testing.assert_array_equal(np.floor(x[:, 0, 0, 0] * 255 / 60 + 1e-6), y)
    batch = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    same = augment(batch, np.random.default_rng(3), True, 2)
    np.testing.assert_array_equal(same, augment(batch, np.random.default_rng(3), True, 2))


def test_training_on_the_emulated_gpu_follows_the_cpu(tmp_path, capsys):
    """``--target cuda-emu``: the CUDA module trained on the CPU's emulation ends where the
    CPU target does, within float32 reduction-order error (gradients agree to about 1e-6
    relative; three SGD steps of lr 0.05 keep the weights within 1e-4); ``--ranks`` is
    refused there."""
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, images=rng.random((24, 32, 32), np.float32), labels=np.arange(24) % 3)
    common = ["train", "lenet5", "--data", str(data), "--epochs", "1", "--batch", "8",
              "--quiet", "--seed", "2"]
    assert main([*common, "--target", "cuda-emu", "--save", str(tmp_path / "gpu.npz")]) == 0
    assert main([*common, "--save", str(tmp_path / "cpu.npz")]) == 0
    gpu, cpu = weights(tmp_path / "gpu.npz"), weights(tmp_path / "cpu.npz")
    assert gpu.keys() == cpu.keys()
    for k in gpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-4,
                                   atol=1e-5 * np.abs(cpu[k]).max(), err_msg=k)
    capsys.readouterr()
    assert main([*common, "--target", "cuda-emu", "--ranks", "2"]) == 2
    assert "--ranks and --sync-bn train on the CPU targets" in capsys.readouterr().err
