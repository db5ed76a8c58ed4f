"""The README and docs/ are tests: every command and code block they show runs, and the output
they show is what the program prints.

A fence's tag says what its block is:

- ``console``: a session. Each ``$ cnnc ...`` line runs; the lines under it are output that
  must appear in what it printed, in order (``...`` matches anything within a line; runs of
  spaces match any spaces). A comment ``# exit status N`` after the command is the status it
  must end with (0 otherwise).
- ``sh``: commands without shown output; each must end with status 0.
- ``python``: a script. The scripts of one page share their names, like a notebook's cells.
- ``pycon``: an interactive session, run by doctest (``...`` elides output).
- ``cnn``: a program in cnnc's language. It must build (``cnn error``: it must fail with a
  located error, the page's example of a mistake); when its first line is ``# NAME.cnn`` it is
  written to that file for the blocks after it.
- ``text``: not run (synopses, diagrams, trees). Each ``cnnc COMMAND`` line of a text block
  may only name options that ``cnnc COMMAND --help`` lists.

A page runs top to bottom in one temporary folder (a command reads the files an earlier block
wrote), so each page is one test. Commands run in this process through the CLI's ``main``, at
the suite's compile target, so they reuse the kernels the rest of the suite compiles. Commands
that do not run here on purpose are in ``NOT_RUN`` with the reason.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnnc.compiler.passes import optimize
from cnnc.dsl.builder import load_network, load_zoo
from cnnc.dsl.errors import DslError
from cnnc.runtime.cli import main as cnnc_main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: The fence tags a page may use, and whether the test runs them.
RUN_TAGS = {"console", "sh", "python", "pycon", "cnn"}
SHOW_TAGS = {"text"}

#: Commands shown but not run here, by their exact text (comment removed), with the reason.
NOT_RUN = {
    "make demo": "installs .venv and compiles ResNet-18 at full size for this machine's CPU; "
                 "its parts (compile, check, run) run in 'A first session' on LeNet-5",
    "make test": "it runs this suite",
    ".venv/bin/python bench/bench_conv_layers.py":
        "needs the benchmark peers (torch, OpenVINO: make bench-deps) and minutes of timing",
    ".venv/bin/python bench/bench_networks.py":
        "needs the benchmark peers (torch, OpenVINO: make bench-deps) and minutes of timing",
}

EXIT_STATUS = re.compile(r"exit status (\d+)")


@dataclass
class Block:
    tag: str  # the fence's language: its first word
    text: str
    line: int  # the fence's line in the page, 1-based
    info: str = ""  # the words after the language (``cnn error``)

    def where(self, page: Path) -> str:
        return f"{page.relative_to(ROOT)}:{self.line} ({self.tag})"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with their tags and lines (a fence may be
    indented, inside a list item: the block loses that indentation)."""
    found: list[Block] = []
    tag, indent, start, body = None, "", 0, []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.lstrip()
        if tag is None:
            if stripped.startswith("```"):
                tag, _, info = stripped[3:].strip().partition(" ")
                start, body, indent = number, [], line[:len(line) - len(stripped)]
            continue
        if stripped.startswith("```"):
            found.append(Block(tag, "\n".join(body) + "\n", start, info.strip()))
            tag = None
            continue
        body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
    assert tag is None, f"{page.name}:{start}: a fence is never closed"
    return found


@dataclass
class Command:
    text: str  # the command without its comment
    status: int  # the exit status the page says it ends with
    output: list[str]  # the lines shown under it (console blocks)


def split_comment(line: str) -> tuple[str, str]:
    """``cnnc run x  # note`` -> (``cnnc run x``, ``note``): the first ``#`` outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1:].strip()
    return line.strip(), ""


def commands(block: Block) -> list[Command]:
    """The commands of a ``sh`` or ``console`` block, each with its shown output."""
    found: list[Command] = []
    for line in block.text.splitlines():
        if block.tag == "console" and not line.startswith("$ "):
            if line.strip():
                assert found, f"output before any command: {line!r}"
                found[-1].output.append(line)
            continue
        text, comment = split_comment(line[2:] if block.tag == "console" else line)
        if text:
            match = EXIT_STATUS.search(comment)
            found.append(Command(text, int(match.group(1)) if match else 0, []))
    return found


def output_pattern(shown: str) -> re.Pattern[str]:
    """A shown output line as a pattern: ``...`` is anything, a run of spaces any spaces."""
    parts = [r"\s+".join(re.escape(word) for word in piece.split())
             for piece in shown.strip().split("...")]
    return re.compile(".*".join(parts))


def missing_output(shown: list[str], printed: str) -> str | None:
    """The first shown line that does not appear, in order, in what was printed (None: all
    appear). A progress bar's carriage returns keep only the last state of its line."""
    lines = [line.rsplit("\r", 1)[-1] for line in printed.splitlines()]
    at = 0
    for want in shown:
        pattern = output_pattern(want)
        while at < len(lines) and not pattern.search(lines[at]):
            at += 1
        if at == len(lines):
            return want
        at += 1
    return None


