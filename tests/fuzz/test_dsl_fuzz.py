"""Fuzzing the DSL front end: generated programs (valid and near-valid, from the grammar's
pieces) and byte-level mutants of the zoo programs.

Every input must be answered with either a clean user error (the types the CLI reports
without a traceback: DslError, ShapeError, AttrError, ...), whose rendering works, or a Graph
that passes `verify()` and can be summarized. Anything else fails the test. The work is bounded
by the DSL's limits (``dsl/limits.py``: nesting, evaluation steps, nodes, numbers, sizes) and by
the inputs' sizes and counts here; no test asserts how fast an input is answered, a generous
watchdog only turns a hang into a failure.

The short run is part of the suite (well under a minute on one core). The long run, thousands
of inputs per strategy, runs with `CNNC_FUZZ_LONG=1`.
"""

from __future__ import annotations

import gc
import os
import random
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cnnc.compiler.ir import Graph
from cnnc.compiler.ops import REQUIRED, all_names, get_op
from cnnc.dsl.builder import load_network
from cnnc.dsl.errors import DslError, source_lines
from cnnc.runtime.cli import user_errors
from cnnc.runtime.summary import format_summary, summarize
from cnnc.zoo import ZOO_DIR

LONG = os.environ.get("CNNC_FUZZ_LONG") == "1"
# Hang protection, per input: CPU seconds of the whole process (every thread of this test
# worker, so far above any answer: a CI run once charged 10 s to a 1.4 s input under load), and
# wall-clock seconds for an input that blocks without computing. Not a benchmark: every input
# answers in about a second or less.
WATCHDOG_S = 120
WALL_S = 300


def fuzz_settings(short: int, long: int = 3000):
    # No explain phase: it runs every example under a line tracer (several times slower).
    return settings(max_examples=long if LONG else short, deadline=None, database=None,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class Hang(Exception):
    """An input took longer than its budget."""


def _hang(signum, frame):
    raise Hang(f"no answer within {WATCHDOG_S} s of CPU time or {WALL_S} s of wall time")


def answer(source: str | Path) -> str:
    """Load `source`; 'graph' or 'error' for the acceptable outcomes, else the test fails."""
    old = {sig: signal.signal(sig, _hang) for sig in (signal.SIGALRM, signal.SIGPROF)}
    # Hypothesis's own heap grows over thousands of examples; frozen, the garbage collector
    # skips it (no full collections of the test's heap inside each answer).
    gc.freeze()
    signal.setitimer(signal.ITIMER_PROF, WATCHDOG_S)
    signal.alarm(WALL_S)
    try:
        graph = load_network(source)
    except user_errors() as e:
        _stop_timers()
        if isinstance(e, DslError):
            check_rendering(e, source)
        else:
            assert str(e)
        return "error"
    finally:
        _stop_timers()
        gc.unfreeze()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    assert isinstance(graph, Graph)
    graph.verify()
    assert graph.outputs
    format_summary(summarize(graph))  # the accounting must take any graph the DSL builds
    return "graph"


def _stop_timers() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)
    signal.alarm(0)


def check_rendering(e: DslError, source: str | Path) -> None:
    """A located error quotes a real line of its file, with a caret; it never leaks a repr."""
    text = e.render()
    assert "Traceback" not in text and "object at 0x" not in text
    if e.span is None:
        return
    assert e.span.line >= 1 and e.span.column >= 1
    if isinstance(source, str) and e.span.file == "<string>":
        lines = source_lines(source)
        assert e.span.line <= len(lines), (e.span, len(lines))


# -- programs from the grammar's pieces -------------------------------------------------------

LAYERS = sorted(n for n in all_names() if n not in ("input", "param"))
WORDS = ["same", "valid", "bilinear", "nearest", "channels", "tanh", "none", "horizontal",
         "both", "in", "x", "c", "undefined_name"]
MISSPELT = ["convv", "rel", "dens", "maxpol", "outptu", "blok"]

small_int = st.integers(0, 8)
odd_int = st.sampled_from([-1, 0, 16, 255, 1 << 20, (1 << 20) + 1, 10 ** 12, 10 ** 16,
                           10 ** 40])
number_text = st.one_of(
    small_int.map(str), small_int.map(str), small_int.map(str), small_int.map(str),
    odd_int.map(str), st.sampled_from(["0.5", "1e-3", "2.", ".25", "-3", "0.0"]),
    st.sampled_from(["1e400", "1e39", "1e308"]))


