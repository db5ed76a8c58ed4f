"""A longer differential fuzz than the suite's (not collected by pytest; run it by hand after a
change to the passes or the kernels):

    .venv/bin/python tests/fuzz/fuzz_random_networks.py FIRST_SEED COUNT

Each seed builds a random network from a broad palette (convolutions with every padding form,
non-square kernels and strides, dilation, groups and depthwise; transposed convolutions,
declined shapes included; pools with ceil mode and count_include_pad; squeeze-excitation gates,
residual adds, concatenations of ragged widths, channel shuffles, depth-to-space, upsampling,
padding modes, LRN, group norm, every activation) on a small odd-sized input, compiles it at
-O0, -O1, -O2, -O2 with im2col forced, -O2 with every activation plain, for the AVX2 target, and
with NCHW8c, NCHW16c and NHWC forced, and compares each with the float64 reference. Prints each
mismatch or crash with its program; exits 1 if there was one. Session 14: seeds 0-29 found
nothing (nor did 220 networks of a first draft of this generator). Session 15, with the NCHW8c
and NCHW16c configurations: seeds 0-69, nothing.
"""

from __future__ import annotations

import random
import sys
import traceback

import numpy as np

from cnnc.dsl.builder import load_network
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

ACTIVATIONS = ["relu", "relu6", "swish", "sigmoid", "hard_swish", "leaky_relu", "gelu", "tanh",
               "elu", "mish", "hard_sigmoid", "softplus", "selu"]
CONFIGS = ({"opt_level": 0}, {"opt_level": 1}, {"opt_level": 2},
           {"opt_level": 2, "lowering": "im2col"}, {"opt_level": 2, "layout": "NCHW"},
           {"opt_level": 2, "target": "avx2"}, {"opt_level": 2, "layout": "NCHW8c"},
           {"opt_level": 2, "layout": "NCHW16c", "target": "avx2"},
           {"opt_level": 2, "layout": "NHWC", "target": "avx2"})
KINDS = ["conv", "conv", "depthwise", "grouped", "transposed", "transposed_declined", "maxpool",
         "avgpool", "residual", "se_gate", "max_gate", "concat", "shuffle", "activation",
         "batchnorm", "upsample", "depth_to_space", "pad", "lrn", "groupnorm", "concat_shuffle",
         "non_square", "non_square", "same"]


