"""Looking inside a trained network (``cnnc.explain``, ``cnnc explain``).

    import cnnc
    model = cnnc.explain.as_model("lenet5")          # the zoo's shipped trained weights
    s = cnnc.explain.saliency(model, x, class_index=3)
    cam = cnnc.explain.gradcam(model, x)             # the predicted class, last convolution

``methods``: the computations, returning arrays; ``gradients``: the compiled objective and its
gradients they run on; ``pictures``: the PNGs drawn from them; ``command``: ``cnnc explain``.
"""

from __future__ import annotations

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

__all__ = ["ExplainError", "GradientModel", "TopPatches", "as_model", "deconvnet",
           "feature_maps", "features", "filters", "gradcam", "guided_backprop",
           "input_gradient", "occlusion", "receptive_box", "saliency", "top_patches", "tsne"]
