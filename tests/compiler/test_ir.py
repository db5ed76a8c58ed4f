"""The IR graph: construction, use-def helpers, verification and printing."""

import pytest

from cnnc.compiler.ir import Graph, IRError, TensorType
from cnnc.compiler.ops import infer_node
from cnnc.dsl.builder import load_network

SMALL = """
network small
input x: 3 x 8 x 8
y = x -> conv(4, 3, pad=1) -> relu
z = y -> conv(4, 1)
(y + z) -> relu -> output out
"""


def test_built_graph_verifies_and_is_topologically_ordered():
    g = load_network(SMALL)
    g.verify()
    order = [n.id for n in g.topo_order()]
    assert order == sorted(order)  # ids are creation order, a topological order
    for n in g.nodes():
        assert all(i < n.id for i in n.inputs)


def test_users_and_replace_all_uses():
    g = load_network(SMALL)
    relu1 = next(n for n in g.nodes() if n.name == "relu1")
    users = g.users(relu1.id)
    assert sorted(u.op for u in users) == ["add", "conv"]
    # Route the users of relu1 to its input instead: the graph stays valid (same shapes).
    conv1 = g.node(relu1.inputs[0])
    g.replace_all_uses(relu1.id, conv1.id)
    assert g.users(relu1.id) == []
    g.erase(relu1.id)
    g.verify()
    assert relu1.id not in g


def test_erase_refuses_a_used_node_and_remove_dead_cleans_up():
    g = load_network(SMALL)
    conv1 = next(n for n in g.nodes() if n.name == "conv1")
    with pytest.raises(IRError, match="still has users"):
        g.erase(conv1.id)
    dangling = g.add("relu", [conv1.id], name="dangling")
    assert g.remove_dead()
    assert dangling.id not in g
    assert not g.remove_dead()
    g.verify()


def test_verify_catches_a_stale_type():
    g = load_network(SMALL)
    conv1 = next(n for n in g.nodes() if n.name == "conv1")
    conv1.type = TensorType((5, 8, 8))
    with pytest.raises(IRError, match="re-inferred 4x8x8"):
        g.verify()


def test_verify_catches_edges_out_of_sync_with_inputs():
    g = load_network(SMALL)
    relu = next(n for n in g.nodes() if n.name == "relu1")
    relu.inputs = [g.inputs["x"]]  # bypassing set_inputs leaves the edges stale
    with pytest.raises(IRError, match="disagree with inputs"):
        g.verify()


def test_dump_names_every_node_with_its_source_line():
    g = load_network(SMALL)
    text = g.dump()
    assert text.splitlines()[0] == "graph small"
    assert "conv(%0, %1, %2, out_channels=4" in text
    assert "[output out]" in text
    assert "<string>:4:" in text  # the DSL line of conv1
    assert len(text.splitlines()) == len(g) + 1


def test_two_identical_inputs_keep_their_order():
    g = Graph(type_rule=infer_node)
    x = g.add("input", attrs={"shape": (2,)}, type=TensorType((2,)), name="x")
    s = g.add("add", [x.id, x.id])
    assert s.inputs == [x.id, x.id]
    g.outputs["s"] = s.id
    g.verify()
