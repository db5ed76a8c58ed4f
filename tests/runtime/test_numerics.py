"""Numerics: ``run(..., check_numerics=True)`` and ``cnnc run --check-numerics`` name the first
layer (in execution order) that produces NaN or Inf, with its DSL line and the count of bad
values; subnormal numbers are computed, not flushed to zero (README: denormals)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.runtime.model import NumericsError
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

# 3e38 is a float32, but 2 x 3e38 + 2 x 3e38 overflows it: the dense layer gives +Inf; with
# weights of both signs the products overflow to +Inf and -Inf and their sum is NaN (inside
# the dense kernel, before the residual add).
OVERFLOW = """network overflow
input v: 2
h = v -> dense(2, bias=false, weights=[[1, 0], [0, 1]]) -> relu
h -> dense(1, bias=false, weights=[[3e38, 3e38]]) -> relu
  -> dense(1, bias=false, weights=[[-1]]) -> output y
"""
INF_MINUS_INF = """network cancel
input v: 2
a = v -> dense(1, bias=false, weights=[[0.5, 0.5]])
b = v -> dense(1, bias=false, weights=[[3e38, -3e38]])
a + b -> output y
"""


def _model(tmp_path, text: str, name: str, level: int):
    path = tmp_path / name
    path.write_text(text)
    return compile_model(str(path), opt_level=level)


@pytest.mark.parametrize("level", (0, 2))
def test_huge_weights_overflowing_float32_are_reported_at_the_first_inf(tmp_path, level):
    model = _model(tmp_path, OVERFLOW, "overflow.cnn", level)
    x = np.full((3, 2), 2.0, np.float32)
    assert np.isneginf(model(x)).all()  # the plain run says nothing: no cost, no check
    with pytest.raises(NumericsError) as info:
        model.run({"v": x}, check_numerics=True)
    e = info.value
    assert e.layer.startswith("dense2") and e.op.startswith("dense")
    assert e.where == "overflow.cnn:4"  # relative to the model's folder
    assert (e.nan, e.inf, e.size) == (0, 3, 3)
    assert "dense2" in str(e) and "overflow.cnn:4" in str(e) and "3 Inf" in str(e)


@pytest.mark.parametrize("level", (0, 2))
def test_inf_minus_inf_is_reported_as_nan(tmp_path, level):
    model = _model(tmp_path, INF_MINUS_INF, "cancel.cnn", level)
    x = np.array([[2.0, 2.0], [1.0, 1.0], [4.0, 4.0]], np.float32)
    with pytest.raises(NumericsError) as info:
        model.run({"v": x}, check_numerics=True)
    e = info.value
    assert e.layer.startswith("dense2") and e.where == "cancel.cnn:4"
    assert (e.nan, e.inf) == (2, 0)  # 3e38 - 3e38 is 0: only the overflowing rows


def test_finite_runs_return_the_same_outputs_with_the_check(tmp_path):
    model = _model(tmp_path, INF_MINUS_INF, "cancel.cnn", 2)
    x = np.array([[1e-30, 1e-30]], np.float32)
    np.testing.assert_array_equal(model.run({"v": x}, check_numerics=True)["y"], model(x))


def test_cli_check_numerics(tmp_path, capsys):
    from cnnc.runtime.cli import main

    path = tmp_path / "overflow.cnn"
    path.write_text(OVERFLOW)
    np.save(tmp_path / "x.npy", np.full((1, 2), 2.0, np.float32))
    args = ["run", str(path), "--input", str(tmp_path / "x.npy")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--check-numerics"]) == 1
    err = capsys.readouterr().err
    assert "dense2" in err and "overflow.cnn:4" in err and "Inf" in err
    assert str(tmp_path) not in err
    assert main(args + ["--check-numerics", "--reference"]) == 2


@pytest.mark.parametrize("level", (0, 2))
def test_subnormal_inputs_are_computed_not_flushed(level):
    """Numba (LLVM) and NumPy leave the CPU's flush-to-zero and denormals-are-zero modes off:
    subnormal inputs (below 1.2e-38) give subnormal outputs equal to the float64 reference
    rounded to float32, to a few subnormal steps (2^-149 each)."""
    net = ("network den\ninput image: 8 x 6 x 6\n"
           "image -> conv(8, 3, pad=1) -> relu -> maxpool(2) -> output y\n")
    model = compile_model(net, seed=0, opt_level=level)
    x = (np.random.default_rng(0).standard_normal((2, 8, 6, 6)) * 1e-39).astype(np.float32)
    assert np.all(np.abs(x) < np.finfo(np.float32).tiny) and np.count_nonzero(x) == x.size
    got = model(x)
    want = run_reference(model.graph, {"image": x}, model.params)["y"].astype(np.float32)
    assert np.count_nonzero(got) == np.count_nonzero(want) > got.size // 4
    assert np.max(np.abs(got - want)) <= 72 * 2.0 ** -149  # 72 terms, one step each
