"""The operators of issue 9 compiled to generated kernels, against the float64 reference:
elu, selu, softplus and mish fused into the store of the convolution (or element-wise kernel)
that produces their input, prelu and instance_norm as kernels of their own that take the
following activations, and pad's reflect and edge modes; then their DSL errors.

Kernels compile in 1-3 s each, so shapes are small and hypothesis draws few, derandomized
examples (as in test_lowered_ops.py, whose comparison rule this file uses).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

FUSABLE = ["elu(0.3)", "selu", "selu(alpha=2, gamma=0.5)", "softplus", "mish"]


def assert_matches_reference(model, batch: int, seed: int = 0, scale: float = 1.0,
                             tol: float = 2e-5) -> None:
    rng = np.random.default_rng(seed)
    x = {name: (rng.standard_normal((batch,) + model.graph.node(nid).type.shape) * scale)
         .astype(np.float32) for name, nid in model.graph.inputs.items()}
    got = model.run(x)
    want = run_reference(model.graph, x, model.params)
    for name, ref in want.items():
        assert got[name].shape == ref.shape, name
        assert np.all(np.isfinite(got[name])), name
        bound = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(got[name] - ref).max())
        assert err <= tol * bound, f"output {name}: max error {err:.3g} (scale {bound:.3g})"


ALL_NEW = """
network newops
input image: 5 x 9 x 7
input feats: 6
a = image -> conv(6, 3, pad=1) -> elu(0.7)
b = a -> pad((1, 2, 3, 1), mode=reflect) -> conv(4, 3) -> selu -> instance_norm -> relu
c = image -> pad((4, 0, 2, 9), mode=edge) -> prelu -> softplus
d = image -> prelu(num_parameters=1) -> mish
e = feats -> dense(5) -> prelu
f = a + (image -> conv(6, 1)) -> softplus -> mish
b -> output ob
c -> output oc
d -> output od
e -> output oe
f -> output of
"""


@pytest.mark.parametrize("opt", [0, 2])
def test_new_ops_within_their_float32_error_bounds(opt):
    """`cnnc check` on the new ops: each kernel within its op's ``error_bound``."""
    from cnnc.runtime.check import check_model, format_rows

    model = compile_model(ALL_NEW, seed=2, opt_level=opt)
    rows = check_model(model, batch=3)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


@pytest.mark.parametrize("opt", [0, 2])
def test_new_ops_match_reference(opt):
    model = compile_model(ALL_NEW, seed=2, opt_level=opt)
    ops = {n.op for n in model.graph.nodes()}
    assert {"prelu", "instance_norm", "pad", "conv", "dense"} <= ops
    for batch in (1, 5):
        assert_matches_reference(model, batch, seed=batch, scale=3.0)


def test_large_inputs_stay_finite_and_exact():
    """softplus and mish at |x| up to 1e4 (exp would overflow float32 from 88 on): the
    compiled kernels give x (softplus, mish) and 0 as the reference does."""
    src = ("network big\ninput x: 3 x 4 x 4\nx -> softplus -> output s\nx -> mish -> output m\n"
           "x -> elu -> output e\nx -> selu -> output u\n")
    model = compile_model(src, opt_level=0)
    assert_matches_reference(model, 2, scale=2000.0, tol=1e-6)


@pytest.mark.parametrize("act", FUSABLE)
def test_activation_fuses_into_the_convolution(act):
    """conv -> act is one kernel: the activation is the convolution's epilogue, and the
    kernel count equals that of the convolution alone."""
    head = "network f\ninput x: 8 x 6 x 6\n"
    fused = compile_model(head + f"x -> conv(8, 3, pad=1) -> {act} -> output y\n", seed=1)
    alone = compile_model(head + "x -> conv(8, 3, pad=1) -> output y\n", seed=1)
    name = act.split("(")[0]
    assert not any(n.op == name for n in fused.plan.graph.nodes())
    (conv,) = [n for n in fused.plan.graph.nodes() if n.op == "conv"]
    assert [e.op for e in conv.attrs["epilogue"]] == [name]
    assert fused.stats()["kernels per call"] == alone.stats()["kernels per call"]
    assert_matches_reference(fused, 2, scale=3.0)


def test_chain_of_activations_in_channel_blocked_convolutions():
    """Between direct convolutions the activations stay NCHW8c; elu and mish (no vector rule)
    are applied lane by lane at the store, after the residual add (which has one)."""
    src = ("network r\ninput x: 16 x 6 x 6\n"
           "y = x -> conv(16, 3, pad=1, bias=false) -> elu\n"
           "z = y -> conv(16, 3, pad=1) -> mish\n"
           "relu(z + y) -> conv(8, 3, pad=1) -> softplus -> output out\n")
    model = compile_model(src, seed=4, opt_level=2, lowering="direct")
    graph = model.plan.graph
    assert not any(n.op in ("elu", "mish", "softplus") for n in graph.nodes())
    epilogues = [tuple(e.op for e in n.attrs.get("epilogue", ())) for n in graph.nodes()
                 if n.op == "conv"]
    assert ("elu",) in epilogues and ("mish", "add", "relu") in epilogues
    assert_matches_reference(model, 3, scale=2.0)


