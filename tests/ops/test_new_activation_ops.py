"""The operators of issue 9 (elu, selu, softplus, mish, prelu, instance_norm, pad's reflect and
edge modes): each float64 reference against ONNX Runtime on drawn shapes, and the attribute
rules that refuse what the reference cannot mean.

The single-node ONNX models are built and run with the helpers of test_ops_vs_onnxruntime.py
(`run_ort`, `node`, `check`, `rand`), loaded from that file: pytest runs in importlib mode, so a
test file cannot be imported by name. Tolerance, as there: 1e-4 * max(1, max |reference|).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import AttrError, ShapeError, get_op

_spec = importlib.util.spec_from_file_location(
    "ort_helpers", Path(__file__).with_name("test_ops_vs_onnxruntime.py"))
ort_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ort_helpers)
run_ort, node, check, rand, canonical = (ort_helpers.run_ort, ort_helpers.node, ort_helpers.check,
                                         ort_helpers.rand, ort_helpers.canonical)

seeds = st.integers(0, 2**32 - 1)

# (cnnc op, its DSL attributes, the ONNX op, the ONNX attributes)
ACTIVATIONS: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("elu", {}, "Elu", {}),
    ("elu", {"alpha": 0.5}, "Elu", {"alpha": 0.5}),
    ("elu", {"alpha": 2.5}, "Elu", {"alpha": 2.5}),
    ("selu", {}, "Selu", {}),
    ("selu", {"alpha": 2.0, "gamma": 3.0}, "Selu", {"alpha": 2.0, "gamma": 3.0}),
    ("softplus", {}, "Softplus", {}),
    ("mish", {}, "Mish", {}),
]

# Zero, the sign of zero, and values where a naive log(1 + exp(x)) overflows float32 (x > 88),
# around PyTorch's softplus threshold (20), and deep in the exponential tail.
SPECIAL = np.array([0.0, -0.0, 100.0, -100.0, 20.5, -20.5, 88.8, -88.8, 1e-3, -1e-3],
                   np.float32)


@pytest.mark.parametrize("name,attrs,onnx_op,onnx_attrs", ACTIVATIONS,
                         ids=[f"{a[0]}-{'-'.join(map(str, a[1].values()))}" for a in ACTIVATIONS])
@given(n=st.integers(1, 3), shape=st.sampled_from([(3, 4, 5), (7,), (2, 1, 6), (1, 1, 1)]),
       scale=st.sampled_from([1.0, 4.0, 30.0]), seed=seeds)
@settings(max_examples=10, deadline=None)
def test_activation_matches_onnxruntime(name, attrs, onnx_op, onnx_attrs, n, shape, scale, seed):
    x = rand(np.random.default_rng(seed), n, *shape, scale=scale)
    k = min(x.size, SPECIAL.size)
    x.flat[:k] = SPECIAL[:k]
    expected = run_ort([node(onnx_op, ["x"], **onnx_attrs)], {"x": x})
    got = check(name, [x], expected, **attrs)
    assert np.all(np.isfinite(got))


def test_selu_defaults_are_onnx_defaults():
    """The DSL's selu is ONNX's Selu with its attributes left out."""
    x = rand(np.random.default_rng(0), 2, 3, 4, 5, scale=3.0)
    check("selu", [x], run_ort([node("Selu", ["x"])], {"x": x}))
    sig = {a.name: a.default for a in get_op("selu").signature}
    assert np.float32(sig["alpha"]) == np.float32(1.67326319217681884765625)
    assert np.float32(sig["gamma"]) == np.float32(1.05070102214813232421875)


def test_softplus_and_mish_do_not_overflow():
    """The stable form: no inf for large x, and the value is x itself where it should be.
    PyTorch returns x above its threshold (x > 20); the difference, log1p(exp(-x)), is below
    float32's resolution there."""
    x = np.array([[-1e4, -1000.0, -100.0, -20.0, 0.0, 20.0, 21.0, 100.0, 1000.0, 3e38]])
    sp = get_op("softplus").reference([x], {})
    mish = get_op("mish").reference([x], {})
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(mish))
    assert sp[0, -1] == 3e38 and mish[0, -1] == 3e38 and mish[0, -3] == 100.0
    assert sp[0, 0] == 0.0 and mish[0, 0] == 0.0 and sp[0, 4] == np.log(2.0)
    big = x > 20
    assert np.all(np.abs(sp[big] - x[big]) <= np.finfo(np.float32).eps * x[big])
    small = x <= 20
    np.testing.assert_allclose(sp[small], np.log1p(np.exp(x[small])), rtol=1e-12)


# -- prelu ------------------------------------------------------------------------------------

@given(n=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5),
       per_channel=st.booleans(), seed=seeds)
@settings(max_examples=15, deadline=None)
def test_prelu_matches_onnxruntime(n, c, h, w, per_channel, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, n, c, h, w, scale=3.0)
    k = c if per_channel else 1
    slope = rand(rng, k)  # negative slopes too: ONNX allows any
    onnx_slope = slope.reshape(c, 1, 1) if per_channel else slope  # right-aligned broadcast
    expected = run_ort([node("PRelu", ["x", "s"])], {"x": x}, {"s": onnx_slope})
    check("prelu", [x], expected, [slope], num_parameters=k if not per_channel else "channels")


@given(n=st.integers(1, 4), f=st.integers(1, 12), per_feature=st.booleans(), seed=seeds)
@settings(max_examples=10, deadline=None)
def test_prelu_on_features_matches_onnxruntime(n, f, per_feature, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, n, f, scale=3.0)
    slope = rand(rng, f if per_feature else 1)
    expected = run_ort([node("PRelu", ["x", "s"])], {"x": x}, {"s": slope})
    check("prelu", [x], expected, [slope], num_parameters="channels" if per_feature else 1)


