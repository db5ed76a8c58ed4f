"""The landmark networks as DSL files: their names, files and descriptions. This package is
data: the DSL builds them (`cnnc.dsl.builder.load_zoo("resnet18")`, or `cnnc.load("resnet18")`).

Each `<name>.cnn` file starts with a comment giving its source paper, input size, parameter
count and what is unusual about it; `description(name)` returns that text. Network parameters
in the header (`classes`, `size`, and where sensible a `width`) can be overridden:
`load_zoo("resnet50", classes=10, size=64)`.

Trained weights ship beside their networks (`trained_weights(name)`: an .npz), so
`cnnc explain lenet5 ...` works right after set-up. `lenet5_digits.npz` was made by

    cnnc train lenet5 --data digits --save zoo/lenet5_digits.npz

(its defaults: 10 epochs of SGD with momentum 0.9, lr 0.05, cosine schedule, seed 0; 99.2%
on the held-out digits).
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


#: Trained weights shipped with the zoo, by network name (files in this folder).
TRAINED = {"lenet5": "lenet5_digits.npz"}


def trained_weights(name: str) -> Path | None:
    """The shipped trained weights of zoo network `name` (an .npz path), or None."""
    return ZOO_DIR / TRAINED[name] if name in TRAINED else None


def description(name: str) -> str:
    """The header comment of a zoo network, without the `#` marks."""
    lines = []
    for line in path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)

