"""The compiled float32 backward kernels of convolutions (weight gradient as a GEMM summed over
the batch; input gradient as a transposed convolution) and dense layers against the float64
reference interpreter's gradients of the same training graph, at awkward shapes: strides 2 and
3 on odd sizes, groups whose channels fill no GEMM tile, depthwise, dilation, asymmetric
padding, rectangular kernels, batches that are not a power of two."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.runtime.reference import run_reference

from .gradcheck import training_graph


def reference_grads(source: str, x: np.ndarray, y: np.ndarray,
                    params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tg = training_graph(source, "cross_entropy")
    out = run_reference(tg, {"x": x.astype(np.float64), "labels": y.astype(np.float64)},
                    {k: v.astype(np.float64) for k, v in params.items()})
    return {k.removeprefix("grad:"): v for k, v in out.items() if k.startswith("grad:")}


def check_compiled_grads(shape: tuple[int, ...], body: str, batch: int, seed: int = 0) -> None:
    source = f"network t\ninput x: {' x '.join(map(str, shape))}\nx -> {body} -> output y\n"
    rng = np.random.default_rng(seed)
    graph = cnnc.load(source)
    params = {n.name: rng.standard_normal(n.type.shape).astype(np.float32)
              for n in graph.params()}
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    out_shape = graph.node(graph.outputs["y"]).type.shape
    y = rng.integers(0, out_shape[0], (batch,) + out_shape[1:])  # a class per pixel
    tm = cnnc.compile(graph, weights=params, mode="train", loss="cross_entropy")
    _, grads = tm.loss_and_grads(x, y)
    want = reference_grads(source, x, y, params)
    assert set(grads) == set(params)
    for name, g in grads.items():
        assert g.shape == want[name].shape, name
        # float32 sums of batch x pixels products: a few ulps of the largest gradient
        np.testing.assert_allclose(g, want[name], rtol=0,
                                   atol=2e-5 * np.abs(want[name]).max(), err_msg=name)


@pytest.mark.parametrize("shape, body, batch", [
    ((5, 9, 11), "conv(7, 3, stride=2, pad=(1, 0, 2, 1))", 3),       # asymmetric, odd sizes
    ((6, 8, 7), "conv(9, 3, groups=3, dilation=2, pad=2)", 2),      # 3 groups, dilation 2
    ((4, 7, 7), "conv(10, (1, 3), stride=(2, 1), pad=(0, 1, 1, 1))", 5),
    ((6, 9, 9), "conv(6, 3, groups=6, stride=2, pad=1)", 3),        # depthwise, stride 2
    ((8, 9, 9), "conv(13, 1, stride=2)", 2),                        # 1x1 stride 2
    ((3, 23, 23), "conv(20, 7, stride=3, pad=3, bias=false)", 2),   # a stem: 3 channels
    ((34, 5, 6), "conv(40, 3, pad=1) -> relu -> conv(17, 3, stride=2)", 3),
    ((4, 5, 5), "conv_transpose(6, 3, stride=2, pad=1)", 3),        # weight grad (dy, x)
    # input gradients (transposed convolutions: phases, or zero-stuffed where no phase split)
    ((5, 10, 9), "conv(8, 3, pad=1) -> conv(6, 3, stride=2, pad=(1, 0, 2, 1))", 2),
    ((4, 11, 11), "conv(6, 1) -> conv(6, 3, groups=2, stride=3, pad=1)", 3),
    ((4, 9, 8), "conv(6, 1) -> conv(5, 3, dilation=2, pad=(2, 1, 0, 2))", 2),
    ((6, 9, 9), "conv(6, 1) -> conv(6, 3, groups=6, stride=2, pad=1)", 2),
    ((4, 8, 8), "conv(8, 3, pad=1) -> conv(16, 1, stride=2)", 3),
    ((4, 8, 10), "conv(8, 3, pad=1) -> conv(13, 3, stride=2, pad=1)", 3),
    ((3, 7, 9), "conv(6, 1) -> conv(7, 3, pad=(0, 1, 2, 1))", 2),
    ((6, 4, 4), "flatten -> dense(11)", 7),
])
def test_compiled_gradients_match_the_float64_reference(shape, body, batch):
    check_compiled_grads(shape, body, batch)
