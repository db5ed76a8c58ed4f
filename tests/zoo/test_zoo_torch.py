"""ResNeXt-50 32x4d, SE-ResNet-50, Inception v3 and ShuffleNet V2 x1.0 against PyTorch twins
written here.

Each twin transcribes the reference implementation (torchvision's ResNet `Bottleneck`,
`Inception3` and `ShuffleNetV2` (channel split by `chunk`, shuffle by view -> transpose ->
view), timm's SE block placement) in plain `torch.nn`, at full width, with non-trivial
batch-norm statistics. Its state_dict, in registration order, maps one to one onto the zoo
network's parameters in DSL order (names' last parts and shapes are checked pair by pair), so
the same weights run in both; cnnc's compiled output must match PyTorch's within 1e-4 of the
output's largest magnitude. The twins' parameter counts must equal the DSL's (the published ones,
checked in test_zoo.py). The twins also go through PyTorch's TorchScript ONNX exporter
(dynamo=False) and its default dynamo exporter, then cnnc's importer, and must match the same
way. torch and onnxscript are test dependencies (pyproject's `test` extra): without them these
tests fail, they do not skip (torchvision is not needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cnnc.compiler.ir import Graph
from cnnc.dsl.builder import load_network, load_zoo
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.onnx import import_onnx
from cnnc.runtime.summary import summarize

nn = torch.nn
F = torch.nn.functional
TOL = 1e-4


# -- ResNet family: torchvision's Bottleneck (v1.5), with timm's SE block ---------------------

class SE(nn.Module):
    """timm's SEModule: 1x1 convolutions with biases, reduction r, relu, sigmoid gate."""

    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: Any) -> Any:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, groups: int, base_width: int,
                 se: int) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups  # torchvision's formula
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.se = SE(out, se) if se else nn.Identity()  # timm: after bn3, before the add
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Any) -> Any:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.se(self.bn3(self.conv3(y)))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self, groups: int = 1, base_width: int = 64, se: int = 0) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, blocks in enumerate((3, 4, 6, 3)):
            planes = 64 * 2**i
            for b in range(blocks):
                stride = 2 if i and not b else 1
                layers.append(Bottleneck(cin, planes, stride, groups, base_width, se))
                cin = planes * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x: Any) -> Any:
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(x), 1), 1))


# -- torchvision's Inception3, without the auxiliary classifier -------------------------------

class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Any) -> Any:
        return torch.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Any) -> Any:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b5, bd, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Any) -> Any:
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Any) -> Any:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Any) -> Any:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Any) -> Any:
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd), bp], 1)


class Inception3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c = InceptionA(192, 32), InceptionA(256, 64)
        self.Mixed_5d, self.Mixed_6a = InceptionA(288, 64), InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = \
            InceptionD(768), InceptionE(1280), InceptionE(2048)
        self.dropout, self.fc = nn.Dropout(0.5), nn.Linear(2048, 1000)

    def forward(self, x: Any) -> Any:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


# -- the comparison ---------------------------------------------------------------------------

# zoo name -> (the twin, the input size of the comparison: 64, or Inception v3's smallest 75)
def channel_shuffle(x: Any, groups: int) -> Any:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """torchvision's unit: stride 1 splits the channels; stride 2 sends the input down both
    branches."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False), nn.BatchNorm2d(bf),
            nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))

    def forward(self, x: Any) -> Any:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        widths = [24, 116, 232, 464, 1024]
        self.conv1 = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 24
        for i, (repeats, c) in enumerate(zip((4, 8, 4), widths[1:4]), start=2):
            units = [ShuffleUnit(cin, c, 2)] + [ShuffleUnit(c, c, 1)
                                                      for _ in range(repeats - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            cin = c
        self.conv5 = nn.Sequential(nn.Conv2d(464, 1024, 1, bias=False), nn.BatchNorm2d(1024),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(1024, 1000)

    def forward(self, x: Any) -> Any:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


TWINS = {
    "resnext50_32x4d": (lambda: ResNet50(groups=32, base_width=4), 64),
    "se_resnet50": (lambda: ResNet50(se=16), 64),
    "inception_v3": (Inception3, 75),
    "shufflenet_v2": (ShuffleNetV2, 64),
}


def _twin(name: str) -> Any:
    torch.manual_seed(0)
    net = TWINS[name][0]().eval()
    with torch.no_grad():  # batch norm that does something, so a misplaced one shows
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _cnnc_weights(graph: Graph, net: Any) -> dict[str, np.ndarray]:
    """The twin's state_dict onto the DSL's parameters, in order, checked pair by pair."""
    theirs = [(k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    ours = list(graph.params())
    assert len(theirs) == len(ours)
    weights = {}
    for (key, value), node in zip(theirs, ours):
        assert key.rsplit(".", 1)[1] == node.name.rsplit(".", 1)[1], (key, node.name)
        assert tuple(value.shape) == node.type.shape, (key, node.name)
        weights[node.name] = value.numpy()
    return weights


def _input(size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)


def _pytorch(net: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy().astype(np.float64)


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    assert got.shape == want.shape == (2, 1000)
    return float(np.max(np.abs(got - want))) / float(np.max(np.abs(want)))


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_has_the_dsl_parameter_count(name):
    net = _twin(name)
    assert sum(p.numel() for p in net.parameters()) == summarize(load_zoo(name)).params


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(TWINS))
def test_compiled_zoo_network_matches_pytorch(name):
    size = TWINS[name][1]
    net, x = _twin(name), _input(size)
    graph = load_zoo(name, size=size)
    model = compile_model(graph, weights=_cnnc_weights(graph, net))
    err = _relative_error(model.run({"image": x})["logits"], _pytorch(net, x))
    assert err <= TOL, f"{name}: relative error {err:.3g}"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_through_onnx_matches_pytorch(name, dynamo, tmp_path):
    """The twin exported by PyTorch, with the TorchScript exporter (which folds each eval-mode
    batch norm into its convolution) and with the default dynamo exporter (opset 18+, global
    pooling as ReduceMean; needs onnxscript), imported and compiled by cnnc."""
    onnx = pytest.importorskip("onnx")
    size = TWINS[name][1]
    net, x = _twin(name), _input(size)
    path = tmp_path / f"{name}.onnx"
    if dynamo:
        torch.onnx.export(net, (torch.from_numpy(x),), str(path), input_names=["image"],
                          output_names=["logits"])
    else:
        torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    text, weights = import_onnx(onnx.load(str(path)))
    model = compile_model(load_network(text), weights=weights)
    (got,) = model.run({"image": x}).values()
    err = _relative_error(got, _pytorch(net, x))
    assert err <= TOL, f"{name}: relative error {err:.3g}"


def test_shufflenet_export_imports_as_splits_and_channel_shuffles(tmp_path):
    """PyTorch's TorchScript exporter writes `chunk` as Split and the shuffle as Reshape ->
    Transpose -> Reshape; cnnc imports them as channel_slice and channel_shuffle."""
    onnx = pytest.importorskip("onnx")
    net, x = _twin("shufflenet_v2"), _input(64)
    path = tmp_path / "shufflenet_v2.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"])
    text, _ = import_onnx(onnx.load(str(path)))
    assert text.count("channel_shuffle(2)") == 16
    assert summarize(load_zoo("shufflenet_v2")).params == 2_278_604
