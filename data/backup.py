"""Backups of the conversation database and the adapter registry, as one verified archive.

    farense-backup-20250501-030000-nightly.tar.gz
        manifest.json   format, time, schema version, row counts, production adapter,
                        sha256 and size of every other file
        farense.db      SQLite's online backup of the live database (consistent while the bot writes)
        adapters/...    the registry folder, copied while holding its lock (no half-done promotion)

data/ stands alone, so the registry is only a folder here. A restore checks everything first
(checksums, no stray paths, `PRAGMA integrity_check`, a schema this code knows), refuses while the
bot, a pipeline, a training run or a registry change holds its lock, saves what it is about to
replace as a `pre-restore` backup, and only then swaps the files in. A /forget outlives a restore:
the tombstones and opt-outs of the database being replaced are carried into the restored one,
whose rows of forgotten users are deleted again (data/store.py). A forget cannot rewrite the
archives themselves, so every archive older than BACKUP_MAX_AGE_DAYS is deleted (`prune_older_than`,
run by the bot's retention), and the privacy notice states that window.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

from common.files import LockBusy, file_lock, fsync_dir, replace_dir, sha256_file
from common.home import DATABASE_NAME, LOCK_NAME, PRODUCTION_POINTER, Home
from common.settings import SettingsError

from .migrations import MIGRATIONS
from .settings import DataSettings
from .store import Store

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST, DATABASE, ADAPTERS = "manifest.json", DATABASE_NAME, "adapters"  # names inside an archive
PREFIX = "farense-backup-"
NAME = re.compile(r"^farense-backup-(?P<stamp>\d{8}-\d{6})(?:\.\d+)?-(?P<label>[a-z][a-z0-9-]*)\.tar\.gz$")
STAMP = "%Y%m%d-%H%M%S"  # UTC, in the archive's name
LOCK_WAIT_S = 60
# What a killed registry change leaves behind (training/registry.py `_recover`): not state.
_DEBRIS = (LOCK_NAME, ".incoming-", ".trash-", f".{PRODUCTION_POINTER}.")


class BackupError(RuntimeError):
    """The backup cannot be made or used; the message says why and what to do."""


@dataclass(frozen=True)
class Backup:
    path: Path
    manifest: dict


@dataclass(frozen=True)
class Restored:
    manifest: dict
    replaced: Backup | None  # the state before the restore, saved first (None: there was none)
    forgotten: dict[str, int] = field(default_factory=dict)  # rows of forgotten users deleted again


def create_backup(
    database: Path,
    adapters: Path,
    backups_dir: Path,
    *,
    label: str = "manual",
    keep: int | None = None,
    lock_registry: bool = True,
) -> Backup:
    """Archive the database and the adapter folder; `keep`: prune older archives of this label."""
    database, adapters, backups_dir = Path(database), Path(adapters), Path(backups_dir)
    if not database.is_file() and not adapters.is_dir():
        raise BackupError(f"nothing to back up: no database at {database} and no adapters at {adapters}")
    backups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # conversations: for the owner's eyes only
    staging = Path(tempfile.mkdtemp(prefix=".backup-", dir=backups_dir))
    try:
        manifest = {
            "format": FORMAT,
            "created_at": _now(),
            "label": label,
            "source": {"database": str(database), "adapters": str(adapters)},
            "schema_version": None,
            "counts": {},
            "production": None,
            "files": {},
        }
        if database.is_file():
            manifest["schema_version"], manifest["counts"] = _copy_database(database, staging / DATABASE)
        if adapters.is_dir():
            with _locked(adapters / LOCK_NAME, wait=LOCK_WAIT_S) if lock_registry else ExitStack():
                _copy_adapters(adapters, staging / ADAPTERS)
            manifest["production"] = _pointer(staging / ADAPTERS).get("version")
        manifest["files"] = {rel: _describe(staging / rel) for rel in _files(staging)}
        archive = _write_archive(staging, manifest, backups_dir, label)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("backup %s: schema %s, %s", archive.name, manifest["schema_version"], manifest["counts"])
    if keep is not None:
        prune(backups_dir, keep, label)
    return Backup(archive, manifest)


def verify_backup(archive: Path, into: Path) -> dict:
    """Unpack `archive` into the empty folder `into` and check it; returns the manifest."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                _unpack(tar, member, Path(into))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise BackupError(f"{archive} is not a readable backup archive ({error})") from None
    try:
        manifest = json.loads((into / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackupError(f"{archive} has no readable {MANIFEST} ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BackupError(f"{archive}: {MANIFEST} is not a backup manifest")
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: unknown backup format {manifest.get('format')!r}")
    listed, found = set(manifest["files"]), set(_files(into))
    if listed != found:
        missing, extra = sorted(listed - found), sorted(found - listed)
        raise BackupError(
            f"{archive} does not match its manifest: missing {missing or 'nothing'}, unlisted {extra or 'nothing'}"
        )
    for rel in sorted(found):
        if _describe(into / rel) != manifest["files"][rel]:
            raise BackupError(f"{archive}: {rel} does not match its checksum (damaged archive)")
    if DATABASE in found:
        _check_database(into / DATABASE, manifest, archive)
    return manifest


def restore_backup(archive: Path, home: Home) -> Restored:
    """Replace the database and the adapter folder with the archive's, once it has been verified."""
    database, adapters = home.database, home.adapters
    home.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=home.root))
    try:
        manifest = verify_backup(archive, staging)
        with ExitStack() as locks:
            for lock, holder in home.live_locks().items():
                if lock.parent.is_dir():
                    locks.enter_context(
                        _locked(lock, wait=0, busy=f"{holder} ({lock}); stop it first (python -m bot service stop)")
                    )
            replaced = None
            if database.is_file() or adapters.is_dir():
                replaced = create_backup(database, adapters, home.backups, label="pre-restore", lock_registry=False)
            tombstones, opt_outs = _privacy_state(database)
            _swap_database(staging / DATABASE, database)
            _swap_adapters(staging / ADAPTERS, adapters, manifest)
            forgotten = _carry_privacy_state(database, tombstones, opt_outs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "restored %s (replaced state saved as %s; forgotten users' rows deleted again: %s)",
        archive,
        replaced.path if replaced else "nothing",
        forgotten,
    )
    return Restored(manifest, replaced, forgotten)


def list_backups(backups_dir: Path, label: str | None = None) -> list[Path]:
    """Archives in `backups_dir`, oldest first (names sort by time)."""
    if not Path(backups_dir).is_dir():
        return []
    return sorted(
        path
        for path in Path(backups_dir).iterdir()
        if (match := NAME.match(path.name)) and label in (None, match["label"])
    )


def prune(backups_dir: Path, keep: int, label: str) -> list[Path]:
    """Delete all but the newest `keep` archives of `label`; other labels are left alone."""
    removed = list_backups(backups_dir, label)[:-keep] if keep > 0 else []
    for path in removed:
        path.unlink(missing_ok=True)
        log.info("pruned backup %s (keeping the newest %d %s ones)", path.name, keep, label)
    return removed


def prune_older_than(backups_dir: Path, max_age_days: int, *, now: datetime | None = None) -> list[Path]:
    """Delete the archives of any label made more than `max_age_days` ago (the privacy window)."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=max_age_days)
    removed = []
    for path in list_backups(backups_dir):
        made = datetime.strptime(NAME.match(path.name)["stamp"], STAMP).replace(tzinfo=timezone.utc)
        if made < cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
            log.info("pruned backup %s (older than %d days)", path.name, max_age_days)
    return removed


def read_manifest(archive: Path) -> dict:
    """The manifest alone (for listings); no verification."""
    try:
        with tarfile.open(archive, "r:gz") as tar, tar.extractfile(MANIFEST) as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (tarfile.TarError, KeyError, EOFError, zlib.error, OSError, ValueError, AttributeError) as error:
        raise BackupError(f"{archive}: cannot read its manifest ({error})") from None


def schema_version(database: Path) -> int | None:
    """`PRAGMA user_version` of a database file, read-only; None if there is no file."""
    if not Path(database).is_file():
        return None
    db = sqlite3.connect(f"{Path(database).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


# -- making ---------------------------------------------------------------------------------


def _copy_database(source: Path, target: Path) -> tuple[int, dict[str, int]]:
    """SQLite's online backup: a consistent copy even while another connection writes."""
    try:
        src = sqlite3.connect(source, timeout=30)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            src.close()
        try:
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(f"the database {source} is damaged, not backed up: {problems[:3]}")
            return dst.execute("PRAGMA user_version").fetchone()[0], _counts(dst)
        finally:
            dst.close()
    except sqlite3.Error as error:
        raise BackupError(f"cannot back up the database {source}: {error}") from None


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    """Rows per ordinary table (FTS shadow tables and SQLite's own left out)."""
    shadow = {row[1] for row in db.execute("PRAGMA table_list") if row[2] in ("shadow", "virtual")}
    names = [
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name"
        )
    ]
    return {name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names if name not in shadow}


