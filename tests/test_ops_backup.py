"""Backups: database + adapter registry in one checksummed archive, restored only after it verifies,
never over a running bot or training, the nightly one before retraining, pruned to BACKUP_KEEP."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from bot import os_service
from bot.retraining import Retrainer, nightly_retrain
from common.files import is_locked
from common.home import Home
from data import backup
from data.backup import BackupError, create_backup, list_backups, restore_backup, verify_backup
from data.settings import DataSettings
from data.store import Store
from inference.adapters import read_production
from inference.engine import Engine
from inference.settings import InferenceSettings
from training import runs
from training.lifecycle import pipeline
from training.lifecycle.registry import Registry

from .models import make_adapter

CHATS = {4242: "Quando foi fundado o Farense?", 4343: "Who plays at São Luís?", 4444: "Email me: ana@example.pt"}


def fill(home: Path) -> dict[str, int]:
    """Some conversations, votes, a correction and an opt-out, through the store's own API."""
    with Store(home / "farense.db") as store:
        for chat, question in CHATS.items():
            for turn in range(3):
                message = store.log_message(
                    chat,
                    chat,
                    f"{question} ({turn})",
                    f"Answer {turn} for {chat}",
                    model_id="tiny",
                    adapter_version=None,
                    latency_s=0.2,
                    prompt_tokens=20,
                    completion_tokens=5,
                    lang="pt",
                )
            store.set_feedback(message, chat, 1)
        store.add_correction(1, 5001, "Em 1910, em Faro.")
        store.set_opt_out(4444, True)
        return store.counts()


def promote_adapter(home: Path, model_dir: Path, tmp_path: Path) -> Registry:
    registry = Registry(home, base_model=model_dir)
    for seed in (1, 2):
        version = registry.add_candidate(make_adapter(model_dir, tmp_path / f"adapter{seed}", seed=seed)).version
        registry.promote(version, by="test", reason="test")
    return registry


def data_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data", *argv], capture_output=True, text=True, timeout=120, env=os.environ | (env or {})
    )


def test_backup_wipe_restore_round_trip_through_the_cli(isolated_env, tiny_model_dir, tmp_path):
    home = isolated_env
    before = fill(home)
    registry = promote_adapter(home, tiny_model_dir, tmp_path)
    made = data_cli("backup")
    assert made.returncode == 0, made.stderr
    archive = Path(made.stdout.splitlines()[0].removeprefix("backup: "))
    assert archive.parent == home / "backups" and archive.name.endswith("-manual.tar.gz")
    assert "9 messages" in made.stdout and "adapter v0002 in production" in made.stdout

    os.remove(home / "farense.db")  # the disaster: database and registry gone
    for suffix in ("-wal", "-shm"):
        Path(f"{home / 'farense.db'}{suffix}").unlink(missing_ok=True)
    import shutil

    shutil.rmtree(home / "adapters")

    restored = data_cli("restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert "verified and restored" in restored.stdout
    with Store(home / "farense.db") as store:
        assert store.counts() == before
        assert store.message(1).question == f"{CHATS[4242]} (0)"
        assert [e.source for e in store.curated_examples()] == ["correction", "feedback", "feedback"]
        assert store.is_opted_out(4444)
    assert read_production(home)[0] == "v0002"
    assert registry.previous_production().version == "v0001"
    registry.verify("v0002")  # the same bytes as registered, and they fit the model
    listing = data_cli("backups")
    assert listing.returncode == 0 and archive.name in listing.stdout


def test_a_restore_into_another_home_points_production_at_the_restored_folder(isolated_env, tiny_model_dir, tmp_path):
    fill(isolated_env)
    promote_adapter(isolated_env, tiny_model_dir, tmp_path)
    archive = create_backup(isolated_env / "farense.db", isolated_env / "adapters", tmp_path / "backups").path
    other = tmp_path / "new-machine"
    result = restore_backup(archive, Home(other))
    assert result.replaced is None  # nothing was there to save first
    version, folder = read_production(other)
    assert version == "v0002" and folder == other / "adapters" / "v0002"
    Registry(other, base_model=tiny_model_dir).verify("v0002")


def test_restore_saves_what_it_replaces_and_returns_to_the_backup(isolated_env, tmp_path):
    fill(isolated_env)
    archive = create_backup(isolated_env / "farense.db", isolated_env / "adapters", isolated_env / "backups").path
    with Store(isolated_env / "farense.db") as store:  # life goes on after the backup
        store.log_message(
            4242,
            4242,
            "Later",
            "Later answer",
            model_id="tiny",
            adapter_version=None,
            latency_s=0.1,
            prompt_tokens=1,
            completion_tokens=1,
        )
        assert store.counts()["messages"] == 10
    result = restore_backup(archive, Home(isolated_env))
    with Store(isolated_env / "farense.db") as store:
        assert store.counts()["messages"] == 9
    assert result.replaced.manifest["counts"]["messages"] == 10  # the newer state is not lost
    assert backup.NAME.match(result.replaced.path.name)["label"] == "pre-restore"


def tampered(archive: Path, out: Path, change) -> Path:
    """A copy of `archive` with its members rewritten by change(name, data) -> (name, data) | None."""
    with tarfile.open(archive, "r:gz") as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else b""
            changed = change(member.name, data)
            if changed is None:
                continue
            info = tarfile.TarInfo(changed[0])
            info.size = len(changed[1])
            target.addfile(info, io.BytesIO(changed[1]))
    return out


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda name, data: (name, data[:-1] + bytes([data[-1] ^ 1])) if name == "farense.db" else (name, data),
            "farense.db does not match its checksum",
        ),
        (lambda name, data: None if name.endswith("adapters.safetensors") else (name, data), "missing"),
        (
            lambda name, data: (name, data) if name != "manifest.json" else ("../manifest.json", data),
            "not part of a backup",
        ),
        (
            lambda name, data: (
                (name, json.dumps({**json.loads(data), "format": 99}).encode())
                if name == "manifest.json"
                else (name, data)
            ),
            "unknown backup format",
        ),
    ],
)
def test_a_damaged_archive_is_refused_and_nothing_is_replaced(damage, message, isolated_env, tiny_model_dir, tmp_path):
    fill(isolated_env)
    promote_adapter(isolated_env, tiny_model_dir, tmp_path)
    good = create_backup(isolated_env / "farense.db", isolated_env / "adapters", tmp_path / "backups").path
    bad = tampered(good, tmp_path / "bad.tar.gz", damage)
    with Store(isolated_env / "farense.db") as store:
        store.log_message(
            1,
            1,
            "q",
            "a",
            model_id=None,
            adapter_version=None,
            latency_s=None,
            prompt_tokens=None,
            completion_tokens=None,
        )
    with pytest.raises(BackupError, match=message):
        restore_backup(bad, Home(isolated_env))
    with Store(isolated_env / "farense.db") as store:
        assert store.counts()["messages"] == 10  # untouched, including what came after the backup
    assert read_production(isolated_env)[0] == "v0002"
    assert not list_backups(isolated_env / "backups")  # not even a pre-restore copy: it stopped before
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    result = data_cli("restore", str(truncated))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not a readable" in result.stderr


