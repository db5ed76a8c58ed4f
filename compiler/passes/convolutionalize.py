"""Convolutionalization: a classifier run on a larger image in one pass returns a grid of class
scores, one per window of the size it was trained on (seed 000's "convolution implementation
of sliding windows"; seed 004: a fully connected layer is a convolution whose kernel covers its
whole input, and a 1x1 convolution a dense layer applied at every pixel).

    dense(flatten(x: C x h x w), W: K x Chw, b)  =>  conv(x, conv_weight_of_dense(W), b)
                                                      kernel h x w, weight K x C x h x w
    dense(y: K x P x Q, W2: K2 x K, b2)          =>  conv(y, conv_weight_of_dense(W2), b2)
                                                      kernel 1 x 1, weight K2 x K x 1 x 1

with the network's one input declared H x W instead (``input_size``): every layer before the
flatten computes its feature map on the whole image (C x H' x W'), the first dense layer, now an
h x w convolution, evaluates the classifier's head at every h x w window of it, and the dense
layers after it, 1x1 convolutions, at every pixel of the grid. The output is K x P x Q with
P = H' - h + 1, Q = W' - w + 1: the scores of the window whose top-left corner is at
(p s, q s) in the image, s the output stride (the product of the strides before the flatten,
``receptive_field``'s jump). Those windows overlap and share their convolutions' work, which
the window-by-window loop repeats P Q times (``window_saving``, shown by ``cnnc summary``).

Each grid cell equals the classifier on its crop exactly where no layer before the flatten
pads and every stride divides the sizes it sees (AlexNet's and VGG's heads with valid
convolutions); with padding, a window's border reads its neighbours' pixels where the crop
read zeros (the cells differ near their edges, as in OverFeat).

The inverse of ``conv_as_dense`` (a 1x1 convolution of one pixel as a dense layer): that pass
keeps the network and only chooses a faster kernel, so it runs in every -O1 pipeline; this one
changes the input the network computes on, so it runs only when asked (``compile(...,
fully_convolutional=True, input_size=(H, W))``), before the pipeline (which may then turn a
1x1 grid's convolutions back into dense layers). The weights the user owns stay the dense
layers' ``K x Chw``: the convolutions read them through ``conv_weight_of_dense``, a
derived-parameter reshape the IR dump shows.

Preconditions: one input, C x h x w, with H >= h and W >= w. Rewritten: each flatten of a map
that depends on the input size, every reader of it a dense layer; the dense layers reading
their grids; element-wise ops between them (activations, dropout, batch norm) act per pixel
and are re-inferred. A dense layer after global pooling needs nothing: its C x 1 x 1 input has
that size at any input size (its scores pool the whole image). Refused by name: a reshape of a
C x h x w map (it may mix channels and pixels), a flatten read by anything but dense layers,
and any layer whose shape rule does not take the larger map or the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node, node_location
from ..ops import ShapeError, count_macs
from ..receptive_field import receptive_fields
from ..types import TensorType
from .common import layer
from .manager import OptionError, PassContext, run_passes

#: Layers whose C x 1 x 1 output has that size at any input size.
GLOBAL_POOLING = ("globalavgpool", "globalmaxpool")


class ConvolutionalizeError(OptionError):
    """A network the pass cannot run fully convolutionally, the layer named."""


def _refuse(graph: Graph, node: Node, why: str) -> ConvolutionalizeError:
    where = node_location(graph, node)
    at = f" ({where})" if where else ""
    return ConvolutionalizeError(f"--fully-convolutional: {node.op} {layer(node)!r}{at} {why}")


def _image(graph: Graph, size: tuple[int, int]) -> Node:
    if len(graph.inputs) != 1:
        raise ConvolutionalizeError(f"--fully-convolutional takes a network of one image "
                                    f"input; {graph.name!r} has {len(graph.inputs)}")
    image = graph.node(next(iter(graph.inputs.values())))
    if image.type.rank != 3:
        raise _refuse(graph, image, f"is {image.type}, not a C x H x W image")
    _, h, w = image.type.shape
    if size[0] < h or size[1] < w:
        raise _refuse(graph, image, f"was declared {h}x{w}: the input size "
                      f"{size[0]}x{size[1]} must be at least that")
    return image


def _as_conv(graph: Graph, dense: Node, x: int, features: tuple[int, int, int]) -> Node:
    """A convolution over ``x`` computing ``dense`` at every window of ``features``."""
    w, *bias = dense.inputs[1:]
    k = dense.attrs["out_features"]
    weight = graph.add("conv_weight_of_dense", [w], {"features": features},
                       name=f"{graph.node(w).name}@conv", span=dense.span)
    attrs = {"out_channels": k, "kernel": features[1:], "stride": (1, 1), "dilation": (1, 1),
             "groups": 1, "bias": bool(bias), "pads": (0, 0, 0, 0)}
    conv = graph.add("conv", [x, weight.id, *bias], attrs, name=dense.name, span=dense.span)
    graph.replace_all_uses(dense.id, conv.id)
    graph.erase(dense.id)
    return conv


def convolutionalize(graph: Graph, ctx: PassContext) -> bool:
    if ctx.input_size is None:
        return False
    image = _image(graph, ctx.input_size)
    for node in graph.nodes():
        src = graph.node(node.inputs[0]) if node.inputs else None
        if node.op == "reshape" and src is not None and src.type.rank == 3 and \
                graph.reaches(image.id, node.id):
            raise _refuse(graph, node, f"reshapes a {src.type} map: it may mix channels and "
                          "pixels, so the head cannot be rewritten as convolutions (use "
                          "flatten -> dense)")
    trained = {n.id: n.type for n in graph.nodes()}
    c = image.type.channels
    image.type = TensorType((c, *ctx.input_size))
    image.attrs = {**image.attrs, "shape": (c, *ctx.input_size)}
    for node in graph.topo_order():
        if node.id not in graph or node.op in ("input", "param"):
            continue
        ctx.at(node)
        x = graph.node(node.inputs[0]) if node.inputs else None
        if node.op == "flatten" and x is not None and x.type.rank == 3 and \
                x.op not in GLOBAL_POOLING and trained[x.id].rank == 3:
            readers = graph.users(node.id)
            if graph.is_output(node.id) or any(r.op != "dense" for r in readers):
                others = sorted({r.op for r in readers if r.op != "dense"} |
                                ({"the output"} if graph.is_output(node.id) else set()))
                raise _refuse(graph, node, f"is read by {', '.join(others)}, not only dense "
                              "layers: the flattened map cannot become a grid")
            for dense in readers:
                trained[_as_conv(graph, dense, x.id, trained[x.id].shape).id] = dense.type
                ctx.note(f"{layer(dense)}: a dense layer over {trained[x.id]} as a "
                         f"{trained[x.id].shape[1]}x{trained[x.id].shape[2]} convolution",
                         dense)
            continue
        if node.op == "dense" and x is not None and x.type.rank == 3:
            trained[_as_conv(graph, node, x.id, x.type.shape[:1] + (1, 1)).id] = node.type
            ctx.note(f"{layer(node)}: a dense layer after the grid as a 1x1 convolution", node)
            continue
        if node.op == "flatten" and x is not None and x.type.rank == 3 and \
                trained[x.id].rank == 1:
            raise _refuse(graph, node, f"flattens the grid of scores {x.type}: it would mix "
                          "the windows")
        try:
            node.type = graph.infer(node.op, node.inputs, node.attrs)
        except ShapeError as e:
            raise _refuse(graph, node, f"cannot take the larger input: {e}") from None
    graph.remove_dead()
    return True


@dataclass(frozen=True)
class WindowSaving:
    """The work of one convolutional pass against the classifier run on every window."""

    windows: tuple[int, int]  # P x Q windows
    stride: tuple[int, int]  # between neighbouring windows, in input pixels
    window_macs: int  # the classifier on one window
    one_pass_macs: int  # the fully convolutional network on the whole image

    @property
    def loop_macs(self) -> int:
        return self.windows[0] * self.windows[1] * self.window_macs

    @property
    def factor(self) -> float:
        return self.loop_macs / self.one_pass_macs


def window_saving(classifier: Graph, fully_convolutional: Graph) -> WindowSaving:
    """Seed 000's point in numbers: multiply-accumulates of ``fully_convolutional`` (the
    classifier convolutionalized) on its input against the classifier's on each window of its
    output grid. The grid and stride are those of the first output."""
    out = fully_convolutional.node(next(iter(fully_convolutional.outputs.values())))
    if out.type.rank != 3:
        raise ConvolutionalizeError(f"{fully_convolutional.name!r}: its output {out.type} is "
                                    "not a grid of windows")
    axes = receptive_fields(fully_convolutional)[out.id].axes
    if axes is None:
        raise ConvolutionalizeError(f"{fully_convolutional.name!r}: its output sees the whole "
                                    "input, not windows of it")
    stride = (int(axes[0].jump), int(axes[1].jump))
    return WindowSaving(out.type.shape[1:], stride, count_macs(classifier),
                        count_macs(fully_convolutional))


def fully_convolutional(graph: Graph, input_size: tuple[int, int]) -> Graph:
    """A copy of ``graph`` convolutionalized to run on ``input_size`` images (the pass run by
    the pass manager, which verifies the result); the parameters keep their names and shapes."""
    out = graph.copy()
    run_passes(out, [("convolutionalize", convolutionalize)],
               PassContext(input_size=tuple(input_size)))
    return out
