"""Parameter values: deterministic initialization, and .npz save/load keyed by layer names;
neither starts when the parameters would not fit in memory.

Reading a weights file never trusts it: the archive's structure, each array's header (name,
shape, dtype) and its data are checked in that order, so a damaged, truncated or foreign file
gets a `WeightsError` naming the file and the key, and an array is only read once its declared
shape is the one the network expects (bounded memory, whatever the header claims).
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from ..compiler.ir import Graph
from .memory import available_memory, fmt_bytes

RELU_FAMILY = {"relu", "leaky_relu", "relu6", "hard_swish", "swish", "gelu", "prelu", "elu",
               "softplus", "mish"}


class WeightsError(Exception):
    """Weights that do not fit the network; the message lists every mismatch."""


class ParameterMemoryError(WeightsError):
    """A network whose parameters would not fit in the memory available."""


# -- memory: parameters are made or loaded only when they fit ---------------------------------

FLOAT32_BYTES = 4
FLOAT64_BYTES = 8


def parameter_bytes(graph: Graph) -> int:
    """Bytes the parameters of ``graph`` occupy as float32 (a shared parameter counts once)."""
    return sum(node.type.size for node in graph.params()) * FLOAT32_BYTES


def parameter_peak_bytes(graph: Graph) -> int:
    """Peak bytes while parameters are made or loaded: every parameter in float32, plus one
    float64 array of the largest (initialization draws in float64, loading may convert)."""
    largest = max((node.type.size for node in graph.params()), default=0)
    return parameter_bytes(graph) + largest * FLOAT64_BYTES


def check_parameter_memory(graph: Graph, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a network whose parameters do not fit in memory.

    Raises ``ParameterMemoryError`` naming the network, the bytes needed and the bytes
    available. ``available`` defaults to ``available_memory()``.
    """
    need = parameter_peak_bytes(graph)
    if need == 0:
        return
    avail = available_memory() if available is None else available
    if need > avail:
        params = sum(node.type.size for node in graph.params())
        raise ParameterMemoryError(
            f"network {graph.name!r} has {params:,} parameters: making or loading them needs "
            f"{fmt_bytes(need)}, more than the {fmt_bytes(avail)} of memory available; "
            "make the layers smaller")


def uses_relu(graph: Graph) -> bool:
    return any(n.op in RELU_FAMILY for n in graph.nodes())


def init_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 values for every parameter.

    Weights marked `auto` use He (Kaiming) normal initialization in networks with ReLU-like
    activations and Glorot (Xavier) uniform otherwise. Each parameter draws from its own
    generator seeded by (seed, name), so adding a layer does not change the others' values.
    Raises ParameterMemoryError, before allocating anything, when they would not fit.
    """
    check_parameter_memory(graph)
    he = uses_relu(graph)
    values: dict[str, np.ndarray] = {}
    for node in graph.params():
        a = node.attrs
        shape = node.type.shape
        rng = np.random.default_rng([seed, _stable_hash(node.name)])
        init = a.get("init")
        if init == "literal":
            v = _literal(node.name, a["value"])
        elif init == "ones":
            v = np.ones(shape, np.float32)
        elif init == "zeros":
            v = np.zeros(shape, np.float32)
        elif init == "prelu":  # PReLU's slopes start at 0.25, as in PyTorch
            v = np.full(shape, 0.25, np.float32)
        elif init == "auto":
            fan_in, fan_out = max(a.get("fan_in", 1), 1), max(a.get("fan_out", 1), 1)
            if he:
                v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                v = rng.uniform(-limit, limit, shape)
        else:
            raise ValueError(f"parameter {node.name}: unknown initializer {init!r}")
        values[node.name] = np.ascontiguousarray(v, dtype=np.float32)
    return values


def _literal(name: str, value: object) -> np.ndarray:
    """A literal weight as float32; a value beyond float32's range is an error, not inf."""
    v = np.asarray(value, np.float64)
    if not np.all(np.isfinite(v)) or np.any(np.abs(v) > F32_MAX):
        raise WeightsError(f"parameter {name}: a literal value is out of float32's range "
                           f"(|x| <= {F32_MAX:.4g})")
    return v.astype(np.float32)


F32_MAX = float(np.finfo(np.float32).max)


