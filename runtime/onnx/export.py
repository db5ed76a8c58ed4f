"""IR graph -> ONNX model, one small converter per op.

The model uses the default ONNX domain at opset `OPSET` and IR version `IR_VERSION` (ONNX
Runtime 1.31 reads IR versions up to 13; the onnx package would write its newest otherwise).
Inputs and outputs are float32 with a symbolic batch dimension "N"; parameters become
initializers named by their cnnc names (`stage1.conv1.weight`). Where cnnc's convention differs
from an ONNX default (avgpool's count_include_pad, hard_sigmoid's alpha, resize coordinates) the
attribute is written explicitly. Opset 21 is the first with Gelu and with GroupNormalization
scaling per channel; ONNX Runtime reads it from version 1.18. Ops ONNX lacks are written as small
subgraphs: minpool = -maxpool(-x), swish = x * sigmoid(x), lppool with a fractional p as a
window sum of |x|^p, distance as a reduction of the difference, channel_shuffle as ShuffleNet's
Reshape -> Transpose -> Reshape, space_to_depth in mode CRD as SpaceToDepth and such a shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...compiler.ir import Graph, Node
from ..weights import check_weights, init_params
from .errors import require_onnx

OPSET = 21
IR_VERSION = 10
INT64_MIN = np.iinfo(np.int64).min


class OnnxExportError(Exception):
    """The graph holds an op this exporter cannot write."""


class Exporter:
    """Collects ONNX nodes and initializers while walking the IR in topological order."""

    def __init__(self, graph: Graph, params: dict[str, np.ndarray]):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.graph = graph
        self.params = params
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.taken: set[str] = set()
        self.tensor: dict[int, str] = {}  # cnnc node id -> ONNX tensor name

    # -- naming and building ------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A tensor or node name not used yet, derived from `base`."""
        name, k = base or "t", 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.fresh(base)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, base: str, values: Any) -> str:
        return self.const(base, values, np.int64)

    def emit(self, op_type: str, inputs: list[str], base: str, out: str | None = None,
             **attrs: Any) -> str:
        """Append a node with one output (named `out`, or fresh from `base`)."""
        out = out or self.fresh(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def rank(self, node_id: int) -> int:
        """Rank of the batched tensor of a node (per-sample rank + 1)."""
        return self.graph.node(node_id).type.rank + 1


Converter = Callable[[Exporter, Node, list[str], str], str]
CONVERTERS: dict[str, Converter] = {}


def converts(*ops: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return deco


def _pair(v: tuple[int, int]) -> list[int]:
    return [int(v[0]), int(v[1])]


def _window(a: dict[str, Any]) -> dict[str, Any]:
    return {"kernel_shape": _pair(a["kernel"]), "strides": _pair(a["stride"]),
            "pads": [int(p) for p in a["pads"]]}


# -- convolution ------------------------------------------------------------------------------

@converts("conv")
def _conv(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    a = node.attrs
    return ex.emit("Conv", xs, node.name, out, dilations=_pair(a["dilation"]), group=a["groups"],
                   **_window(a))


@converts("conv_transpose")
def _conv_transpose(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    a = node.attrs
    return ex.emit("ConvTranspose", xs, node.name, out, dilations=_pair(a["dilation"]),
                   group=a["groups"], output_padding=_pair(a["output_padding"]), **_window(a))


@converts("dense")
def _dense(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("Gemm", xs, node.name, out, transB=1)


# -- pooling ----------------------------------------------------------------------------------

@converts("maxpool")
def _maxpool(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    a = node.attrs
    return ex.emit("MaxPool", xs, node.name, out, ceil_mode=int(a["ceil_mode"]),
                   dilations=_pair(a["dilation"]), **_window(a))


@converts("minpool")
def _minpool(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    # min(x) = -max(-x); MaxPool's -inf padding becomes +inf, the neutral element of min.
    a = node.attrs
    neg = ex.emit("Neg", xs, node.name + "/neg")
    m = ex.emit("MaxPool", [neg], node.name + "/max", ceil_mode=int(a["ceil_mode"]),
                dilations=_pair(a["dilation"]), **_window(a))
    return ex.emit("Neg", [m], node.name, out)


@converts("avgpool")
def _avgpool(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    a = node.attrs
    return ex.emit("AveragePool", xs, node.name, out, ceil_mode=int(a["ceil_mode"]),
                   count_include_pad=int(a["count_include_pad"]), **_dilations(a),
                   **_window(a))


def _dilations(a: dict[str, Any]) -> dict[str, Any]:
    """AveragePool's and LpPool's dilations, written only when dilated (opsets 19 and 18)."""
    d = a.get("dilation", (1, 1))
    return {} if tuple(d) == (1, 1) else {"dilations": _pair(d)}


@converts("lppool")
def _lppool(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    a = node.attrs
    p = a["p"]
    if float(p).is_integer():
        return ex.emit("LpPool", xs, node.name, out, p=int(p), ceil_mode=int(a["ceil_mode"]),
                       **_dilations(a), **_window(a))
    # ONNX's LpPool takes an integer p: (sum |x|^p)^(1/p) as a window sum, i.e. a depthwise
    # convolution with a kernel of ones, over |x|^p zero-padded by the declared padding plus
    # the cells ceil mode adds at the end.
    x = ex.graph.node(node.inputs[0]).type
    y = node.type
    (kh, kw), (sh, sw), (t, l, b, r) = a["kernel"], a["stride"], a["pads"]
    dh, dw = a.get("dilation", (1, 1))
    extra_h = max((y.height - 1) * sh + dh * (kh - 1) + 1 - (x.height + t + b), 0)
    extra_w = max((y.width - 1) * sw + dw * (kw - 1) + 1 - (x.width + l + r), 0)
    powed = ex.emit("Pow", [ex.emit("Abs", xs, node.name + "/abs"),
                            ex.const(node.name + "/p", p)], node.name + "/pow")
    padded = ex.emit("Pad", [powed, ex.ints(node.name + "/pads",
                                            [0, 0, t, l, 0, 0, b + extra_h, r + extra_w])],
                     node.name + "/pad")
    ones = ex.const(node.name + "/ones", np.ones((x.channels, 1, kh, kw)))
    sums = ex.emit("Conv", [padded, ones], node.name + "/sum", group=x.channels,
                   kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw])
    return ex.emit("Pow", [sums, ex.const(node.name + "/inv_p", 1.0 / p)], node.name, out)


@converts("globalavgpool")
def _gap(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("GlobalAveragePool", xs, node.name, out)


@converts("globalmaxpool")
def _gmp(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("GlobalMaxPool", xs, node.name, out)


@converts("upsample")
def _upsample(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    """Resize over height and width with the op's own modes and attributes: scales where
    float32 holds the op's scale and it gives the op's size (floor(in x scale)), else sizes
    where the op's scale is size / in, as ONNX then computes it."""
    a = node.attrs
    in_hw = ex.graph.node(node.inputs[0]).type.shape[1:]
    f32 = [float(np.float32(s)) for s in a["scale"]]
    roi = ""
    if a["coordinates"] == "tf_crop_and_resize":
        top, left, bottom, right = a["roi"]
        roi = ex.const(node.name + "/roi", [top, left, bottom, right])
    if f32 == list(a["scale"]) and [math.floor(n * s) for n, s in zip(in_hw, f32)] == \
            list(a["size"]):
        inputs = [xs[0], roi, ex.const(node.name + "/scales", f32)]
    elif all(s == size / n for s, size, n in zip(a["scale"], a["size"], in_hw)):
        inputs = [xs[0], roi, "", ex.ints(node.name + "/sizes", list(a["size"]))]
    else:
        raise OnnxExportError(f"{node.name}: upsample with scale {a['scale']} and size "
                              f"{a['size']}: ONNX's Resize takes one or the other")
    attrs: dict[str, Any] = {"axes": [2, 3], "coordinate_transformation_mode": a["coordinates"],
                             "mode": {"bilinear": "linear", "bicubic": "cubic"}.get(a["mode"],
                                                                                   a["mode"])}
    if a["mode"] == "nearest":
        attrs["nearest_mode"] = a["rounding"]
    else:
        attrs["antialias"] = int(a["antialias"])
        if a["mode"] == "bicubic":
            attrs["cubic_coeff_a"] = a["cubic_a"]
        # (ONNX Runtime takes it for cubic and antialiased linear only: elsewhere, reading the
        # edge pixel or leaving it out gives the same numbers)
        if a["exclude_outside"] and (a["mode"] == "bicubic" or a["antialias"]):
            attrs["exclude_outside"] = 1
    if roi:
        attrs["extrapolation_value"] = a["extrapolation"]
    return ex.emit("Resize", inputs, node.name, out, **attrs)


# -- shapes -----------------------------------------------------------------------------------

@converts("flatten")
def _flatten(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("Flatten", xs, node.name, out, axis=1)


@converts("reshape")
def _reshape(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    # 0 copies the batch dimension from the input.
    shape = ex.ints(node.name + "/shape", [0, *node.attrs["shape"]])
    return ex.emit("Reshape", [xs[0], shape], node.name, out)


@converts("concat")
def _concat(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("Concat", xs, node.name, out, axis=node.attrs.get("axis", 0) + 1)


@converts("pad")
def _pad(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    t, l, b, r = node.attrs["pads"]
    pads = ex.ints(node.name + "/pads", [0, 0, t, l, 0, 0, b, r])
    if node.attrs["mode"] != "constant":
        return ex.emit("Pad", [xs[0], pads], node.name, out, mode=node.attrs["mode"])
    value = ex.const(node.name + "/value", node.attrs["value"])
    return ex.emit("Pad", [xs[0], pads, value], node.name, out, mode="constant")


@converts("flip")
def _flip(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    axes = {"horizontal": [3], "vertical": [2], "both": [2, 3]}[node.attrs["axis"]]
    k = len(axes)
    return ex.emit("Slice", [xs[0], ex.ints(node.name + "/starts", [-1] * k),
                             ex.ints(node.name + "/ends", [INT64_MIN] * k),
                             ex.ints(node.name + "/axes", axes),
                             ex.ints(node.name + "/steps", [-1] * k)], node.name, out)


@converts("channel_slice")
def _channel_slice(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("Slice", [xs[0], ex.ints(node.name + "/starts", [node.attrs["start"]]),
                             ex.ints(node.name + "/ends", [node.attrs["stop"]]),
                             ex.ints(node.name + "/axes", [1])], node.name, out)


@converts("depth_to_space")
def _depth_to_space(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("DepthToSpace", xs, node.name, out, blocksize=node.attrs["block"],
                   mode=node.attrs["mode"])


@converts("space_to_depth")
def _space_to_depth(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    b = node.attrs["block"]
    if node.attrs["mode"] == "DCR":
        return ex.emit("SpaceToDepth", xs, node.name, out, blocksize=b)
    # SpaceToDepth's CRD mode needs opset 28: CRD is DCR with its channels shuffled in b^2
    # groups (DCR channel (i*b + j)*C + c becomes c*b^2 + i*b + j).
    dcr = ex.emit("SpaceToDepth", xs, node.name + "/dcr", blocksize=b)
    return _shuffle(ex, node, dcr, b * b, out)


@converts("channel_shuffle")
def _channel_shuffle(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return _shuffle(ex, node, xs[0], node.attrs["groups"], out)


def _shuffle(ex: Exporter, node: Node, x: str, g: int, out: str) -> str:
    """ONNX has no shuffle: ShuffleNet's Reshape -> Transpose -> Reshape (0 keeps the batch)."""
    c, h, w = node.type.shape
    split = ex.emit("Reshape", [x, ex.ints(node.name + "/groups", [0, g, c // g, h, w])],
                    node.name + "/split")
    swapped = ex.emit("Transpose", [split], node.name + "/transpose", perm=[0, 2, 1, 3, 4])
    return ex.emit("Reshape", [swapped, ex.ints(node.name + "/shape", [0, c, h, w])],
                   node.name, out)


@converts("dropout", "identity")
def _identity(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("Identity", xs[:1], node.name, out)


# -- elementwise ------------------------------------------------------------------------------

def _aligned(ex: Exporter, node: Node, xs: list[str]) -> list[str]:
    """cnnc broadcasts per-sample shapes right-aligned, then the batch; ONNX right-aligns the
    whole shape. A lower-rank input gets ones inserted after its batch axis."""
    ranks = [ex.rank(i) for i in node.inputs]
    top = max(ranks)
    out = []
    for name, rank in zip(xs, ranks):
        if rank < top:
            axes = ex.ints(node.name + "/axes", list(range(1, 1 + top - rank)))
            name = ex.emit("Unsqueeze", [name, axes], node.name + "/unsqueeze")
        out.append(name)
    return out


def _chain(op_type: str) -> Converter:
    def convert(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
        xs = _aligned(ex, node, xs)
        acc = xs[0]
        for i, x in enumerate(xs[1:], start=2):
            last = i == len(xs)
            acc = ex.emit(op_type, [acc, x], node.name if last else f"{node.name}/{i}",
                          out if last else None)
        return acc
    return convert


CONVERTERS["add"] = _chain("Add")
CONVERTERS["sub"] = _chain("Sub")
CONVERTERS["mul"] = _chain("Mul")


def _simple(op_type: str, **fixed: Any) -> Converter:
    def convert(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
        attrs = {k: (v(node.attrs) if callable(v) else v) for k, v in fixed.items()}
        return ex.emit(op_type, xs[:1], node.name, out, **attrs)
    return convert


CONVERTERS.update({
    "relu": _simple("Relu"),
    "leaky_relu": _simple("LeakyRelu", alpha=lambda a: float(a["alpha"])),
    "sigmoid": _simple("Sigmoid"),
    "hard_sigmoid": _simple("HardSigmoid", alpha=lambda a: float(a["alpha"]),
                            beta=lambda a: float(a["beta"])),
    "tanh": _simple("Tanh"),
    "hard_swish": _simple("HardSwish"),
    "abs": _simple("Abs"),
    "elu": _simple("Elu", alpha=lambda a: float(a["alpha"])),
    "selu": _simple("Selu", alpha=lambda a: float(a["alpha"]), gamma=lambda a: float(a["gamma"])),
    "softplus": _simple("Softplus"),
    "mish": _simple("Mish"),
    "softmax": _simple("Softmax", axis=lambda a: a["axis"] + 1),
    "log_softmax": _simple("LogSoftmax", axis=lambda a: a["axis"] + 1),
    "lrn": _simple("LRN", size=lambda a: a["size"], alpha=lambda a: float(a["alpha"]),
                   beta=lambda a: float(a["beta"]), bias=lambda a: float(a["k"])),
})


@converts("relu6")
def _relu6(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    lo, hi = ex.const(node.name + "/min", 0.0), ex.const(node.name + "/max", 6.0)
    return ex.emit("Clip", [xs[0], lo, hi], node.name, out)


@converts("prelu")
def _prelu(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    # The slope parameter is [num_parameters]; ONNX right-aligns it, so one per channel of a
    # C x H x W input is written [C, 1, 1].
    slope = xs[1]
    if ex.rank(node.inputs[0]) == 4 and node.attrs["num_parameters"] > 1:
        slope = ex.emit("Unsqueeze", [slope, ex.ints(node.name + "/axes", [1, 2])],
                        node.name + "/slope")
    return ex.emit("PRelu", [xs[0], slope], node.name, out)


@converts("swish")
def _swish(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    s = ex.emit("Sigmoid", xs[:1], node.name + "/sigmoid")
    return ex.emit("Mul", [xs[0], s], node.name, out)


@converts("gelu")
def _gelu(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("Gelu", xs[:1], node.name, out, approximate=node.attrs["approximate"])


# -- normalization ----------------------------------------------------------------------------

@converts("batchnorm")
def _batchnorm(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("BatchNormalization", xs, node.name, out, epsilon=float(node.attrs["eps"]))


@converts("groupnorm")
def _groupnorm(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    # GroupNormalization-21 scales and shifts per channel, as cnnc and PyTorch do (opset 18's
    # version did so per group).
    if ex.graph.node(node.inputs[0]).type.rank != 3:
        raise OnnxExportError(f"{node.name}: groupnorm of a feature vector has no ONNX form")
    return ex.emit("GroupNormalization", xs, node.name, out, epsilon=float(node.attrs["eps"]),
                   num_groups=node.attrs["groups"])


@converts("instance_norm")
def _instance_norm(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    return ex.emit("InstanceNormalization", xs, node.name, out, epsilon=float(node.attrs["eps"]))


@converts("distance")
def _distance(ex: Exporter, node: Node, xs: list[str], out: str) -> str:
    n, p = node.name, node.attrs["p"]
    diff = ex.emit("Flatten", [ex.emit("Sub", xs[:2], n + "/sub")], n + "/flat", axis=1)
    axes = ex.ints(n + "/axes", [1])
    if p == 2.0:
        return ex.emit("ReduceL2", [diff, axes], n, out, keepdims=1)
    if p == 1.0:
        return ex.emit("ReduceL1", [diff, axes], n, out, keepdims=1)
    powed = ex.emit("Pow", [ex.emit("Abs", [diff], n + "/abs"), ex.const(n + "/p", p)],
                    n + "/pow")
    total = ex.emit("ReduceSum", [powed, axes], n + "/sum", keepdims=1)
    return ex.emit("Pow", [total, ex.const(n + "/inv_p", 1.0 / p)], n, out)


# -- the model --------------------------------------------------------------------------------

def export_model(graph: Graph, params: dict[str, np.ndarray]) -> Any:
    """Build (and check) the ONNX ModelProto of a graph with the given parameter values."""
    import onnx
    from onnx import TensorProto, helper

    missing = sorted({n.op for n in graph.compute_nodes()} - set(CONVERTERS))
    if missing:
        raise OnnxExportError(f"cannot export op(s) {', '.join(missing)} to ONNX; the exporter "
                              f"handles: {', '.join(sorted(CONVERTERS))}")
    ex = Exporter(graph, params)
    ex.taken |= set(graph.inputs) | set(graph.outputs)
    for p in graph.params():
        ex.taken.add(p.name)
        ex.inits.append(ex.numpy_helper.from_array(np.asarray(params[p.name], np.float32),
                                                   p.name))
        ex.tensor[p.id] = p.name
    for name, nid in graph.inputs.items():
        ex.tensor[nid] = name
    # A node that is an output writes its tensor under the (first) output name.
    out_name: dict[int, str] = {}
    for name, nid in graph.outputs.items():
        if nid not in out_name and graph.node(nid).op not in ("input", "param"):
            out_name[nid] = name
    for node in graph.compute_nodes():
        xs = [ex.tensor[i] for i in node.inputs]
        out = out_name.get(node.id) or ex.fresh(node.name or node.op)
        ex.tensor[node.id] = CONVERTERS[node.op](ex, node, xs, out)
    for name, nid in graph.outputs.items():
        if ex.tensor[nid] != name:  # an input, or a second name for the same tensor
            ex.emit("Identity", [ex.tensor[nid]], name, name)

    def info(name: str, nid: int) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                             ["N", *graph.node(nid).type.shape])

    g = helper.make_graph(ex.nodes, graph.name,
                          [info(k, v) for k, v in graph.inputs.items()],
                          [info(k, v) for k, v in graph.outputs.items()],
                          initializer=ex.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="cnnc",
                              doc_string=f"cnnc network {graph.name}")
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(model: Any, path: str | Path) -> None:
    import onnx

    onnx.save_model(model, str(path))


def export_onnx(graph: Graph, params: dict[str, np.ndarray] | None = None,
                path: str | Path | None = None) -> Any:
    """The ONNX ModelProto of `graph` with `params` (deterministic initial values when None),
    checked with onnx.checker; saved to `path` when given."""
    require_onnx("ONNX export")
    if params is None:
        params = init_params(graph)
    else:
        check_weights(graph, dict(params))
    model = export_model(graph, dict(params))
    if path is not None:
        save_model(model, path)
    return model
