"""Parameter memory is checked before anything is allocated, and counts never overflow."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from cnnc.dsl.builder import load_network
from cnnc.runtime import memory, weights
from cnnc.runtime.cli import main
from cnnc.runtime.summary import format_giga, format_summary, summarize
from cnnc.runtime.weights import ParameterMemoryError, WeightsError, init_params, load_weights

# Within the DSL's size limits (dsl/limits.py), too big for the memory the tests pretend to have
DENSE = "network wide\ninput x: 3 x 8 x 8\nx -> flatten -> dense(1000000) -> output y\n"
CONVS = "network deep\ninput x: 3 x 8 x 8\nx -> conv(30000, 1) -> conv(30000, 1) -> output y\n"


@pytest.mark.parametrize("text, params", [(DENSE, 193_000_000),
                                          (CONVS, 900_150_000)])
def test_parameters_beyond_memory_are_refused_before_allocation(text, params, monkeypatch,
                                                                tmp_path):
    graph = load_network(text)
    assert weights.parameter_bytes(graph) == 4 * params
    monkeypatch.setattr(weights, "available_memory", lambda: 2**28)
    (tmp_path / "w.npz").write_bytes(b"never read")
    tracemalloc.start()  # NumPy reports its buffers to it too
    try:
        with pytest.raises(ParameterMemoryError, match=rf"{params:,} parameters.*256\.0 MiB"):
            init_params(graph)
        with pytest.raises(ParameterMemoryError):
            load_weights(graph, tmp_path / "w.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # refused, not attempted: no buffer of the parameters was made
    assert issubclass(ParameterMemoryError, WeightsError)


def test_parameters_that_fit_are_made(monkeypatch):
    graph = load_network("network ok\ninput x: 3 x 4 x 4\nx -> flatten -> dense(10) -> "
                         "output y\n")
    need = weights.parameter_peak_bytes(graph)
    assert need == 4 * (48 * 10 + 10) + 8 * 480
    monkeypatch.setattr(weights, "available_memory", lambda: need)
    assert init_params(graph)["dense1.weight"].shape == (10, 48)
    monkeypatch.setattr(weights, "available_memory", lambda: need - 1)
    with pytest.raises(ParameterMemoryError):
        init_params(graph)


def test_cli_refuses_a_huge_network_cleanly(tmp_path, monkeypatch, capsys):
    model = tmp_path / "wide.cnn"
    model.write_text(DENSE)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    monkeypatch.setattr(weights, "available_memory", lambda: 2**28)
    rc = main(["run", str(model), "--input", str(tmp_path / "x.npy"), "--reference"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: network 'wide' has 193,000,000 parameters")


def test_summary_of_a_huge_network_just_prints_numbers(capsys, tmp_path):
    model = tmp_path / "deep.cnn"
    model.write_text(CONVS)
    assert main(["summary", str(model)]) == 0
    out = capsys.readouterr().out
    assert "total parameters:   900,150,000" in out
    assert "(115.212 GFLOPs)" in out  # 2 x 64 x (30000 x 3 + 30000 x 30000)


def test_counts_are_exact_python_ints():
    assert format_giga(38_400_000_000) == "38.400"
    assert format_giga(1_499_999) == "0.001" and format_giga(1_500_000) == "0.002"
    assert format_giga(10**400) == str(10**391) + ".000"
    assert memory.fmt_bytes(1536) == "1.5 KiB" and memory.fmt_bytes(1000) == "1000 B"
    assert memory.fmt_bytes(3 * 2**40) == "3.0 TiB"
    assert memory.fmt_bytes(10**400).endswith("e+400 B")
    graph = load_network(DENSE)
    s = summarize(graph)
    assert isinstance(s.params, int) and "193,000,000" in format_summary(s)
