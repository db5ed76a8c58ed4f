"""``loss_and_grads`` of MobileNetV2 (zoo/mobilenet_v2.cnn at 32 x 32, 10 classes) against
PyTorch autograd with the same weights: depthwise and pointwise convolutions, stride 2 with
even inputs, batch norm in training mode with its running statistics, ReLU6, residual adds,
global pooling and the dropout before the classifier (cnnc's seeded mask applied to the twin
as it is). The twin walks the same graph op by op with PyTorch's functional ops, each written
here from PyTorch's definitions, not from cnnc's references.

At this size the last batch norms normalize 3 values a channel (1 x 1 maps, batch 3), which
amplifies every rounding: PyTorch itself in float32 is 2.4e-4 off its float64 loss. So the
truth is PyTorch in float64, and the yardstick PyTorch in float32: cnnc's float32 loss and
each gradient must be as close to the truth as PyTorch's float32 ones, within 4x."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import cnnc
from cnnc.compiler.autodiff import UPDATE
from cnnc.compiler.ops.tensor import dropout_keep
from cnnc.runtime.weights import init_params


def conv(x, w, a):
    t, left, b, r = a["pads"]
    return F.conv2d(F.pad(x, (left, r, t, b)), w, None, a["stride"], 0, a["dilation"],
                    a["groups"])


def twin(graph, p: dict[str, torch.Tensor], x: np.ndarray, masks: dict[str, np.ndarray],
         running_stats: dict[str, np.ndarray], dtype: torch.dtype):
    """The network's logits and each batch norm's updated running statistics (PyTorch's
    ``F.batch_norm(training=True)`` updates its running tensors in place)."""
    values: dict[int, torch.Tensor] = {}
    running: dict[str, torch.Tensor] = {}
    for node in graph.topo_order():
        ins = [values.get(i) for i in node.inputs]
        a = node.attrs
        if node.op == "input":
            values[node.id] = torch.tensor(x, dtype=dtype)
        elif node.op == "param":
            values[node.id] = p[node.name] if node.name in p else None
            if node.name.endswith(("running_mean", "running_var")):
                running[node.name] = torch.tensor(running_stats[node.name], dtype=dtype)
                values[node.id] = running[node.name]
        elif node.op == "conv":
            values[node.id] = conv(ins[0], ins[1], a)
        elif node.op == "batchnorm":
            values[node.id] = F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], True,
                                           a["momentum"], a["eps"])
        elif node.op == "relu6":
            values[node.id] = F.relu6(ins[0])
        elif node.op == "add":
            values[node.id] = ins[0] + ins[1]
        elif node.op == "globalavgpool":
            values[node.id] = ins[0].mean(dim=(2, 3), keepdim=True)
        elif node.op == "flatten":
            values[node.id] = ins[0].flatten(1)
        elif node.op == "dropout":
            values[node.id] = ins[0] * torch.tensor(masks[node.name], dtype=dtype)
        elif node.op == "dense":
            values[node.id] = F.linear(ins[0], ins[1], ins[2])
        else:
            raise AssertionError(f"the twin has no {node.op}")
    (logits,) = graph.outputs.values()
    return values[logits], running


def torch_gradients(graph, params, x, y, masks, dtype):
    """PyTorch's loss, gradients by parameter name and updated running statistics."""
    p = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()
         if not k.endswith(("running_mean", "running_var"))}
    logits, running = twin(graph, p, x, masks, params, dtype)
    loss = F.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    return loss.item(), {k: t.grad.double().numpy() for k, t in p.items()}, running


def test_mobilenet_v2_matches_pytorch_autograd():
    graph = cnnc.load("mobilenet_v2", size=32, classes=10)
    params = init_params(graph, seed=3)
    tm = cnnc.compile(graph, weights=params, mode="train", loss="cross_entropy")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 7, 4])
    masks = {}
    for node in tm.plan.graph.nodes():
        if node.op == "dropout_train" and not node.name.endswith(".grad"):
            keep = dropout_keep(tm.seed, tm.steps_taken, node.attrs["stream"],
                                (3,) + node.type.shape, node.attrs["rate"])
            masks[node.name] = keep / (1.0 - node.attrs["rate"])
    assert masks, "the classifier's dropout runs in its training form"
    loss, grads = tm.loss_and_grads(x, y)
    true_loss, truth, running = torch_gradients(graph, params, x, y, masks, torch.float64)
    f32_loss, f32, f32_running = torch_gradients(graph, params, x, y, masks, torch.float32)
    assert abs(loss - true_loss) <= 4 * abs(f32_loss - true_loss) + 1e-6
    assert set(grads) == set(truth)
    scale = max(float(np.abs(g).max()) for g in truth.values())
    for name, g in grads.items():
        ours = float(np.abs(g - truth[name]).max())
        theirs = float(np.abs(f32[name] - truth[name]).max())
        assert ours <= 4 * theirs + 1e-6 * scale, (name, ours, theirs)
    # the running statistics a step writes back are PyTorch's updated ones
    tm.train_step(x, y)
    after = tm.params
    updated = [k for k in tm.plan.graph.outputs if k.startswith(UPDATE)]
    assert len(updated) == 2 * sum(1 for n in graph.nodes() if n.op == "batchnorm")
    for name, t in running.items():
        ours = float(np.abs(after[name] - t.numpy()).max())
        theirs = float(np.abs(f32_running[name].double().numpy() - t.numpy()).max())
        assert ours <= 4 * theirs + 1e-6 * float(np.abs(t.numpy()).max()), (name, ours, theirs)
