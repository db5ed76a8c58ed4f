"""Kernels whose sizes are runtime arguments: the same op at two shapes compiles to one kernel
module (its name carries the hash of its source, so one name is one compiled kernel), and each
kernel stays within its op's float32 error bound of the float64 reference at both shapes.

The forward ops (padding in its three modes, flip, instance and group norm, LRN, the
zero-stuffing before a transposed convolution, distance, bilinear resizing with aligned
corners, LRN on channel-blocked storage) run in one inference network; the backward kernels of
padding, group norm, LRN and a broadcast product (reduce_to) in one small training network.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.runtime.check import check_model, check_plan, format_rows
from cnnc.runtime.weights import init_params

#: (channels, height, width) of the two compiles: every size differs.
SHAPES = [(4, 5, 6), (6, 7, 3)]


def forward_source(c: int, h: int, w: int) -> str:
    return f"""network sizes
input x: {c} x {h} x {w}
input e1: {h * w}
input e2: {h * w}
x -> pad((1, 2, 0, 1)) -> output a
x -> pad((1, 0, 2, 1), mode=reflect) -> output b
x -> pad((0, 3, 1, 0), mode=edge) -> output c
x -> flip(horizontal) -> output f
x -> instance_norm -> output i
x -> groupnorm(2) -> output g
x -> lrn(size=3) -> output l
x -> conv({c + 13}, 3, pad=1) -> lrn(size=3, beta=0.6) -> conv(8, 3, pad=1) -> output lb
x -> conv_transpose(3, 3, stride=2, pad=(1, 3)) -> output t
x -> upsample(2, mode=bilinear, align_corners=true) -> output u
distance(e1, e2) -> output d
"""


def backward_source(c: int, h: int, w: int) -> str:
    return f"""network sizes_train
input x: {c} x {h} x {w}
a = x -> conv({c}, 1) -> pad((1, 0, 2, 1), mode=reflect) -> groupnorm(2) -> lrn(3)
gate = a -> globalavgpool -> sigmoid
mul(a, gate) -> pad((0, 1, 1, 0)) -> conv(2, 1) -> output y
"""


def modules(model, prefix: str) -> dict[str, str]:
    """The kernel module of each call whose kernel's name starts with ``prefix``, by step."""
    return {f"{step.name}/{call.kernel}": call.fn.path.parent.name
            for step in model.plan.steps for call in step.calls
            if call.fn.path.parent.name.startswith(prefix)}


def random_params(graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * 0.5 + (1.0 if k.endswith("weight") else 0.0))
            .astype(np.float32) for k, v in init_params(graph).items()}


@pytest.fixture(scope="module")
def forward_models():
    return [cnnc.compile(forward_source(*s), seed=3) for s in SHAPES]


@pytest.mark.parametrize("prefix, count", [("k_pad", 3), ("k_flip", 1), ("k_instance_norm", 2),
                                           ("k_lrn", 2), ("k_zero_stuff", 1),
                                           ("k_distance", 1), ("k_upsample", 1)])
def test_two_shapes_share_one_kernel_module(forward_models, prefix, count):
    """Each of these kernels is one module at both shapes (instance norm and group norm are
    the same kernel: group norm with a group per channel; LRN between convolutions runs on
    channel-blocked storage, lane by lane for this exponent, and on its own input as NCHW)."""
    first, second = (modules(m, prefix) for m in forward_models)
    assert len(first) == count, first
    assert first == second


@pytest.mark.parametrize("at", range(len(SHAPES)))
def test_forward_kernels_within_their_error_bounds(forward_models, at):
    rows = check_model(forward_models[at], batch=3)
    assert {r.op for r in rows} >= {"pad", "flip", "instance_norm", "groupnorm", "lrn",
                                    "conv_transpose", "distance", "upsample"}
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


def test_backward_kernels_share_one_module_and_stay_within_their_bounds():
    models = []
    for at, shape in enumerate(SHAPES):
        graph = cnnc.load(backward_source(*shape))
        tm = cnnc.compile(graph, weights=random_params(graph, at), mode="train", loss="mse")
        rng = np.random.default_rng(at)
        feed = {name: rng.standard_normal((2,) + tm.plan.graph.node(nid).type.shape)
                .astype(np.float32) for name, nid in tm.plan.graph.inputs.items()}
        rows = check_plan(tm.plan, tm.executor, tm.params, feed)
        assert {"pad_grad", "groupnorm_input_grad", "groupnorm_weight_grad",
                "lrn_grad", "reduce_to"} <= {r.op for r in rows}
        assert all(r.ok for r in rows), format_rows(rows, 1.0)
        models.append(tm)
    for prefix in ("k_pad_grad", "k_groupnorm_input_grad", "k_groupnorm_weight_grad",
                   "k_lrn_grad", "k_reduce_to"):
        first, second = (modules(m, prefix) for m in models)
        assert first, prefix
        assert first == second, prefix
