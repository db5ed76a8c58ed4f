"""Images made by optimizing them through the network (seed 002): the class model, DeepDream
and neural style. Each is an objective f(image) to minimize, its gradient assembled by the
chain rule from the compiled gradient model: the gradient of f with respect to chosen layers'
values (computed here, in float64, from their values) seeds the network's backward pass
(``weighted_sum``, whose gradient is its seed), which carries it to the input.

- class model: f = -S_c(I) + l2 |I|^2, from zeros (seed 002's "argmax_I S_c(I) - lambda
  |I|_2^2"); with Adam, the seed's blurring and zeroing of small pixels after the steps.
- DeepDream: f = -|A_L(I)|^2 / 2 (the seed: "set the gradients of the neurons in the layer ...
  equal to the activations"), from an image; one channel of L if asked.
- neural style (Gatys, Ecker and Bethge 2016): f = content_weight sum_l |F_l - P_l|^2 / 2 +
  style_weight sum_l E_l, E_l = |G(F_l) - G(S_l)|^2 / (4 C^2 M^2), G(F) = F F^T the Gram
  matrix of a layer's C maps of M pixels; from the content image, by L-BFGS by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import methods
from .descent import OPTIMIZERS, Objective
from .gradients import ExplainError


@dataclass
class Synthesis:
    """An optimized image ``[C, H, W]`` and the objective at every accepted point."""

    image: np.ndarray
    objective: np.ndarray


def _optimize(model, fun: Objective, x0: np.ndarray, optimizer: str, steps: int,
              **options) -> Synthesis:
    if optimizer not in OPTIMIZERS:
        raise ExplainError(f"unknown optimizer {optimizer!r}; there are "
                           f"{', '.join(OPTIMIZERS)}")
    shape = methods.input_shape(model)
    x, history = OPTIMIZERS[optimizer](fun, x0.ravel(), steps=steps, **options)
    return Synthesis(x.reshape(shape).astype(np.float32), np.asarray(history))


def _as_image(model, x: np.ndarray) -> np.ndarray:
    return x.reshape((1,) + methods.input_shape(model)).astype(np.float32)


# -- the class model ---------------------------------------------------------------------------

def blur(image: np.ndarray) -> np.ndarray:
    """Each channel smoothed by the 3 x 3 binomial filter [1 2 1]^T [1 2 1] / 16 (edges
    repeated)."""
    out = np.asarray(image, np.float64)
    for axis in (-2, -1):
        padded = np.concatenate([np.take(out, [0], axis), out, np.take(out, [-1], axis)], axis)
        n = out.shape[axis]
        out = (np.take(padded, range(0, n), axis) + 2 * np.take(padded, range(1, n + 1), axis)
               + np.take(padded, range(2, n + 2), axis)) / 4
    return out


def class_score_objective(model, class_index: int, l2: float) -> Objective:
    """x -> (-S_c(x) + l2 |x|^2, its gradient): the class model's objective."""
    out = methods.output_name(model)
    (c,) = methods.classes_for(model, np.zeros((1,) + methods.input_shape(model), np.float32),
                               class_index)
    gm = methods.gradient_model(model, [out])
    seed = methods.one_hot(np.array([c]), methods.class_count(model))

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        run = gm.run(_as_image(model, x), {out: seed})
        return (-run.objective + l2 * float(x @ x),
                -run.input_grad.ravel().astype(np.float64) + 2 * l2 * x)
    return fun


def class_model(model: methods.Model, class_index: int, steps: int = 200,
                optimizer: str = "adam", l2: float = 1e-3, lr: float = 0.05,
                blur_every: int = 4, small: float = 0.05) -> Synthesis:
    """The image that most raises class ``class_index``'s score (seed 002). With Adam, every
    ``blur_every`` steps the image is blurred and pixels below ``small`` times its largest
    magnitude set to 0 (0 and 0: neither); with L-BFGS the objective alone."""
    model = methods.as_model(model)
    fun = class_score_objective(model, class_index, l2)
    x0 = np.zeros(int(np.prod(methods.input_shape(model))))
    if optimizer != "adam":
        return _optimize(model, fun, x0, optimizer, steps)
    shape = methods.input_shape(model)

    def project(x: np.ndarray, step: int) -> np.ndarray:
        if not blur_every or step % blur_every:
            return x
        image = blur(x.reshape(shape))
        image[np.abs(image) < small * np.abs(image).max()] = 0.0
        return image.ravel()
    return _optimize(model, fun, x0, optimizer, steps, lr=lr, project=project)


# -- DeepDream ---------------------------------------------------------------------------------