def run_cnnc(argv: list[str]) -> tuple[int, str]:
    """Run ``cnnc`` in this process: (exit status, stdout and stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = cnnc_main(argv)
        except SystemExit as e:  # argparse: a bad option, or --help
            status = e.code if isinstance(e.code, int) else 2
    return status, out.getvalue()


def run_command(command: Command) -> str | None:
    """Run one shown command; what went wrong, or None."""
    if command.text in NOT_RUN:
        return None
    argv = shlex.split(command.text)
    if argv[0] != "cnnc":
        return (f"{command.text!r} is not a cnnc command: run it here, or list it in "
                "NOT_RUN with the reason")
    status, printed = run_cnnc(argv[1:])
    if status != command.status:
        return (f"{command.text!r} ended with status {status}, the page says "
                f"{command.status}:\n{printed[-3000:]}")
    lost = missing_output(command.output, printed)
    if lost is not None:
        return f"{command.text!r}: the shown line {lost!r} is not in its output:\n{printed[-3000:]}"
    return None


def run_block(block: Block, namespace: dict) -> str | None:
    """Run one block of a page (in the current folder); what went wrong, or None."""
    if block.tag in ("sh", "console"):
        for command in commands(block):
            problem = run_command(command)
            if problem:
                return problem
        return None
    if block.tag == "cnn":
        first = block.text.splitlines()[0]
        name = first[1:].strip() if first.startswith("#") and first.endswith(".cnn") else None
        if name:
            Path(name).write_text(block.text, encoding="utf-8")
        if block.info != "error":
            load_network(name or block.text)
            return None
        try:
            load_network(name or block.text)
        except DslError:
            return None
        return "a program shown as a mistake builds"
    if block.tag == "python":
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block.text, f"<{block.tag} block>", "exec"), namespace)  # noqa: S102
        return None
    # pycon
    test = doctest.DocTestParser().get_doctest(block.text, namespace, "block", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=False)
    return report.getvalue() if runner.failures else None


def test_pages_use_known_fence_tags():
    """Every block says what it is, so none is skipped by accident."""
    unknown = [b.where(p) for p in PAGES for b in blocks(p) if b.tag not in RUN_TAGS | SHOW_TAGS]
    assert not unknown, f"blocks with no tag or an unknown one: {unknown}"


def test_not_run_entries_are_on_a_page():
    """A command listed as not run is still shown somewhere (the list does not rot)."""
    shown = {c.text for p in PAGES for b in blocks(p) if b.tag in ("sh", "console")
             for c in commands(b)}
    assert not set(NOT_RUN) - shown


def test_synopsis_options_exist():
    """Each option a ``text`` synopsis names for a cnnc command (on the command's line or the
    indented lines that continue it) is one that ``cnnc COMMAND --help`` lists."""
    unknown = []
    for page in PAGES:
        for block in blocks(page):
            if block.tag != "text":
                continue
            command = None
            for line in block.text.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] == "cnnc":
                    command = words[1]
                elif not line[:1].isspace() or not words or words[0].startswith("#"):
                    command = None  # not a synopsis line
                if command is None:
                    continue
                status, help_text = run_cnnc([command, "--help"])
                assert status == 0, f"{block.where(page)}: no command {command!r}"
                options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-O|-o)", line))
                unknown += [f"{block.where(page)}: cnnc {command} {o}" for o in options
                            if o not in help_text]
    assert not unknown, unknown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page, tmp_path, monkeypatch):
    """Every runnable block of the page, top to bottom, in one folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__page__"}
    problems = []
    for block in blocks(page):
        if block.tag not in RUN_TAGS:
            continue
        try:
            problem = run_block(block, namespace)
        except Exception as e:  # noqa: BLE001 - reported with the block's line
            problem = f"{type(e).__name__}: {e}"
        if problem:
            problems.append(f"{block.where(page)}: {problem}")
            break  # later blocks may need what this one makes
    assert not problems, "\n\n".join(problems)


# -- claims the pages make in prose ------------------------------------------------------------

def fused_epilogues(graph) -> dict[str, tuple[str, ...]]:
    """Node name -> the ops fused into it as its epilogue, after the -O2 passes."""
    optimize(graph, 2)
    return {node.name: tuple(str(op).split("(")[0] for op in node.attrs["epilogue"])
            for node in graph.topo_order() if node.attrs.get("epilogue")}


@pytest.mark.parametrize("name, params", [
    ("se_resnet50", {"size": 32, "width": 8, "reduction": 4}),
    ("efficientnet_b0", {"size": 16, "classes": 10}),
])
def test_squeeze_excitation_gate_does_not_fuse(name, params):
    """docs/passes.md: in a real SE block the gated tensor also feeds the block's pool, so the
    gate's ``mul`` stays a kernel of its own. In SE-ResNet-50's identity blocks the residual add
    and the ReLU fuse into it instead; in its projection blocks into the shortcut convolution."""
    graph = load_zoo(name, **params)
    gates = [n.name for n in graph.topo_order() if n.op == "mul"]
    assert gates, f"{name} has no gate"
    epilogues = fused_epilogues(graph)
    assert not [(k, v) for k, v in epilogues.items() if "mul" in v]
    names = {n.name for n in graph.topo_order()}
    assert set(gates) <= names  # every gate is still a node: a kernel of its own
    if name == "se_resnet50":
        for gate in gates:
            block = gate.split(".")[0]
            if block.startswith("bottleneck_down"):  # the later producer, the shortcut, takes it
                assert gate not in epilogues and epilogues[f"{block}.conv4"] == ("add", "relu")
            else:
                assert epilogues[gate] == ("add", "relu"), gate


def test_a_gate_with_one_reader_fuses():
    """The contrast: where the scaled tensor has no other reader, the per-channel ``mul`` is
    applied at the store of the convolution that makes it (so the test above can fail)."""
    graph = load_network(
        "network gated()\n"
        "input image: 16 x 8 x 8\n"
        "gate = image -> globalavgpool -> conv(16, 1) -> sigmoid\n"
        "(image -> conv(16, 3, pad=1)) * gate -> output y\n")
    assert fused_epilogues(graph)["conv2"] == ("mul",)
