"""Every op lowered to generated kernels, against the float64 reference.

Compile time dominates (1-3 s per distinct kernel), so one network holds every op with awkward
attributes, and hypothesis draws few (derandomized, hence disk-cached) examples. Kernels take
the batch size as an argument: batch 1 and batch 9 share them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.compiler.ops import ShapeError
from cnnc.dsl.errors import DslError
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

ALL_OPS = """
network allops
input image: 5 x 13 x 11
input other: 6 x 13 x 11
a = image -> conv(6, 3, stride=(2,1), pad=(1,0,2,1), dilation=(1,2)) -> batchnorm -> relu6
b = image -> conv(6, 3, pad=same) -> leaky_relu(0.1)
c = a -> upsample(2, mode=bilinear)
c2 = a -> upsample((2, 3)) -> relu
c3 = a -> upsample(3, mode=bilinear, align_corners=true)
d = b + other
d2 = b - other
e = d -> maxpool(3, stride=2, pad=1, ceil_mode=true, dilation=1) -> sigmoid
e2 = d2 -> minpool(2, stride=1, dilation=2)
f = d -> avgpool(3, stride=2, pad=1, ceil_mode=true, count_include_pad=false) -> tanh
f2 = d -> avgpool(2, stride=2, pad=1) -> lppool(2, stride=1) -> abs
g = concat(e, f) -> lrn(size=3) -> groupnorm(3) -> swish -> softmax
h = g -> conv_transpose(4, 3, stride=2, pad=1, output_padding=1) -> gelu -> hard_swish
h2 = g -> conv_transpose(6, (2, 3), stride=(1, 2), groups=3, dilation=2, bias=false)
i = h -> pad((1,2,0,3), value=0.5) -> flip -> lppool(2) -> hard_sigmoid
i2 = i -> conv(4, 1, groups=4) -> gelu(approximate=tanh) -> flip(axis=vertical)
j = i -> globalavgpool -> flatten -> dense(7) -> log_softmax
j2 = e2 -> globalmaxpool -> reshape((3, 2)) -> softmax(axis=1)
k = i * (i -> globalmaxpool)
batchnorm(j) -> dropout -> output o1
j2 -> output o2
k -> output o3
c -> output o4
c2 -> output o5
c3 -> output o6
f2 -> output o7
h2 -> output o8
i2 -> output o9
"""


def _random_inputs(graph, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch,) + graph.node(nid).type.shape).astype(np.float32)
            for name, nid in graph.inputs.items()}


def assert_matches_reference(model, batch: int, seed: int = 0, tol: float = 2e-5) -> None:
    x = _random_inputs(model.graph, batch, seed)
    got = model.run(x)
    want = run_reference(model.graph, x, model.params)
    for name, ref in want.items():
        assert got[name].shape == ref.shape, name
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(got[name] - ref).max())
        assert err <= tol * scale, f"output {name}: max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("lowering", ["direct", "im2col"])
def test_every_op_matches_reference(lowering):
    model = compile_model(ALL_OPS, lowering=lowering, seed=3)
    ops = {n.op for n in model.graph.nodes()}
    assert {"conv", "conv_transpose", "maxpool", "minpool", "avgpool", "lppool", "upsample",
            "globalavgpool", "globalmaxpool", "dense", "softmax", "log_softmax", "batchnorm",
            "groupnorm", "lrn", "add", "sub", "mul", "concat", "pad", "flip", "dropout",
            "flatten", "reshape"} <= ops
    for batch in (1, 9):
        assert_matches_reference(model, batch, seed=batch)


@pytest.mark.parametrize("level", (0, 2))
def test_every_op_within_its_float32_error_bound(level):
    """`cnnc check` on every op: each kernel alone within its op's ``error_bound`` (at -O0 each
    op is its own kernel; at -O2 with fused epilogues and blocked layouts)."""
    from cnnc.runtime.check import check_model, format_rows

    model = compile_model(ALL_OPS, seed=3, opt_level=level)
    rows = check_model(model, batch=3)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
    assert max(r.fraction for r in rows) > 0.01  # the bounds are not vacuous


def test_distance_and_broadcast_activations():
    src = """
