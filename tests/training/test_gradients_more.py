"""The gradient rules of the remaining op families, and the training forms: batch norm with the
batch's statistics and its running-statistic updates (against central finite differences and
against PyTorch's autograd in float64), group and instance norm, LRN, prelu, upsampling,
depth_to_space, space_to_depth, channel_shuffle, and dropout with its seeded mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnc.compiler.autodiff import (
    GradientError,
    attach_loss,
    gradient_outputs,
    update_outputs,
)
from cnnc.compiler.ops import ShapeError
from cnnc.compiler.ops.tensor import DROPOUT_SEED, dropout_keep
from cnnc.compiler.passes import PassContext
from cnnc.compiler.passes.manager import run_passes
from cnnc.compiler.passes.pipelines import pipeline
from cnnc.dsl.builder import load_network
from cnnc.runtime.reference import run_reference

from .gradcheck import check, check_gradients, net, random_feed, training_graph

SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- batch norm in training -----------------------------------------------------------------

@SETTINGS
@given(c=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4), batch=st.integers(2, 4),
       eps=st.sampled_from([1e-5, 0.1]), seed=st.integers(0, 99))
def test_batchnorm_training_against_finite_differences(c, h, w, batch, eps, seed):
    # a 1x1 image at batch 2: two values per channel, the fewest batch norm takes
    check(net((c, h, w), f"conv(3, 1) -> batchnorm(eps={eps}) -> tanh -> conv(2, 1)"), seed,
          batch=batch)


def test_batchnorm_training_on_features_and_twice_in_a_row():
    check(net((5,), "dense(4) -> batchnorm -> relu -> dense(3) -> batchnorm"), seed=1,
          batch=3)


SMALL_NET = """network t
input x: 3 x 5 x 6
x -> conv(4, 3, pad=1) -> batchnorm(momentum=0.3) -> relu -> conv(2, 3, stride=2)
  -> batchnorm -> flatten -> dense(3) -> output y
