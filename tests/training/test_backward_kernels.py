"""The compiled float32 backward kernels against the float64 reference backward, step by step
under ``cnnc check``'s error-bound rules (``runtime.check.check_plan``): every backward and
training op in small training graphs; the same training graph at -O0 and -O2; and a
batch-normed residual block against PyTorch autograd, with its running statistics' updates
read through the executor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnc
from cnnc.compiler.autodiff import update_outputs
from cnnc.compiler.decisions import epilogue_of
from cnnc.runtime.check import check_plan, format_rows
from cnnc.runtime.reference import run_reference
from cnnc.runtime.weights import init_params

#: The training and backward ops whose kernels these tests check (each runs in a graph below).
#: Batch norm's backward runs fused at -O1 and -O2 (``fuse_batchnorm_backward``); its pieces,
#: ``bn_input_grad``, ``bn_channel_grad`` and ``batch_stat_grad``, are checked at -O0 in the
#: residual block below.
TRAINING_OPS = {"reduce_to", "channel_pad", "pad_grad", "mse", "mse_grad", "distance_grad",
                "batch_mean", "batch_var", "batchnorm_train", "bn_grad_sums", "bn_grad_input",
                "bn_grad_param", "running_update", "groupnorm_input_grad",
                "groupnorm_weight_grad", "lrn_grad", "prelu_input_grad", "prelu_slope_grad",
                "upsample_grad", "dropout_train"}

# One network through most of the training ops: batch norm in training (statistics, running
# updates), prelu, dropout's seeded mask, group norm, LRN, bilinear upsampling, reflect
# padding, a gate broadcast over the pixels (reduce_to), a channel slice (channel_pad), and
# mse as the loss.
WIDE = """network wide
input x: 3 x 6 x 6
a = x -> conv(4, 3, pad=1) -> batchnorm -> prelu -> dropout(0.3) -> groupnorm(2) -> lrn(3)
gate = a -> globalavgpool -> sigmoid
b = mul(a, gate) -> upsample(2, mode=bilinear) -> pad((1, 2, 0, 1), mode=reflect)
b -> channel_slice(1, 4) -> conv(2, 1) -> output y
"""

# Siamese towers sharing their weights, their distance, edge and constant padding, a
# per-channel prelu slope shared by every channel, and instance norm.
SIAMESE = """network siamese
input left: 2 x 5 x 4
input right: 2 x 5 x 4
block embed() {
    return in -> pad((1, 0, 2, 1), mode=edge) -> conv(3, 3) -> prelu(num_parameters=1)
        -> instance_norm -> pad(1) -> conv(2, 3) -> flatten
}
e1 = left -> embed
e2 = right -> embed
distance(e1, e2) -> output d
"""


def random_params(graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    params = {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32)
              for k, v in init_params(graph).items()}
    for k in params:
        if k.endswith("running_var"):
            params[k] = (rng.random(params[k].shape) + 0.5).astype(np.float32)
    return params


def training_feed(tm, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of a compiled training graph by name: normal activations and targets, and the
    dropout seed (int64 [seed, step, first]) past float32's exact integers, the batch a shard
    from image 5 on of a global one."""
    graph = tm.plan.graph
    feed = {}
    for name, nid in graph.inputs.items():
        t = graph.node(nid).type
        if not t.batched:
            feed[name] = np.array([2 ** 31 + 12345, 7, 5], np.int64)
        else:
            feed[name] = rng.standard_normal((batch,) + t.shape).astype(np.float32)
    return feed


def compile_training(source: str, rng: np.random.Generator, opt_level: int = 2):
    graph = cnnc.load(source)
    return cnnc.compile(graph, weights=random_params(graph, rng), mode="train", loss="mse",
                        opt_level=opt_level)


@pytest.fixture(scope="module")
def wide():
    rng = np.random.default_rng(0)
    tm = compile_training(WIDE, rng)
    return tm, training_feed(tm, 3, rng)


@pytest.fixture(scope="module")
def siamese():
    rng = np.random.default_rng(1)
    tm = compile_training(SIAMESE, rng)
    return tm, training_feed(tm, 2, rng)


# The activations whose derivatives cancel (1 - t^2, s (1 - s), x (1 - ...)), each after a
# convolution that makes its input large enough to saturate it.
ACTIVATIONS = """network acts
input x: 3 x 5 x 5
x -> conv(4, 3, pad=1) -> tanh -> conv(4, 1) -> sigmoid -> conv(4, 1) -> swish
  -> conv(4, 1) -> mish -> conv(4, 1) -> gelu -> conv(4, 1) -> softplus -> conv(4, 1)
  -> gelu(approximate=tanh) -> conv(4, 1) -> elu -> conv(2, 1) -> output y
"""


