"""The seeds' worked examples as exact tests of the op references and shape rules.

Sources (/work/shared/seeds): 000 (the vertical edge detector and its column of 30s), 001 (the
6 x 6 image with two 3 x 3 filters, stride 1 and 2, max pooling; the "X" example's 7 x 7 map
pooled to 4 x 4), 004 (Fig. 6.3, 6.7 and 6.8, the output-size formula (6.17), and polynomial
multiplication as a convolution). Where a seed's figure was an image lost in the text, the
expected numbers are those of the original slides, re-derived here by an explicit loop.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import REQUIRED, get_op
from cnnc.dsl.builder import load_network
from cnnc.runtime.reference import run_reference


def apply(name: str, tensors: list[np.ndarray], params: list[np.ndarray] = (),
          **raw: Any) -> np.ndarray:
    """Canonicalize DSL-level attributes, check `infer` against the reference's shape, run it."""
    op = get_op(name)
    t_types = [TensorType(tuple(x.shape[1:])) for x in tensors]
    full = {a.name: raw.pop(a.name) if a.name in raw else a.default for a in op.signature}
    assert not raw and REQUIRED not in full.values()
    attrs = op.canonicalize(full, t_types) if op.canonicalize else full
    out = op.reference(list(tensors) + list(params), attrs)
    want = op.infer(t_types + [TensorType(tuple(p.shape)) for p in params], attrs)
    assert out.shape == (len(tensors[0]),) + want.shape
    return out


def out_shape(name: str, in_shape: tuple[int, ...], **raw: Any) -> tuple[int, ...]:
    """The shape rule alone."""
    op = get_op(name)
    t = [TensorType(in_shape)]
    full = {a.name: raw.pop(a.name) if a.name in raw else a.default for a in op.signature}
    attrs = op.canonicalize(full, t)
    types = t + [TensorType(s.shape) for s in op.param_specs(attrs, t)]
    return op.infer(types, attrs).shape


def correlate_loop(x: np.ndarray, w: np.ndarray, stride=(1, 1)) -> np.ndarray:
    """Valid cross-correlation of one 2-D image with one 2-D kernel, written as a plain loop."""
    (h, wd), (r, s) = x.shape, w.shape
    p, q = (h - r) // stride[0] + 1, (wd - s) // stride[1] + 1
    out = np.zeros((p, q))
    for i in range(p):
        for j in range(q):
            for a in range(r):
                for b in range(s):
                    out[i, j] += x[i * stride[0] + a, j * stride[1] + b] * w[a, b]
    return out


# -- 001: the 6 x 6 image and its two filters ---------------------------------------------------

IMAGE_001 = np.array([
    [1, 0, 0, 0, 0, 1],
    [0, 1, 0, 0, 1, 0],
    [0, 0, 1, 1, 0, 0],
    [1, 0, 0, 0, 1, 0],
    [0, 1, 0, 0, 1, 0],
    [0, 0, 1, 0, 1, 0],
], np.float64)
FILTER_1 = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float64)
FILTER_2 = np.array([[-1, 1, -1], [-1, 1, -1], [-1, 1, -1]], np.float64)

# The lecture's feature maps (the seed's figures are images; these are the original slides').
MAP_1 = np.array([[3, -1, -3, -1], [-3, 1, 0, -3], [-3, -3, 0, 1], [3, -2, -2, -1]])
MAP_2 = np.array([[-1, -1, -1, -1], [-1, -1, -2, 1], [-1, -1, -2, 1], [-1, 0, -4, 3]])
MAP_1_STRIDE_2 = np.array([[3, -3], [-3, 0]])
POOLED = np.array([[[3, 0], [3, 1]], [[-1, 1], [0, 3]]])  # 2 x 2 max pooling, each filter


def test_001_slide_values_are_the_plain_loop():
    """The expected matrices above are what the definition gives: no typo carried over."""
    np.testing.assert_array_equal(correlate_loop(IMAGE_001, FILTER_1), MAP_1)
    np.testing.assert_array_equal(correlate_loop(IMAGE_001, FILTER_2), MAP_2)
    np.testing.assert_array_equal(correlate_loop(IMAGE_001, FILTER_1, (2, 2)), MAP_1_STRIDE_2)


