"""How the kernels of a network's CUDA module are scheduled on a GPU: per kernel family, how many
launches run a thread per element, a block per row or tile, a thread per row (the CPU's
schedule) or one thread, and the launch geometry (blocks x threads) of each family's largest
launch. Printed without a GPU (``cuda_sources``' lowering, nothing is run).

    .venv/bin/python bench/gpu_schedules.py [--model resnet50] [--batch 32] [--train tiny]
"""

from __future__ import annotations

import argparse
from collections import Counter

import cnnc
from cnnc.compiler.backends.cuda.launch import Launcher, launch_shape
from cnnc.compiler.kernels.gpu_schedule import schedule_of
from cnnc.dsl.builder import load_zoo

TINY_RESNET = """network tiny_resnet
input image: 3 x 12 x 12

block basic(c) {
    y = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
           -> conv(c, 3, pad=1, bias=false) -> batchnorm
    return relu(y + in)
}
block down(c) {
    y = in -> conv(c, 3, stride=2, pad=1, bias=false) -> batchnorm -> relu
           -> conv(c, 3, pad=1, bias=false) -> batchnorm
    s = in -> conv(c, 1, stride=2, bias=false) -> batchnorm
    return relu(y + s)
}

image -> conv(4, 3, stride=2, pad=1, bias=false) -> batchnorm -> relu -> maxpool(2, stride=1)
      -> basic(4) -> down(8) -> globalavgpool -> flatten -> dense(3) -> output logits
"""


def step_launches(step, batch: int) -> list[tuple[str, str, tuple[int, int]]]:
    """``(kernel, schedule, (blocks, threads))`` of each kernel launch of a plan's ``step``
    at batch size ``batch`` (``gpu_schedule.schedule_of``, ``launch.launch_shape``)."""
    out = []
    for call in step.calls:
        if not isinstance(call.fn, Launcher):
            continue
        kernel = call.fn.kernel
        ints = {p.name: (a.ref or batch) if a.kind == "batch" else a.ref
                for p, a in zip(kernel.params, call.args) if p.kind == "int"}
        out.append((kernel.name, schedule_of(kernel), launch_shape(kernel, ints)))
    return out


def launches(plan, batch: int) -> list[tuple[str, str, str, tuple[int, int]]]:
    """``(step op, kernel, schedule, (blocks, threads))`` of every kernel launch of ``plan``."""
    return [(step.op, *launch) for step in plan.steps for launch in step_launches(step, batch)]


def report(title: str, rows: list[tuple[str, str, str, tuple[int, int]]]) -> None:
    print(f"## {title}: {len(rows)} launches")
    print("schedules:", dict(Counter(r[2] for r in rows)))
    families: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for op, _, schedule, shape in rows:
        families.setdefault((op.split("+")[0], schedule), []).append(shape)
    print(f"{'op':28} {'schedule':8} {'launches':>8}  largest launch (blocks x threads)")
    for (op, schedule), shapes in sorted(families.items()):
        b, t = max(shapes, key=lambda s: s[0] * s[1])
        print(f"{op:28} {schedule:8} {len(shapes):8}  {b} x {t}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-batch", type=int, default=8)
    args = ap.parse_args()
    plan = cnnc.compile(load_zoo(args.model), target="cuda-emu", warm=False).plan
    report(f"{args.model} inference, batch {args.batch}", launches(plan, args.batch))
    train = cnnc.compile(cnnc.load(TINY_RESNET), mode="train", target="cuda-emu",
                         loss="cross_entropy", optimizer="sgd", lr=0.05, momentum=0.9,
                         warm=False)
    report(f"tiny_resnet training step, batch {args.train_batch}",
           launches(train.plan, args.train_batch))


if __name__ == "__main__":
    main()
