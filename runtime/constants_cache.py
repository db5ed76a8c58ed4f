"""On-disk cache of a seeded compile's parameters and packed kernel constants.

A model compiled without weights starts from the deterministic initialization of its seed
(``weights.init_params``); setting those parameters then evaluates the derived ones (folded
batch norms, in float64) and packs every kernel's constants (``Executor.set_params``). For
ResNet-18 that is 0.4-0.6 s of CPU in every fresh process, several times what reading the
result back costs (bench/RESULTS.md). So a seeded compile keeps both in

    ``<root>/constants/<key>.bin``

(``root``: the kernel cache's, ``$CNNC_CACHE_DIR`` or ``~/.cache/cnnc``, or ``compile``'s
``cache_dir``), and the next compile of the same network with the same seed, options and code
reads them instead. ``key`` hashes everything the values depend on: the network as written
(every node, attribute and literal value: the initial values and their names), the optimized
graph the plan was lowered from (every decision the passes recorded: layouts, algorithms,
tiles, so the packers' choices), the seed, the target and thread count, the NumPy version (the
random streams) and the source of the compiler and runtime packages (the packers, the
initializers, the passes). Any change of these is another key: a miss, never a stale value.

Only networks of at least :data:`MIN_FLOATS` parameters are kept (below that, initializing and
packing cost little and a file per network would be most of the cost); only CPU plans (the
constants stay in host memory); not with ``autotune`` (its choices are measured, so a rerun may
differ). An entry holds two copies' worth of the parameters' floats (the parameters and their
packed forms): ResNet-18's is 94 MB.

Robustness, as the kernel cache's: an entry is written under a temporary name and
``os.replace``-d into place (two processes writing the same entry leave one whole file); on
read, anything that is not what this plan expects (the wrong magic, header, key, names, shapes
or size, a CRC-32 that differs from the data's: one flipped bit is enough) is removed with a
one-line warning on stderr and the values are computed again and stored anew.

File layout: ``MAGIC``, the header's length (8 bytes, little-endian), the header (JSON: the
key, the CRC-32 of the data, and ``[name, shape]`` of each array in order), then each array's
float32 data, C order, one after another.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numba
import numpy as np

from ..compiler.backends.numba.cache import atomic_file, auxiliary_file, cache_root, warn
from ..compiler.ir import Graph
from ..compiler.plan import Plan
from ..compiler.target import Target

__all__ = ["MIN_FLOATS", "Entry", "cacheable", "entry_key", "entry_path", "load", "store"]

#: Networks with fewer parameters (float32 values) are not cached: cheap to make anyway.
MIN_FLOATS = 1 << 20
MAGIC = b"cnnc packed constants 1\n"
FOLDER = "constants"

_CODE: str | None = None


def _code_fingerprint() -> str:
    """The NumPy version and a hash of the compiler's and runtime's source (once a process:
    about 10 ms)."""
    global _CODE
    if _CODE is None:
        package = Path(__file__).resolve().parent.parent
        h = hashlib.sha256(np.__version__.encode())
        for folder in ("compiler", "runtime"):
            for path in sorted((package / folder).rglob("*.py")):
                h.update(b"\0" + str(path.relative_to(package)).encode() + b"\0")
                h.update(path.read_bytes())
        _CODE = h.hexdigest()
    return _CODE


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
    if isinstance(value, float):
        return repr(value)
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


def cacheable(graph: Graph, plan: Plan, target: Target, autotune: bool) -> bool:
    """Whether a seeded compile of ``graph`` to ``plan`` keeps its constants on disk."""
    floats = sum(node.type.size for node in graph.params())
    return (floats >= MIN_FLOATS and not autotune and not target.cuda and plan.memory.host)


def entry_key(graph: Graph, plan: Plan, seed: int, target: Target) -> str:
    """The hash of everything a seeded compile's parameters and constants depend on."""
    h = hashlib.sha256()
    for part in (MAGIC.decode(), _code_fingerprint(), repr(seed), repr(target),
                 str(numba.config.NUMBA_NUM_THREADS), _graph_text(graph),
                 _graph_text(plan.graph)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def entry_path(key: str, root: str | Path | None = None) -> Path:
    """Where the entry of ``key`` lives (whether or not it exists yet)."""
    return auxiliary_file(f"{FOLDER}/{key}.bin", cache_root() if root is None else root)


class Entry:
    """A cache entry's values: the parameters by name and each step's packed constants."""

    def __init__(self, params: dict[str, np.ndarray],
                 consts: list[dict[str, np.ndarray]]) -> None:
        self.params = params
        self.consts = consts


def _const_refs(plan: Plan) -> list[set[str]]:
    """The constants each step's calls are bound to (its packer may make more)."""
    return [{a.ref for call in step.calls for a in call.args if a.kind == "const"}
            for step in plan.steps]


def store(path: Path, key: str, params: Mapping[str, np.ndarray],
          consts: list[Mapping[str, np.ndarray]]) -> None:
    """Write an entry atomically; a cache that cannot be written is only a slower compile."""
    arrays: list[tuple[str, np.ndarray]] = [(f"param:{k}", v) for k, v in params.items()]
    for index, step_consts in enumerate(consts):
        arrays += [(f"const:{index}:{k}", v) for k, v in step_consts.items()]
    arrays = [(name, np.ascontiguousarray(v, np.float32)) for name, v in arrays]
    crc = 0
    for _, v in arrays:
        crc = zlib.crc32(v, crc)
    header = json.dumps({"key": key, "crc32": crc,
                         "arrays": [[name, list(v.shape)] for name, v in arrays]}).encode()
    try:
        with atomic_file(path) as f:
            f.write(MAGIC)
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for _, v in arrays:
                f.write(memoryview(v).cast("B"))
    except OSError as e:
        warn(f"packed constants not cached ({e.strerror or e})")


class _Damaged(Exception):
    """What is wrong with an entry (the warning's words)."""


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Damaged(f"truncated in its {what}")
    return data


def _read_entry(f: IO[bytes], key: str, file_size: int) -> dict[str, np.ndarray]:
    """The arrays of an entry by name, every check passed (nothing is allocated before the
    header's sizes agree with the file's)."""
    if _read_exact(f, len(MAGIC), "magic") != MAGIC:
        raise _Damaged("not a packed-constants file of this version")
    size = int.from_bytes(_read_exact(f, 8, "header"), "little")
    if size > 1 << 26:
        raise _Damaged("header size out of range")
    try:
        header = json.loads(_read_exact(f, size, "header"))
        entry_key_, crc, listing = header["key"], int(header["crc32"]), header["arrays"]
        listing = [(str(name), tuple(int(d) for d in shape)) for name, shape in listing]
    except (ValueError, KeyError, TypeError) as e:
        raise _Damaged(f"header unreadable ({e})") from None
    if entry_key_ != key:
        raise _Damaged("holds another key")
    if any(d < 0 for _, shape in listing for d in shape):
        raise _Damaged("an array has a negative extent")
    data_bytes = sum(4 * int(np.prod(shape, dtype=np.int64)) for _, shape in listing)
    if len(MAGIC) + 8 + size + data_bytes != file_size:
        raise _Damaged(f"{file_size} bytes where its header says "
                       f"{len(MAGIC) + 8 + size + data_bytes}")
    arrays: dict[str, np.ndarray] = {}
    seen = 0
    for name, shape in listing:
        a = np.empty(shape, np.float32)
        if f.readinto(memoryview(a).cast("B")) != a.nbytes:
            raise _Damaged(f"truncated in array {name}")
        seen = zlib.crc32(a, seen)
        arrays[name] = a
    if f.read(1):
        raise _Damaged("longer than its header says")
    if seen != crc:
        raise _Damaged("its data does not match its checksum")
    return arrays


def load(path: Path, key: str, graph: Graph, plan: Plan) -> Entry | None:
    """The entry at ``path`` for ``plan``, or None (a miss; a damaged entry is removed with a
    warning)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # missing, a link, no permission
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            arrays = _read_entry(f, key, st.st_size)
        params = {node.name: tuple(node.type.shape) for node in graph.params()}
        consts: list[dict[str, np.ndarray]] = [{} for _ in plan.steps]
        for name, a in arrays.items():
            kind, _, rest = name.partition(":")
            if kind == "param" and params.get(rest) == a.shape:
                continue
            index, _, const = rest.partition(":")
            if kind != "const" or not index.isdigit() or int(index) >= len(consts):
                raise _Damaged(f"holds {name}{a.shape}, not of this plan")
            consts[int(index)][const] = a
        missing = [p for p in params if f"param:{p}" not in arrays]
        missing += [f"{plan.steps[i].name}.{k}" for i, refs in enumerate(_const_refs(plan))
                    for k in sorted(refs - set(consts[i]))]
        if missing:
            raise _Damaged(f"lacks {', '.join(missing[:3])}")
    except _Damaged as e:
        warn(f"packed constants {path}: {e}; removed, computing them again")
        try:
            os.unlink(path)
        except OSError:
            pass
        return None
    except OSError:
        return None
    return Entry({name: arrays[f"param:{name}"] for name in params}, consts)
