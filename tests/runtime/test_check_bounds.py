"""`cnnc check`'s rule: each element's error against the float32 bound of its op
(``compiler/ops``'s ``error_bound`` rules), so a wrong kernel is caught at any scale of values,
where the old rule (1e-4 x max(1, max |reference|)) let tiny layers be wrong by 100%."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.compiler.ops import EPS32, evaluate_bound
from cnnc.runtime.check import check_model, format_rows
from cnnc.runtime.model import compile as compile_model

TINY_NET = """network tiny
input image: 4 x 9 x 8
image -> conv(8, 3, pad=1) -> relu -> conv(8, 3, pad=1) -> output y
"""


def _wrong(fn, out: int):
    """A kernel with an indexing bug: right values, stored one element late."""

    def kernel(*args):
        fn(*args)
        y = args[out]
        y[:] = np.roll(y.copy(), 1)
    return kernel


@pytest.mark.parametrize("level", (0, 2))
def test_a_wrong_kernel_on_tiny_values_is_caught(level):
    model = compile_model(TINY_NET, seed=0, opt_level=level)
    tiny = {k: v * np.float32(1e-5) for k, v in model.params.items()}  # outputs ~1e-5
    step = next(s for s in model.steps if s.name.startswith("conv2"))
    call = next(c for c in step.calls if any(a.kind == "output" for a in c.args))
    out = next(i for i, a in enumerate(call.args) if a.kind == "output")
    call.fn = _wrong(call.fn, out)
    model.set_params(tiny)  # rebinds every call, the wrong one included
    rows = {r.name: r for r in check_model(model, batch=2)}
    bad = rows[step.name]
    assert bad.max_abs < 1e-4  # the old rule (1e-4 x max(1, |ref|)) would have passed it
    assert not bad.ok and bad.fraction > 1e3, format_rows(list(rows.values()), 1.0)
    assert all(r.ok for name, r in rows.items() if name != step.name)


def test_correct_kernels_on_tiny_values_pass():
    """The bound scales with the terms: values around 1e-5 are checked as strictly as 1."""
    model = compile_model(TINY_NET, seed=0)
    model.set_params({k: v * np.float32(1e-5) for k, v in model.params.items()})
    rows = check_model(model, batch=2)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


def test_a_sum_bound_is_k_roundings_of_the_absolute_terms():
    """conv's bound is (C x R x S + 2) x EPS32 x (the conv of |x| and |w|), through a fused
    residual add (one rounding of |value| + |operand|) and ReLU (Lipschitz 1)."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((1, 3, 5, 5)), rng.standard_normal((2, 3, 3, 3)), np.zeros(2)
    res = rng.standard_normal((1, 2, 3, 3))
    from cnnc.compiler.decisions import EpilogueOp

    attrs = {"out_channels": 2, "kernel": (3, 3), "stride": (1, 1), "pads": (0, 0, 0, 0),
             "dilation": (1, 1), "groups": 1,
             "epilogue": (EpilogueOp("add", (), 3), EpilogueOp("relu"))}
    y, bound = evaluate_bound("conv", [x, w, b, res], attrs, terms=27)
    own = {k: v for k, v in attrs.items() if k != "epilogue"}
    pre, sums = evaluate_bound("conv", [x, w, b], own, terms=27)
    s = np.abs(pre) + np.abs(res)
    np.testing.assert_allclose(y, np.maximum(pre + res, 0))
    terms = evaluate_bound("conv", [np.abs(x), np.abs(w), b], own, terms=27)[0]
    np.testing.assert_allclose(bound, 29 * EPS32 * terms + EPS32 * s, rtol=1e-6)
    assert np.all(sums <= bound)


def test_cli_check_reports_fractions_of_the_bound(tmp_path, capsys):
    from cnnc.runtime.cli import main

    f = tmp_path / "tiny.cnn"
    f.write_text(TINY_NET)
    assert main(["check", str(f)]) == 0
    out = capsys.readouterr().out
    assert "of bound" in out and "float32 error bound" in out and "worst" in out