def dream_objective(model, layer: str, channel: int | None = None) -> Objective:
    """x -> (-|A|^2 / 2, its gradient), A the value of ``layer`` (or one channel of it)."""
    node = methods.node_of(model.graph, layer)
    if channel is not None:
        methods.check_channel(model.graph, layer, channel)
    gm = methods.gradient_model(model, [layer])

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        image = _as_image(model, x)
        a = methods.layer_values(model, image, [layer])[layer]
        if channel is not None:
            mask = np.zeros(node.type.shape[0])
            mask[channel] = 1.0
            a = a * mask.reshape((1, -1) + (1,) * (a.ndim - 2))
        run = gm.run(image, {layer: a})
        return -0.5 * float((a.astype(np.float64) ** 2).sum()), \
            -run.input_grad.ravel().astype(np.float64)
    return fun


def deepdream(model: methods.Model, image: np.ndarray, layer: str | None = None,
              channel: int | None = None, steps: int = 20, optimizer: str = "adam",
              lr: float = 0.02) -> Synthesis:
    """``image`` changed to amplify the activations of ``layer`` (default: after the last
    convolution), or of one channel of it."""
    model = methods.as_model(model)
    image = methods.batch_of(model, image)[:1]
    fun = dream_objective(model, layer or methods.last_feature_layer(model.graph), channel)
    options = {"lr": lr} if optimizer == "adam" else {}
    return _optimize(model, fun, image.ravel(), optimizer, steps, **options)


# -- neural style ------------------------------------------------------------------------------

def gram(f: np.ndarray) -> np.ndarray:
    """G = F F^T of one image's maps ``[C, H, W]`` (F: C x M, M = H W pixels)."""
    flat = np.asarray(f, np.float64).reshape(len(f), -1)
    return flat @ flat.T


def style_loss(f: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """E = |G(F) - A|^2 / (4 C^2 M^2) against target Gram matrix ``target``, and dE/dF =
    (G(F) - A) F / (C^2 M^2)."""
    c = len(f)
    m = f[0].size
    flat = np.asarray(f, np.float64).reshape(c, -1)
    diff = gram(f) - target
    scale = 1.0 / (c * c * m * m)
    return 0.25 * scale * float((diff ** 2).sum()), (scale * diff @ flat).reshape(f.shape)


def content_loss(f: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """|F - P|^2 / 2 and its gradient F - P."""
    diff = np.asarray(f, np.float64) - target
    return 0.5 * float((diff ** 2).sum()), diff


def style_objective(model, content: np.ndarray, style: np.ndarray,
                    content_layers: Sequence[str], style_layers: Sequence[str],
                    content_weight: float, style_weight: float) -> Objective:
    """x -> (neural style's f, its gradient) for one content and one style image."""
    layers = list(dict.fromkeys([*content_layers, *style_layers]))
    for layer in layers:
        if methods.node_of(model.graph, layer).type.rank != 3:
            raise ExplainError(f"neural style needs layers with maps (channels x height x "
                               f"width); {layer!r} is {methods.node_of(model.graph, layer).type}")
    targets = methods.layer_values(model, content, content_layers)
    styles = {k: gram(v[0]) for k, v in methods.layer_values(model, style, style_layers).items()}
    gm = methods.gradient_model(model, layers)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        image = _as_image(model, x)
        values = methods.layer_values(model, image, layers)
        total = 0.0
        seeds = {k: np.zeros_like(values[k], np.float64) for k in layers}
        for layer in content_layers:
            loss, grad = content_loss(values[layer][0], targets[layer][0])
            total += content_weight * loss
            seeds[layer][0] += content_weight * grad
        for layer in style_layers:
            loss, grad = style_loss(values[layer][0], styles[layer])
            total += style_weight * loss
            seeds[layer][0] += style_weight * grad
        run = gm.run(image, seeds)
        return total, run.input_grad.ravel().astype(np.float64)
    return fun


def activation_layers(graph) -> list[str]:
    """The value after each convolution with a spatial output (through its activation)."""
    return [methods.after_activation(graph, c) for c in methods.convolutions(graph)
            if c.type.shape[1] * c.type.shape[2] > 1]


def style_transfer(model: methods.Model, content: np.ndarray, style: np.ndarray,
                   content_layers: Sequence[str] | None = None,
                   style_layers: Sequence[str] | None = None, content_weight: float = 1.0,
                   style_weight: float = 1e3, steps: int = 50,
                   optimizer: str = "lbfgs", lr: float = 0.003) -> Synthesis:
    """``content`` redrawn with the style of ``style`` (one image each): content at the last
    convolution's maps, style at every convolution's, by default (``lr``: Adam's)."""
    model = methods.as_model(model)
    content = methods.batch_of(model, content)[:1]
    style = methods.batch_of(model, style)[:1]
    layers = activation_layers(model.graph)
    if not layers:
        raise ExplainError(f"network {model.graph.name!r} has no convolution with maps")
    fun = style_objective(model, content, style, content_layers or layers[-1:],
                          style_layers or layers, content_weight, style_weight)
    options = {"lr": lr} if optimizer == "adam" else {}
    return _optimize(model, fun, content.ravel(), optimizer, steps, **options)