@pytest.fixture(scope="module")
def acts():
    rng = np.random.default_rng(2)
    graph = cnnc.load(ACTIVATIONS)
    params = {k: v * 6 for k, v in random_params(graph, rng).items()}  # saturating inputs
    tm = cnnc.compile(graph, weights=params, mode="train", loss="mse")
    return tm, training_feed(tm, 3, rng)


def test_activation_gradients_are_within_their_error_bounds(acts):
    """The derivatives' cancellation is absolute, not relative to f'(x): the bound says so."""
    tm, feed = acts
    rows = check_plan(tm.plan, tm.executor, tm.params, feed)
    grads = [r for r in rows if "activation_grad" in r.op]
    assert len(grads) == 8
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


@pytest.fixture(scope="module")
def checked(wide, siamese):
    """The check's rows of both networks, by network."""
    return {name: check_plan(tm.plan, tm.executor, tm.params, feed)
            for name, (tm, feed) in (("wide", wide), ("siamese", siamese))}


@pytest.mark.parametrize("network", ["wide", "siamese"])
def test_every_step_is_within_its_error_bound(checked, network):
    rows = checked[network]
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


def test_every_training_op_is_checked(checked):
    """Every training and backward op ran as a kernel of its own in one of the graphs."""
    ran = {r.op for rows in checked.values() for r in rows if r.lowering != "view"}
    assert TRAINING_OPS - ran == set()


def test_the_check_fails_kernels_that_read_other_values(wide):
    """The check can fail: kernels given other parameters than the reference's (every
    parameter scaled by 1.5) are far outside the bounds where they read one."""
    tm, feed = wide
    try:
        tm.executor.set_params({k: v * 1.5 for k, v in tm.params.items()})
        rows = check_plan(tm.plan, tm.executor, tm.params, feed)
    finally:
        tm.executor.set_params(tm.params)
    failed = {r.op for r in rows if not r.ok}
    assert {"batchnorm_train", "bn_grad_input", "prelu_input_grad"} <= failed


def test_the_dropout_mask_is_the_references_hash(wide):
    """The kernel's mask is exactly the reference's (``dropout_keep``) for a seed past 2^31:
    the zeros of the compiled forward output are where the reference drops."""
    tm, feed = wide
    graph = tm.plan.graph
    index, step = next((i, s) for i, s in enumerate(tm.plan.steps) if s.op == "dropout_train")
    flat = {nid: np.ascontiguousarray(feed[name]).reshape(-1)
            for name, nid in graph.inputs.items()}
    # stopped after the mask: later steps may reuse its buffer
    arena = tm.executor.run_watched(flat, 3, lambda i, _: i == index)
    got = tm.executor.value(arena, flat, step.node)
    ref = run_reference(graph, feed, tm.params, keep=True)
    want = ref[f"%{step.node}"]
    np.testing.assert_array_equal(got == 0, want == 0)
    assert 0.2 < np.mean(want == 0) < 0.4  # rate 0.3


def test_O0_and_O2_give_the_same_loss_and_gradients():
    """Schedule invariance of the backward pass: the siamese graph's loss and gradients at -O0
    and -O2 agree within float32 rounding of the longest sums."""
    models = [compile_training(SIAMESE, np.random.default_rng(1), level) for level in (0, 2)]
    rng = np.random.default_rng(2)
    x = {n: rng.standard_normal((2, 2, 5, 4)).astype(np.float32) for n in ("left", "right")}
    y = rng.standard_normal((2, 1)).astype(np.float32)
    (loss0, grads0), (loss2, grads2) = (m.loss_and_grads(x, y) for m in models)
    assert loss0 == pytest.approx(loss2, rel=1e-5)
    assert set(grads0) == set(grads2)
    for name in grads0:
        scale = float(np.abs(grads0[name]).max())
        np.testing.assert_allclose(grads2[name], grads0[name], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)


