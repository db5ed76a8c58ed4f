"""Saliency, guided backprop, the deconvnet rule and Grad-CAM against PyTorch on the same
weights: a LeNet-5 with ReLU, batch norm (its running statistics: PyTorch's eval mode) and max
pooling with random weights, and the shipped LeNet-5 (tanh, average pooling) with its trained
weights. PyTorch changes the activations' backward pass with module hooks (``nets.hook``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnc.compiler.autodiff import attach_loss, autodiff
from cnnc.compiler.passes import PassContext
from cnnc.compiler.passes.modify_backward import modify_backward
from cnnc.runtime.datasets import load_dataset
from cnnc.runtime.explain import methods
from cnnc.runtime.reference import run_reference
from cnnc.zoo import trained_weights

from .nets import Twin, relu_lenet


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
def relu():
    model, x = relu_lenet()
    return model, x, np.array([0, 3, 9])


@pytest.fixture(scope="module")
def lenet5():
    model = methods.as_model("lenet5")
    data = load_dataset("digits", (1, 32, 32))
    return model, data.test_x[:3], data.test_y[:3]


def close(got: np.ndarray, want: np.ndarray) -> float:
    """The largest error relative to the largest value (float32 kernels vs float64)."""
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("rule", [None, "guided", "deconvnet"])
@pytest.mark.parametrize("which", ["relu", "lenet5"])
def test_input_gradients_match_pytorch(request, which, rule):
    model, x, classes = request.getfixturevalue(which)
    got = methods.input_gradient(model, x, classes, rule=rule)
    want = torch_input_gradient(Twin(which, model.params, rule), x, classes)
    assert np.abs(want).max() > 0
    assert close(got, want) < 1e-5
    if rule is None:
        assert np.array_equal(methods.saliency(model, x, classes), np.abs(got).max(axis=1))


def test_the_rules_change_the_gradient(relu):
    """The hooks and the rewrite matter: the three gradients differ on the ReLU network."""
    model, x, classes = relu
    plain, guided, deconv = (methods.input_gradient(model, x, classes, rule=r)
                             for r in (None, "guided", "deconvnet"))
    assert close(guided, plain) > 0.05 and close(deconv, plain) > 0.05


@pytest.mark.parametrize("which", ["relu", "lenet5"])
def test_gradcam_matches_pytorch(request, which):
    """At the default layer: the last with maps of more than one pixel that is not a
    pooling's, the activation after the second convolution in both."""
    model, x, classes = request.getfixturevalue(which)
    got = methods.gradcam(model, x, classes)
    want = torch_gradcam(Twin(which, model.params), x, classes)
    assert got.shape == want.shape == (3, 10, 10)
    assert want.max() > 0
    assert np.abs(got - want).max() <= 1e-5 * want.max()


def test_default_class_is_the_predicted_one(lenet5):
    model, x, _ = lenet5
    predicted = model(x).argmax(axis=1)
    assert np.array_equal(methods.saliency(model, x), methods.saliency(model, x, predicted))


def test_shipped_weights_classify_the_digits(lenet5):
    model, _, _ = lenet5
    assert trained_weights("lenet5").is_file()
    data = load_dataset("digits", (1, 32, 32))
    accuracy = (model(data.test_x).argmax(axis=1) == data.test_y).mean()
    assert accuracy > 0.97


def test_the_compiled_helpers_follow_the_models_weights(relu):
    """A model's gradient and cut models are compiled once and take its new weights."""
    model, x, _ = relu
    other, _ = relu_lenet(seed=4)
    saved = model.params
    before = methods.saliency(model, x, 1), methods.feature_maps(model, x, "c3")
    model.set_params(other.params)
    try:
        after = methods.saliency(model, x, 1), methods.feature_maps(model, x, "c3")
    finally:
        model.set_params(saved)
    assert not np.allclose(before[0], after[0])
    np.testing.assert_array_equal(after[0], methods.saliency(other, x, 1))
    np.testing.assert_array_equal(after[1], methods.feature_maps(other, x, "c3"))
    np.testing.assert_array_equal(before[0], methods.saliency(model, x, 1))



@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_the_rules_in_float64_match_pytorch(rule):
    """The rewrite and the rules' float64 references: the gradient graph run by the reference
    interpreter, against PyTorch's hooks to float64 rounding."""
    model, x = relu_lenet()
    graph = model.graph.copy()
    assert modify_backward(graph, rule) == 2
    assert [n.name for n in graph.nodes() if n.op == "modified_backward"] == ["relu1", "relu2"]
    params = {k: v.astype(np.float64) for k, v in model.params.items()}
    forward = run_reference(graph, {"image": x.astype(np.float64)}, params)
    np.testing.assert_array_equal(forward["probabilities"], run_reference(
        model.graph, {"image": x.astype(np.float64)}, params)["probabilities"])
    tg = attach_loss(graph, "weighted_sum", training_forms=False)
    autodiff(tg, PassContext(training=True, frozen=("*",), input_gradients=True))
    classes = np.array([0, 3, 9])
    seeds = np.eye(10)[classes]
    got = run_reference(tg, {"image": x.astype(np.float64), "labels": seeds}, params)
    want = torch_input_gradient(Twin("relu", model.params, rule), x, classes)
    np.testing.assert_allclose(got["grad:image"], want, rtol=0, atol=1e-12 * np.abs(want).max())