@st.composite
def value(draw, depth: int = 0) -> str:
    """A value expression: a number, a word, a tuple or list, arithmetic, a shape built-in."""
    kind = draw(st.integers(0, 9 if depth < 3 else 2))
    if kind <= 3:
        return draw(number_text)
    if kind == 4:
        return draw(st.sampled_from(WORDS + ["true", "false"]))
    if kind == 5:
        items = draw(st.lists(value(depth + 1), min_size=2, max_size=3))
        return "(" + ", ".join(items) + ")"
    if kind == 6:
        items = draw(st.lists(value(depth + 1), min_size=0, max_size=4))
        return "[" + ", ".join(items) + "]"
    if kind == 7:
        op = draw(st.sampled_from(["+", "-", "*", "/", "//", "%"]))
        return f"{draw(value(depth + 1))} {op} {draw(value(depth + 1))}"
    if kind == 8:
        return f"{draw(st.sampled_from(['channels', 'height', 'width']))}(in)"
    return f"-{draw(value(depth + 1))}"


@st.composite
def typed_value(draw, attr) -> str:
    """A plausible value for one attribute, by its kind (mostly valid, sometimes not)."""
    kind = attr.kind
    if kind == "int":
        return str(draw(st.integers(1, 8)))
    if kind == "ints":
        if draw(st.booleans()):
            return str(draw(st.integers(1, 3)))
        return f"({draw(st.integers(1, 3))}, {draw(st.integers(1, 3))})"
    if kind == "pads":
        return draw(st.sampled_from(["0", "1", "same", "valid", "(1, 0)", "(0, 1, 1, 0)"]))
    if kind == "choice" and attr.choices:
        return draw(st.sampled_from(list(attr.choices)))
    if kind == "float":
        return draw(st.sampled_from(["0.1", "0.5", "1e-5", "0.9", "2.0"]))
    if kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    return draw(value(2))


# The layers real networks use most, drawn more often than the rest.
COMMON = ["conv", "relu", "maxpool", "avgpool", "batchnorm", "dense", "flatten",
          "globalavgpool", "sigmoid", "dropout", "conv_transpose", "resize"]


@st.composite
def layer_call(draw, blocks: tuple[str, ...], depth: int = 0, wild: bool = False) -> str:
    """`name(args) [as label]` for a layer, a block, or a misspelt name. Arguments are typed
    by the layer's signature unless `wild` (then any values)."""
    pool = LAYERS + COMMON * 3 + list(blocks) * 8 + (MISSPELT if wild else [])
    name = draw(st.sampled_from(pool))
    args: list[str] = []
    if name in LAYERS:
        sig = get_op(name).signature
        required = 0 if wild else sum(a.default is REQUIRED for a in sig)
        n_pos = draw(st.integers(min(required, len(sig)), max(min(len(sig), 3), required)))
        pick = (lambda a: draw(arg_value(depth))) if wild else (lambda a: draw(typed_value(a)))
        args += [pick(a) for a in sig[:n_pos]]
        extra = [a for a in sig[n_pos:] if a.kind != "tensor" or wild]
        if extra:
            for attr in draw(st.lists(st.sampled_from(extra), max_size=2, unique=True)):
                args.append(f"{attr.name}={pick(attr)}")
    elif name in blocks and draw(st.booleans()):
        args += [str(draw(st.integers(1, 6))) for _ in range(draw(st.integers(0, 1)))]
    elif wild:
        args += [draw(arg_value(depth)) for _ in range(draw(st.integers(0, 2)))]
    text = name if not args and draw(st.booleans()) else f"{name}({', '.join(args)})"
    if name != "s" and draw(st.integers(0, 9)) == 0:
        text += f" as {draw(st.sampled_from(['l', 'conv', 'y']))}{draw(st.integers(1, 99))}"
    return text


@st.composite
def arg_value(draw, depth: int) -> str:
    if depth < 2 and draw(st.integers(0, 7)) == 0:  # a whole chain as an argument
        return draw(chain("x", (), depth + 1, True))
    return draw(value(depth))


@st.composite
def stage(draw, blocks: tuple[str, ...], depth: int, wild: bool = False) -> str:
    kind = draw(st.integers(0, 9 if depth < 2 else 6))
    call = draw(layer_call(blocks, depth, wild))
    if kind <= 5:
        return call
    if kind == 6:
        counts = ["2", "3", "0", "c", "10001", "1.5"] if wild else ["2", "3"]
        return f"{call} * {draw(st.sampled_from(counts))}"
    inner = draw(st.lists(stage(blocks, depth + 1, wild), min_size=1, max_size=3))
    return f"({' -> '.join(inner)}) * {draw(st.sampled_from(['2', '3', '1']))}"


