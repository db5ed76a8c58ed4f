"""The images made by optimization: the Gram-matrix style loss and its gradient against
central differences, the optimizers on a function with a known minimum, and the class model,
DeepDream and neural style on a LeNet-5 with ReLU and random weights: L-BFGS lowers each
objective at every step, Adam over its steps (the objective it reports checked against the
float64 reference interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.runtime.explain import synthesis
from cnnc.runtime.explain.descent import adam, lbfgs
from cnnc.runtime.reference import run_reference

from .nets import relu_lenet


@pytest.fixture(scope="module")
def small():
    model, images = relu_lenet()
    return model.graph, model.params, model, images


def test_style_loss_and_its_gradient_against_central_differences():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 4, 5))
    target = synthesis.gram(rng.standard_normal((3, 4, 5)))
    loss, grad = synthesis.style_loss(f, target)
    # the definition, written out: E = sum_ij (sum_k F_ik F_jk - A_ij)^2 / (4 C^2 M^2)
    flat = f.reshape(3, 20)
    want = sum((flat[i] @ flat[j] - target[i, j]) ** 2 for i in range(3) for j in range(3))
    assert loss == pytest.approx(want / (4 * 9 * 400), rel=1e-12)
    h = 1e-6
    numeric = np.zeros_like(f)
    for index in np.ndindex(f.shape):
        up, down = f.copy(), f.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (synthesis.style_loss(up, target)[0] -
                          synthesis.style_loss(down, target)[0]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def rosenbrock(x: np.ndarray) -> tuple[float, np.ndarray]:
    a, b = x[:-1], x[1:]
    f = float((100 * (b - a * a) ** 2 + (1 - a) ** 2).sum())
    g = np.zeros_like(x)
    g[:-1] = -400 * a * (b - a * a) - 2 * (1 - a)
    g[1:] += 200 * (b - a * a)
    return f, g


def test_lbfgs_finds_the_minimum_of_rosenbrock_monotonically():
    x, history = lbfgs(rosenbrock, np.full(6, -1.2), steps=200)
    assert np.all(np.diff(history) < 0)
    np.testing.assert_allclose(x, np.ones(6), atol=1e-4)


def test_adam_descends_a_quadratic():
    def bowl(x):
        return float(((x - 3) ** 2).sum()), 2 * (x - 3)
    x, history = adam(bowl, np.zeros(4), steps=300, lr=0.1)
    assert history[-1] < 1e-3 * history[0]
    np.testing.assert_allclose(x, 3, atol=0.05)


def reference_score(graph, params, x: np.ndarray, k: int) -> float:
    """Class k's logit for one image, by the float64 interpreter (the softmax's input)."""
    (logits,) = [n.id for n in graph.nodes() if n.name == "out"]
    out = run_reference(graph, {"image": x.astype(np.float64)[None]}, params, keep=True)
    return float(out[f"%{logits}"][0, k])


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_class_model_raises_the_class_score(small, optimizer):
    graph, params, model, _ = small
    result = synthesis.class_model(model, 1, steps=15, optimizer=optimizer, l2=1e-2,
                                   blur_every=0, small=0.0)
    h = result.objective
    assert len(h) > 5
    if optimizer == "lbfgs":
        assert np.all(np.diff(h) < 0)
    else:
        assert h[-1] < h[0] and np.all(np.diff(h) <= 1e-2 * np.abs(h).max())  # 1% overshoot
    x = result.image.astype(np.float64)
    want = -reference_score(graph, params, x, 1) + 1e-2 * float((x ** 2).sum())
    assert h[-1] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_deepdream_amplifies_the_layer(small):
    graph, params, model, images = small
    result = synthesis.deepdream(model, images[0], "c3", channel=2, steps=8,
                                 optimizer="lbfgs")
    assert np.all(np.diff(result.objective) < 0)
    (c3,) = [n.id for n in graph.nodes() if n.name == "c3"]
    before, after = (run_reference(graph, {"image": x.astype(np.float64)[None]}, params,
                                   keep=True)[f"%{c3}"][0, 2] for x in (images[0],
                                                                       result.image))
    assert (after ** 2).sum() / 2 == pytest.approx(-result.objective[-1], rel=1e-4)
    assert (after ** 2).sum() > 2 * (before ** 2).sum()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_style_transfer_lowers_its_objective(small, optimizer):
    _, _, model, images = small
    result = synthesis.style_transfer(model, images[0], images[1], steps=12,
                                      optimizer=optimizer, style_weight=10.0, lr=3e-4)
    h = result.objective
    if optimizer == "lbfgs":
        assert np.all(np.diff(h) < 0)
    else:  # Adam's first steps may overshoot a little
        assert h.max() < 1.05 * h[0]
    assert h[-1] < 0.97 * h[0]
    # the objective it reports is the definition's, at the image it returns
    layers = synthesis.activation_layers(model.graph)
    assert layers == ["relu1", "relu2"]
    fun = synthesis.style_objective(model, images[:1], images[1:2], layers[-1:], layers,
                                    1.0, 10.0)
    assert fun(result.image.ravel().astype(np.float64))[0] == pytest.approx(h[-1], rel=1e-6)