# The weight gradient's kernels on awkward shapes: 3 input channels (the direct kernel with
# its lanes over output channels: the cost model's choice there), stride 2 with odd and even
# sizes, asymmetric padding, dilation 2 with groups, 20 input channels (past one pair of
# 16-lane blocks) and 10 output channels (past one tile of rows), and the transposed
# convolution's weight gradient (input and output gradient exchanged); a 1x1 stride-2
# convolution, whose input gradient is one phase convolution and three zero phases.
WEIGHT_GRAD = """network wgrad
input x: 3 x 12 x 8
a = x -> conv(20, 3, pad=1) -> relu
b = a -> conv(10, 3, stride=2, pad=(1, 0, 1, 1)) -> relu
c = b -> conv(12, 3, dilation=2, pad=2, groups=2) -> relu
c -> conv(8, 1, stride=2) -> conv_transpose(4, 2, stride=2) -> output y
"""


@pytest.mark.parametrize("lowering, target, tile", [("direct", "avx2", "6x16/8"),
                                                    ("direct", "avx512", "8x32/16"),
                                                    ("auto", "avx2", "6x16/8"),
                                                    ("auto", "avx512", "8x32/16"),
                                                    ("im2col", "cpu", None)])
def test_weight_gradient_kernels_are_within_their_error_bounds(lowering, target, tile):
    """Each kernel (the direct ones with the tile of each vector width) against the float64
    reference under the error bounds."""
    rng = np.random.default_rng(4)
    graph = cnnc.load(WEIGHT_GRAD)
    tm = cnnc.compile(graph, target, weights=random_params(graph, rng), mode="train",
                      loss="mse", lowering=lowering)
    grads = [n for n in tm.plan.graph.nodes() if n.op == "conv_weight_grad"]
    chosen = [n.attrs["lowering"] for n in sorted(grads, key=lambda n: n.id)]
    if lowering == "auto":  # the 3-channel input's by output channels (the cost model)
        assert chosen[0] == "direct_out" and set(chosen) <= {"direct", "direct_out"}
    else:
        assert chosen == [lowering] * 5
    assert {n.attrs.get("tile") for n in grads} == {tile}
    rows = check_plan(tm.plan, tm.executor, tm.params, training_feed(tm, 3, rng))
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
    assert sum(r.op == "conv_weight_grad" for r in rows) == 5
    assert "channel_pad" in {r.op for r in rows}


# A batch norm whose input is read by another op too: x's gradient sums the fused batch norm's
# input gradient with the residual add's.
BN_SHARED = """network shared
input image: 3 x 5 x 5
a = image -> conv(4, 3, pad=1) as c0
b = a -> batchnorm as bn0 -> relu
add(a, b) -> conv(2, 1) as c1 -> output y
"""


def test_a_fused_batchnorm_backward_joins_the_other_gradients_of_its_input():
    models = [compile_training(BN_SHARED, np.random.default_rng(6), level) for level in (0, 2)]
    graph = models[1].plan.graph
    fused = next(n for n in graph.nodes() if n.op == "bn_grad_input")
    (total,) = graph.users(fused.id)
    assert total.op == "add" and len(total.inputs) == 2
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 3, 5, 5)).astype(np.float32)
    y = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    (loss0, grads0), (loss2, grads2) = (m.loss_and_grads(x, y) for m in models)
    assert loss2 == pytest.approx(loss0, rel=1e-5)
    for name in grads0:
        scale = float(np.abs(grads0[name]).max())
        np.testing.assert_allclose(grads2[name], grads0[name], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)


# -- a batch-normed residual block against PyTorch ------------------------------------------------

RESIDUAL = """network res
input image: 3 x 6 x 6
x = image -> conv(4, 3, pad=1) as c0 -> batchnorm as bn0 -> relu
y = x -> conv(4, 3, pad=1) as c1 -> batchnorm as bn1 -> relu -> conv(4, 3, pad=1) as c2
  -> batchnorm as bn2
add(x, y) -> relu -> globalavgpool -> flatten -> dense(3) as fc -> output scores
"""


