"""Occlusion, top patches and the pictures: occlusion maps against a direct loop over the
float64 reference interpreter, the top patches against the reference's activations and the
receptive fields worked out by hand, every picture a PNG of the size its docstring states,
and the command's refusals of what does not exist."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cnnc
from cnnc.runtime.cli import main
from cnnc.runtime.datasets import load_dataset
from cnnc.runtime.explain import explanation, methods, pictures
from cnnc.runtime.reference import run_reference

from .nets import relu_lenet

#: A 3x3 convolution with padding 1, then 2x2 max pooling (only its receptive fields are read).
PADDED = """network padded
input image: 1 x 10 x 10
image -> conv(3, 3, pad=1) as conv1 -> relu -> maxpool(2) as pool1 -> output y
"""


@pytest.fixture(scope="module")
def lenet():
    return methods.as_model("lenet5"), load_dataset("digits", (1, 32, 32))


def test_occlusion_matches_a_loop_over_the_reference():
    model, images = relu_lenet()
    x = images[:1]
    got = methods.occlusion(model, x, class_index=0, patch=8, stride=8, fill=0.0, batch=5)
    want = np.empty((4, 4))
    for i, top in enumerate((0, 8, 16, 24)):
        for j, left in enumerate((0, 8, 16, 24)):
            occluded = x.astype(np.float64)
            occluded[0, 0, top:top + 8, left:left + 8] = 0.0
            want[i, j] = run_reference(model.graph, {"image": occluded},
                                       model.params)["probabilities"][0, 0]
    assert np.ptp(want) > 0.01  # the patch matters somewhere
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_top_patches_are_the_true_top_k_cropped_to_the_field(lenet):
    model, data = lenet
    images = data.test_x[:60]
    tp = methods.top_patches(model, images, "tanh2", channel=3, k=5)
    out = run_reference(model.graph, {"image": images.astype(np.float64)}, model.params,
                        keep=True)
    (tanh2,) = [n.id for n in model.graph.nodes() if n.name == "tanh2"]
    maps = out[f"%{tanh2}"][:, 3]
    peaks = maps.reshape(len(images), -1).max(axis=1)
    assert list(tp.indices) == list(np.argsort(-peaks)[:5])
    np.testing.assert_allclose(tp.activations, peaks[tp.indices], atol=1e-5)
    for i, (r, c), box, crop in zip(tp.indices, tp.positions, tp.boxes, tp.crops):
        assert maps[i, r, c] == pytest.approx(peaks[i], abs=1e-12)
        # tanh2 follows c1 (5x5), s2 (2x2, stride 2), c3 (5x5): a 14-pixel field whose
        # neurons are 2 pixels apart, the first one's centred on 6.5: rows 2r .. 2r + 13
        assert tuple(box) == (2 * r, 2 * c, 2 * r + 14, 2 * c + 14)
        np.testing.assert_array_equal(crop, images[i, :, 2 * r:2 * r + 14, 2 * c:2 * c + 14])


def test_receptive_box_reaches_into_the_padding():
    graph = cnnc.load(PADDED)
    # conv1 is 3x3 with padding 1: the neuron at (0, 0) sees rows and columns -1 .. 1
    assert methods.receptive_box(graph, "conv1", 0, 0) == (-1, -1, 2, 2)
    # pool1 (2x2, stride 2) after it: 4 pixels, the neurons 2 apart: (1, 2) sees 1 .. 4, 3 .. 6
    assert methods.receptive_box(graph, "pool1", 1, 2) == (1, 3, 5, 7)


# The pictures' sizes from the grid rule (pictures.py): columns (w scale + 2) + 2 wide,
# rows (h scale + 2) + 2 high, 64 more with a colour bar. LeNet-5's 32x32 digits are drawn 4
# times larger (128), its 5x5 kernels 9 times (45), its 10x10 maps 6 times (60), the 14x14
# fields of tanh2 4 times (56).
SIZES = {
    "filters": (6 * 47 + 2, 1 * 47 + 2),                 # c1: 6 kernels of 1 channel
    "feature_maps": (8 * 62 + 2 + 64, 2 * 62 + 2),       # tanh2: 16 maps, 8 a row
    "saliency": (2 * 130 + 2 + 64, 132),                 # the image and its map
    "guided_backprop": (2 * 130 + 2, 132),
    "deconvnet": (2 * 130 + 2, 132),
    "gradcam": (2 * 130 + 2 + 64, 132),
    "occlusion": (2 * 130 + 2 + 64, 132),
    "top_patches": (3 * 58 + 2, 3 * 58 + 2),             # 9 crops, 3 a row
    "tsne": (480 + 64, 480),                             # the square and the legend
    "class_model": (130 + 2, 132),                       # the image made
    "deepdream": (2 * 130 + 2, 132),                     # the image, then the dream
    "style": (3 * 130 + 2, 132),                         # content, style, the result
}


@pytest.mark.parametrize("method", sorted(SIZES))
def test_each_picture_is_a_png_of_its_stated_size(lenet, tmp_path, method):
    model, data = lenet
    many = method in explanation.OVER_A_SET
    images = data.test_x[:40] if many else data.test_x[:2 if method == "style" else 1]
    labels = data.test_y[:40] if many else None
    layer = "tanh2" if method in ("feature_maps", "top_patches") else None
    result = explanation.explain(model, method, images, labels, layer=layer, channel=3,
                                 class_index=3, steps=4)
    path = result.save(tmp_path / f"{method}.png")
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == SIZES[method]
        img.verify()
    with pytest.raises(cnnc.runtime.cli.CliError, match="--force"):
        result.save(path)


@pytest.mark.parametrize("args, message", [
    (["--method", "gradcam", "--layer", "c9"],
     "network 'lenet5' has no layer 'c9'; its layers are image, c1, tanh1"),
    (["--method", "top_patches", "--layer", "c3", "--channel", "16"],
     "layer 'c3' has 16 channels, 0..15; there is no channel 16"),
    (["--method", "saliency", "--class", "10"],
     "class 10 does not exist: network 'lenet5' has 10 classes, 0..9"),
    (["--method", "top_patches", "--layer", "f6"],
     "top patches need a layer with channels x height x width; 'f6' is 84"),
])
def test_the_command_refuses_what_does_not_exist(tmp_path, capsys, args, message):
    out = tmp_path / "x.png"
    assert main(["explain", "lenet5", *args, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists()


def test_the_command_writes_the_picture_and_keeps_an_existing_one(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["explain", "lenet5", "--method", "saliency", "-o", str(out)]) == 0
    assert Image.open(out).size == SIZES["saliency"]
    before = out.read_bytes()
    assert main(["explain", "lenet5", "--method", "gradcam", "-o", str(out)]) == 2
    assert "already exists; give --force" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_filters_of_three_channels_are_colour_tiles():
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((10, 3, 5, 5))
    picture = pictures.filters_picture(weights)
    assert picture.size == (8 * 47 + 2, 2 * 47 + 2)  # 8 a row, 45-pixel tiles
    tile = np.asarray(picture)[2:47, 2:47]           # the first filter, 9 times larger
    shown = np.round((0.5 + weights[0] / (2 * np.abs(weights).max())) * 255)
    np.testing.assert_array_equal(tile[::9, ::9], shown.transpose(1, 2, 0))
