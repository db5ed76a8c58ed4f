"""On-disk cache of generated kernel modules.

Numba can only cache functions whose source lives in a real file (``exec`` of a string cannot be
cached), so generated source is written to

    ``<root>/<tag>-<key>/<tag>.py``

where ``root`` is ``$CNNC_CACHE_DIR`` or ``~/.cache/cnnc``, and ``key`` hashes the source, the
cnnc, Numba and llvmlite versions and the source of :mod:`vec8` (Numba's own cache only watches
the kernel file, not the intrinsics it calls). Numba then keeps its compiled code in the
``__pycache__`` folder beside the file, so a second process loads a kernel in a fraction of a
second instead of compiling it again.

Robustness:

- the file is written to a temporary name and ``os.replace``-d into place, so concurrent writers
  never leave a torn file (and the file is only rewritten when its content is wrong, because a
  new mtime invalidates Numba's cache);
- a kernel file whose content does not match the source (truncated, edited, corrupt) is
  rewritten; Numba index/data files that cannot be unpickled are deleted so that Numba compiles
  again instead of raising (Numba itself does not survive a corrupt cache file);
- if the cache directory cannot be written at all, a private temporary directory is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import pickletools
import re
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

__all__ = ["cache_root", "module_path", "load_module", "cache_key"]

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
    vec8_src = (Path(__file__).with_name("vec8.py")).read_bytes()
    return "|".join([cnnc_version, numba.__version__, llvmlite.__version__,
                     hashlib.sha256(vec8_src).hexdigest()])


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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _ensure_file(path: Path, source: str) -> None:
    """Make ``path`` hold exactly ``source``; drop Numba's cache when the file is rewritten."""
    try:
        if path.read_text(encoding="utf-8") == source:
            return
    except (OSError, UnicodeDecodeError):
        pass
    _write_atomic(path, source)
    _purge_numba_cache(path)


def _purge_numba_cache(path: Path) -> None:
    pyc = path.parent / "__pycache__"
    if pyc.is_dir():
        for f in pyc.iterdir():
            if f.name.startswith(path.stem + ".") and f.suffix in (".nbi", ".nbc"):
                try:
                    f.unlink()
                except OSError:
                    pass


def _numba_cache_ok(path: Path) -> bool:
    """Check that Numba's index (.nbi) and data (.nbc) files for ``path`` are well-formed."""
    pyc = path.parent / "__pycache__"
    if not pyc.is_dir():
        return True
    for f in pyc.iterdir():
        if not f.name.startswith(path.stem + "."):
            continue
        try:
            if f.suffix == ".nbi":
                with open(f, "rb") as fh:
                    pickle.load(fh)  # format version
                    pickle.loads(fh.read())  # (stamp, overloads)
            elif f.suffix == ".nbc":
                # Walk the opcode stream without building objects: a full unpickle would need
                # the generated module itself to be imported already. This catches truncated
                # and garbled files.
                for _ in pickletools.genops(f.read_bytes()):
                    pass
        except FileNotFoundError:
            continue  # replaced concurrently
        except Exception:
            return False
    return True


def load_module(source: str, tag: str, root: Path | str | None = None) -> ModuleType:
    """Write ``source`` to the cache (if needed) and import it as a module.

    ``tag`` is a readable prefix for the folder and module name (sanitized; it never becomes an
    identifier inside the source). Modules are memoized per process by path.
    """
    root_path = cache_root() if root is None else Path(root)
    path = module_path(source, tag, root_path)
    key = str(path)
    with _LOCK:
        mod = _LOADED.get(key)
        if mod is not None:
            return mod
        try:
            _ensure_file(path, source)
        except OSError:
            # Unwritable cache: fall back to a private directory (compiles, but still works).
            path = module_path(source, tag, Path(tempfile.mkdtemp(prefix="cnnc-")))
            _ensure_file(path, source)
        if not _numba_cache_ok(path):
            _purge_numba_cache(path)
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
        _LOADED[key] = mod
        return mod
