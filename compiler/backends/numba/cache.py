"""On-disk cache of generated kernel modules.

Numba can only cache functions whose source lives in a real file (``exec`` of a string cannot be
cached), so generated source is written to

    ``<root>/<tag>-<key>/<tag>.py``

where ``root`` is ``$CNNC_CACHE_DIR`` or ``~/.cache/cnnc``, and ``key`` hashes the source, the
cnnc, Numba and llvmlite versions and the sources of :mod:`simd`, :mod:`block` and :mod:`tasks`
(Numba's own cache only watches the kernel file, not the intrinsics it calls or how it is
compiled). Numba then keeps its compiled code in the
``__pycache__`` folder beside the file, so a second process loads a kernel in a fraction of a
second instead of compiling it again.

Robustness (a cache must heal itself, never need deleting by hand):

- files are written to a temporary name and ``os.replace``-d into place, so concurrent writers
  never leave a torn file (and the kernel file is only rewritten when its content is wrong,
  because a new mtime invalidates Numba's cache);
- every entry has a manifest, ``checksums.json``: the SHA-256 of the kernel file and of each of
  Numba's index (``.nbi``) and data (``.nbc``) files, recorded right after Numba saves them (and,
  for files written by the parallel-compile workers, when first seen: at this process's exit or
  the next load, after a structural check). On load, a kernel file that differs from its source
  or a Numba file that differs from its checksum (one flipped byte of machine code is enough)
  is purged with a one-line warning on stderr, and Numba compiles the kernel again;
- anything that is not a regular file where a cache file belongs (a FIFO, which would block
  any reader forever, a folder, a link) is removed without being opened;
- if the cache directory cannot be used (read-only, a file in its place), the process says so
  once and uses one per-user folder, ``<tmp>/cnnc-cache-<uid>``, for the rest of its life (the
  same folder in every run, so no new temporary directory per run).

A concurrent process rewriting Numba's index between another's save and its checksum can make
a sound entry look damaged: the cost is one more compile, never a wrong kernel.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import pickle
import pickletools
import re
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: kernels compile without the entry lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["cache_root", "module_path", "load_module", "cache_key", "auxiliary_file",
           "compile_lock", "track_saves", "atomic_file", "warn"]

_LOCK = threading.Lock()
_LOADED: dict[str, ModuleType] = {}
_TAG = re.compile(r"[^A-Za-z0-9_]")


def cache_root() -> Path:
    """The cache root: ``$CNNC_CACHE_DIR`` if set, else ``~/.cache/cnnc``."""
    env = os.environ.get("CNNC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cnnc"


def _versions() -> str:
    import llvmlite
    import numba

    try:
        from importlib.metadata import version

        cnnc_version = version("cnnc")
    except Exception:  # pragma: no cover - not installed as a distribution
        cnnc_version = "0"
    # the intrinsics generated code calls, and how it is compiled (``tasks``): Numba's cache
    # watches only the kernel's own file
    helpers = b"".join(Path(__file__).with_name(name).read_bytes()
                       for name in ("simd.py", "block.py", "tasks.py"))
    return "|".join([cnnc_version, numba.__version__, llvmlite.__version__,
                     hashlib.sha256(helpers).hexdigest()])


_VERSIONS: str | None = None


def cache_key(source: str) -> str:
    """Hash of ``source`` and of everything else its compiled code depends on."""
    global _VERSIONS
    if _VERSIONS is None:
        _VERSIONS = _versions()
    h = hashlib.sha256()
    h.update(_VERSIONS.encode())
    h.update(b"\0")
    h.update(source.encode("utf-8"))
    return h.hexdigest()[:20]


def _safe_tag(tag: str) -> str:
    tag = _TAG.sub("_", tag)[:60] or "kernel"
    return tag if not tag[0].isdigit() else "k_" + tag


def module_path(source: str, tag: str, root: Path | None = None) -> Path:
    """Where the module for ``source`` lives (whether or not it exists yet)."""
    tag = _safe_tag(tag)
    root = cache_root() if root is None else Path(root)
    return root / f"{tag}-{cache_key(source)}" / f"{tag}.py"


MANIFEST = "checksums.json"
_MANIFEST_LOCK = threading.Lock()
_FALLBACK: dict[Path, Path] = {}  # unusable root -> the folder used instead
_SEEN: set[Path] = set()  # kernel files loaded here: their Numba files are recorded at exit


def warn(message: str) -> None:
    """One line on stderr (a warning about the cache is never an error)."""
    print(f"cnnc: warning: {message}", file=sys.stderr)


def _read_regular(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not followed through a link), else None.

    Opened non-blocking and checked with fstat before reading, so a FIFO cannot block.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError:  # a link (ELOOP), no permission
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove(path: Path) -> None:
    """Remove whatever is at ``path`` (a folder with its content); ignore failures."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    try:
        if stat.S_ISDIR(mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _ensure_dir(path: Path) -> None:
    """Make ``path`` a folder, removing a non-folder in its place (only inside an entry)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISDIR(mode):
        _remove(path)
        path.mkdir(parents=True, exist_ok=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into: written under a temporary name in
    the same folder and ``os.replace``-d into place when the block ends without an error (else
    removed), so a reader never sees a torn file and of two concurrent writers one whole file
    wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_atomic(path: Path, data: str | bytes) -> None:
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


# -- the manifest -----------------------------------------------------------------------------

def _read_manifest(entry: Path) -> dict[str, str] | None:
    """The checksums of an entry: {} when it has none yet, None when the manifest is damaged."""
    path = entry / MANIFEST
    if not os.path.lexists(path):
        return {}
    data = _read_regular(path)
    try:
        manifest = json.loads(data) if data is not None else None
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in manifest.items()):
        return None
    return manifest


def _write_manifest(entry: Path, manifest: dict[str, str]) -> None:
    """Best effort: a cache that cannot record checksums still works (it checks structure)."""
    try:
        if os.path.lexists(entry / MANIFEST) and not _is_regular(entry / MANIFEST):
            _remove(entry / MANIFEST)
        _write_atomic(entry / MANIFEST, json.dumps(manifest, indent=0, sort_keys=True))
    except OSError:
        pass


def _numba_files(path: Path) -> list[Path]:
    """Numba's index and data files for the kernel file ``path`` (whatever their type)."""
    pyc = path.parent / "__pycache__"
    try:
        names = os.listdir(pyc)
    except OSError:
        return []
    return [pyc / n for n in sorted(names)
            if n.startswith(path.stem + ".") and n.endswith((".nbi", ".nbc"))]


def _rel(path: Path, entry: Path) -> str:
    return path.relative_to(entry).as_posix()


def _record(path: Path, *, adopt_only: bool = False) -> None:
    """Write the checksums of the kernel file ``path`` and its Numba files to the manifest.

    With ``adopt_only``, files that already have a checksum keep it (a file changed since it
    was recorded is for the next load to judge) and unrecorded ones are checked first.
    """
    entry = path.parent
    with _MANIFEST_LOCK:
        manifest = _read_manifest(entry) or {}
        changed = False
        for f in [path] + _numba_files(path):
            rel = _rel(f, entry)
            if adopt_only and rel in manifest:
                continue
            data = _read_regular(f)
            if data is None or (adopt_only and f != path and not _numba_data_ok(f, data)):
                continue
            digest = _sha256(data)
            if manifest.get(rel) != digest:
                manifest[rel] = digest
                changed = True
        # Forget files that are gone (Numba renumbers data files as overloads come and go).
        for rel in [r for r in manifest if not os.path.lexists(entry / r)]:
            del manifest[rel]
            changed = True
        if changed:
            _write_manifest(entry, manifest)


@atexit.register
def _record_seen() -> None:
    """Record the Numba files that appeared during this process and have no checksum yet
    (written by the parallel-compile workers, which do not go through this module)."""
    for path in list(_SEEN):
        try:
            _record(path, adopt_only=True)
        except Exception:  # noqa: BLE001 - never fail at interpreter exit
            pass


def track_saves(compiled: object, path: Path) -> None:
    """Record checksums right after Numba saves a compiled overload of ``compiled`` (a
    dispatcher or C callback of the kernel file ``path``) to its cache."""
    cache = getattr(compiled, "_cache", None)
    save = getattr(cache, "save_overload", None)
    if save is None or getattr(save, "_cnnc_tracked", False):
        return

    def tracked(sig, data, _save=save):
        _save(sig, data)
        try:
            _record(path)
        except OSError:
            pass

    tracked._cnnc_tracked = True  # type: ignore[attr-defined]
    cache.save_overload = tracked


# -- checking an entry ------------------------------------------------------------------------

def _ensure_file(path: Path, source: str) -> None:
    """Make ``path`` hold exactly ``source``; drop Numba's cache when the file is rewritten."""
    _ensure_dir(path.parent)
    data = _read_regular(path)
    if data is not None and data == source.encode("utf-8"):
        return
    if os.path.lexists(path):
        what = "is not a regular file" if data is None else "differs from its source"
        warn(f"kernel cache: {path} {what}; rebuilding it")
        _remove(path)
    _write_atomic(path, source)
    _purge_numba_cache(path)


def _purge_numba_cache(path: Path) -> None:
    for f in _numba_files(path):
        _remove(f)
    entry = path.parent
    with _MANIFEST_LOCK:
        manifest = _read_manifest(entry)
        if manifest:
            kept = {k: v for k, v in manifest.items() if not k.startswith("__pycache__/")}
            _write_manifest(entry, kept)


def _numba_data_ok(f: Path, data: bytes) -> bool:
    """A structural check of one Numba file, for files without a checksum yet."""
    try:
        if f.suffix == ".nbi":
            fh = io.BytesIO(data)
            pickle.load(fh)  # format version
            pickle.loads(fh.read())  # (stamp, overloads)
        else:
            # Walk the opcode stream without building objects: a full unpickle would need
            # the generated module itself to be imported already. This catches truncated
            # and garbled files.
            for _ in pickletools.genops(data):
                pass
    except Exception:  # noqa: BLE001 - any failure means a damaged file
        return False
    return True


def _damage(path: Path) -> str | None:
    """Why the Numba files of kernel file ``path`` cannot be trusted, or None when sound."""
    entry = path.parent
    pyc = entry / "__pycache__"
    if os.path.lexists(pyc) and not (os.path.isdir(pyc) and not os.path.islink(pyc)):
        _remove(pyc)
        return f"{pyc.name} is not a folder"
    files = _numba_files(path)
    if not files:
        return None
    manifest = _read_manifest(entry)
    if manifest is None:
        return f"{MANIFEST} is damaged"
    for f in files:
        data = _read_regular(f)
        if data is None:
            if os.path.lexists(f):
                return f"{f.name} is not a regular file"
            continue  # replaced concurrently
        want = manifest.get(_rel(f, entry))
        if want is None:
            if not _numba_data_ok(f, data):
                return f"{f.name} is damaged"
        elif _sha256(data) != want:
            return f"{f.name} does not match its checksum"
    return None


def _check_entry(path: Path, source: str) -> None:
    """Make the entry of ``path`` sound: the kernel file, then Numba's files."""
    _ensure_file(path, source)
    problem = _damage(path)
    if problem is not None:
        warn(f"kernel cache: {path.parent}: {problem}; purged, the kernel compiles again")
        _purge_numba_cache(path)
        if _numba_files(path):  # a read-only cache keeps its damaged files: use another
            raise PermissionError(f"cannot remove the damaged files in {path.parent}")
    _record(path, adopt_only=True)


# -- an unusable cache ------------------------------------------------------------------------

def _fallback_root(root: Path, error: OSError) -> Path:
    """The folder used instead of the unusable ``root`` (chosen, and announced, once)."""
    if root in _FALLBACK:
        return _FALLBACK[root]
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    folder = Path(tempfile.gettempdir()) / f"cnnc-cache-{uid}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        ours = stat.S_ISDIR(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == uid)
        if not ours or not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not a folder of this user")
    except OSError:
        # Someone else's folder (or none can be made): a private one, removed at exit.
        folder = Path(tempfile.mkdtemp(prefix="cnnc-cache-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    why = error.strerror or str(error)
    warn(f"kernel cache {root} is not usable ({why}); using {folder} instead "
          "(set CNNC_CACHE_DIR to choose another)")
    _FALLBACK[root] = folder
    return folder


def auxiliary_file(name: str, root: Path | str | None = None) -> Path:
    """Where a cache file that is not a kernel lives (the DSL parser's tables, which their
    reader checks against what they were built from): ``name`` in the cache root, or in the
    folder used instead of an unusable root. Whatever is at that path and is not a regular
    file is removed first, so a reader never blocks on it."""
    root_path = cache_root() if root is None else Path(root)
    root_path = _FALLBACK.get(root_path, root_path)
    try:
        root_path.mkdir(parents=True, exist_ok=True)
        if not os.access(root_path, os.W_OK):
            raise PermissionError(13, "not writable", str(root_path))
    except OSError as e:
        root_path = _fallback_root(root_path, e)
    path = root_path / name
    if os.path.lexists(path) and not _is_regular(path):
        _remove(path)
    return path


LOCK = ".lock"


@contextlib.contextmanager
def compile_lock(path: Path | str, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of the cache entry of kernel file ``path`` while compiling its functions:
    concurrent processes (pytest-xdist workers, the parallel-compile workers of two compiles,
    two users) then compile a kernel once, the others waiting and loading it from the cache
    (Numba's ``compile`` looks there first). Yields whether the lock is held: without
    ``wait``, False at once where another holder has it (the parallel compile's processes
    skip a kernel another is compiling). Best effort: where the lock cannot be taken (not
    POSIX, no lock file, something else than a regular file in its place) it yields True
    unlocked. The lock goes with the process that holds it, however that ends."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(Path(path).parent / LOCK, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK |
                         getattr(os, "O_NOFOLLOW", 0), 0o600)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                fd = None
            else:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another (only without ``wait``)
            if fd is not None:
                os.close(fd)
            yield False
            return
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield True
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def load_module(source: str, tag: str, root: Path | str | None = None) -> ModuleType:
    """Write ``source`` to the cache (if needed), check the entry, and import it as a module.

    ``tag`` is a readable prefix for the folder and module name (sanitized; it never becomes an
    identifier inside the source). Modules are memoized per process by path.
    """
    root_path = cache_root() if root is None else Path(root)
    root_path = _FALLBACK.get(root_path, root_path)
    path = module_path(source, tag, root_path)
    key = str(path)
    with _LOCK:
        mod = _LOADED.get(key)
        if mod is not None:
            return mod
        try:
            _check_entry(path, source)
        except OSError as e:
            path = module_path(source, tag, _fallback_root(root_path, e))
            key = str(path)
            mod = _LOADED.get(key)
            if mod is not None:
                return mod
            _check_entry(path, source)
        name = f"cnnc_gen_{path.parent.name.replace('-', '_')}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        for value in list(vars(mod).values()):
            track_saves(value, path)
        _SEEN.add(path)
        _LOADED[key] = mod
        return mod
