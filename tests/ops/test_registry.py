"""The op registry is complete: every op has each part of an `OpDef`, and the parts agree.

Every registered op needs a signature, infer, reference, macs and a doc string; a canonicalize
where it has attributes; params where it owns weights. An op may lack one only if it is on an
allow-list below, with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnnc.compiler.ir import TensorType
from cnnc.compiler.ops import (
    REQUIRED,
    Attr,
    OpDef,
    ParamSpec,
    all_names,
    all_ops,
    evaluate_bound,
    get_op,
)

OPS = all_ops()

# Ops that have attributes but no canonicalize, and why.
NO_CANONICALIZE = {
    "input": "a graph leaf: the builder sets its type directly; nothing to canonicalize",
    "param": "a graph leaf: init/trainable/fan_in/fan_out are set by the builder from ParamSpec",
}
# Ops that own parameter tensors.
WEIGHTED = {"conv", "conv_transpose", "dense", "batchnorm", "groupnorm", "instance_norm", "prelu"}
# Ops that are not computed from inputs: sample calls, reference and macs do not apply.
LEAVES = {"input": "values supplied by the caller", "param": "values supplied by the caller"}

ATTR_KINDS = {"int", "float", "bool", "ints", "pads", "choice", "tensor", "shape", "any"}

# A typical call of each op: per-sample input shapes and the DSL attributes it needs.
SAMPLES: dict[str, tuple[list[tuple[int, ...]], dict[str, Any]]] = {
    "conv": ([(4, 9, 8)], {"out_channels": 6, "kernel": 3, "stride": 2, "pad": 1,
                           "groups": 2}),
    "conv_transpose": ([(4, 5, 6)], {"out_channels": 6, "kernel": 3, "stride": 2,
                                     "output_padding": 1, "groups": 2}),
    "maxpool": ([(3, 9, 8)], {"kernel": 3, "stride": 2, "ceil_mode": True}),
    "minpool": ([(3, 9, 8)], {"kernel": 2}),
    "avgpool": ([(3, 9, 8)], {"kernel": 3, "stride": 2, "pad": 1}),
    "lppool": ([(3, 9, 8)], {"kernel": 2}),
    "globalavgpool": ([(3, 5, 4)], {}),
    "globalmaxpool": ([(3, 5, 4)], {}),
    "upsample": ([(3, 4, 5)], {"mode": "bilinear"}),
    "dense": ([(12,)], {"out_features": 5}),
    "flatten": ([(3, 4, 5)], {}),
    "reshape": ([(3, 4, 5)], {"shape": (5, -1)}),
    "pad": ([(3, 4, 5)], {"pad": (1, 2, 3, 4)}),
    "flip": ([(3, 4, 5)], {}),
    "dropout": ([(3, 4, 5)], {}),
    "identity": ([(3, 4, 5)], {}),
    "relu": ([(3, 4, 5)], {}),
    "leaky_relu": ([(3, 4, 5)], {}),
    "relu6": ([(3, 4, 5)], {}),
    "sigmoid": ([(3, 4, 5)], {}),
    "hard_sigmoid": ([(3, 4, 5)], {}),
    "tanh": ([(3, 4, 5)], {}),
    "swish": ([(3, 4, 5)], {}),
    "hard_swish": ([(3, 4, 5)], {}),
    "gelu": ([(3, 4, 5)], {}),
    "abs": ([(3, 4, 5)], {}),
    "softmax": ([(3, 4, 5)], {}),
    "log_softmax": ([(10,)], {}),
    "batchnorm": ([(3, 4, 5)], {}),
    "groupnorm": ([(6, 4, 5)], {"groups": 3}),
    "lrn": ([(7, 4, 5)], {}),
    "add": ([(3, 4, 5), (3, 1, 1)], {}),
    "mul": ([(3, 4, 5), (3, 1, 1)], {}),
    "sub": ([(3, 4, 5), (1, 4, 5)], {}),
    "concat": ([(3, 4, 5), (2, 4, 5)], {}),
    "distance": ([(16,), (16,)], {}),
    "channel_slice": ([(24, 5, 4)], {"start": 8, "stop": 20}),
    "elu": ([(3, 4, 5)], {}),
    "selu": ([(3, 4, 5)], {}),
    "softplus": ([(3, 4, 5)], {}),
    "mish": ([(3, 4, 5)], {}),
    "prelu": ([(3, 4, 5)], {}),
    "instance_norm": ([(3, 4, 5)], {}),
    "cross_entropy": ([(5,), ()], {}),
    "mse": ([(3, 4, 5), (3, 4, 5)], {}),
    "weighted_sum": ([(3, 4, 5), (3, 4, 5)], {}),
    "modified_backward": ([(3, 4, 5)], {"of": "tanh", "rule": "guided"}),
    "bce_with_logits": ([(3, 4, 5), (3, 4, 5)], {}),
    "triplet": ([(6,), (6,), (6,)], {"margin": 0.5}),
    "contrastive": ([(1,), (1,)], {"margin": 2.0}),
    "localization": ([(7,), (5,)], {"box_weight": 0.5}),
    "loss_sum": ([(), ()], {"weights": (1.0, 0.3)}),
    # the training forms' ops (compiler/autodiff.attach_loss), canonical attributes
    "batch_mean": ([(3, 4, 5)], {}),
    "batch_var": ([(6,), (6,)], {}),
    "batchnorm_train": ([(3, 4, 5), (3,), (3,), (3,), (3,)], {"eps": 1e-5}),
    "running_update": ([(3,), (3,), (3, 4, 5)], {"momentum": 0.1, "unbiased": True}),
    "dropout_train": ([(3, 4, 5), (3,)], {"rate": 0.25, "stream": 7}),
    # synchronized batch norm's statistics (compiler/passes/sync_batch_norm.py)
    "allreduce_mean": ([(3,)], {}),
    # detection (compiler/ops/detect.py): boxes, a 2-anchor 2-class grid, decoded rows
    "iou": ([(5, 4), (3, 4)], {}),
    "yolo_decode": ([(14, 3, 2)], {"anchors": (1.0, 2.0, 1.5, 0.5), "classes": 2}),
    "nms": ([(12, 6)], {"iou": 0.5, "score": 0.1, "top_k": 3}),
    # RoI pooling (compiler/ops/roi.py): a map and three regions of it
    "roi_maxpool": ([(3, 6, 5), (3, 4)], {"output": (2, 2), "spatial_scale": 0.5}),
    "roi_align": ([(3, 6, 5), (3, 4)], {"output": 2, "sampling_ratio": 2}),
}
#: Inputs of a sample call that are one value for the whole batch (no batch axis): parameters,
#: batch statistics, the dropout seed.
WHOLE_BATCH = {"batch_var": (1,), "batchnorm_train": (1, 2, 3, 4), "running_update": (0, 1),
               "dropout_train": (1,), "loss_sum": (0, 1), "allreduce_mean": (0,)}


def canonical(op: OpDef, in_types: list[TensorType], raw: dict[str, Any]) -> dict[str, Any]:
    full = {a.name: raw.get(a.name, a.default) for a in op.signature}
    missing = [k for k, v in full.items() if v is REQUIRED]
    assert not missing, f"SAMPLES[{op.name!r}] must give {missing}"
    return op.canonicalize(full, in_types) if op.canonicalize else full


# The rearranging ops (compiler/ops/rearrange.py).
SAMPLES.update({
    "depth_to_space": ([(12, 3, 2)], {"block": 2, "mode": "CRD"}),
    "space_to_depth": ([(3, 4, 6)], {"block": 2, "mode": "CRD"}),
    "channel_shuffle": ([(6, 3, 2)], {"groups": 3}),
    "channel_gather": ([(3, 4, 5), (2, 4, 5)], {"channels": ((0, 2), (1, 0), (0, 0), (1, 1))}),
})


def test_registry_is_not_empty_and_names_match():
    assert len(OPS) >= 30
    for name, op in OPS.items():
        assert op.name == name


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_has_every_part(name):
    op = OPS[name]
    assert isinstance(op.signature, tuple) and all(isinstance(a, Attr) for a in op.signature)
    for part in ("infer", "reference", "macs"):
        assert callable(getattr(op, part)), f"{name} has no {part}"
    assert isinstance(op.doc, str) and op.doc.strip(), f"{name} has no doc string"
    assert op.family, f"{name} has no family"
    made = op.internal or op.backward or op.pass_made  # made with canonical attributes
    if op.signature and name not in NO_CANONICALIZE and not made:
        assert callable(op.canonicalize), f"{name} has attributes but no canonicalize"
    if name in WEIGHTED:
        assert callable(op.params), f"{name} owns weights but has no params"
    else:
        assert op.params is None, f"{name} declares params: add it to WEIGHTED in this test"


#: Ops that never reach code generation: graph plumbing, and parameter-time ops (derived
#: parameters), which the executor evaluates in float64 when parameters are set.
NOT_LOWERED = {"input", "param"}
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_has_its_middle_floor_rules(name):
    """Every op says how it lowers (or aliases its input), and its epilogue rules agree."""
    op = OPS[name]
    if op.internal or name in NOT_LOWERED:
        assert op.lower is None and not op.view, f"{name} is never lowered"
        assert name not in all_names() or not op.internal, f"{name} must not be in the DSL"
        return
    assert op.view or callable(op.lower), f"{name} has no lowering rule"
    assert op.takes_epilogue in ("none", "unary", "any")
    assert op.layouts and all(isinstance(x, str) for x in op.layouts)
    if op.epilogue is not None:  # an op that can be fused can also run on its own
        assert callable(op.lower)
    assert op.gradient is None or callable(op.gradient)
    # `cnnc check` bounds every kernel's float32 error by its op's rule (views run no kernel)
    assert op.view or callable(op.error_bound), f"{name} has no error_bound rule"


@pytest.mark.parametrize("name", sorted(OPS))
def test_signature_is_well_formed(name):
    sig = OPS[name].signature
    names = [a.name for a in sig]
    assert len(names) == len(set(names)), f"{name}: duplicate attribute names {names}"
    for a in sig:
        assert a.kind in ATTR_KINDS, f"{name}.{a.name}: unknown kind {a.kind!r}"
        if a.kind == "choice" and a.default is not REQUIRED:
            assert a.default in a.choices, f"{name}.{a.name}: default not among choices"
    # Required attributes come first: the DSL binds positional arguments in this order.
    required = [a.default is REQUIRED for a in sig]
    assert required == sorted(required, reverse=True), f"{name}: required after optional"


def test_aliases_resolve_and_do_not_shadow():
    names = all_names()
    assert len(names) == len(set(names))
    for name, op in OPS.items():
        for alias in op.aliases:
            assert alias not in OPS, f"alias {alias!r} of {name} shadows an op"
            assert get_op(alias) is op
    with pytest.raises(KeyError, match="unknown op 'no_such_op'"):
        get_op("no_such_op")


def test_allow_lists_are_current():
    assert set(NO_CANONICALIZE) <= set(OPS)
    assert WEIGHTED <= set(OPS)
    internal = {n for n, op in OPS.items() if op.internal}  # tested in tests/passes
    # backward ops: tested through the forward op whose gradient they are (tests/training)
    backward = {n for n, op in OPS.items() if op.backward}
    assert set(SAMPLES) == set(OPS) - set(LEAVES) - internal - backward, \
        "every op needs a sample call here"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_parts_agree_on_a_sample(name):
    """canonicalize -> params -> infer -> reference -> macs on a typical call: the reference's
    output has the inferred shape, params have the declared shapes, macs is a count."""
    op = OPS[name]
    shapes, raw = SAMPLES[name]
    whole = WHOLE_BATCH.get(name, ())
    in_types = [TensorType(s, batched=k not in whole) for k, s in enumerate(shapes)]
    attrs = canonical(op, in_types, dict(raw))
    specs = op.param_specs(attrs, in_types)
    assert all(isinstance(s, ParamSpec) for s in specs)
    if name in WEIGHTED:
        assert specs and specs[0].suffix == "weight"
        assert all(s.fan_in >= 0 and s.fan_out >= 0 for s in specs)
    types = in_types + [TensorType(s.shape) for s in specs]
    out = op.infer(types, attrs)
    assert isinstance(out, TensorType) and all(d >= 1 for d in out.shape)
    rng = np.random.default_rng(0)
    batch = 3
    values = [rng.random(s) + 0.5 if k in whole else rng.standard_normal((batch,) + s)
              for k, s in enumerate(shapes)]
    if op.family == "loss" and name == "cross_entropy":  # class labels
        values[1] = rng.integers(0, shapes[0][0], (batch,) + shapes[1]).astype(np.float64)
    if name in ("bce_with_logits", "contrastive"):  # targets in [0, 1]; pairs 0 or 1
        values[1] = rng.random(values[1].shape)
        if name == "contrastive":
            values[1] = np.round(values[1])
    if name == "localization":  # the class (0: nothing there), then the box
        values[1][:, 0] = rng.integers(0, shapes[0][0] - 4, batch)
    values += [rng.random(s.shape) + 0.5 for s in specs]  # positive: running_var
    y = op.reference(values, attrs)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    assert y.shape == ((batch,) if out.batched else ()) + out.shape
    assert np.all(np.isfinite(y))
    macs = op.macs(types, out, attrs)
    assert isinstance(macs, int) and not isinstance(macs, bool) and macs >= 0
    if name in ("conv", "conv_transpose", "dense"):
        assert macs > 0
    if op.error_bound is not None:  # a finite, non-negative bound per output element
        ref, bound = evaluate_bound(name, values, attrs, macs / out.size)
        np.testing.assert_array_equal(ref, y)
        assert bound.shape == y.shape and np.all(np.isfinite(bound)) and np.all(bound >= 0)


def test_conv_macs_and_params_match_the_textbook_count():
    """001: ten 3 x 3 x 3 filters have (27 + 1) * 10 = 280 parameters; each output value
    costs C/groups * R * S multiply-accumulates."""
    op = get_op("conv")
    t = [TensorType((3, 24, 24))]
    attrs = canonical(op, t, {"out_channels": 10, "kernel": 3})
    specs = op.param_specs(attrs, t)
    assert sum(int(np.prod(s.shape)) for s in specs) == 280
    out = op.infer(t + [TensorType(s.shape) for s in specs], attrs)
    assert out.shape == (10, 22, 22)
    assert op.macs(t, out, attrs) == 10 * 22 * 22 * 27
