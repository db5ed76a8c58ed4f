"""The seeds' tables and worked examples about whole networks, as exact oracles.

Sources (/work/shared/seeds): 001's AlexNet parameter table (227x227 input, 62,378,344 in all);
000's corrections of the LeNet-like network of 003 (608, 3216, 48120, 10164, 850); 004's
inception module of Figure 6.13 (192x28x28 -> 256x28x28); 000's bottleneck cost example
(a 5x5 convolution to 32 maps of 28x28x192 costs 120,422,400 multiplies, 12,443,648 with a
16-channel 1x1 bottleneck); and 004's Sobel edge detection (Section 6.2, Figure 6.1).
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.dsl.builder import load_network, load_zoo
from cnnc.runtime.reference import run_reference
from cnnc.runtime.summary import summarize
from cnnc.runtime.weights import init_params

# Seed 001: layer, tensor size (H x W x C as printed), weights, biases, parameters.
ALEXNET_001 = [
    ("conv1", (55, 55, 96), 34_848, 96, 34_944),
    ("pool1", (27, 27, 96), 0, 0, 0),
    ("conv2", (27, 27, 256), 614_400, 256, 614_656),
    ("pool2", (13, 13, 256), 0, 0, 0),
    ("conv3", (13, 13, 384), 884_736, 384, 885_120),
    ("conv4", (13, 13, 384), 1_327_104, 384, 1_327_488),
    ("conv5", (13, 13, 256), 884_736, 256, 884_992),
    ("pool3", (6, 6, 256), 0, 0, 0),
    ("fc1", (4096,), 37_748_736, 4_096, 37_752_832),
    ("fc2", (4096,), 16_777_216, 4_096, 16_781_312),
    ("fc3", (1000,), 4_096_000, 1_000, 4_097_000),
]


def _chw(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


def test_alexnet_matches_seed_001_row_by_row():
    graph = load_zoo("alexnet")
    assert graph.node(graph.inputs["image"]).type.shape == (3, 227, 227)
    s = summarize(graph)
    rows = [r for r in s.rows if r.op in ("conv", "maxpool", "dense")]
    params = graph.param_by_name()
    got = []
    for r in rows:
        w = params.get(f"{r.name}.weight")
        b = params.get(f"{r.name}.bias")
        got.append((r.name, r.shape, w.type.size if w else 0, b.type.size if b else 0, r.params))
    assert got == [(n, _chw(shape), w, b, p) for n, shape, w, b, p in ALEXNET_001]
    assert s.params == 62_378_344


def test_alexnet_two_gpu_groups_halve_conv2_4_5():
    full, grouped = (summarize(load_zoo(n)) for n in ("alexnet", "alexnet_groups"))
    by_name = {r.name: r.params for r in grouped.rows}
    assert by_name["conv2"] == 5 * 5 * 48 * 256 + 256  # each GPU's kernels see 48 maps
    assert by_name["conv3"] == 3 * 3 * 256 * 384 + 384  # conv3 crosses GPUs: full
    assert by_name["conv4"] == 3 * 3 * 192 * 384 + 384
    assert by_name["conv5"] == 3 * 3 * 192 * 256 + 256
    assert full.params - grouped.params == 614_400 // 2 + 1_327_104 // 2 + 884_736 // 2
    assert [r.shape for r in grouped.rows] == [r.shape for r in full.rows]


def test_lenet_like_network_of_seeds_000_and_003():
    s = summarize(load_zoo("lenet_rgb"))
    learned = [r.params for r in s.rows if r.params]
    assert learned == [608, 3_216, 48_120, 10_164, 850]  # 000's corrected counts
    # 003's activation shapes and sizes (H x W x C there).
    table = [((8, 28, 28), 6_272), ((8, 14, 14), 1_568), ((16, 10, 10), 1_600),
             ((16, 5, 5), 400), ((120,), 120), ((84,), 84), ((10,), 10)]
    assert [(r.shape, r.activations) for r in s.rows if r.activations] == table


def test_lenet5_layers():
    s = summarize(load_zoo("lenet5"))
    assert [r.params for r in s.rows if r.params] == [
        (5 * 5 * 1 + 1) * 6, (5 * 5 * 6 + 1) * 16, (5 * 5 * 16 + 1) * 120, 120 * 84 + 84,
        84 * 10 + 10]
    assert [r.shape for r in s.rows if r.op in ("conv", "avgpool")] == [
        (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120, 1, 1)]


# 004 Figure 6.13, written as the figure draws it.
INCEPTION_6_13 = """
network inception_6_13
input previous: 192 x 28 x 28