def torch_residual(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray):
    """The loss, its parameters (float64 leaves) and the running statistics after the step."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=not k.endswith(
        ("running_mean", "running_var"))) for k, v in params.items()}

    def bn(h, name):
        return F.batch_norm(h, p[f"{name}.running_mean"], p[f"{name}.running_var"],
                            p[f"{name}.weight"], p[f"{name}.bias"], training=True,
                            momentum=0.1, eps=1e-5)

    def conv(h, name):
        return F.conv2d(h, p[f"{name}.weight"], p[f"{name}.bias"], padding=1)

    a = F.relu(bn(conv(torch.tensor(x, dtype=torch.float64), "c0"), "bn0"))
    b = bn(conv(F.relu(bn(conv(a, "c1"), "bn1")), "c2"), "bn2")
    h = F.relu(a + b).mean(dim=(2, 3))
    scores = F.linear(h, p["fc.weight"], p["fc.bias"])
    return F.cross_entropy(scores, torch.tensor(labels, dtype=torch.long)), p


@pytest.fixture(scope="module", params=[0, 2], ids=["O0", "O2"])
def residual(request):
    """The block compiled at -O0 (batch norm's backward as the chain rule's pieces) and -O2
    (fused: ``fuse_batchnorm_backward``)."""
    rng = np.random.default_rng(3)
    graph = cnnc.load(RESIDUAL)
    params = random_params(graph, rng)
    tm = cnnc.compile(graph, weights=params, mode="train", loss="cross_entropy",
                      opt_level=request.param)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    return tm, params, x, labels


def test_residual_batchnorm_block_matches_pytorch_autograd(residual):
    tm, params, x, labels = residual
    loss, grads = tm.loss_and_grads(x, labels)
    ref, p = torch_residual(params, x, labels)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    assert set(grads) == {k for k, v in p.items() if v.requires_grad}
    for name, g in grads.items():
        want = p[name].grad.numpy()
        np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-5 * np.abs(want).max() + 1e-7,
                                   err_msg=name)


def test_relu_gradients_read_the_relu_outputs(residual):
    """So the batch norms' outputs under them need not outlive the forward pass (at -O2 the
    ReLUs are fused into the batch norms and the residual add: the gradients read those).
    At -O2 the two ReLU gradients that feed only a batch norm's backward are read through by
    it (``gate``) instead of written: the last one, also the shortcut's gradient, stays."""
    graph = residual[0].plan.graph
    grads = [n for n in graph.nodes() if n.op == "activation_grad"]
    gated = [n for n in graph.nodes() if n.attrs.get("gate", "none") != "none"]
    sources = [graph.node(n.inputs[0]) for n in grads] + [graph.node(n.inputs[-1])
                                                          for n in gated]
    assert all(s.op == "relu" or [e.op for e in epilogue_of(s.attrs)][-1:] == ["relu"]
               for s in sources)
    if residual[0].opt_level == 0:
        assert len(grads) == 3 and not gated
    else:
        assert [graph.node(n.inputs[0]).op for n in grads] == ["add"]
        assert sorted((n.op, n.attrs["gate"]) for n in gated) == [
            ("bn_grad_input", "relu")] * 2 + [("bn_grad_sums", "relu")] * 2
        assert {s.op for s in sources[1:]} == {"batchnorm_train"}


# A downsampling block: the ReLU after the residual add feeds two batch norms' backward only
# (the branch's and the shortcut's), so its gradient is read through by four kernels.
DOWN = """network down
input image: 3 x 6 x 6
x = image -> conv(4, 3, pad=1) as c0 -> batchnorm as bn0 -> relu
y = x -> conv(4, 3, stride=2, pad=1) as c1 -> batchnorm as bn1 -> relu
  -> conv(4, 3, pad=1) as c2 -> batchnorm as bn2
s = x -> conv(4, 1, stride=2) as c3 -> batchnorm as bn3
add(y, s) -> relu -> globalavgpool -> flatten -> dense(3) as fc -> output scores
"""


def test_relu_gradients_over_two_batch_norms_are_read_through():
    """At -O2 no ReLU gradient is written: the two under one batch norm each and the one over
    the branch's and the shortcut's; every step within its bound, and the loss and gradients
    those of -O0 (the chain rule's pieces, each ReLU gradient a kernel of its own)."""
    rng = np.random.default_rng(10)
    graph = cnnc.load(DOWN)
    params = random_params(graph, rng)
    models = [cnnc.compile(graph, weights=params, mode="train", loss="cross_entropy",
                           opt_level=level) for level in (0, 2)]
    g = models[1].plan.graph
    assert not [n for n in g.nodes() if n.op == "activation_grad"]
    gates = sorted((n.name, n.op) for n in g.nodes() if n.attrs.get("gate") == "relu")
    assert [name.split(".")[0] for name, _ in gates] == ["bn0"] * 2 + ["bn1"] * 2 + [
        "bn2"] * 2 + ["bn3"] * 2
    last = {g.node(n.inputs[-1]).id for n in g.nodes() if n.name.startswith(("bn2", "bn3"))
            and n.attrs.get("gate") == "relu"}
    assert len(last) == 1 and g.node(last.pop()).op == "add"
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    rows = check_plan(models[1].plan, models[1].executor, models[1].params,
                      {"image": x, "labels": labels.astype(np.float32)})
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
    (loss0, grads0), (loss2, grads2) = (m.loss_and_grads(x, labels) for m in models)
    assert loss2 == pytest.approx(loss0, rel=1e-5)
    # the convolutions' biases under batch norms have zero gradients: rounding noise, so the
    # absolute tolerance is of the largest gradient
    scale = max(float(np.abs(v).max()) for v in grads0.values())
    for name in grads0:
        np.testing.assert_allclose(grads2[name], grads0[name], rtol=1e-4, atol=1e-6 * scale,
                                   err_msg=name)