def test_prelu_is_its_own_kernel_and_takes_the_activations_after_it():
    """prelu's slope is a parameter, not an activation buffer a fused operand can be: it stays
    a kernel (one per call), and the relu after it is that kernel's epilogue."""
    src = "network p\ninput x: 8 x 5 x 5\nx -> conv(8, 3) -> prelu -> relu -> output y\n"
    model = compile_model(src, seed=3)
    (prelu,) = [n for n in model.plan.graph.nodes() if n.op == "prelu"]
    assert [e.op for e in prelu.attrs["epilogue"]] == ["relu"]
    assert not any(n.op == "relu" for n in model.plan.graph.nodes())
    conv_only = compile_model("network p\ninput x: 8 x 5 x 5\nx -> conv(8, 3) -> output y\n")
    assert model.stats()["kernels per call"] == conv_only.stats()["kernels per call"] + 1
    params = dict(model.params)
    params["prelu1.weight"] = np.linspace(-2, 2, 8).astype(np.float32)  # negative slopes too
    model.set_params(params)
    assert_matches_reference(model, 2, scale=2.0)


@st.composite
def pad_cases(draw):
    mode = draw(st.sampled_from(["reflect", "edge"]))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    hi_h, hi_w = (h - 1, w - 1) if mode == "reflect" else (6, 6)
    pads = tuple(draw(st.integers(0, hi)) for hi in (hi_h, hi_w, hi_h, hi_w))
    return mode, draw(st.integers(1, 4)), h, w, pads


@settings(max_examples=6, derandomize=True, deadline=None)
@given(pad_cases(), st.sampled_from([1, 3]))
def test_pad_modes_drawn_shapes(case, batch):
    mode, c, h, w, pads = case
    src = f"network p\ninput x: {c} x {h} x {w}\nx -> pad({pads}, mode={mode}) -> output y\n"
    assert_matches_reference(compile_model(src, opt_level=0), batch, tol=0.0)


@settings(max_examples=5, derandomize=True, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 4]))
def test_instance_norm_drawn_shapes(c, h, w, batch):
    src = f"network i\ninput x: {c} x {h} x {w}\nx -> instance_norm(eps=0.001) -> output y\n"
    model = compile_model(src, opt_level=0)
    rng = np.random.default_rng(c)
    model.set_params({k: rng.standard_normal(v.shape).astype(np.float32)
                      for k, v in model.params.items()})
    assert_matches_reference(model, batch, scale=4.0)


# -- DSL errors -------------------------------------------------------------------------------

H = "network n\ninput x: 3 x 4 x 4\n"


def dsl_error(src: str) -> DslError:
    with pytest.raises(DslError) as info:
        load_network(src)
    text = info.value.render()
    assert "Traceback" not in text
    return info.value


def caret(e: DslError) -> tuple[int, int, int]:
    """(line, column, caret width) as rendered: `file:line:col: ...`, then the line, then ^^^."""
    lines = e.render().splitlines()
    line, col = (int(v) for v in lines[0].split(":")[1:3])
    marks = next(m for m in lines if set(m.strip()) == {"^"})
    assert len(marks) - len(marks.lstrip()) - 4 + 1 == col
    return line, col, marks.count("^")


@pytest.mark.parametrize("src,col,width,message", [
    (H + "x -> elu(alpha=true) -> output y\n", 16, 4, "elu: alpha must be a number, got true"),
    (H + "x -> selu(gamma=wide) -> output y\n", 17, 4, "undefined name 'wide'"),
    (H + "x -> prelu(num_parameters=2) -> output y\n", 27, 1,
     "prelu: num_parameters must be 1 (one slope) or the 3 channels (one slope each), got 2"),
    (H + "x -> pad(4, mode=reflect) -> output y\n", 10, 1,
     "pad: mode=reflect needs padding smaller than the input on each axis"),
    (H + "x -> pad(1, mode=wrap) -> output y\n", 18, 4,
     "pad: mode must be one of constant, reflect, edge; got 'wrap'"),
    (H + "x -> pad(1, value=2, mode=edge) -> output y\n", 19, 1,
     "pad: value is the fill of mode=constant"),
    (H + "x -> instance_norm(eps=-1) -> output y\n", 24, 2, "instance_norm: eps must be positive"),
    (H + "x -> flatten -> instance_norm -> output y\n", 17, 13,
     "instance_norm needs a channels x height x width input"),
    (H + "x -> prelu(num_parameters=rows) -> output y\n", 27, 4,
     "prelu: num_parameters must be 'channels' or 1, got 'rows'"),
])
def test_located_errors(src, col, width, message):
    e = dsl_error(src)
    assert message in e.message, e.render()
    assert caret(e) == (3, col, width), e.render()
