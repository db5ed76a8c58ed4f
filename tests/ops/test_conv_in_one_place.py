"""Convolution's rules live in its package (``compiler/ops/conv/``) and the kernels floor:
which kernel computes a shape (``channelwise``), the 16-channel output padding (``TILE_K``),
``same`` padding, the algorithms. A reader looking for one of them finds it there, and
nowhere else restates it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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
    assert names == ["direct", "channelwise", "im2col", "winograd_f4", "winograd_f2",
                     "implicit_gemm", "gpu_direct"]


def test_same_padding_is_the_one_formula_of_the_dsl_and_onnx():
    """``pad=same`` of the DSL is ``same_pads`` (SAME_UPPER); SAME_LOWER puts the odd row
    first. Checked against the definition, not the formula: the least total padding whose
    output is ceil(in / stride), split in halves; and against ONNX Runtime's auto_pad."""
    for size, k, s, d in ((7, 3, 2, 1), (8, 4, 3, 2), (5, 1, 1, 1), (10, 5, 4, 1), (6, 2, 1, 3)):
        upper = same_pads((size, size), (k, k), (s, s), (d, d))
        lower = same_pads((size, size), (k, k), (s, s), (d, d), upper=False)
        assert resolve_pads("same", (k, k), (s, s), (d, d), (size, size)) == upper
        span, want = d * (k - 1) + 1, -(-size // s)
        total = upper[0] + upper[2]
        assert min(p for p in range(0, span + s) if (size + p - span) // s + 1 >= want) == total
        assert (upper[0], upper[2]) == (total // 2, total - total // 2)
        assert (lower[0], lower[2]) == (upper[2], upper[0])


def test_same_padding_matches_onnx_runtime():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    for auto, upper in (("SAME_UPPER", True), ("SAME_LOWER", False)):
        x = rng.standard_normal((1, 2, 7, 8)).astype(np.float32)
        w = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto, strides=[2, 3])
        graph = helper.make_graph(
            [node], "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        pads = same_pads((7, 8), (4, 3), (2, 3), (1, 1), upper=upper)
        attrs = {"out_channels": 3, "kernel": (4, 3), "stride": (2, 3), "pads": pads,
                 "dilation": (1, 1), "groups": 1}
        want = get_op("conv").reference([x, w], attrs)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
