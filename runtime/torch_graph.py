"""Run a cnnc IR graph with PyTorch's functional ops: the PyTorch side of the benchmarks
(`cnnc bench`, `bench/`), with exactly cnnc's weights. Only needs `torch` (pip install
torch==2.13.0, CPU build), imported only by the code that runs PyTorch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..compiler.ir import Graph


def _sym(pads: tuple[int, int, int, int]) -> tuple[int, int] | None:
    """(vertical, horizontal) padding when top == bottom and left == right, else None."""
    t, l, b, r = pads
    return (t, l) if (t, l) == (b, r) else None


def _pad(x: torch.Tensor, pads, value: float = 0.0) -> torch.Tensor:
    t, l, b, r = pads
    return F.pad(x, (l, r, t, b), value=value)


def _conv(x, w, b, a):
    sym = _sym(a["pads"])
    if sym is None:
        x, sym = _pad(x, a["pads"]), (0, 0)
    return F.conv2d(x, w, b, a["stride"], sym, a["dilation"], a["groups"])


def _conv_transpose(x, w, b, a):
    t, l, bottom, r = a["pads"]
    oh, ow = a["output_padding"]
    # torch pads symmetrically: pad by the larger side, then crop what it added
    y = F.conv_transpose2d(x, w, b, a["stride"], 0, (oh, ow), a["groups"], a["dilation"])
    return y[:, :, t:y.shape[2] - bottom, l:y.shape[3] - r]


def _channel_shuffle(x, a):
    n, c, h, w = x.shape
    g = a["groups"]
    return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


def _maxpool(x, a):
    sym = _sym(a["pads"])
    if sym is None:
        x, sym = _pad(x, a["pads"], float("-inf")), (0, 0)
    return F.max_pool2d(x, a["kernel"], a["stride"], sym, a.get("dilation", 1), a["ceil_mode"])


def _avgpool(x, a):
    sym = _sym(a["pads"])
    if sym is None:
        raise NotImplementedError("asymmetric average pooling")
    return F.avg_pool2d(x, a["kernel"], a["stride"], sym, a["ceil_mode"],
                        a["count_include_pad"])


def _bn(x, w, b, mean, var, a):
    return F.batch_norm(x, mean, var, w, b, False, 0.0, a["eps"])


OPS: dict[str, Any] = {
    "conv": lambda xs, a: _conv(xs[0], xs[1], xs[2] if len(xs) > 2 else None, a),
    "conv_transpose": lambda xs, a: _conv_transpose(xs[0], xs[1], xs[2] if len(xs) > 2 else None,
                                                    a),
    "channel_shuffle": lambda xs, a: _channel_shuffle(xs[0], a),
    "channel_slice": lambda xs, a: xs[0][:, a["start"]:a["stop"]],
    "batchnorm": lambda xs, a: _bn(*xs, a),
    "relu": lambda xs, a: F.relu(xs[0]),
    "relu6": lambda xs, a: F.relu6(xs[0]),
    "sigmoid": lambda xs, a: torch.sigmoid(xs[0]),
    "swish": lambda xs, a: F.silu(xs[0]),
    "tanh": lambda xs, a: torch.tanh(xs[0]),
    "maxpool": lambda xs, a: _maxpool(xs[0], a),
    "avgpool": lambda xs, a: _avgpool(xs[0], a),
    "globalavgpool": lambda xs, a: xs[0].mean(dim=(2, 3), keepdim=True),
    "globalmaxpool": lambda xs, a: xs[0].amax(dim=(2, 3), keepdim=True),
    "flatten": lambda xs, a: xs[0].flatten(1),
    "dense": lambda xs, a: F.linear(xs[0], xs[1], xs[2] if len(xs) > 2 else None),
    "dropout": lambda xs, a: xs[0],
    "identity": lambda xs, a: xs[0],
    "add": lambda xs, a: xs[0] + xs[1],
    "mul": lambda xs, a: xs[0] * xs[1],
    "concat": lambda xs, a: torch.cat(xs, dim=a["axis"] + 1),
    "softmax": lambda xs, a: torch.softmax(xs[0], dim=a["axis"] + 1),
    "log_softmax": lambda xs, a: torch.log_softmax(xs[0], dim=a["axis"] + 1),
    "lrn": lambda xs, a: F.local_response_norm(xs[0], a["size"], a["alpha"], a["beta"], a["k"]),
}


class TorchGraph:
    """A callable that evaluates the graph with torch ops (inference, no autograd), on the CPU
    or on ``device`` (``"cuda"``: parameters kept there, inputs copied in and outputs out at
    each call, as cnnc's GPU target does)."""

    def __init__(self, graph: Graph, params: dict[str, np.ndarray], device: str = "cpu"):
        self.graph = graph
        self.device = torch.device(device)
        self.order = graph.topo_order()
        missing = sorted({n.op for n in self.order if n.op not in OPS and
                          n.op not in ("input", "param")})
        if missing:
            raise NotImplementedError(f"no torch mapping for: {', '.join(missing)}")
        self.params = {n.id: torch.from_numpy(np.ascontiguousarray(params[n.name]))
                       .to(self.device) for n in graph.params()}

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values: dict[int, torch.Tensor] = dict(self.params)
        for name, nid in self.graph.inputs.items():
            values[nid] = torch.from_numpy(inputs[name]).to(self.device)
        for node in self.order:
            if node.op in ("input", "param"):
                continue
            values[node.id] = OPS[node.op]([values[i] for i in node.inputs], node.attrs)
        return {k: values[v].cpu().numpy() for k, v in self.graph.outputs.items()}
