"""Saliency, guided backprop, the deconvnet rule and Grad-CAM against PyTorch on the same
weights: a small ReLU network (max pooling, padding) with random weights, and the shipped
LeNet-5 (tanh, average pooling) with its trained weights. PyTorch changes the activations'
backward pass with module hooks, as the methods' papers do: guided backprop clamps the
gradient the activation passes back at 0 (relu' and tanh' are >= 0, so this is
f'(x) max(dy, 0)), the deconvnet passes max(dy, 0) whatever the forward input was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnc
from cnnc.runtime.datasets import load_dataset
from cnnc.runtime.explain import methods
from cnnc.zoo import trained_weights

SMALL = """network small(classes = 5)
input image: 2 x 12 x 12
image -> conv(4, 3, pad=1) as conv1 -> relu -> maxpool(2) as pool1
      -> conv(6, 3) as conv2 -> relu -> flatten
      -> dense(16) as fc1 -> relu -> dense(classes) as fc2 -> softmax
      -> output probabilities
"""


def _hook(rule: str):
    def hook(module, grad_input, grad_output):
        if rule == "guided":
            return (grad_input[0].clamp(min=0),)
        return (grad_output[0].clamp(min=0),)
    return hook


class Twin(nn.Module):
    """PyTorch's forward of SMALL (``kind="small"``) or LeNet-5, on cnnc's weights in
    float64, with the activations as modules (for the hooks); keeps the Grad-CAM layer."""

    def __init__(self, kind: str, params: dict[str, np.ndarray], rule: str | None = None):
        super().__init__()
        self.kind = kind
        self.p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
        act = nn.ReLU if kind == "small" else nn.Tanh
        self.acts = nn.ModuleList(act() for _ in range(3 if kind == "small" else 4))
        if rule is not None:
            for a in self.acts:
                a.register_full_backward_hook(_hook(rule))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, a = self.p, self.acts
        if self.kind == "small":
            h = F.max_pool2d(a[0](F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)), 2)
            self.cam_layer = a[1](F.conv2d(h, p["conv2.weight"], p["conv2.bias"]))
            h = a[2](F.linear(self.cam_layer.flatten(1), p["fc1.weight"], p["fc1.bias"]))
            return F.linear(h, p["fc2.weight"], p["fc2.bias"])
        h = F.avg_pool2d(a[0](F.conv2d(x, p["c1.weight"], p["c1.bias"])), 2)
        self.cam_layer = a[1](F.conv2d(h, p["c3.weight"], p["c3.bias"]))
        h = a[2](F.conv2d(F.avg_pool2d(self.cam_layer, 2), p["c5.weight"], p["c5.bias"]))
        h = a[3](F.linear(h.flatten(1), p["f6.weight"], p["f6.bias"]))
        return F.linear(h, p["out.weight"], p["out.bias"])


def torch_input_gradient(twin: Twin, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    scores = twin(xt)
    scores[torch.arange(len(x)), torch.tensor(classes)].sum().backward()
    return xt.grad.numpy()


def torch_gradcam(twin: Twin, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    scores = twin(torch.tensor(x, dtype=torch.float64, requires_grad=True))
    twin.cam_layer.retain_grad()
    scores[torch.arange(len(x)), torch.tensor(classes)].sum().backward()
    weights = twin.cam_layer.grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * twin.cam_layer).sum(dim=1)).detach().numpy()


@pytest.fixture(scope="module")
def small():
    graph = cnnc.load(SMALL)
    rng = np.random.default_rng(3)
    params = {n.name: (rng.standard_normal(n.type.shape) * 0.5).astype(np.float32)
              for n in graph.params()}
    x = rng.standard_normal((3, 2, 12, 12)).astype(np.float32)
    return cnnc.compile(graph, weights=params), x, np.array([0, 3, 4])


@pytest.fixture(scope="module")
def lenet():
    model = methods.as_model("lenet5")
    data = load_dataset("digits", (1, 32, 32))
    return model, data.test_x[:3], data.test_y[:3]


def close(got: np.ndarray, want: np.ndarray) -> float:
    """The largest error relative to the largest value (float32 kernels vs float64)."""
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("rule", [None, "guided", "deconvnet"])
@pytest.mark.parametrize("which", ["small", "lenet"])
def test_input_gradients_match_pytorch(request, which, rule):
    model, x, classes = request.getfixturevalue(which)
    got = methods.input_gradient(model, x, classes, rule=rule)
    twin = Twin("small" if which == "small" else "lenet", model.params, rule)
    want = torch_input_gradient(twin, x, classes)
    assert np.abs(want).max() > 0
    assert close(got, want) < 1e-5
    if rule is None:
        assert np.array_equal(methods.saliency(model, x, classes), np.abs(got).max(axis=1))


def test_the_rules_change_the_gradient(small):
    """The hooks and the rewrite matter: the three gradients differ on the ReLU network."""
    model, x, classes = small
    plain, guided, deconv = (methods.input_gradient(model, x, classes, rule=r)
                             for r in (None, "guided", "deconvnet"))
    assert close(guided, plain) > 0.05 and close(deconv, plain) > 0.05


@pytest.mark.parametrize("which", ["small", "lenet"])
def test_gradcam_matches_pytorch(request, which):
    model, x, classes = request.getfixturevalue(which)
    got = methods.gradcam(model, x, classes)
    want = torch_gradcam(Twin("small" if which == "small" else "lenet", model.params), x,
                         classes)
    assert got.shape == want.shape == (3,) + ((4, 4) if which == "small" else (10, 10))
    assert want.max() > 0
    assert np.abs(got - want).max() <= 1e-5 * want.max()


def test_default_class_is_the_predicted_one(lenet):
    model, x, labels = lenet
    predicted = model(x).argmax(axis=1)
    assert np.array_equal(methods.saliency(model, x), methods.saliency(model, x, predicted))


def test_shipped_weights_classify_the_digits(lenet):
    model, _, _ = lenet
    assert trained_weights("lenet5").is_file()
    data = load_dataset("digits", (1, 32, 32))
    accuracy = (model(data.test_x).argmax(axis=1) == data.test_y).mean()
    assert accuracy > 0.97


BATCHNORM = """network withbn(classes = 4)
input image: 3 x 8 x 8
image -> conv(5, 3, pad=1, bias=false) as conv1 -> batchnorm as bn1 -> relu
      -> conv(6, 3, stride=2, pad=1) as conv2 -> relu -> globalavgpool -> flatten
      -> dense(classes) as fc -> output scores
