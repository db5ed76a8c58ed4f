"""Lowering: every fusion group of a graph becomes a ``Step`` that runs generated kernels.

A step knows its kernels (kernel IR, printed into the model's module; convolutions come from
``conv.compile_conv`` and live in their own cached modules), how to prepare its constant arrays
from the parameters (packing, batch-norm folding), the scratch space it needs, and how to call
its kernels on flat float32 buffers. ``lower_graph`` builds the steps and loads the generated
module through the on-disk cache.

Kernel and argument identifiers derive from node ids (``n12_maxpool``); text from the DSL (file
names, layer names) reaches the generated source only through ``sanitize_comment`` in ``#``
header comments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import Graph, Node
from ..schedule import Group, fuse_groups
from . import cache
from .elementwise import (
    Sizes,
    channel_affine_kernel,
    concat_kernel,
    dense_kernel,
    distance_kernel,
    elementwise_kernel,
    flip_kernel,
    groupnorm_kernel,
    lrn_kernel,
    pad_kernel,
    softmax_kernel,
    zero_stuff_kernel,
)
from .kernel_ir import Kernel
from .numba_printer import print_kernel, print_module, sanitize_comment
from .pool import global_pool_kernel, pool_kernel, upsample_kernel

LOWERINGS = ("auto", "direct", "im2col")
POOL_OPS = ("maxpool", "minpool", "avgpool", "lppool")


class LoweringError(Exception):
    """A lowering option that does not fit the graph (unknown layer name or lowering)."""


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def describe_node(node: Node) -> str:
    """``file:line layer (op)`` for a header comment (sanitized by the printer)."""
    where = f"{node.span.file}:{node.span.line} " if node.span else ""
    return sanitize_comment(f"{where}{node.name or '%' + str(node.id)} ({node.op})")


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One fusion group, lowered. Subclasses implement ``pack`` and ``run``."""

    group: Group
    lowering: str = "kernel"

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def inputs(self) -> list[int]:
        return self.group.inputs

    @property
    def output(self) -> int:
        return self.group.output

    @property
    def out_size(self) -> int:
        return self.group.nodes[-1].type.size

    @property
    def ops(self) -> str:
        return "+".join(n.op for n in self.group.nodes)

    def kernels(self) -> list[Kernel]:
        """Kernel IR to print into the model module."""
        return []

    def scratch(self) -> dict[str, int]:
        """Scratch buffers (name -> float32 elements per image) shared by all steps."""
        return {}

    def bind(self, module, names: Mapping[str, str]) -> None:
        """Look up the compiled functions (``names`` maps kernel names after dedup)."""

    def pack(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {}

    def run(self, ins: list[np.ndarray], out: np.ndarray, consts: dict[str, np.ndarray],
            scratch: dict[str, np.ndarray], n: int) -> None:
        raise NotImplementedError

    def sources(self) -> dict[str, str]:
        """Generated sources owned by this step beyond the model module (file -> text)."""
        return {}


class ViewStep(Step):
    """flatten / reshape / dropout / identity: the output aliases the input buffer."""

    def run(self, ins, out, consts, scratch, n) -> None:  # pragma: no cover - never called
        pass


class KernelStep(Step):
    """One generated kernel; its array parameters are matched by name: ``x<k>`` inputs,
    ``y`` the output, ``c_*`` constants, ``n_batch`` the batch size."""

    def __init__(self, group: Group, kernel: Kernel, packer=None,
                 size: int | None = None, sizes: Sizes | None = None) -> None:
        super().__init__(group, "kernel")
        self.kernel = kernel
        self._size = size
        self._packer = packer
        self.ints = dict(sizes.values) if sizes is not None else {}  # runtime size arguments
        self.fn = None

    @property
    def out_size(self) -> int:
        return self._size if self._size is not None else self.group.nodes[-1].type.size

    def kernels(self) -> list[Kernel]:
        return [self.kernel]

    def bind(self, module, names) -> None:
        self.fn = module[names[self.kernel.name]]
        self._spec = [(p.name, p.kind) for p in self.kernel.params]

    def pack(self, params) -> dict[str, np.ndarray]:
        # np.array copies: writable arrays, so every call has the type the kernels were
        # compiled for (a read-only array would be a second Numba signature)
        return {k: np.array(v, dtype=np.float32).ravel() for k, v in self._packer(params).items()} \
            if self._packer else {}

    def run(self, ins, out, consts, scratch, n) -> None:
        args: list = []
        for p, kind in self._spec:
            if p == "y":
                args.append(out)
            elif p == "n_batch":
                args.append(int(n))
            elif kind == "int":
                args.append(self.ints[p])
            elif p.startswith("c_"):
                args.append(consts[p])
            else:
                args.append(ins[int(p[1:])])
        self.fn(*args)


# -- convolution adapter -----------------------------------------------------------------------
# ConvKernel (conv.py) allocates in pack_input/unpack_output; the runtime keeps every buffer in
# its arena, so these adapters call the same shared layout kernels into given buffers. They use
# only ConvKernel's geometry and layout module; if conv.py grows `out=` arguments they become
# one-line calls.

def _conv_in_floats(ck) -> int:
    g = ck.geometry
    if ck.lowering == "im2col":
        from .conv import GEMM_N
        pqp = -(-(g.P * g.Q) // GEMM_N) * GEMM_N
        return g.groups * g.Cg * g.R * g.S * pqp
    if g.depthwise:
        return -(-g.C // 8) * g.Hp * g.Wp * 8
    return g.groups * g.Cgb * g.Hp * g.Wp * g.CB


def _conv_pack_into(ck, x: np.ndarray, xp: np.ndarray, n: int) -> None:
    g = ck.geometry
    if ck.lowering == "im2col":
        from .conv import GEMM_N
        pqp = -(-(g.P * g.Q) // GEMM_N) * GEMM_N
        ck.layout.im2col(x, xp, n, g.C, g.H, g.W, g.groups, g.Cg, g.R, g.S, g.P, g.Q, g.sh,
                         g.sw, g.dh, g.dw, g.pt, g.pl, pqp)
        return
    if g.depthwise:
        nb, cb, cg, cgb = -(-g.C // 8), 8, g.C, -(-g.C // 8)
    else:
        nb, cb, cg, cgb = g.groups * g.Cgb, g.CB, g.Cg, g.Cgb
    ck.layout.pack_nchw_blocked(x, xp, n, g.C, g.H, g.W, g.Hp, g.Wp, g.pt, g.pl, nb, cb, cg,
                                cgb)


def _conv_unpack_into(ck, yp: np.ndarray, out: np.ndarray, n: int) -> None:
    from .conv import GEMM_M, GEMM_N, TILE_K
    g = ck.geometry
    if ck.lowering == "im2col":
        kgp = -(-g.Kg // GEMM_M) * GEMM_M
        pqp = -(-(g.P * g.Q) // GEMM_N) * GEMM_N
        ck.layout.crop_gemm(yp, out, n, g.K, g.Kg, kgp, g.P * g.Q, pqp)
    elif g.depthwise:
        c8 = -(-g.C // 8)
        ck.layout.unpack_blocked_nchw(yp, out, n, g.K, g.P, g.Q, g.K, c8 * 8, c8)
    else:
        ck.layout.unpack_blocked_nchw(yp, out, n, g.K, g.P, g.Q, g.Kg, g.Kgb * TILE_K,
                                      2 * g.groups * g.Kgb)


def _conv_file(ck) -> str:
    """A unique file name for a convolution module (its cache folder's name)."""
    return Path(ck.path).parent.name + ".py" if ck.path else "conv.py"


@contextmanager
def _cache_dir(path: str | Path | None):
    """conv.compile_conv reads the cache root from $CNNC_CACHE_DIR; point it at ``path``."""
    if path is None:
        yield
        return
    old = os.environ.get("CNNC_CACHE_DIR")
    os.environ["CNNC_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CNNC_CACHE_DIR", None)
        else:
            os.environ["CNNC_CACHE_DIR"] = old


def compile_conv_adapter(attrs: dict, in_shape: tuple[int, ...], lowering: str, comment: str):
    """The one place that calls the conv engineer's API."""
    from .conv import compile_conv

    return compile_conv(attrs, tuple(in_shape), lowering, comment=comment)


class ConvStep(Step):
    """conv [+ batchnorm folded into weights and bias] [+ relu epilogue]."""

    def __init__(self, graph: Graph, group: Group, lowering: str, comment: str,
                 stuff: KernelStep | None = None, conv_attrs: dict | None = None,
                 in_shape: tuple[int, ...] | None = None) -> None:
        super().__init__(group, lowering)
        self.graph = graph
        conv = group.anchor
        self.bn = next((n for n in group.nodes if n.op == "batchnorm"), None)
        relu = any(n.op == "relu" for n in group.nodes)
        attrs = dict(conv_attrs or conv.attrs)
        attrs["bias"] = bool(attrs["bias"]) or self.bn is not None
        attrs["activation"] = "relu" if relu else None
        shape = in_shape or graph.node(group.inputs[0]).type.shape
        self.ck = compile_conv_adapter(attrs, shape, lowering, comment)
        self.stuff = stuff  # conv_transpose: zero-stuffing kernel in front of the conv
        self._in_floats = _conv_in_floats(self.ck)
        self._out_floats = self.ck._out_blocked_size(1)

    def kernels(self) -> list[Kernel]:
        return self.stuff.kernels() if self.stuff else []

    def bind(self, module, names) -> None:
        if self.stuff:
            self.stuff.bind(module, names)

    def scratch(self) -> dict[str, int]:
        s = {"conv_in": self._in_floats, "conv_out": self._out_floats}
        if self.stuff:
            s["stuffed"] = self.stuff.out_size
        return s

    def conv_weights(self, params) -> tuple[np.ndarray, np.ndarray | None]:
        conv = self.group.anchor
        names = [self.graph.node(i).name for i in conv.inputs[1:]]
        w = np.asarray(params[names[0]], np.float64)
        b = np.asarray(params[names[1]], np.float64) if len(names) > 1 else None
        return w, b

    def pack(self, params) -> dict[str, np.ndarray]:
        w, b = self.conv_weights(params)
        if self.bn is not None:
            gamma, beta, mean, var = (np.asarray(params[self.graph.node(i).name], np.float64)
                                      for i in self.bn.inputs[1:5])
            scale = gamma / np.sqrt(var + self.bn.attrs["eps"])
            w = w * scale[:, None, None, None]
            b = (np.zeros(len(scale)) if b is None else b) * scale + (beta - mean * scale)
        wp, bp = self.ck.pack_weights(_f32(w), None if b is None else _f32(b))
        out = {"w": _f32(wp)}
        if bp is not None:
            out["b"] = _f32(bp)
        return out

    def run(self, ins, out, consts, scratch, n) -> None:
        x = ins[0]
        if self.stuff:
            z = scratch["stuffed"][: n * self.stuff.out_size]
            self.stuff.run(ins, z, consts, scratch, n)
            x = z
        xp = scratch["conv_in"][: n * self._in_floats]
        yp = scratch["conv_out"][: n * self._out_floats]
        _conv_pack_into(self.ck, x, xp, n)
        self.ck.run(xp, consts["w"], consts.get("b"), n, out=yp)
        _conv_unpack_into(self.ck, yp, out, n)

    def sources(self) -> dict[str, str]:
        return {_conv_file(self.ck): self.ck.source}


class ConvTransposeStep(ConvStep):
    """conv_transpose as a stride-1 convolution of the zero-stuffed, re-padded input with the
    flipped, transposed kernel (any stride, padding, output padding, dilation, groups)."""

    def __init__(self, graph: Graph, group: Group, lowering: str, comment: str) -> None:
        node = group.anchor
        a = node.attrs
        C, H, W = graph.node(group.inputs[0]).type.shape
        (R, S), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
        t, l, b, r = a["pads"]
        oph, opw = a["output_padding"]
        before = (dh * (R - 1) - t, dw * (S - 1) - l)
        zh = (H - 1) * sh + 1 + before[0] + dh * (R - 1) - b + oph
        zw = (W - 1) * sw + 1 + before[1] + dw * (S - 1) - r + opw
        stuff_group = Group([node], group.inputs)
        kernel = zero_stuff_kernel(f"n{node.id}_zero_stuff", (C, H, W), (sh, sw), before,
                                   (zh, zw), comment)
        stuff = KernelStep(stuff_group, kernel, size=C * zh * zw)
        attrs = {"out_channels": a["out_channels"], "kernel": (R, S), "stride": (1, 1),
                 "pads": (0, 0, 0, 0), "dilation": (dh, dw), "groups": a["groups"],
                 "bias": a["bias"]}
        super().__init__(graph, group, lowering, comment, stuff=stuff, conv_attrs=attrs,
                         in_shape=(C, zh, zw))

    def conv_weights(self, params):
        w, b = super().conv_weights(params)
        C, kg, R, S = w.shape
        g = self.group.anchor.attrs["groups"]
        cg = C // g
        wc = w.reshape(g, cg, kg, R, S).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        return np.ascontiguousarray(wc.reshape(g * kg, cg, R, S)), b


# ---------------------------------------------------------------------------------------------
# Lowering rules: one per op family
# ---------------------------------------------------------------------------------------------


def _chain(group: Group) -> list[tuple[str, dict]]:
    return [(n.op, n.attrs) for n in group.nodes[1:]]


def _param_names(graph: Graph, node: Node) -> list[str]:
    return [graph.node(i).name for i in node.inputs if graph.node(i).op == "param"]


def _comment(group: Group) -> str:
    return "\n".join(describe_node(n) for n in group.nodes)


def lower_group(graph: Graph, group: Group, lowering: str) -> Step:
    """The step for one fusion group."""
    node = group.anchor
    op = node.op
    kname = f"n{node.id}_{op}"
    comment = _comment(group)
    in_shapes = [graph.node(i).type.shape for i in group.inputs]
    shape = in_shapes[0] if in_shapes else ()
    out_shape = group.nodes[-1].type.shape
    chain = _chain(group)
    a = node.attrs
    pnames = _param_names(graph, node)

    if group.is_view:
        return ViewStep(group, "view")
    # Convolution modules carry no layer text: one compiled kernel serves every layer (and
    # every model) with the same geometry, and editing the DSL file does not recompile them.
    # The model module lists which layer uses which convolution file.
    if op == "conv":
        return ConvStep(graph, group, lowering, "")
    if op == "conv_transpose":
        return ConvTransposeStep(graph, group, lowering, comment)
    if op in ("add", "sub", "mul"):
        sz = Sizes()
        k = elementwise_kernel(kname, op, out_shape, in_shapes, chain, comment, sz)
        return KernelStep(group, k, sizes=sz)
    if op in ("relu", "leaky_relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "swish",
              "hard_swish", "gelu", "abs"):
        sz = Sizes()
        k = elementwise_kernel(kname, "copy", out_shape, in_shapes,
                               [(op, a)] + chain, comment, sz)
        return KernelStep(group, k, sizes=sz)
    if op == "batchnorm":
        def pack_bn(params, pnames=pnames, eps=a["eps"]):
            w, b, mean, var = (np.asarray(params[p], np.float64) for p in pnames)
            scale = w / np.sqrt(var + eps)
            return {"c_scale": scale, "c_shift": b - mean * scale}
        sz = Sizes()
        return KernelStep(group, channel_affine_kernel(kname, shape, chain, comment, sz), pack_bn,
                          sizes=sz)
    if op == "dense":
        bias = len(pnames) > 1

        def pack_dense(params, pnames=pnames):
            out = {"c_w": params[pnames[0]]}
            if len(pnames) > 1:
                out["c_b"] = params[pnames[1]]
            return out
        k = dense_kernel(kname, shape[0], a["out_features"], bias, chain, comment)
        return KernelStep(group, k, pack_dense)
    if op in POOL_OPS:
        sz = Sizes()
        k = pool_kernel(kname, op, shape, out_shape[1:], a, comment, sz)
        return KernelStep(group, k, sizes=sz)
    if op in ("globalavgpool", "globalmaxpool"):
        sz = Sizes()
        return KernelStep(group, global_pool_kernel(kname, op, shape, comment, sz), sizes=sz)
    if op == "upsample":
        return KernelStep(group, upsample_kernel(kname, shape, out_shape[1:], a, comment))
    if op in ("softmax", "log_softmax"):
        sz = Sizes()
        k = softmax_kernel(kname, shape, a["axis"], op == "log_softmax", comment, sz)
        return KernelStep(group, k, sizes=sz)
    if op == "groupnorm":
        def pack_gn(params, pnames=pnames):
            return {"c_weight": params[pnames[0]], "c_bias": params[pnames[1]]}
        k = groupnorm_kernel(kname, shape, a["groups"], a["eps"], comment)
        return KernelStep(group, k, pack_gn)
    if op == "lrn":
        k = lrn_kernel(kname, shape, a["size"], a["alpha"], a["beta"], a["k"], comment)
        return KernelStep(group, k)
    if op == "concat":
        sz = Sizes()
        return KernelStep(group, concat_kernel(kname, in_shapes, a["axis"], comment, sz),
                          sizes=sz)
    if op == "pad":
        return KernelStep(group, pad_kernel(kname, shape, a["pads"], a["value"], comment))
    if op == "flip":
        return KernelStep(group, flip_kernel(kname, shape, a["axis"], comment))
    if op == "distance":
        k = distance_kernel(kname, int(np.prod(shape)), float(a["p"]), comment)
        return KernelStep(group, k)
    raise LoweringError(f"no lowering for op {op!r} (layer {node.name!r})")


# ---------------------------------------------------------------------------------------------
# Whole graphs
# ---------------------------------------------------------------------------------------------


@dataclass
class Lowered:
    """The steps of a graph, its generated model module and every generated source."""

    steps: list[Step]
    module: Any
    source: str
    module_path: str
    extra_sources: dict[str, str]


def resolve_lowering(graph: Graph, lowering: str | Mapping[str, str]) -> dict[int, str]:
    """Per conv node id: ``direct`` or ``im2col``. ``lowering`` is one choice for every node or
    a mapping from layer name to choice (others ``auto``)."""
    per_name: Mapping[str, str]
    if isinstance(lowering, str):
        default, per_name = lowering, {}
    else:
        default, per_name = "auto", dict(lowering)
    names = {n.name for n in graph.nodes()}
    for name, choice in [("(all)", default), *per_name.items()]:
        if choice not in LOWERINGS:
            raise LoweringError(f"lowering for {name} must be one of {', '.join(LOWERINGS)}, "
                                f"got {choice!r}")
        if name != "(all)" and name not in names:
            raise LoweringError(f"--lowering names layer {name!r}, which the network does not "
                                "have")
    out = {}
    for n in graph.nodes():
        if n.op in ("conv", "conv_transpose"):
            choice = per_name.get(n.name, default)
            out[n.id] = "direct" if choice == "auto" else choice
    return out


def _dedup(steps: list[Step]) -> tuple[list[Kernel], dict[str, str]]:
    """Kernels with identical code are compiled once; the survivor's comment lists every
    layer that uses it. Returns the kernels to print and a map kernel name -> function name."""
    first: dict[str, Kernel] = {}
    names: dict[str, str] = {}
    comments: dict[str, list[str]] = {}
    order: list[str] = []
    for step in steps:
        for k in step.kernels():
            key = print_kernel(replace(k, name="k", comment=""), with_comment=False,
                               fastmath=False)
            if key not in first:
                first[key] = k
                order.append(key)
                comments[key] = [k.comment]
            else:
                comments[key].append(k.comment)
            names[k.name] = first[key].name
    kernels = []
    for key in order:
        lines = "\n".join(comments[key]).split("\n")
        if len(lines) > 12:
            lines = lines[:11] + [f"... and {len(lines) - 11} more"]
        kernels.append(replace(first[key], comment="\n".join(lines)))
    return kernels, names


def _conv_map(steps: list[Step]) -> str:
    """Comment lines naming, per convolution layer, the cached module that runs it."""
    lines = []
    for s in steps:
        if isinstance(s, ConvStep):
            where = "; ".join(describe_node(n) for n in s.group.nodes)
            file = _conv_file(s.ck)
            lines.append(f"# {sanitize_comment(where)} -> {s.lowering} {sanitize_comment(file)}")
    if not lines:
        return ""
    return "\n\n# Convolutions run by kernels of their own cached modules:\n" + \
        "\n".join(lines) + "\n"


def _shared_name(kernel: Kernel) -> str:
    """The function name of a kernel in its shared module: the op part of ``n12_maxpool``."""
    name = kernel.name
    if name.startswith("n") and "_" in name and name[1:name.index("_")].isdigit():
        name = name[name.index("_") + 1:]
    return f"k_{name}"  # never a builtin (abs, max, ...) the kernel body may call


def shared_source(kernel: Kernel) -> tuple[str, str]:
    """``(function name, module source)`` of a kernel's shared module: no layer text, so
    every layer and model with the same code uses (and caches) the same module."""
    fname = _shared_name(kernel)
    src = print_module([replace(kernel, name=fname, comment="")],
                       header=f"{fname} kernel (sizes are runtime arguments)", fastmath=False)
    return fname, src


def lower_graph(graph: Graph, lowering: str | Mapping[str, str] = "auto", *, fuse: bool = True,
                cache_dir: str | Path | None = None) -> Lowered:
    """Lower every fusion group and load each distinct kernel from its shared cached module.

    ``source`` is a readable listing of the model's kernels with the layers that use them (what
    ``--emit`` writes as the model file); the code that runs is in the shared modules, one per
    distinct kernel (``extra_sources``), compiled in parallel on a cold cache (``warm.py``).
    """
    choice = resolve_lowering(graph, lowering)
    steps: list[Step] = []
    with _cache_dir(cache_dir):
        for group in fuse_groups(graph, fuse):
            steps.append(lower_group(graph, group, choice.get(group.anchor.id, "kernel")))
    kernels, names = _dedup(steps)
    header = f"network {graph.name}: {len(kernels)} kernels (listing; each runs from its " \
             "shared module)"
    source = print_module(kernels, header=header, fastmath=False) + _conv_map(steps)
    funcs: dict[str, Any] = {}
    extra: dict[str, str] = {}
    modules = []
    for k in kernels:
        fname, src = shared_source(k)
        mod = cache.load_module(src, fname, cache_dir)
        funcs[k.name] = getattr(mod, fname)
        modules.append((mod, fname, k))
        extra[Path(getattr(mod, "__file__", fname)).parent.name + ".py"] = src
    from . import warm  # noqa: PLC0415 - optional speed-up, imported when needed

    warm.warm_modules(warm.jobs_for(modules, steps))
    for s in steps:
        s.bind(funcs, names)
    for s in steps:
        extra.update(s.sources())
    # A file in the cache (commands.py shows its grandparent as the cache folder).
    paths = [getattr(m, "__file__", "") for m, _, _ in modules] + \
        [s.ck.path or "" for s in steps if isinstance(s, ConvStep)]
    return Lowered(steps, funcs, source, next((p for p in paths if p), ""), extra)
