"""`cnnc bench`: what it refuses before running anything, and one real (tiny) run against ONNX
Runtime. Its timings are not asserted: performance is measured in bench/, not tested."""

from __future__ import annotations

import re
import sys

import pytest

from cnnc.runtime.bench import alternating, tail_ms
from cnnc.runtime.cli import main


@pytest.mark.parametrize("argv, message", [
    (["no_such_net"], "no_such_net"),
    (["lenet5", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["lenet5", "--threads", "-1"], "--threads must be at least 1, got -1"),
    (["lenet5", "--against", "onnxruntime,tensorflow"], "unknown engine 'tensorflow'"),
    (["lenet5", "--plot", "chart.svg"], "give a .png file"),
])
def test_refusals(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plot_over_an_existing_file_is_refused_without_force(tmp_path, capsys):
    chart = tmp_path / "chart.png"
    chart.write_bytes(b"mine")
    assert main(["bench", "lenet5", "--plot", str(chart)]) == 2
    assert "already exists; give --force" in capsys.readouterr().err
    assert chart.read_bytes() == b"mine"


def test_engines_alternate_and_the_tail_is_reported():
    assert alternating(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    stats = tail_ms([0.001] * 99 + [0.5])
    assert stats["median_ms"] == pytest.approx(1.0)
    assert stats["max_ms"] == pytest.approx(500.0)
    assert 1.0 < stats["p99_ms"] <= 500.0


def test_a_run_against_onnxruntime(monkeypatch, capsys):
    # OpenVINO made absent (as the main install leaves it): named in one line and skipped
    monkeypatch.setitem(sys.modules, "openvino", None)
    argv = ["bench", "lenet5", "--against", "onnxruntime,openvino", "--rounds", "2",
            "--repeat", "3", "--min-time", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "openvino: not installed, skipped" in out
    rows = {m[0]: m[1:] for m in re.findall(
        r"^\| (\S+) \| ([\d.e+-]+) \| ([\d.e+-]+) \| ([\d.e+-]+) \| (\d+) \| .* \| "
        r"(\S*) \| ([\d.e+-]+) \|$", out, re.M)}
    assert set(rows) == {"cnnc-avx2", "onnxruntime"}
    for engine, (median, p99, most, runs, _, err) in rows.items():
        assert int(runs) == 6, engine  # 2 rounds of 3 timed calls, pooled
        assert float(median) <= float(p99) <= float(most)
        assert float(err) < 1e-4, engine  # compared with the float64 reference
    assert rows["cnnc-avx2"][4].endswith("x") and rows["onnxruntime"][4] == ""
    assert "outputs compared with the float64 reference" in out
    assert "cnnc / best peer:" in out and "of onnxruntime" in out
    assert re.search(r"peak: \d+ GFLOP/s \(8-lane FMA loop", out)