"""


def torch_step(params: dict, x: np.ndarray, labels: np.ndarray):
    """SMALL_NET in PyTorch, float64, train mode: the loss, its gradients by parameter name
    and input, and the running statistics after the step."""
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=not k.endswith(("_mean",
                                                                             "_var")))
         for k, v in params.items()}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h = F.conv2d(xt, t["conv1.weight"], t["conv1.bias"], padding=1)
    h = F.batch_norm(h, t["batchnorm1.running_mean"], t["batchnorm1.running_var"],
                     t["batchnorm1.weight"], t["batchnorm1.bias"], training=True,
                     momentum=0.3, eps=1e-5)
    h = F.conv2d(torch.relu(h), t["conv2.weight"], t["conv2.bias"], stride=2)
    h = F.batch_norm(h, t["batchnorm2.running_mean"], t["batchnorm2.running_var"],
                     t["batchnorm2.weight"], t["batchnorm2.bias"], training=True,
                     momentum=0.1, eps=1e-5)
    y = F.linear(h.flatten(1), t["dense1.weight"], t["dense1.bias"])
    loss = F.cross_entropy(y, torch.tensor(labels, dtype=torch.long))
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in t.items() if v.requires_grad}
    grads["x"] = xt.grad.numpy()
    running = {k: v.detach().numpy() for k, v in t.items() if not v.requires_grad}
    return loss.item(), grads, running


def test_batchnorm_training_against_pytorch_autograd():
    """The loss, every gradient and the updated running statistics (momentum 0.3 and 0.1, the
    variance's update unbiased) agree with PyTorch's train mode in float64."""
    rng = np.random.default_rng(8)
    tg = training_graph(SMALL_NET, "cross_entropy")
    feed, params = random_feed(tg, 4, rng, classes=3)
    out = run_reference(tg, feed, params)
    loss, grads, running = torch_step(params, feed["x"], feed["labels"])
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-12)
    assert set(gradient_outputs(tg)) == set(grads)
    for name in grads:
        np.testing.assert_allclose(out[f"grad:{name}"], grads[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    assert set(update_outputs(tg)) == set(running)
    for name in running:
        np.testing.assert_allclose(out[f"update:{name}"], running[name], rtol=1e-12,
                                   err_msg=name)
    # and PyTorch moved them: the updates are not the old values
    assert not np.allclose(out["update:batchnorm1.running_var"],
                           params["batchnorm1.running_var"])


def test_a_shared_batchnorm_updates_its_statistics_once_per_use_in_order():
    """Siamese towers sharing a batch norm: each use normalizes with its own batch's
    statistics, and the running statistics are updated twice, left then right, as calling one
    PyTorch module twice does."""
    src = """network t
input left: 2 x 3 x 3
input right: 2 x 3 x 3
block tower() {
    return in -> conv(2, 1) -> batchnorm -> flatten
}
shared embed = tower()
e1 = left -> embed
e2 = right -> embed
distance(e1, e2) -> output d
"""
    rng = np.random.default_rng(9)
    tg = training_graph(src)
    feed, params = random_feed(tg, 3, rng)
    assert check_gradients(tg, feed, params, rng) > 0
    out = run_reference(tg, feed, params)
    mean, var = (torch.tensor(params[f"embed.batchnorm1.running_{s}"])
                 for s in ("mean", "var"))
    w = torch.tensor(params["embed.conv1.weight"])
    b = torch.tensor(params["embed.conv1.bias"])
    for side in ("left", "right"):
        F.batch_norm(F.conv2d(torch.tensor(feed[side]), w, b), mean, var, training=True)
    for stat, value in (("mean", mean), ("var", var)):
        np.testing.assert_allclose(out[f"update:embed.batchnorm1.running_{stat}"],
                                   value.numpy(), rtol=1e-12)


def test_batchnorm_training_refuses_one_value_per_channel():
    tg = training_graph(net((3, 1, 1), "conv(2, 1) -> batchnorm"))
    feed, params = random_feed(tg, 1, np.random.default_rng(0))
    with pytest.raises(ShapeError, match="more than one value per channel, got a batch of "
                                         r"1 x 1x1"):
        run_reference(tg, feed, params)


def test_inference_graph_keeps_running_statistics():
    """The training form rewrites the training graph only: the network itself still
    normalizes with its running statistics."""
    g = load_network(net((2, 3, 3), "batchnorm"))
    attach_loss(g, "mse")
    assert [n.op for n in g.nodes() if n.op.startswith("batch")] == ["batchnorm"]


# -- group norm, instance norm, LRN, prelu ------------------------------------------------------

@SETTINGS
@given(groups=st.integers(1, 3), per_group=st.integers(1, 3), h=st.integers(1, 4),
       w=st.integers(2, 4), seed=st.integers(0, 99))
def test_groupnorm(groups, per_group, h, w, seed):
    check(net((groups * per_group, h, w), f"conv({groups * per_group}, 1) -> "
                                          f"groupnorm({groups}) -> tanh -> conv(2, 1)"), seed)


@pytest.mark.parametrize("body", ["instance_norm -> tanh -> conv(2, 1)",
                                  "instance_norm(eps=0.5) -> conv(2, 1)",
                                  "flatten -> dense(6) -> groupnorm(3) -> tanh -> dense(2)"])
def test_instance_norm_and_group_norm_of_features(body):
    check(net((3, 4, 5), f"conv(3, 1) -> {body}"), seed=3, batch=3)


@SETTINGS
@given(size=st.integers(1, 6), c=st.integers(1, 7), beta=st.sampled_from([0.75, 0.5, 2.0]),
       k=st.sampled_from([1.0, 2.0]), seed=st.integers(0, 99))
def test_lrn(size, c, beta, k, seed):
    # even sizes too: the window reaches one channel further after than before
    check(net((c, 3, 2), f"lrn(size={size}, alpha=0.5, beta={beta}, k={k}) -> conv(2, 1)"),
          seed)


@pytest.mark.parametrize("body", ["conv(4, 1) -> prelu -> conv(2, 1)",
                                  "conv(4, 1) -> prelu(num_parameters=1) -> conv(2, 1)",
                                  "flatten -> dense(6) -> prelu -> dense(2)"])
def test_prelu(body):
    check(net((3, 4, 5), body), seed=4, batch=3)


def test_prelu_slope_gradient_sums_over_the_batch_and_pixels():
    """dslope[c] = sum of dy x over the negative x of channel c in every image and pixel:
    with the identity as the rest of the network and mse's dy = 2 (y - t) / count."""
    g = training_graph(net((2, 2, 2), "prelu"))
    x = np.array([[[[-1.0, 2.0], [-3.0, 0.5]], [[4.0, -2.0], [1.0, 1.0]]]] * 2)
    x[1] *= -1
    t = np.zeros_like(x)
    slope = np.array([0.5, -0.25])
    out = run_reference(g, {"x": x, "labels": t}, {"prelu1.weight": slope})
    y = np.where(x > 0, x, slope[None, :, None, None] * x)
    dy = 2 * y / x.size
    expected = [sum(dy[n, c, i, j] * x[n, c, i, j] for n in range(2) for i in range(2)
                    for j in range(2) if x[n, c, i, j] <= 0) for c in range(2)]
    np.testing.assert_allclose(out["grad:prelu1.weight"], expected, rtol=1e-12)


# -- upsampling ---------------------------------------------------------------------------------

@SETTINGS
@given(mode=st.sampled_from(["nearest", "bilinear", "bicubic"]), h=st.integers(1, 4),
       w=st.integers(2, 4), scale=st.sampled_from([2, 3, 1.5, 0.5, 2.5]),
       align=st.booleans(), seed=st.integers(0, 99))
def test_upsample(mode, h, w, scale, align, seed):
    assume(int(h * scale) >= 1 and int(w * scale) >= 1)
    flag = f", align_corners={str(align).lower()}" if mode != "nearest" else ""
    check(net((2, h, w), f"upsample(scale={scale}, mode={mode}{flag}) -> conv(2, 1)"), seed)


@pytest.mark.parametrize("args", [
    "scale=0.5, mode=bilinear, antialias=true",
    "scale=0.4, mode=bicubic, antialias=true, exclude_outside=true",
    "size=(7, 3), mode=nearest, coordinates=half_pixel, rounding=round_prefer_ceil",
    "scale=2, mode=bilinear, coordinates=tf_crop_and_resize, roi=(-0.2, 0.1, 0.9, 1.3), "
    "extrapolation=3.0",
])
def test_upsample_awkward(args):
    check(net((2, 5, 4), f"upsample({args}) -> conv(2, 1)"), seed=5, batch=3)


# -- rearranging -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "depth_to_space(2) -> conv(2, 1)",
    "depth_to_space(2, mode=CRD) -> conv(2, 1)",
    "space_to_depth(2) -> conv(2, 1)",
    "space_to_depth(2, mode=CRD) -> conv(2, 1)",
    "channel_shuffle(2) -> conv(3, 1)",
    "channel_shuffle(4) -> conv(3, 1)",
])
def test_rearranging(body):
    check(net((8, 4, 6), f"conv(8, 1) -> {body}"), seed=6)


