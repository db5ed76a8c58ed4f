"""Layout selection: which activations stay channel-blocked between kernels, and how: in blocks
of 8 channels (NCHW8c) or 16 (NCHW16c), or NHWC (8-channel blocks, the blocks of a pixel
adjacent).

    conv -> [NCHW -> NCHW8c] conv [NCHW8c -> NCHW] -> conv ...
        =>  conv -> conv -> ... in NCHW8c, transforms only where the region ends

A node's output is stored blocked (``layout=NCHW8c``) when its op can produce it from the
layout its input arrives in, every user can read it (as its first input, in the layout pairs
of its op's ``layout_rule``, or as a residual operand of a fused epilogue whose node is blocked
too), and it is not a graph output. Solved as a fixpoint: start from every node that could
produce NCHW8c and drop those that violate a condition until none does; what remains are
regions whose only transforms are at their borders (the pack of a region's first input, the
unpack or the global pool at its end), so no inverse pair of transforms is left inside.

The producer also writes the padding its consuming convolutions need: ``halo`` (top, left,
bottom, right) is the largest padding per side among them, and the stored tensor is zero
there.

A channel gather (``fold_channel_moves``: shuffles, ragged concatenations and slices) is
blocked when all its inputs are: it copies any channel to any lane.

Block width, per region (the blocked values connected through the inputs they read: one storage
width, as a residual operand or a concatenation's parts must share it): 16 channels a block when
every kernel of the region has a 16-lane form (each op's ``layout_rule`` lists ``NCHW16c``
pairs: convolutions, depthwise and grouped too, element-wise ops, LRN, pools, channel gathers,
flatten into dense, slices, concatenations and depth/space moves of whole 16-channel blocks, a
merged 1x1's ``prefix`` of whole blocks; pooling prologues, fused after this pass, read every
blocked layout) and ``region_cost`` prefers it, which it does only on a 16-lane target and where
the padding to whole 16-channel blocks costs less than the wider vectors save (depthwise,
pooling and element-wise kernels: one 16-lane vector a pixel instead of two 8-lane ones).
``layout=NCHW8c`` or ``NCHW16c`` overrides the cost model (16 still only where every kernel has
it). ``layout=NHWC`` stores each region whose kernels all have an NHWC form (every op with an
NCHW8c kernel has one: the kernels are NCHW8c's with the pixel stride ``blocks * 8`` and the
block stride 8, ``kernels.tiles.StorageIndex``) in NHWC, the others in NCHW8c; the cost model
never picks it: it counts the same vector operations and floats moved as NCHW8c, and measured
NHWC is never faster (as fast for MobileNetV2, 1-5% slower for ResNet-18, GoogLeNet,
DenseNet-121 and EfficientNet-B0: a channel range of a wider buffer, as DenseNet's growing
concatenations, is read with the whole buffer's pixel stride, and swish after a depthwise
convolution runs 8 lanes at a time, not two pixels in one 16-lane vector). The kernels compute
lane for lane what they compute in NCHW8c, so the numbers do not change (a dense layer over a
flattened tensor sums its features in storage order: another order).

Concatenation without copies: a channel concatenation is kept blocked when each of its inputs
is blocked, used by it alone, and fills whole 8-channel blocks; its producers then write
straight into their channel range of its buffer and the concatenation itself is no kernel
(inception modules: ``in_place=True``). When an input has other users (DenseNet's features,
read by the next layer and the next concatenation) but every input fills whole blocks, the
concatenation stays blocked and copies block by block (``in_place=False``): no layout
transform around it. Only at -O2.

A concatenation whose first input is the last channel range of a merged 1x1 convolution
(``fold_bottlenecks``: an inception module's 1x1 branch merged with the reductions) extends its
buffer in front: ``prefix`` blocks hold the convolution's other ranges, so the merged kernel
writes the reductions and the concatenation's first range in one pass,

    buffer = [ m's first ranges | concat(channel_slice(m, start, K), y, ...) ]

and everything in the buffer shares its halo (the largest any reader needs). The merged
kernel zeroes that halo on every call (``zero_halo``: every reader of the halo depends on it),
so the buffer, written whole each call, may reuse any dead slot. When ``K`` is not
a multiple of 16, the merged kernel's padding block falls on the next input's first block,
which is written later (its producer depends on ``m``).
"""

