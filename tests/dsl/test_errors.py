"""Malformed programs: each error is checked for its exact file:line:col, message, caret and
the hint of what would be valid. Errors must never show Python reprs of internal objects."""

from __future__ import annotations

import re

import pytest

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError

H = "network n\ninput x: 3 x 8 x 8\n"  # two lines: programs below start at line 3

# Fragments that would betray a Python repr or a lark internal in a message.
LEAKS = re.compile(r"Tensor\(|Word\(|Span\(|Block\(|Shared|object at|__ANON|_NL\b|\$END|"
                   r"Token\(|_LPAR|_RPAR|_ARROW|STAR|LSQB|RSQB|COMMA")


def error(src: str, **overrides) -> DslError:
    with pytest.raises(DslError) as info:
        load_network(src, **overrides)
    text = info.value.render()
    assert not LEAKS.search(text), text
    assert "Traceback" not in text
    return info.value


def caret(e: DslError) -> tuple[str, int, int]:
    """(quoted source line, caret column, caret width) as rendered."""
    lines = e.render().splitlines()
    i = next(k for k, line in enumerate(lines) if set(line.strip()) == {"^"})
    col = len(lines[i]) - len(lines[i].lstrip()) - 4 + 1
    return lines[i - 1][4:], col, lines[i].count("^")