def _copy_adapters(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part.startswith(_DEBRIS) for part in rel.parts):
            continue
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            log.warning("backup: skipped %s (not a regular file)", path)
        elif path.is_dir():
            (target / rel).mkdir(parents=True, exist_ok=True)
        else:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / rel)
    target.mkdir(parents=True, exist_ok=True)


def _write_archive(staging: Path, manifest: dict, backups_dir: Path, label: str) -> Path:
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    stamp = datetime.now(timezone.utc).strftime(STAMP)
    archive, number = backups_dir / f"{PREFIX}{stamp}-{label}.tar.gz", 1
    while archive.exists():
        number += 1
        archive = backups_dir / f"{PREFIX}{stamp}.{number}-{label}.tar.gz"
    partial = staging / "archive.partial"
    with tarfile.open(partial, "w:gz") as tar:
        for rel in [MANIFEST, *sorted(manifest["files"])]:
            tar.add(staging / rel, arcname=rel, recursive=False)
    partial.chmod(0o600)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, archive)
    fsync_dir(backups_dir)
    return archive


# -- checking -------------------------------------------------------------------------------


def _unpack(tar: tarfile.TarFile, member: tarfile.TarInfo, into: Path) -> None:
    """Regular files and folders only, each inside `into` under a name a backup can have."""
    name = PurePosixPath(member.name)
    top = name.parts[0] if name.parts else ""
    if name.is_absolute() or ".." in name.parts or top not in (MANIFEST, DATABASE, ADAPTERS):
        raise BackupError(f"refusing archive member {member.name!r}: not part of a backup")
    if member.isdir():
        (into / name).mkdir(parents=True, exist_ok=True)
        return
    if not member.isfile():
        raise BackupError(f"refusing archive member {member.name!r}: not a regular file")
    (into / name).parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(member) as src, open(into / name, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)