@pytest.mark.parametrize("value,message", [
    (5, "num_parameters must be 1 \\(one slope\\) or the 3 channels"),
    (0, "num_parameters must be at least 1"),
    ("rows", "num_parameters must be 'channels' or 1, got 'rows'"),
    (True, "num_parameters must be an integer, got true"),
])
def test_prelu_refuses_other_slope_counts(value, message):
    with pytest.raises(AttrError, match=message) as info:
        canonical("prelu", [TensorType((3, 4, 4))], num_parameters=value)
    assert info.value.attr == "num_parameters"


def test_prelu_params_and_shape_rule():
    op = get_op("prelu")
    t = [TensorType((6, 2, 2))]
    attrs = canonical("prelu", t)
    (spec,) = op.param_specs(attrs, t)
    assert (spec.suffix, spec.shape, spec.init, spec.trainable) == ("weight", (6,), "prelu", True)
    assert op.infer(t + [TensorType((6,))], attrs).shape == (6, 2, 2)
    with pytest.raises(ShapeError, match="prelu: slope of shape 5"):
        op.infer(t + [TensorType((5,))], attrs)
    with pytest.raises(ShapeError, match="prelu needs a channels x height x width or a feature"):
        canonical("prelu", [TensorType((6, 2))])


# -- instance norm ----------------------------------------------------------------------------

@given(n=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]), seed=seeds)
@settings(max_examples=15, deadline=None)
def test_instance_norm_matches_onnxruntime(n, c, h, w, eps, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, n, c, h, w, scale=3.0) + 2.0
    scale, bias = rand(rng, c), rand(rng, c)
    expected = run_ort([node("InstanceNormalization", ["x", "s", "b"], epsilon=eps)], {"x": x},
                       {"s": scale, "b": bias})
    check("instance_norm", [x], expected, [scale, bias], eps=eps)


def test_instance_norm_refusals():
    with pytest.raises(ShapeError, match="instance_norm needs a channels x height x width"):
        canonical("instance_norm", [TensorType((7,))])
    with pytest.raises(AttrError, match="eps must be positive, got 0.0") as info:
        canonical("instance_norm", [TensorType((2, 3, 3))], eps=0)
    assert info.value.attr == "eps"


# -- pad modes --------------------------------------------------------------------------------

@st.composite
def mirror_pad_cases(draw) -> dict[str, Any]:
    mode = draw(st.sampled_from(["reflect", "edge"]))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    # reflect: each side below the size along its axis; edge: anything
    top_h = h - 1 if mode == "reflect" else 7
    top_w = w - 1 if mode == "reflect" else 7
    pads = (draw(st.integers(0, top_h)), draw(st.integers(0, top_w)),
            draw(st.integers(0, top_h)), draw(st.integers(0, top_w)))
    return dict(mode=mode, n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), h=h, w=w,
                pads=pads, seed=draw(seeds))


@given(mirror_pad_cases())
@settings(max_examples=25, deadline=None)
def test_pad_modes_match_onnxruntime(case):
    x = rand(np.random.default_rng(case["seed"]), case["n"], case["c"], case["h"], case["w"])
    t, l, b, r = case["pads"]
    onnx_pads = np.array([0, 0, t, l, 0, 0, b, r], np.int64)
    expected = run_ort([node("Pad", ["x", "pads"], mode=case["mode"])], {"x": x},
                       {"pads": onnx_pads})
    check("pad", [x], expected, pad=case["pads"], mode=case["mode"])


def test_pad_reflect_is_mirrored_without_the_edge_and_edge_repeats_it():
    """PyTorch's ReflectionPad2d and ReplicationPad2d, by hand on one row."""
    x = np.arange(4.0).reshape(1, 1, 1, 4)
    ref = get_op("pad").reference
    y = ref([x], canonical("pad", [TensorType((1, 1, 4))], pad=(0, 3, 0, 2), mode="reflect"))
    assert y[0, 0, 0].tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1]
    y = ref([x], canonical("pad", [TensorType((1, 1, 4))], pad=(0, 2, 0, 3), mode="edge"))
    assert y[0, 0, 0].tolist() == [0, 0, 0, 1, 2, 3, 3, 3, 3]


@pytest.mark.parametrize("pad,shape", [(4, (2, 4, 9)), ((0, 0, 0, 3), (1, 5, 3)),
                                       ((1, 0), (1, 1, 5))])
def test_reflect_padding_as_wide_as_the_input_is_refused(pad, shape):
    with pytest.raises(AttrError, match="mode=reflect needs padding smaller than the input") \
            as info:
        canonical("pad", [TensorType(shape)], pad=pad, mode="reflect")
    assert info.value.attr == "pad"
    canonical("pad", [TensorType(shape)], pad=pad, mode="edge")  # edge has no such limit


def test_pad_mode_and_value_rules():
    t = [TensorType((2, 4, 4))]
    with pytest.raises(AttrError, match="mode must be one of constant, reflect, edge; got 'wrap'"):
        canonical("pad", t, pad=1, mode="wrap")
    with pytest.raises(AttrError, match="value is the fill of mode=constant") as info:
        canonical("pad", t, pad=1, value=2.0, mode="edge")
    assert info.value.attr == "value"
    assert canonical("pad", t, pad=1) == {"pads": (1, 1, 1, 1), "value": 0.0, "mode": "constant"}
