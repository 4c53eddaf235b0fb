"""`python -m bot doctor`: a checklist with fixes, exit 1 when something is wrong, never the token."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.doctor import FAIL, OK, SKIP, WARN, Doctor, run_doctor
from bot.os_service import hold_running_lock
from data.backup import create_backup
from data.store import Store
from training.lifecycle.registry import Registry

from .botapi import BotApiServer
from .models import legacy_adapter, make_adapter

TOKEN = "123456789:AAHdoctorDOCTORdoctor-0123456789abcd"
CHECKS = [
    "settings",
    "token",
    "telegram",
    "model",
    "backend",
    "disk",
    "memory",
    "database",
    "registry",
    "scheduler",
    "backups",
]


@pytest.fixture
def tiny_env(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    return tiny_model_dir


def checks() -> dict[str, tuple[str, str, str]]:
    results = Doctor(timeout=2).run()
    assert [check.name for check in results] == CHECKS
    return {check.name: (check.status, check.detail, check.fix) for check in results}


def doctor_cli(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot", "doctor", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        env=os.environ | env,
    )


def test_console_mode_on_a_fresh_home_passes_with_warnings(tiny_env, isolated_env):
    result = doctor_cli()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("[")]
    assert [row.split("]")[1].split()[0] for row in rows] == CHECKS
    assert rows[1].startswith("[warn] token      TELEGRAM_BOT_TOKEN is not set: console mode")
    assert lines[lines.index(rows[1]) + 1].strip().startswith("fix: for Telegram, put TELEGRAM_BOT_TOKEN=")
    assert rows[2].startswith("[skip] telegram") and rows[7].startswith("[ ok ] database")
    assert "not created yet" in rows[7] and "training fits: batch" in rows[6]
    assert lines[-1].startswith("0 failed,")


def test_a_malformed_token_and_an_unreachable_bot_api_fail_without_showing_the_token(tiny_env, isolated_env):
    bogus = "12345:not-a-real-token-but-secret"
    result = doctor_cli(TELEGRAM_BOT_TOKEN=bogus, TELEGRAM_BASE_URL="http://127.0.0.1:9/bot")  # nothing listens
    assert result.returncode == 1
    assert "[FAIL] token      TELEGRAM_BOT_TOKEN does not look like a bot token" in result.stdout
    assert "[FAIL] telegram   cannot reach 127.0.0.1" in result.stdout
    assert "fix: check the network" in result.stdout
    assert "not-a-real-token" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_doctor_warns_of_no_admins_and_a_cleartext_bot_api_url(tiny_env, isolated_env):
    result = doctor_cli(TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_BASE_URL="http://192.0.2.1/bot", ADMIN_USER_IDS="")
    line = next(line for line in result.stdout.splitlines() if line.startswith("[warn] token"))
    assert "0 admin(s), but ADMIN_USER_IDS is empty" in line
    assert "TELEGRAM_BASE_URL is not https (http://192.0.2.1): the bot token travels in cleartext" in line
    spaced = doctor_cli(TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_BASE_URL="http://192.0.2.1/bot", ADMIN_USER_IDS="111 222")
    assert (
        "2 admin(s), but TELEGRAM_BASE_URL is not https" in spaced.stdout
        and "ADMIN_USER_IDS is empty" not in spaced.stdout
    )
    assert TOKEN not in result.stdout + result.stderr + spaced.stdout + spaced.stderr


def test_the_bot_api_answers_or_refuses_the_token(tiny_env, isolated_env, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ADMIN_USER_IDS", "5001")
    with BotApiServer(TOKEN) as server:
        monkeypatch.setenv("TELEGRAM_BASE_URL", server.base_url)
        found = checks()
    assert found["token"][:2] == (OK, "well-formed (bot id 123456789), 1 admin(s)")
    assert found["telegram"][0] == OK and found["telegram"][1].startswith("reachable: this is @farense_test_bot (id ")
    with BotApiServer(TOKEN.replace("doctor", "other")) as server:
        monkeypatch.setenv("TELEGRAM_BASE_URL", server.base_url)
        found = checks()
    assert found["telegram"][0] == FAIL and "refused the token" in found["telegram"][1]
    assert TOKEN not in json.dumps(found)


def test_invalid_settings_fail_once_and_the_dependent_checks_are_skipped(tiny_env, isolated_env, monkeypatch):
    monkeypatch.setenv("ADMIN_USER_IDS", "12,Ana")
    found = checks()
    assert found["settings"][0] == FAIL and "ADMIN_USER_IDS must be Telegram user ids" in found["settings"][1]
    assert found["token"][0] == found["telegram"][0] == found["scheduler"][0] == SKIP
    assert found["model"][0] == OK and found["database"][0] == OK  # other packages' settings still load
    assert run_doctor(timeout=1, out=lambda text: None) == 1


def test_a_damaged_or_newer_database_fails_with_the_restore_fix(tiny_env, isolated_env):
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
    assert checks()["database"][:2][0] == OK
    db = sqlite3.connect(isolated_env / "farense.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    status, detail, fix = checks()["database"]
    assert status == FAIL and "schema v99, newer than this code" in detail and "git pull" in fix
    (isolated_env / "farense.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{isolated_env / 'farense.db'}{suffix}").unlink(missing_ok=True)
    status, detail, fix = checks()["database"]
    assert status == FAIL and "cannot be read" in detail and "python -m data restore" in fix


def test_registry_damage_fails_and_an_interrupted_change_is_repaired(tiny_env, isolated_env, tmp_path):
    registry = Registry(isolated_env, base_model=tiny_env)
    version = registry.add_candidate(make_adapter(tiny_env, tmp_path / "adapter")).version
    registry.promote(version, by="test", reason="test")
    assert checks()["registry"][:2] == (OK, "1 versions; production: v0001 (files verified, fits the base model)")

    (registry.root / ".incoming-v0002-123").mkdir()  # what a registry change killed mid-way leaves
    assert checks()["registry"][0] == WARN
    repaired = subprocess.run(
        [sys.executable, "-m", "bot", "doctor", "--repair", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "repair: removed .incoming-v0002-123" in repaired.stdout
    assert "[ ok ] registry" in repaired.stdout

    weights = registry.root / "v0001" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    status, detail, fix = checks()["registry"]
    assert status == FAIL and "changed since it was registered" in detail and "rollback" in fix
    (registry.root / "production.json").write_text("{not json")
    status, detail, _ = checks()["registry"]
    assert status == FAIL and "production.json is corrupt" in detail


def test_adapters_of_the_other_qk_layout_are_a_warning_fixed_at_start(tiny_pair, isolated_env, tmp_path, monkeypatch):
    old, twin = tiny_pair
    trained = Registry(isolated_env, base_model=old)
    trained.promote(trained.add_candidate(legacy_adapter(old, tmp_path / "adapter")).version, by="test", reason="test")
    monkeypatch.setenv("MODEL_PATH", str(twin))
    status, detail, fix = checks()["registry"]
    assert status == WARN and detail.startswith("v0001 trained for the base model's other Q/K layout")
    assert fix == "restart the bot, or now: python -m training migrate"
    Registry(isolated_env, base_model=twin).migrate_layouts()
    assert checks()["registry"][:2] == (OK, "1 versions; production: v0001 (files verified, fits the base model)")


def test_scheduler_memory_and_backups(tiny_env, isolated_env, monkeypatch):
    monkeypatch.setenv("RETRAIN_CRON", "30 4 * * *")
    found = checks()
    assert found["scheduler"][0] == WARN and " 04:30 Europe/Lisbon" in found["scheduler"][1]
    assert "the bot is not running here" in found["scheduler"][1]
    assert found["backups"][0] == WARN and "python -m data backup" in found["backups"][2]
    assert found["memory"][0] == OK and found["disk"][0] in (OK, WARN)
    assert found["backend"][0] in (OK, WARN) and (found["backend"][0] == OK or "libopenblas" in found["backend"][2])

    Store(isolated_env / "farense.db").close()
    create_backup(isolated_env / "farense.db", isolated_env / "adapters", isolated_env / "backups")
    monkeypatch.setenv("TRAIN_MEMORY_BUDGET_GB", "0.01")
    running = hold_running_lock(isolated_env)
    try:
        found = checks()
    finally:
        running.close()
    assert found["scheduler"][0] == OK and found["scheduler"][1].endswith("the bot is running")
    assert found["backups"][0] == OK and "1 in " in found["backups"][1]
    assert found["memory"][0] == FAIL and "not enough memory to train" in found["memory"][1]
    assert "TRAIN_BATCH_SIZE" in found["memory"][2]
