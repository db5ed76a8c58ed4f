"""channels(x), height(x), width(x): dimensions of a tensor as numbers in the DSL."""

import pytest

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError

DEPTHWISE = """
input x: 6 x 10 x 12
block dw() {
    return in -> conv(channels(in), 3, pad=1, groups=channels(in)) -> conv(channels(in) * 2, 1)
}
x -> dw -> pad((0, 0, height(x) + width(x), 0)) -> output y
"""


def test_depthwise_block_reads_its_input_channels():
    g = load_network(DEPTHWISE)
    convs = [n for n in g.nodes() if n.op == "conv"]
    assert convs[0].attrs["groups"] == 6 and convs[0].attrs["out_channels"] == 6
    assert convs[1].attrs["out_channels"] == 12
    assert g.node(g.outputs["y"]).type.shape == (12, 10 + 22, 12)


@pytest.mark.parametrize("src, message", [
    ("input x: 6 x 8 x 8\nx -> channels -> output y\n",
     "channels(x) gives a number, not a layer"),
    ("input x: 6 x 8 x 8\nc = channels(x, x)\nx -> conv(c, 1) -> output y\n",
     "channels takes one tensor"),
    ("input v: 10\nh = height(v)\nv -> dense(h) -> output y\n",
     "height: the tensor is 10, not channels x height x width"),
])
def test_shape_builtin_errors(src, message):
    with pytest.raises(DslError) as e:
        load_network(src)
    assert e.value.message == message