def _stable_hash(name: str) -> int:
    h = 2166136261
    for ch in name.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def save_weights(values: dict[str, np.ndarray], path: str | Path | IO[bytes]) -> None:
    """Write ``values`` as float32 arrays to an .npz (a path, written as given, or a binary
    file object)."""
    arrays = {k: np.asarray(v, np.float32) for k, v in values.items()}
    if isinstance(path, (str, Path)):
        with open(path, "wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, **arrays)
    else:
        np.savez(path, **arrays)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _shape_problems(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing, unknown and wrongly shaped parameters, given each value's shape."""
    expected = {n.name: n.type.shape for n in graph.params()}
    problems = []
    for name, shape in expected.items():
        if name not in shapes:
            problems.append(f"missing {name} ({_dims(shape)})")
        elif tuple(shapes[name]) != shape:
            problems.append(f"{name}: shape {_dims(tuple(shapes[name]))}, expected "
                            f"{_dims(shape)}")
    problems += [f"unknown parameter {name}" for name in shapes if name not in expected]
    return problems


def _dtype_problem(name: str, dtype: np.dtype) -> str | None:
    """Why an array of ``dtype`` cannot hold weights (None when it can: real numbers)."""
    if dtype.kind in "fiu" and dtype.fields is None:
        return None
    kinds = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects",
             "b": "booleans", "V": "records", "M": "dates", "m": "time spans"}
    return (f"{name}: dtype {dtype} holds {kinds.get(dtype.kind, 'non-numbers')}, expected "
            "real numbers (float32)")


def _value_problem(name: str, value: np.ndarray) -> str | None:
    """NaN, infinity or a value float32 cannot hold (which would silently become inf)."""
    v = np.asarray(value)
    if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
        return f"{name}: contains NaN or infinity"
    if v.size and float(np.max(np.abs(v))) > F32_MAX:
        return f"{name}: values beyond float32's range (|x| <= {F32_MAX:.4g})"
    return None


def _report(graph: Graph, source: str, problems: list[str]) -> None:
    if problems:
        raise WeightsError(f"{source} do not fit network {graph.name!r} "
                           f"({len(problems)} problem{'s' * (len(problems) != 1)}):\n  "
                           + "\n  ".join(problems))


def check_weights(graph: Graph, values: dict[str, np.ndarray], source: str = "weights") -> None:
    """Every parameter present with its shape, real and finite, nothing unknown; reports all
    problems at once."""
    problems = _shape_problems(graph, {k: tuple(np.shape(v)) for k, v in values.items()})
    bad = {p.split(":")[0] for p in problems}
    for name, value in values.items():
        if name in bad:
            continue
        problem = _dtype_problem(name, np.asarray(value).dtype) or _value_problem(name, value)
        if problem:
            problems.append(problem)
    _report(graph, source, problems)


# -- reading .npz files -------------------------------------------------------------------------

_NPY_MAGIC = b"\x93NUMPY"
# What a damaged archive or array raises inside zipfile / numpy.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
                OSError, KeyError, NotImplementedError, RuntimeError)


def _regular_file(path: Path, what: str, error: type[Exception]) -> int:
    """The size of the regular file ``path``, or ``error`` saying why it cannot be read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"no such file for {what}: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} from {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO (which would block), a device
        raise error(f"cannot read {what} from {path}: not a regular file")
    if st.st_size == 0:
        raise error(f"cannot read {what} from {path}: the file is empty")
    return st.st_size


def _open_archive(path: Path, what: str, error: type[Exception]) -> zipfile.ZipFile:
    """The zip archive at ``path``, or ``error`` saying what the file is instead."""
    _regular_file(path, what, error)
    try:
        with open(path, "rb") as f:
            start = f.read(len(_NPY_MAGIC))
        if start == _NPY_MAGIC:
            raise error(f"{path} is a single .npy array, not an .npz archive of named "
                        "arrays; save them with numpy.savez(path, **{name: array})")
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise error(f"cannot read {what} from {path}: not an .npz archive, or a damaged or "
                    f"truncated one ({e})") from None
    except OSError as e:
        raise error(f"cannot read {what} from {path}: {e.strerror or e}") from None


Header = tuple[tuple[int, ...], np.dtype]


def _read_header(fp: IO[bytes]) -> Header:
    """(shape, dtype) from a .npy header, leaving ``fp`` at the start of the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} (structured data) "
                         "is not a numeric array")
    return tuple(shape), dtype


def _size_problem(header: Header, stored: int) -> str | None:
    """Why the data an array header declares cannot be read: more bytes than the file holds
    (truncated), or more than the memory available. Checked before NumPy allocates it."""
    shape, dtype = header
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * dtype.itemsize
    if nbytes > stored:
        return f"the header declares {nbytes:,} bytes of data but only {stored:,} are stored"
    if nbytes > available_memory():
        return f"the array needs {fmt_bytes(nbytes)}, more than the memory available"
    return None


