"""`cnnc check` on every zoo network at a small input size: every generated kernel against the
float64 reference. Kernels take their sizes as runtime arguments and live in shared cached
modules, so the networks share most of their (1-7 s) Numba compilations."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cnnc import zoo
from cnnc.compiler.ops import AttrError, ShapeError
from cnnc.dsl import ast
from cnnc.dsl.builder import load_zoo
from cnnc.dsl.errors import DslError
from cnnc.dsl.parser import parse
from cnnc.runtime.check import check_model, format_rows
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

SIZES = (32, 48, 64, 67, 96, 128, 160, 227)
SMALLER = {"classes": 10, "hidden": 64, "width": 16, "embedding": 16}


def header_params(name: str) -> set[str]:
    module = parse(zoo.path(name).read_text(), str(zoo.path(name)))
    for item in module.items:
        if isinstance(item, ast.Header):
            return {p.name for p in item.params}
    return set()


def small_graph(name: str):
    """The network at the smallest size it accepts (and narrower where it has a width)."""
    declared = header_params(name)
    base = {k: v for k, v in SMALLER.items() if k in declared}
    for overrides in (base, {k: v for k, v in base.items() if k != "width"}):
        sizes = SIZES if "size" in declared else (None,)
        for size in sizes:
            params = dict(overrides, **({"size": size} if size else {}))
            try:
                return load_zoo(name, **params), params
            except (DslError, ShapeError, AttrError):
                continue
    raise AssertionError(f"{name}: no small size builds")


@pytest.mark.parametrize("level", (0, 2))
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_network_checks(name, level):
    """Every kernel within its float32 error bound (``cnnc check``'s rule), unoptimized and
    with every pass (folded batch norms, fused epilogues, blocked layouts)."""
    graph, params = small_graph(name)
    model = compile_model(graph, seed=0, opt_level=level)
    rows = check_model(model, batch=2)
    assert all(r.ok for r in rows), f"{name} {params} -O{level}\n{format_rows(rows, 1.0)}"


def _close(got, want, tol: float = 2e-4) -> float:
    """max |got - want| / max(1, max |want|)."""
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want))) / scale
    assert err <= tol, f"relative error {err:.3g}"
    return err


#: Networks also run at -O2 with every activation plain (``layout="NCHW"``): one with each
#: -O2 rewrite that changes a plain graph (merged 1x1s and pooling prologues, gathers, phase
#: convolutions, blocked concatenations, gates as dense layers, residual epilogues). The
#: others' plain -O2 graphs differ from their -O1 ones (run above) only in lowering choices.
PLAIN_AT_O2 = {"googlenet", "shufflenet_v2", "unet", "densenet121", "efficientnet_b0",
               "resnet18"}


#: Deeper twins of a network in the schedule test: the same blocks repeated more times. At the
#: small size their models call exactly the kernels of the twin's, schedule by schedule (all
#: eight, checked when they left), and test_zoo_network_checks still runs them at -O0 and -O2.
#: Each one's nine compiles of its deep graph cost about 20 s of a cold suite.
DEEPER_TWINS = {"resnet101": "resnet50", "resnet152": "resnet50"}


def _without_repeats(name: str) -> str:
    """A zoo network's source without comments, its name and its blocks' repeat counts."""
    text = re.sub(r"#[^\n]*", "", zoo.path(name).read_text())
    text = re.sub(r"\*\s*\d+", "* N", text.replace(name, "NET", 1))
    return " ".join(text.split())


@pytest.mark.parametrize("deep, twin", sorted(DEEPER_TWINS.items()))
def test_deeper_twins_differ_only_in_repeat_counts(deep, twin):
    """What lets ``test_schedule_invariance`` leave the deeper twins out: they are their twin
    with blocks repeated more times (so the same kernels and the same rewrites), nothing else."""
    assert _without_repeats(deep) == _without_repeats(twin)
    assert zoo.path(deep).read_text() != zoo.path(twin).read_text()


@pytest.mark.parametrize("name", [n for n in zoo.names() if n not in DEEPER_TWINS])
def test_schedule_invariance(name):
    """Every optimization level, every convolution lowering and every layout (channel-blocked
    where the rules allow: NCHW8c, the default at this 8-lane target, and NCHW16c and NHWC
    forced; every activation plain: ``PLAIN_AT_O2``; -O1 and im2col are plain too) compute the
    same numbers: each compiled model against the float64 reference of the network as written,
    and NHWC bit for bit NCHW8c's (the same kernels with other strides; unless a dense layer
    reads a flattened blocked tensor: it sums in storage order)."""
    graph, _ = small_graph(name)
    rng = np.random.default_rng(1)
    inputs = {n: rng.standard_normal((2,) + graph.node(i).type.shape).astype(np.float32)
              for n, i in graph.inputs.items()}
    schedules = [(level, lowering, "auto") for level in (0, 1, 2)
                 for lowering in ("direct", "im2col")]
    schedules += [(2, "direct", "NCHW16c"), (2, "direct", "NHWC")]
    if name in PLAIN_AT_O2:
        schedules.append((2, "direct", "NCHW"))
    compiled = {(level, lowering, layout): compile_model(graph, seed=0, opt_level=level,
                                                        lowering=lowering, layout=layout)
                for level, lowering, layout in schedules}
    # every schedule has the seed's weights: the first one's are the reference's
    want = run_reference(graph, inputs, compiled[schedules[0]].params)
    runs, models = {}, {}
    for (level, lowering, layout), m in compiled.items():
        models[layout] = m
        layouts = {n.attrs.get("layout") for n in m.plan.graph.nodes()} - {None}
        if layout == "NCHW":
            assert not layouts
        if level == 2 and lowering == "direct" and layout == "auto":
            assert layouts <= {"NCHW8c"}  # the 8-lane target's choice
        got = runs[level, lowering, layout] = m.run(inputs)
        for out in want:
            _close(got[out], want[out])
    nhwc = models["NHWC"].plan.graph
    if not any(n.op == "flatten" and n.attrs.get("layout") for n in nhwc.nodes()):
        for out in want:
            np.testing.assert_array_equal(runs[2, "direct", "NHWC"][out],
                                          runs[2, "direct", "auto"][out])


# Fused epilogues of every kind at a 16-lane store: vector rules (relu6, the residual add),
# per-lane scalar ones (swish, sigmoid) and a per-channel gate, with 1-pixel rows (the gate's
# 1x1 convolutions) and 7-pixel tiles.
EPILOGUES = """network epilogues16
input x: 16 x 12 x 12
a = x -> conv(32, 3, pad=1) -> relu6
b = a -> conv(32, 1) -> swish
g = b -> globalavgpool -> conv(16, 1) -> relu -> conv(32, 1) -> sigmoid
((b * g) + a) -> relu -> conv(48, 3, stride=2) -> output y
"""


@pytest.mark.parametrize("name, level", [("resnet18", 2), ("epilogues", 2)])
def test_targets_agree_bitwise(name, level):
    """The 16-lane tiles (AVX-512) and the 8-lane ones compute every output with the same FMAs
    in the same order, and so do the 16-lane target's NCHW16c regions (its default layout) and
    the 8-lane target's NCHW8c: the whole network agrees bit for bit (whichever target this CPU
    has: 16-lane code also runs on AVX2, split into ymm halves). The networks cover both tile widths
    (32 and 16 channels), 14- and 7-pixel tiles and every kind of fused epilogue; the awkward
    tile cases one layer at a time are in tests/codegen/test_conv.py. (-O0 ResNet-18 and -O2
    GoogLeNet-BN also agreed bit for bit; they left the suite for its compile time.)"""
    from cnnc.dsl.builder import load_network

    graph = load_network(EPILOGUES) if name == "epilogues" else small_graph(name)[0]
    rng = np.random.default_rng(2)
    inputs = {n: rng.standard_normal((2,) + graph.node(i).type.shape).astype(np.float32)
              for n, i in graph.inputs.items()}
    got = {}
    for target in ("avx2", "avx512"):
        m = compile_model(graph, seed=0, opt_level=level, lowering="direct", target=target)
        tiles = {n.attrs["tile"] for n in m.plan.graph.nodes() if "tile" in n.attrs}
        assert tiles and all(t.partition(":")[0].endswith("/8" if target == "avx2" else "/16")
                            for t in tiles)
        layouts = {n.attrs["layout"] for n in m.plan.graph.nodes() if n.attrs.get("layout")}
        assert layouts == {"NCHW8c" if target == "avx2" else "NCHW16c"}
        got[target] = m.run(inputs)
    for out in got["avx2"]:
        np.testing.assert_array_equal(got["avx2"][out], got["avx512"][out])


@pytest.mark.host_target
@pytest.mark.parametrize("name", ["resnet18", "unet", "mobilenet_v2"])
def test_default_schedule_at_this_machines_target(name):
    """What a user of this machine gets by default (target "cpu", -O2, layout and lowering
    chosen by the cost models): 16-lane kernels and NCHW16c regions with AVX-512, else the
    8-lane ones the rest of the suite runs, against the float64 reference. ResNet-18 (direct
    convolutions, residual epilogues; its kernels are test_targets_agree_bitwise's), U-Net
    (upsampling, skip concatenations) and MobileNetV2 (depthwise kernels, 16 lanes wide)."""
    from cnnc.compiler.target import host_target

    graph, _ = small_graph(name)
    model = compile_model(graph, seed=0)
    lanes = host_target().lanes
    tiles = {n.attrs["tile"] for n in model.plan.graph.nodes() if "tile" in n.attrs}
    assert tiles and all(t.partition(":")[0].endswith(f"/{lanes}") for t in tiles)
    if lanes == 16:
        assert "NCHW16c" in {n.attrs.get("layout") for n in model.plan.graph.nodes()}
    rng = np.random.default_rng(3)
    inputs = {n: rng.standard_normal((2,) + graph.node(i).type.shape).astype(np.float32)
              for n, i in graph.inputs.items()}
    want = run_reference(graph, inputs, model.params)
    got = model.run(inputs)
    for out in want:
        _close(got[out], want[out])