"""


def test_batch_norm_is_differentiated_as_it_classifies():
    """With its running statistics (the inference form), not the batch's: PyTorch's eval
    mode. Grad-CAM's default layer is the last one with maps that is not a pooling's."""
    graph = cnnc.load(BATCHNORM)
    rng = np.random.default_rng(8)
    params = {n.name: rng.standard_normal(n.type.shape).astype(np.float32)
              for n in graph.params()}
    params["bn1.running_var"] = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    model = cnnc.compile(graph, weights=params)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    classes = np.array([1, 2])
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h = F.conv2d(xt, p["conv1.weight"], padding=1)
    h = F.relu(F.batch_norm(h, p["bn1.running_mean"], p["bn1.running_var"], p["bn1.weight"],
                            p["bn1.bias"], training=False, eps=1e-5))
    maps = F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"], stride=2, padding=1))
    maps.retain_grad()
    scores = F.linear(maps.mean(dim=(2, 3)), p["fc.weight"], p["fc.bias"])
    scores[torch.arange(2), torch.tensor(classes)].sum().backward()
    assert close(methods.input_gradient(model, x, classes), xt.grad.numpy()) < 1e-5
    cam = torch.relu((maps.grad.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1))
    want = cam.detach().numpy()
    got = methods.gradcam(model, x, classes)
    assert got.shape == (2, 4, 4)
    assert np.abs(got - want).max() <= 1e-5 * want.max()


def test_the_compiled_helpers_follow_the_models_weights():
    """A model's gradient and cut models are compiled once and take its new weights."""
    graph = cnnc.load(SMALL)
    rng = np.random.default_rng(4)
    first, second = ({n.name: rng.standard_normal(n.type.shape).astype(np.float32)
                      for n in graph.params()} for _ in range(2))
    x = rng.standard_normal((2, 2, 12, 12)).astype(np.float32)
    model = cnnc.compile(graph, weights=first)
    before = methods.saliency(model, x, 1), methods.feature_maps(model, x, "conv2")
    model.set_params(second)
    after = methods.saliency(model, x, 1), methods.feature_maps(model, x, "conv2")
    other = cnnc.compile(graph, weights=second)
    assert not np.allclose(before[0], after[0])
    np.testing.assert_array_equal(after[0], methods.saliency(other, x, 1))
    np.testing.assert_array_equal(after[1], methods.feature_maps(other, x, "conv2"))
