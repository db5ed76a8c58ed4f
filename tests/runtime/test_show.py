"""`cnnc show`: the DOT picture of a network, before and after the passes."""

from __future__ import annotations

import os
import re
import shutil
import stat

import pytest

from cnnc.dsl.builder import load_network
from cnnc.runtime.cli import main
from cnnc.runtime.show import to_dot

NET = """network small
input x: 3 x 8 x 8
block b(c) {
  y = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
  return relu(y + in)
}
x -> conv(8, 3, pad=1) -> relu -> b(8) -> globalavgpool -> flatten -> dense(4) -> output y
"""


def test_blocks_are_clusters_and_edges_carry_shapes():
    dot = to_dot(load_network(NET))
    assert dot.startswith('digraph "small" {')
    assert re.search(r'subgraph cluster_\d+ \{\s*label="b1"', dot)
    assert '[label="8x8x8"]' in dot and '[label="8"]' in dot  # conv output, flatten output
    assert '\\nparam"' not in dot and "224 parameters" in dot  # conv1: 8*3*3*3 + 8
    assert dot.count("->") == 12  # 11 edges between the 11 nodes (a residual), 1 to the output


def test_after_passes_outlines_fused_groups(tmp_path, capsys):
    f = tmp_path / "small.cnn"
    f.write_text(NET)
    out = tmp_path / "g.dot"
    assert main(["show", str(f), "-o", str(out), "--after-passes"]) == 0
    dot = out.read_text()
    fused = [ln for ln in dot.splitlines() if "penwidth=2.5" in ln]
    assert any("b1.conv1" in ln and "+ b1.batchnorm1" in ln and "+ add(%in3)" in ln
               for ln in fused), fused
    assert "batchnorm\\n" not in dot  # no standalone batch norm is left
    assert "style=dashed]" in dot  # the residual operand edge
    assert main(["show", str(f), "-o", str(out)]) == 2  # exists: refused without --force
    assert "--force" in capsys.readouterr().err


def test_without_graphviz_the_dot_text_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    f = tmp_path / "small.cnn"
    f.write_text(NET)
    assert main(["show", str(f), "-o", str(tmp_path / "g.svg")]) == 0
    msg = capsys.readouterr().out
    assert "not installed" in msg and "dot -Tsvg" in msg
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    assert not (tmp_path / "g.svg").exists()


def test_with_graphviz_the_picture_is_rendered(tmp_path, monkeypatch):
    """A stand-in ``dot`` on PATH: the DOT text goes in on stdin, the picture comes back."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text("#!/bin/sh\n[ \"$1\" = -Tsvg ] || exit 3\necho '<svg>'; cat; echo '</svg>'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    f = tmp_path / "small.cnn"
    f.write_text(NET)
    assert main(["show", str(f), "-o", str(tmp_path / "g.svg")]) == 0
    svg = (tmp_path / "g.svg").read_text()
    assert svg.startswith("<svg>") and 'digraph "small"' in svg


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed (make demo "
                    "and make test install it where apt-get may run)")
@pytest.mark.parametrize("suffix, magic", [(".svg", b"<svg"), (".png", b"\x89PNG")])
def test_real_graphviz_renders_the_picture(tmp_path, suffix, magic):
    """With Graphviz installed, the file is the picture itself: SVG naming the blocks, or PNG."""
    f = tmp_path / "small.cnn"
    f.write_text(NET)
    out = tmp_path / f"g{suffix}"
    assert main(["show", str(f), "-o", str(out), "--after-passes"]) == 0
    data = out.read_bytes()
    assert magic in data[:400]
    if suffix == ".svg":
        assert b"b1" in data and b"cluster" in data
    assert not out.with_suffix(".dot").exists()
