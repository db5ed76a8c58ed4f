"""``loss_and_grads`` of two zoo networks against PyTorch autograd with the same weights, at
small input sizes: GoogLeNet with its two auxiliary classifiers, cross-entropy on the three
heads weighted 1, 0.3 and 0.3 (the paper's weights; dropout's masks are cnnc's seeded ones,
applied to the torch twin as they are), and the siamese network, its shared tower in training
mode (batch statistics per application), with the contrastive loss on its ``distance``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnc
from cnnc.compiler.ops.tensor import dropout_keep
from cnnc.runtime.weights import init_params

Tensors = dict[str, torch.Tensor]

AUX = 0.3  # GoogLeNet's auxiliary losses' weight (Szegedy et al., section 5)


def as_torch(params: dict[str, np.ndarray]) -> Tensors:
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
            for k, v in params.items()}


def compare(tm, params: dict[str, np.ndarray], x, y,
            torch_loss: Callable[[Tensors], torch.Tensor], rtol: float) -> None:
    """The compiled loss and every gradient against torch's, within ``rtol`` of each tensor
    and 1e-4 of the largest gradient."""
    got, grads = tm.loss_and_grads(x, y)
    p = as_torch(params)
    want = torch_loss(p)
    want.backward()
    assert got == pytest.approx(want.item(), rel=rtol)
    trained = {n for n, t in p.items() if t.grad is not None}
    assert set(grads) == trained
    scale = max(float(p[n].grad.abs().max()) for n in trained)
    for name, g in grads.items():
        np.testing.assert_allclose(g, p[name].grad.numpy(), rtol=rtol, atol=1e-4 * scale,
                                   err_msg=name)


# -- GoogLeNet with its auxiliary heads ----------------------------------------------------------

def googlenet_twin(p: Tensors, x: np.ndarray, masks: dict[str, np.ndarray]
                   ) -> dict[str, torch.Tensor]:
    """zoo/googlenet.cnn in torch: the logits of the three heads (the softmaxes the loss
    skips), dropout as the given masks (kept values already scaled by 1 / (1 - rate))."""
    def conv(h, name, stride=1, pad=0):
        return F.relu(F.conv2d(h, p[f"{name}.conv1.weight"], p[f"{name}.conv1.bias"],
                               stride=stride, padding=pad))

    def pool(h):
        return F.max_pool2d(h, 3, 2, ceil_mode=True)

    def lrn(h):
        return F.local_response_norm(h, 5, alpha=1e-4, beta=0.75, k=1.0)

    def inception(h, name):
        b = [conv(h, f"{name}.conv_relu1"),
             conv(conv(h, f"{name}.conv_relu2"), f"{name}.conv_relu3", pad=1),
             conv(conv(h, f"{name}.conv_relu4"), f"{name}.conv_relu5", pad=2),
             conv(F.max_pool2d(h, 3, 1, 1), f"{name}.conv_relu6")]
        return torch.cat(b, dim=1)

    def aux(h, name):
        h = conv(F.avg_pool2d(h, 5, 3), f"{name}.conv_relu1").flatten(1)
        h = F.relu(F.linear(h, p[f"{name}.dense1.weight"], p[f"{name}.dense1.bias"]))
        h = h * torch.tensor(masks[f"{name}.dropout1"])
        return F.linear(h, p[f"{name}.dense2.weight"], p[f"{name}.dense2.bias"])

    h = torch.tensor(x, dtype=torch.float64)
    h = lrn(pool(conv(h, "conv1", 2, 3)))
    h = pool(lrn(conv(conv(h, "conv2"), "conv3", pad=1)))
    h = pool(inception(inception(h, "inception3a"), "inception3b"))
    x4a = inception(h, "inception4a")
    x4d = inception(inception(inception(x4a, "inception4b"), "inception4c"), "inception4d")
    h = pool(inception(x4d, "inception4e"))
    h = inception(inception(h, "inception5a"), "inception5b")
    h = F.adaptive_avg_pool2d(h, 1).flatten(1) * torch.tensor(masks["dropout1"])
    return {"probabilities": F.linear(h, p["fc.weight"], p["fc.bias"]),
            "aux1": aux(x4a, "aux1_head"), "aux2": aux(x4d, "aux2_head")}


def dropout_masks(tm, batch: int) -> dict[str, np.ndarray]:
    """Each dropout layer's mask in the compiled model's first step (seed 0, step 0), scaled."""
    masks = {}
    for node in tm.plan.graph.nodes():
        if node.op == "dropout_train" and not node.name.endswith(".grad"):
            rate = node.attrs["rate"]
            keep = dropout_keep(tm.seed, tm.steps_taken, node.attrs["stream"],
                                (batch,) + node.type.shape, rate)
            masks[node.name] = keep / (1.0 - rate)
    return masks


def test_googlenet_with_its_auxiliary_heads_matches_pytorch():
    graph = cnnc.load("googlenet", size=80, classes=10)  # the aux heads' pools need 80
    assert {"aux1", "aux2"} <= set(graph.outputs)
    params = init_params(graph, seed=1)
    terms = [("probabilities", "cross_entropy", 1.0), ("aux1", "cross_entropy", AUX),
             ("aux2", "cross_entropy", AUX)]
    tm = cnnc.compile(graph, weights=params, mode="train", loss=terms)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 80, 80)).astype(np.float32)
    y = np.array([3, 8])  # one array: the same labels for every head
    masks = dropout_masks(tm, 2)
    assert set(masks) == {"dropout1", "aux1_head.dropout1", "aux2_head.dropout1"}
    labels = torch.tensor(y)

    def torch_loss(p: Tensors) -> torch.Tensor:
        out = googlenet_twin(p, x, masks)
        return sum(w * F.cross_entropy(out[name], labels) for name, _, w in terms)

    compare(tm, params, x, y, torch_loss, rtol=1e-3)


# -- the siamese network with the contrastive loss -----------------------------------------------

def siamese_twin(p: Tensors, x: np.ndarray) -> torch.Tensor:
    """zoo/siamese.cnn's tower in training mode: batch norm with the batch's statistics."""
    h = torch.tensor(x, dtype=torch.float64)
    for s in range(1, 5):
        stage = f"embed.stage{s}"
        h = F.conv2d(h, p[f"{stage}.conv1.weight"], padding=1)
        bn = f"{stage}.batchnorm1"
        h = F.batch_norm(h, p[f"{bn}.running_mean"].detach().clone(),
                         p[f"{bn}.running_var"].detach().clone(), p[f"{bn}.weight"],
                         p[f"{bn}.bias"], training=True, momentum=0.1, eps=1e-5)
        h = F.max_pool2d(F.relu(h), 2)
    h = F.adaptive_avg_pool2d(h, 1).flatten(1)
    return F.linear(h, p["embed.dense1.weight"], p["embed.dense1.bias"])


def test_siamese_with_the_contrastive_loss_matches_pytorch():
    graph = cnnc.load("siamese", size=16, width=4, embedding=8)
    rng = np.random.default_rng(3)
    params = {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32)
              for k, v in init_params(graph).items()}
    for k in params:
        if k.endswith("running_var"):
            params[k] = np.abs(params[k]) + 0.5
    margin = 3.0
    tm = cnnc.compile(graph, weights=params, mode="train", loss="contrastive",
                      output="distance", loss_options={"margin": margin})
    x = {side: rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
         for side in ("left", "right")}
    y = np.array([[0], [1], [0], [1], [1], [0]])  # 0: the same person, 1: another

    def torch_loss(p: Tensors) -> torch.Tensor:
        d = torch.linalg.vector_norm(siamese_twin(p, x["left"]) - siamese_twin(p, x["right"]),
                                     dim=1, keepdim=True)
        t = torch.tensor(y, dtype=torch.float64)
        return ((1 - t) * d ** 2 / 2 + t * torch.clamp(margin - d, min=0) ** 2 / 2).mean()

    compare(tm, params, x, y, torch_loss, rtol=1e-4)