@st.composite
def chain(draw, head: str, blocks: tuple[str, ...], depth: int = 0, wild: bool = False) -> str:
    if draw(st.integers(0, 6)) == 0:
        other = draw(st.sampled_from([head, "in", "x", "a"])) if wild else head
        op = draw(st.sampled_from(["add", "concat", "mul"]))
        head = f"{op}({head}, {other} -> {draw(layer_call(blocks, depth + 1, wild))})"
    elif draw(st.integers(0, 8)) == 0:
        head = f"({head} {draw(st.sampled_from(['+', '*', '-']))} {head} -> relu)"
    stages = draw(st.lists(stage(blocks, depth, wild), min_size=0, max_size=4))
    return " -> ".join([head] + stages)


@st.composite
def program(draw, wild: bool | None = None) -> str:
    """A whole program: header, inputs, blocks, statements, outputs. Mostly well-typed; a
    `wild` one (drawn now and then) takes any values, names and counts anywhere."""
    if wild is None:
        wild = draw(st.integers(0, 3)) == 0
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append("network fuzz(c = " + (draw(number_text) if wild else "3") + ")")
    imported: list[str] = []
    if draw(st.integers(0, 5)) == 0:  # zoo files are found by the importer's search path
        line, names = draw(st.sampled_from(IMPORTS))
        lines.append(line)
        imported += names
    if draw(st.integers(0, 4)):
        c, h, w = (draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
        lines.append(f"input x: {c} x {h} x {w}")
    else:
        lines.append(f"input x: {draw(st.integers(1, 16))}")
    blocks: list[str] = imported
    for i in range(draw(st.integers(0, 2))):
        name = f"b{i}"
        params = draw(st.sampled_from(["", "c = 4", "c", "c = 2, k = 3"]))
        inner = tuple(blocks)
        body = [f"  a = {draw(chain('in', inner, 1, wild))}",
                f"  return {draw(chain(draw(st.sampled_from(['a', 'in'])), inner, 1, wild))}"]
        if draw(st.booleans()):
            body = ["  return " + body[1].split("return ", 1)[1].replace("a", "in", 1)
                    if body[1].startswith("  return a") else body[1]]
        lines += [f"block {name}({params}) {{"] + body + ["}"]
        blocks.append(name)
    if draw(st.integers(0, 3)) == 0:
        lines.append(f"shared s = {draw(layer_call(tuple(blocks), 0, wild)).split(' as ')[0]}")
        blocks.append("s")
    lines.append(f"a = {draw(chain('x', tuple(blocks), 0, wild))}")
    for i in range(draw(st.integers(1, 2))):
        head = draw(st.sampled_from(["a", "x"]))
        lines.append(f"{draw(chain(head, tuple(blocks), 0, wild))} -> output y{i}")
    return "\n".join(lines) + "\n"


IMPORTS = [('from "resnet18.cnn" import basic', ["basic"]),
           ('from "googlenet.cnn" import conv_relu, inception', ["conv_relu", "inception"]),
           ('import "vgg16.cnn"', ["stage"]), ('import "missing.cnn"', []),
           ('from "vgg16.cnn" import nothing', [])]


# Token-level edits that make near-valid programs from valid-looking ones.
TOKENS = ["(", ")", "[", "]", "{", "}", ",", "->", "=", ":", "x", "*", "+", "//", "\n", " ",
          "#", '"', "as", "output", "return", "block", "in", "input", "1", "0", "-", "\t",
          "\u2028", "\x85", "\f", "\r", "é", "→"]


@st.composite
def near_valid(draw) -> str:
    src = draw(program())
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(src)))
        edit = draw(st.integers(0, 2))
        if edit == 0:
            src = src[:pos] + draw(st.sampled_from(TOKENS)) + src[pos:]
        elif edit == 1:
            src = src[:pos] + src[pos + draw(st.integers(1, 4)):]
        else:
            n = draw(st.integers(1, 8))
            src = src[:pos] + src[pos:pos + n] * draw(st.integers(2, 3)) + src[pos:]
    return src


@fuzz_settings(short=250)
@given(program())
def test_generated_programs_are_answered_cleanly(src):
    answer(src)


@fuzz_settings(short=250)
@given(near_valid())
def test_near_valid_programs_are_answered_cleanly(src):
    answer(src)


# -- the hostile end: deep nesting, runaway repetition, huge numbers ---------------------------