# -- dropout ----------------------------------------------------------------------------------

def lowbias32(v: int) -> int:
    """Wellons' lowbias32 written with Python integers (the reference's uses NumPy)."""
    v ^= v >> 16
    v = (v * 0x7FEB352D) & 0xFFFFFFFF
    v ^= v >> 15
    v = (v * 0x846CA68B) & 0xFFFFFFFF
    return v ^ (v >> 16)


def test_dropout_mask_is_the_documented_hash():
    seed, step, stream, rate = 12345, 7, 3, 0.3
    key = lowbias32(seed)
    for salt in (stream, step):
        key = lowbias32((key + salt) & 0xFFFFFFFF)
    threshold = int(rate * 2 ** 32)
    expected = [lowbias32((key + i) & 0xFFFFFFFF) >= threshold for i in range(2 * 3 * 4)]
    keep = dropout_keep(seed, step, stream, (2, 3, 4), rate)
    assert keep.ravel().tolist() == expected


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_mask_rate_and_reproducibility(rate):
    shape = (8, 16, 25, 25)  # 80,000 elements
    keep = dropout_keep(2024, 11, 5, shape, rate)
    n = keep.size
    # the dropped fraction within 5 standard deviations of a Bernoulli(rate) count
    assert abs((~keep).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    # and uniform over the batch: each image drops its share
    per_image = (~keep).reshape(8, -1).mean(axis=1)
    assert np.all(np.abs(per_image - rate) < 5 * np.sqrt(rate * (1 - rate) / (n / 8)))
    assert np.array_equal(keep, dropout_keep(2024, 11, 5, shape, rate))
    for other in (dropout_keep(2024, 12, 5, shape, rate), dropout_keep(2025, 11, 5, shape, rate),
                  dropout_keep(2024, 11, 6, shape, rate)):
        # another step, seed or layer: a mask independent of this one (agreement as chance)
        agree = (keep == other).mean()
        assert abs(agree - (rate ** 2 + (1 - rate) ** 2)) < 0.01


def test_a_shard_of_the_batch_draws_its_rows_of_the_whole_batch_mask():
    """A data-parallel replica whose shard starts at image ``first`` of the global batch draws
    those images' rows of the mask one process draws for the whole batch."""
    whole = dropout_keep(77, 4, 9, (8, 3, 5, 5), 0.5)
    for first, stop in ((0, 3), (3, 8), (5, 6)):
        np.testing.assert_array_equal(
            dropout_keep(77, 4, 9, (stop - first, 3, 5, 5), 0.5, first), whole[first:stop])
    assert not np.array_equal(dropout_keep(77, 4, 9, (4, 3, 5, 5), 0.5), whole[4:])


DROPOUT_NET = """network t
input x: 4 x 3 x 3
x -> conv(4, 1) -> dropout(0.4) -> tanh -> dropout(0.25) -> conv(2, 1) -> output y
"""


def test_dropout_training_graph_and_its_gradient():
    rng = np.random.default_rng(10)
    tg = training_graph(DROPOUT_NET)
    seed = tg.node(tg.inputs[DROPOUT_SEED])
    assert seed.type.shape == (3,) and not seed.type.batched
    assert DROPOUT_SEED not in gradient_outputs(tg)
    streams = {n.name: n.attrs["stream"] for n in tg.nodes() if n.op == "dropout_train"}
    # a mask per layer, and each layer's gradient through the same mask
    assert streams["dropout1"] != streams["dropout2"]
    assert streams["dropout1.grad"] == streams["dropout1"]
    assert streams["dropout2.grad"] == streams["dropout2"]
    feed, params = random_feed(tg, 3, rng)
    # the gradient with the mask fixed (the same seed and step throughout)
    assert check_gradients(tg, feed, params, rng, samples=10) > 0
    # the same seed and step give the same step; another step another mask
    first = run_reference(tg, feed, params)["loss"]
    assert run_reference(tg, feed, params)["loss"] == first
    feed[DROPOUT_SEED] = feed[DROPOUT_SEED] + [0, 1, 0]
    assert run_reference(tg, feed, params)["loss"] != first


def test_dropout_scales_what_it_keeps():
    """Ones through dropout(0.2): each value 0 or 1 / 0.8 = 1.25, by the documented mask, so
    mse against zeros is the kept fraction times 1.25^2."""
    g = training_graph(net((1, 10, 10), "dropout(0.2)"))
    (stream,) = [n.attrs["stream"] for n in g.nodes() if n.name == "dropout1"]
    x = np.ones((3, 1, 10, 10))
    out = run_reference(g, {"x": x, "labels": np.zeros_like(x),
                            DROPOUT_SEED: np.array([1, 2, 0])}, {})
    kept = dropout_keep(1, 2, stream, x.shape, 0.2)
    assert 0.6 < kept.mean() < 0.95
    assert np.isclose(out["loss"], kept.mean() * 1.25 ** 2, rtol=1e-12)


def test_dropout_with_rate_zero_trains_as_the_identity():
    tg = training_graph(net((2, 3, 3), "conv(2, 1) -> dropout(0.0)"))
    assert DROPOUT_SEED not in tg.inputs
    assert not any(n.op.startswith("dropout") for n in tg.nodes())


def test_an_input_named_like_the_dropout_seed_is_refused():
    src = """network t
input dropout_seed: 2 x 3 x 3
dropout_seed -> conv(2, 1) -> dropout -> output y
"""
    with pytest.raises(GradientError, match=r"<string>:3:\d+: layer dropout1 cannot train: the "
                                            r"network has an input named 'dropout_seed'"):
        attach_loss(load_network(src), "mse")


def test_every_new_rule_in_one_network_and_through_the_training_pipeline():
    """All the rules above in one network: its gradients against finite differences, and the
    training pipeline's passes (-O2) leave the loss, the gradients and the updates as they
    were."""
    src = """network t
input x: 3 x 6 x 6
x -> conv(4, 3, pad=1) -> batchnorm -> prelu -> dropout(0.3) -> groupnorm(2) -> lrn(3)
  -> upsample(2, mode=bilinear) -> depth_to_space(2) -> conv(4, 1) -> channel_shuffle(2)
  -> space_to_depth(2) -> instance_norm -> globalavgpool -> flatten -> dense(5) -> output y
"""
    rng = np.random.default_rng(11)
    tg = training_graph(src, "cross_entropy")
    feed, params = random_feed(tg, 2, rng, classes=5)
    assert check_gradients(tg, feed, params, rng, samples=3) > 0
    before = run_reference(tg, feed, params)
    optimized = attach_loss(load_network(src), "cross_entropy")
    run_passes(optimized, pipeline(2, training=True), PassContext(training=True))
    after = run_reference(optimized, feed, params)
    assert set(after) == set(before) - {"grad:x"}  # no input gradients asked for here
    for name in after:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-12, atol=1e-15,
                                   err_msg=name)
