"""Where a program's text comes from: a file path, a zoo network's name, or the text itself
(``read_source``). Kept apart from the parser and builder so that finding a program's text,
which a cached compile needs to look its entry up (``runtime/compile_cache.py``), imports
neither Lark nor the op registry."""

from __future__ import annotations

import difflib
from pathlib import Path

from ..zoo import names as zoo_names
from ..zoo import path as zoo_path
from .errors import DslError, display_file
from .limits import MAX_SOURCE_BYTES

__all__ = ["TEXT_SOURCE", "read_source", "read_file"]


def _os_reason(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return getattr(e, "strerror", None) or str(e)


TEXT_SOURCE = "<string>"  # the file name of a program given as text


def read_source(source_or_path: str | Path) -> tuple[str, str]:
    """(text, file name) for a file path, a zoo name, or source text.

    A `Path` is always a file. A string is a file when a file of that name exists (whatever
    characters it holds, `->` and newlines included), else a zoo network's name, else program
    text when it looks like one (a newline, `->` or punctuation no name has).
    """
    s = str(source_or_path)
    path = Path(s)
    if isinstance(source_or_path, Path) or _is_file(path):
        return read_file(path), s
    if _is_dir(path):
        raise DslError(f"{display_file(s)} is a directory, not a .cnn file")
    if "\n" in s or "->" in s:
        return _check_size(s, "the program text"), TEXT_SOURCE
    names = zoo_names()
    if s in names:
        zoo_file = zoo_path(s)
        return zoo_file.read_text(encoding="utf-8"), str(zoo_file)
    if any(c in s for c in " ()=:#"):  # not a path or a name: a one-line program
        return s, TEXT_SOURCE
    close = difflib.get_close_matches(Path(s).stem, names, n=1)
    raise DslError(f"no file {s!r} and no zoo network of that name",
                   hint=(f"did you mean {close[0]!r}? " if close else "") +
                   f"zoo: {', '.join(names) or '(empty)'}")


def read_file(path: Path) -> str:
    """A program file's text; never blocks on a FIFO or device, never reads a huge file."""
    name = display_file(str(path))
    try:
        if path.is_dir():
            raise DslError(f"{name} is a directory, not a .cnn file")
        if path.exists() and not path.is_file():
            raise DslError(f"{name} is not a regular file (a pipe or a device?)")
        if path.exists() and path.stat().st_size > MAX_SOURCE_BYTES:
            raise DslError(f"{name} is {path.stat().st_size:,} bytes; a program may be at most "
                           f"{MAX_SOURCE_BYTES:,}")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DslError(f"cannot read {name}: {_os_reason(e)}") from None


def _check_size(text: str, what: str) -> str:
    if len(text) > MAX_SOURCE_BYTES:
        raise DslError(f"{what} is {len(text):,} characters; a program may be at most "
                       f"{MAX_SOURCE_BYTES:,}")
    return text


def _is_file(path: Path) -> bool:
    """Whether a regular file of this name exists; names the OS cannot take (a NUL byte, too
    long) name no file."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False
