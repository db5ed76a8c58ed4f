"""The exact messages of the shape rules and attribute checks for invalid layers.

Convention: a `ShapeError` names its op ("conv: ..."); an `AttrError` names its attribute and
not the op, because the DSL builder prefixes the op and points at the argument.
"""

from __future__ import annotations

from typing import Any

import pytest

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import AttrError, ShapeError, get_op
from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError


def build(name: str, in_shape: tuple[int, ...], /, **raw: Any) -> TensorType:
    """canonicalize, params and infer, as the builder runs them."""
    op = get_op(name)
    t = [TensorType(in_shape)]
    full = {a.name: raw.pop(a.name) if a.name in raw else a.default for a in op.signature}
    assert not raw
    attrs = op.canonicalize(full, t) if op.canonicalize else full
    specs = op.param_specs(attrs, t)
    return op.infer(t + [TensorType(s.shape) for s in specs], attrs)


# -- window larger than the padded input -------------------------------------------------------

@pytest.mark.parametrize("name,shape,raw,message", [
    ("conv", (1, 3, 3), dict(out_channels=2, kernel=5),
     "conv: window 5 is larger than the padded input height 3 (3 + padding 0+0)"),
    ("conv", (1, 9, 3), dict(out_channels=2, kernel=(1, 5), pad=(0, 0, 0, 1)),
     "conv: window 5 is larger than the padded input width 4 (3 + padding 0+1)"),
    ("conv", (1, 4, 9), dict(out_channels=2, kernel=3, dilation=3, pad=1),
     "conv: window 3 (dilated to 7) is larger than the padded input height 6 (4 + padding 1+1)"),
    ("maxpool", (3, 2, 2), dict(kernel=3),
     "maxpool: window 3 is larger than the padded input height 2 (2 + padding 0+0)"),
    ("avgpool", (3, 8, 2), dict(kernel=(2, 4), pad=(0, 0, 0, 1)),
     "avgpool: window 4 is larger than the padded input width 3 (2 + padding 0+1)"),
    ("minpool", (3, 5, 5), dict(kernel=3, dilation=(1, 3)),
     "minpool: window 3 (dilated to 7) is larger than the padded input width 5 "
     "(5 + padding 0+0)"),
    ("lppool", (3, 1, 1), dict(kernel=2),
     "lppool: window 2 is larger than the padded input height 1 (1 + padding 0+0)"),
])
def test_window_larger_than_padded_input(name, shape, raw, message):
    with pytest.raises(ShapeError) as e:
        build(name, shape, **raw)
    assert str(e.value) == message


def test_window_as_large_as_padded_input_is_one_window():
    assert build("avgpool", (3, 8, 2), kernel=(2, 4), pad=(0, 1)).shape == (3, 4, 1)
    assert build("conv", (1, 4, 9), out_channels=2, kernel=3, dilation=3, pad=(1, 0, 2, 0)
                 ).shape == (2, 1, 3)


# -- groups ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape,raw,message", [
    ("conv", (6, 8, 8), dict(out_channels=8, kernel=3, groups=4),
     "conv: 6 input channels are not divisible by groups=4"),
    ("conv", (8, 8, 8), dict(out_channels=6, kernel=3, groups=4),
     "conv: 6 output channels are not divisible by groups=4"),
    ("conv_transpose", (6, 4, 4), dict(out_channels=8, kernel=2, groups=4),
     "conv_transpose: 6 input channels are not divisible by groups=4"),
])
def test_channels_not_divisible_by_groups(name, shape, raw, message):
    with pytest.raises(ShapeError) as e:
        build(name, shape, **raw)
    assert str(e.value) == message


def test_conv_infer_checks_groups_without_params():
    """infer alone (a pass rewriting attributes) rejects what params would."""
    op = get_op("conv")
    attrs = dict(out_channels=4, kernel=(1, 1), stride=(1, 1), pads=(0, 0, 0, 0),
                 dilation=(1, 1), groups=3, bias=False)
    with pytest.raises(ShapeError, match=r"^conv: 4 input channels are not divisible by "
                                         r"groups=3$"):
        op.infer([TensorType((4, 5, 5))], attrs)


def test_groupnorm_groups():
    with pytest.raises(AttrError) as e:
        build("groupnorm", (6, 4, 4), groups=4)
    assert str(e.value) == "6 channels are not divisible by groups=4"
    assert e.value.attr == "groups"


# -- padding words and values ------------------------------------------------------------------

SIDES = "an integer, a pair (vertical, horizontal) or four sides (top, left, bottom, right)"


@pytest.mark.parametrize("name,raw,message", [
    ("conv", dict(out_channels=2, kernel=3, pad="sane"),
     f"pad must be {SIDES}, or one of same, valid, full; got 'sane'"),
    ("maxpool", dict(kernel=3, pad="fill"),
     f"pad must be {SIDES}, or one of same, valid, full; got 'fill'"),
    ("avgpool", dict(kernel=3, pad="SAME"),
     f"pad must be {SIDES}, or one of same, valid, full; got 'SAME'"),
    ("conv_transpose", dict(out_channels=2, kernel=3, pad="same"),
     f"pad must be {SIDES}, or valid; got 'same'"),
    ("pad", dict(pad="same"), f"pad must be {SIDES}; got 'same'"),
    ("conv", dict(out_channels=2, kernel=3, pad=(1, 2, 3)),
     "pad takes 1, 2 (vertical, horizontal) or 4 (top, left, bottom, right) integers, got 3"),
    ("conv", dict(out_channels=2, kernel=3, pad=-1), "pad must be at least 0, got -1"),
    ("maxpool", dict(kernel=3, pad=(0, 0, 0, -2)), "pad must be at least 0, got -2"),
])
def test_bad_padding(name, raw, message):
    with pytest.raises(AttrError) as e:
        build(name, (3, 9, 9), **raw)
    assert str(e.value) == message
    assert e.value.attr == "pad"


