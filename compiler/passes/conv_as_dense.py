"""A 1x1 convolution of a 1x1 image is a dense layer (squeeze-excitation gates).

    conv(x: C x 1 x 1, w: K x C x 1 x 1, b)
        =>  reshape(dense(flatten(x), dense_weight_of_conv(w), b), (K, 1, 1))

``flatten`` and ``reshape`` are views (no kernel) and the weight's reshape is a derived
parameter, so the convolution's pack, compute and unpack kernels (or a layout region of one
pixel) become one matrix-vector kernel. SE-ResNet's and EfficientNet's squeeze and excitation
layers, after their global average pool, are such convolutions; epilogue fusion then applies
their activations in the dense kernel (through the reshape: ``fuse_epilogues``).

Preconditions: the convolution reads a C x 1 x 1 tensor with a 1x1 kernel, no padding and one
group (stride and dilation then change nothing: the output is K x 1 x 1), has no fused
epilogue yet, and is computed per call (not a parameter-time constant).
"""

from __future__ import annotations

from ..ir import Graph, Node
from ..ops import epilogue_of, is_constant
from .common import layer
from .manager import PassContext


def _applies(graph: Graph, conv: Node) -> bool:
    if conv.op != "conv" or is_constant(graph, conv) or epilogue_of(conv.attrs):
        return False
    a = conv.attrs
    x = graph.node(conv.inputs[0]).type.shape
    return (len(x) == 3 and x[1:] == (1, 1) and tuple(a["kernel"]) == (1, 1)
            and not any(a["pads"]) and a["groups"] == 1)


def conv_as_dense(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for conv in graph.topo_order():
        if conv.id not in graph or not _applies(graph, conv):
            continue
        ctx.at(conv)
        x, w, *bias = conv.inputs
        k = conv.attrs["out_channels"]
        flat = graph.add("flatten", [x], {}, name=f"{layer(conv)}.flatten", span=conv.span)
        weight = graph.add("dense_weight_of_conv", [w], {},
                           name=f"{graph.node(w).name}@dense", span=conv.span)
        attrs = {"out_features": k, "bias": bool(bias)}
        if conv.attrs.get("folded"):
            attrs["folded"] = conv.attrs["folded"]
        dense = graph.add("dense", [flat.id, weight.id, *bias], attrs, name=conv.name,
                          span=conv.span)
        back = graph.add("reshape", [dense.id], {"shape": (k, 1, 1)},
                         name=f"{layer(conv)}.reshape", span=conv.span)
        graph.replace_all_uses(conv.id, back.id)
        graph.erase(conv.id)
        ctx.note(f"{layer(conv)}: a 1x1 convolution of one pixel, lowered as a dense layer", conv)
        changed = True
    return changed