def _check_database(path: Path, manifest: dict, archive: Path) -> None:
    try:
        db = sqlite3.connect(path)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            version = db.execute("PRAGMA user_version").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as error:
        raise BackupError(f"{archive}: the database in it cannot be read ({error})") from None
    if problems != ["ok"]:
        raise BackupError(f"{archive}: the database in it fails integrity_check: {problems[:3]}")
    if version != manifest.get("schema_version"):
        raise BackupError(f"{archive}: database schema {version}, manifest says {manifest.get('schema_version')}")
    if version > len(MIGRATIONS):
        raise BackupError(
            f"{archive} was made by a newer version (schema {version}; this code knows "
            f"{len(MIGRATIONS)}): update the code first, then restore"
        )


# -- replacing ------------------------------------------------------------------------------


def _swap_database(restored: Path, database: Path) -> None:
    """Fold the old database's WAL into it (it is in the pre-restore backup), drop the WAL files
    so SQLite cannot replay them onto the restored file, then rename the restored file in."""
    if database.is_file():
        db = sqlite3.connect(database, timeout=30)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    if not restored.is_file():  # the backup had no database: start empty, as it did
        database.unlink(missing_ok=True)
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(restored, database.with_name(f".{database.name}.restoring"))
    os.replace(database.with_name(f".{database.name}.restoring"), database)
    fsync_dir(database.parent)


def _privacy_state(database: Path) -> tuple[list[tuple[int, str]], list[int]]:
    """The tombstones and opt-outs of the database a restore replaces (none before schema 5)."""
    if not database.is_file():
        return [], []
    try:
        db = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return (
                db.execute("SELECT user_id, forgotten_at FROM forgotten_users").fetchall(),
                [row[0] for row in db.execute("SELECT user_id FROM opt_outs")],
            )
        finally:
            db.close()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return [], []
        raise BackupError(f"cannot read the forgotten users of {database}: {error}") from None


