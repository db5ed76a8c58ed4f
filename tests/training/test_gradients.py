"""Every gradient rule against central finite differences in float64 (relative error below
1e-6), on hypothesis-drawn shapes and attributes, the awkward ones included: stride 2 with odd
and even inputs, dilation, groups and depthwise, asymmetric and `same` padding, 1x1 stride 2,
ceil-mode pooling, batch > 1."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnc.compiler.autodiff import GradientError, attach_loss, autodiff
from cnnc.compiler.ops import get_op
from cnnc.compiler.passes import PassContext
from cnnc.dsl.builder import load_network

from .gradcheck import check, check_gradients, net, random_feed, training_graph

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(c=st.integers(1, 4), k_per_group=st.integers(1, 3), groups=st.sampled_from([1, 2]),
       h=st.integers(3, 9), w=st.integers(3, 9), kernel=st.sampled_from([1, 2, 3]),
       stride=st.sampled_from([1, 2, 3]), dilation=st.sampled_from([1, 2]),
       pads=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(), seed=st.integers(0, 99))
def test_conv(c, k_per_group, groups, h, w, kernel, stride, dilation, pads, bias, seed):
    span = dilation * (kernel - 1) + 1
    assume(h + pads[0] + pads[2] >= span and w + pads[1] + pads[3] >= span)
    cin, k = c * groups, k_per_group * groups
    pad = "(" + ", ".join(map(str, pads)) + ")"
    check(net((cin, h, w), f"conv({k}, {kernel}, stride={stride}, pad={pad}, "
                           f"dilation={dilation}, groups={groups}, bias={str(bias).lower()})"),
          seed)


@pytest.mark.parametrize("body", [
    "conv(4, 3, stride=2, pad=same)",        # same padding, stride 2 on an odd input
    "conv(6, 3, groups=6, pad=1)",           # depthwise
    "conv(6, 3, groups=6, stride=2, pad=1)",
    "conv(4, 1, stride=2)",                  # 1x1 stride 2: every other pixel unread
    "conv(4, (1, 3), stride=(2, 1), pad=(0, 1, 1, 1))",
])
def test_conv_awkward(body):
    check(net((6, 7, 8), body), seed=1, batch=3)


@SETTINGS
@given(c=st.integers(1, 3), k=st.integers(1, 3), groups=st.sampled_from([1, 2]),
       h=st.integers(2, 5), kernel=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]),
       pad=st.integers(0, 1), seed=st.integers(0, 99))
def test_conv_transpose(c, k, groups, h, kernel, stride, pad, seed):
    span = kernel
    assume((h - 1) * stride + span - 2 * pad >= 1)
    check(net((c * groups, h, h + 1), f"conv_transpose({k * groups}, {kernel}, "
                                      f"stride={stride}, pad={pad}, groups={groups})"), seed)


@SETTINGS
@given(op=st.sampled_from(["maxpool", "avgpool", "minpool", "lppool"]),
       h=st.integers(3, 8), w=st.integers(3, 8), kernel=st.sampled_from([2, 3]),
       stride=st.sampled_from([1, 2, 3]), pad=st.integers(0, 1), ceil=st.booleans(),
       include_pad=st.booleans(), seed=st.integers(0, 99))
def test_window_pool(op, h, w, kernel, stride, pad, ceil, include_pad, seed):
    assume(2 * pad <= kernel)
    extra = f", count_include_pad={str(include_pad).lower()}" if op == "avgpool" else ""
    # distinct values: a tie of two maxima makes max pooling non-differentiable there
    check(net((2, h, w), f"{op}({kernel}, stride={stride}, pad={pad}, "
                         f"ceil_mode={str(ceil).lower()}{extra})"), seed)


@pytest.mark.parametrize("op", ["globalavgpool", "globalmaxpool"])
def test_global_pool(op):
    check(net((3, 4, 5), f"{op} -> flatten -> dense(4)"), seed=2, batch=3)


ACTIVATIONS = ["relu", "leaky_relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "swish",
               "hard_swish", "gelu", "gelu(approximate=tanh)", "abs", "elu", "selu",
               "softplus", "mish", "softmax", "log_softmax"]


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation(act):
    # the 1x1 convolution's normal weights and bias (3 inputs a channel) give the activation
    # inputs of standard deviation 2: across the kinks at 0 and +-3, sometimes past 6
    check(net((3, 4, 5), f"conv(4, 1) -> {act}"), seed=3)


@pytest.mark.parametrize("body", [
    "flatten -> dense(5)",
    "flatten -> dense(5, bias=false) -> relu -> dense(3)",
    "reshape((4, 15)) -> flatten -> dense(2)",
    "pad((1, 0, 2, 1)) -> conv(2, 3)",
    "pad((1, 2, 1, 0), mode=reflect) -> conv(2, 3)",
    "pad((2, 1, 0, 2), mode=edge) -> conv(2, 3)",
    "flip(horizontal) -> conv(2, 3)",
    "channel_slice(1, 3) -> conv(2, 1)",
])
def test_tensor_ops(body):
    check(net((3, 4, 5), body), seed=4)


def test_residual_add_mul_sub_concat_and_weight_sharing():
    """Gradients that meet are summed: a residual, a gate broadcast over pixels, a
    concatenation of two branches of one value, one parameter used by two layers."""
    src = """network t
