"""Every zoo network: exact parameter counts, end-to-end shapes, a float64 reference run at a
reduced size, and `cnnc summary NAME`.

Published counts are torchvision's (`sum(p.numel() for p in model.parameters())`; batch-norm
running statistics are buffers there and non-trainable here), Keras's for MobileNet v1, the
Caffe model's for GoogLeNet, and seed 001's table for AlexNet. Networks without a published
figure are checked against a count computed here, layer by layer, from the architecture.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from cnnc import zoo
from cnnc.compiler.ir import Graph
from cnnc.dsl.builder import load_zoo
from cnnc.runtime.cli import main as cli_main
from cnnc.runtime.reference import run_reference
from cnnc.runtime.summary import summarize


def conv_p(cin: int, cout: int, k: int, bias: bool = True, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def dense_p(fin: int, fout: int) -> int:
    return fin * fout + fout


def bn_p(c: int) -> int:
    return 2 * c  # gamma and beta; running mean and variance are buffers


def _zfnet() -> int:
    convs = (conv_p(3, 96, 7) + conv_p(96, 256, 5) + conv_p(256, 512, 3) + conv_p(512, 1024, 3)
             + conv_p(1024, 512, 3))
    return convs + dense_p(512 * 6 * 6, 4096) + dense_p(4096, 4096) + dense_p(4096, 1000)


def _unet(width: int = 64, channels: int = 1, classes: int = 2) -> int:
    def double(cin: int, c: int) -> int:
        return conv_p(cin, c, 3) + conv_p(c, c, 3)

    w = [width * 2**i for i in range(5)]
    total = double(channels, w[0]) + sum(double(w[i], w[i + 1]) for i in range(4))
    for i in range(4, 0, -1):  # transposed conv w[i] -> w[i-1], then double conv on 2 w[i-1]
        total += conv_p(w[i], w[i - 1], 2) + double(2 * w[i - 1], w[i - 1])
    return total + conv_p(w[0], classes, 1)


def _siamese(dim: int = 128, width: int = 32) -> int:
    ws = [3, width, 2 * width, 4 * width, 8 * width]
    tower = sum(conv_p(a, b, 3, bias=False) + bn_p(b) for a, b in zip(ws, ws[1:]))
    return tower + dense_p(8 * width, dim)  # once: both applications share it


def _resnet50_like(inner: int = 1, groups: int = 1, se: int = 0, se_bias: bool = True) -> int:
    """ResNet-50's bottleneck network, counted layer by layer: the 3x3 convolution of a stage
    with base width c is inner * c wide in `groups` groups; `se` > 0 adds a squeeze-excitation
    block (two 1x1 convolutions, reduction `se`) on each residual branch."""
    total, cin = conv_p(3, 64, 7, bias=False) + bn_p(64), 64
    for stage, blocks in enumerate((3, 4, 6, 3)):
        c = 64 * 2**stage
        d, out = inner * c, 4 * c
        for i in range(blocks):
            total += (conv_p(cin, d, 1, bias=False) + bn_p(d)
                      + conv_p(d, d, 3, bias=False, groups=groups) + bn_p(d)
                      + conv_p(d, out, 1, bias=False) + bn_p(out))
            if se:
                total += conv_p(out, out // se, 1, se_bias) + conv_p(out // se, out, 1, se_bias)
            if i == 0:  # the projection shortcut
                total += conv_p(cin, out, 1, bias=False) + bn_p(out)
            cin = out
    return total + dense_p(2048, 1000)


def _yolo(classes: int = 20, boxes: int = 2, width: int = 16) -> int:
    ws = [3] + [width * 2**i for i in range(7)] + [width * 16]
    body = sum(conv_p(a, b, 3, bias=False) + bn_p(b) for a, b in zip(ws, ws[1:]))
    return body + conv_p(width * 16, boxes * 5 + classes, 1)


def _shapes_detector(classes: int = 3, width: int = 8) -> int:
    ws = [3, width, width * 2, width * 4, width * 4, width * 4]
    body = sum(conv_p(a, b, 3, bias=False) + bn_p(b) for a, b in zip(ws, ws[1:]))
    return body + conv_p(width * 4, classes + 5, 1)


# name -> trainable parameters with the default (1000-class, full-size) header.
PARAMS = {
    "lenet5": 156 + 2_416 + 48_120 + 10_164 + 850,
    "lenet_rgb": 608 + 3_216 + 48_120 + 10_164 + 850,
    "alexnet": 62_378_344,
    "alexnet_groups": 60_965_224,
    "zfnet": _zfnet(),
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "googlenet": 6_998_552 + 2 * (dense_p(128 * 16, 1024) + dense_p(1024, 1000))
    + conv_p(512, 128, 1) + conv_p(528, 128, 1),
    "googlenet_bn": 6_624_904,
    "inception_v3": 23_834_568,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "se_resnet50": 28_088_024,
    "mobilenet": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548,
    "shufflenet_v2": 2_278_604,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "densenet121": 7_978_856,
    "sobel": 0,
    "scharr": 0,
    "unet": _unet(),
    "siamese": _siamese(),
    "yolo": _yolo(),
    "shapes_detector": _shapes_detector(),
}

# name -> {output: per-sample shape} at the default size.
OUTPUTS = {name: {"logits": (1000,)} for name in PARAMS}
OUTPUTS.update({
    name: {"probabilities": (1000,)}
    for name in ("alexnet", "alexnet_groups", "zfnet", "vgg11", "vgg16", "vgg19")})
OUTPUTS.update({
    "lenet5": {"probabilities": (10,)},
    "lenet_rgb": {"probabilities": (10,)},
    "googlenet": {"aux1": (1000,), "aux2": (1000,), "probabilities": (1000,)},
    "sobel": {"gradients": (2, 222, 222), "edges": (1, 222, 222)},
    "scharr": {"gradients": (2, 222, 222), "edges": (1, 222, 222)},
    "unet": {"probabilities": (2, 512, 512)},
    "siamese": {"left_embedding": (128,), "right_embedding": (128,), "distance": (1,)},
    "yolo": {"grid": (30, 7, 7)},
    "shapes_detector": {"grid": (8, 8, 8), "detections": (10, 7)},
})

# name -> header overrides for a small, fast float64 run (batch 2).
SMALL = {
    "lenet5": {},
    "lenet_rgb": {},
    "alexnet": {"size": 67, "hidden": 64, "classes": 10},
    "alexnet_groups": {"size": 67, "hidden": 64, "classes": 10},
    "zfnet": {"size": 67, "hidden": 64, "c3": 64, "c4": 64, "c5": 64, "classes": 10},
    "vgg11": {"size": 32, "width": 8, "hidden": 32, "classes": 10},
    "vgg16": {"size": 32, "width": 8, "hidden": 32, "classes": 10},
    "vgg19": {"size": 32, "width": 8, "hidden": 32, "classes": 10},
    "googlenet": {"size": 80, "classes": 10},
    "googlenet_bn": {"size": 32, "classes": 10},
    "inception_v3": {"size": 75, "width": 8, "classes": 10},
    "resnet18": {"size": 32, "width": 8, "classes": 10},
    "resnet34": {"size": 32, "width": 8, "classes": 10},
    "resnet50": {"size": 32, "width": 8, "classes": 10},
    "resnet101": {"size": 32, "width": 8, "classes": 10},
    "resnet152": {"size": 32, "width": 8, "classes": 10},
    "resnext50_32x4d": {"size": 32, "width": 8, "groups": 4, "classes": 10},
    "se_resnet50": {"size": 32, "width": 8, "classes": 10},
    "mobilenet": {"size": 32, "w": 8, "classes": 10},
    "mobilenet_v2": {"size": 32, "classes": 10},
    "efficientnet_b0": {"size": 16, "classes": 10},
    "shufflenet_v2": {"size": 32, "classes": 10},
    "squeezenet1_0": {"size": 64, "classes": 10},
    "squeezenet1_1": {"size": 32, "classes": 10},
    "densenet121": {"size": 32, "growth": 8, "classes": 10},
    "sobel": {"size": 16},
    "scharr": {"size": 16},
    "unet": {"size": 32, "width": 8, "classes": 3},
    "siamese": {"size": 32, "width": 8, "embedding": 16},
    "yolo": {"size": 128, "width": 4},
    "shapes_detector": {"size": 32, "width": 4},
}

# Outputs that end in a softmax over channels: each sample (each pixel) sums to 1.
SOFTMAX = {"probabilities", "aux1", "aux2"}


@functools.cache
def full(name: str) -> Graph:
    return load_zoo(name)


def test_every_zoo_network_is_covered():
    assert sorted(zoo.names()) == sorted(PARAMS)
    assert set(SMALL) == set(PARAMS) == set(OUTPUTS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count(name):
    assert summarize(full(name)).params == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_shapes_end_to_end(name):
    graph = full(name)
    graph.verify()
    got = {k: graph.node(v).type.shape for k, v in graph.outputs.items()}
    assert got == OUTPUTS[name]


def _random_inputs(graph: Graph, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal((batch,) + graph.node(v).type.shape)
            for k, v in graph.inputs.items()}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_reference_run_small(name):
    graph = load_zoo(name, **SMALL[name])
    outputs = run_reference(graph, _random_inputs(graph))
    assert set(outputs) == set(graph.outputs)
    for key, value in outputs.items():
        assert value.shape == (2,) + graph.node(graph.outputs[key]).type.shape
        assert np.all(np.isfinite(value)), key
        assert np.abs(value).max() > 0, key  # the inputs reached the output
        if key in SOFTMAX:
            np.testing.assert_allclose(value.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_cli_summary(name, capsys):
    assert cli_main(["summary", name]) == 0
    out = capsys.readouterr().out
    assert f"total parameters:   {PARAMS[name]:,}\n" in out


def test_cli_summary_with_param(capsys):
    assert cli_main(["summary", "resnet50", "--param", "classes=10"]) == 0
    assert f"total parameters:   {25_557_032 - 2049 * 990:,}\n" in capsys.readouterr().out


def test_unknown_zoo_name_is_a_clear_error():
    with pytest.raises(KeyError, match="the zoo has: .*resnet50"):
        load_zoo("resnet51")


# -- what is particular about some networks ---------------------------------------------------

def _node(graph: Graph, name: str):
    found = [n for n in graph.nodes() if n.name == name]
    assert len(found) == 1, name
    return found[0]


def test_resnet50_v1_5_strides_the_3x3_convolution():
    g = full("resnet50")
    for stage in (2, 3, 4):  # bottleneck_down2..4 halve the resolution
        block = f"bottleneck_down{stage}"
        assert _node(g, f"{block}.conv1").attrs["stride"] == (1, 1)
        assert _node(g, f"{block}.conv2").attrs["stride"] == (2, 2)
        assert _node(g, f"{block}.conv2").attrs["kernel"] == (3, 3)
        assert _node(g, f"{block}.conv4").attrs["stride"] == (2, 2)  # the projection
    assert summarize(g).buffers == 2 * 26_560  # torchvision's running mean and variance


def test_googlenet_bn_is_torchvision_s():
    g = full("googlenet_bn")
    bns = [n for n in g.nodes() if n.op == "batchnorm"]
    assert len(bns) == 57 and {n.attrs["eps"] for n in bns} == {0.001}
    # The "5x5" branch is 3x3 in torchvision; the paper's network has 5x5.
    assert _node(g, "inception3a.basic5.conv1").attrs["kernel"] == (3, 3)
    assert _node(full("googlenet"), "inception3a.conv_relu5.conv1").attrs["kernel"] == (5, 5)
    assert sum(n.op == "concat" for n in g.nodes()) == 9


def test_googlenet_auxiliary_heads_are_extra_outputs():
    s = summarize(full("googlenet"))
    aux = sum(r.params for r in s.rows if r.name.startswith(("aux1_head.", "aux2_head.")))
    assert s.params - aux == 6_998_552  # the Caffe bvlc_googlenet model without its aux heads


def test_depthwise_convolutions():
    g = full("mobilenet")
    depthwise = [n for n in g.nodes()
                 if n.op == "conv" and n.attrs["groups"] > 1]
    assert len(depthwise) == 13
    for n in depthwise:
        assert n.attrs["groups"] == g.node(n.inputs[0]).type.channels == n.attrs["out_channels"]
    # Multiply-accumulates by the paper's formulas (Table 1 rounds them to 569 million).
    macs, hw, cin = 112 * 112 * 32 * 3 * 3 * 3, 112, 32
    for cout, stride in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + \
            [(512, 1)] * 5 + [(1024, 2), (1024, 1)]:
        hw //= stride
        macs += hw * hw * cin * 9 + hw * hw * cin * cout  # depthwise, then pointwise
        cin = cout
    macs += 1024 * 1000  # the classifier
    assert summarize(g).macs == macs
    assert round(macs, -6) == 569_000_000


def test_efficientnet_squeeze_excitation_broadcasts():
    g = full("efficientnet_b0")
    gates = [n for n in g.nodes() if n.op == "mul"]
    assert len(gates) == 16  # one per MBConv block
    for n in gates:
        x, gate = (g.node(i).type.shape for i in n.inputs)
        assert gate == (x[0], 1, 1) and n.type.shape == x
    assert sum(n.op == "swish" for n in g.nodes()) == 1 + 16 * 2 - 1 + 16 + 1


def test_densenet_channels_grow_by_the_growth_rate():
    g = full("densenet121")
    concats = [n.type.channels for n in g.nodes() if n.op == "concat"]
    assert len(concats) == 6 + 12 + 24 + 16
    assert concats[:6] == [64 + 32 * i for i in range(1, 7)]
    assert concats[-1] == 1024


def test_siamese_towers_share_parameters():
    g = load_zoo("siamese", **SMALL["siamese"])
    assert summarize(g).params == _siamese(dim=16, width=8)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 2, 3, 32, 32))
    same = run_reference(g, {"left": a, "right": a})
    np.testing.assert_array_equal(same["left_embedding"], same["right_embedding"])
    np.testing.assert_allclose(same["distance"], 0.0, atol=1e-12)
    out = run_reference(g, {"left": a, "right": b})
    expect = np.linalg.norm(out["left_embedding"] - out["right_embedding"], axis=1)
    np.testing.assert_allclose(out["distance"][:, 0], expect, rtol=1e-12)
    # Swapping the inputs swaps the embeddings: the same tower maps both sides.
    swapped = run_reference(g, {"left": b, "right": a})
    np.testing.assert_allclose(swapped["left_embedding"], out["right_embedding"], rtol=1e-12)


def test_unet_parameters_and_skip_connections():
    assert summarize(load_zoo("unet", width=8, channels=3, classes=5, size=32)).params == \
        _unet(width=8, channels=3, classes=5)
    g = full("unet")
    ups = [n for n in g.nodes() if n.op == "conv_transpose"]
    assert [g.node(n.inputs[0]).type.shape for n in ups] == \
        [(1024, 32, 32), (512, 64, 64), (256, 128, 128), (128, 256, 256)]
    assert [n.type.shape for n in g.nodes() if n.op == "concat"] == \
        [(1024, 64, 64), (512, 128, 128), (256, 256, 256), (128, 512, 512)]


@pytest.mark.parametrize("classes, boxes, size", [(20, 2, 448), (80, 3, 320), (1, 1, 64)])
def test_yolo_grid(classes, boxes, size):
    g = load_zoo("yolo", classes=classes, boxes=boxes, size=size, width=4)
    s = size // 64
    assert g.node(g.outputs["grid"]).type.shape == (boxes * 5 + classes, s, s)
    assert summarize(g).params == _yolo(classes, boxes, width=4)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_header_comment_names_source_and_count(name):
    text = zoo.description(name)
    assert len(text.splitlines()) >= 3
    assert any(year in text for year in ("19", "20"))  # the source's year
    if PARAMS[name]:
        assert f"{PARAMS[name]:,}" in text


def test_resnet50_family_counts_computed_layer_by_layer():
    """The published figures, recomputed from the architectures: ResNet-50 (torchvision),
    ResNeXt-50 32x4d (grouped width 2c: 32 groups of 4 in stage 1) and SE-ResNet-50 (SE biases,
    as Cadene's and timm's count it; the header's figure without them too)."""
    assert _resnet50_like() == PARAMS["resnet50"]
    assert _resnet50_like(inner=2, groups=32) == PARAMS["resnext50_32x4d"]
    assert _resnet50_like(se=16) == PARAMS["se_resnet50"] == 25_557_032 + 2_530_992
    assert f"{_resnet50_like(se=16, se_bias=False):,}" in zoo.description("se_resnet50")


def test_resnext_bottlenecks_are_grouped():
    g = full("resnext50_32x4d")
    grouped = [n for n in g.nodes() if n.op == "conv" and n.attrs["groups"] > 1]
    assert len(grouped) == 16 and {n.attrs["groups"] for n in grouped} == {32}
    assert {n.attrs["kernel"] for n in grouped} == {(3, 3)}
    assert sorted({n.attrs["out_channels"] for n in grouped}) == [128, 256, 512, 1024]
    # v1.5: the first block of stages 2-4 strides its grouped convolution.
    assert sum(n.attrs["stride"] == (2, 2) for n in grouped) == 3
    assert g.node(grouped[0].inputs[0]).type.channels == 128  # 32 paths of 4 channels


def test_se_resnet50_gates_each_residual_branch():
    g = full("se_resnet50")
    gates = [n for n in g.nodes() if n.op == "mul"]
    assert len(gates) == 16  # one per bottleneck
    for n in gates:
        x, gate = (g.node(i).type.shape for i in n.inputs)
        assert gate == (x[0], 1, 1) and n.type.shape == x
        assert g.node(n.inputs[1]).op == "sigmoid"
    adds = [n for n in g.nodes() if n.op == "add"]
    assert len(adds) == 16 and all(g.node(n.inputs[0]).op == "mul" for n in adds)


def test_inception_v3_is_torchvision_s():
    g = full("inception_v3")
    bns = [n for n in g.nodes() if n.op == "batchnorm"]
    assert len(bns) == 94 and {n.attrs["eps"] for n in bns} == {0.001}
    convs = [n for n in g.nodes() if n.op == "conv"]
    assert not any(n.attrs["bias"] for n in convs)
    kernels = [n.attrs["kernel"] for n in convs]
    assert kernels.count((1, 7)) == kernels.count((7, 1)) == 4 * 3 + 1  # modules C and D
    assert kernels.count((1, 3)) == kernels.count((3, 1)) == 2 * 2      # modules E
    pools = [n for n in g.nodes() if n.op == "avgpool"]
    assert len(pools) == 3 + 4 + 2
    for n in pools:  # torchvision's F.avg_pool2d(x, 3, stride=1, padding=1)
        assert n.attrs["kernel"] == (3, 3) and n.attrs["stride"] == (1, 1)
        assert n.attrs["pads"] == (1, 1, 1, 1) and n.attrs["count_include_pad"]
    assert [n.type.shape for n in g.nodes() if n.op == "concat"][-1] == (2048, 8, 8)
    # torchvision's 27,161,264 adds the training-only auxiliary classifier on Mixed_6e.
    aux = (conv_p(768, 128, 1, bias=False) + bn_p(128) + conv_p(128, 768, 5, bias=False)
           + bn_p(768) + dense_p(768, 1000))
    assert PARAMS["inception_v3"] + aux == 27_161_264
    assert "27,161,264" in zoo.description("inception_v3")
