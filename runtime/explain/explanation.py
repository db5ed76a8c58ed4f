"""One explanation by method name: its arrays and its picture (``cnnc explain``, and
``cnnc.explain.explain`` for the same from Python).

    e = cnnc.explain.explain("lenet5", "gradcam", images=x)
    e.arrays["gradcam"], e.picture.size
    e.save("gradcam.png")                    # refuses to replace a file unless force=True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..cli_common import write_files
from ..datasets import load_dataset
from . import methods, pictures, synthesis
from .gradients import ExplainError

#: What the methods that need images use when given none, for a network that reads digits-like
#: images: the held-out split of ``cnnc train --data digits``.
DIGITS = "digits"


@dataclass
class Request:
    """What an explanation is asked for: the images (``[N, C, H, W]``; their labels where
    known), the layer, channel and class, and the methods' own settings."""

    images: np.ndarray
    labels: np.ndarray | None = None
    layer: str | None = None
    channel: int | None = None
    class_index: int | None = None
    top: int = 9
    patch: int = 8
    stride: int = 2
    steps: int | None = None
    optimizer: str | None = None
    progress: bool = False


@dataclass
class Explanation:
    """A method's arrays (by name) and the picture drawn from them."""

    method: str
    arrays: dict[str, np.ndarray]
    picture: Image.Image

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the picture as a PNG (an existing file is replaced only with ``force``)."""
        path = png_path(path)
        write_files({path: lambda f: self.picture.save(f, "PNG")}, force=force)
        return path


def png_path(path: str | Path) -> Path:
    """``path``, refused unless it names a .png file."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ExplainError(f"the picture is a PNG: name it .png, not {path.name}")
    return path


def _first(r: Request, what: str) -> np.ndarray:
    if len(r.images) < 1:
        raise ExplainError(f"{what} needs an image")
    return r.images[:1]


def _needs_layer(r: Request, method: str) -> str:
    if r.layer is None:
        raise ExplainError(f"{method} needs a layer (--layer NAME)")
    return r.layer


def _filters(model, r: Request) -> Explanation:
    w = methods.filters(model, r.layer)
    return Explanation("filters", {"filters": w}, pictures.filters_picture(w))


def _feature_maps(model, r: Request) -> Explanation:
    x = _first(r, "feature_maps")
    maps = methods.feature_maps(model, x, _needs_layer(r, "feature_maps"))
    if maps.ndim != 4:
        raise ExplainError(f"layer {r.layer!r} has no maps (its value is "
                           f"{'x'.join(map(str, maps.shape[1:]))}); name a layer with "
                           "channels x height x width")
    return Explanation("feature_maps", {"feature_maps": maps}, pictures.maps_picture(maps[0]))


def _saliency(model, r: Request) -> Explanation:
    s = methods.saliency(model, r.images, r.class_index)
    return Explanation("saliency", {"saliency": s}, pictures.map_rows_picture(r.images, s))


def _gradient_method(name: str, fn: Callable[..., np.ndarray]):
    def run(model, r: Request) -> Explanation:
        g = fn(model, r.images, r.class_index)
        return Explanation(name, {name: g}, pictures.gradient_rows_picture(r.images, g))
    return run


def _gradcam(model, r: Request) -> Explanation:
    cam = methods.gradcam(model, r.images, r.class_index, r.layer)
    return Explanation("gradcam", {"gradcam": cam}, pictures.heat_rows_picture(r.images, cam))


def _occlusion(model, r: Request) -> Explanation:
    x = _first(r, "occlusion")
    scores = methods.occlusion(model, x, r.class_index, r.patch, r.stride,
                               progress=r.progress)
    return Explanation("occlusion", {"occlusion": scores},
                       pictures.occlusion_picture(x[0], scores, r.patch, r.stride))


def _top_patches(model, r: Request) -> Explanation:
    layer = _needs_layer(r, "top_patches")
    channel = 0 if r.channel is None else r.channel
    tp = methods.top_patches(model, r.images, layer, channel, r.top)
    arrays = {"indices": tp.indices, "activations": tp.activations,
              "positions": tp.positions, "boxes": tp.boxes}
    return Explanation("top_patches", arrays, pictures.crops_picture(list(tp.crops)))


