"""The IR: a graph of tensor operations over networkx.

A `Node` holds its op name, ordered inputs (the source of truth: a DiGraph cannot hold two edges
between the same pair of nodes), attributes, inferred type, a human-readable layer name and the
DSL span it came from. Parameters (weights, biases, batch-norm statistics) are nodes of op
"param", so folding, autodiff and accounting treat them uniformly. Types exclude the batch
dimension, which is chosen at run time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .types import Span, TensorType, shown_path

__all__ = ["Graph", "IRError", "Node", "Span", "TensorType", "TypeRule", "model_folder",
           "node_location", "shown_path"]

#: How a graph infers a node's type: ``rule(op, input types, attrs)`` (the op registry's
#: ``compiler.ops.infer_node``, handed to the graph where graphs are made, so that this module
#: never imports the registry).
TypeRule = Callable[[str, list[TensorType], dict[str, Any]], TensorType]


def model_folder(graph: Graph) -> str | None:
    """The folder of the file that defines the network (where its inputs are declared: never
    in an imported file), or None for a network not read from a file. Messages and generated
    code name DSL files relative to it (``types.shown_path``)."""
    for nid in graph.inputs.values():
        span = graph.node(nid).span
        if span is not None and span.file and not span.file.startswith("<"):
            return os.path.dirname(span.file) or "."
    return None


def node_location(graph: Graph, node: Node, column: bool = False) -> str:
    """``file:line`` (with ``column``: ``file:line:col``) of a node's DSL, the file named
    relative to the model's folder (``model_folder``); "" for a node without a span."""
    if node.span is None:
        return ""
    where = f"{shown_path(node.span.file, model_folder(graph))}:{node.span.line}"
    return f"{where}:{node.span.column}" if column else where


@dataclass
class Node:
    id: int
    op: str
    inputs: list[int]
    attrs: dict[str, Any]
    type: TensorType
    name: str = ""
    span: Span | None = None

    def __repr__(self) -> str:
        return f"Node(%{self.id} {self.op} {self.name!r} {self.type})"


class IRError(Exception):
    """An inconsistency in the graph itself (a bug in a pass, not in the user's program)."""


