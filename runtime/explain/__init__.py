"""Looking inside a trained network (``cnnc.explain``, ``cnnc explain``).

    import cnnc
    model = cnnc.explain.as_model("lenet5")          # the zoo's shipped trained weights
    s = cnnc.explain.saliency(model, x, class_index=3)
    cam = cnnc.explain.gradcam(model, x)             # the predicted class, last convolution

``methods``: the computations, returning arrays; ``synthesis``: the images made by optimizing
them (``descent``: L-BFGS and Adam); ``gradients``: the compiled objective and its gradients
they run on; ``pictures``: the PNGs drawn from them; ``explanation``: a method by name, its
arrays and picture; ``command``: ``cnnc explain``.
"""

from __future__ import annotations

from . import synthesis
from .explanation import METHODS, Explanation, explain
from .gradients import ExplainError, GradientModel
from .methods import (
    TopPatches,
    as_model,
    deconvnet,
    feature_maps,
    features,
    filters,
    gradcam,
    guided_backprop,
    input_gradient,
    occlusion,
    receptive_box,
    saliency,
    top_patches,
    tsne,
)
from .synthesis import class_model, deepdream, style_transfer

__all__ = ["METHODS", "ExplainError", "Explanation", "GradientModel", "TopPatches", "as_model",
           "class_model", "deconvnet", "deepdream", "explain", "feature_maps", "features",
           "filters", "gradcam", "guided_backprop", "input_gradient", "occlusion",
           "receptive_box", "saliency", "style_transfer", "synthesis", "top_patches", "tsne"]
