"""DSL files are named relative to the model's folder (or by their file name) in generated
kernels, pass notes, numerics reports and errors, never by absolute paths of this machine; so
nothing generated, and no kernel cache key, depends on where a model lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.runtime.cli import main
from cnnc.runtime.model import compile as compile_model

BLOCKS = "block unit(c) {\n  return in -> conv(c, 3, pad=1) -> relu\n}\n"
NET = ('import "sub/blocks.cnn"\nnetwork where\ninput image: 3 x 10 x 9\n'
       "image -> unit(8) -> maxpool(2) -> flatten -> dense(4) -> output y\n")


def _copy(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "blocks.cnn").write_text(BLOCKS)
    (folder / "net.cnn").write_text(NET)
    return folder / "net.cnn"


def test_two_copies_of_a_model_generate_the_same_code(tmp_path):
    a = compile_model(str(_copy(tmp_path / "one" / "deeper")), opt_level=0)
    b = compile_model(str(_copy(tmp_path / "two")), opt_level=0)
    # the shared modules' names are their cache keys (hashes of their source)
    assert a.sources() == b.sources()
    listing = a.plan.listing
    assert "# sub/blocks.cnn:2 unit1.relu1 (relu)" in listing and "# net.cnn:4 dense1" in listing
    assert not any(str(tmp_path) in text for text in a.sources().values())


def test_cli_emit_and_explain_name_files_relative_to_the_model(tmp_path, capsys):
    model = _copy(tmp_path / "models")
    assert main(["compile", str(model), "--explain", "--emit", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "(sub/blocks.cnn:2)" in out and str(tmp_path / "models") not in out.split("\n", 1)[1]
    for f in (tmp_path / "out").iterdir():
        assert str(tmp_path) not in f.read_text(), f.name


def test_errors_name_files_relative_to_the_model(tmp_path, capsys):
    model = _copy(tmp_path / "models")
    (tmp_path / "models" / "sub" / "blocks.cnn").write_text(
        "block unit(c) {\n  return in -> conv(c, 3, groups=2)\n}\n")
    with pytest.raises(DslError) as info:
        load_network(str(model))
    assert info.value.render().startswith("sub/blocks.cnn:2:")
    assert main(["summary", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sub/blocks.cnn:2:") and str(tmp_path) not in err
    assert "called at net.cnn:4:" in err
