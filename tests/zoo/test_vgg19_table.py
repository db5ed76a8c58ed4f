"""004 Table 6.1 (VGG19) as an exact oracle: every row's shape, neurons and parameters."""

from cnnc.dsl.builder import load_zoo
from cnnc.runtime.summary import summarize

# (output shape, neurons, learned parameters) for layers 1..24 of Table 6.1.
TABLE_6_1 = [
    ((64, 224, 224), 3_211_264, 1_792), ((64, 224, 224), 3_211_264, 36_928),
    ((64, 112, 112), 802_816, 0),
    ((128, 112, 112), 1_605_632, 73_856), ((128, 112, 112), 1_605_632, 147_584),
    ((128, 56, 56), 401_408, 0),
    ((256, 56, 56), 802_816, 295_168), ((256, 56, 56), 802_816, 590_080),
    ((256, 56, 56), 802_816, 590_080), ((256, 56, 56), 802_816, 590_080),
    ((256, 28, 28), 200_704, 0),
    ((512, 28, 28), 401_408, 1_180_160), ((512, 28, 28), 401_408, 2_359_808),
    ((512, 28, 28), 401_408, 2_359_808), ((512, 28, 28), 401_408, 2_359_808),
    ((512, 14, 14), 100_352, 0),
    ((512, 14, 14), 100_352, 2_359_808), ((512, 14, 14), 100_352, 2_359_808),
    ((512, 14, 14), 100_352, 2_359_808), ((512, 14, 14), 100_352, 2_359_808),
    ((512, 7, 7), 25_088, 0),
    ((4096,), 4_096, 102_764_544), ((4096,), 4_096, 16_781_312), ((1000,), 1_000, 4_097_000),
]


def test_vgg19_rows_match_table_6_1():
    s = summarize(load_zoo("vgg19"))
    layers = [r for r in s.rows if r.activations]  # the table's numbered layers
    assert [(r.shape, r.activations, r.params) for r in layers] == TABLE_6_1


def test_vgg19_totals():
    s = summarize(load_zoo("vgg19"))
    assert s.params == 143_667_240
    assert s.activations == 16_391_656


def test_resnet18_parameter_count():
    assert summarize(load_zoo("resnet18")).params == 11_689_512
