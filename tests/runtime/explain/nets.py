"""The networks the explanation tests look inside: the shipped LeNet-5 (tanh, average pooling,
trained) and a LeNet-5 with ReLU, batch norm and max pooling (random weights), whose
convolutions have LeNet-5's shapes so that both share their compiled kernels with the rest of
the suite; and PyTorch's forward of each on cnnc's weights, in float64, the activations as
modules (for the hooks that change their backward pass)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import cnnc

RELU_LENET = """network relu_lenet(classes = 10)
input image: 1 x 32 x 32
image -> conv(6, 5) as c1 -> batchnorm as bn1 -> relu -> maxpool(2) as s2
      -> conv(16, 5) as c3 -> relu -> avgpool(2) as s4 -> flatten
      -> dense(classes) as out -> softmax
      -> output probabilities
"""


def relu_lenet(seed: int = 3) -> tuple[cnnc.runtime.model.CompiledModel, np.ndarray]:
    """RELU_LENET compiled with random weights (normal, over the square root of the fan-in,
    so the class probabilities are not all 0 and 1; running variances in [0.5, 2]), and
    three random images."""
    graph = cnnc.load(RELU_LENET)
    rng = np.random.default_rng(seed)
    params = {n.name: (rng.standard_normal(n.type.shape) / np.sqrt(np.prod(n.type.shape[1:])))
              .astype(np.float32) for n in graph.params()}
    params["bn1.running_var"] = rng.uniform(0.5, 2.0, 6).astype(np.float32)
    return cnnc.compile(graph, weights=params), rng.random((3, 1, 32, 32)).astype(np.float32)


def hook(rule: str):
    """Guided backprop clamps what the activation passes back at 0 (relu' and tanh' are
    >= 0: f'(x) max(dy, 0)); the deconvnet passes max(dy, 0) whatever the input was."""
    def change(module, grad_input, grad_output):
        if rule == "guided":
            return (grad_input[0].clamp(min=0),)
        return (grad_output[0].clamp(min=0),)
    return change


class Twin(nn.Module):
    """PyTorch's forward of RELU_LENET (``kind="relu"``, batch norm in eval mode) or LeNet-5
    (``"lenet5"``), keeping the maps Grad-CAM reads (``cam_layer``: after the second
    convolution's activation)."""

    def __init__(self, kind: str, params: dict[str, np.ndarray], rule: str | None = None):
        super().__init__()
        self.kind = kind
        self.p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
        act = nn.ReLU if kind == "relu" else nn.Tanh
        self.acts = nn.ModuleList(act() for _ in range(2 if kind == "relu" else 4))
        if rule is not None:
            for a in self.acts:
                a.register_full_backward_hook(hook(rule))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, a = self.p, self.acts
        h = F.conv2d(x, p["c1.weight"], p["c1.bias"])
        if self.kind == "relu":
            h = F.batch_norm(h, p["bn1.running_mean"], p["bn1.running_var"], p["bn1.weight"],
                             p["bn1.bias"], training=False, eps=1e-5)
            h = F.max_pool2d(a[0](h), 2)
            self.cam_layer = a[1](F.conv2d(h, p["c3.weight"], p["c3.bias"]))
            return F.linear(F.avg_pool2d(self.cam_layer, 2).flatten(1), p["out.weight"],
                            p["out.bias"])
        h = F.avg_pool2d(a[0](h), 2)
        self.cam_layer = a[1](F.conv2d(h, p["c3.weight"], p["c3.bias"]))
        h = a[2](F.conv2d(F.avg_pool2d(self.cam_layer, 2), p["c5.weight"], p["c5.bias"]))
        h = a[3](F.linear(h.flatten(1), p["f6.weight"], p["f6.bias"]))
        return F.linear(h, p["out.weight"], p["out.bias"])
