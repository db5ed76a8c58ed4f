"""ShuffleNet V2 x1.0 (zoo/shufflenet_v2.cnn) against a PyTorch twin written here.

The twin transcribes torchvision's `ShuffleNetV2` and `InvertedResidual` (channel split by
`chunk`, `channel_shuffle` by view -> transpose -> view) in plain `torch.nn`, at full width, with
non-trivial batch-norm statistics. Its state_dict, in registration order, maps one to one onto
the zoo network's parameters in DSL order (names' last parts and shapes checked pair by pair), so
the same weights run in both; cnnc's compiled output must match PyTorch's within 1e-4 of the
output's largest magnitude, and so must the twin exported by PyTorch's TorchScript exporter and
imported by cnnc (Split, the channel shuffle pattern). Skipped without torch (torchvision is not
needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: no twin to compare with")

import cnnc.zoo as zoo  # noqa: E402
from cnnc.compiler.ir import Graph  # noqa: E402
from cnnc.dsl.builder import load_network  # noqa: E402
from cnnc.runtime.model import compile as compile_model  # noqa: E402
from cnnc.runtime.onnx_io import import_onnx  # noqa: E402
from cnnc.runtime.summary import summarize  # noqa: E402

nn = torch.nn
TOL = 1e-4
SIZE = 64


def channel_shuffle(x: Any, groups: int) -> Any:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class InvertedResidual(nn.Module):
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
            units = [InvertedResidual(cin, c, 2)] + [InvertedResidual(c, c, 1)
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


def _twin() -> Any:
    torch.manual_seed(0)
    net = ShuffleNetV2().eval()
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


def _input() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def _pytorch(net: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy().astype(np.float64)


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape == (2, 1000)
    return float(np.max(np.abs(got - want))) / float(np.max(np.abs(want)))


def test_twin_has_the_dsl_parameter_count():
    assert sum(p.numel() for p in _twin().parameters()) == summarize(
        zoo.load("shufflenet_v2")).params == 2_278_604


@pytest.mark.filterwarnings("ignore")
def test_compiled_zoo_network_matches_pytorch():
    net, x = _twin(), _input()
    graph = zoo.load("shufflenet_v2", size=SIZE)
    model = compile_model(graph, weights=_cnnc_weights(graph, net))
    err = _relative_error(model.run({"image": x})["logits"], _pytorch(net, x))
    assert err <= TOL, f"relative error {err:.3g}"


@pytest.mark.filterwarnings("ignore")
def test_twin_through_onnx_matches_pytorch(tmp_path):
    """Exported by PyTorch's TorchScript exporter: `chunk` becomes Split, the shuffle a
    Reshape -> Transpose -> Reshape; cnnc imports them as channel_slice and channel_shuffle."""
    onnx = pytest.importorskip("onnx")
    net, x = _twin(), _input()
    path = tmp_path / "shufflenet_v2.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    text, weights = import_onnx(onnx.load(str(path)))
    assert text.count("channel_shuffle(2)") == 16
    model = compile_model(load_network(text), weights=weights)
    (got,) = model.run({"image": x}).values()
    err = _relative_error(got, _pytorch(net, x))
    assert err <= TOL, f"relative error {err:.3g}"