def test_001_two_filters_stride_1():
    w = np.stack([FILTER_1, FILTER_2])[:, None]  # 2 filters x 1 channel x 3 x 3
    out = apply("conv", [IMAGE_001[None, None]], [w], out_channels=2, kernel=3, bias=False)
    np.testing.assert_array_equal(out[0], np.stack([MAP_1, MAP_2]))  # "4 x 4 image", 2 channels


def test_001_stride_2():
    w = FILTER_1[None, None]
    out = apply("conv", [IMAGE_001[None, None]], [w], out_channels=1, kernel=3, stride=2,
                bias=False)
    np.testing.assert_array_equal(out[0, 0], MAP_1_STRIDE_2)


def test_001_max_pooling():
    maps = np.stack([MAP_1, MAP_2])[None].astype(np.float64)
    out = apply("maxpool", [maps], kernel=2)  # "New image but smaller": 2 x 2, each filter
    np.testing.assert_array_equal(out[0], POOLED)


def test_001_whole_cnn_through_the_dsl():
    """The same as a two-layer network with literal weights, run by the reference interpreter."""
    src = """network lee_cnn
input image: 1 x 6 x 6
image -> conv(2, 3, bias=false, weights=[[[1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
                                         [[-1, 1, -1], [-1, 1, -1], [-1, 1, -1]]]) as features
      -> maxpool(2) -> output pooled
"""
    out = run_reference(load_network(src), {"image": IMAGE_001[None, None].astype(np.float32)})
    np.testing.assert_array_equal(out["pooled"][0], POOLED)


# -- 000: the vertical edge detector -----------------------------------------------------------

def test_000_vertical_edge_gives_a_column_of_30s():
    """Bright (10) left half, dark (0) right half: the edge shows as 30s in the middle."""
    image = np.array([[10, 10, 10, 0, 0, 0]] * 6, np.float64)
    edge = np.array([[1, 0, -1]] * 3, np.float64)
    out = apply("conv", [image[None, None]], [edge[None, None]], out_channels=1, kernel=3,
                bias=False)
    np.testing.assert_array_equal(out[0, 0], [[0, 30, 30, 0]] * 4)
    # Dark-to-bright flips the sign (003: "it will give us negative values").
    out = apply("conv", [image[None, None, :, ::-1].copy()], [edge[None, None]],
                out_channels=1, kernel=3, bias=False)
    np.testing.assert_array_equal(out[0, 0], [[0, -30, -30, 0]] * 4)


# -- 004: strides, dilation, padding and the output-size formula (6.17) ------------------------

def test_004_fig_6_7_strides_5_4_on_10x10():
    """Input 10 x 10, kernel 3 x 3, (s_h, s_v) = (5, 4): a 2 x 2 output of non-overlapping
    windows starting at rows 0, 5 and columns 0, 4."""
    rng = np.random.default_rng(67)
    x, w = rng.standard_normal((1, 1, 10, 10)), rng.standard_normal((1, 1, 3, 3))
    out = apply("conv", [x], [w], out_channels=1, kernel=3, stride=(5, 4), bias=False)
    assert out.shape == (1, 1, 2, 2)
    expected = [[np.sum(x[0, 0, r:r + 3, c:c + 3] * w[0, 0]) for c in (0, 4)] for r in (0, 5)]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-12)


def test_004_fig_6_8_dilation_2_on_6x7():
    """(d_h, d_v) = (2, 2) turns the 3 x 3 kernel into a 5 x 5 one with zero rows and columns
    in between; on a 6 x 7 input the output is 2 x 3."""
    rng = np.random.default_rng(68)
    x, w = rng.standard_normal((1, 1, 6, 7)), rng.standard_normal((1, 1, 3, 3))
    out = apply("conv", [x], [w], out_channels=1, kernel=3, dilation=2, bias=False)
    assert out.shape == (1, 1, 2, 3)
    dilated = np.zeros((5, 5))
    dilated[::2, ::2] = w[0, 0]  # "adds d - 1 all-zero rows between each pair of adjacent rows"
    np.testing.assert_allclose(out[0, 0], correlate_loop(x[0, 0], dilated), rtol=1e-12)