def _layer(rng: random.Random, kind: str, i: int, cur: str, c: int) -> tuple[list[str], int]:
    """DSL lines computing ``t<i>`` from ``cur`` (``c`` channels), and its channel count."""
    t = f"t{i}"
    act = rng.choice(ACTIVATIONS + [""])
    tail = f" -> {act}" if act else ""
    if kind == "conv":
        k, s, d = rng.choice([1, 1, 3, 3, 5, 2]), rng.choice([1, 1, 2]), rng.choice([1, 1, 2])
        p, kc = rng.choice([0, k // 2, (k - 1) * d // 2]), rng.choice([1, 5, 8, 16, 17, 24, 32])
        bn = " -> batchnorm" if rng.random() < 0.4 else ""
        return [f"{t} = {cur} -> conv({kc}, {k}, stride={s}, pad={p}, dilation={d}){bn}{tail}"], kc
    if kind == "non_square":
        k = rng.choice(["(1, 3)", "(3, 1)", "(2, 3)", "(1, 5)"])
        s = rng.choice(["1", "(1, 2)", "(2, 1)", "3", "2"])
        p = rng.choice(["(0, 1)", "(1, 0)", "(0, 1, 1, 0)", "(1, 1, 0, 0)", "0"])
        g = rng.choice([1, 1, c])
        kc = c if g == c else rng.choice([4, 8, 19, 32])
        return [f"{t} = {cur} -> conv({kc}, {k}, stride={s}, pad={p}, groups={g}){tail}"], kc
    if kind == "same":
        k, s, kc = rng.choice([2, 3, 4, 5]), rng.choice([1, 2]), rng.choice([8, 12, 16])
        return [f"{t} = {cur} -> conv({kc}, {k}, stride={s}, pad=same){tail}"], kc
    if kind == "depthwise":
        k, s = rng.choice([3, 5]), rng.choice([1, 2])
        return [f"{t} = {cur} -> conv({c}, {k}, stride={s}, pad={k // 2}, groups={c}) "
                f"-> batchnorm{tail}"], c
    if kind == "grouped":
        g = rng.choice([g for g in (2, 4, 8) if c % g == 0] or [1])
        kc = g * rng.choice([1, 2, 4, 8])
        return [f"{t} = {cur} -> conv({kc}, 3, pad=1, groups={g}){tail}"], kc
    if kind == "transposed":
        k, s, p, op = rng.choice([(2, 2, 0, 0), (3, 2, 1, 1), (4, 2, 1, 0), (3, 1, 1, 0),
                                  (3, 2, 0, 0)])
        kc = rng.choice([4, 8, 13, 16])
        return [f"{t} = {cur} -> conv_transpose({kc}, {k}, stride={s}, pad={p}, "
                f"output_padding={op}){tail}"], kc
    if kind == "transposed_declined":  # shapes the phase decomposition leaves zero-stuffed
        k, s, p, op, d = rng.choice([("(2, 3)", "(2, 1)", "0", "0", 1), ("3", "3", "1", "2", 1),
                                     ("3", "2", "2", "1", 1), ("3", "2", "1", "0", 2),
                                     ("(3, 2)", "(1, 2)", "(1, 0)", "0", 1)])
        kc = rng.choice([4, 8, 13])
        g = 2 if c % 2 == 0 and kc % 2 == 0 and rng.random() < 0.3 else 1
        return [f"{t} = {cur} -> conv_transpose({kc}, {k}, stride={s}, pad={p}, "
                f"output_padding={op}, dilation={d}, groups={g}){tail}"], kc
    if kind in ("maxpool", "avgpool"):
        k, s = rng.choice([2, 3]), rng.choice([1, 2])
        extra = rng.choice(["", ", ceil_mode=true"]) if kind == "maxpool" else \
            f", count_include_pad={rng.choice(['true', 'false'])}"
        return [f"{t} = {cur} -> {kind}({k}, stride={s}, pad={rng.choice([0, k // 2])}{extra})"], c
    if kind == "residual":
        return [f"r{i} = {cur} -> conv({c}, 3, pad=1) -> batchnorm",
                f"{t} = {rng.choice(['relu', 'swish', ''])}(r{i} + {cur})"], c
    if kind == "se_gate":
        return [f"g{i} = {cur} -> globalavgpool -> conv({max(1, c // 4)}, 1) -> swish "
                f"-> conv({c}, 1) -> sigmoid", f"{t} = {cur} * g{i}"], c
    if kind == "max_gate":
        return [f"g{i} = {cur} -> globalmaxpool -> sigmoid", f"{t} = {cur} * g{i}"], c
    if kind == "concat":
        a, b = rng.choice([3, 8, 16]), rng.choice([5, 8, 16])
        return [f"{t} = concat({cur} -> conv({a}, 1){tail}, {cur} -> conv({b}, 3, pad=1), "
                f"{cur})"], a + b + c
    if kind == "concat_shuffle":
        return [f"a{i} = {cur} -> conv({c}, 1) -> relu",
                f"{t} = concat({cur}, a{i}) -> channel_shuffle(2)"], 2 * c
    if kind == "shuffle":
        g = rng.choice([g for g in (2, 3, 4) if c % g == 0] or [1])
        return [f"{t} = {cur} -> channel_shuffle({g})"], c
    if kind == "activation":
        return [f"{t} = {cur} -> {rng.choice(ACTIVATIONS)}"], c
    if kind == "batchnorm":
        return [f"{t} = {cur} -> batchnorm{tail}"], c
    if kind == "upsample":
        return [f"{t} = {cur} -> upsample(2)"], c
    if kind == "depth_to_space" and c % 4 == 0:
        return [f"{t} = {cur} -> depth_to_space(2)"], c // 4
    if kind == "pad":
        return [f"{t} = {cur} -> pad(1, mode={rng.choice(['constant', 'reflect', 'edge'])})"], c
    if kind == "lrn":
        return [f"{t} = {cur} -> lrn(size=3)"], c
    if kind == "groupnorm":
        return [f"{t} = {cur} -> groupnorm({rng.choice([g for g in (1, 2, 4) if c % g == 0])})"], c
    return [f"{t} = {cur} -> identity"], c


def random_network(seed: int) -> tuple[str, tuple[int, int, int]]:
    """A random network's DSL source and its input shape."""
    rng = random.Random(seed)
    c = rng.choice([1, 2, 3, 4, 8, 11, 16])
    shape = (c, rng.randint(5, 17), rng.randint(5, 17))
    lines, cur = [], "t0"
    for i in range(1, rng.randint(2, 6) + 1):
        new, c = _layer(rng, rng.choice(KINDS), i, cur, c)
        lines += new
        cur = f"t{i}"
    end = rng.choice(["", " -> globalavgpool -> flatten -> dense(5)", " -> flatten -> dense(3)",
                      " -> softmax"])
    src = "network fuzz\ninput t0: {} x {} x {}\n{}\n{}{} -> output y\n".format(
        *shape, "\n".join(lines), cur, end)
    return src, shape


def check(seed: int) -> str | None:
    """None when every configuration agrees with the reference (or the program is refused
    with a located error, as it may be: a window larger than its input); else a report."""
    src, shape = random_network(seed)
    try:
        graph = load_network(src)
    except Exception as e:  # noqa: BLE001 - a refusal must be a located DSL error
        return None if str(e).startswith("<string>:") else f"build: {e!r}\n{src}"
    x = np.random.default_rng(seed).standard_normal((2,) + shape).astype(np.float32)
    try:
        model = compile_model(graph, seed=3, opt_level=0)
        want = run_reference(graph, {"t0": x}, model.params)["y"]
        scale = max(1.0, float(np.abs(want).max()))
        for config in CONFIGS:
            got = compile_model(graph, seed=3, **config)(x)
            err = float(np.abs(got - want).max()) / scale
            if not err < 1e-3:
                return f"{config}: relative error {err:.3g}\n{src}"
    except Exception:  # noqa: BLE001 - a crash is what the fuzz looks for
        return f"crash:\n{traceback.format_exc(limit=4)}\n{src}"
    return None


def main(first: int, count: int) -> int:
    failures = 0
    for seed in range(first, first + count):
        report = check(seed)
        if report is not None:
            failures += 1
            print(f"seed {seed}: {report}", flush=True)
    print(f"{count} seeds from {first}: {failures} failing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
