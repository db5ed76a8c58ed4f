"""Bounded work and bounded numbers: every program is answered in bounded time and memory,
with a located error that names the limit it went past (nesting, evaluation depth and steps,
nodes, numbers, sizes: ``dsl/limits.py``). Those limits bound the work; what the tests assert
is which limit stopped each program, never how fast (each case answers in about a second or
less). A generous alarm only turns a hang into a failure."""

from __future__ import annotations

import signal

import pytest

from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError
from cnnc.dsl.limits import (
    MAX_DEPTH,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_INT,
    MAX_NESTING,
    MAX_NODES,
    MAX_STEPS,
)

H = "input x: 3 x 8 x 8\n"
HANG_S = 300  # hang protection only, far above any answer on the slowest machine


def _hang(signum, frame):
    raise AssertionError(f"no answer within {HANG_S} s: a hang")


def refused(src: str, **overrides) -> DslError:
    """The DslError for `src` (a hang fails after HANG_S), which must render with a caret."""
    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HANG_S)
    try:
        with pytest.raises(DslError) as info:
            load_network(src, **overrides)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    e = info.value
    assert e.span is not None and e.span.file == "<string>"
    text = e.render()
    assert text.startswith(f"<string>:{e.span.line}:{e.span.column}: error: ")
    assert "^" in text.split("\n")[2]
    return e


# -- nesting ----------------------------------------------------------------------------------

def test_600_nested_parentheses_are_a_located_nesting_error_not_a_recursion_error():
    e = refused(H + "x -> conv(" + "(" * 600 + "4" + ")" * 600 + ", 1) -> output y\n")
    assert e.message.startswith(f"nesting too deep: more than {MAX_NESTING} levels")
    assert e.span.line == 2


@pytest.mark.parametrize("value", ["-" * 5000 + "1", "+".join(["1"] * 5000),
                                   "[" * 3000 + "1" + "]" * 3000],
                         ids=["signs", "sum", "lists"])
def test_deep_operator_and_list_nesting_is_refused(value):
    e = refused(H + f"x -> conv({value}, 1) -> output y\n")
    assert "nesting too deep" in e.message


def test_nesting_just_under_the_limit_still_builds():
    depth = 20  # the zoo needs at most 14 levels in all
    g = load_network(H + "x -> conv(" + "(" * depth + "4" + ")" * depth + ", 1) -> output y\n")
    assert g.node(g.outputs["y"]).type.shape == (4, 8, 8)


def test_blocks_calling_blocks_300_deep_are_refused_at_the_limit():
    blocks = "block b0() {\n  return in -> relu\n}\n" + "".join(
        f"block b{i}() {{\n  return in -> b{i - 1}()\n}}\n" for i in range(1, 300))
    e = refused(blocks + H + "x -> b299() -> output y\n")
    assert e.message.startswith(f"evaluation nested too deeply: more than {MAX_DEPTH}")


# -- total work -------------------------------------------------------------------------------

def test_repetition_inside_repetition_is_capped_in_total_nodes():
    e = refused("block b() {\n  return in -> relu * 10000\n}\n" + H +
                "x -> b() * 10000 -> output y\n")
    assert e.message.startswith(f"the network is too large: more than {MAX_NODES:,} nodes")
    assert (e.span.line, e.span.column) == (2, 16)  # the relu that would be one too many


def test_repetition_of_blocks_that_add_nothing_is_capped_in_steps():
    src = ("block b() {\n  return in\n}\nblock c() {\n  return in -> b() * 10000\n}\n" + H +
           "x -> c() * 10000 -> output y\n")
    e = refused(src)
    assert e.message.startswith(f"the program takes too long to evaluate: more than "
                                f"{MAX_STEPS:,} steps")


def test_nested_stage_groups_are_capped():
    e = refused(H + "x -> (relu -> (relu -> relu * 100) * 100) * 100 -> output y\n")
    assert "the network is too large" in e.message


def test_a_large_but_allowed_network_builds():
    g = load_network(H + "x -> relu * 5000 -> output y\n")
    assert len(g) == 5001


# -- numbers ----------------------------------------------------------------------------------

def test_400_digit_number_is_a_located_error():
    e = refused(H + "x -> conv(" + "9" * 400 + ", 1) -> output y\n")
    assert e.message.startswith("number too large: 9999999999...999999 (400 characters)")
    assert (e.span.line, e.span.column) == (2, 11)


def test_5000_digit_number_is_refused_without_pythons_int_conversion_limit():
    e = refused(H + "x -> conv(" + "7" * 5000 + ", 1) -> output y\n")
    assert e.message.startswith("number too large")


def test_float_literal_beyond_float64_is_an_error_not_inf():
    e = refused("input x: 1 x 4 x 4\nx -> conv(1, 1, weights=[1e400]) -> output y\n")
    assert e.message.startswith("number too large: 1e400")
    assert (e.span.line, e.span.column, e.span.end_column) == (2, 26, 31)


