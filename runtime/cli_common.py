"""What every `cnnc` command module shares: the usage error, parameter and graph loading,
input loading (arrays and image batches), output reporting, the registry of extra commands, and
the one way files are written (never over a user's file without --force, always atomically).

Command modules import this, never `cli.py` (which holds only `main()` and the parser);
library modules import neither: their errors are their own, and `cli.py` reports them.
"""

from __future__ import annotations

import argparse
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from ..compiler.ir import Graph
from ..compiler.passes.convolutionalize import ConvolutionalizeError, fully_convolutional
from ..dsl.builder import load_network
from .images import ImageOptions, image_files, load_images
from .weights import read_npy, read_npz

__all__ = ["CliError", "parse_params", "load_graph", "compile_source", "load_array",
           "load_inputs", "report_outputs", "write_files", "force_arg", "EXTRA", "_EXTRA",
           "fully_convolutional_args", "input_size_of", "convolutionalized"]


class CliError(Exception):
    """A usage problem: bad file, bad option value."""


# Commands contributed by other modules: name -> (function, help, configure(parser, model_arg)).
EXTRA: dict[str, tuple[Callable, str, Callable]] = {}
_EXTRA = EXTRA  # the name command modules have used


def parse_params(items: Sequence[str] | None) -> dict[str, object]:
    """`--param classes=10` -> {"classes": 10}."""
    out: dict[str, object] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                raise CliError(f"--param {key}: {value!r} is not a number") from None
    return out


def load_graph(args: argparse.Namespace) -> Graph:
    """The network a command names (a .cnn file or a zoo name), with its --param values."""
    return load_network(args.model, **parse_params(getattr(args, "param", None)))


# -- fully convolutional --------------------------------------------------------------------------

def fully_convolutional_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fully-convolutional", action="store_true",
                   help="run a classifier on larger images in one pass: its flatten -> dense "
                        "head as convolutions over the same weights, a grid of scores out "
                        "(with --input-size)")
    p.add_argument("--input-size", metavar="HxW",
                   help="the image size for --fully-convolutional, e.g. 448x448")


def compile_source(args: argparse.Namespace, graph: Graph) -> str | Graph:
    """What a command hands ``compile`` for ``graph``, the network its model argument names:
    that argument itself (a zoo name or a .cnn file) where the graph is just that network
    (no ``--param``, not made fully convolutional), so that the compile cache can skip the
    passes, and for seeded weights the packing (``runtime/compile_cache.py``); else the
    graph."""
    if getattr(args, "param", None) or getattr(args, "input_size", None) is not None:
        return graph
    return args.model