def _carry_privacy_state(database: Path, tombstones: list[tuple[int, str]], opt_outs: list[int]) -> dict[str, int]:
    """Open the restored database (which migrates it) and carry the replaced one's forgets and
    opt-outs into it: forgotten users stay forgotten, opted-out ones opted out."""
    if not database.is_file():
        return {}
    with Store(database) as store:
        for user_id in opt_outs:
            store.set_opt_out(user_id, True)
        return store.add_tombstones(tombstones)


def _swap_adapters(restored: Path, adapters: Path, manifest: dict) -> None:
    """Rename the restored registry into place; production.json's folder follows a moved home."""
    pointer_file = restored / PRODUCTION_POINTER
    pointer = _pointer(restored)
    old_root = Path(manifest["source"]["adapters"])
    if pointer.get("path") and Path(pointer["path"]).parent == old_root and old_root != adapters:
        pointer["path"] = str(adapters / Path(pointer["path"]).name)
        pointer_file.write_text(json.dumps(pointer, indent=2), encoding="utf-8")
    if restored.is_dir():
        replace_dir(restored, adapters)
    elif adapters.exists():  # the backup had no registry: none after the restore either
        aside = adapters.with_name(f".{adapters.name}.replaced-{os.getpid()}")
        os.rename(adapters, aside)
        fsync_dir(adapters.parent)
        shutil.rmtree(aside, ignore_errors=True)


# -- small helpers --------------------------------------------------------------------------


@contextmanager
def _locked(path: Path, *, wait: float, busy: str = ""):
    """Hold the fcntl lock of `path` (the kind the bot and training take); BackupError if busy."""
    try:
        with file_lock(path, timeout=wait):
            yield
    except LockBusy:
        raise BackupError(
            f"refusing: {busy}"
            if busy
            else f"{path} stayed locked for {wait:.0f} s (a registry change running?); try again"
        ) from None


def _pointer(adapters: Path) -> dict:
    try:
        pointer = json.loads((adapters / PRODUCTION_POINTER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return pointer if isinstance(pointer, dict) else {}


def _files(root: Path) -> list[str]:
    """Every file under `root` but the manifest, as POSIX relative paths."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST
    )


def _describe(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the bot's automatic backups --------------------------------------------------------------


def scheduled_backup(database: Path, *, label: str = "nightly") -> Backup | BackupError:
    """The nightly backup of `database` and the registry before retraining, pruned to BACKUP_KEEP,
    or why it could not be made, for the admins' report.

    Never raises: a failed backup is reported, and retraining still runs (it changes no data the
    previous night's backup does not already hold)."""
    try:
        settings = DataSettings.load(database_path=database)
        home = settings.home
        return create_backup(home.database, home.adapters, home.backups, label=label, keep=settings.backup_keep)
    except (SettingsError, BackupError, OSError, sqlite3.Error) as error:
        log.error("%s backup failed: %s", label, error)
        return error if isinstance(error, BackupError) else BackupError(str(error))


def backup_before_upgrade(settings: DataSettings) -> Backup | None:
    """A backup of a database whose schema is about to be migrated (the Store does it at open)."""
    home = settings.home
    version = schema_version(home.database)
    if not version or version >= len(MIGRATIONS):
        return None
    log.info("schema %d -> %d: backing up first", version, len(MIGRATIONS))
    return create_backup(home.database, home.adapters, home.backups, label=f"pre-upgrade-v{version}")


def describe(manifest: dict) -> str:
    """'schema 2, 12 messages, 3 users, adapter v0002' for listings and reports."""
    counts = manifest.get("counts") or {}
    parts = [f"schema {manifest.get('schema_version')}"] if manifest.get("schema_version") is not None else []
    parts += [f"{counts[name]} {name}" for name in ("messages", "users", "feedback", "corrections") if name in counts]
    adapters = sum(1 for name in manifest.get("files") or {} if name.startswith(f"{ADAPTERS}/"))
    if manifest.get("production"):
        parts.append(f"adapter {manifest['production']} in production")
    else:
        parts.append(f"{adapters} adapter files, base model in production" if adapters else "no adapters")
    return ", ".join(parts)
