"""The operator registry: everything about one op lives in one `OpDef`, defined in one file.

An op family file (conv.py, pool.py, ...) defines, next to each other, for each op:
- `signature`: the attribute schema, in DSL positional order, with defaults;
- `canonicalize`: DSL-level attribute values -> canonical attributes (e.g. `pad=same` -> four
  explicit sides), given the input types;
- `params`: the parameter tensors the op owns (name, shape, initializer, trainable);
- `infer`: the shape rule, raising `ShapeError` with an exact message;
- `reference`: obviously-correct float64 NumPy semantics;
- `macs`: multiply-accumulate count per sample (FLOPs are 2 x MACs for convolutions and dense);

and the rules the middle of the compiler reads:
- `lower`: how the op becomes kernels (``lower(ctx, node) -> plan.Step``: it calls the kernel
  builders of ``compiler/kernels`` and makes its step through ``ctx``, the lowering driver's
  context); None for ops that never reach code generation (parameter-time ops, which the
  executor evaluates in float64 when parameters are set);
- `epilogue`: how the op is applied at another kernel's store (``epilogue(x, attrs, operand)``
  returns a kernel-IR expression; ``operand`` is the loaded second tensor of a binary op);
- `takes_epilogue`: which epilogues the op's kernels can apply at their store: ``none``,
  ``unary`` (activations only) or ``any`` (also a second tensor: residual add, gates);
- `vector_epilogue`: the same on an 8-lane vector, where the op has one (ReLU is a ``vmax``);
- `layouts`: the activation layouts its kernels can work in; `layout_rule(node, in_types)`
  says, for one node, which layouts its first input may arrive in and which its output may be
  stored in (``select_layout`` keeps channel-blocked NCHW8c between such kernels);
- `algorithms`: the algorithms a pass may choose between (conv: direct, channel-wise, im2col),
  objects with a ``name``, the ``family`` a user asks for, ``applies_to(node, in_types)`` and
  ``estimate(node, in_types, lanes)`` (``compiler/ops/conv/algorithms.py``); the node records
  the chosen one's name (``lowering``);
- `out_blocks`: how many channel blocks its blocked kernel writes (``out_blocks(node,
  in_types, lanes)``; None: the channels rounded up to whole blocks);
- `pack`: the parameter-time node its constants are packed by for its kernel (``pack(graph,
  node, x_storage, y_storage) -> (op, inputs, attrs)``; the ``pack_weights`` pass adds it as
  the node's last input, ``packed``);
- `view`: the output aliases the input buffer (flatten, reshape, dropout, identity);
- `inplace`: the kernel may write its output over its first input;
- `gradient`: the backward rule, as other IR ops (``gradient(d) -> [input gradients]``, ``d`` a
  ``compiler.autodiff.GradBuilder``); `backward` marks the ops only those rules make;
- `training_form`: how the op computes in a training graph where that differs from inference
  (batch norm: batch statistics; dropout: a seeded mask): ``training_form(graph, node,
  updates)`` rewrites the node in place of itself (``compiler.autodiff.attach_loss`` applies it
  to every node); where it updates a parameter each step (running statistics) it reads the
  parameter's value so far as ``updates.get(param id, param id)`` and records the new value's
  node as ``updates[param id]`` (a layer applied twice updates twice, in order, as PyTorch's);
- `error_bound`: how far a float32 kernel of the op may be from its float64 reference, per
  output element (`cnnc check`; the rule factories below: ``sum_bound``, ``exact_bound``, ...).

The registry test fails when an op lacks one of the first group, or a lowering without being
on its explicit list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..decisions import (
    epilogue_of,
    operand_kind,
    own_attrs,
    own_input_count,
    prologue_of,
)
from ..kernels.kernel_ir import VZero
from ..types import BLOCKED, PLAIN, TensorType, in_every_blocked_layout


class ShapeError(Exception):
    """A shape rule rejected its inputs; the message says what was given and what is valid.

    The message starts with the op's name ("conv: window 5 is larger than ...")."""


class AttrError(Exception):
    """An attribute value is invalid; `attr` names the offending attribute.

    The message names the attribute, not the op: callers (the DSL builder, the ONNX importer)
    prefix the op and point at the argument."""

    def __init__(self, message: str, attr: str | None = None):
        super().__init__(message)
        self.attr = attr


class LoweringError(Exception):
    """An op's lowering rule cannot lower a node (a bug or a missing rule)."""


REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its name, the kind of value it takes, and its default."""

    name: str
    kind: str  # int | float | bool | ints | pads | choice | tensor | shape | any
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    doc: str = ""


@dataclass(frozen=True)
class ParamSpec:
    """A parameter tensor owned by an op instance: `<layer>.<suffix>`."""

    suffix: str
    shape: tuple[int, ...]
    init: str  # he | glorot | zeros | ones | prelu (0.25) | uniform_fan_in | literal
    trainable: bool = True
    value: np.ndarray | None = None  # literal (fixed) weights
    fan_in: int = 0
    fan_out: int = 0


Arrays = Sequence[np.ndarray]


@dataclass
class OpDef:
    name: str
    family: str
    signature: tuple[Attr, ...]
    infer: Callable[[list[TensorType], dict[str, Any]], TensorType]
    reference: Callable[[Arrays, dict[str, Any]], np.ndarray]
    macs: Callable[[list[TensorType], TensorType, dict[str, Any]], int]
    canonicalize: Callable[[dict[str, Any], list[TensorType]], dict[str, Any]] | None = None
    params: Callable[[dict[str, Any], list[TensorType]], list[ParamSpec]] | None = None
    # How many tensor inputs the op takes from the program (params excluded): an int,
    # or None for "one or more" (concat, add).
    arity: int | None = 1
    doc: str = ""
    aliases: tuple[str, ...] = ()
    # Whether the op's output counts as new activations ("neurons") in the accounting, as the
    # seeds' tables count them: convolution, pooling and dense outputs do; activation
    # functions, normalization applied in place, and reshapes do not.
    new_activations: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    lower: Callable[[Any, Any], Any] | None = None
    epilogue: Callable[[Any, dict[str, Any], Any], Any] | None = None
    # The same on an 8-lane vector (None for these attributes: the kernel then applies the op
    # per lane with ``epilogue``).
    vector_epilogue: Callable[[Any, dict[str, Any], Any], Any] | None = None
    # (accepted layouts of the first input, producible output layouts) for a node.
    layout_rule: Callable[[Any, list[TensorType]], tuple[tuple[str, ...], tuple[str, ...]]] \
        | None = None
    # (node, in_types) -> whether its channel-blocked kernel writes every lane of every block
    # of its output (padding lanes included) and can zero the output's halo on each call
    # (``zero_halo``): such a value may take any free arena slot (``plan_memory``).
    writes_whole_blocks: Callable[[Any, list[TensorType]], bool] | None = None
    # (node, in_types) -> whether, where its output stays plain NCHW, its compute kernel
    # still writes channel-blocked scratch that a second kernel unpacks (a convolution's
    # blocked algorithms): its epilogue's vector ops may then be applied at the compute
    # kernel's store (``select_layout``'s ``store_epilogue``)
    unpacks_output: Callable[[Any, list[TensorType]], bool] | None = None
    # (node, in_types, lanes) -> blocks of ``lanes`` channels its blocked kernel writes
    out_blocks: Callable[[Any, list[TensorType], int], int] | None = None
    # (graph, node, storage of its first input, storage of its output) -> the parameter-time
    # node that packs, pads or transforms its constants for its kernel, as (op, inputs,
    # attributes), or None where the kernel reads them as they are (``pack_weights`` pass)
    pack: Callable[[Any, Any, Any, Any], tuple[str, list[int], dict[str, Any]] | None] \
        | None = None
    takes_epilogue: str = "none"  # none | unary | any
    layouts: tuple[str, ...] = ("NCHW",)
    algorithms: tuple[Any, ...] = ()
    view: bool = False
    inplace: bool = False
    # Parameter-time ops (derived parameters such as folded batch-norm weights): not in the
    # DSL, evaluated in float64 whenever parameters are set, never lowered.
    internal: bool = False
    # A parameter-time op made by the last pass for its one user (packed weights): scheduled
    # with that user, so adding it leaves the order of the computation as it was.
    made_for_user: bool = False
    # A parameter-time op whose reference only moves, copies or zero-fills values (packing,
    # transposes, phase filters): exact in any precision, so it is evaluated on the float32
    # parameters as they are, keeping their dtype, where a computing one gets float64 copies.
    moves_values: bool = False
    # ``(inputs, attrs, out)``: a ``moves_values`` op's reference written into ``out`` (float32,
    # its value's shape) instead of a new array. A training step makes every packing again after
    # each update: into the last one's memory, where new arrays of ResNet-18's 47 MB of packed
    # weights cost page faults every other step, more than the copies themselves.
    reference_into: Callable[[Arrays, dict[str, Any], np.ndarray], Any] | None = None
    # Compute ops only a pass creates (``channel_gather``): lowered like any op, but not in the
    # DSL and with no ONNX form.
    pass_made: bool = False
    # (GradBuilder) -> one gradient node id per input (None where none is needed): the op's
    # backward rule as other IR ops (``compiler/autodiff.py``); None: the op cannot be trained
    # through, and autodiff refuses it by name.
    gradient: Callable[..., Any] | None = None
    # An op of the backward graph only autodiff makes (``activation_grad``, ``pool_grad``...):
    # made with canonical attributes, checked against finite differences through the forward
    # op whose gradient it is (tests/training).
    backward: bool = False
    # (graph, node, updates) -> None: the node rewritten into its training-mode computation
    # (the module docstring); None: the op computes the same in training and inference.
    training_form: Callable[[Any, Any, dict[int, int]], None] | None = None
    # (BoundCtx) -> per-element bound on |float32 kernel - float64 reference| (``cnnc check``);
    # built with one of the factories below, each documenting the analysis it encodes.
    error_bound: Callable[[BoundCtx], Any] | None = None

    def attr(self, name: str) -> Attr | None:
        for a in self.signature:
            if a.name == name:
                return a
        return None

    def param_specs(self, attrs: dict[str, Any], in_types: list[TensorType]) -> list[ParamSpec]:
        return self.params(attrs, in_types) if self.params else []


_REGISTRY: dict[str, OpDef] = {}
_ALIASES: dict[str, str] = {}


def register(op: OpDef) -> OpDef:
    if op.name in _REGISTRY:
        raise ValueError(f"op {op.name!r} registered twice")
    _REGISTRY[op.name] = op
    for alias in op.aliases:
        _ALIASES[alias] = op.name
    return op


def get_op(name: str) -> OpDef:
    _load_families()
    name = _ALIASES.get(name, name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    _load_families()
    return dict(_REGISTRY)


def all_names() -> list[str]:
    """Op names and aliases, as the DSL accepts them (parameter-time ops excluded)."""
    _load_families()
    public = {n for n, op in _REGISTRY.items() if not (op.internal or op.pass_made)}
    return sorted(public | {a for a, n in _ALIASES.items() if n in public})


_LOADED = False


def _load_families() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import (  # noqa: F401
        activation,
        collective,
        conv,
        dense,
        detect,
        loss,
        norm,
        pool,
        rearrange,
        resize,
        roi,
        tensor,
    )


# ---------------------------------------------------------------------------------------------
# A node through its op's rules: its own inputs (fused operands excluded, the first through
# the prologue), its type, its float64 value (``compiler/decisions.py`` holds the records).
# ---------------------------------------------------------------------------------------------

def own_input_types(in_types: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """The types the op's own rule sees: its own inputs, the first through the prologue."""
    types = list(in_types[:own_input_count(len(in_types), attrs)])
    for pre in prologue_of(attrs):
        types[0] = get_op(pre.op).infer([types[0]], pre.attr_dict)
    return types


