"""Looking inside a trained network: the seeds' visualizations as arrays (seed 002
"Visualization of Conv layer", seed 004 section 6). Each function takes a compiled model
(``cnnc.compile``; or a zoo name, a .cnn path or a graph, with its shipped trained weights where
the zoo has them) and returns NumPy arrays; ``runtime/explain/pictures.py`` draws them.

Gradients come from the compiled training machinery (``gradients.GradientModel``): the class
score is the ``weighted_sum`` of the logits with a one-hot seed (a final softmax is skipped,
as Simonyan et al. take the unnormalized score), differentiated by ``autodiff`` with respect to
the input, or to a layer's value for Grad-CAM. Guided backprop and the deconvnet differentiate
the same objective through the network with its activations' backward rule rewritten.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ...compiler.autodiff import GradientError, values_named
from ...compiler.ir import Graph, Node
from ...compiler.ops import get_op
from ...compiler.receptive_field import receptive_fields
from ...dsl.builder import load_network
from ...zoo import trained_weights
from ..model import CompiledModel
from ..model import compile as compile_model
from ..weights import init_params, load_weights
from .gradients import ExplainError, GradientModel, with_outputs

Model = CompiledModel | str | Path | Graph

# Compiled helpers (gradient models, networks cut at a layer) of each model, built once.
_HELPERS: weakref.WeakKeyDictionary[CompiledModel, dict[Hashable, Any]] = \
    weakref.WeakKeyDictionary()


def as_model(model: Model, weights: str | Path | None = None) -> CompiledModel:
    """A compiled model: ``model`` itself, or the network it names compiled with ``weights``
    (default: the zoo's shipped trained weights where it has them, else the seeded
    initialization)."""
    if isinstance(model, CompiledModel):
        if weights is not None:
            raise ExplainError("a compiled model has its weights: give weights with a network "
                               "name, or set them with model.load_weights")
        return model
    graph = model if isinstance(model, Graph) else load_network(str(model))
    if weights is None and isinstance(model, str):
        weights = shipped_weights(model, graph)
    params = load_weights(graph, weights) if weights is not None else init_params(graph)
    return compile_model(graph, weights=params)


def shipped_weights(source: str, graph: Graph) -> Path | None:
    """The zoo's trained weights for network ``graph`` loaded as ``source`` (a zoo name, not a
    file that happens to share it), or None."""
    return trained_weights(source) if source == graph.name else None


def _helper(model: CompiledModel, key: Hashable, build: Callable[[], Any],
            set_params: Callable[[Any, dict[str, np.ndarray]], None]) -> Any:
    """The helper ``key`` of ``model`` (``build`` the first time), its parameters the model's
    current ones (``set_params`` again only after the model's have been replaced)."""
    store = _HELPERS.setdefault(model, {})
    params = model.params
    if key not in store:
        store[key] = build(), None
    helper, seen = store[key]
    if seen is None or seen.keys() != params.keys() or \
            any(seen[k] is not v for k, v in params.items()):
        set_params(helper, params)
        store[key] = helper, params
    return helper


def gradient_model(model: CompiledModel, objective: Sequence[str], *,
                   gradients_of: Sequence[str] = (), values: Sequence[str] = (),
                   rule: str | None = None) -> GradientModel:
    """The model's :class:`GradientModel` for these settings (compiled once)."""
    key = ("gradient", tuple(objective), tuple(gradients_of), tuple(values), rule)
    return _helper(model, key, lambda: GradientModel(
        model.graph, model.params, objective=objective, gradients_of=gradients_of,
        values=values, rule=rule), GradientModel.set_params)


def layer_values(model: CompiledModel, x: np.ndarray, layers: Sequence[str]
                 ) -> dict[str, np.ndarray]:
    """The values of ``layers`` (by name) for batch ``x``, from the network compiled up to
    them (once per model and layers)."""
    def own(graph: Graph, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = {p.name for p in graph.params()}  # those of the layers before the cut
        return {k: v for k, v in params.items() if k in names}

    def build() -> CompiledModel:
        graph = with_outputs(model.graph, layers)
        return compile_model(graph, weights=own(graph, model.params), progress=False)

    cut = _helper(model, ("values", tuple(layers)), build,
                  lambda cut, params: cut.set_params(own(cut.graph, params)))
    out = cut.run({next(iter(cut.graph.inputs)): batch_of(model, x)})
    return {name: out[name] for name in layers}


# -- checking what was asked ------------------------------------------------------------------

def input_shape(model: CompiledModel) -> tuple[int, ...]:
    (nid,) = model.graph.inputs.values()
    return model.graph.node(nid).type.shape


def batch_of(model: CompiledModel, x: np.ndarray) -> np.ndarray:
    """``x`` as a float32 batch for the network's one input (one image gets a batch axis)."""
    if len(model.graph.inputs) != 1:
        raise ExplainError(f"explanations take networks of one input; {model.graph.name!r} "
                           f"has {', '.join(model.graph.inputs)}")
    shape = input_shape(model)
    x = np.asarray(x, np.float32)
    if x.shape == shape:
        x = x[None]
    if x.shape[1:] != shape:
        raise ExplainError(f"images of shape {'x'.join(map(str, x.shape))} for input "
                           f"{next(iter(model.graph.inputs))!r} of "
                           f"{model.graph.name!r}, which takes {'x'.join(map(str, shape))}")
    return np.ascontiguousarray(x)


def output_name(model: CompiledModel) -> str:
    if len(model.graph.outputs) != 1:
        raise ExplainError(f"class explanations need a network with one output; "
                           f"{model.graph.name!r} has {', '.join(model.graph.outputs)}")
    return next(iter(model.graph.outputs))


def class_count(model: CompiledModel) -> int:
    out = model.graph.node(model.graph.outputs[output_name(model)]).type
    if out.rank != 1:
        raise ExplainError(f"class explanations need class scores [K]; {model.graph.name!r} "
                           f"puts out {out}")
    return out.shape[0]


def classes_for(model: CompiledModel, x: np.ndarray, class_index: int | Sequence[int] | None
                ) -> np.ndarray:
    """One class per image: ``class_index`` (one for all, or one each), or the predicted one."""
    k = class_count(model)
    if class_index is None:
        scores = model.run({next(iter(model.graph.inputs)): x})[output_name(model)]
        return scores.reshape(len(x), -1).argmax(axis=1)
    try:
        classes = np.broadcast_to(np.asarray(class_index), (len(x),))
    except ValueError:
        raise ExplainError(f"give one class for all {len(x)} images or one for each, not "
                           f"{np.shape(class_index)[0]}") from None
    for c in np.unique(classes):
        if c != int(c) or not 0 <= c < k:
            raise ExplainError(f"class {c} does not exist: network {model.graph.name!r} has "
                               f"{k} classes, 0..{k - 1}")
    return classes.astype(np.int64)


def node_of(graph: Graph, layer: str) -> Node:
    """The node of layer ``layer`` (an ExplainError listing the layers for a name that is
    none)."""
    try:
        (nid,) = values_named(graph, [layer])
    except GradientError as e:
        raise ExplainError(str(e)) from None
    return graph.node(nid)


def check_channel(graph: Graph, layer: str, channel: int) -> None:
    shape = node_of(graph, layer).type.shape
    if not 0 <= channel < shape[0]:
        raise ExplainError(f"layer {layer!r} has {shape[0]} channels, 0..{shape[0] - 1}; there "
                           f"is no channel {channel}")


def one_hot(classes: np.ndarray, k: int) -> np.ndarray:
    seeds = np.zeros((len(classes), k), np.float32)
    seeds[np.arange(len(classes)), classes] = 1.0
    return seeds


# -- weights and activations -------------------------------------------------------------------

def convolutions(graph: Graph) -> list[Node]:
    return [n for n in graph.topo_order() if n.op == "conv"]


def filters(model: Model, layer: str | None = None) -> np.ndarray:
    """The kernels ``[K, C/groups, kh, kw]`` of convolution ``layer`` (default the first)."""
    model = as_model(model)
    convs = convolutions(model.graph)
    if not convs:
        raise ExplainError(f"network {model.graph.name!r} has no convolution")
    conv = convs[0] if layer is None else node_of(model.graph, layer)
    if conv.op != "conv":
        raise ExplainError(f"layer {layer!r} is a {conv.op}, not a convolution; the "
                           f"convolutions are {', '.join(c.name for c in convs)}")
    return np.array(model.params[model.graph.node(conv.inputs[1]).name])


def feature_maps(model: Model, x: np.ndarray, layer: str) -> np.ndarray:
    """The activations ``[N, C, H, W]`` of ``layer`` for images ``x``."""
    model = as_model(model)
    node_of(model.graph, layer)
    return layer_values(model, x, [layer])[layer]


# -- gradients of a class score ----------------------------------------------------------------

def input_gradient(model: Model, x: np.ndarray, class_index: int | Sequence[int] | None = None,
                   rule: str | None = None) -> np.ndarray:
    """d score_k / d x ``[N, C, H, W]`` for each image's class (default its predicted one):
    plain backprop, or with the ``guided`` or ``deconvnet`` rule for the activations."""
    model = as_model(model)
    x = batch_of(model, x)
    classes = classes_for(model, x, class_index)
    out = output_name(model)
    gm = gradient_model(model, [out], rule=rule)
    return gm.run(x, {out: one_hot(classes, class_count(model))}).input_grad


def saliency(model: Model, x: np.ndarray, class_index: int | Sequence[int] | None = None
             ) -> np.ndarray:
    """Seed 002's image-specific class saliency ``[N, H, W]``: the absolute value of the class
    score's gradient with respect to the input, the maximum over the channels."""
    return np.abs(input_gradient(model, x, class_index)).max(axis=1)


def guided_backprop(model: Model, x: np.ndarray,
                    class_index: int | Sequence[int] | None = None) -> np.ndarray:
    """The class score's gradient ``[N, C, H, W]`` with only positive gradients passed back
    through activations with a positive input (the guided rule)."""
    return input_gradient(model, x, class_index, rule="guided")


def deconvnet(model: Model, x: np.ndarray,
              class_index: int | Sequence[int] | None = None) -> np.ndarray:
    """The class score's gradient ``[N, C, H, W]`` with the activations' backward pass
    replaced by a ReLU of the gradient (the deconvnet rule)."""
    return input_gradient(model, x, class_index, rule="deconvnet")


def last_feature_layer(graph: Graph) -> str:
    """Grad-CAM's default layer: the last value with maps of more than one pixel that is not
    a pooling's (LeNet-5: the activation after its last such convolution; a ResNet: its last
    block's output)."""
    maps = [n for n in graph.topo_order() if n.type.rank == 3 and n.op != "input"
            and n.type.shape[1] * n.type.shape[2] > 1 and get_op(n.op).family != "pool"]
    if not maps:
        raise ExplainError(f"network {graph.name!r} has no layer with maps of more than one "
                           "pixel")
    return maps[-1].name


def after_activation(graph: Graph, conv: Node) -> str:
    """The value a convolution's maps end in: the convolution, or the chain of activations
    (batch norm...) that alone reads it."""
    node = conv
    users = graph.users(node.id)
    while len(users) == 1 and users[0].type == node.type and \
            get_op(users[0].op).family in ("activation", "norm"):
        node = users[0]
        users = graph.users(node.id)
    return node.name


def gradcam(model: Model, x: np.ndarray, class_index: int | Sequence[int] | None = None,
            layer: str | None = None) -> np.ndarray:
    """Grad-CAM ``[N, h, w]`` (Selvaraju et al. 2017) at ``layer`` (default:
    :func:`last_feature_layer`): ``relu(sum_k a_k A_k)``, a_k the mean over the pixels of
    d score / d A_k."""
    model = as_model(model)
    layer = layer or last_feature_layer(model.graph)
    if node_of(model.graph, layer).type.rank != 3:
        raise ExplainError(f"Grad-CAM needs a layer with channels x height x width; {layer!r} "
                           f"is {node_of(model.graph, layer).type}")
    x = batch_of(model, x)
    classes = classes_for(model, x, class_index)
    out = output_name(model)
    gm = gradient_model(model, [out], gradients_of=[layer], values=[layer])
    run = gm.run(x, {out: one_hot(classes, class_count(model))})
    weights = run.grads[layer].mean(axis=(2, 3), keepdims=True)
    return np.maximum((weights * run.values[layer]).sum(axis=1), 0.0)


# -- occlusion ---------------------------------------------------------------------------------

def occlusion(model: Model, x: np.ndarray, class_index: int | None = None, patch: int = 8,
              stride: int = 2, fill: float = 0.5, batch: int = 64,
              progress: bool = False) -> np.ndarray:
    """Zeiler and Fergus's occlusion sensitivity for one image ``[rows, cols]``: the network's
    output for the class (its probability, for a network ending in a softmax) with a
    ``patch`` x ``patch`` square of value ``fill`` at each position ``stride`` apart, the
    occluded images run through the compiled model ``batch`` at a time."""
    model = as_model(model)
    x = batch_of(model, x)
    if len(x) != 1:
        raise ExplainError(f"occlusion maps one image at a time, got {len(x)}")
    (c,) = classes_for(model, x, class_index)
    _, height, width = input_shape(model)
    if not 1 <= patch <= min(height, width) or stride < 1:
        raise ExplainError(f"the patch must be 1..{min(height, width)} pixels and the stride "
                           f"at least 1, got patch {patch} and stride {stride}")
    tops = range(0, height - patch + 1, stride)
    lefts = range(0, width - patch + 1, stride)
    places = [(t, left) for t in tops for left in lefts]
    scores = np.empty(len(places), np.float64)
    name, out = next(iter(model.graph.inputs)), output_name(model)
    bar = tqdm(total=len(places), desc="occlusion", unit="image", file=sys.stderr,
               disable=not progress)
    for start in range(0, len(places), batch):
        chunk = places[start:start + batch]
        occluded = np.repeat(x, len(chunk), axis=0)
        for i, (t, left) in enumerate(chunk):
            occluded[i, :, t:t + patch, left:left + patch] = fill
        result = model.run({name: occluded})[out]
        scores[start:start + len(chunk)] = result.reshape(len(chunk), -1)[:, c]
        bar.update(len(chunk))
    bar.close()
    return scores.reshape(len(tops), len(lefts))


# -- the images that most activate a channel ---------------------------------------------------

@dataclass
class TopPatches:
    """The ``k`` images that most activate a channel, best first: their indices, the largest
    activation in each, where it is (row, column of the layer's map), the input box the
    neuron there sees (top, left, bottom, right; bottom and right exclusive, possibly past the
    image where the field reaches into the padding) and the crops (the box within the image;
    ``[k, C, h, w]`` when every crop has one size, else a list)."""

    indices: np.ndarray
    activations: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    crops: Any


def receptive_box(graph: Graph, layer: str, row: int, col: int) -> tuple[int, int, int, int]:
    """The input pixels the neuron at (``row``, ``col``) of ``layer`` sees, from the
    receptive-field analysis: the window of ``size`` pixels centred on ``start + i jump``."""
    node = node_of(graph, layer)
    field = receptive_fields(graph)[node.id]
    if field.axes is None:
        raise ExplainError(f"layer {layer!r} sees the whole input: it has no receptive field "
                           "to crop")
    box = []
    for axis, i in zip(field.axes, (row, col)):
        first = axis.start + i * axis.jump - (axis.size - 1) / 2
        box.append((math.floor(first), math.floor(first + axis.size)))
    return box[0][0], box[1][0], box[0][1], box[1][1]


def top_patches(model: Model, images: np.ndarray, layer: str, channel: int, k: int = 9,
                batch: int = 256) -> TopPatches:
    """Seed 004's Figure 6.12: over ``images``, the ``k`` whose ``channel`` of ``layer``
    reaches the highest value anywhere, each cropped to the receptive field of the neuron
    where it does."""
    if k < 1:
        raise ExplainError(f"top patches: k must be at least 1, got {k}")
    model = as_model(model)
    images = batch_of(model, images)
    node = node_of(model.graph, layer)
    if node.type.rank != 3:
        raise ExplainError(f"top patches need a layer with channels x height x width; "
                           f"{layer!r} is {node.type}")
    check_channel(model.graph, layer, channel)
    best = np.empty(len(images)), np.empty(len(images), np.int64)
    for start in range(0, len(images), batch):
        maps = layer_values(model, images[start:start + batch], [layer])[layer][:, channel]
        flat = maps.reshape(len(maps), -1)
        best[1][start:start + len(maps)] = flat.argmax(axis=1)
        best[0][start:start + len(maps)] = flat.max(axis=1)
    order = np.argsort(-best[0], kind="stable")[:k]
    width = node.type.shape[2]
    positions = np.stack([best[1][order] // width, best[1][order] % width], axis=1)
    boxes = np.array([receptive_box(model.graph, layer, r, c) for r, c in positions])
    _, height, width_in = input_shape(model)
    crops = [images[i, :, max(t, 0):min(b, height), max(left, 0):min(r, width_in)]
             for i, (t, left, b, r) in zip(order, boxes)]
    same = len({c.shape for c in crops}) == 1
    return TopPatches(order, best[0][order], positions, boxes,
                      np.stack(crops) if same and crops else crops)


# -- the features before the classifier --------------------------------------------------------

def feature_layer(graph: Graph) -> str:
    """t-SNE's default layer: the input of the last dense layer (the features the classifier
    reads)."""
    dense = [n for n in graph.topo_order() if n.op == "dense"]
    if not dense:
        raise ExplainError(f"network {graph.name!r} has no dense classifier; name a layer")
    return graph.node(dense[-1].inputs[0]).name


def features(model: Model, images: np.ndarray, layer: str | None = None,
             batch: int = 256) -> np.ndarray:
    """The values of ``layer`` (default the classifier's input), one row per image."""
    model = as_model(model)
    images = batch_of(model, images)
    layer = layer or feature_layer(model.graph)
    node_of(model.graph, layer)
    rows = [layer_values(model, images[i:i + batch], [layer])[layer]
            for i in range(0, len(images), batch)]
    return np.concatenate(rows).reshape(len(images), -1)


def tsne(model: Model, images: np.ndarray, layer: str | None = None, seed: int = 0
         ) -> np.ndarray:
    """t-SNE (scikit-learn) of the features before the classifier: ``[N, 2]``."""
    from sklearn.manifold import TSNE  # slow to import: only when asked for

    points = features(model, images, layer)
    if len(points) < 3:
        raise ExplainError(f"t-SNE needs at least 3 images, got {len(points)}")
    perplexity = min(30.0, (len(points) - 1) / 3)
    # the exact gradient is the faster one below a thousand points or so (Barnes-Hut's tree
    # costs more than it saves), and 500 iterations settle the digits' clusters
    method = "exact" if len(points) <= 1000 else "barnes_hut"
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, method=method,
                max_iter=500).fit_transform(points.astype(np.float64))


__all__ = ["ExplainError", "Model", "TopPatches", "as_model", "deconvnet",
           "feature_maps", "features", "filters", "gradcam", "guided_backprop",
           "input_gradient", "occlusion", "receptive_box", "saliency", "shipped_weights",
           "top_patches", "tsne"]
