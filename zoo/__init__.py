"""The landmark networks as DSL files: their names, files and descriptions. This package is
data: the DSL builds them (`cnnc.dsl.builder.load_zoo("resnet18")`, or `cnnc.load("resnet18")`).

Each `<name>.cnn` file starts with a comment giving its source paper, input size, parameter
count and what is unusual about it; `description(name)` returns that text. Network parameters
in the header (`classes`, `size`, and where sensible a `width`) can be overridden:
`load_zoo("resnet50", classes=10, size=64)`.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Every network in the zoo."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.cnn"))


def path(name: str) -> Path:
    """The .cnn file of a zoo network; KeyError naming the valid names if there is none."""
    p = ZOO_DIR / f"{name}.cnn"
    if not p.is_file():
        raise KeyError(f"no zoo network {name!r}; the zoo has: {', '.join(names())}")
    return p


def description(name: str) -> str:
    """The header comment of a zoo network, without the `#` marks."""
    lines = []
    for line in path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)

