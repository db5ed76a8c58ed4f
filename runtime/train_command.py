"""``cnnc train``: train a network on a dataset with the compiled training step, evaluate it
on the held-out split after each epoch (accuracy; a detector on ``--data shapes``: mAP at IoU
0.5), and save the weights.

    cnnc train lenet5 --data digits --epochs 10 --batch 32 --optimizer sgd --lr 0.05 \\
        --save lenet5.npz

Under ``mpiexec -n N`` (or with ``--ranks N``, which starts that job) the N ranks train
data-parallel (``runtime/distributed.py``): each takes its shard of every global batch of
``--batch`` images, the gradients are averaged before every update, the evaluation is split
between the ranks and its counts summed, and rank 0 alone prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cli_common import EXTRA, CliError, force_arg, load_graph
from .datasets import Dataset, augment, load_dataset
from .detection import (
    DetectionError,
    find_detector,
    grid_labels,
    in_pixels,
    mean_average_precision,
)
from .distributed import (
    DEFAULT_TIMEOUT,
    MpiReplicas,
    abort_job,
    launch,
    launched_by_mpiexec,
    shard,
)
from .model import compile as compile_model
from .optim import OPTIMIZERS, SCHEDULES, Schedule
from .shapes import CLASSES as SHAPES
from .shapes import shapes_split
from .weights import load_weights

#: The CPU targets (by vector width): the ones data-parallel ranks train on.
CPU_TARGETS = ("cpu", "avx2", "avx512")
#: The targets training runs on: the CPU's, and the GPU's (CuPy, or its CPU emulation).
TARGETS = (*CPU_TARGETS, "cuda", "cuda-emu")


def correct(model, x: np.ndarray, y: np.ndarray, batch: int) -> int:
    """How many of ``x`` have their label as their highest-scoring class."""
    right = 0
    for i in range(0, len(y), batch):
        scores = model(x[i:i + batch])
        right += int((scores.reshape(len(scores), -1).argmax(axis=1) == y[i:i + batch]).sum())
    return right


def accuracy(model, x: np.ndarray, y: np.ndarray, batch: int,
             replicas: MpiReplicas | None = None) -> float:
    """The fraction of ``x`` whose highest-scoring class is its label; with ``replicas``, each
    rank counts its shard and the counts are summed."""
    if replicas is None:
        return correct(model, x, y, batch) / max(1, len(y))
    part = shard(len(y), replicas.rank, replicas.size, empty_ok=True)
    counts = np.array([correct(model, x[part], y[part], batch)], np.int64)
    replicas.total(counts)
    return int(counts[0]) / max(1, len(y))


@dataclass
class Task:
    """What ``cnnc train`` trains on and how it measures the result: the data (labels per
    training image: class indices, or a detector's grid labels), the loss options of
    ``compile(mode="train")``, and the held-out measure."""

    data: Dataset
    loss: dict[str, Any]
    measure: str
    #: The measure of a model on the held-out images (with replicas: shared between them).
    evaluate: Callable[[Any, MpiReplicas | None], float]
    per_step_accuracy: bool = False


def classification_task(graph, source: str, shape: tuple[int, ...], seed: int) -> Task:
    data = load_dataset(source, shape, seed=seed)
    out_classes = graph.node(next(iter(graph.outputs.values()))).type.shape[0]
    if data.classes > out_classes:
        raise CliError(f"{source}: labels go up to {data.classes - 1}, but network "
                       f"{graph.name!r} has {out_classes} classes (--param classes=...)")
    return Task(data, {"loss": "cross_entropy"}, "accuracy",
                lambda model, replicas: accuracy(model, data.test_x, data.test_y, 256, replicas),
                True)


def detection_task(graph, shape: tuple[int, ...], seed: int) -> Task:
    """The synthetic shapes (``runtime/shapes.py``) at the network's input size: the grid
    output trained with the localization loss, mAP at IoU 0.5 of the detections output on the
    held-out images."""
    try:
        detector = find_detector(graph)
    except DetectionError as e:
        raise CliError(f"--data shapes trains a detector: {e}") from None
    if shape[0] != 3 or shape[1] != shape[2]:
        raise CliError(f"--data shapes makes square RGB images; {graph.name!r} takes {shape}")
    if detector.classes != len(SHAPES):
        raise CliError(f"--data shapes has {len(SHAPES)} classes ({', '.join(SHAPES)}); "
                       f"{graph.name!r} detects {detector.classes} (--param classes=3)")
    train, test = shapes_split(size=shape[1], seed=seed)
    try:
        labels = grid_labels(train.objects, detector, shape[1:])
    except DetectionError as e:
        raise CliError(f"--data shapes: {e}") from None
    data = Dataset(train.images, labels, test.images, np.zeros(len(test)), len(SHAPES))

    def evaluate(model, replicas: MpiReplicas | None) -> float:
        """Every rank measures the whole held-out split (mAP does not sum over shards)."""
        found = []
        for i in range(0, len(test), 256):
            found += model(test.images[i:i + 256])[detector.detections]
        return mean_average_precision([in_pixels(f, shape[1:]) for f in found], test.objects,
                                      len(SHAPES))
    return Task(data, {"loss": "localization", "output": detector.grid}, "mAP@0.5", evaluate)


CHECKPOINT, WEIGHTS = "checkpoint.npz", "weights.npz"


def write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz written to a temporary file in the same folder, then renamed over ``path``: a
    write killed midway leaves the previous file as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(folder: Path, tm, epoch: int, rng: np.random.Generator) -> None:
    """``checkpoint.npz`` (parameters, optimizer state, epoch, the data order's generator) and
    ``weights.npz`` (the parameters alone, for ``--weights`` anywhere), each atomically."""
    state = tm.checkpoint_state()
    state["epoch"] = np.array(epoch)
    state["rng"] = np.array(json.dumps(rng.bit_generator.state))
    write_atomically(folder / CHECKPOINT, state)
    write_atomically(folder / WEIGHTS, {k: v for k, v in tm.params.items()})


def load_checkpoint(folder: Path, tm, rng: np.random.Generator) -> int:
    """Restore a run from ``folder``; returns the epochs it had finished."""
    path = folder / CHECKPOINT
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.keys()}
        rng.bit_generator.state = json.loads(str(state["rng"]))
        epoch = int(state["epoch"])
    except FileNotFoundError:
        raise CliError(f"--resume: no checkpoint in {folder} ({CHECKPOINT})") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CliError(f"{path}: not a cnnc checkpoint ({type(e).__name__}: {e})") from None
    tm.restore(state, str(path))
    return epoch


def cmd_train(args: argparse.Namespace) -> int:
    """Train alone, as one rank of an MPI job (started by mpiexec), or start that job
    (``--ranks``)."""
    if launched_by_mpiexec():
        replicas = MpiReplicas(args.rank_timeout)
        try:
            if args.ranks not in (1, replicas.size):
                raise CliError(f"--ranks {args.ranks}, but mpiexec started {replicas.size}")
            return train(args, replicas)
        except KeyboardInterrupt:
            abort_job(replicas, "interrupted", 130)
        except Exception as e:  # noqa: BLE001 - the other ranks would wait for this one
            abort_job(replicas, f"error: {e}", 2)
    check_arguments(args, args.ranks)
    if args.ranks > 1:
        return launch(args.ranks, args.argv)
    return train(args, None)


def check_arguments(args: argparse.Namespace, ranks: int) -> None:
    """The checks of the command line alone (before any rank starts)."""
    if args.epochs < 1 or args.batch < 1 or ranks < 1:
        raise CliError("--epochs, --batch and --ranks must be at least 1")
    if not args.rank_timeout > 0:
        raise CliError(f"--rank-timeout must be a positive number of seconds, got "
                       f"{args.rank_timeout:g}")
    if args.batch < ranks:
        raise CliError(f"--batch {args.batch} cannot be split between {ranks} ranks: each "
                       "needs at least one image")
    if (ranks > 1 or args.sync_bn) and args.target not in CPU_TARGETS:
        raise CliError(f"--ranks and --sync-bn train on the CPU targets; --target "
                       f"{args.target} runs one process on a GPU")
    if args.save and not args.force:
        if Path(args.save).exists():
            raise CliError(f"{args.save} exists; pass --force to overwrite it")


def train(args: argparse.Namespace, replicas: MpiReplicas | None) -> int:
    """The training run, alone or as one of ``replicas`` (rank 0 prints and writes)."""
    from tqdm import tqdm

    lead = replicas is None or replicas.rank == 0
    ranks = 1 if replicas is None else replicas.size
    graph = load_graph(args)
    if len(graph.inputs) != 1:
        raise CliError(f"cnnc train takes networks of one input; {graph.name!r} has "
                       f"{', '.join(graph.inputs)}")
    check_arguments(args, ranks)
    folder = Path(args.checkpoint) if args.checkpoint else None
    if args.resume and folder is None:
        raise CliError("--resume needs --checkpoint DIR (the folder to resume from)")
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise CliError(f"--checkpoint {folder}: not a folder")
        if (folder / CHECKPOINT).exists() and not (args.resume or args.force):
            raise CliError(f"{folder / CHECKPOINT} exists; pass --resume to continue that run "
                           "or --force to start over")
        folder.mkdir(parents=True, exist_ok=True)
    if args.data == "shapes" and (args.mirror or args.crop):
        raise CliError("--mirror and --crop would move the shapes but not their boxes; "
                       "--data shapes takes neither")
    (shape,) = [graph.node(n).type.shape for n in graph.inputs.values()]
    task = detection_task(graph, shape, args.seed) if args.data == "shapes" else \
        classification_task(graph, args.data, shape, args.seed)
    data = task.data
    weights = load_weights(graph, args.weights) if args.weights else None
    tm = compile_model(graph, args.target, weights=weights, seed=args.seed, mode="train",
                       optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, freeze=tuple(args.freeze or ()),
                       sync_bn_replicas=ranks if args.sync_bn else 1, **task.loss)
    tm.set_replicas(replicas)
    evaluator = tm.inference(target=args.target)
    schedule = Schedule(args.schedule, warmup=args.warmup)
    rng = np.random.default_rng(args.seed)
    tm.seed = args.seed
    first = load_checkpoint(folder, tm, rng) if args.resume else 0
    if first >= args.epochs:
        raise CliError(f"the checkpoint in {folder} has finished {first} epochs already; "
                       f"ask for more with --epochs")
    steps_per_epoch = -(-len(data.train_y) // args.batch)
    last = len(data.train_y) - (steps_per_epoch - 1) * args.batch
    if last < ranks:
        raise CliError(f"each epoch's last batch has {last} images, fewer than the {ranks} "
                       f"ranks: choose a --batch that leaves at least {ranks}")
    if args.sync_bn and (args.batch % ranks or last % ranks):
        raise CliError(f"--sync-bn needs batches that split into {ranks} equal shards: "
                       f"--batch {args.batch} and each epoch's last batch of {last} images "
                       f"must be multiples of {ranks}")
    total = steps_per_epoch * args.epochs
    if lead:
        on = f", {ranks} ranks of about {args.batch // ranks} images" if ranks > 1 else ""
        print(f"training {graph.name} on {args.data}: {len(data.train_y)} training and "
              f"{len(data.test_y)} test images, {args.epochs} epochs of {steps_per_epoch} "
              f"steps (batch {args.batch}{on}, {args.optimizer}, lr {args.lr:g})",
              file=sys.stderr)
    acc = float("nan")
    for epoch in range(first, args.epochs):
        order = rng.permutation(len(data.train_y))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                   unit="step", file=sys.stderr, disable=args.quiet or not lead)
        seen, right, start, losses = 0, 0, time.perf_counter(), []
        for k in bar:
            idx = order[k * args.batch:(k + 1) * args.batch]
            x, y = data.train_x[idx], data.train_y[idx]
            if args.mirror or args.crop:  # every rank draws the whole batch's augmentation
                x = augment(x, rng, args.mirror, args.crop)
            part = slice(0, len(idx))
            if replicas is not None:
                part = shard(len(idx), replicas.rank, replicas.size)
                x, y = x[part], y[part]
                replicas.where = f"training step {tm.steps_taken}"
            lr = schedule.lr(args.lr, tm.steps_taken, total)
            losses.append(tm.train_step(x, y, lr=lr, first=part.start, global_batch=len(idx)))
            seen += len(y)
            if task.per_step_accuracy:
                (scores,) = tm.last_scores.values()
                right += int((scores.reshape(len(y), -1).argmax(axis=1) == y).sum())
            if k % 10 == 0 or k == steps_per_epoch - 1:
                shown = {"acc": f"{right / seen:.3f}"} if task.per_step_accuracy else {}
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", **shown,
                                img_s=f"{ranks * seen / (time.perf_counter() - start):.0f}")
        bar.close()
        evaluator.set_params(tm.params)
        if replicas is not None:
            replicas.where = f"the evaluation after epoch {epoch + 1}"
        acc = task.evaluate(evaluator, replicas)
        if lead:
            print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, test {task.measure} "
                  f"{acc:.4f}", file=sys.stderr)
        if folder is not None and lead:
            save_checkpoint(folder, tm, epoch + 1, rng)
    if args.save and lead:
        tm.save_weights(args.save)
        print(f"wrote {args.save}", file=sys.stderr)
    if lead:
        print(f"test {task.measure}: {acc:.4f}")
    return 0


def _configure_train(p: argparse.ArgumentParser, model_arg) -> None:
    model_arg(p)
    p.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn's 8x8 digits, resized), an .npz of "
                        "'images' (N x [C x] H x W) and 'labels', or 'shapes' (synthetic "
                        "squares, discs and triangles for a detector: its grid trained with "
                        "the localization loss, mAP at IoU 0.5 measured) (default digits)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9, help="sgd only (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up")
    p.add_argument("--freeze", action="append", metavar="PATTERN",
                   help="leave parameters whose names match (fnmatch) as they are")
    p.add_argument("--weights", help="start from these weights (.npz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", metavar="FILE.npz", help="write the trained weights here")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="after each epoch write DIR/checkpoint.npz (weights, optimizer state, "
                        "epoch, data order) and DIR/weights.npz, each atomically")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --checkpoint DIR exactly where it stopped")
    p.add_argument("--mirror", action="store_true",
                   help="augment: mirror training images left-right at random (seeded)")
    p.add_argument("--crop", type=int, default=0, metavar="PIXELS",
                   help="augment: random crops of the image padded by PIXELS per side")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--target", choices=TARGETS, default="cpu",
                   help="the kernels' vector width: cpu (this machine's: 16 lanes with "
                        "AVX-512, else 8; default), avx2 (8) or avx512 (16); or cuda (an "
                        "NVIDIA GPU through CuPy), cuda-emu (its CUDA on the CPU)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under MPI: batch norm's statistics over the global batch, averaged "
                        "between the ranks (PyTorch's SyncBatchNorm); each rank's own without")
    p.add_argument("--ranks", type=int, default=1, metavar="N",
                   help="train data-parallel on N processes of this machine: starts "
                        "'mpiexec -n N cnnc train ...' (needs the distributed extra)")
    p.add_argument("--rank-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="under MPI: how long a rank waits for the others in one collective "
                        f"before it stops the job (default {DEFAULT_TIMEOUT:g})")
    force_arg(p)


EXTRA["train"] = (cmd_train, "train a network with its compiled training step",
                  _configure_train)
