"""``cnnc train``: train a network on a dataset with the compiled training step, evaluate it
on the held-out split after each epoch (accuracy; a detector on ``--data shapes``: mAP at IoU
0.5), and save the weights.

    cnnc train lenet5 --data digits --epochs 10 --batch 32 --optimizer sgd --lr 0.05 \\
        --save lenet5.npz
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
from .model import compile as compile_model
from .optim import OPTIMIZERS, SCHEDULES, Schedule
from .shapes import CLASSES as SHAPES
from .shapes import shapes_split
from .weights import load_weights


def accuracy(model, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """The fraction of ``x`` whose highest-scoring class is its label."""
    right = 0
    for i in range(0, len(y), batch):
        scores = model(x[i:i + batch])
        right += int((scores.reshape(len(scores), -1).argmax(axis=1) == y[i:i + batch]).sum())
    return right / max(1, len(y))


@dataclass
class Task:
    """What ``cnnc train`` trains on and how it measures the result: the data (labels per
    training image: class indices, or a detector's grid labels), the loss options of
    ``compile(mode="train")``, and the held-out measure."""

    data: Dataset
    loss: dict[str, Any]
    measure: str
    evaluate: Callable[[Any], float]
    per_step_accuracy: bool = False


def classification_task(graph, source: str, shape: tuple[int, ...], seed: int) -> Task:
    data = load_dataset(source, shape, seed=seed)
    out_classes = graph.node(next(iter(graph.outputs.values()))).type.shape[0]
    if data.classes > out_classes:
        raise CliError(f"{source}: labels go up to {data.classes - 1}, but network "
                       f"{graph.name!r} has {out_classes} classes (--param classes=...)")
    return Task(data, {"loss": "cross_entropy"}, "accuracy",
                lambda model: accuracy(model, data.test_x, data.test_y, 256), True)


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

    def evaluate(model) -> float:
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
    from tqdm import tqdm

    graph = load_graph(args)
    if len(graph.inputs) != 1:
        raise CliError(f"cnnc train takes networks of one input; {graph.name!r} has "
                       f"{', '.join(graph.inputs)}")
    if args.epochs < 1 or args.batch < 1:
        raise CliError("--epochs and --batch must be at least 1")
    if args.save and not args.force:
        if Path(args.save).exists():
            raise CliError(f"{args.save} exists; pass --force to overwrite it")
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
    tm = compile_model(graph, weights=weights, seed=args.seed, mode="train",
                       optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, freeze=tuple(args.freeze or ()),
                       **task.loss)
    evaluator = tm.inference()
    schedule = Schedule(args.schedule, warmup=args.warmup)
    rng = np.random.default_rng(args.seed)
    tm.seed = args.seed
    first = load_checkpoint(folder, tm, rng) if args.resume else 0
    if first >= args.epochs:
        raise CliError(f"the checkpoint in {folder} has finished {first} epochs already; "
                       f"ask for more with --epochs")
    steps_per_epoch = -(-len(data.train_y) // args.batch)
    total = steps_per_epoch * args.epochs
    print(f"training {graph.name} on {args.data}: {len(data.train_y)} training and "
          f"{len(data.test_y)} test images, {args.epochs} epochs of {steps_per_epoch} steps "
          f"(batch {args.batch}, {args.optimizer}, lr {args.lr:g})", file=sys.stderr)
    acc = float("nan")
    for epoch in range(first, args.epochs):
        order = rng.permutation(len(data.train_y))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                   unit="step", file=sys.stderr, disable=args.quiet)
        seen, right, start, losses = 0, 0, time.perf_counter(), []
        for k in bar:
            idx = order[k * args.batch:(k + 1) * args.batch]
            x, y = data.train_x[idx], data.train_y[idx]
            if args.mirror or args.crop:
                x = augment(x, rng, args.mirror, args.crop)
            lr = schedule.lr(args.lr, tm.steps_taken, total)
            losses.append(tm.train_step(x, y, lr=lr))
            seen += len(idx)
            if task.per_step_accuracy:
                (scores,) = tm.last_scores.values()
                right += int((scores.reshape(len(y), -1).argmax(axis=1) == y).sum())
            if k % 10 == 0 or k == steps_per_epoch - 1:
                shown = {"acc": f"{right / seen:.3f}"} if task.per_step_accuracy else {}
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", **shown,
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
        bar.close()
        evaluator.set_params(tm.params)
        acc = task.evaluate(evaluator)
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, test {task.measure} {acc:.4f}",
              file=sys.stderr)
        if folder is not None:
            save_checkpoint(folder, tm, epoch + 1, rng)
    if args.save:
        tm.save_weights(args.save)
        print(f"wrote {args.save}", file=sys.stderr)
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
    force_arg(p)


EXTRA["train"] = (cmd_train, "train a network with its compiled training step",
                  _configure_train)
