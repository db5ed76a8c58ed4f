"""A weight gradient reading the input its forward convolution packed (``ops/conv/gradient.py``:
``packed_input_source``), on the host's own vector width: with 16 lanes the kernel joins two
of the forward's 8-channel blocks a vector, with 8 it reads them as they are. The gradients
against PyTorch autograd in float64; the plan's structure (no second packing of x) and the
rule's refusals (too few channel blocks, a padding the forward does not share)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnc
from cnnc.compiler.ops.conv.gradient import packed_input_key, packed_input_source
from cnnc.compiler.target import host_target
from cnnc.runtime.weights import init_params

# c1 and c2 read 32 channels (4 blocks of 8: whole pairs of 16-lane vectors), c2 at stride 2
# with an asymmetric padding; c3's input has 8 channels: one block, no pair, packed again.
NET = """network shared
input image: 32 x 7 x 6
a = image -> conv(32, 3, pad=1) as c1 -> relu
b = a -> conv(8, 3, stride=2, pad=(1, 0, 1, 1)) as c2 -> relu
b -> conv(5, 3, pad=1) as c3 -> globalavgpool -> flatten -> dense(3) as fc -> output scores
"""


def torch_loss(p: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    a = F.relu(F.conv2d(torch.tensor(x, dtype=torch.float64), p["c1.weight"], p["c1.bias"],
                        padding=1))
    b = F.relu(F.conv2d(F.pad(a, (0, 1, 1, 1)), p["c2.weight"], p["c2.bias"], stride=2))
    h = F.conv2d(b, p["c3.weight"], p["c3.bias"], padding=1).mean(dim=(2, 3))
    scores = F.linear(h, p["fc.weight"], p["fc.bias"])
    return F.cross_entropy(scores, torch.tensor(y, dtype=torch.long))


@pytest.mark.host_target
def test_weight_gradients_read_the_forward_packing_and_match_pytorch():
    rng = np.random.default_rng(3)
    graph = cnnc.load(NET)
    params = {k: (rng.standard_normal(v.shape) * 0.3).astype(np.float32)
              for k, v in init_params(graph).items()}
    x = rng.standard_normal((3, 32, 7, 6)).astype(np.float32)
    y = np.array([0, 2, 1])
    tm = cnnc.compile(graph, weights=params, mode="train", loss="cross_entropy")
    plan = tm.plan
    steps = {plan.graph.node(s.node).name: s for s in plan.steps}  # by layer, epilogues aside
    shared = {n.name.split(".")[0] for n in plan.graph.nodes()
              if packed_input_source(plan.graph, n) is not None}
    assert shared == {"c1", "c2"}
    for name in ("c1", "c2"):
        forward, wgrad = steps[name], steps[f"{name}.grad.weight"]
        assert [c.kernel for c in wgrad.calls] == ["conv_weight_grad"]  # no packing of x
        assert packed_input_key(forward.node) in forward.scratch
    assert [c.kernel for c in steps["c3.grad.weight"].calls][0] == "pack_nchw_blocked"
    lanes = host_target().lanes
    assert any("_b8" in s for s in steps["c1.grad.weight"].sources) == (lanes == 16)

    loss, grads = tm.loss_and_grads(x, y)
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    ref = torch_loss(p, x, y)
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-5)
    for name, g in grads.items():
        want = p[name].grad.numpy()
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                   err_msg=name)