def test_restore_refuses_while_the_bot_a_pipeline_or_training_holds_its_lock(isolated_env, tmp_path):
    fill(isolated_env)
    archive = create_backup(isolated_env / "farense.db", isolated_env / "adapters", tmp_path / "backups").path
    home = Home(isolated_env, backups_dir=tmp_path / "backups")
    running = os_service.hold_running_lock(isolated_env)
    try:
        assert os_service.bot_running(isolated_env)
        with pytest.raises(BackupError, match="the bot is running"):
            restore_backup(archive, home)
    finally:
        running.close()
    assert not os_service.bot_running(isolated_env)
    with pipeline._pipeline_lock(isolated_env, trigger="nightly", requested_by="test") as holder:
        assert holder is None
        with pytest.raises(BackupError, match="a retraining pipeline is running"):
            restore_backup(archive, home)
    with runs.training_lock(isolated_env):
        with pytest.raises(BackupError, match="a training run is in progress"):
            restore_backup(archive, home)
    assert restore_backup(archive, home).manifest["counts"]["messages"] == 9  # all free again


def test_the_locks_backup_checks_are_the_ones_the_bot_and_training_take(isolated_env):
    home = Home(isolated_env)
    assert set(home.live_locks()) == {home.bot_lock, home.pipeline_lock, home.runs_lock, home.adapters_lock}
    with runs.training_lock(isolated_env):
        assert is_locked(home.runs_lock)
    with Registry(isolated_env)._locked():
        assert is_locked(home.adapters_lock)
    with pipeline._pipeline_lock(isolated_env, trigger="test", requested_by="test") as holder:
        assert holder is None and is_locked(home.pipeline_lock)
    assert not any(is_locked(path) for path in home.live_locks())
    assert DataSettings.load().home.adapters == Registry(isolated_env).root


def test_a_backup_taken_while_the_bot_writes_is_consistent(isolated_env, tmp_path):
    fill(isolated_env)
    stop, written = threading.Event(), []

    def writer():
        with Store(isolated_env / "farense.db") as store:
            while not stop.is_set():
                written.append(
                    store.log_message(
                        7,
                        7,
                        "busy?",
                        "yes",
                        model_id=None,
                        adapter_version=None,
                        latency_s=None,
                        prompt_tokens=None,
                        completion_tokens=None,
                    )
                )

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20:
            threading.Event().wait(0.01)
        made = create_backup(isolated_env / "farense.db", isolated_env / "adapters", tmp_path / "backups")
    finally:
        stop.set()
        thread.join()
    manifest = verify_backup(made.path, tmp_path / "check")  # integrity_check passes inside
    assert 9 + 20 <= manifest["counts"]["messages"] <= 9 + len(written)


def test_nightly_retraining_backs_up_first_and_keeps_backup_keep(isolated_env, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("BACKUP_KEEP", "2")
    fill(isolated_env)
    manual = create_backup(isolated_env / "farense.db", isolated_env / "adapters", isolated_env / "backups").path
    engine = Engine(InferenceSettings.load(model_path=str(tiny_model_dir)))
    retrainer = Retrainer(engine)
    retrainer._lock.acquire()  # a run is going on: the nightly job gets "busy" without training
    reports = []

    async def notify(report) -> None:
        reports.append(report("en"))

    from datetime import datetime

    try:
        with Store(isolated_env / "farense.db") as store:
            for night in (1, 2, 3):
                result = asyncio.run(nightly_retrain(retrainer, store, datetime(2025, 5, night, 3), notify))
                assert result.outcome == "busy"
    finally:
        retrainer._lock.release()
        engine.close()
    nightly = list_backups(isolated_env / "backups", "nightly")
    assert len(reports) == 3 and len(nightly) == 2  # the oldest nightly one was pruned
    assert reports[-1].startswith("Nightly retraining (2025-05-03): busy")
    assert reports[-1].splitlines()[-1] == (
        f"Backup: {nightly[-1].name} (schema {len(backup.MIGRATIONS)}, "
        "9 messages, 3 users, 3 feedback, 1 corrections, no adapters)"
    )
    assert manual.exists()  # BACKUP_KEEP prunes nightly backups only
