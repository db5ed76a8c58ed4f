"""Batch norm over the global batch of data-parallel replicas (PyTorch's SyncBatchNorm): the
statistics of each replica's shard combined into the whole batch's, before ``autodiff``.

    m = batch_mean(x), v = batch_var(x, m)                   (this replica's shard, M values)
        =>  mu = allreduce_mean(m)
            var = allreduce_mean(v + (m - mu)^2)

``batchnorm_train`` and the running statistics' updates then read ``mu`` and ``var`` instead of
``m`` and ``v``; the running variance's unbiased correction counts the values of every shard
(``running_update``'s ``replicas``). The variance is the mean over the shards of their second
moments about the global mean: v_r + (m_r - mu)^2 = mean over shard r of (x - mu)^2, exact
algebra, and each term a sum of squares (no cancellation). Preconditions: the replicas hold
equal shards (a mean of means is the global mean only then), ``ctx.sync_bn_replicas`` of them.

Autodiff, which runs after, composes the synchronized backward through ``allreduce_mean``'s
gradient (``compiler/ops/collective.py``) and the element-wise ops' own. Run by one process
alone, the collectives are identities and the graph computes what the unsynchronized one does.
"""

from __future__ import annotations

from ..ir import Graph, Node
from .common import layer
from .manager import PassContext


def sync_batch_norm(graph: Graph, ctx: PassContext) -> bool:
    replicas = ctx.sync_bn_replicas
    if replicas <= 1:
        return False
    changed = False
    for train in graph.topo_order():
        if train.op != "batchnorm_train":
            continue
        *_, mean, var = train.inputs
        if graph.node(mean).op != "batch_mean" or graph.node(var).op != "batch_var":
            continue  # synchronized already
        ctx.at(train)
        _synchronize(graph, train, mean, var, replicas)
        ctx.note(f"batch norm {layer(train)}: statistics averaged over {replicas} replicas",
                 train)
        changed = True
    return changed


def _synchronize(graph: Graph, train: Node, mean: int, var: int, replicas: int) -> None:
    """The rewrite of the module docstring for one batch norm."""
    def add(op: str, inputs: list[int], what: str) -> int:
        return graph.add(op, inputs, {}, name=f"{layer(train)}.{what}", span=train.span).id

    # the shard's variance keeps its own mean as the shift of its sums
    readers_of_mean = [r for r in graph.users(mean) if r.id != var]
    readers_of_var = graph.users(var)
    mu = add("allreduce_mean", [mean], "sync_mean")
    deviation = add("sub", [mean, mu], "shard_deviation")
    moment = add("add", [var, add("mul", [deviation, deviation], "shard_deviation_sq")],
                 "shard_moment")
    global_var = add("allreduce_mean", [moment], "sync_var")
    for reader, old, new in [(r, mean, mu) for r in readers_of_mean] + \
            [(r, var, global_var) for r in readers_of_var]:
        graph.set_inputs(reader.id, [new if i == old else i for i in reader.inputs])
        if reader.op == "running_update":
            reader.attrs["replicas"] = replicas
