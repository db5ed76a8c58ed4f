"""Paths vs program text: a string is a file when a file of that name exists, whatever it
holds; otherwise a zoo name or program text; and errors say which reading was taken."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.dsl.limits import MAX_SOURCE_BYTES
from cnnc.dsl.source import read_source

PROGRAM = "input x: 3 x 8 x 8\nx -> conv(4, 3) -> output y\n"


def test_file_whose_name_holds_an_arrow_is_read_as_a_file(tmp_path):
    path = tmp_path / "a->b.cnn"
    path.write_text(PROGRAM)
    assert read_source(str(path)) == (PROGRAM, str(path))
    assert load_network(str(path)).outputs.keys() == {"y"}


def test_file_whose_name_holds_a_newline_is_read_as_a_file_and_named_escaped(tmp_path):
    path = tmp_path / "two\nlines.cnn"
    path.write_text("input x: 3 x 8 x 8\nx -> cnv(4) -> output y\n")
    assert read_source(str(path))[1] == str(path)
    with pytest.raises(DslError) as info:
        load_network(str(path))
    header = info.value.render().split("\n")[0]
    assert header.startswith(ascii(path.name) + ":2:6: error: unknown layer 'cnv'")


def test_string_that_names_no_file_is_program_text_and_the_error_says_so(tmp_path):
    missing = str(tmp_path / "x -> y.cnn")
    with pytest.raises(DslError) as info:
        load_network(missing)
    assert info.value.span.file == "<string>"
    assert f"read as program text: there is no file named {missing!r}" in info.value.notes


def test_multi_line_text_gets_no_file_note():
    with pytest.raises(DslError) as info:
        load_network("input x: 3 x 8 x 8\nx -> cnv(4) -> output y\n")
    assert not any("read as program text" in n for n in info.value.notes)


def test_path_object_is_always_a_file(tmp_path):
    with pytest.raises(DslError) as info:
        load_network(tmp_path / "input x: 3")
    assert info.value.message.startswith("cannot read ")
    assert "No such file" in info.value.message


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "net.cnn"
    os.mkfifo(fifo)
    with pytest.raises(DslError) as info:
        load_network(Path(fifo))
    assert "is not a regular file" in info.value.message


def test_directory_is_refused(tmp_path):
    with pytest.raises(DslError) as info:
        load_network(str(tmp_path))
    assert info.value.message == f"{tmp_path} is a directory, not a .cnn file"


def test_oversized_text_is_refused():
    with pytest.raises(DslError) as info:
        load_network("#" * (MAX_SOURCE_BYTES + 1) + "\n")
    assert "a program may be at most" in info.value.message


def test_names_the_os_cannot_take_are_not_files():
    text, file = read_source("input x: 3\x00 -> y")
    assert file == "<string>"
    long_program = "input x: 3 x 8 x 8\n" + "# pad\n" * 2000 + "x -> relu -> output y\n"
    assert read_source(long_program)[1] == "<string>"


def test_zoo_name_still_found():
    text, file = read_source("lenet5")
    assert Path(file).name == "lenet5.cnn" and "network" in text
