"""The float64 reference interpreter: runs any IR graph with each op's obviously-correct NumPy
semantics. It is the oracle for `cnnc check`, the tests and every optimization."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..compiler.ir import Graph
from ..compiler.ops import evaluate
from .weights import check_weights, init_params


class InputError(Exception):
    """An input array that does not fit the network (name, expected and given shape)."""


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray],
                 dtypes: tuple[type, ...] = (np.float32, np.float64),
                 device: Callable[[Any], bool] | None = None) -> int:
    """Validate the inputs by name, shape and dtype; returns the batch size.

    ``device``: which arrays a GPU target's kernels read where they lie (its memory's
    ``owns``: a caller's CuPy array); they are checked like NumPy arrays, except for NaN and
    infinity (that would take a reduction on the device and a wait for it).

    An array in non-native byte order (a big-endian ``>f4`` read from a file) is refused with
    the conversion to make, not converted: this function only checks, and the CLI's loaders
    convert what they read to native float32 themselves.
    """
    missing = [n for n in graph.inputs if n not in inputs]
    unknown = [n for n in inputs if n not in graph.inputs]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(repr(m) for m in missing))
        if unknown:
            parts.append("unknown " + ", ".join(repr(u) for u in unknown))
        raise InputError(f"inputs do not match network {graph.name!r}: {'; '.join(parts)} "
                         f"(it takes {', '.join(repr(n) for n in graph.inputs)})")
    batch = None
    for name, node_id in graph.inputs.items():
        x = inputs[name]
        want = graph.node(node_id).type.shape
        shape_txt = "N x " + " x ".join(map(str, want))
        on_device = device is not None and not isinstance(x, np.ndarray) and device(x)
        if not isinstance(x, np.ndarray) and not on_device:
            kinds = "a NumPy or CuPy array" if device is not None else "a NumPy array"
            raise InputError(f"input {name!r} must be {kinds} of shape {shape_txt}, "
                             f"got {type(x).__name__}")
        if not graph.node(node_id).type.batched:
            _check_whole_batch_input(name, x, graph.node(node_id).type)
            continue
        if x.dtype.type not in dtypes:
            allowed = " or ".join(np.dtype(d).name for d in dtypes)
            raise InputError(f"input {name!r} has dtype {x.dtype}, expected {allowed} "
                             f"(shape {shape_txt})")
        if not x.dtype.isnative:
            # Refused rather than converted: this only validates (the caller keeps its array),
            # and a kernel handed non-native bytes would fail deep inside Numba.
            raise InputError(f"input {name!r} is stored in non-native (big-endian) byte order "
                             f"({x.dtype.str}); pass x.astype(np.{x.dtype.name}) (shape "
                             f"{shape_txt})")
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise InputError(f"input {name!r} has shape {' x '.join(map(str, x.shape))}, "
                             f"expected {shape_txt}")
        if batch is not None and x.shape[0] != batch:
            raise InputError(f"input {name!r} has batch size {x.shape[0]}, but another input "
                             f"has {batch}")
        batch = x.shape[0]
        if batch == 0:
            raise InputError(f"input {name!r} has batch size 0")
        if not on_device:
            check_finite(name, x)
    return batch or 1


def check_finite(name: str, x: np.ndarray) -> None:
    """Refuse input ``name`` where ``x`` holds a NaN or an infinity."""
    if not np.isfinite(x).all():
        raise InputError(f"input {name!r} contains NaN or infinity")


def _check_whole_batch_input(name: str, x: np.ndarray, t) -> None:
    """One value for the whole batch (no batch axis: the training graph's dropout seed), of
    its type's shape; integers where the type is int64."""
    want = " x ".join(map(str, t.shape))
    if tuple(x.shape) != t.shape:
        raise InputError(f"input {name!r} has shape {' x '.join(map(str, x.shape))}, expected "
                         f"{want} (one value for the whole batch, no batch axis)")
    kinds = "iu" if t.dtype == "int64" else "f"
    if x.dtype.kind not in kinds:
        raise InputError(f"input {name!r} has dtype {x.dtype}, expected "
                         f"{'integers' if kinds == 'iu' else 'floats'} (shape {want})")


def run_reference(graph: Graph, inputs: Mapping[str, np.ndarray],
                  params: Mapping[str, np.ndarray] | None = None, *,
                  keep: bool = False) -> dict[str, np.ndarray]:
    """Evaluate the graph in float64. Returns the outputs by name (every node's value by
    node name as well when `keep`)."""
    check_inputs(graph, inputs)
    if params is None:
        params = init_params(graph)
    else:  # an optimized graph may use fewer parameters than were given
        names = {n.name for n in graph.params()}
        check_weights(graph, {k: v for k, v in params.items() if k in names})
    values: dict[int, np.ndarray] = {}
    for node in graph.topo_order():
        if node.op == "input":
            integer = node.type.dtype.startswith("int")  # dropout_seed: kept exact
            values[node.id] = np.asarray(inputs[node.name],
                                         np.int64 if integer else np.float64)
        elif node.op == "param":
            values[node.id] = np.asarray(params[node.name], np.float64)
        else:
            args = [values[i] for i in node.inputs]
            values[node.id] = evaluate(node.op, args, node.attrs)
    outputs = {name: values[nid] for name, nid in graph.outputs.items()}
    if keep:
        outputs.update({f"%{n.id}": values[n.id] for n in graph.nodes()})
    return outputs