@dataclass
class Graph:
    """A network: nodes in creation order, named inputs and outputs.

    Passes use these methods and never touch `nx` directly. ``type_rule`` infers the type of
    a node added without one and re-infers every type in :meth:`verify`.
    """

    name: str = "network"
    type_rule: TypeRule | None = field(default=None, repr=False)
    _g: nx.DiGraph = field(default_factory=nx.DiGraph, repr=False)
    _next_id: int = 0
    inputs: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------
    def add(
        self,
        op: str,
        inputs: Iterable[int] = (),
        attrs: dict[str, Any] | None = None,
        type: TensorType | None = None,
        name: str = "",
        span: Span | None = None,
    ) -> Node:
        """Add a node; its type is inferred from the op's shape rule unless given."""
        inputs = list(inputs)
        for i in inputs:
            if i not in self._g:
                raise IRError(f"input %{i} of new {op} node is not in the graph")
        attrs = dict(attrs or {})
        if type is None:
            type = self.infer(op, inputs, attrs)
        node = Node(self._next_id, op, inputs, attrs, type, name, span)
        self._next_id += 1
        self._g.add_node(node.id, node=node)
        for i in inputs:
            self._g.add_edge(i, node.id)
        return node

    def infer(self, op: str, inputs: list[int], attrs: dict[str, Any]) -> TensorType:
        if self.type_rule is None:
            raise IRError(f"cannot infer the type of a new {op} node: the graph has no type "
                          "rule (make graphs with Graph(name, type_rule=ops.infer_node))")
        return self.type_rule(op, [self.node(i).type for i in inputs], attrs)

    # -- queries ------------------------------------------------------------------------------
    def node(self, node_id: int) -> Node:
        try:
            return self._g.nodes[node_id]["node"]
        except KeyError:
            raise IRError(f"no node %{node_id}") from None

    def __contains__(self, node_id: int) -> bool:
        return node_id in self._g

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def nodes(self) -> Iterator[Node]:
        """All nodes in id order (which is a topological order for built graphs)."""
        for nid in sorted(self._g.nodes):
            yield self.node(nid)

    def topo_order(self, key: Callable[[Node], Any] | None = None) -> list[Node]:
        """Nodes in a deterministic topological order: among ready nodes, the smallest id
        first (or the smallest ``key(node)``)."""
        by = None if key is None else (lambda nid: key(self.node(nid)))
        return [self.node(n) for n in nx.lexicographical_topological_sort(self._g, key=by)]

    def users(self, node_id: int) -> list[Node]:
        return [self.node(u) for u in sorted(self._g.successors(node_id))]

    def params(self) -> list[Node]:
        return [n for n in self.nodes() if n.op == "param"]

    def param_by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.params()}

    def compute_nodes(self, key: Callable[[Node], Any] | None = None) -> list[Node]:
        """Nodes that compute something: not inputs, not parameters (in ``topo_order(key)``)."""
        return [n for n in self.topo_order(key) if n.op not in ("input", "param")]

    def copy(self) -> Graph:
        """An independent copy (nodes, attributes and tables; attribute values are shared,
        so passes must replace an attribute value rather than mutate it)."""
        g = Graph(self.name, self.type_rule)
        g._g = self._g.copy()
        for nid in g._g.nodes:
            n = self.node(nid)
            g._g.nodes[nid]["node"] = Node(n.id, n.op, list(n.inputs), dict(n.attrs), n.type,
                                           n.name, n.span)
        g._next_id = self._next_id
        g.inputs = dict(self.inputs)
        g.outputs = dict(self.outputs)
        return g

    def is_output(self, node_id: int) -> bool:
        return node_id in self.outputs.values()

    def reaches(self, source: int, target: int) -> bool:
        """Whether ``target`` depends on ``source`` (a path of edges from one to the other)."""
        return source != target and nx.has_path(self._g, source, target)

    # -- mutation -----------------------------------------------------------------------------
    def set_inputs(self, node_id: int, inputs: list[int]) -> None:
        node = self.node(node_id)
        for i in set(node.inputs):
            self._g.remove_edge(i, node_id)
        node.inputs = list(inputs)
        for i in inputs:
            self._g.add_edge(i, node_id)

    def replace_all_uses(self, old: int, new: int) -> None:
        for user in self.users(old):
            self.set_inputs(user.id, [new if i == old else i for i in user.inputs])
        for table in (self.outputs,):
            for k, v in table.items():
                if v == old:
                    table[k] = new

    def erase(self, node_id: int) -> None:
        if list(self._g.successors(node_id)):
            raise IRError(f"cannot erase %{node_id}: it still has users")
        if node_id in self.outputs.values():
            raise IRError(f"cannot erase %{node_id}: it is a graph output")
        self._g.remove_node(node_id)

    def remove_dead(self) -> bool:
        """Erase nodes no output depends on; returns whether anything changed."""
        live: set[int] = set()
        for o in self.outputs.values():
            live.add(o)
            live |= nx.ancestors(self._g, o)
        live |= set(self.inputs.values())
        dead = [n for n in self._g.nodes if n not in live]
        self._g.remove_nodes_from(dead)
        return bool(dead)

    # -- checks and printing ------------------------------------------------------------------
    def verify(self) -> None:
        """Re-infer every type and check edges against the ordered inputs."""
        if not nx.is_directed_acyclic_graph(self._g):
            raise IRError("graph has a cycle")
        for node in self.nodes():
            preds = set(self._g.predecessors(node.id))
            if preds != set(node.inputs):
                raise IRError(f"{node!r}: edges {sorted(preds)} disagree with inputs {node.inputs}")
            if node.op in ("input", "param"):
                continue
            inferred = self.infer(node.op, node.inputs, node.attrs)
            if inferred.shape != node.type.shape or inferred.dtype != node.type.dtype:
                raise IRError(f"{node!r}: stored type {node.type}, re-inferred {inferred}")
        for name, o in {**self.inputs, **self.outputs}.items():
            if o not in self._g:
                raise IRError(f"{name!r} refers to missing node %{o}")

    def dump(self, notes: Mapping[int, str] | None = None) -> str:
        """A readable listing: one line per node (with ``notes[node id]`` in braces, where
        given: the memory plan's, ``Plan.dump``)."""
        lines = [f"graph {self.name}"]
        for node in self.topo_order():
            args = ", ".join(f"%{i}" for i in node.inputs)
            attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in node.attrs.items() if k != "value")
            where = f"  # {node.span}" if node.span else ""
            if notes and node.id in notes:
                where = f"  {{{notes[node.id]}}}{where}"
            tag = ""
            for kind, table in (("input", self.inputs), ("output", self.outputs)):
                for k, v in table.items():
                    if v == node.id:
                        tag += f" [{kind} {k}]"
            lines.append(
                f"  %{node.id} = {node.op}({args}{', ' if args and attrs else ''}{attrs})"
                f" : {node.type}  {node.name}{tag}{where}"
            )
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    return repr(v) if isinstance(v, str) else str(v)