def test_004_fig_6_3_padding_keeps_6x7():
    """A 3 x 3 kernel on 6 x 7 gives 4 x 5; padded to 8 x 9 it gives 6 x 7 again. The seed's
    (p_h, p_v) = (2, 2) is TOTAL padding: one row/column on each side, cnnc's pad=1."""
    assert out_shape("conv", (1, 6, 7), out_channels=1, kernel=3) == (1, 4, 5)
    assert out_shape("conv", (1, 6, 7), out_channels=1, kernel=3, pad=1) == (1, 6, 7)
    assert out_shape("conv", (1, 6, 7), out_channels=1, kernel=3, pad="same") == (1, 6, 7)


def formula_6_17(m: int, k: int, d: int, p: int, s: int) -> int:
    """004 eq. (6.17): 1 + floor((M - d(K - 1) - 1 + p) / s), p the TOTAL padding."""
    return 1 + math.floor((m - d * (k - 1) - 1 + p) / s)


@given(mh=st.integers(1, 40), mv=st.integers(1, 40), kh=st.integers(1, 7), kv=st.integers(1, 7),
       dh=st.integers(1, 4), dv=st.integers(1, 4), ph=st.integers(0, 8), pv=st.integers(0, 8),
       sh=st.integers(1, 5), sv=st.integers(1, 5))
