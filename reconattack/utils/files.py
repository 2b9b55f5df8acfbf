"""Files that are never half-written: every write goes to a temporary file in the same folder,
is flushed to disk, and is renamed over the target (``os.replace`` is atomic on POSIX and
Windows). A process killed while writing leaves the previous version whole and, at worst, a
``.<name>.*.tmp`` file beside it."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends without an exception (see the
    module docstring; parent folders are created). ``durable``: fsync before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created); returns the path.

    ``durable``: fsync before the rename, so the new version also survives a power loss. A
    checksummed cache written on the hot path (SIFT entries, one per image) passes False: a
    killed process still leaves the old version or none, and an entry torn by a power loss is
    caught by its checksum and recomputed."""
    with atomic_writer(path, durable) as f:
        f.write(data)
    return Path(path)


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically and durably, streamed to the temporary file in
    the target's folder (no second copy in memory, no temporary file on another disk)."""
    import torch

    with atomic_writer(path) as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def safe_name(value: str, key: str) -> str:
    """``value`` when it can be one file or folder name (letters, digits, ``_ . -``; no path
    separator, not ``.`` or ``..``), else ConfigError naming ``key``: config values that become
    parts of paths (stage, attack and threat names) never write outside the run and cache
    directories."""
    from reconattack.errors import ConfigError

    value = str(value)
    if not _NAME.match(value) or value in (".", ".."):
        raise ConfigError(f"{key}={value!r} becomes part of file paths; use letters, digits, '_', '.' "
                          f"and '-' only (no path separators)")
    return value


def file_fingerprint(path: str | os.PathLike | None) -> dict | None:
    """What identifies an input file inside a spec: resolved path, size and modification time
    (so replacing a checkpoint at the same path builds new artifacts)."""
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path))).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def source_fingerprint(path: str | os.PathLike | None) -> dict | None:
    """What identifies an input file or folder inside a spec: a file as :func:`file_fingerprint`;
    a folder by its listing — resolved path, the number of files and a SHA-256 over every file's
    relative name, size and modification time (sorted; symbolic links followed) — so that
    replacing, adding or removing an image under the same path builds new artifacts. Cheap: no
    file is read. None for a path that is not there."""
    if path in (None, ""):
        return None
    import hashlib

    p = Path(os.path.expanduser(str(path))).resolve()
    if p.is_file():
        return file_fingerprint(p)
    if not p.is_dir():
        return None
    digest, count = hashlib.sha256(), 0
    for root, dirs, files in os.walk(p, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            try:
                st = f.stat()
            except OSError:  # a dangling link: its name still counts
                st = None
            rel = f.relative_to(p).as_posix()
            digest.update(f"{rel}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
            count += 1
    return {"path": str(p), "files": count, "listing": digest.hexdigest()}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits (read in ``chunk``-byte pieces)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