def test_pool_padding_may_be_half_a_dilated_window():
    """kernel 2 dilated by 3 spans 4 cells: padding 2 is allowed (PyTorch's rule)."""
    assert build("maxpool", (1, 6, 6), kernel=2, stride=1, dilation=3, pad=2).shape == (1, 7, 7)


def test_pool_padding_may_exceed_the_window():
    """ONNX allows any padding: windows of only padding are defined (compiler/ops/pool.py)."""
    assert build("maxpool", (1, 3, 3), kernel=2, stride=1, pad=3).shape == (1, 8, 8)
    assert build("avgpool", (1, 3, 3), kernel=3, stride=1, pad="full").shape == (1, 5, 5)


# -- transposed convolution --------------------------------------------------------------------

@pytest.mark.parametrize("raw,message", [
    (dict(stride=2, output_padding=2),
     "output_padding (height) must be smaller than the stride or the dilation, got 2 with "
     "stride 2, dilation 1"),
    (dict(stride=(2, 3), output_padding=(1, 3)),
     "output_padding (width) must be smaller than the stride or the dilation, got 3 with "
     "stride 3, dilation 1"),
    (dict(stride=1, output_padding=1),
     "output_padding (height) must be smaller than the stride or the dilation, got 1 with "
     "stride 1, dilation 1"),
])
def test_output_padding_at_least_stride(raw, message):
    with pytest.raises(AttrError) as e:
        build("conv_transpose", (2, 4, 4), out_channels=3, kernel=3, **raw)
    assert str(e.value) == message
    assert e.value.attr == "output_padding"


def test_output_padding_below_dilation_is_valid():
    # PyTorch and the ONNX spec: smaller than the stride OR the dilation.
    out = build("conv_transpose", (2, 4, 4), out_channels=3, kernel=3, dilation=3,
                output_padding=2)
    assert out.shape == (3, 4 - 1 + 3 * 2 + 2 + 1, 4 - 1 + 3 * 2 + 2 + 1)


def test_conv_transpose_padding_removes_everything():
    with pytest.raises(ShapeError) as e:
        build("conv_transpose", (2, 1, 1), out_channels=3, kernel=1, pad=1)
    assert str(e.value) == "conv_transpose: padding (1, 1, 1, 1) removes the whole output (-1x-1)"


# -- other shape rules -------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape,raw,err,message", [
    ("dense", (3, 4, 4), dict(out_features=2), ShapeError,
     "dense needs a feature vector, got 3x4x4; add `flatten` before it"),
    ("conv", (12,), dict(out_channels=2, kernel=3), ShapeError,
     "conv needs a channels x height x width input, got 12"),
    ("reshape", (3, 4, 4), dict(shape=(5, -1)), AttrError,
     "48 elements cannot fill shape (5, -1)"),
    ("reshape", (3, 4, 4), dict(shape=(-1, -1)), AttrError,
     "at most one dimension of shape may be -1, got (-1, -1)"),
    ("reshape", (3, 4, 4), dict(shape=(4, 0, 12)), AttrError,
     "dimensions of shape must be positive (or one -1), got (4, 0, 12)"),
    ("reshape", (3, 4, 4), dict(shape=(5, 10)), ShapeError,
     "reshape: 3x4x4 has 48 elements, shape 5x10 has 50"),
    ("softmax", (3, 4, 4), dict(axis=3), AttrError,
     "axis must be 'channels' or 0..2 (batch excluded), got 3"),
    ("log_softmax", (10,), dict(axis="chanels"), AttrError,
     "axis must be 'channels' or 0..0 (batch excluded), got 'chanels'"),
    ("upsample", (3, 4, 4), dict(scale=0.1), ShapeError,
     "upsample: scale (0.1, 0.1) leaves no pixels of 3x4x4"),
])
def test_other_rules(name, shape, raw, err, message):
    with pytest.raises(err) as e:
        build(name, shape, **raw)
    assert str(e.value) == message


@pytest.mark.parametrize("name,shapes,message", [
    ("add", [(3, 4, 5), (3, 5, 4)], "add: shapes 3x4x5 and 3x5x4 do not match or broadcast"),
    ("concat", [(3, 4, 5), (2, 4, 6)],
     "concat: shapes 3x4x5 and 2x4x6 differ outside the channel axis; all inputs need the "
     "same height and width"),
    ("sub", [(3,), (3,), (3,)], "sub takes two inputs, got 3"),
])
def test_multi_input_rules(name, shapes, message):
    op = get_op(name)
    types = [TensorType(s) for s in shapes]
    attrs = op.canonicalize({"axis": 0}, types) if op.canonicalize else {}
    with pytest.raises(ShapeError) as e:
        op.infer(types, attrs)
    assert str(e.value) == message


# -- what the DSL user sees: the op named once -------------------------------------------------

@pytest.mark.parametrize("layer,message", [
    ("groupnorm(3)", "groupnorm: 4 channels are not divisible by groups=3"),
    ("maxpool(7)", "maxpool: window 7 is larger than the padded input height 3 (3 + padding "
                   "0+0)"),
    ("reshape((7, -1))", "reshape: 36 elements cannot fill shape (7, -1)"),
    ("conv(4, 5)", "conv: window 5 is larger than the padded input height 3 (3 + padding 0+0)"),
])
def test_dsl_messages_name_the_op_once(layer, message):
    src = f"network t\ninput x: 4 x 3 x 3\nx -> {layer} -> output y\n"
    with pytest.raises(DslError) as e:
        load_network(src)
    assert e.value.message == message