def _read_data(fp: IO[bytes]) -> np.ndarray:
    array = np.lib.format.read_array(fp, allow_pickle=False)
    if fp.read(1):
        raise ValueError("extra bytes after the array data")
    return array


def read_npz(path: str | Path, *, what: str = "weights", error: type[Exception] = WeightsError,
             check: Callable[[dict[str, Header]], None] | None = None
             ) -> dict[str, np.ndarray]:
    """The arrays of an .npz by key, read without pickle and without trusting the file.

    ``check(headers)`` sees every key's declared (shape, dtype) before any data is read and
    may raise; without it, only real-number arrays are accepted. Anything damaged (not a zip,
    truncated, a bad CRC, a member that is not an .npy) raises ``error`` naming the file and
    the key.
    """
    path = Path(path)
    with _open_archive(path, what, error) as zf:
        headers: dict[str, Header] = {}
        members: dict[str, zipfile.ZipInfo] = {}
        sizes: dict[str, int] = {}
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if info.is_dir() or not info.filename.endswith(".npy"):
                raise error(f"cannot read {what} from {path}: member {info.filename!r} is not "
                            "a .npy array (an .npz holds only NAME.npy members)")
            try:
                with zf.open(info) as fp:
                    headers[key] = _read_header(fp)
                    stored = info.file_size - fp.tell()
            except _READ_ERRORS as e:
                raise error(f"cannot read {what} from {path}: key {key!r}: damaged array "
                            f"header ({e})") from None
            members[key] = info
            sizes[key] = stored
        if check is not None:
            check(headers)
        else:
            problems = [p for k, (_, dt) in headers.items() for p in [_dtype_problem(k, dt)]
                        if p]
            if problems:
                raise error(f"cannot use {what} from {path}: " + "; ".join(problems))
        for key, header in headers.items():  # after `check`: its message is the clearer one
            problem = _size_problem(header, sizes[key])
            if problem:
                raise error(f"cannot read {what} from {path}: key {key!r}: {problem}")
        values: dict[str, np.ndarray] = {}
        for key, info in members.items():
            try:
                with zf.open(info) as fp:  # zipfile checks the CRC at the member's end
                    values[key] = _read_data(fp)
            except _READ_ERRORS as e:
                raise error(f"cannot read {what} from {path}: key {key!r}: damaged or "
                            f"truncated data ({e})") from None
    return values


def read_npy(path: str | Path, *, what: str = "the array",
             error: type[Exception] = WeightsError) -> np.ndarray:
    """One array from a .npy file, without pickle: real numbers only; a damaged, truncated
    or foreign file raises ``error`` naming it."""
    path = Path(path)
    size = _regular_file(path, what, error)
    try:
        with open(path, "rb") as fp:
            if fp.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                kind = "an .npz archive" if zipfile.is_zipfile(path) else "not a .npy file"
                raise error(f"cannot read {what} from {path}: it is {kind} (a .npy file "
                            "starts with \\x93NUMPY)")
            fp.seek(0)
            header = _read_header(fp)
            problem = _dtype_problem("the array", header[1]) or \
                _size_problem(header, size - fp.tell())
            if problem:
                raise error(f"cannot use {what} from {path}: {problem}")
            fp.seek(0)
            return _read_data(fp)
    except _READ_ERRORS as e:
        raise error(f"cannot read {what} from {path}: damaged or truncated .npy "
                    f"({e})") from None


def load_weights(graph: Graph, path: str | Path) -> dict[str, np.ndarray]:
    """The parameters of ``graph`` from an .npz keyed by parameter name, as float32.

    Raises WeightsError naming the file (and the key) for anything that is not a sound
    archive of real, finite arrays of the expected shapes, listing every mismatch at once;
    ParameterMemoryError, before reading, when the parameters would not fit in memory. Array
    data is read only after every header matched the network (bounded memory).
    """
    check_parameter_memory(graph)

    def check(headers: dict[str, Header]) -> None:
        problems = _shape_problems(graph, {k: s for k, (s, _) in headers.items()})
        bad = {p.split(":")[0] for p in problems}
        problems += [p for k, (_, dt) in headers.items() if k not in bad
                     for p in [_dtype_problem(k, dt)] if p]
        _report(graph, str(path), problems)

    raw = read_npz(path, what="weights", error=WeightsError, check=check)
    _report(graph, str(path), [p for k, v in raw.items() for p in [_value_problem(k, v)] if p])
    values = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.items()}
    # Fixed (literal) weights come from the network definition, whatever the file says.
    for node in graph.params():
        if node.attrs.get("init") == "literal":
            values[node.name] = _literal(node.name, node.attrs["value"])
    return values