input x: 4 x 5 x 5
r = x -> conv(4, 3, pad=1) -> relu
gate = r -> globalavgpool -> sigmoid
res = add(r, x)
gated = mul(res, gate)
diff = sub(gated, x)
concat(diff, r) -> conv(3, 1) -> output y
"""
    check(src, seed=5, batch=3)


def test_shared_parameter_accumulates():
    """Two towers sharing every weight (the siamese zoo network's form): each parameter's
    gradient is the sum of both towers'."""
    src = """network t
input left: 2 x 6 x 6
input right: 2 x 6 x 6
block tower() {
    return in -> conv(3, 3, pad=1) -> relu -> maxpool(2) -> flatten -> dense(4)
}
shared embed = tower()
e1 = left -> embed
e2 = right -> embed
distance(e1, e2) -> output distance
"""
    rng = np.random.default_rng(6)
    tg = training_graph(src)
    feed, params = random_feed(tg, 2, rng)
    assert len(params) == 4  # one weight and bias each for the conv and dense, shared
    assert check_gradients(tg, feed, params, rng) > 0


def test_cross_entropy_with_label_smoothing_and_per_pixel():
    for shape, body, smoothing in (((3, 4, 5), "flatten -> dense(6)", 0.0),
                                   ((3, 4, 5), "flatten -> dense(6) -> softmax", 0.1),
                                   ((3, 4, 5), "conv(5, 3, pad=1)", 0.2)):
        rng = np.random.default_rng(7)
        tg = training_graph(net(shape, body), "cross_entropy", label_smoothing=smoothing)
        classes = 6 if "dense" in body else 5
        feed, params = random_feed(tg, 3, rng, classes=classes)
        assert check_gradients(tg, feed, params, rng) > 0


def test_an_op_without_a_gradient_rule_is_refused_by_name(monkeypatch):
    # every op of the DSL has a rule now: take LRN's away
    monkeypatch.setattr(get_op("lrn"), "gradient", None)
    g = load_network(net((3, 6, 6), "conv(3, 1) -> lrn(size=3) -> flatten -> dense(2)"))
    tg = attach_loss(g, "mse")
    with pytest.raises(GradientError, match=r"<string>:3:\d+: layer \S+ \(lrn\) has no "
                                            r"gradient rule"):
        autodiff(tg, PassContext(training=True))


def test_a_loss_that_does_not_fit_the_output_is_refused():
    g = load_network(net((3, 6, 6), "conv(1, 3)"))  # one class
    with pytest.raises(GradientError, match="cross_entropy.*does not fit"):
        attach_loss(g, "cross_entropy")
    with pytest.raises(GradientError, match="unknown loss 'hinge'"):
        attach_loss(g, "hinge")