network twins
input left: 3 x 7 x 5
input right: 3 x 7 x 5
tower = left -> relu
a = left -> flatten
b = right -> flatten -> hard_sigmoid(alpha=0.3, beta=0.4)
distance(a, b) -> output d1
distance(a, b, p=3) -> output d3
(left * (right -> globalavgpool)) + (right -> globalavgpool -> sigmoid) -> output se
"""
    model = compile_model(src)
    for batch in (1, 9):
        assert_matches_reference(model, batch, seed=batch)


# -- hypothesis: convolutions and pools with drawn shapes and attributes -----------------------

@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 6))
    k = groups * draw(st.integers(1, 7))
    if draw(st.booleans()):  # depthwise
        groups, k = c, c
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h, w = draw(st.integers(4, 19)), draw(st.integers(4, 19))
    return c, k, (r, s), pads, stride, dilation, groups, (h, w)


@settings(max_examples=5, derandomize=True, deadline=None)
@given(conv_cases(), st.sampled_from(["direct", "im2col"]), st.sampled_from([1, 9]))
def test_conv_drawn_shapes(case, lowering, batch):
    c, k, (r, s), pads, stride, dilation, groups, (h, w) = case
    src = (f"network cv\ninput x: {c} x {h} x {w}\n"
           f"x -> conv({k}, ({r}, {s}), stride={stride}, pad={pads}, dilation={dilation}, "
           f"groups={groups}) -> relu -> output y\n")
    try:
        model = compile_model(src, lowering=lowering, seed=1)
    except (DslError, ShapeError):
        return  # window larger than the padded input: rejected by the shape rule
    assert_matches_reference(model, batch)


@st.composite
def pool_cases(draw):
    op = draw(st.sampled_from(["maxpool", "avgpool", "minpool", "lppool"]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if op in ("maxpool", "minpool") \
        else (1, 1)
    span = (dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1)
    pads = (draw(st.integers(0, span[0] // 2)), draw(st.integers(0, span[1] // 2)),
            draw(st.integers(0, span[0] // 2)), draw(st.integers(0, span[1] // 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    extra = f", ceil_mode={'true' if draw(st.booleans()) else 'false'}"
    if op != "avgpool" and op != "lppool":
        extra += f", dilation={dil}"
    if op == "avgpool":
        extra += f", count_include_pad={'true' if draw(st.booleans()) else 'false'}"
    if op == "lppool":
        extra += f", p={draw(st.sampled_from([1, 2, 3]))}"
    c, h, w = draw(st.integers(1, 5)), draw(st.integers(3, 17)), draw(st.integers(3, 17))
    return f"{op}(({kh}, {kw}), stride={stride}, pad={pads}{extra})", (c, h, w)


@settings(max_examples=5, derandomize=True, deadline=None)
@given(pool_cases(), st.sampled_from([1, 9]))
def test_pool_drawn_attributes(case, batch):
    layer, (c, h, w) = case
    src = f"network pl\ninput x: {c} x {h} x {w}\nx -> {layer} -> output y\n"
    try:
        model = compile_model(src)
    except (DslError, ShapeError):
        return
    assert_matches_reference(model, batch)


@pytest.mark.parametrize("w", [4, 5, 6, 7])
@settings(max_examples=3, derandomize=True, deadline=None)
@given(st.integers(3, 6), st.sampled_from(["avx2", "avx512"]), st.sampled_from(["auto", "NHWC"]))
def test_blocked_global_pools_for_every_row_remainder(w, h, target, layout):
    """The channel-blocked global pools run four accumulators a row (pixel ``w`` into ``w %
    4``, the row's last ``W % 4`` into the first): every remainder, 8 and 16 lanes, NCHWc and
    NHWC storage, within the ops' error bounds (``cnnc check``)."""
    from cnnc.runtime.check import check_model, format_rows

    src = (f"network gp\ninput x: 3 x {h} x {w}\ny = x -> conv(24, 1) -> relu\n"
           "y -> globalavgpool -> output a\ny -> globalmaxpool -> output m\n")
    model = compile_model(src, target=target, layout=layout, seed=1)
    plan = model.executor.plan
    pools = [s for s in plan.steps if s.op.startswith("global")]
    assert len(pools) == 2 and all(  # the pools read the convolution's blocked storage
        plan.buffers.storage.get(plan.graph.node(s.node).inputs[0]) is not None for s in pools)
    rows = check_model(model, batch=3)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


@pytest.mark.parametrize("hw", [5, 24])
@pytest.mark.parametrize("target", ["avx2", "avx512"])
def test_blocked_elementwise_tasks_of_rows_and_of_planes(hw, target):
    """A channel-blocked element-wise kernel (a squeeze-and-excitation gate's product) takes a
    block's whole plane a task where it holds at most ``PLANE_TASK_FLOATS`` floats (5 x 5), a
    row a task otherwise (24 x 24): both within the ops' error bounds, at 8 and 16 lanes,
    batch 3."""
    from cnnc.compiler.kernels.elementwise import PLANE_TASK_FLOATS
    from cnnc.runtime.check import check_model, format_rows

    lanes = 16 if target == "avx512" else 8
    assert (hw * hw * lanes <= PLANE_TASK_FLOATS) == (hw == 5)
    src = (f"network ew\ninput x: 8 x {hw} x {hw}\ny = x -> conv(32, 1) -> relu\n"
           "g = y -> globalavgpool -> conv(8, 1) -> relu -> conv(32, 1) -> sigmoid\n"
           "(y * g) -> conv(16, 1) -> output out\n")
    model = compile_model(src, target=target, seed=4)
    plan = model.executor.plan
    muls = [s for s in plan.steps if s.op == "mul"]
    assert len(muls) == 1  # the product reads the blocked storage of y
    assert plan.buffers.storage.get(plan.graph.node(muls[0].node).inputs[0]) is not None
    rows = check_model(model, batch=3)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


def test_odd_sizes_71x71_batch_9():
    src = """
network odd
input x: 13 x 71 x 71
x -> conv(59, 3, pad=(0, 1, 2, 1)) -> batchnorm -> relu -> maxpool(3, stride=2, ceil_mode=true)
  -> output y
"""
    model = compile_model(src, seed=2)
    assert_matches_reference(model, 9)
