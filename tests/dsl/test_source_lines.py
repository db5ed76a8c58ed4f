"""One definition of a source line: the lexer's positions, the quoted line and the caret agree
whatever characters Python's `str.splitlines` would also break at (U+2028, U+0085, form feed,
vertical tab, ...) appear in comments or around the program."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError, source_lines

# Characters str.splitlines() treats as line ends, but the grammar (and lark) does not.
OTHER_BREAKS = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"]


def rendered(src: str) -> tuple[DslError, list[str]]:
    with pytest.raises(DslError) as info:
        load_network(src)
    return info.value, info.value.render().split("\n")


@pytest.mark.parametrize("sep", OTHER_BREAKS, ids=[hex(ord(c)) for c in OTHER_BREAKS])
def test_line_breaking_character_in_comment_keeps_later_errors_on_their_line(sep):
    src = (f"input x: 3 x 8 x 8\n# a comment{sep}that goes on\ny = x -> conv(4, 3)\n"
           "x -> cnv(3) -> output o\n")
    e, lines = rendered(src)
    assert (e.span.line, e.span.column) == (4, 6)
    assert lines[0] == "<string>:4:6: error: unknown layer 'cnv'"
    assert lines[1] == "    x -> cnv(3) -> output o"
    assert lines[2] == "         ^^^"


def test_form_feed_between_tokens_is_a_space_and_the_caret_stays_under_the_token():
    src = "input x: 3 x 8 x 8\nx ->\fcnv(3) -> output o\n"
    e, lines = rendered(src)
    assert (e.span.line, e.span.column) == (2, 6)
    assert lines[1] == "    x -> cnv(3) -> output o"  # the form feed is shown as a space
    assert lines[2] == "         ^^^"


def test_crlf_line_ends_count_as_one_line_end():
    src = "input x: 3 x 8 x 8\r\n# note\r\nx -> cnv(3) -> output o\r\n"
    e, lines = rendered(src)
    assert e.span.line == 3
    assert lines[1] == "    x -> cnv(3) -> output o"


def test_bracket_left_open_after_a_separator_in_a_comment_is_located():
    src = "input x: 3 x 8 x 8\n# a\u2028b\nx -> conv(4,\n"
    e, lines = rendered(src)
    assert e.message == "'(' is never closed"
    assert (e.span.line, e.span.column) == (3, 10)
    assert lines[1:3] == ["    x -> conv(4,", "             ^"]


def test_source_lines_splits_at_newline_only():
    assert source_lines("a\u2028b\nc\r\nd\x85e\f") == ["a\u2028b", "c", "d\x85e\f"]
    assert source_lines("") == [""]


_junk = st.sampled_from(OTHER_BREAKS + [" ", "\t", "x", "é", "#"])


@given(comments=st.lists(st.text(_junk, max_size=8), min_size=1, max_size=5),
       bad_line=st.integers(0, 4))
def test_error_line_is_the_lexer_line_for_any_comment_text(comments, bad_line):
    """Comment lines of arbitrary separator junk, then a mistake: the header's line number and
    the quoted line both match source_lines()."""
    body = [f"# {c}" for c in comments]
    k = min(bad_line, len(body))
    body.insert(k, "x -> cnv(3) -> output o")
    src = "input x: 3 x 8 x 8\n" + "\n".join(body) + "\n"
    e, lines = rendered(src)
    assert e.span.line == k + 2
    assert source_lines(src)[e.span.line - 1] == "x -> cnv(3) -> output o"
    assert lines[1] == "    x -> cnv(3) -> output o"


def test_remembered_sources_are_bounded_and_the_newest_still_quoted():
    from cnnc.dsl import errors

    for i in range(errors._KEEP_SOURCES + 50):
        errors.remember_source(f"<fuzz {i}>", "x\n")
    assert len(errors._SOURCES) == errors._KEEP_SOURCES
    e, lines = rendered("input x: 3 x 8 x 8\nx -> cnv(3) -> output o\n")
    assert lines[1] == "    x -> cnv(3) -> output o"