# (id, program, line, column, caret width, message, hint fragment or "")
CASES = [
    ("unknown layer", H + "x -> convv(4, 3) -> output y\n", 3, 6, 5,
     "unknown layer 'convv'", "did you mean 'conv'?"),
    ("unknown keyword", H + "x -> conv(4, 3, strid=2) -> output y\n", 3, 17, 5,
     "conv has no argument 'strid'", "did you mean 'stride'? conv takes: out_channels, kernel,"),
    ("too many positional", H + "x -> maxpool(2, 2, 0, false, 1, 9) -> output y\n", 3, 33, 1,
     "maxpool takes at most 5 arguments (kernel, stride, pad, ceil_mode, dilation), got 6", ""),
    ("arguments to an op without any", H + "x -> relu(1) -> output y\n", 3, 11, 1,
     "relu takes no arguments, got 1", "write `x -> relu`"),
    ("two inputs to a unary layer", H + "y = relu(x, x)\ny -> output o\n", 3, 5, 10,
     "relu takes 1 input tensor, got 2", "from the chain: `x -> relu`"),
    ("missing required argument", H + "x -> conv(4) -> output y\n", 3, 6, 7,
     "conv needs 'kernel' (window height and width: an int or (height, width))",
     "e.g. conv(64, 3"),
    ("undefined name", H + "y = x -> conv(4, 3)\nz = yy + x\n", 4, 5, 2,
     "undefined name 'yy'", "did you mean 'y'?"),
    ("shape mismatch at +", H + "y = x -> conv(4, 3)\nz = y + x\nz -> output o\n", 4, 5, 5,
     "add: shapes 4x6x6 and 3x8x8 do not match or broadcast", "broadcasting"),
    ("shape mismatch at concat", H + "y = x -> conv(4, 3)\nz = concat(x, y)\nz -> output o\n",
     4, 5, 12, "concat: shapes 3x8x8 and 4x6x6 differ outside the channel axis; all inputs "
     "need the same height and width", ""),
    ("window larger than padded input", H + "x -> maxpool(2) -> conv(4, 5) -> output o\n",
     3, 20, 10, "conv: window 5 is larger than the padded input height 4 (4 + padding 0+0)",
     "input shape 3x4x4"),
    ("channels not divisible by groups", H + "x -> conv(4, 3, groups=2) -> output o\n", 3, 6, 20,
     "conv: 3 input channels are not divisible by groups=2", "input shape 3x8x8"),
    ("bad pad word", H + "x -> conv(4, 3, pad=sam) -> output o\n", 3, 21, 3,
     "conv: pad must be ...",  # the op's own wording; it ends with the valid words
     "did you mean 'same'?"),
    ("dense on a 3-D tensor", H + "x -> dense(10) -> output o\n", 3, 6, 9,
     "dense needs a feature vector, got 3x8x8; add `flatten` before it", ""),
    ("repetition count 0", H + "x -> relu * 0 -> output o\n", 3, 13, 1,
     "repetition count must be an integer from 1 to 10000, got 0", "delete it"),
    ("group repeated by a non-integer", H + "x -> (relu -> relu) * 1.5 -> output o\n", 3, 23, 3,
     "repetition count must be an integer from 1 to 10000, got 1.5", ""),
    ("division by zero", H + "c = 4 // (2 - 2)\nx -> conv(c, 3) -> output o\n", 3, 11, 5,
     "division by zero", ""),
    ("modulo by zero", H + "c = 4 % 0\n", 3, 9, 1, "division by zero", ""),
    ("duplicate output", H + "x -> relu -> output o\nx -> output o\n", 4, 6, 8,
     "output 'o' is declared twice", "give each output its own name"),
    ("return at top level", H + "return x\n", 3, 1, 8,
     "`return` is only valid inside a block", "-> output NAME"),
    ("unused chain", H + "x -> relu\nx -> output o\n", 3, 1, 9,
     "this chain's result is never used", "assign it (`y = ...`)"),
    ("bad input dims", "network n\ninput x: 3 x 0 x 5\nx -> output o\n", 2, 14, 1,
     "input dimensions must be positive integers, got 0", "e.g. 3 x 224 x 224"),
    ("four input dims", "network n\ninput x: 1 x 3 x 8 x 8\nx -> output o\n", 2, 1, 22,
     "an input is channels x height x width, rows x columns (boxes) or a feature count, "
     "got 4 dimensions",
     "input image: 3 x 224 x 224"),
    ("literal weights count", H.replace("3 x", "1 x") +
     "x -> conv(1, 3, bias=false, weights=[1, 2, 3]) -> output o\n", 3, 37, 9,
     "weights has 3 values; weight 1x1x3x3 needs 9", ""),
    ("literal weights shape", "network n\ninput v: 2\n"
     "v -> dense(3, weights=[[1, 2, 3], [4, 5, 6]]) -> output o\n", 3, 23, 22,
     "weights is 2x3; weight needs 3x2", "or as one flat list"),
    ("literal weights not a list", H.replace("3 x", "1 x") +
     "x -> conv(1, 3, bias=false, weights=5) -> output o\n", 3, 37, 1,
     "weights takes a list of numbers such as [1, 0, -1] (nested for several dimensions), "
     "got 5", ""),
    ("literal weights ragged", H.replace("3 x", "1 x") +
     "x -> conv(1, 3, weights=[[1, 2], [3]]) -> output o\n", 3, 25, 13,
     "weights must be nested lists with rows of equal length", ""),
    ("literal weights of tensors", H + "x -> conv(1, 3, weights=[x, 1]) -> output o\n",
     3, 25, 6, "weights must contain only numbers, got a tensor", ""),
    ("bias literal count", "network n\ninput v: 2\nv -> dense(3, bias=[1, 2]) -> output o\n",
     3, 20, 6, "bias has 2 values; bias 3 needs 3", ""),
    ("shared on different shapes", "network n\ninput a: 3 x 8 x 8\ninput b: 4 x 8 x 8\n"
     "shared t = conv(4, 3)\nx1 = a -> t\nx2 = b -> t\noutput o = x1 + x2\n", 6, 11, 1,
     "shared instance 't' is applied to a 4x8x8 input, but its first use was on 3x8x8",
     "every input must have the same shape"),
    ("block keyword typo", H + "block b(c) {\n  return in -> conv(c, 3)\n}\n"
     "x -> b(cc=4) -> output o\n", 6, 8, 2,
     "block 'b' has no parameter 'cc'", "did you mean 'c'?"),
    ("block missing parameter", H + "block b(c, k) {\n  return in -> conv(c, k)\n}\n"
     "x -> b(4) -> output o\n", 6, 6, 4, "block 'b' needs its parameter 'k'", "b(..., k=...)"),
    ("layer used without input", H + "y = relu\ny -> output o\n", 3, 5, 4,
     "'relu' is a layer and needs an input", "write `x -> relu` or `relu(x)`"),
    ("tensor used as a layer", H + "y = x -> relu\nx -> y -> output o\n", 4, 6, 1,
     "'y' is a tensor, not a layer", "concat(a, b)"),
    ("unknown network parameter", "network n(classes = 10)\ninput x: 2\n"
     "x -> dense(classes) -> output o\n", 1, 1, 23,
     "unknown network parameter: clases", "did you mean 'classes'? n takes: classes"),
    ("header not first", "input x: 2\nnetwork n\nx -> output o\n", 2, 1, 9,
     "the `network` header must come first", "move it above"),
    ("no output", H + "y = x -> relu\n", 1, 1, 1, "the network has no output",
     "-> output NAME"),
    ("tensor times number", H + "y = x * 2\ny -> output o\n", 3, 5, 5,
     "cannot apply '*' to a tensor and 2", "tensors combine with +"),
    ("positional after keyword", H + "x -> conv(4, kernel=3, 1) -> output o\n", 3, 24, 1,
     "positional argument after a keyword argument", "put positional arguments first"),
    ("duplicate label", H + "x -> relu as a -> relu as a -> output o\n", 3, 19, 9,
     "the name 'a' is already used for a layer here", ""),
]