@settings(max_examples=60)
def test_004_eq_6_17_output_size(mh, mv, kh, kv, dh, dv, ph, pv, sh, sv):
    # The seed's p is the total padding; cnnc pads per side. An odd total puts the extra row
    # or column at the bottom/right (002: "pad ceil(p/2) on one side, floor(p/2) on the other").
    pads = (ph // 2, pv // 2, ph - ph // 2, pv - pv // 2)  # (top, left, bottom, right)
    want = (formula_6_17(mh, kh, dh, ph, sh), formula_6_17(mv, kv, dv, pv, sv))
    if min(want) < 1:
        return  # the window is larger than the padded input: a ShapeError (test_shape_errors)
    got = out_shape("conv", (3, mh, mv), out_channels=5, kernel=(kh, kv), stride=(sh, sv),
                    pad=pads, dilation=(dh, dv))
    assert got == (5,) + want


def test_004_vgg19_padding_2_2_keeps_224():
    """Table 6.1: 3 x 3 convolutions with (p_h, p_v) = (2, 2) total, i.e. pad=1 per side."""
    assert out_shape("conv", (3, 224, 224), out_channels=64, kernel=3, pad=1) == (64, 224, 224)
    assert out_shape("maxpool", (64, 224, 224), kernel=2) == (64, 112, 112)


# -- 001: the "X" example: ReLU, then 2 x 2 max pooling of a 7 x 7 map with ceil mode ----------

X_MAP = np.array([
    [0.77, -0.11, 0.11, 0.33, 0.55, -0.11, 0.33],
    [-0.11, 1.0, -0.11, 0.33, -0.11, 0.11, -0.11],
    [0.11, -0.11, 1.0, -0.33, 0.11, -0.11, 0.55],
    [0.33, 0.33, -0.33, 0.55, -0.33, 0.33, 0.33],
    [0.55, -0.11, 0.11, -0.33, 1.00, -0.11, 0.11],
    [-0.11, 0.11, -0.11, 0.33, -0.11, 1.00, -0.11],
    [0.33, -0.11, 0.55, 0.33, 0.11, -0.11, 0.77],
])
X_RELU = np.array([
    [0.77, 0, 0.11, 0.33, 0.55, 0, 0.33],
    [0, 1.00, 0, 0.33, 0, 0.11, 0],
    [0.11, 0, 1.00, 0, 0.11, 0, 0.55],
    [0.33, 0.33, 0, 0.55, 0, 0.33, 0.33],
    [0.55, 0, 0.11, 0, 1.00, 0, 0.11],
    [0, 0.11, 0, 0.33, 0, 1.00, 0],
    [0.33, 0, 0.55, 0.33, 0.11, 0, 1.77],  # sic: the seed prints 1.77 for relu(0.77)
])
X_POOLED = np.array([
    [1.00, 0.33, 0.55, 0.33],
    [0.33, 1.00, 0.33, 0.55],
    [0.55, 0.33, 1.00, 0.11],
    [0.33, 0.55, 0.11, 0.77],  # 0.77: the pooled map confirms the 1.77 above is a typo
])


def test_001_x_example_relu_then_ceil_mode_pooling_7_to_4():
    relu = apply("relu", [X_MAP[None, None]])[0, 0]
    mask = np.ones_like(X_RELU, bool)
    mask[6, 6] = False
    np.testing.assert_array_equal(relu[mask], X_RELU[mask])
    assert relu[6, 6] == 0.77
    pooled = apply("maxpool", [relu[None, None]], kernel=2, stride=2, ceil_mode=True)
    np.testing.assert_array_equal(pooled[0, 0], X_POOLED)  # the last row/column: 1-wide windows
    # Without ceil mode the last row and column are dropped: 7 -> 3.
    floor = apply("maxpool", [relu[None, None]], kernel=2, stride=2)
    np.testing.assert_array_equal(floor[0, 0], X_POOLED[:3, :3])


# -- 004: polynomial multiplication is a convolution -------------------------------------------

@given(f=st.lists(st.integers(-9, 9), min_size=1, max_size=4),
       g=st.lists(st.integers(-9, 9), min_size=1, max_size=7))
@settings(max_examples=30)
def test_004_polynomial_multiplication_as_convolution(f, g):
    """z(r) = f(r) g(r): coefficients z_n = sum_k f_k g_{n-k}, a true (flipped) convolution.
    As a cross-correlation over a 1 x 1 x L image: pad L_f - 1 zeros on each side ("full") and
    flip the kernel, or flip the image before and after with the `flip` op."""
    fa, ga = np.array(f, np.float64), np.array(g, np.float64)  # increasing powers (f_0, f_1, ...)
    want = np.polymul(fa[::-1], ga[::-1])[::-1]  # numpy.polymul takes decreasing powers
    want = np.pad(want, (0, len(f) + len(g) - 1 - len(want)))  # polymul trims leading zeros
    image = ga.reshape(1, 1, 1, -1)
    conv = dict(out_channels=1, kernel=(1, len(f)), bias=False, pad=(0, len(f) - 1))
    z = apply("conv", [image], [fa[::-1].reshape(1, 1, 1, -1)], **conv)
    np.testing.assert_array_equal(z[0, 0, 0], want)
    # The degree: 8 coefficients for a second-degree f and a fifth-degree g.
    assert z.shape[-1] == len(f) + len(g) - 1
    flipped = apply("flip", [image], axis="horizontal")
    z = apply("flip", [apply("conv", [flipped], [fa.reshape(1, 1, 1, -1)], **conv)],
              axis="horizontal")
    np.testing.assert_array_equal(z[0, 0, 0], want)


def test_004_polynomial_example_through_the_dsl():
    """004's example degrees: f of degree 2 and g of degree 5 give z of degree 7."""
    f, g = [2.0, -1.0, 3.0], [1.0, 0.0, -2.0, 5.0, 4.0, -1.0]
    src = f"""network polymul
input g: 1 x 1 x 6
g -> flip(horizontal) -> conv(1, (1, 3), pad=(0, 2), bias=false, weights=[[[{f[0]}, {f[1]},
  {f[2]}]]]) -> flip(horizontal) -> output z
"""
    z = run_reference(load_network(src), {"g": np.array(g, np.float32).reshape(1, 1, 1, 6)})["z"]
    np.testing.assert_array_equal(z.reshape(-1), np.polymul(f[::-1], g[::-1])[::-1])
