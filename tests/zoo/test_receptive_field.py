"""Receptive fields: the seeds' examples (two stacked 3x3 convolutions see 5x5, three see 7x7,
a 3x3 with dilation 2 sees 5x5), the VGG-16 and ResNet-18 values computed by hand, the joins,
and the recurrence against a brute-force walk of the window index sets."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cnnc.compiler.receptive_field import describe, receptive_fields
from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.runtime.cli import main


def fields_by_name(src: str) -> dict[str, tuple[str, str, str]]:
    g = load_network(src)
    f = receptive_fields(g)
    return {n.name: describe(f[n.id]) for n in g.compute_nodes()}


def last(src: str) -> tuple[str, str, str]:
    g = load_network(src)
    return describe(receptive_fields(g)[next(iter(g.outputs.values()))])


H = "input x: 1 x 32 x 32\n"


@pytest.mark.parametrize("n, size", [(1, "3x3"), (2, "5x5"), (3, "7x7")])
def test_stacked_3x3_convolutions_see_2n_plus_1(n, size):
    assert last(H + f"x -> (conv(4, 3, pad=1) -> relu) * {n} -> output y\n") == (size, "1", "0")


def test_3x3_with_dilation_2_sees_5x5():
    assert last(H + "x -> conv(4, 3, dilation=2) -> output y\n") == ("5x5", "1", "2")


def test_stride_multiplies_the_jump_and_later_windows_grow_by_it():
    # 3x3/2 -> 3x3/1: 3 + 2 * 2 = 7, jump 2; start 1 (no padding): the first window centre.
    assert last(H + "x -> conv(4, 3, stride=2) -> conv(4, 3) -> output y\n") == ("7x7", "2", "3")


def test_rectangular_kernels_give_per_axis_fields():
    assert last(H + "x -> conv(4, (1, 5)) -> conv(4, (3, 1)) -> output y\n") == \
        ("3x5", "1", "1x2")


def test_vgg16_hand_computed():
    """conv 3x3/1 pad 1 grows the field by 2 x jump, pool 2x2/2 by 1 x jump and doubles it:
    5 after stage 1's two convs, 6 after pool1, 16 after pool2, 44 after pool3, 100 after pool4,
    212 after pool5 (jump 32)."""
    g = load_network("vgg16")
    f = receptive_fields(g)
    pools = [describe(f[n.id]) for n in g.compute_nodes() if n.op == "maxpool"]
    assert pools == [("6x6", "2", "0.5"), ("16x16", "4", "1.5"), ("44x44", "8", "3.5"),
                     ("100x100", "16", "7.5"), ("212x212", "32", "15.5")]
    convs = [describe(f[n.id])[0] for n in g.compute_nodes() if n.op == "conv"]
    assert convs[:4] == ["3x3", "5x5", "10x10", "14x14"]
    assert describe(f[g.outputs[next(iter(g.outputs))]]) == ("whole input", "-", "-")


def test_resnet18_hand_computed():
    """Stem: 7x7/2 pad 3 sees 7 (jump 2), the 3x3/2 max pool 11 (jump 4); each stage's 3x3
    convolutions add 2 x jump: 43 after stage 1, 99, 211, and 435 (jump 32) after stage 4. The
    residual add takes the larger of its two branches (the 1x1 shortcut sees less)."""
    g = load_network("resnet18")
    f = receptive_fields(g)
    nodes = list(g.compute_nodes())
    first_conv = next(n for n in nodes if n.op == "conv")
    first_pool = next(n for n in nodes if n.op == "maxpool")
    assert describe(f[first_conv.id]) == ("7x7", "2", "0")
    assert describe(f[first_pool.id]) == ("11x11", "4", "0")
    adds = [describe(f[n.id])[:2] for n in nodes if n.op == "add"]
    assert [adds[i] for i in (1, 3, 5, 7)] == [("43x43", "4"), ("99x99", "8"), ("211x211", "16"),
                                              ("435x435", "32")]


def test_join_takes_the_wider_branch_and_broadcast_gates_see_everything():
    src = (H + "a = x -> conv(4, 3, pad=1)\nb = x -> conv(4, 5, pad=2)\n"
           "concat(a, b) -> output y\n"
           "g = b -> globalavgpool\n(b * g) -> output z\n")
    fields = fields_by_name(src)
    assert fields["concat1"] == ("5x5", "1", "0")
    assert fields["mul1"] == ("whole input", "-", "-")


def test_transposed_convolution_and_resize_divide_the_jump():
    assert last(H + "x -> conv(4, 3) -> conv_transpose(4, 2, stride=2) -> output y\n")[:2] == \
        ("3x3", "0.5")
    assert last(H + "x -> conv(4, 3) -> upsample(2) -> output y\n")[:2] == ("3x3", "0.5")
    assert last(H + "x -> conv(4, 3) -> upsample(2, mode=bilinear) -> output y\n")[:2] == \
        ("4x4", "0.5")


def test_vector_inputs_have_no_spatial_field():
    assert last("input f: 16\nf -> dense(4) -> relu -> output y\n") == ("-", "-", "-")


# -- against brute force ----------------------------------------------------------------------

layer = st.one_of(
    st.tuples(st.just("conv"), st.sampled_from([1, 2, 3, 5]), st.sampled_from([1, 2]),
              st.sampled_from([1, 2]), st.sampled_from([0, 1, 2])),
    st.tuples(st.sampled_from(["maxpool", "avgpool"]), st.sampled_from([2, 3]),
              st.sampled_from([1, 2]), st.just(1), st.sampled_from([0, 1])))


def brute_force(layers: list[tuple[str, int, int, int, int]], o: int) -> set[int]:
    """The input positions (one axis, padding not clipped) output position `o` depends on,
    by walking the window index sets back through the layers."""
    positions = {o}
    for _, k, s, d, p in reversed(layers):
        positions = {q * s - p + d * t for q in positions for t in range(k)}
    return positions


@given(st.lists(layer, min_size=1, max_size=4))
def test_recurrence_matches_the_window_index_sets(layers):
    text = " -> ".join(f"{op}(4, {k}, stride={s}, dilation={d}, pad={p})" if op == "conv" else
                       f"{op}({k}, stride={s}, pad={p})" for op, k, s, d, p in layers)
    try:
        g = load_network("input x: 1 x 96 x 96\nx -> " + text + " -> output y\n")
    except DslError:
        assume(False)  # the windows outgrew the input, or padding above half the window
    ax = receptive_fields(g)[g.outputs["y"]].axes[0]
    first, second = brute_force(layers, 0), brute_force(layers, 1)
    assert ax.size == max(first) - min(first) + 1
    assert ax.jump == min(second) - min(first)
    assert ax.start == Fraction(max(first) + min(first), 2)


# -- the command line -------------------------------------------------------------------------

def test_cnnc_summary_receptive_field_prints_each_layer(tmp_path, capsys):
    path = tmp_path / "three.cnn"
    path.write_text("network three\n" + H +
                    "x -> conv(4, 3, pad=1) as c1 -> conv(4, 3, pad=1) as c2 -> "
                    "conv(4, 3, pad=1) as c3 -> globalavgpool -> output y\n")
    assert main(["summary", str(path), "--receptive-field"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.split("receptive fields of three")[1]
            .splitlines() if line and not line.startswith(("-", "layer", " "))}
    assert rows["c1"][3:] == ["3x3", "1", "0"]
    assert rows["c2"][3:] == ["5x5", "1", "0"]
    assert rows["c3"][3:] == ["7x7", "1", "0"]
    assert rows["globalavgpool1"][3:] == ["whole", "input", "-", "-"]
    assert rows["x"][1:] == ["input", "1x32x32", "1x1", "1", "0"]