def _through_prologue(inputs: Arrays, attrs: dict[str, Any]) -> list[np.ndarray]:
    """The op's own inputs as its reference sees them (the first through the prologue)."""
    args = list(inputs[:own_input_count(len(inputs), attrs)])
    for pre in prologue_of(attrs):
        args[0] = get_op(pre.op).reference([args[0]], pre.attr_dict)
    return args


def infer_node(op: str, in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """The type of a node: the op's shape rule on its own inputs; a fused epilogue keeps that
    type, and each binary operand must broadcast to it (never widen it)."""
    out = get_op(op).infer(own_input_types(in_types, attrs), own_attrs(attrs))
    for e in epilogue_of(attrs):
        if e.operand is not None:
            t = in_types[e.operand]
            if operand_kind(t.shape, out.shape) is None:
                raise ShapeError(f"{op}: fused {e.op} operand {t} does not broadcast to {out}")
    return out


def is_constant(graph: Any, node: Any) -> bool:
    """A parameter, or a node evaluated when parameters are set (derived parameters and
    folded constants): its value does not depend on the network's inputs."""
    return node.op == "param" or get_op(node.op).internal or \
        bool(node.attrs.get("parameter_time"))


def writes_whole_blocks(graph: Any, node: Any) -> bool:
    """The op's rule (``OpDef.writes_whole_blocks``): its channel-blocked kernel writes every
    lane of every block of its output and can zero the output's halo on each call."""
    rule = get_op(node.op).writes_whole_blocks
    return rule is not None and rule(node, [graph.node(i).type for i in node.inputs])


def unpacks_output(graph: Any, node: Any) -> bool:
    """The op's rule (``OpDef.unpacks_output``): its compute kernel writes channel-blocked
    scratch that a second kernel unpacks to the plain output."""
    rule = get_op(node.op).unpacks_output
    return rule is not None and rule(node, [graph.node(i).type for i in node.inputs])


def has_vector_epilogue(op: str, attrs: dict[str, Any]) -> bool:
    """Whether the operand-free epilogue op ``op`` has a vector form for ``attrs`` (its
    ``vector_epilogue`` rule gives one: leaky ReLU only for slopes in [0, 1])."""
    rule = get_op(op).vector_epilogue
    return rule is not None and rule(VZero(), attrs, None) is not None


def node_macs(graph: Any, node: Any) -> int:
    """Multiply-accumulates per image of one node: its op's ``macs`` rule on its own inputs."""
    types = own_input_types([graph.node(i).type for i in node.inputs], node.attrs)
    return get_op(node.op).macs(types, node.type, own_attrs(node.attrs))


def count_macs(graph: Any) -> int:
    """Multiply-accumulates per image of a graph's per-call work (each op's ``macs`` rule on
    its own inputs; parameter-time nodes are not per-call work)."""
    total = 0
    for node in graph.compute_nodes():
        op = get_op(node.op)
        if op.internal or node.attrs.get("parameter_time"):
            continue
        total += node_macs(graph, node)
    return total


def elementwise_layouts(node: Any, in_types: list[TensorType]) -> tuple[tuple[str, str], ...]:
    """The layout rule of element-wise ops: their kernels run over NCHW8c, NCHW16c and NHWC
    storage too (a per-channel gate operand stays plain ``[N, C]``)."""
    if in_types[0].rank != 3:
        return ((PLAIN, PLAIN),)
    return in_every_blocked_layout(((PLAIN, PLAIN), (BLOCKED, BLOCKED)))


def evaluate(op: str, inputs: Arrays, attrs: dict[str, Any],
             out: np.ndarray | None = None) -> np.ndarray:
    """The float64 reference of a node, its fused epilogue included: the op's reference on
    its own inputs, then each epilogue op's reference in order. ``out``: an array of the
    value's shape and dtype that an op with a ``reference_into`` rule and no fused ops writes
    its value into (and returns); other ops make a new array."""
    into = get_op(op).reference_into
    if out is not None and into is not None and not epilogue_of(attrs) and \
            not prologue_of(attrs):
        into(inputs, own_attrs(attrs), out)
        return out
    y = get_op(op).reference(_through_prologue(inputs, attrs), own_attrs(attrs))
    for e in epilogue_of(attrs):
        args = [y] if e.operand is None else [y, inputs[e.operand]]
        y = get_op(e.op).reference(args, e.attr_dict)
    return y


# ---------------------------------------------------------------------------------------------
# Error bounds of float32 kernels (``cnnc check``): each op's ``error_bound`` rule.
# ---------------------------------------------------------------------------------------------

#: Unit roundoff of float32 (round to nearest): every float32 operation is exact to a relative
#: 2^-24 ~ 6e-8. ``EPS64`` is float64's.
EPS32 = 2.0 ** -24
EPS64 = 2.0 ** -53
#: One call of a float32 transcendental function (exp, tanh, erf, pow, sqrt): glibc documents
#: at most 1-2 ulps for expf, tanhf, erff and powf on x86-64 (1 ulp <= 2 EPS32); we allow 4
#: ulps, in units of EPS32.
TRANSCENDENTAL = 8.0
#: Errors below the smallest normal float32 never count: a kernel may produce a subnormal (or,
#: with flush-to-zero, a zero) where the reference has another tiny value.
ERROR_FLOOR = float(np.finfo(np.float32).tiny)


@dataclass
class BoundCtx:
    """What an op's ``error_bound`` rule sees: its inputs in float64 (the values the kernel
    read: float32 activations, parameters as the kernel's float32 constants round them), its
    attributes, its reference output ``out``, ``err_in`` (a bound on the error already in
    ``inputs[0]``: 0 for a kernel's own inputs, the bound so far for a fused epilogue op),
    ``terms`` (the op's multiply-accumulates per output element, from its ``macs`` rule) and
    the op's ``reference``; ``lowering``: the algorithm the node records, if any (a
    convolution's bound depends on it)."""

    inputs: list[np.ndarray]
    attrs: dict[str, Any]
    out: np.ndarray
    err_in: Any
    terms: float
    reference: Callable[[Arrays, dict[str, Any]], np.ndarray]
    lowering: str | None = None

    def absolute(self, reference: Callable[[Arrays, dict[str, Any]], np.ndarray] | None = None
                 ) -> np.ndarray:
        """``reference`` (default the op's) on the absolute values of the inputs: for a sum of
        products with non-negative coefficients (convolution, dense, average, add), the sum of
        |terms| of each output."""
        return (reference or self.reference)([np.abs(a) for a in self.inputs], self.attrs)


def _value(v: Any, attrs: dict[str, Any]) -> Any:
    return v(attrs) if callable(v) else v


def sum_bound(terms: Callable[[BoundCtx], float] | None = None, extra: float = 2.0,
              via: Callable[[Arrays, dict[str, Any]], np.ndarray] | None = None):
    """Outputs are sums of K products computed in float32 (convolution, dense, average
    pooling, add). Whatever the summation order (direct, im2col, blocked, FMA or not),
    ``|fl(sum) - sum| <= gamma_K * sum |terms|`` (Higham, Accuracy and Stability, 3.1), so

        bound = err_in + (K + extra) * EPS32 * sum |terms|

    with sum |terms| the op's reference on |inputs| (``via``: the reference to use instead
    where the op's is not monotone in |inputs|, as for sub), K = ``terms(ctx)`` (default: the
    op's multiply-accumulates per output element) and ``extra`` further roundings (default 2:
    the weights rounded to float32, often float64-derived ones such as folded batch norm, and
    the bias)."""

    def rule(ctx: BoundCtx) -> np.ndarray:
        k = terms(ctx) if terms is not None else ctx.terms
        return ctx.err_in + (k + extra) * EPS32 * ctx.absolute(via)
    return rule


def f64_sum_bound(terms: Callable[[BoundCtx], float], extra: float = 2.0,
                  via: Callable[[Arrays, dict[str, Any]], np.ndarray] | None = None):
    """A sum accumulated in float64 and rounded once to float32 at the store (resizing):
    ``EPS32 * |out| + (K + extra) * EPS64 * sum |terms|``, sum |terms| as ``sum_bound`` takes
    it (``via``: where the op's reference is not monotone in |inputs|, as bicubic's negative
    weights make it)."""

    def rule(ctx: BoundCtx) -> np.ndarray:
        return ctx.err_in + EPS32 * np.abs(ctx.out) + \
            (terms(ctx) + extra) * EPS64 * ctx.absolute(via)
    return rule


def exact_bound():
    """Outputs are input values moved or chosen (max/min pooling, concat, pad, flip, slices,
    nearest upsampling): exact, so the bound is the error already in the input (0 for a
    kernel's own inputs; a selection never grows an error)."""

    def rule(ctx: BoundCtx) -> np.ndarray:
        return np.zeros_like(ctx.out) + ctx.err_in
    return rule


def pointwise_bound(lipschitz: Any = 1.0, rel: Any = 0.0, rel_in: Any = 0.0):
    """An element-wise function f (activations) applied in float32:

        bound = lipschitz * err_in + EPS32 * (rel * |f(x)| + rel_in * |x|)

    ``lipschitz`` bounds |f'| (an input error grows at most that much through f); ``rel``
    counts the roundings and transcendental calls relative to the result (``TRANSCENDENTAL``
    per call), ``rel_in`` those relative to the input where f cancels (gelu's 1 + erf(x) for
    x << 0). Each may be a function of the attributes."""

    def rule(ctx: BoundCtx) -> np.ndarray:
        a = ctx.attrs
        return _value(lipschitz, a) * ctx.err_in + EPS32 * (
            _value(rel, a) * np.abs(ctx.out) + _value(rel_in, a) * np.abs(ctx.inputs[0]))
    return rule


def evaluate_bound(op: str, inputs: Arrays, attrs: dict[str, Any],
                   terms: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The float64 reference of a node, as :func:`evaluate`, and a bound per output element
    on how far a float32 kernel computing it on these (float32-representable) inputs may be:
    the op's ``error_bound`` on its own inputs, then each fused epilogue op's rule, which
    carries the error so far through the op (its ``err_in``) and adds its own rounding.
    ``terms``: the node's multiply-accumulates per output element (``node_macs``)."""

    def step(name: str, args: list[np.ndarray], a: dict[str, Any], err_in: Any,
             k: float, lowering: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        d = get_op(name)
        if d.error_bound is None:
            raise ValueError(f"op {name!r} has no error_bound rule (compiler/ops)")
        y = d.reference(args, a)
        return y, d.error_bound(BoundCtx(args, a, y, err_in, k, d.reference, lowering))

    own = list(inputs[:own_input_count(len(inputs), attrs)])
    err_in: Any = 0.0
    for pre in prologue_of(attrs):  # computed in float32 by the same kernel
        own[0], pre_bound = step(pre.op, [own[0]], pre.attr_dict, err_in, 0.0)
        err_in = pre_bound
    y, bound = step(op, own, own_attrs(attrs), 0.0, terms, attrs.get("lowering"))
    if np.any(err_in):
        # an error e in the first input of an affine op moves each output by at most the
        # op's linear part applied to e with |other inputs|: ref(|x| + e) - ref(|x|)
        a = own_attrs(attrs)
        mags = [np.abs(v) for v in own]
        bound = bound + get_op(op).reference([mags[0] + err_in, *mags[1:]], a) - \
            get_op(op).reference(mags, a)
    for e in epilogue_of(attrs):
        args = [y] if e.operand is None else [y, inputs[e.operand]]
        y, bound = step(e.op, args, e.attr_dict, bound, 0.0)
    # the reference is float64, not exact: a few EPS64 of its own (this matters only where the
    # float32 bound is a single rounding, which a correct kernel may come within a hair of)
    return y, np.broadcast_to(bound + 4 * EPS64 * np.abs(y), y.shape)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the op families: attribute coercion with exact messages.
# ---------------------------------------------------------------------------------------------


def as_int(value: Any, attr: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AttrError(f"{attr} must be an integer, got {show_value(value)}", attr)
    if minimum is not None and value < minimum:
        raise AttrError(f"{attr} must be at least {minimum}, got {value}", attr)
    return int(value)


def as_float(value: Any, attr: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise AttrError(f"{attr} must be a number, got {show_value(value)}", attr)
    return float(value)


def as_bool(value: Any, attr: str) -> bool:
    if not isinstance(value, bool):
        raise AttrError(f"{attr} must be true or false, got {show_value(value)}", attr)
    return value


def as_pair(value: Any, attr: str, minimum: int | None = 1) -> tuple[int, int]:
    """An int or a pair of ints (height, width)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise AttrError(f"{attr} takes one integer or two (height, width), got {len(value)}",
                            attr)
        return (as_int(value[0], attr, minimum), as_int(value[1], attr, minimum))
    v = as_int(value, attr, minimum)
    return (v, v)


def as_choice(value: Any, attr: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise AttrError(f"{attr} must be one of {', '.join(choices)}; got {show_value(value)}",
                        attr)
    return value


def show_value(value: Any) -> str:
    """A value as an error message shows it: true/false, an array by its shape, a tensor by
    its type, a string quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    if isinstance(value, TensorType):
        return f"a tensor {value}"
    return repr(value) if isinstance(value, str) else str(value)


def require_rank(t: TensorType, rank: int, op: str, what: str = "input") -> None:
    if t.rank != rank:
        names = {3: "channels x height x width", 1: "features"}
        raise ShapeError(
            f"{op} needs a {names.get(rank, f'rank-{rank}')} {what}, got {t}"
        )


def one_input(fn: Callable[[np.ndarray, dict[str, Any]], np.ndarray]):
    """Adapt a reference over one array to the registry's list-of-inputs calling convention."""

    def ref(inputs: Arrays, attrs: dict[str, Any]) -> np.ndarray:
        return fn(inputs[0], attrs)

    ref.__doc__ = fn.__doc__
    return ref


def no_macs(in_types: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> int:
    return 0


def same_shape(in_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return in_types[0]