def test_batch_variance_far_from_zero_is_within_its_bound():
    """The variance's one pass of sums about the batch mean, where the values lie far from
    zero (a convolution's bias of 1000 under a spread of about 1: sums of x and x^2 about 0
    in float32 would lose every digit): against NumPy's float64 variance of the values the
    kernel read, and under its bound in the check."""
    rng = np.random.default_rng(9)
    graph = cnnc.load(RESIDUAL)
    params = random_params(graph, rng)
    params["c0.bias"] = params["c0.bias"] + np.float32(1000.0)
    tm = cnnc.compile(graph, weights=params, mode="train", loss="cross_entropy")
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    rows = check_plan(tm.plan, tm.executor, tm.params,
                      {"image": x, "labels": labels.astype(np.float32)})
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
    g = tm.plan.graph
    var = next(n for n in g.nodes() if n.op == "batch_var" and n.name == "bn0.batch_var")
    assert g.node(var.inputs[1]).op == "batch_mean"
    flat = {g.inputs["image"]: x.reshape(-1), g.inputs["labels"]: labels.astype(np.float32)}
    arena = tm.executor.run(flat, len(x))
    conv = tm.executor.value(arena, flat, var.inputs[0]).reshape(4, 4, 6, 6)
    assert np.abs(conv.astype(np.float64).mean(axis=(0, 2, 3)) - 1000).max() < 10
    want = conv.astype(np.float64).var(axis=(0, 2, 3))
    got = tm.executor.value(arena, flat, var.id)
    np.testing.assert_allclose(got, want, rtol=4e-7)


def test_residual_running_statistics_match_pytorch(residual):
    """The ``update:`` outputs (PyTorch's momentum, unbiased running variance), read from the
    executor after one forward and backward."""
    tm, params, x, labels = residual
    _, p = torch_residual(params, x, labels)  # updates p's running statistics in place
    graph = tm.plan.graph
    flat = {graph.inputs["image"]: x.reshape(-1),
            graph.inputs["labels"]: labels.astype(np.float32)}
    arena = tm.executor.run(flat, len(x))
    updates = update_outputs(graph)
    assert set(updates) == {f"bn{i}.running_{s}" for i in range(3) for s in ("mean", "var")}
    for name, node in updates.items():
        got = tm.executor.value(arena, flat, node)
        np.testing.assert_allclose(got, p[name].detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_residual_steps_are_within_their_error_bounds(residual):
    tm, _, x, labels = residual
    feed = {"image": x, "labels": labels.astype(np.float32)}
    rows = check_plan(tm.plan, tm.executor, tm.params, feed)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
    backward = {"bn_input_grad", "bn_channel_grad", "batch_stat_grad"} if tm.opt_level == 0 \
        else {"bn_grad_sums", "bn_grad_input", "bn_grad_param"}
    assert {"batchnorm_train", "running_update"} | backward <= {r.op for r in rows}


# Lp pooling's gradient recomputes each window's norm as the forward does: p = 2 (its sqrt
# form) and p = 3 (pow), windows that overlap, reach into the padding, ceil mode.
LP = """network lp
input x: 2 x 7 x 6
a = x -> conv(3, 3, pad=1) -> lppool(3, stride=2, pad=1, p=2) -> conv(3, 1)
a -> lppool(2, stride=1, p=3, ceil_mode=true) -> output y
"""


def test_lp_pooling_gradients_are_within_their_error_bounds():
    rng = np.random.default_rng(5)
    tm = compile_training(LP, rng)
    rows = check_plan(tm.plan, tm.executor, tm.params, training_feed(tm, 3, rng))
    assert sum(1 for r in rows if "pool_grad" in r.op) == 2
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