@st.composite
def stress(draw) -> str:
    """Programs built to take unbounded work: nesting far past any limit, repetition inside
    repetition, numbers of hundreds of digits, values past the float range."""
    depth = draw(st.integers(1, 800))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        opener, closer = draw(st.sampled_from([("(", ")"), ("[", "]"), ("-", ""), ("(-", ")")]))
        arg = opener * depth + "4" + closer * depth
        return f"input x: 3 x 8 x 8\nx -> conv({arg}, 1) -> output y\n"
    if kind == 1:
        inner, outer = draw(st.integers(1, 10000)), draw(st.integers(1, 10000))
        layer = draw(st.sampled_from(["relu", "identity", "conv(3, 1)", "dropout(0.1)"]))
        return (f"block b() {{\n  return in -> {layer} * {inner}\n}}\n"
                f"input x: 3 x 8 x 8\nx -> b() * {outer} -> output y\n")
    if kind == 2:  # repetition of blocks that add no node at all
        levels = draw(st.integers(1, 4))
        lines = ["block b0() {", "  return in", "}"]
        for i in range(1, levels + 1):
            lines += [f"block b{i}() {{", f"  return in -> b{i - 1}() * "
                      f"{draw(st.integers(1, 10000))}", "}"]
        return "\n".join(lines) + f"\ninput x: 3 x 8 x 8\nx -> b{levels}() -> output y\n"
    if kind == 3:
        digits = draw(st.integers(10, 6000))
        where = draw(st.sampled_from(["conv({n}, 1)", "conv(4, 3, stride={n})", "dense({n})",
                                      "dropout({n})", "conv(4, 1, weights=[{n}])"]))
        n = draw(st.sampled_from(["9", "1", "7"])) * digits
        if draw(st.booleans()):
            n = f"1e{digits}"
        return f"input x: 4 x 8 x 8\nx -> {where.format(n=n)} -> output y\n"
    if kind == 4:  # a chain of blocks, each calling the one before
        n = min(depth, 400)
        blocks = "block b0() {\n  return in -> relu\n}\n" + "".join(
            f"block b{i}() {{\n  return in -> b{i - 1}()\n}}\n" for i in range(1, n))
        return blocks + f"input x: 3 x 8 x 8\nx -> b{n - 1}() -> output y\n"
    squarings = draw(st.integers(1, 40))  # numbers that grow by arithmetic
    lines = ["a0 = 7"] + [f"a{i} = a{i - 1} * a{i - 1}" for i in range(1, squarings + 1)]
    return ("input x: 3 x 8 x 8\n" + "\n".join(lines) +
            f"\nx -> conv(a{squarings} % 5 + 1, 1) -> output y\n")


@fuzz_settings(short=15, long=400)
@given(stress())
def test_hostile_programs_are_answered_within_the_limits(src):
    answer(src)


# -- byte-level mutants of the zoo ------------------------------------------------------------

ZOO = sorted(ZOO_DIR.glob("*.cnn"))
INTERESTING = [b"(", b")", b"->", b"*", b"9" * 30, b"\n", b"#", b"\xe2\x80\xa8", b"\x00",
               b"\xff", b"-", b"0", b"1e400", b"{", b"}", b" * 10000", b"\r"]


def mutate(data: bytes, rng: random.Random, edits: int) -> bytes:
    """`edits` random byte edits: flip, replace, insert, delete, duplicate a slice."""
    buf = bytearray(data)
    for _ in range(edits):
        pos = rng.randrange(len(buf) + 1)
        kind = rng.randrange(6)
        if kind == 0 and pos < len(buf):
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1 and pos < len(buf):
            buf[pos] = rng.randrange(256)
        elif kind == 2:
            buf[pos:pos] = rng.choice(INTERESTING)
        elif kind == 3:
            del buf[pos:pos + rng.randrange(1, 16)]
        elif kind == 4:
            n = rng.randrange(1, 40)
            buf[pos:pos] = buf[pos:pos + n] * rng.randrange(2, 4)
        else:
            buf[pos:pos] = bytes([rng.randrange(256)])
    return bytes(buf)


@fuzz_settings(short=300, long=6000)
@given(st.sampled_from(ZOO), st.integers(0, 2**32 - 1), st.integers(1, 6),
       st.sampled_from(["text", "file"]))
def test_zoo_mutants_are_answered_cleanly(tmp_path_factory, path, seed, edits, how):
    data = mutate(path.read_bytes(), random.Random(seed), edits)
    if how == "file":
        target = tmp_path_factory.mktemp("mutant") / path.name
        target.write_bytes(data)
        answer(target)  # a Path: read as a file, UTF-8 decoding errors included
    else:
        text = data.decode("utf-8", errors="replace")
        if "\n" not in text and "->" not in text:
            text += "\n"  # keep it program text (not a file name)
        answer(text)


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_every_zoo_program_builds(path):
    """The unmutated zoo is the valid end of the mutation test's range."""
    assert answer(path) == "graph"