@pytest.mark.parametrize("src, line, col, width, message, hint",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_location_message_and_hint(src, line, col, width, message, hint):
    overrides = {"clases": 3} if src.startswith("network n(classes") else {}
    e = error(src, **overrides)
    assert (e.span.file, e.span.line, e.span.column) == ("<string>", line, col)
    if message.endswith("..."):
        assert e.message.startswith(message[:-3])
    else:
        assert e.message == message
    assert hint in e.hint
    quoted, caret_col, caret_width = caret(e)
    assert quoted == src.splitlines()[line - 1]
    assert (caret_col, caret_width) == (col, width)
    assert e.render().startswith(f"<string>:{line}:{col}: error: {e.message}\n")


# -- full rendered text -----------------------------------------------------------------------

def test_render_unknown_layer_in_full():
    e = error(H + "x -> conv(8, 3) -> batchnrm -> output y\n")
    assert e.render() == (
        "<string>:3:20: error: unknown layer 'batchnrm'\n"
        "    x -> conv(8, 3) -> batchnrm -> output y\n"
        "                       ^^^^^^^^\n"
        "  did you mean 'batchnorm'?")


def test_render_keeps_tabs_under_the_caret():
    e = error(H + "block b(c) {\n\treturn in -> conv(c, 3, padd=1)\n}\nx -> b(4) -> output o\n")
    assert e.render() == (
        "<string>:4:26: error: conv has no argument 'padd'\n"
        "    \treturn in -> conv(c, 3, padd=1)\n"
        "    \t                        ^^^^\n"
        "  did you mean 'pad'? conv takes: out_channels, kernel, stride, pad, dilation, groups, "
        "bias, weights\n"
        "  note: in block 'b' called at <string>:6:6")


def test_error_inside_a_block_points_inside_and_names_the_call_site():
    src = H + """block inner(c) {
    y = in -> conv(c, 3)
    return y + in
}
block outer(c) {
    return in -> inner(c)
}
x -> outer(4) as top -> output o
"""
    e = error(src)
    assert e.render() == (
        "<string>:5:12: error: add: shapes 4x6x6 and 3x8x8 do not match or broadcast\n"
        "        return y + in\n"
        "               ^^^^^^\n"
        "  shapes must be equal, or 1 where they differ (broadcasting: a C x 1 x 1 gate scales "
        "a C x H x W map)\n"
        "  note: in block 'inner' called at <string>:8:18\n"
        "  note: in block 'outer' called at <string>:10:6")


def test_block_without_return():
    e = error(H + "block b(c) {\n  y = in -> relu\n}\nx -> b(3) -> output o\n")
    assert e.render() == (
        "<string>:3:1: error: block 'b' does not return a value\n"
        "    block b(c) {\n"
        "    ^^^^^^^^^^^^\n"
        "  end it with `return <chain>`\n"
        "  note: in block 'b' called at <string>:6:6")


def test_direct_recursion():
    e = error(H + "block b(c) {\n  return in -> b(c)\n}\nx -> b(3) -> output o\n")
    assert e.render() == (
        "<string>:4:16: error: block 'b' calls itself\n"
        "      return in -> b(c)\n"
        "                   ^^^^\n"
        "  blocks cannot be recursive; repeat a block with `-> b(...) * n`\n"
        "  note: in block 'b' called at <string>:6:6")


def test_mutual_recursion():
    e = error(H + "block a(c) {\n  return in -> b2(c)\n}\nblock b2(c) {\n  return in -> a(c)\n}\n"
              "x -> a(3) -> output o\n")
    assert e.message == "blocks call each other in a cycle: a -> b2 -> a"
    assert (e.span.line, e.span.column) == (7, 16)
    assert e.notes == ["in block 'b2' called at <string>:4:16",
                       "in block 'a' called at <string>:9:6"]


# -- syntax errors ----------------------------------------------------------------------------

def test_syntax_error_lists_what_was_expected_readably():
    e = error(H + "x -> conv(4 3) -> output o\n")
    assert e.render() == (
        "<string>:3:13: error: unexpected number 3\n"
        "    x -> conv(4 3) -> output o\n"
        "                ^\n"
        "  expected `)`, `,`, `->` or an operator (+ - * / // %)\n"
        "  note: the '(' at <string>:3:10 is still open")


def test_syntax_error_after_equals_expects_a_value():
    e = error(H + "y = = x\n")
    assert (e.span.line, e.span.column, e.message) == (3, 5, "unexpected '='")
    assert e.hint == "expected a value (a number, a name or a layer)"


def test_syntax_error_extra_token_at_end_of_line():
    e = error(H + "x -> relu -> output o x\n")
    assert (e.span.line, e.span.column, e.message) == (3, 23, "unexpected 'x'")
    assert e.hint == "expected `->` or end of line"


def test_unmatched_closing_parenthesis():
    e = error(H + "x -> conv(4, 3)) -> output o\n")
    assert (e.span.line, e.span.column) == (3, 16)
    assert e.message == "unexpected ')': no '(' is open"


def test_unclosed_parenthesis_at_end_of_file():
    e = error(H + "x -> conv(4, 3 -> relu")
    assert e.render() == (
        "<string>:3:10: error: '(' is never closed\n"
        "    x -> conv(4, 3 -> relu\n"
        "             ^\n"
        "  add the matching ')'")


def test_unclosed_block_brace():
    e = error(H + "block b(c) {\n  return in -> conv(c, 3)\n")
    assert (e.span.line, e.span.column, e.message) == (3, 12, "'{' is never closed")


def test_unclosed_parenthesis_before_the_next_statement():
    e = error(H + "y = x -> conv(4, 3\nz = y -> relu\n")
    assert (e.span.line, e.span.column, e.message) == (4, 1, "unexpected name 'z'")
    assert e.notes == ["the '(' at <string>:3:14 is still open"]


def test_unknown_character():
    e = error(H + "x -> conv(4, 3) $ -> output o\n")
    assert e.render() == (
        "<string>:3:17: error: unexpected character '$'\n"
        "    x -> conv(4, 3) $ -> output o\n"
        "                    ^\n"
        "  expected `->`, `as`, an operator (+ - * / // %) or end of line")


def test_pasted_lookalike_characters_get_a_hint():
    e = error("network n\ninput x: 3 × 8 × 8\n")
    assert (e.span.line, e.span.column) == (2, 12)
    assert e.message == "unexpected character '×'"
    assert e.hint == "write `x` between dimensions (3 x 224 x 224)"


def test_misspelt_keyword():
    e = error("netwrk n\ninput x: 2\n")
    assert (e.span.line, e.span.column) == (1, 8)
    assert e.hint == "did you mean the keyword `network` instead of `netwrk`?"


def test_expected_lists_have_no_internal_names():
    programs = ["network\n", "network n(", "input x 3", "x ->", "block b(c {\n}", "y = [1, ",
                "from x import y", "import blocks", H + "x -> (relu -> ) -> output o",
                H + "shared = conv(1, 1)", H + "x -> conv(4, 3) as -> output o"]
    for src in programs:
        e = error(src)
        assert e.span is not None and e.span.line >= 1
        assert e.hint.startswith(("expected ", "add the matching")), (src, e.render())


# -- imports ----------------------------------------------------------------------------------

def test_import_of_a_missing_file(tmp_path):
    (tmp_path / "net.cnn").write_text('import "nothere.cnn"\nnetwork n\n')
    with pytest.raises(DslError) as info:
        load_network(tmp_path / "net.cnn")
    e = info.value
    assert (e.span.file, e.span.line, e.span.column) == (str(tmp_path / "net.cnn"), 1, 1)
    assert e.message == "cannot find 'nothere.cnn' to import"
    assert caret(e) == ('import "nothere.cnn"', 1, 20)
    assert "relative to the importing file" in e.hint


def test_import_cycle(tmp_path):
    (tmp_path / "a.cnn").write_text('import "b.cnn"\nnetwork a\ninput x: 2\nx -> output o\n')
    (tmp_path / "b.cnn").write_text('# b needs a\nimport "a.cnn"\n')
    with pytest.raises(DslError) as info:
        load_network(tmp_path / "a.cnn")
    e = info.value
    assert e.message == "import cycle: a.cnn -> b.cnn -> a.cnn"
    assert (e.span.file, e.span.line, e.span.column) == (str((tmp_path / "b.cnn").resolve()),
                                                         2, 1)
    assert caret(e) == ('import "a.cnn"', 1, 14)


def test_from_import_of_a_missing_block(tmp_path):
    (tmp_path / "blocks.cnn").write_text("block basic(c) {\n  return in\n}\n")
    (tmp_path / "net.cnn").write_text('from "blocks.cnn" import basci\nnetwork n\n')
    with pytest.raises(DslError) as info:
        load_network(tmp_path / "net.cnn")
    assert info.value.message == "blocks.cnn defines no block 'basci'"
    assert info.value.hint == "did you mean 'basic'? it defines: basic"


def test_error_inside_an_imported_block_quotes_that_file(tmp_path):
    (tmp_path / "blocks.cnn").write_text("block bad(c) {\n  return in -> conv(c, 3, groups=2)\n}\n")
    (tmp_path / "net.cnn").write_text('import "blocks.cnn"\nnetwork n\ninput x: 3 x 8 x 8\n'
                                      'x -> bad(4) -> output o\n')
    with pytest.raises(DslError) as info:
        load_network(tmp_path / "net.cnn")
    text = info.value.render()
    # files are named relative to the model's folder, never by absolute paths
    assert text.splitlines()[0] == ("blocks.cnn:2:16: error: conv: 3 "
                                    "input channels are not divisible by groups=2")
    assert text.splitlines()[1] == "      return in -> conv(c, 3, groups=2)"
    assert info.value.notes == ["in block 'bad' called at net.cnn:4:6"]


def test_missing_zoo_name_suggests_the_closest():
    with pytest.raises(DslError) as info:
        load_network("resnet19")
    assert info.value.message == "no file 'resnet19' and no zoo network of that name"
    assert info.value.hint.startswith("did you mean 'resnet18'?")