from __future__ import annotations

from ..decisions import epilogue_of
from ..ir import Graph, Node
from ..ops import (
    get_op,
    has_vector_epilogue,
    is_constant,
    operand_kind,
    unpacks_output,
    writes_whole_blocks,
)
from ..types import BLOCK_LANES, BLOCKED, BLOCKED16, NHWC, PLAIN
from .common import layer
from .manager import PassContext

DEFAULT_PAIRS = ((PLAIN, PLAIN),)
#: Ops that read every input in their output's layout (not only the first).
GATHERING = ("concat", "channel_gather")


def layout_pairs(graph: Graph, node: Node) -> tuple[tuple[str, str], ...]:
    """(input layout, output layout) pairs the node's kernels support."""
    rule = get_op(node.op).layout_rule
    if rule is None or node.op in ("input", "param"):
        return DEFAULT_PAIRS
    return tuple(rule(node, [graph.node(i).type for i in node.inputs]))


def select_layout(graph: Graph, ctx: PassContext) -> bool:
    if ctx.opt_level < 2:
        return False
    if ctx.layout == PLAIN:
        return _store_epilogues(graph, set(), ctx)
    blocked = {n.id for n in graph.compute_nodes()
               if not is_constant(graph, n) and not graph.is_output(n.id)
               and any(out == BLOCKED for _, out in layout_pairs(graph, n))}
    in_place = {n.id for n in graph.compute_nodes()
                if n.op == "concat" and _concat_in_place(graph, n)}
    blocked |= in_place | {n.id for n in graph.compute_nodes()
                           if n.op == "concat" and _concat_blocked_copy(graph, n)}

    def in_layout(node: Node) -> str:
        return BLOCKED if node.inputs and node.inputs[0] in blocked else PLAIN

    def out_layout(node: Node) -> str:
        return BLOCKED if node.id in blocked else PLAIN

    def fits(node: Node) -> bool:
        if node.op == "flatten" and not _starts_its_buffer(graph, graph.node(node.inputs[0])):
            return False  # a dense layer reads every float of the storage from its start
        if node.op in GATHERING:
            if not all(i in blocked for i in node.inputs):
                return False
        elif (in_layout(node), BLOCKED) not in layout_pairs(graph, node):
            return False
        if node.op not in GATHERING:
            for pos, o in enumerate(node.inputs):
                if pos == 0 or is_constant(graph, graph.node(o)):
                    continue  # the first input, weights
                kind = operand_kind(graph.node(o).type.shape, node.type.shape)
                if kind == "full" and o in blocked:
                    continue  # a residual in the same storage layout
                if kind == "channel" and o not in blocked and node.type.shape[0] % 8 == 0:
                    continue  # a plain per-channel gate, 8 channels a vector
                return False
        for user in graph.users(node.id):
            for pos, i in enumerate(user.inputs):
                if i != node.id:
                    continue
                if pos == 0 and (BLOCKED, out_layout(user)) in layout_pairs(graph, user):
                    continue
                if pos > 0 and user.id in blocked and user.op not in GATHERING and operand_kind(
                        node.type.shape, user.type.shape) == "full":
                    continue  # a residual of a blocked node (checked by `fits(user)`)
                if user.op in GATHERING and user.id in blocked:
                    continue  # read (or written into its range) blocked (`fits(user)`)
                return False
        return True

    changed = True
    while changed:
        changed = False
        for nid in sorted(blocked):
            if not fits(graph.node(nid)):
                blocked.discard(nid)
                changed = True
    storage: dict[int, str] = {}
    for region in _regions(graph, blocked):
        layout = _region_layout(graph, region, blocked, ctx)
        storage.update(dict.fromkeys(region, layout))
    for nid in sorted(blocked):
        node = graph.node(nid)
        ctx.at(node)
        node.attrs["layout"] = storage[nid]
        node.attrs["halo"] = _halo(graph, node)
        ctx.note(f"{layer(node)}: output kept in {node.attrs['layout']}, halo "
                 f"{node.attrs['halo']}", node)
    in_place &= blocked
    shared = set()
    for group in _buffer_groups(graph, in_place):  # one buffer: one halo, the largest
        halo = tuple(max(graph.node(i).attrs["halo"][k] for i in group) for k in range(4))
        for i in group:
            graph.node(i).attrs["halo"] = halo
        shared |= group
    for nid in sorted(blocked - shared):
        node = graph.node(nid)
        if _zeroes_its_halo(graph, node):
            node.attrs["zero_halo"] = True  # its value may take any free slot
    for nid in sorted(blocked):
        node = graph.node(nid)
        if node.op == "channel_slice":  # a view: its base's halo
            node.attrs["halo"] = graph.node(node.inputs[0]).attrs["halo"]
        if node.op == "concat":
            node.attrs["in_place"] = nid in in_place
            if nid not in in_place:
                ctx.note(f"{layer(node)}: {len(node.inputs)} blocked inputs copied block by "
                         "block", node)
                continue
            base = _prefix_source(graph, node)
            after = ""
            if base is not None:
                lanes = BLOCK_LANES[node.attrs["layout"]]
                node.attrs["prefix"] = graph.node(node.inputs[0]).attrs["start"] // lanes
                base.attrs["zero_halo"] = True  # the buffer may then take any free slot
                after = f", after the first {node.attrs['prefix']} blocks of {layer(base)}"
            ctx.note(f"{layer(node)}: {len(node.inputs)} producers write into their channel "
                     f"ranges (no copy){after}", node)
    stored = _store_epilogues(graph, blocked, ctx)
    return bool(blocked) or stored


