"""Convolution padding: the DSL's forms (an int, a pair, four sides, ``same``, ``valid``,
``full``) as (top, left, bottom, right), the one statement of ``same``, the window check, and
padding an NCHW array. The textbook seed (004, eq. 6.17) writes TOTAL padding p: its "p" is
our top + bottom."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import AttrError, ShapeError, as_int

#: The padding words of ``conv``.
PAD_WORDS = ("same", "valid", "full")


def split_padding(total: int, upper: bool = True) -> tuple[int, int]:
    """(before, after): a total padding in halves, the odd one after (``upper``: ONNX's
    SAME_UPPER) or before the input (SAME_LOWER)."""
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def same_pads(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int], upper: bool = True) -> tuple[int, int, int, int]:
    """``same`` padding, (top, left, bottom, right): the least total padding that makes
    out = ceil(in / stride), split in halves, the odd extra row or column after the input
    (``upper``: TensorFlow's and ONNX's SAME_UPPER) or before it (ONNX's SAME_LOWER)."""
    begin, end = [], []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        out = -(-size // s)
        before, after = split_padding(max((out - 1) * s + d * (k - 1) + 1 - size, 0), upper)
        begin.append(before)
        end.append(after)
    return (begin[0], begin[1], end[0], end[1])


def resolve_pads(pad: Any, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], in_hw: tuple[int, int],
                 words: tuple[str, ...] = PAD_WORDS) -> tuple[int, int, int, int]:
    """DSL padding -> (top, left, bottom, right).

    An int pads every side; a pair is (vertical, horizontal) per side; four values are
    (top, left, bottom, right); `same`, `valid` and `full` are computed from the window.
    """
    if isinstance(pad, str):
        if pad not in words:
            kinds = "an integer, a pair (vertical, horizontal) or four sides (top, left, " \
                    "bottom, right)"
            if len(words) == 1:
                kinds += f", or {words[0]}"
            elif words:
                kinds += f", or one of {', '.join(words)}"
            raise AttrError(f"pad must be {kinds}; got {pad!r}", "pad")
        if pad == "valid":
            return (0, 0, 0, 0)
        if pad == "full":
            spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
            return (spans[0] - 1, spans[1] - 1, spans[0] - 1, spans[1] - 1)
        return same_pads(in_hw, kernel, stride, dilation)
    if isinstance(pad, (tuple, list)):
        if len(pad) == 2:
            v, h = (as_int(p, "pad", 0) for p in pad)
            return (v, h, v, h)
        if len(pad) == 4:
            t, l, b, r = (as_int(p, "pad", 0) for p in pad)
            return (t, l, b, r)
        raise AttrError(f"pad takes 1, 2 (vertical, horizontal) or 4 (top, left, bottom, right) "
                        f"integers, got {len(pad)}", "pad")
    p = as_int(pad, "pad", 0)
    return (p, p, p, p)


def window_check(op: str, size_hw: tuple[int, int], pads: tuple[int, int, int, int],
                 kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> None:
    """A window (dilated) may not be larger than its padded input."""
    for axis, size, before, after, k, d in (("height", size_hw[0], pads[0], pads[2], kernel[0],
                                             dilation[0]),
                                            ("width", size_hw[1], pads[1], pads[3], kernel[1],
                                             dilation[1])):
        span = d * (k - 1) + 1
        if span > size + before + after:
            what = f"window {k}" + (f" (dilated to {span})" if d > 1 else "")
            raise ShapeError(f"{op}: {what} is larger than the padded input {axis} "
                             f"{size + before + after} ({size} + padding {before}+{after})")


def pad_nchw(x: np.ndarray, pads: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    t, l, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)
