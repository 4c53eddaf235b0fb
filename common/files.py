"""Durable files: atomic writes, directory swaps, fsync, sha256 of a file, fcntl locks.

A reader sees a file's old content or its new one, never a torn one, and what was written survives
a crash or a power cut once the function returns (the file and the folder that names it are
fsynced). Locks are fcntl locks: the kernel drops them when their process dies, so a killed
holder never leaves one stuck.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class LockBusy(BlockingIOError):
    """Another process holds the lock (and `timeout` ran out)."""


def fsync_dir(folder: Path) -> None:
    """Make the names in `folder` (a rename, a new file) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """fsync every file directly in `folder`, then the folder itself (before renaming it in)."""
    for path in Path(folder).iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)


def write_synced(path: Path, data: bytes) -> None:
    """Write `path` in place and fsync it (for files inside a staging folder renamed in later)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` atomically and durably: a temporary file beside it, fsynced,
    renamed over it, then the folder fsynced. The file is the owner's alone (mkstemp's 0600):
    FARENSE_HOME holds conversations."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_dir(source: Path, target: Path) -> None:
    """Put the folder `source` at `target` in one rename, `target`'s old content set aside first and
    deleted after; the parent folder is fsynced. `source` may be on another file system (then it
    is moved beside `target` first)."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    if source.parent.resolve() != target.parent.resolve():
        beside = target.with_name(f".{target.name}.incoming-{os.getpid()}")
        shutil.move(source, beside)
        source = beside
    if target.exists():
        os.rename(target, aside)
    os.rename(source, target)
    fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def acquire_lock(path: Path, *, shared: bool = False, timeout: float | None = None) -> IO[str]:
    """Open `path` (created with its folder) and take its fcntl lock; the lock lasts until the
    returned file is closed or the process dies. `timeout`: None waits as long as it takes, 0
    tries once; raises `LockBusy` when it runs out. The file is open "a+", so a holder may record
    who it is in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        if timeout is None:
            fcntl.flock(handle, operation)
            return handle
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, operation | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{path} is locked by another process") from None
                time.sleep(0.2)
    except BaseException:
        handle.close()
        raise


@contextmanager
def file_lock(path: Path, *, shared: bool = False, timeout: float | None = None) -> Iterator[IO[str]]:
    """`acquire_lock` as a context: the lock is released when the block ends."""
    handle = acquire_lock(path, shared=shared, timeout=timeout)
    try:
        yield handle
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def is_locked(path: Path) -> bool:
    """Whether some process holds a lock on `path` (shared or exclusive); False if it does not exist."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        with file_lock(path, timeout=0):
            return False
    except LockBusy:
        return True


def read_json_object(path: Path) -> dict | None:
    """The JSON object in `path` (a manifest, a state file); None when it is missing, unreadable or
    not an object, which callers treat as "not there"."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
