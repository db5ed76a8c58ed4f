"""Convolution's rules live in its package (``compiler/ops/conv/``) and the kernels floor:
which kernel computes a shape (``channelwise``), the 16-channel output padding (``TILE_K``),
``same`` padding, the algorithms. A reader looking for one of them finds it there, and
nowhere else restates it."""

from __future__ import annotations

import re
from pathlib import Path

from cnnc.compiler.ops import get_op
from cnnc.compiler.ops.conv import ALGORITHMS
from cnnc.compiler.ops.conv.padding import resolve_pads, same_pads

ROOT = Path(__file__).resolve().parents[2]
HOMES = ("compiler/ops/conv/", "compiler/kernels/")
#: Facts of convolution and how code restates them.
RESTATED = {
    "the channel-wise kernel choice": re.compile(r"\bchannelwise\("),
    "the 16-channel output padding": re.compile(r"\bTILE_K\b|//\s*16\)\s*\*"),
    "same padding's output size": re.compile(r"-\(-\s*size\s*//"),
    "an algorithm list": re.compile(r"\(\s*\"direct\",\s*\"im2col\"\s*\)"),
}


def test_no_module_outside_the_conv_package_restates_its_rules():
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(HOMES) or rel.startswith(("tests/", ".venv/", "bench/")):
            continue
        text = path.read_text(encoding="utf-8")
        found += [f"{rel}: {fact}" for fact, pattern in RESTATED.items()
                  if pattern.search(text)]
    assert not found, found


def test_the_ops_list_their_algorithm_objects():
    for op in ("conv", "conv_transpose"):
        assert get_op(op).algorithms == ALGORITHMS
    names = [a.name for a in ALGORITHMS]
    assert names == ["direct", "channelwise", "im2col"]


def test_same_padding_is_the_one_formula_of_the_dsl_and_onnx():
    """``pad=same`` of the DSL is ``same_pads`` (SAME_UPPER); SAME_LOWER puts the odd row
    first. out = ceil(in / stride) in both."""
    for size, k, s, d in ((7, 3, 2, 1), (8, 4, 3, 2), (5, 1, 1, 1), (10, 5, 4, 1)):
        upper = same_pads((size, size), (k, k), (s, s), (d, d))
        lower = same_pads((size, size), (k, k), (s, s), (d, d), upper=False)
        assert resolve_pads("same", (k, k), (s, s), (d, d), (size, size)) == upper
        assert (upper[0], upper[2]) == (lower[2], lower[0])
        span = d * (k - 1) + 1
        assert (size + upper[0] + upper[2] - span) // s + 1 == -(-size // s)
