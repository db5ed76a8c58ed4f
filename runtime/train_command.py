"""``cnnc train``: train a network on a dataset with the compiled training step, evaluate it
on the held-out split after each epoch, and save the weights.

    cnnc train lenet5 --data digits --epochs 10 --batch 32 --optimizer sgd --lr 0.05 \\
        --save lenet5.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .cli_common import EXTRA, CliError, force_arg, load_graph
from .datasets import load_dataset
from .model import compile as compile_model
from .optim import OPTIMIZERS, SCHEDULES, Schedule
from .weights import load_weights


def accuracy(model, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """The fraction of ``x`` whose highest-scoring class is its label."""
    right = 0
    for i in range(0, len(y), batch):
        scores = model(x[i:i + batch])
        right += int((scores.reshape(len(scores), -1).argmax(axis=1) == y[i:i + batch]).sum())
    return right / max(1, len(y))


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
    (shape,) = [graph.node(n).type.shape for n in graph.inputs.values()]
    data = load_dataset(args.data, shape, seed=args.seed)
    weights = load_weights(graph, args.weights) if args.weights else None
    tm = compile_model(graph, weights=weights, seed=args.seed, mode="train",
                       loss="cross_entropy", optimizer=args.optimizer, lr=args.lr,
                       momentum=args.momentum, weight_decay=args.weight_decay,
                       freeze=tuple(args.freeze or ()))
    out_classes = graph.node(next(iter(graph.outputs.values()))).type.shape[0]
    if data.classes > out_classes:
        raise CliError(f"{args.data}: labels go up to {data.classes - 1}, but network "
                       f"{graph.name!r} has {out_classes} classes (--param classes=...)")
    evaluator = tm.inference()
    schedule = Schedule(args.schedule, warmup=args.warmup)
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = -(-len(data.train_y) // args.batch)
    total = steps_per_epoch * args.epochs
    print(f"training {graph.name} on {args.data}: {len(data.train_y)} training and "
          f"{len(data.test_y)} test images, {args.epochs} epochs of {steps_per_epoch} steps "
          f"(batch {args.batch}, {args.optimizer}, lr {args.lr:g})", file=sys.stderr)
    for epoch in range(args.epochs):
        order = rng.permutation(len(data.train_y))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                   unit="step", file=sys.stderr, disable=args.quiet)
        seen, start, losses = 0, time.perf_counter(), []
        for k in bar:
            idx = order[k * args.batch:(k + 1) * args.batch]
            x, y = data.train_x[idx], data.train_y[idx]
            lr = schedule.lr(args.lr, tm.steps_taken, total)
            losses.append(tm.train_step(x, y, lr=lr))
            seen += len(idx)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
        bar.close()
        evaluator.set_params(tm.params)
        acc = accuracy(evaluator, data.test_x, data.test_y, 256)
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, test accuracy {acc:.4f}",
              file=sys.stderr)
    if args.save:
        tm.save_weights(args.save)
        print(f"wrote {args.save}", file=sys.stderr)
    print(f"test accuracy: {acc:.4f}")
    return 0


def _configure_train(p: argparse.ArgumentParser, model_arg) -> None:
    model_arg(p)
    p.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn's 8x8 digits, resized) or an .npz of "
                        "'images' (N x [C x] H x W) and 'labels' (default digits)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    force_arg(p)


EXTRA["train"] = (cmd_train, "train a network with its compiled training step",
                  _configure_train)