def _tsne(model, r: Request) -> Explanation:
    """Coloured by the labels, or where there are none by the predicted classes."""
    points = methods.tsne(model, r.images, r.layer)
    classes = r.labels if r.labels is not None else methods.classes_for(model, r.images, None)
    return Explanation("tsne", {"tsne": points, "classes": np.asarray(classes)},
                       pictures.scatter_picture(points, classes))


def _synthesis_options(r: Request) -> dict[str, object]:
    options: dict[str, object] = {}
    if r.steps is not None:
        options["steps"] = r.steps
    if r.optimizer is not None:
        options["optimizer"] = r.optimizer
    return options


def _synthesized(name: str, result: synthesis.Synthesis, shown: list[np.ndarray]
                 ) -> Explanation:
    images = np.stack([*shown, result.image])
    return Explanation(name, {name: result.image, "objective": result.objective},
                       pictures.image_rows_picture(images))


def _class_model(model, r: Request) -> Explanation:
    if r.class_index is None:
        raise ExplainError("class_model needs a class (--class K)")
    result = synthesis.class_model(model, r.class_index, **_synthesis_options(r))
    return _synthesized("class_model", result, [])


def _deepdream(model, r: Request) -> Explanation:
    x = _first(r, "deepdream")
    result = synthesis.deepdream(model, x, r.layer, r.channel, **_synthesis_options(r))
    return _synthesized("deepdream", result, [x[0]])


def _style(model, r: Request) -> Explanation:
    if len(r.images) != 2:
        raise ExplainError(f"style takes two images, the content then the style; got "
                           f"{len(r.images)}")
    layers = [r.layer] if r.layer else None
    result = synthesis.style_transfer(model, r.images[:1], r.images[1:], style_layers=layers,
                                      **_synthesis_options(r))
    return _synthesized("style", result, [r.images[0], r.images[1]])


#: Every method by name.
METHODS: dict[str, Callable[..., Explanation]] = {
    "filters": _filters,
    "feature_maps": _feature_maps,
    "saliency": _saliency,
    "guided_backprop": _gradient_method("guided_backprop", methods.guided_backprop),
    "deconvnet": _gradient_method("deconvnet", methods.deconvnet),
    "gradcam": _gradcam,
    "occlusion": _occlusion,
    "top_patches": _top_patches,
    "tsne": _tsne,
    "class_model": _class_model,
    "deepdream": _deepdream,
    "style": _style,
}
#: Methods that look at many images (the digits by default), not one; and at two.
OVER_A_SET = ("top_patches", "tsne")
PAIRS = ("style",)


def explain(model: methods.Model, method: str, images: np.ndarray | None = None,
            labels: np.ndarray | None = None, **options) -> Explanation:
    """``method`` on ``model`` (as ``methods.as_model`` takes it) and ``images`` (default:
    the held-out digits, the first of them where the method looks at one image, two for
    style); ``options`` as :class:`Request` names them."""
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; cnnc explain has {', '.join(METHODS)}")
    model = methods.as_model(model)
    if images is None:
        images, labels = default_images(model, method, 1)
    images = methods.batch_of(model, images)
    known = [f.name for f in fields(Request)][2:]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ExplainError(f"explain takes the options {', '.join(known)}; not "
                           f"{', '.join(unknown)}")
    return METHODS[method](model, Request(images, labels, **options))


def default_images(model, method: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits at the network's input shape: all of them for the methods over a
    set, two for style, else the first ``count``."""
    data = load_dataset(DIGITS, methods.input_shape(model))
    if method in OVER_A_SET:
        return data.test_x, data.test_y
    if method == "style":  # the first digit, in the style of the first one of another class
        other = int(np.argmax(data.test_y != data.test_y[0]))
        return data.test_x[[0, other]], data.test_y[[0, other]]
    return data.test_x[:count], data.test_y[:count]