def input_size_of(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--input-size HxW`` as (height, width), given with --fully-convolutional; or None."""
    text = getattr(args, "input_size", None)
    if bool(getattr(args, "fully_convolutional", False)) != (text is not None):
        raise CliError("--fully-convolutional and --input-size HxW go together")
    if text is None:
        return None
    height, sep, width = text.lower().partition("x")
    if not (sep and height.isdigit() and width.isdigit() and int(height) and int(width)):
        raise CliError(f"--input-size takes HEIGHTxWIDTH in pixels, e.g. 448x448; got {text!r}")
    return int(height), int(width)


def convolutionalized(graph: Graph, size: tuple[int, int]) -> Graph:
    """``graph`` run fully convolutionally on ``size`` images (its refusal a usage error)."""
    try:
        return fully_convolutional(graph, size)
    except ConvolutionalizeError as e:
        raise CliError(str(e)) from None


# -- inputs -----------------------------------------------------------------------------------

def _native_array(name: str, x: np.ndarray, source: str) -> np.ndarray:
    """An input array in native byte order: float64 stays float64 (for the reference), other
    real numbers become float32; anything else is refused naming the input."""
    if x.dtype.kind not in "fiu" or x.dtype.fields is not None:
        raise CliError(f"{source}: input {name!r} has dtype {x.dtype}, expected real numbers "
                       "(float32)")
    dtype = np.float64 if x.dtype.kind == "f" and x.dtype.itemsize == 8 else np.float32
    return np.ascontiguousarray(x, dtype=dtype)


def _input_shape(graph: Graph, name: str) -> tuple[int, ...]:
    return graph.node(graph.inputs[name]).type.shape


def load_array(path: str, graph: Graph, image_options: ImageOptions | None = None
               ) -> dict[str, np.ndarray]:
    """Inputs from one file: .npy (the single input), .npz (by input name) or an image."""
    return load_inputs([path], graph, image_options)


def load_inputs(paths: Sequence[str], graph: Graph, image_options: ImageOptions | None = None
                ) -> dict[str, np.ndarray]:
    """Inputs from `--input`: one .npy (the single input), one .npz (by input name), or
    images (files, or folders of them) stacked as a batch in the order given (a folder's
    images sorted by name), prepared as `image_options` says (default: `ImageOptions()`)."""
    names = list(graph.inputs)
    arrays = [p for p in paths if Path(p).suffix.lower() in (".npy", ".npz")]
    if arrays:
        if len(paths) != 1:
            raise CliError("give either one .npy / .npz file or image files as --input, "
                           f"not {len(paths)} files with arrays among them")
        p = Path(arrays[0])
        if p.suffix.lower() == ".npz":
            data = read_npz(p, what="inputs", error=CliError)
            return {k: _native_array(k, v, str(p)) for k, v in data.items()}
        x = read_npy(p, what="the input", error=CliError)
        if len(names) != 1:
            raise CliError(f"the network has {len(names)} inputs ({', '.join(names)}); give "
                           "them as an .npz keyed by input name")
        x = _native_array(names[0], x, str(p))
        if x.ndim == len(_input_shape(graph, names[0])):
            x = x[None]
        return {names[0]: x}
    files = image_files(paths)
    if len(names) != 1:
        raise CliError(f"images can feed only a network with one input; this one has "
                       f"{len(names)} ({', '.join(names)}): give an .npz keyed by input name")
    options = image_options if image_options is not None else ImageOptions()
    return {names[0]: load_images(files, _input_shape(graph, names[0]), options)}


def report_outputs(outputs: dict[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        print(f"output {name}: shape {'x'.join(map(str, value.shape))}, "
              f"min {value.min():.6g}, max {value.max():.6g}, mean {value.mean():.6g}")
        if value.ndim == 2 and value.shape[1] >= 5:
            for b, row in enumerate(value[:4]):
                top = np.argsort(-row)[:5]
                items = ", ".join(f"{int(i)}: {row[i]:.4g}" for i in top)
                print(f"  image {b} top-5 (class: score): {items}")


# -- writing files ----------------------------------------------------------------------------

#: What `write_files` writes into one file: its bytes, its text (UTF-8), or a function that
#: writes into the open binary file.
Content = bytes | str | Callable[[IO[bytes]], None]


def force_arg(p: argparse.ArgumentParser) -> None:
    """The `--force` option of every command that writes files."""
    p.add_argument("--force", action="store_true",
                   help="replace files that already exist (default: refuse, write nothing)")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_files(files: Mapping[str | Path, Content], *, force: bool = False,
                create_folders: bool = False) -> list[Path]:
    """Write every file of ``files`` or none of them.

    Refuses (CliError naming every one) when a file already exists, unless ``force``; a folder
    or a special file (FIFO, device) in a file's place is always refused. Each file is written
    to a temporary name in its own folder and only then ``os.replace``-d into place, all files
    after all were written, so an error or an interrupt leaves the old files as they were and
    no half-written one. Returns the paths written.
    """
    targets: dict[Path, Content] = {}
    seen: set[str] = set()
    for name, content in files.items():
        path = Path(name)
        real = os.path.realpath(path)
        if real in seen:
            raise CliError(f"{path} would be written twice; give the files different names")
        seen.add(real)
        targets[path] = content
    existing, refused = [], []
    for path in targets:
        folder = path.parent
        if not folder.exists():
            if not create_folders:
                raise CliError(f"cannot write {path}: no such folder {folder}")
        elif not folder.is_dir():
            raise CliError(f"cannot write {path}: {folder} is not a folder")
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode):
            existing.append(path)
        elif not stat.S_ISLNK(mode):  # a folder, FIFO or device: never replaced
            refused.append(path)
        else:
            existing.append(path)
    if refused:
        raise CliError(f"cannot write {', '.join(map(str, refused))}: not a regular file "
                       "(nothing was written)")
    if existing and not force:
        many = len(existing) > 1
        raise CliError(f"{', '.join(map(str, existing))} already exist{'' if many else 's'}; "
                       f"give --force to replace {'them' if many else 'it'} (nothing was "
                       "written)")
    mode = 0o666 & ~_umask()
    temps: list[tuple[str, Path]] = []
    try:
        for path, content in targets.items():
            if create_folders:
                path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                       suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                if isinstance(content, str):
                    f.write(content.encode("utf-8"))
                elif isinstance(content, bytes):
                    f.write(content)
                else:
                    content(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)  # mkstemp makes 0600; a written file gets the usual mode
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    return list(targets)