def _store_epilogues(graph: Graph, blocked: set[int], ctx: PassContext) -> bool:
    """Of each value left plain whose compute kernel writes channel-blocked scratch that a
    second kernel unpacks (``ops.unpacks_output``: a convolution's blocked algorithms), the
    leading epilogue ops that need no operand and have a vector form are applied at the
    compute kernel's store, in vectors (``store_epilogue``: how many, a leading ReLU
    counted), not one value at a time in the unpacking, which applies the rest. LeNet-5's
    ``c1 -> tanh`` feeds a plain pooling: its unpacking's scalar tanh was half of a call
    (bench/RESULTS.md). The padding channels get the ops too; the unpacking drops them."""
    changed = False
    for node in graph.compute_nodes():
        if node.id in blocked or not unpacks_output(graph, node):
            continue
        ops = epilogue_of(node.attrs)
        count = 0
        while count < len(ops) and ops[count].operand is None and \
                has_vector_epilogue(ops[count].op, ops[count].attr_dict):
            count += 1
        if count <= int(bool(ops) and ops[0].op == "relu"):
            continue  # nothing beyond the ReLU every compute kernel applies anyway
        ctx.at(node)
        node.attrs["store_epilogue"] = count
        what = ", ".join(str(o) for o in ops[:count])
        ctx.note(f"{layer(node)}: output unpacked to NCHW after its kernel; epilogue {what} "
                 "applied at the kernel's store, in vectors", node)
        changed = True
    return changed


def _regions(graph: Graph, blocked: set[int]) -> list[set[int]]:
    """The connected regions of blocked values: a value and every blocked value it reads (its
    input, a residual operand, the parts of a concatenation) share one storage block width."""
    parent = {nid: nid for nid in blocked}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for nid in sorted(blocked):
        for i in graph.node(nid).inputs:
            if i in blocked:
                parent[find(i)] = find(nid)
    regions: dict[int, set[int]] = {}
    for nid in sorted(blocked):
        regions.setdefault(find(nid), set()).add(nid)
    return [regions[r] for r in sorted(regions)]


def _region_fits(graph: Graph, region: set[int], blocked: set[int], layout: str) -> bool:
    """Whether every kernel of a region has a form for ``layout`` (NCHW16c or NHWC; the
    region was found for NCHW8c): each value's op produces it from its input's layout
    (``layout_rule``), each reader outside the region (an unpack, a global pool) reads it,
    and, in 16-channel blocks, a concatenation's parts (and a merged convolution's prefix)
    fill whole 16-channel blocks and each plain per-channel gate whole 16-lane vectors."""
    whole = BLOCK_LANES[layout]
    for nid in region:
        node = graph.node(nid)
        if node.op == "concat" and (
                any(graph.node(i).type.shape[0] % whole for i in node.inputs)
                or (_prefix_source(graph, node) is not None
                    and graph.node(node.inputs[0]).attrs["start"] % whole)):
            return False  # its parts (and a merged convolution's prefix) fill whole blocks
        if node.op == "concat":
            continue  # copied block by block, or written in place by its producers
        source = layout if node.inputs and node.inputs[0] in blocked else PLAIN
        if (source, layout) not in layout_pairs(graph, node):
            return False
        for o in node.inputs[1:]:
            other = graph.node(o)
            if o not in blocked and not is_constant(graph, other) and \
                    other.type.shape[0] % whole:
                return False  # a plain gate of channels past the last whole vector
        for user in graph.users(nid):
            if user.id not in region and user.inputs[0] == nid and (
                    layout, PLAIN) not in layout_pairs(graph, user):
                return False
    return True