def test_literal_weight_beyond_float32_is_an_error_not_inf():
    e = refused("input x: 1 x 4 x 4\nx -> conv(1, 1, weights=[1e39]) -> output y\n")
    assert e.message == "weights value 1e+39 does not fit a 32-bit float (at most about 3.4e+38)"


def test_repeated_squaring_stops_at_the_integer_limit():
    lines = "a0 = 10\n" + "".join(f"a{i} = a{i - 1} * a{i - 1}\n" for i in range(1, 40))
    e = refused(H + lines + "x -> conv(a39, 1) -> output y\n")
    assert e.message.startswith(f"the result of '*' is too large (numbers are at most 2^53 = "
                                f"{MAX_INT:,}")
    assert e.span.line == 6  # a4 = a3 * a3 = 10^16, the first value above 2^53 (9.0e15)


@pytest.mark.parametrize("expr", ["1e308 * 10", "1e308 / 1e-308", "1e308 // 1e-308"])
def test_float_arithmetic_that_overflows_is_an_error(expr):
    e = refused(H + f"r = {expr}\nx -> dropout(r) -> output y\n")
    assert "is too large" in e.message and e.span.line == 2


def test_huge_network_parameter_value_is_refused_at_the_parameter():
    e = refused("network n(c = 3)\n" + H + "x -> conv(c, 1) -> output y\n", c=10**400)
    assert "network parameter 'c' is too large" in e.message
    assert e.span.line == 1


# -- sizes ------------------------------------------------------------------------------------

def test_dense_with_100_million_features_is_refused_where_it_is_written():
    e = refused("input x: 16\nx -> dense(100000000) -> output y\n")
    assert e.message == (f"dense: out_features 100,000,000 is larger than the limit of "
                         f"{MAX_DIM:,} (2^20) per dimension")
    assert (e.span.column, e.span.end_column) == (12, 21)


def test_two_wide_convolutions_are_refused_for_their_weight_size():
    e = refused(H + "x -> conv(100000, 1) -> conv(100000, 1) -> output y\n")
    assert e.message == ("conv: its weight would be 100000x100000x1x1 = 10,000,000,000 "
                         f"elements; a tensor may have at most {MAX_ELEMENTS:,} (2^30, 4 GiB "
                         "of float32)")
    assert e.span.column == 25  # the second conv


def test_huge_output_is_refused():
    e = refused("input x: 64 x 64 x 64\nx -> resize(scale=1000) -> output y\n")
    assert "its output would be" in e.message


def test_huge_input_is_refused():
    e = refused("input x: 3 x 100000 x 100000\nx -> relu -> output y\n")
    assert "input 'x' would be 3x100000x100000" in e.message
    e = refused("input x: 3 x 2000000 x 1\nx -> relu -> output y\n")
    assert e.message.startswith("input dimension 2,000,000 is larger than the limit")


@pytest.mark.parametrize("args", ["4, 3000000", "4, 3, stride=3000000", "4, 3, pad=3000000",
                                  "4, 3, dilation=(1, 3000000)"])
def test_every_size_attribute_is_bounded(args):
    e = refused(H + f"x -> conv({args}) -> output y\n")
    assert "is larger than the limit of 1,048,576 (2^20) per dimension" in e.message


def test_huge_padding_is_refused_for_the_padded_copy_it_implies():
    e = refused("input x: 1 x 4 x 4\nx -> maxpool(1048576, pad=same) -> output y\n")
    assert e.message.startswith("maxpool: its padded input would be 1x1048576x1048576")


def test_float_attribute_beyond_float32_is_refused():
    e = refused("input x: 1 x 4 x 4\nx -> pad(1, value=1e300) -> output y\n")
    assert e.message == "pad: value 1e+300 does not fit a 32-bit float (at most about 3.4e+38)"
    assert (e.span.column, e.span.end_column) == (19, 24)  # the value, not the keyword


@pytest.mark.parametrize("layer, fragment", [
    ("conv(" + "9" * 400 + ", 1)", "number too large"),
    ("conv(100000, 1) -> conv(100000, 1)", "a tensor may have at most"),
    ("flatten -> dense(100000000)", "larger than the limit of 1,048,576"),
])
def test_cnnc_summary_answers_oversized_programs_with_a_located_error(tmp_path, capsys, layer,
                                                                      fragment):
    from cnnc.runtime.cli import main

    path = tmp_path / "big.cnn"
    path.write_text(f"input x: 3 x 8 x 8\nx -> {layer} -> output y\n")
    assert main(["summary", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("big.cnn:2:") and fragment in err and "^" in err
    assert "bug in cnnc" not in err and "Traceback" not in err
