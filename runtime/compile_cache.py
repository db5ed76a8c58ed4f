"""On-disk caches of a compile's host work: the optimized graph, and the packed kernel
constants.

The kernel cache (``compiler/backends/numba/cache.py``) makes a second compile of a network
load its kernels instead of compiling them; what was left of a cached compile in a fresh
process was host work redone every time (bench/RESULTS.md): parsing and the passes, the seeded
initial weights, and packing them into every kernel's constants (ResNet-18: 0.4 s of CPU
together, ResNet-50 1.0 s, more than loading their kernels; packing given weights: ResNet-18's
0.2 s). Two kinds of entry keep its results, in the kernel cache's root (``$CNNC_CACHE_DIR``
or ``~/.cache/cnnc``, or ``compile``'s ``cache_dir``):

- ``frontend/<key>.bin``: the network as written and its optimized copy with the pass records
  (pickled), keyed by the program's text (an ONNX file's: a SHA-256 of its bytes, weights
  included: :func:`onnx_text`) and file name, the options the passes see (target,
  optimization level, lowering, layout), the thread and CPU counts (the tiles chosen weigh
  them) and the source of the packages that parse and optimize. A hit skips parsing (and
  importing the parser; for an ONNX file, importing onnx and converting the model) and the
  passes; the records' times are the first compile's. Not for a program that imports other
  files (their text is not in the key), an ONNX file with external data (likewise), a
  ``Graph``, autotuning, an IR dump or training;
- ``constants/<key>.bin``: every step's packed constants, keyed by where the parameters
  come from (a seed, an ONNX file under its front-end key, or given values by a SHA-256 of
  them: :func:`weights_digest`, an .npz's as much as a dict's) and everything else they
  depend on: the network as
  written (every node, attribute and literal value: the initial values), the optimized graph
  the plan was lowered from (every decision the passes recorded: layouts, algorithms, tiles)
  or, where the graphs came from a program's text, its front-end key (which fixes both), the
  target, the thread and CPU counts, NumPy's version (the random streams) and the source of
  the compiler and runtime. A hit skips packing, and for a seed or an ONNX file making the
  parameters (made from the seed, or read from the file, only if they are asked for). Only for
  networks of at least :data:`MIN_FLOATS` parameters (smaller ones cost little to make), CPU
  plans and no autotuning. An entry is about the size of the parameters in float32
  (ResNet-18's 59 MB).

A change of anything in a key is another key: a miss, never a stale value. At most
:data:`MAX_ENTRIES` entries of each kind are kept (64 front ends, 8 sets of constants), the
least recently used removed first.

Robustness, as the kernel cache's: an entry is written under a temporary name and
``os.replace``-d into place (two processes writing the same entry leave one whole file); on
read, anything unexpected (the magic, the header, another key, sizes that disagree with the
file's, a CRC-32 that differs from the data's: one flipped bit is enough, arrays that are not
this plan's) removes the entry with a one-line warning on stderr, and the compile computes the
values again and stores them anew.

File layout: ``MAGIC``, the header's length (8 bytes, little-endian), the header (JSON: the
key, the CRC-32 of the data, and the byte size and ``meta`` of each part), then the parts'
bytes one after another.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import stat
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numba
import numpy as np

from ..compiler.backends.numba.cache import atomic_file, auxiliary_file, cache_root, warn
from ..compiler.ir import Graph
from ..compiler.passes import PassRecord
from ..compiler.plan import Plan
from ..compiler.target import Target

__all__ = ["MIN_FLOATS", "MAX_ENTRIES", "Frontend", "code_fingerprint",
           "constants_cacheable", "constants_key", "frontend_cacheable", "frontend_key",
           "weights_digest", "onnx_text",
           "entry_path", "load_constants", "store_constants", "load_frontend", "store_frontend"]

#: Networks with fewer parameters (float32 values) keep no constants entry: cheap to make.
MIN_FLOATS = 1 << 20
#: Entries kept of each kind (the least recently used beyond are removed): front-end entries
#: are small (ResNet-50's 160 kB), a constants entry is about the size of the weights.
MAX_ENTRIES = {"frontend": 64, "constants": 8}
MAGIC = b"cnnc compile cache 1\n"
FRONTEND, CONSTANTS = "frontend", "constants"
# an import statement of the DSL (``import "file"``, ``from "file" import name``)
_IMPORT = re.compile(r'\b(import|from)\s*"')

_CODE: str | None = None


def code_fingerprint() -> str:
    """NumPy's version and a hash of the source of the packages a compile's host work runs
    (once a process: about 10 ms)."""
    global _CODE
    if _CODE is None:
        package = Path(__file__).resolve().parent.parent
        h = hashlib.sha256(np.__version__.encode())
        for folder in ("compiler", "runtime", "dsl"):
            for path in sorted((package / folder).rglob("*")):
                if path.suffix in (".py", ".lark"):
                    h.update(b"\0" + str(path.relative_to(package)).encode() + b"\0")
                    h.update(path.read_bytes())
        _CODE = h.hexdigest()
    return _CODE


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    # the machine's CPU count and threads: the passes' tile choice weighs them
    for part in (MAGIC.decode(), code_fingerprint(), str(os.cpu_count()),
                 str(numba.config.NUMBA_NUM_THREADS), *parts):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def entry_path(kind: str, key: str, root: str | Path | None = None) -> Path:
    """Where the entry of ``key`` of ``kind`` (``frontend``, ``constants``) lives, whether or
    not it exists yet."""
    return auxiliary_file(f"{kind}/{key}.bin", cache_root() if root is None else root)


# -- entries: a header and checked parts ------------------------------------------------------

class _Damaged(Exception):
    """What is wrong with an entry (the warning's words)."""


def _write(path: Path, key: str, parts: Sequence[tuple[Any, Any]]) -> None:
    """Write an entry of ``(meta, bytes-like)`` parts atomically, then keep its folder to its
    kind's :data:`MAX_ENTRIES`; a cache that cannot be written is only a slower compile."""
    crc = 0
    for _, data in parts:
        crc = zlib.crc32(data, crc)
    header = json.dumps({"key": key, "crc32": crc,
                         "parts": [[memoryview(d).nbytes, meta] for meta, d in parts]}).encode()
    try:
        with atomic_file(path) as f:
            f.write(MAGIC)
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for _, data in parts:
                f.write(memoryview(data).cast("B"))
    except OSError as e:
        warn(f"compile cache: {path.parent.name} entry not written ({e.strerror or e})")
        return
    _trim(path.parent)


def _trim(folder: Path) -> None:
    """Remove the least recently used entries beyond the folder's kind's :data:`MAX_ENTRIES`
    (a hit touches its entry), and what a writer that died left under a temporary name an
    hour ago or more."""
    try:
        found = [(e.name, e.stat(follow_symlinks=False).st_mtime_ns, e.path)
                 for e in os.scandir(folder)]
    except OSError:
        return
    hour_ago = time.time_ns() - 3600 * 10**9
    entries = sorted((t, path) for name, t, path in found
                     if name.endswith(".bin") and not name.startswith("."))
    stale = [path for name, t, path in found if name.startswith(".tmp-") and t < hour_ago]
    keep = MAX_ENTRIES.get(folder.name, 8)
    for path in [p for _, p in entries[:-keep]] + stale:
        try:
            os.unlink(path)
        except OSError:
            pass


def _read_header(f: IO[bytes], key: str, file_size: int) -> tuple[int, list[tuple[int, Any]]]:
    """The CRC-32 and the ``(size, meta)`` of each part, once the header agrees with the
    file's size (so nothing is allocated for a size the file does not hold)."""
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise _Damaged("not a compile-cache file of this version")
    size = int.from_bytes(f.read(8), "little")
    if size > file_size:
        raise _Damaged("truncated in its header")
    try:
        header = json.loads(f.read(size))
        found, crc = header["key"], int(header["crc32"])
        parts = [(int(n), meta) for n, meta in header["parts"]]
    except (ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"its header is unreadable ({e})") from None
    if found != key:
        raise _Damaged("it holds another key")
    expected = len(MAGIC) + 8 + size + sum(n for n, _ in parts)
    if any(n < 0 for n, _ in parts) or expected != file_size:
        raise _Damaged(f"it is {file_size} bytes where its header says {expected}")
    return crc, parts


def _read(path: Path, key: str, into: Any) -> list[Any] | None:
    """The parts of the entry at ``path`` (None: no entry), each read into what
    ``into(size, meta)`` returns (a writable buffer of ``size`` bytes), after every check;
    raises ``_Damaged``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # missing, a link, no permission
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        crc, listing = _read_header(f, key, st.st_size)
        parts, seen = [], 0
        for size, meta in listing:
            buf = into(size, meta)
            view = memoryview(buf).cast("B")
            if view.nbytes != size or f.readinto(view) != size:
                raise _Damaged("a part is not the size its header says")
            seen = zlib.crc32(view, seen)
            parts.append(buf)
    if seen != crc:
        raise _Damaged("its data does not match its checksum")
    try:
        os.utime(path)  # recently used
    except OSError:
        pass
    return parts


def _damaged(path: Path, e: _Damaged) -> None:
    warn(f"compile cache: {path}: {e}; removed, computing it again")
    try:
        os.unlink(path)
    except OSError:
        pass


# -- the front end: parsed and optimized graphs -----------------------------------------------

class Frontend:
    """A front-end entry: the network as written, its optimized copy and the pass records."""

    def __init__(self, graph: Graph, optimized: Graph, records: list[PassRecord]) -> None:
        self.graph, self.optimized, self.records = graph, optimized, records


def frontend_cacheable(text: str) -> bool:
    """Whether a program's front end can be cached by its text: not when it imports files."""
    return _IMPORT.search(text) is None


def onnx_text(data: bytes) -> str | None:
    """What stands for an ONNX file's bytes in its front-end key (a SHA-256 of them: its graph
    and its weights), or None where the file is not the whole model: one whose tensors name
    files of external data (the ``location`` every such entry holds; the word by chance in
    the bytes only costs the entry)."""
    if b"location" in data:
        return None
    return f"onnx {hashlib.sha256(data).hexdigest()}"


def frontend_key(text: str, file: str, target: Target, opt_level: int,
                 lowering: str | Mapping[str, str], layout: str) -> str:
    """The hash of what the parsed and optimized graphs of a program depend on."""
    choices = lowering if isinstance(lowering, str) else repr(sorted(lowering.items()))
    return _hash(FRONTEND, file, repr(target), str(opt_level), choices, layout, text)


def load_frontend(path: Path, key: str) -> Frontend | None:
    """The front-end entry at ``path``, or None (a damaged one is removed with a warning)."""
    try:
        parts = _read(path, key, lambda size, meta: bytearray(size))
        if parts is None:
            return None
        try:
            value = pickle.loads(parts[0])
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a damaged entry
            raise _Damaged(f"it does not unpickle ({type(e).__name__})") from None
        if not (isinstance(value, tuple) and len(value) == 3 and
                isinstance(value[0], Graph) and isinstance(value[1], Graph)):
            raise _Damaged("it holds no graphs")
    except _Damaged as e:
        _damaged(path, e)
        return None
    except OSError:
        return None
    return Frontend(*value)


def store_frontend(path: Path, key: str, entry: Frontend) -> None:
    """Write a front-end entry (nothing where the graphs do not pickle)."""
    try:
        data = pickle.dumps((entry.graph, entry.optimized, entry.records), protocol=5)
    except Exception:  # noqa: BLE001 - an attribute that does not pickle: no entry
        return
    _write(path, key, [(None, data)])


# -- a seeded compile's parameters and packed constants --------------------------------------

def _canonical(value: Any) -> str:
    """An attribute value as text that differs whenever the value does (an array in full,
    by a hash of its bytes: ``str`` of a large array elides its middle)."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return f"array({data.dtype.str},{data.shape},{hashlib.sha256(data).hexdigest()})"
    if isinstance(value, (list, tuple)):
        inner = ",".join(_canonical(v) for v in value)
        return f"{type(value).__name__}({inner})"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_canonical(v)}" for k, v in sorted(value.items())) + "}"
    return f"{type(value).__name__}:{value!r}"


def _graph_text(graph: Graph) -> str:
    """Every node of ``graph`` (op, inputs, attributes with literal values in full, type,
    name) and its named inputs and outputs; not the source spans."""
    lines = [f"graph {graph.name!r} inputs {sorted(graph.inputs.items())} "
             f"outputs {sorted(graph.outputs.items())}"]
    for node in graph.topo_order():
        attrs = ",".join(f"{k}={_canonical(v)}" for k, v in sorted(node.attrs.items()))
        lines.append(f"{node.id} {node.op} {node.inputs} {node.type.shape} {node.type.dtype} "
                     f"{node.name!r} {attrs}")
    return "\n".join(lines)


def constants_cacheable(graph: Graph, plan: Plan, target: Target, autotune: bool) -> bool:
    """Whether a seeded compile of ``graph`` to ``plan`` keeps its constants on disk."""
    floats = sum(node.type.size for node in graph.params())
    return floats >= MIN_FLOATS and not autotune and not target.cuda and plan.memory.host


def weights_digest(values: Mapping[str, np.ndarray]) -> str:
    """What given parameter values are, for :func:`constants_key`: a SHA-256 of each one's
    name, shape and float32 bytes (as they are packed; ResNet-18's 47 MB in about 0.05 s,
    a quarter of their packing)."""
    h = hashlib.sha256()
    for name in sorted(values):
        data = np.ascontiguousarray(values[name], np.float32)
        h.update(f"\0{name}\0{data.shape}\0".encode())
        h.update(data)
    return f"weights {h.hexdigest()}"


def constants_key(graph: Graph, plan: Plan, seed: int | str, target: Target,
                  front: str | None = None) -> str:
    """The hash of everything a compile's parameters and constants depend on. ``seed``: the
    seed of the initial values, or the :func:`weights_digest` of given ones. ``front``: the
    front-end key the graphs were parsed and optimized under (the program's text and every
    option the passes see, in full): the graphs are then not hashed again (ResNet-50's
    0.03 s)."""
    if front is not None:
        return _hash(CONSTANTS, repr(seed), repr(target), FRONTEND, front)
    return _hash(CONSTANTS, repr(seed), repr(target), _graph_text(graph),
                 _graph_text(plan.graph))


def _const_refs(plan: Plan) -> list[set[str]]:
    """The constants each step's calls are bound to."""
    return [{a.ref for call in step.calls for a in call.args if a.kind == "const"}
            for step in plan.steps]


def store_constants(path: Path, key: str, plan: Plan,
                    consts: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Write a constants entry: each packed constant a call of ``plan`` is bound to, as
    float32."""
    named = [(f"{index}:{k}", v) for index, (step_consts, refs) in
             enumerate(zip(consts, _const_refs(plan))) for k, v in step_consts.items()
             if k in refs]
    _write(path, key, [([name, list(v.shape)], np.ascontiguousarray(v, np.float32))
                       for name, v in named])


def load_constants(path: Path, key: str, plan: Plan) -> list[dict[str, np.ndarray]] | None:
    """Each step's packed constants from the entry at ``path`` for ``plan``, or None (a miss;
    a damaged entry, or one whose constants are not this plan's, is removed with a
    warning)."""
    names: list[str] = []
    try:
        parts = _read(path, key, lambda size, meta: _named_array(size, meta, names))
        if parts is None:
            return None
        consts: list[dict[str, np.ndarray]] = [{} for _ in plan.steps]
        for name, a in zip(names, parts):
            index, _, const = name.partition(":")
            if not index.isdigit() or int(index) >= len(consts):
                raise _Damaged(f"it holds constant {name}, not this plan's")
            consts[int(index)][const] = a
        for step, refs, have in zip(plan.steps, _const_refs(plan), consts):
            if set(have) != refs:
                raise _Damaged(f"its constants of step {step.name} are not this plan's")
    except _Damaged as e:
        _damaged(path, e)
        return None
    except OSError:
        return None
    return consts


def _named_array(size: int, meta: Any, names: list[str]) -> np.ndarray:
    """The float32 array a part of a constants entry is read into (its name appended to
    ``names``)."""
    try:
        name, shape = str(meta[0]), tuple(int(d) for d in meta[1])
    except (TypeError, ValueError, IndexError, KeyError):
        raise _Damaged("an array's name or shape is unreadable") from None
    if any(d < 0 for d in shape) or 4 * int(np.prod(shape, dtype=np.int64)) != size:
        raise _Damaged(f"array {name} is not {size} bytes of float32")
    names.append(name)
    return np.empty(shape, np.float32)