path1 = previous -> conv(64, 1) as p1_1x1 -> relu
path2 = previous -> conv(96, 1) as p2_1x1 -> relu -> conv(128, 3, pad=1) as p2_3x3 -> relu
path3 = previous -> conv(16, 1) as p3_1x1 -> relu -> conv(32, 5, pad=2) as p3_5x5 -> relu
path4 = previous -> maxpool(3, stride=1, pad=1) as p4_pool -> conv(32, 1) as p4_1x1 -> relu
concat(path1, path2, path3, path4) -> output activations
"""


def test_inception_module_of_004_figure_6_13():
    graph = load_network(INCEPTION_6_13)
    s = summarize(graph)
    shapes = {r.name: r.shape for r in s.rows}
    assert shapes["p1_1x1"] == (64, 28, 28)
    assert shapes["p2_1x1"] == (96, 28, 28) and shapes["p2_3x3"] == (128, 28, 28)
    assert shapes["p3_1x1"] == (16, 28, 28) and shapes["p3_5x5"] == (32, 28, 28)
    assert shapes["p4_pool"] == (192, 28, 28) and shapes["p4_1x1"] == (32, 28, 28)
    assert graph.node(graph.outputs["activations"]).type.shape == (256, 28, 28)
    assert s.params == ((192 + 1) * 64 + (192 + 1) * 96 + (9 * 96 + 1) * 128
                        + (192 + 1) * 16 + (25 * 16 + 1) * 32 + (192 + 1) * 32)
    # The paths are concatenated in order: the first 64 channels are path 1 alone.
    x = np.random.default_rng(0).standard_normal((1, 192, 28, 28))
    params = init_params(graph)
    out = run_reference(graph, {"previous": x}, params)["activations"]
    w, b = params["p1_1x1.weight"][:, :, 0, 0], params["p1_1x1.bias"]
    path1 = np.maximum(np.einsum("kc,nchw->nkhw", w, x) + b[None, :, None, None], 0)
    np.testing.assert_allclose(out[:, :64], path1, rtol=1e-10, atol=1e-12)
    pooled = np.max([np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
                     [:, :, i:i + 28, j:j + 28] for i in range(3) for j in range(3)], axis=0)
    w4, b4 = params["p4_1x1.weight"][:, :, 0, 0], params["p4_1x1.bias"]
    path4 = np.maximum(np.einsum("kc,nchw->nkhw", w4, pooled) + b4[None, :, None, None], 0)
    np.testing.assert_allclose(out[:, 224:], path4, rtol=1e-10, atol=1e-12)


def test_bottleneck_cost_example_of_000():
    naive = load_network("""
network naive
input x: 192 x 28 x 28
x -> conv(32, 5, pad=same) -> relu -> output y
""")
    bottleneck = load_network("""
network bottleneck
input x: 192 x 28 x 28
x -> conv(16, 1) -> relu -> conv(32, 5, pad=same) -> relu -> output y
""")
    assert summarize(naive).macs == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400
    assert summarize(bottleneck).macs == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 5 * 5 * 16 \
        == 12_443_648
    for g in (naive, bottleneck):
        assert g.node(g.outputs["y"]).type.shape == (32, 28, 28)


# -- edge detectors with fixed weights --------------------------------------------------------

SOBEL_V = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], float)
SCHARR_V = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]], float)


def _correlate_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    h, w = img.shape
    out = np.zeros((h - 2, w - 2))
    for i in range(h - 2):
        for j in range(w - 2):
            out[i, j] = np.sum(img[i:i + 3, j:j + 3] * k)
    return out


@pytest.mark.parametrize("name, kernel", [("sobel", SOBEL_V), ("scharr", SCHARR_V)])
def test_edge_detector_on_a_vertical_step(name, kernel):
    size = 12
    img = np.zeros((size, size))
    img[:, 5:] = 1.0  # dark left half, bright right half: a vertical edge
    rng = np.random.default_rng(3)
    noisy = img + 0.1 * rng.standard_normal(img.shape)
    graph = load_zoo(name, size=size)
    assert summarize(graph).params == 0  # fixed weights are not learned
    out = run_reference(graph, {"image": np.stack([img, noisy])[:, None]})
    for b, x in enumerate((img, noisy)):
        gv = _correlate_valid(x, kernel)
        gh = _correlate_valid(x, kernel.T)
        np.testing.assert_allclose(out["gradients"][b, 0], gv, atol=1e-12)
        np.testing.assert_allclose(out["gradients"][b, 1], gh, atol=1e-12)
        np.testing.assert_allclose(out["edges"][b, 0], np.abs(gv) + np.abs(gh), atol=1e-12)
    # On the clean step: only the two output columns whose windows straddle the edge respond,
    # each with the kernel's column sum (left minus right), and nothing is horizontal.
    edges = out["edges"][0, 0]
    assert np.all(edges[:, [3, 4]] == kernel[:, 0].sum())
    assert np.all(np.delete(edges, [3, 4], axis=1) == 0)
    assert np.all(out["gradients"][0, 1] == 0)
