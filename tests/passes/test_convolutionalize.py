"""The convolutionalize pass (compiler/passes/convolutionalize.py): a classifier run fully
convolutionally on a larger image equals the classifier run window by window at its output
stride, on an AlexNet-style head (valid convolutions, pooling, dropout, three dense layers;
compiled, float32) and a VGG-style one (3x3 convolutions, batch norm between dense layers;
float64 reference, drawn input sizes); its weights stay the dense ones; what it refuses; and
`cnnc summary`'s line on the work saved, against counts made by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cnnc
from cnnc.compiler.passes.convolutionalize import (
    ConvolutionalizeError,
    fully_convolutional,
    window_saving,
)
from cnnc.compiler.receptive_field import receptive_fields
from cnnc.runtime.cli import main
from cnnc.runtime.model import ModelError
from cnnc.runtime.weights import init_params

# 24 -> conv 5 -> 20 -> pool -> 10 -> conv 3 -> 8 -> pool -> 4: a 12 x 4 x 4 map, stride 4
ALEX = """network tiny_alex(classes = 5)
input image: 3 x 24 x 24
image -> conv(8, 5) -> relu -> maxpool(2) -> conv(12, 3) -> relu -> maxpool(2)
      -> flatten -> dense(16) as fc1 -> relu -> dropout -> dense(16) as fc2 -> relu
      -> dense(classes) as fc3 -> output logits
"""

# 20 -> 18 -> 16 -> pool 8 -> 6 -> pool 3: a 6 x 3 x 3 map, stride 4
VGG = """network tiny_vgg(classes = 4)
input image: 2 x 20 x 20
image -> conv(4, 3) -> relu -> conv(4, 3) -> relu -> maxpool(2) -> conv(6, 3) -> relu
      -> maxpool(2) -> flatten -> dense(10) as fc1 -> batchnorm -> relu -> dense(classes) as fc2
      -> output logits
"""


def windows(classify, x: np.ndarray, size: int, stride: int, grid: tuple[int, int]
            ) -> np.ndarray:
    """The classifier on every size x size crop at ``stride``: [N, K, P, Q]."""
    rows = [[classify(x[:, :, p * stride:p * stride + size, q * stride:q * stride + size])
             for q in range(grid[1])] for p in range(grid[0])]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


@pytest.fixture(scope="module")
def alex_file(tmp_path_factory):
    """ALEX as a file: the kernels' comments name it, so the command line's compile of the
    same file finds them in the cache."""
    path = tmp_path_factory.mktemp("alex") / "alex.cnn"
    path.write_text(ALEX)
    return path


@pytest.fixture(scope="module")
def alex(alex_file):
    graph = cnnc.load(str(alex_file))
    params = init_params(graph, 7)
    classifier = cnnc.compile(graph, weights=params)
    grid = cnnc.compile(graph, weights=params, fully_convolutional=True, input_size=(36, 40))
    return graph, params, classifier, grid


def test_compiled_grid_equals_the_classifier_on_every_window(alex):
    graph, params, classifier, grid = alex
    x = np.random.default_rng(1).standard_normal((2, 3, 36, 40)).astype(np.float32)
    got = grid(x)
    assert got.shape == (2, 5, 4, 5)  # (36 - 24) / 4 + 1 rows, (40 - 24) / 4 + 1 columns
    want = windows(classifier, x, 24, 4, (4, 5))
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)
    exact = windows(lambda crop: cnnc.reference(graph, {"image": crop}, params)["logits"],
                    x.astype(np.float64), 24, 4, (4, 5))
    np.testing.assert_allclose(got, exact, rtol=0, atol=2e-5 * scale)


def test_the_weights_stay_the_dense_ones(alex):
    """The user's parameters keep their names and dense shapes; the convolution reads them
    through a derived parameter, and new weights reach it."""
    graph, params, _, grid = alex
    assert {k: v.shape for k, v in grid.params.items()} == \
        {k: v.shape for k, v in params.items()}
    assert grid.params["fc1.weight"].shape == (16, 192)
    ops = [n.op for n in grid.graph.nodes()]
    assert "dense" not in ops and ops.count("conv_weight_of_dense") == 3
    x = np.random.default_rng(2).standard_normal((1, 3, 36, 40)).astype(np.float32)
    before = grid(x)
    changed = dict(params, **{"fc3.bias": params["fc3.bias"] + 1.0})
    grid.set_params(changed)
    np.testing.assert_allclose(grid(x), before + 1.0, atol=1e-5)
    grid.set_params(params)


@given(st.integers(0, 3), st.integers(0, 3))
def test_reference_grid_equals_the_windows_vgg_style(extra_rows, extra_cols):
    """float64: every cell equals its window's scores to rounding, for any number of windows
    per axis (batch norm between the dense layers acts per pixel)."""
    graph = cnnc.load(VGG)
    params = init_params(graph, 3)
    params["batchnorm1.running_mean"] = np.linspace(-1, 1, 10).astype(np.float32)
    size = (20 + 4 * extra_rows, 20 + 4 * extra_cols)
    fc = fully_convolutional(graph, size)
    x = np.random.default_rng(extra_rows * 4 + extra_cols).standard_normal((1, 2, *size))
    got = cnnc.reference(fc, {"image": x}, params)["logits"]
    assert got.shape == (1, 4, extra_rows + 1, extra_cols + 1)
    want = windows(lambda crop: cnnc.reference(graph, {"image": crop}, params)["logits"], x,
                   20, 4, (extra_rows + 1, extra_cols + 1))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_a_dense_layer_after_global_pooling_needs_nothing():
    graph = cnnc.load("""network gap
