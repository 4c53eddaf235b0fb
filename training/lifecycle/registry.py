"""The adapter registry: numbered versions under $FARENSE_HOME/adapters/ and the production pointer.

    v0001/            adapters.safetensors, adapter_config.json, version.json (status, trigger, run,
                      dataset and knowledge hashes, metrics, training plan: warm or full and on what
                      basis, gate report, file hashes)
    production.json   {"version", "path", ...} — what inference/adapters.py reads; replaced atomically
    history.jsonl     one line per promotion or rollback: who, why, when
    .lock             fcntl lock held by every mutation (the bot, the pipeline and the CLI share it)

An adapter is checked when it is added (config, safetensors header, tensor names and shapes against
the base model) and again before it goes into production (same bytes as registered, still fits), so
a truncated or mismatched file is never served. Versions are never renumbered or rewritten, but
for one thing: an adapter trained on the base model in its other Q/K layout (before converter 2 put
the embedded model in Hugging Face's) is migrated to the model's layout (`migrate_layouts`), the
same adapter with its q_proj/k_proj outputs reordered, recorded in its version.json.

production.json is the commit point of a promotion or rollback: a process killed after writing it
leaves the statuses and the history line behind, and a process killed earlier leaves staging or
temp files. Every change (and `repair()`) first finishes that work under the lock, from the pointer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common.files import file_lock, fsync_dir, fsync_tree, sha256_file, write_atomic, write_synced
from common.home import Home
from inference.adapters import (
    CONFIG_FILE,
    VERSION_FILE,
    WEIGHTS_FILE,
    Adapter,
    AdapterError,
    check_fits,
    read_adapter,
    verify_checksums,
)
from inference.layout import ModelLayout, migrated_files
from inference.modelstore import model_name

from ..errors import UsageError

log = logging.getLogger(__name__)

CANDIDATE, PRODUCTION, REJECTED, RETIRED = "candidate", "production", "rejected", "retired"
HISTORY_FILE = "history.jsonl"
MIGRATED_SUFFIX = ".migrated"  # a migrated adapter file waiting beside the old one for version.json
ADAPTER_FILES = (WEIGHTS_FILE, CONFIG_FILE)
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(UsageError, ValueError):
    """The registry cannot do what was asked: unknown version, nothing to roll back to, ..."""


@dataclass(frozen=True)
class AdapterVersion:
    version: str
    path: Path
    status: str
    created_at: str
    run_id: str | None
    run_dir: Path | None
    dataset: dict  # content_hash, knowledge_hash, counts per split, created_at, sources
    metrics: dict  # the training run's losses and steps
    training: dict  # warm or full, why, and its basis (training/lifecycle/warmstart.py TrainingPlan.record)
    gate: dict | None  # the last gate report
    record: dict = field(repr=False, compare=False)  # version.json as stored

    @property
    def trigger(self) -> str | None:
        """What started its training: nightly, admin, first, manual, console, factory (None when
        registered before versions recorded it)."""
        return self.record.get("trigger")

    @classmethod
    def load(cls, folder: Path) -> AdapterVersion:
        record = json.loads((folder / VERSION_FILE).read_text())
        return cls(
            record["version"],
            folder,
            record["status"],
            record["created_at"],
            record.get("run_id"),
            Path(record["run_dir"]) if record.get("run_dir") else None,
            record.get("dataset") or {},
            record.get("metrics") or {},
            record.get("training") or {},
            record.get("gate"),
            record,
        )


def version_name(text: str) -> str:
    """'3', 'v3' and 'v0003' all name v0003."""
    digits = str(text).strip().lower().removeprefix("v")
    if not digits.isdigit():
        raise RegistryError(f"{text!r} is not a version (expected e.g. v0003 or 3)")
    return f"v{int(digits):04d}"


class Registry:
    def __init__(self, home: Path, keep: int = 10, base_model: str | Path | None = None):
        """`base_model`: model folder (or hub id) adapters must fit; None = MODEL_PATH's."""
        self.home = Path(home)
        self.root = self.home / "adapters"
        self.keep = keep
        self._base_model = base_model
        self._recovered: list[str] = []

    # ----- reading ----------------------------------------------------------------------------
    def versions(self) -> list[AdapterVersion]:
        """Every registered version, oldest first; a folder without version.json is not one."""
        if not self.root.is_dir():
            return []
        folders = sorted((p for p in self.root.iterdir() if _VERSION.match(p.name)), key=lambda p: int(p.name[1:]))
        return [AdapterVersion.load(p) for p in folders if (p / VERSION_FILE).is_file()]

    def get(self, version: str) -> AdapterVersion:
        name = version_name(version)
        folder = self.root / name
        if not (folder / VERSION_FILE).is_file():
            known = ", ".join(v.version for v in self.versions()) or "none yet"
            raise RegistryError(f"no adapter version {name} (registered: {known})")
        return AdapterVersion.load(folder)

    def production(self) -> AdapterVersion | None:
        """The version the production pointer names, or None when the bare base model serves."""
        name = self._pointer().get("version")
        if not name:
            return None
        try:
            return self.get(name)
        except RegistryError:
            raise RegistryError(
                f"{Home(self.home).production_pointer} names {name}, which is not in the "
                f"registry; promote a registered version to repair it"
            ) from None

    def previous_production(self) -> AdapterVersion | None:
        """What `rollback()` would go back to first (None = the base model)."""
        for name in self._pointer().get("previous") or []:
            if (self.root / name / VERSION_FILE).is_file():
                return self.get(name)
        return None

    def history(self) -> list[dict]:
        try:
            lines = (self.root / HISTORY_FILE).read_text(encoding="utf-8").split("\n")  # not at U+2028
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, start=1):
            try:
                entries.append(json.loads(line))
            except ValueError:  # a line torn by a crash mid-append: skip it, say so
                if line.strip():
                    log.warning("%s line %d is not JSON (torn by a crash?); skipped", HISTORY_FILE, number)
        return entries

    def verify(self, version: str) -> Adapter:
        """The files are the bytes that were registered, parse, and fit the base model."""
        entry = self.get(version)
        adapter = read_adapter(entry.path, entry.version)  # checks the files' sha256 first
        self._check_fits(adapter)
        return adapter

    def verify_files(self, version: str) -> AdapterVersion:
        """The files are the bytes that were registered (cheap: no model, no parsing)."""
        entry = self.get(version)
        verify_checksums(entry.path)
        return entry

    # ----- changing ---------------------------------------------------------------------------
    def repair(self) -> list[str]:
        """Finish what a process killed mid-change left undone; returns (and logs) what was fixed.

        Every change does this first anyway; call it to have consistent records without changing
        anything else (e.g. right after a crash)."""
        with self._locked():
            return self._recovered

    def add_candidate(
        self,
        adapter_dir: Path,
        *,
        run_dir: Path | None = None,
        manifest: dict | None = None,
        metrics: dict | None = None,
        trigger: str | None = None,
        requested_by: str | None = None,
        training: dict | None = None,
    ) -> AdapterVersion:
        """Copy a verified adapter folder in as the next version, status candidate. `trigger` and
        `requested_by` say what started its training, for the version's history; `training` how it
        was trained (warm or full, why, on what basis)."""
        source = read_adapter(Path(adapter_dir))
        self._check_fits(source)
        manifest = manifest or {}
        with self._locked():
            self.root.mkdir(parents=True, exist_ok=True)
            numbers = [int(p.name[1:]) for p in self.root.iterdir() if _VERSION.match(p.name)]
            name = f"v{max(numbers, default=0) + 1:04d}"
            staging = Path(tempfile.mkdtemp(prefix=f".incoming-{name}-", dir=self.root))
            try:
                for file in ADAPTER_FILES:
                    shutil.copyfile(source.path / file, staging / file)
                record = {
                    "version": name,
                    "status": CANDIDATE,
                    "created_at": _now(),
                    "trigger": trigger,
                    "requested_by": requested_by,
                    "source": str(source.path.resolve()),
                    "run_id": Path(run_dir).name if run_dir else None,
                    "run_dir": str(Path(run_dir).resolve()) if run_dir else None,
                    "dataset": {
                        "content_hash": manifest.get("content_hash"),
                        "created_at": manifest.get("created_at"),
                        "counts": {k: v.get("count") for k, v in (manifest.get("splits") or {}).items()},
                        "sources": manifest.get("sources"),
                        "knowledge_hash": manifest.get("knowledge_hash"),
                    },
                    "metrics": metrics or {},
                    "training": training or {},
                    "adapter": {
                        "num_layers": source.spec.num_layers,
                        "rank": source.spec.rank,
                        "scale": source.spec.scale,
                    },
                    "files": {file: sha256_file(staging / file) for file in ADAPTER_FILES},
                    "gate": None,
                }
                (staging / VERSION_FILE).write_text(json.dumps(record, indent=2, default=str))
                fsync_tree(staging)
                os.rename(staging, self.root / name)
                fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            log.info("registered %s from %s", name, source.path)
            self._prune()
        return self.get(name)

    def record_gate(self, version: str, report: dict, accepted: bool) -> AdapterVersion:
        """Keep the gate's report; a candidate that failed it becomes `rejected` (and stays)."""
        with self._locked():
            entry = self.get(version)
            status = entry.status if accepted or entry.status != CANDIDATE else REJECTED
            self._update(entry, status=status, gate=report)
        return self.get(version)

    def promote(self, version: str, by: str, reason: str) -> AdapterVersion:
        """Verify the files, then point production at `version`; the old one is kept to roll back to."""
        with self._locked():
            entry = self.get(version)
            pointer = self._pointer(strict=False)
            current = pointer.get("version")
            if current == entry.version:
                raise RegistryError(f"{entry.version} is already in production")
            self.verify(entry.version)
            previous = [current] if current else []
            previous += [name for name in pointer.get("previous") or [] if name != entry.version]
            self._switch(entry, previous, "promote", current, by, reason)
            log.info("promoted %s (was %s) by %s: %s", entry.version, current or "base model", by, reason)
            self._prune()
        return self.get(entry.version)

    def rollback(self, by: str, reason: str) -> AdapterVersion | None:
        """Serve the previous production version again (the base model if there is none).

        A previous version whose files no longer verify is skipped, and the history says so.
        """
        with self._locked():
            pointer = self._pointer()
            current = pointer.get("version")
            if not current:
                raise RegistryError("nothing to roll back: the base model is already serving")
            stack, skipped, target = list(pointer.get("previous") or []), [], None
            while stack and target is None:
                name = stack.pop(0)
                try:
                    self.verify(name)
                    target = self.get(name)
                except (RegistryError, AdapterError) as error:
                    skipped.append(f"skipped {name}: {error}")
            note = "; ".join([reason, *skipped])
            self._switch(target, stack, "rollback", current, by, note)
            if (self.root / current / VERSION_FILE).is_file():
                self._update(self.get(current), status=RETIRED, rolled_back_at=_now(), rolled_back_by=by)
            log.info("rolled back %s to %s by %s: %s", current, target.version if target else "base model", by, note)
        return target

    def rollback_to(self, version: str, by: str, reason: str) -> AdapterVersion:
        """Serve `version` again: one that was in production before, whose files still verify and
        fit the base model. The versions promoted after it are left behind (retired)."""
        with self._locked():
            entry = self.get(version)
            pointer = self._pointer()
            current = pointer.get("version")
            if current == entry.version:
                raise RegistryError(f"{entry.version} is already in production")
            if not entry.record.get("promoted_at"):
                raise RegistryError(
                    f"{entry.version} was never in production (status {entry.status}); promote it instead"
                )
            self.verify(entry.version)
            stack = list(pointer.get("previous") or [])
            previous = stack[stack.index(entry.version) + 1 :] if entry.version in stack else stack
            self._switch(entry, previous, "rollback", current, by, reason)
            if current and (self.root / current / VERSION_FILE).is_file():
                self._update(self.get(current), status=RETIRED, rolled_back_at=_now(), rolled_back_by=by)
            log.info("rolled back %s to %s by %s: %s", current or "base model", entry.version, by, reason)
        return self.get(entry.version)

    def layout_migrations(self) -> list[AdapterVersion]:
        """The versions trained on the base model in its other Q/K layout, which `migrate_layouts`
        rewrites (inference/layout.py); a version whose files fail their checks is left out."""
        versions = self.versions()
        if not versions:
            return []
        layout = self.base_layout()
        return [entry for entry in versions if (adapter := self._readable(entry)) and layout.needs_migration(adapter)]

    def migrate_layouts(self) -> list[str]:
        """Rewrite each version of `layout_migrations` for the base model's Q/K layout; one line per
        version. version.json is the commit point: the new files wait beside the old ones until it
        records their checksums, then replace them (a killed migration is finished or undone)."""
        done = []
        with self._locked():
            layout = self.base_layout()
            for entry in self.versions():
                adapter = self._readable(entry)
                if adapter is None or not layout.needs_migration(adapter):
                    continue
                trained = layout.trained_for(adapter)
                waiting = {name: entry.path / f".{name}{MIGRATED_SUFFIX}" for name in ADAPTER_FILES}
                for name, data in migrated_files(adapter, layout).items():
                    write_synced(waiting[name], data)
                migration = {"from": trained, "to": layout.qk_layout, "base_model": layout.model, "at": _now()}
                self._update(
                    entry,
                    files={name: sha256_file(file) for name, file in waiting.items()},
                    layout_migrations=[
                        *entry.record.get("layout_migrations", []),
                        migration | {"files_before": entry.record["files"]},
                    ],
                )
                self._finish_migrations(entry.path)
                done.append(
                    f"{entry.version}: migrated from {trained} to {layout.qk_layout} Q/K layout for {layout.model}"
                )
                log.info("registry: %s", done[-1])
        return done

    def _readable(self, entry: AdapterVersion) -> Adapter | None:
        try:
            return read_adapter(entry.path, entry.version)
        except AdapterError:
            return None

    def _finish_migrations(self, folder: Path) -> list[str]:
        """Put in place the migrated files version.json records; drop the ones it does not."""
        fixed = []
        recorded = AdapterVersion.load(folder).record.get("files") or {}
        for waiting in sorted(folder.glob(f".*{MIGRATED_SUFFIX}")):
            name = waiting.name[1 : -len(MIGRATED_SUFFIX)]
            if recorded.get(name) == sha256_file(waiting):
                os.replace(waiting, folder / name)
                fixed.append(f"{folder.name}/{name}: the migrated file its version.json records put in place")
            else:
                waiting.unlink()
                fixed.append(
                    f"{folder.name}/{waiting.name}: removed, left by a migration killed before it was recorded"
                )
        fsync_dir(folder)
        return fixed

    # ----- internals --------------------------------------------------------------------------
    def _switch(
        self, target: AdapterVersion | None, previous: list[str], action: str, current: str | None, by: str, reason: str
    ) -> None:
        """Write the pointer atomically, then the statuses and the history line."""
        now = _now()
        self.root.mkdir(parents=True, exist_ok=True)
        pointer = {
            "version": target.version if target else None,
            "path": str(target.path.resolve()) if target else None,
            "promoted_at": now,
            "promoted_by": by,
            "reason": reason,
            "previous": previous,
            "action": action,
            "from": current,
        }  # enough to redo the history line after a crash
        write_atomic(Home(self.home).production_pointer, json.dumps(pointer, indent=2))
        if current and (self.root / current / VERSION_FILE).is_file():
            self._update(self.get(current), status=RETIRED)
        if target is not None:
            self._update(target, status=PRODUCTION, promoted_at=now, promoted_by=by)
        self._append_history(_history_line(pointer))

    def _append_history(self, line: dict) -> None:
        with open(self.root / HISTORY_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _recover(self) -> list[str]:
        """Finish what a killed change left: debris, statuses and the history line (lock held)."""
        fixed = []
        pointer_temp = f".{Home(self.home).production_pointer.name}."
        for debris in sorted(self.root.glob(".*")):
            if debris.name.startswith((".incoming-", ".trash-", pointer_temp)):
                shutil.rmtree(debris) if debris.is_dir() else debris.unlink()
                fixed.append(f"removed {debris.name}, left by a killed registry change")
        for temp in sorted(self.root.glob(f"v*/.{VERSION_FILE}.*")):
            temp.unlink()
            fixed.append(f"removed {temp.parent.name}/{temp.name}, left by a killed registry change")
        for folder in sorted({waiting.parent for waiting in self.root.glob(f"v*/.*{MIGRATED_SUFFIX}")}):
            if (folder / VERSION_FILE).is_file():
                fixed += self._finish_migrations(folder)
        try:
            pointer = self._pointer()
        except RegistryError:  # reported by production(); promoting a version rewrites it
            return fixed
        serving = pointer.get("version")
        for entry in self.versions():
            if entry.version == serving and entry.status != PRODUCTION:
                self._update(
                    entry,
                    status=PRODUCTION,
                    promoted_at=pointer.get("promoted_at"),
                    promoted_by=pointer.get("promoted_by"),
                )
                fixed.append(f"{entry.version} is in production.json: status {entry.status} -> {PRODUCTION}")
            elif entry.version != serving and entry.status == PRODUCTION:
                self._update(entry, status=RETIRED)
                fixed.append(f"{entry.version} is not in production.json: status {PRODUCTION} -> {RETIRED}")
        if pointer.get("action") and pointer.get("promoted_at"):
            line, last = _history_line(pointer), (self.history() or [{}])[-1]
            if {key: value for key, value in last.items() if key != "recovered"} != line:
                self._append_history(line | {"recovered": True})
                fixed.append(
                    f"history: added the {line['action']} to {line['version'] or 'the base model'} "
                    "that production.json records"
                )
        for item in fixed:
            log.warning("registry repair: %s", item)
        return fixed

    def _update(self, entry: AdapterVersion, **fields) -> None:
        record = entry.record | fields | {"updated_at": _now()}
        write_atomic(entry.path / VERSION_FILE, json.dumps(record, indent=2, default=str))

    def _prune(self) -> None:
        """Keep the newest `keep` versions, plus production and the previous one whatever their age."""
        versions = self.versions()
        previous = self.previous_production()
        protected = {self._pointer().get("version"), previous.version if previous else None}
        for entry in versions[: max(0, len(versions) - self.keep)]:
            if entry.version in protected:
                continue
            trash = self.root / f".trash-{entry.version}-{os.getpid()}"
            os.rename(entry.path, trash)  # gone from the listing at once, even if rmtree is cut short
            shutil.rmtree(trash, ignore_errors=True)
            log.info("pruned %s (%s), keeping the newest %d versions", entry.version, entry.status, self.keep)

    def _pointer(self, strict: bool = True) -> dict:
        """production.json; a corrupt one raises, or is reported and read as empty (`strict=False`:
        promoting rewrites it, which is how it gets repaired)."""
        path = Home(self.home).production_pointer
        try:
            pointer = json.loads(path.read_text())
            if not isinstance(pointer, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {}
        except ValueError as error:
            if not strict:
                log.warning("%s is corrupt (%s); replacing it", path, error)
                return {}
            raise RegistryError(f"{path} is corrupt ({error}); promote a version to rewrite it") from None
        return pointer

    def _check_fits(self, adapter: Adapter) -> None:
        from inference.lora_shapes import expected_lora_shapes  # MLX, on a thread of its own

        self.base_layout().check(adapter)
        check_fits(adapter, expected_lora_shapes(self.model_folder(), adapter.spec))

    def base_layout(self) -> ModelLayout:
        """The base model's name and Q/K layout: what an adapter must have been trained for."""
        folder = self.model_folder()  # resolves the base model first
        return ModelLayout.of_folder(folder, model_name(str(self._base_model)))

    def model_folder(self) -> Path:
        """The base model's local folder (MODEL_PATH resolved, converted when it is a GGUF)."""
        from inference.lora_shapes import local_model_folder

        if self._base_model is None:
            from inference.modelstore import resolve_model
            from inference.settings import InferenceSettings

            serving = InferenceSettings.load()
            self._base_model = resolve_model(serving.model_path, serving.home.models)
        return local_model_folder(self._base_model)

    @contextmanager
    def _locked(self):
        """The registry lock, with whatever a killed holder left undone finished first."""
        with file_lock(Home(self.home).adapters_lock):
            self._recovered = self._recover()
            yield


def _history_line(pointer: dict) -> dict:
    """The history.jsonl line of the switch that wrote this production pointer."""
    return {
        "at": pointer.get("promoted_at"),
        "action": pointer.get("action"),
        "version": pointer.get("version"),
        "from": pointer.get("from"),
        "by": pointer.get("promoted_by"),
        "reason": pointer.get("reason"),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
