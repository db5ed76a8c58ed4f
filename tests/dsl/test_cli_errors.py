"""The command line never shows a traceback for a bad program: it prints the rendered error
to stderr and exits with status 2."""

from __future__ import annotations

import pytest

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.runtime.cli import main

GOOD = "network tiny(classes = 3)\ninput x: 2 x 4 x 4\nx -> flatten -> dense(classes) -> output y\n"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def rendered(path) -> str:
    with pytest.raises(DslError) as info:
        load_network(path)
    return info.value.render()


@pytest.mark.parametrize("program", [
    "network n\ninput x: 3 x 8 x 8\nx -> conv(4, 3, pad=sam) -> output y\n",
    "network n\ninput x: 3 x 8 x 8\nblock b(c) {\n  return in -> conv(c, 3) + in\n}\n"
    "x -> b(4) -> output y\n",
    "network n\ninput x: 3 x 8 x 8\nx -> conv(4, 3\n",
    "network n\ninput x: 3 x 8 x 8\nx -> dense(10) -> output y\n",
])
def test_bad_program_prints_the_rendered_error(tmp_path, capsys, program):
    path = tmp_path / "bad.cnn"
    path.write_text(program)
    status, out, err = run_cli(capsys, "summary", str(path))
    assert status == 2
    assert out == ""
    assert err.strip() == rendered(path)
    assert err.startswith("bad.cnn:")  # relative to the model's folder, never absolute
    assert "Traceback" not in err


def test_missing_file(capsys, tmp_path):
    status, out, err = run_cli(capsys, "summary", str(tmp_path / "nothere.cnn"))
    assert status == 2
    assert err.startswith(f"error: no file '{tmp_path / 'nothere.cnn'}' and no zoo network")
    assert "zoo: " in err and "Traceback" not in err


def test_file_that_is_not_text(capsys, tmp_path):
    path = tmp_path / "binary.cnn"
    path.write_bytes(b"\xff\xfe\x00network")
    status, _, err = run_cli(capsys, "dump", str(path))
    assert status == 2
    assert err.strip() == f"error: cannot read {path}: it is not UTF-8 text"


def test_bad_param_syntax_and_value(capsys, tmp_path):
    path = tmp_path / "good.cnn"
    path.write_text(GOOD)
    status, _, err = run_cli(capsys, "summary", str(path), "--param", "classes")
    assert (status, err.strip()) == (2, "error: --param takes NAME=VALUE, got 'classes'")
    status, _, err = run_cli(capsys, "summary", str(path), "--param", "classes=ten")
    assert (status, err.strip()) == (2, "error: --param classes: 'ten' is not a number")


def test_unknown_param_names_the_valid_ones(capsys, tmp_path):
    path = tmp_path / "good.cnn"
    path.write_text(GOOD)
    status, _, err = run_cli(capsys, "summary", str(path), "--param", "clases=4")
    assert status == 2
    assert err.splitlines()[0] == "good.cnn:1:1: error: unknown network parameter: clases"
    assert err.splitlines()[-1] == "  did you mean 'classes'? tiny takes: classes"


def test_good_program_still_runs(capsys, tmp_path):
    path = tmp_path / "good.cnn"
    path.write_text(GOOD)
    status, out, err = run_cli(capsys, "summary", str(path), "--param", "classes=5")
    assert status == 0 and err == ""
    assert "dense" in out