input image: 3 x 16 x 16
image -> conv(8, 3, pad=1) -> relu -> globalavgpool -> flatten -> dense(4) -> output logits
""")
    fc = fully_convolutional(graph, (32, 24))
    assert [n.op for n in fc.compute_nodes()].count("dense") == 1
    assert fc.node(fc.outputs["logits"]).type.shape == (4,)
    assert fc.node(fc.inputs["image"]).type.shape == (3, 32, 24)


REFUSALS = [
    (ALEX.replace("-> flatten ->", "-> reshape(shape=(4, 48)) -> flatten ->"),
     (36, 36), r"reshape 'reshape1' \(<string>:4\) reshapes a 12x4x4 map: it may mix channels "
               r"and pixels"),
    (ALEX, (20, 40), r"input 'image' \(<string>:2\) was declared 24x24: the input size 20x40 "
                     r"must be at least that"),
    (ALEX.replace("dense(classes) as fc3", "dense(classes) as fc3 -> flatten"), (36, 36),
     r"flatten 'flatten2' \(<string>:5\) flattens the grid of scores 5x4x4"),
    ("network two\ninput a: 3 x 8 x 8\ninput b: 3 x 8 x 8\na + b -> flatten -> dense(2) "
     "-> output o\n", (16, 16), "takes a network of one image input; 'two' has 2"),
]


@pytest.mark.parametrize("source, size, message", REFUSALS)
def test_refusals_name_the_layer(source, size, message):
    with pytest.raises(ConvolutionalizeError, match=message):
        fully_convolutional(cnnc.load(source), size)
    with pytest.raises(ModelError, match=message):  # and compile says the same
        cnnc.compile(source, fully_convolutional=True, input_size=size, warm=False)


def test_a_flatten_read_by_the_output_is_refused():
    source = ALEX.replace("-> flatten -> dense(16) as fc1", "-> flatten -> output f\n"
                          "x = image -> conv(2, 1) -> maxpool(6) -> flatten -> dense(16) as fc1")
    with pytest.raises(ConvolutionalizeError, match=r"flatten 'flatten1' \(<string>:4\) is read "
                                                    r"by the output, not only dense layers"):
        fully_convolutional(cnnc.load(source), (36, 36))


def test_window_saving_counted_by_hand():
    """One window: conv1 8*20*20*75 + conv2 12*8*8*72 + dense 192*16 + 16*16 + 16*5 =
    298,704 MACs. One pass at 36 x 40: conv1 8*32*36*75 + conv2 12*14*16*72 + fc1 16*4*5*192
    + fc2 16*20*16 + fc3 5*20*16 = 952,896, against 20 windows of 298,704."""
    graph = cnnc.load(ALEX)
    saving = window_saving(graph, fully_convolutional(graph, (36, 40)))
    assert saving.window_macs == 240_000 + 55_296 + 3_072 + 256 + 80 == 298_704
    assert saving.one_pass_macs == 691_200 + 193_536 + 61_440 + 5_120 + 1_600 == 952_896
    assert saving.windows == (4, 5) and saving.stride == (4, 4)
    assert saving.loop_macs == 20 * 298_704


def test_receptive_fields_see_through_derived_weights():
    """The grid's cells see 24 x 24 windows 4 pixels apart (the derived weight, a constant,
    does not make the convolution see the whole input)."""
    fc = fully_convolutional(cnnc.load(ALEX), (36, 40))
    axes = receptive_fields(fc)[fc.outputs["logits"]].axes
    assert axes is not None and [(a.size, a.jump) for a in axes] == [(24, 4), (24, 4)]


def test_summary_shows_the_work_saved(capsys, tmp_path):
    path = tmp_path / "alex.cnn"
    path.write_text(ALEX)
    assert main(["summary", str(path), "--fully-convolutional", "--input-size", "36x40"]) == 0
    out = capsys.readouterr().out
    # the dense weights counted where the convolution reads them (192 x 16 + 16), no row of
    # their own
    assert re.search(r"\nfc1 +conv +16x4x5 +3,088 +61,440 +320\n", out)
    assert "conv_weight_of_dense" not in out and "total parameters:   4,929" in out
    assert ("sliding windows: 4 x 5 = 20 windows at stride 4x4: one pass 952,896 "
            "multiply-accumulates, window by window 20 x 298,704 = 5,974,080 (6.3x the work)"
            ) in out
    assert main(["summary", str(path), "--input-size", "36x40"]) == 2
    assert "--fully-convolutional and --input-size HxW go together" in capsys.readouterr().err
    assert main(["summary", str(path), "--fully-convolutional", "--input-size", "36"]) == 2
    assert "--input-size takes HEIGHTxWIDTH" in capsys.readouterr().err
    assert main(["summary", str(path), "--fully-convolutional", "--input-size", "20x20"]) == 2
    assert "must be at least that" in capsys.readouterr().err


def test_compile_command_takes_the_options(capsys, alex_file, alex):
    assert main(["compile", str(alex_file), "--fully-convolutional", "--input-size", "36x40",
                 "--stats"]) == 0
    assert "multiply-accumulates per image: 952896" in capsys.readouterr().out
