"""Receptive fields: the seeds' examples (two stacked 3x3 convolutions see 5x5, three see 7x7,
a 3x3 with dilation 2 sees 5x5), the VGG-16 and ResNet-18 values computed by hand, the joins,
and the recurrence against a brute-force walk of the window index sets (convolutions, pools,
bilinear upsampling with and without align_corners, instance norm)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from cnnc.compiler.receptive_field import describe, receptive_fields
from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.runtime.cli import main
from cnnc.runtime.reference import run_reference


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
              st.sampled_from([1, 2]), st.just(1), st.sampled_from([0, 1])),
    st.tuples(st.just("bilinear"), st.sampled_from([2, 3]), st.booleans()),
    st.tuples(st.just("instance_norm")))


def dsl(step: tuple) -> str:
    op = step[0]
    if op == "conv":
        _, k, s, d, p = step
        return f"conv(4, {k}, stride={s}, dilation={d}, pad={p})"
    if op == "bilinear":
        _, f, align = step
        return f"upsample({f}, mode=bilinear, align_corners={str(align).lower()})"
    if op == "instance_norm":
        return "instance_norm"
    _, k, s, _, p = step
    return f"{op}({k}, stride={s}, pad={p})"


def source_coordinate(o: Fraction, f: int, align: bool, n_in: int, n_out: int) -> Fraction:
    """Where bilinear output ``o`` samples its input (``compiler/ops/resize.py``'s formulas)."""
    if align:
        return o * Fraction(n_in - 1, n_out - 1)
    return (o + Fraction(1, 2)) / f - Fraction(1, 2)


def brute_force(layers: list[tuple], lengths: list[tuple[int, int]],
                o: int) -> set[Fraction] | None:
    """The input positions (one axis, padding not clipped) output position `o` depends on,
    walking the index sets back through the layers (`lengths`: each layer's input and output
    length); None when a layer reads its whole input (instance norm).

    A bilinear output reads the two pixels around its source coordinate src, with a tent of
    weights centred on src: the walk puts them at src -/+ 1/2 (their weighted centre is src,
    as `test_bilinear_source_coordinate_is_the_reference_s_weighted_centre` checks), so every
    position stays an exact affine function of `o`."""
    positions = {Fraction(o)}
    for step, (n_in, n_out) in zip(reversed(layers), reversed(lengths)):
        if step[0] == "instance_norm":
            return None
        if step[0] == "bilinear":
            _, f, align = step
            positions = {source_coordinate(q, f, align, n_in, n_out) + side
                         for q in positions for side in (Fraction(-1, 2), Fraction(1, 2))}
            continue
        _, k, s, d, p = step
        positions = {q * s - p + d * t for q in positions for t in range(k)}
    return positions


@given(st.lists(layer, min_size=1, max_size=4))
# align_corners' spacing 383 / 1151: a denominator above the 1/1000 the others are rounded to
@example([("bilinear", 2, False), ("bilinear", 2, False), ("bilinear", 3, True)])
def test_recurrence_matches_the_window_index_sets(layers):
    text = " -> ".join(map(dsl, layers))
    try:
        g = load_network("input x: 1 x 96 x 96\nx -> " + text + " -> output y\n")
    except DslError:
        assume(False)  # the windows outgrew the input, or padding above half the window
    nodes = list(g.compute_nodes())
    lengths = [(g.node(n.inputs[0]).type.shape[1], n.type.shape[1]) for n in nodes]
    assert [n.op for n in nodes] == [{"bilinear": "upsample"}.get(s[0], s[0]) for s in layers]
    field = receptive_fields(g)[g.outputs["y"]]
    first, second = brute_force(layers, lengths, 0), brute_force(layers, lengths, 1)
    if first is None:
        assert field.whole
        return
    ax = field.axes[0]
    assert ax.size == max(first) - min(first) + 1
    assert ax.jump == min(second) - min(first)
    assert ax.start == (max(first) + min(first)) / 2


@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("n_in, f", [(5, 2), (4, 3), (1, 2)])
def test_bilinear_source_coordinate_is_the_reference_s_weighted_centre(n_in, f, align):
    """The float64 reference's weights of each output (its response to each one-hot input)
    are centred on the source coordinate the walk above and the field use, on at most two
    neighbouring pixels (the field's size), wherever the coordinate lies inside the input."""
    g = load_network(f"input x: 1 x 1 x {n_in}\nx -> upsample((1, {f}), mode=bilinear, "
                     f"align_corners={str(align).lower()}) -> output y\n")
    n_out = n_in * f
    weights = run_reference(g, {"x": np.eye(n_in).reshape(n_in, 1, 1, n_in)})["y"]
    weights = weights.reshape(n_in, n_out).T  # [output, input]
    ax = receptive_fields(g)[g.outputs["y"]].axes[1]
    assert ax.size == 2
    for o in range(n_out):
        src = source_coordinate(Fraction(o), f, align, n_in, n_out)
        assert src == ax.start + o * ax.jump
        if not 0 <= src <= n_in - 1:
            continue  # clamped to the edge pixel, as padding is not clipped
        read = np.flatnonzero(weights[o])
        assert len(read) <= 2 and read.max() - read.min() <= 1
        assert weights[o] @ np.arange(n_in) == pytest.approx(float(src), abs=1e-12)


def test_instance_norm_sees_the_whole_input():
    assert last(H + "x -> conv(4, 3) -> instance_norm -> output y\n") == \
        ("whole input", "-", "-")
    assert last(H + "x -> conv(4, 3) -> groupnorm(2) -> output y\n") == ("whole input", "-", "-")


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