#: Float moves (loads and stores) per vector instruction in the region cost model: one vector
#: operation per 8 floats moved, so padding channels costs memory traffic as well as lanes.
FLOATS_PER_VECTOR_OP = 8


def region_cost(graph: Graph, region: set[int], lanes: int, vector: int) -> float:
    """Relative time of a region's kernels with ``lanes`` channels a block on a target of
    ``vector``-lane registers:

        sum over values  P*Q * (taps * padded(C) / min(lanes, vector)
                                + 2 * padded(C) / FLOATS_PER_VECTOR_OP)

    with ``padded(C)`` the channels rounded up to the block and ``taps`` the window of a
    depthwise convolution or a pooling (1 for element-wise ops): vector operations plus the
    floats written and read. A direct (not channel-wise) convolution costs the same in either
    width
    (its tiles are 16 or 32 channels and its padded output channels a multiple of 16), so it
    does not count. Wider blocks pay where the vector is wider and the padding small
    (MobileNetV2's 144-channel depthwise layers: 9 vectors a pixel instead of 18)."""
    total = 0.0
    for nid in region:
        node = graph.node(nid)
        if node.op in ("flatten", "channel_slice") or get_op(node.op).view:
            continue
        c, p, q = node.type.shape
        if node.op == "conv" and node.attrs.get("lowering") != "channelwise":
            continue
        taps = 1
        if node.op == "conv" or "kernel" in node.attrs:
            r, s = node.attrs["kernel"]
            taps = r * s
        padded = -(-c // lanes) * lanes
        total += p * q * (taps * padded / min(lanes, vector) +
                          2 * padded / FLOATS_PER_VECTOR_OP)
    return total


def _region_layout(graph: Graph, region: set[int], blocked: set[int], ctx: PassContext) -> str:
    """The storage of one region: NCHW8c unless asked for NCHW16c or NHWC (``layout=``) and
    every kernel in it has that form, or, by default, NCHW16c where every kernel has a 16-lane
    form and ``region_cost`` says so on a 16-lane target. NHWC is never the default (see the
    module docstring: never measured faster)."""
    if ctx.layout in (BLOCKED16, NHWC):
        return ctx.layout if _region_fits(graph, region, blocked, ctx.layout) else BLOCKED
    if ctx.layout == BLOCKED or not _region_fits(graph, region, blocked, BLOCKED16):
        return BLOCKED
    wide, narrow = (region_cost(graph, region, n, ctx.target.lanes) for n in (16, 8))
    first = graph.node(min(region))
    choice = BLOCKED16 if wide < narrow else BLOCKED  # never on 8 lanes: padding only adds
    ctx.note(f"region of {len(region)} blocked values from {layer(first)}: {choice} (cost "
             f"{wide:.3g} in 16-channel blocks, {narrow:.3g} in 8)", first)
    return choice


def _zeroes_its_halo(graph: Graph, node: Node) -> bool:
    """Whether a node with a halo zeroes it on every call (``zero_halo``): one whose kernel
    can (``writes_whole_blocks``: a direct or channel-wise convolution, a channel gather) then
    writes every float of its storage (interior, padding lanes and halo), so memory planning
    may give the value any free slot, not only one that held the same storage (ResNeXt-50:
    20.1 -> 8.9 MB of arena per image). The halo is a border of each row: a few stores per
    row."""
    return any(node.attrs["halo"]) and writes_whole_blocks(graph, node)


def _concat_in_place(graph: Graph, node: Node) -> bool:
    """A channel concatenation whose producers can write into its buffer: each input is
    computed by a kernel (or is another concatenation: DenseNet's chains, each a prefix of the
    next; a channel slice only as the first input after a ``prefix``, see `_prefix_source`),
    feeds no other concatenation, and fills whole blocks (a direct convolution writes its
    channels in blocks of 16). An input may have other users: they read it where it lies
    in the buffer, which lives as long as any of its parts."""
    if node.attrs.get("axis") != 0 or len(node.type.shape) != 3 or graph.is_output(node.id):
        return False
    prefix = _prefix_source(graph, node) is not None
    for pos, i in enumerate(node.inputs):
        if pos == 0 and prefix:
            continue  # written by the merged convolution before it (checked there)
        src = graph.node(i)
        c = src.type.shape[0]
        whole = 16 if src.op == "conv" and src.attrs.get("groups") == 1 else 8
        concats = sum(u.op == "concat" for u in graph.users(i))
        if (c % whole or graph.is_output(i) or concats != 1 or node.inputs.count(i) != 1
                or src.op in ("input", "param", "channel_slice") or get_op(src.op).view):
            return False
    return True


def _buffer_groups(graph: Graph, in_place: set[int]) -> list[set[int]]:
    """The values sharing one buffer: each outermost in-place concatenation with every value
    written into it, through nested in-place concatenations."""
    groups = []
    for nid in in_place:
        if any(u.id in in_place for u in graph.users(nid) if u.op == "concat"):
            continue  # a part of an outer one
        group, todo = {nid}, [nid]
        while todo:
            concat = graph.node(todo.pop())
            base = _prefix_source(graph, concat)
            if base is not None:
                group.add(base.id)
            for i in concat.inputs:
                group.add(i)
                if i in in_place:
                    todo.append(i)
        groups.append(group)
    return groups


def _starts_its_buffer(graph: Graph, node: Node) -> bool:
    """Whether ``node``'s blocked storage would begin its buffer: not a channel range of
    another value (a slice, a part of a concatenation, a concatenation after a prefix)."""
    if node.op == "channel_slice" or any(u.op == "concat" for u in graph.users(node.id)):
        return False
    return not (node.op == "concat" and _prefix_source(graph, node) is not None)


def _prefix_source(graph: Graph, concat: Node) -> Node | None:
    """The convolution ``m`` whose last channels are ``concat``'s first input (a channel slice
    of it from a whole block to its end), when the concatenation's buffer can begin with
    ``m``'s other channels: ``m`` is a kernel's output used only through channel slices, no
    other of which feeds a concatenation; the concatenation is in no other one; and ``m``'s
    padding block (``K % 16 == 8``: a direct convolution writes blocks of 16 channels) falls
    on a range written after ``m``."""
    first = graph.node(concat.inputs[0])
    if first.op != "channel_slice" or concat.inputs.count(first.id) != 1:
        return None
    base = graph.node(first.inputs[0])
    k = base.type.shape[0]
    if (base.op != "conv" or base.attrs["groups"] != 1 or graph.is_output(base.id)
            or first.attrs["stop"] != k or first.attrs["start"] % 8
            or any(u.op == "concat" for u in graph.users(concat.id))):
        return None
    for u in graph.users(base.id):
        if u.op != "channel_slice":
            return None
        concats = sum(c.op == "concat" for c in graph.users(u.id))
        if concats != (1 if u.id == first.id else 0):
            return None
    if k % 16 and not (len(concat.inputs) > 1 and graph.reaches(base.id, concat.inputs[1])):
        return None
    return base


def _concat_blocked_copy(graph: Graph, node: Node) -> bool:
    """A channel concatenation of blocked inputs that cannot be done in place (an input has
    other users: DenseNet's growing features) can still copy whole 8-channel blocks, when
    every input starts at a block boundary of the output."""
    if node.attrs.get("axis") != 0 or len(node.type.shape) != 3 or graph.is_output(node.id):
        return False
    return all(graph.node(i).type.shape[0] % 8 == 0 for i in node.inputs)


def _halo(graph: Graph, node: Node) -> tuple[int, int, int, int]:
    """The largest padding per side among the convolutions that read ``node`` (through the
    channel slices that are views of it)."""
    halo = [0, 0, 0, 0]
    for user in graph.users(node.id):
        if user.op == "conv" and user.inputs[0] == node.id:
            halo = [max(h, p) for h, p in zip(halo, user.attrs["pads"])]
        elif user.op == "channel_slice":
            halo = [max(h, p) for h, p in zip(halo, _halo(graph, user))]
    return tuple(halo)
