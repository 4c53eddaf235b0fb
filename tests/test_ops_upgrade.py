"""Upgrades: a database of every earlier schema version opens under today's code, migrated, rows
intact; the bot backs it up before migrating; `python -m bot version` names the versions.

The earlier versions are kept as SQL in tests/fixtures/schema/vN.sql. Adding a migration needs one
new fixture, of the version before it; this test says so when it is missing.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from data.backup import NAME, list_backups, read_manifest
from data.migrations import MIGRATIONS
from data.store import Store
from training.lifecycle.registry import Registry

from .models import legacy_adapter

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "schema"
CURRENT = len(MIGRATIONS)


def load_fixture(version: int, path: Path) -> None:
    fixture = FIXTURES / f"v{version}.sql"
    assert fixture.is_file(), (
        f"{fixture.relative_to(FIXTURES.parents[2])} is missing: every schema version before the current one "
        f"(v{CURRENT}) needs a fixture. Create it with `python tests/fixtures/schema/make_fixture.py {version}` "
        "(it applies the first migrations and sample rows) and commit it."
    )
    db = sqlite3.connect(path)
    db.executescript(fixture.read_text(encoding="utf-8"))
    db.close()


def schema(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"), key=repr)
    finally:
        db.close()


def row_counts(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        kinds = {row[1]: row[2] for row in db.execute("PRAGMA table_list")}
        return {
            name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
            for name, kind in kinds.items()
            if kind == "table" and not name.startswith("sqlite")
        }
    finally:
        db.close()


def migrated_by_hand(version: int, path: Path) -> None:
    db = sqlite3.connect(path)
    for statements in MIGRATIONS[:version]:
        for statement in statements:
            db.execute(statement)
    db.commit()
    db.close()


def test_every_earlier_schema_version_has_a_fixture():
    missing = [f"v{version}.sql" for version in range(1, CURRENT) if not (FIXTURES / f"v{version}.sql").is_file()]
    assert not missing, (
        f"missing schema fixtures {missing} in tests/fixtures/schema: run "
        f"`python tests/fixtures/schema/make_fixture.py N` for each and commit them"
    )


@pytest.mark.parametrize("version", range(CURRENT))
def test_a_database_of_each_earlier_version_upgrades_with_its_rows(version, tmp_path):
    old = tmp_path / f"v{version}.db"
    if version == 0:
        old.touch()  # a database file the first start created and nothing wrote to
    else:
        load_fixture(version, old)
        reference = tmp_path / "reference.db"
        migrated_by_hand(version, reference)
        assert schema(old) == schema(reference), (
            f"v{version}.sql no longer matches the first {version} migrations: a migration was edited "
            "(append a new one instead)"
        )
    before = row_counts(old)

    with Store(old) as store:
        counts = store.counts()
        examples = store.curated_examples()
        new_id = store.log_message(
            4242,
            4242,
            "E agora?",
            "Agora joga em casa.",
            model_id="m",
            adapter_version=None,
            latency_s=0.5,
            prompt_tokens=9,
            completion_tokens=4,
        )
        assert store.message(new_id).answer == "Agora joga em casa."
        forgotten = store.forget_user(4343)

    fresh = tmp_path / "fresh.db"
    Store(fresh).close()
    assert schema(old) == schema(fresh)  # the same tables, indexes and triggers as a new database
    db = sqlite3.connect(old)
    assert db.execute("PRAGMA user_version").fetchone()[0] == CURRENT
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()
    after = row_counts(old)
    # opening a store seeds the knowledge base
    seeded = ("facts", "fact_revisions", "synonyms", "other_subjects", "fact_questions")
    kept = [name for name in before if name not in seeded]
    assert {name: after[name] for name in kept} == {
        name: before[name] + (name == "messages") + (name == "forgotten_users") - forgotten.get(name, 0)
        for name in kept
    }  # the forget leaves its tombstone
    assert after["fact_revisions"] >= before.get("fact_revisions", 0)  # seeding adds, never drops, revisions
    if version >= 1:  # the v1 sample rows, read through today's code
        assert counts["messages"] == 4 and counts["feedback_up"] == 1 and counts["corrections"] == 1
        assert counts["opted_out"] == 1
        assert [(e.source, e.lang) for e in examples] == [("feedback", "pt"), ("correction", "pt")]
        assert examples[1].answer.startswith("O Estádio de São Luís")
    if version >= 2:  # the v2 sample facts kept; the re-made index holds the live ones only
        db = sqlite3.connect(old)
        assert db.execute("SELECT COUNT(*) FROM facts WHERE origin = 'admin'").fetchone()[0] == 2
        match = "SELECT rowid FROM facts_fts WHERE facts_fts MATCH ?"
        assert len(db.execute(match, ("golfinho",)).fetchall()) == 1
        assert db.execute(match, ("polvo",)).fetchall() == []
        unrecorded = (
            "SELECT COUNT(*) FROM facts WHERE (id, revision) NOT IN (SELECT fact_id, revision FROM fact_revisions)"
        )
        assert db.execute(unrecorded).fetchone()[0] == 0  # every fact's current words are in its history
        db.close()


def test_the_bot_backs_up_an_older_database_then_migrates_it(tiny_model_dir, isolated_env):
    load_fixture(1, isolated_env / "farense.db")
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"MODEL_PATH": str(tiny_model_dir)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    archives = list_backups(isolated_env / "backups")
    if CURRENT > 1:
        assert [NAME.match(path.name)["label"] for path in archives] == ["pre-upgrade-v1"]
        manifest = read_manifest(archives[0])
        assert manifest["schema_version"] == 1 and manifest["counts"]["messages"] == 4
    with Store(isolated_env / "farense.db") as store:
        assert store.counts()["messages"] == 4
    db = sqlite3.connect(isolated_env / "farense.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == CURRENT
    db.close()


def test_version_names_package_schema_model_and_adapter(isolated_env):
    (isolated_env / "adapters").mkdir()
    (isolated_env / "adapters" / "production.json").write_text('{"version": "v0007", "path": "/x/v0007"}')
    Store(isolated_env / "farense.db").close()
    for argv in (["--version"], ["version"]):
        result = subprocess.run([sys.executable, "-m", "bot", *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("farense-bot 0.") and "mlx " in lines[0]
        assert lines[1] == f"database schema: v{CURRENT} in this code, v{CURRENT} in {isolated_env / 'farense.db'}"
        assert lines[2] == "model: embedded SmolLM2-135M-Instruct-Q4_1-c2"
        assert lines[3] == "adapter: v0007"


def test_the_bot_migrates_adapters_of_the_other_qk_layout_at_start_after_a_backup(tiny_pair, isolated_env, tmp_path):
    old, twin = tiny_pair  # the model before and after the converter put Q/K in Hugging Face's order
    trained = Registry(isolated_env, base_model=old)
    for seed in (1, 2):
        trained.add_candidate(legacy_adapter(old, tmp_path / f"adapter-{seed}", seed=seed))
    trained.promote("v0001", by="test", reason="test")

    def start() -> subprocess.CompletedProcess:
        env = os.environ | {"MODEL_PATH": str(twin)}
        return subprocess.run(
            [sys.executable, "-m", "bot"], input="", capture_output=True, text=True, timeout=120, env=env
        )

    result = start()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Upgrade: v0001, v0002: backed up to" in result.stderr
    archives = list_backups(isolated_env / "backups", "pre-layout-migration")
    assert len(archives) == 1 and read_manifest(archives[0])["production"] == "v0001"
    registry = Registry(isolated_env, base_model=twin)
    assert registry.layout_migrations() == []
    for version in ("v0001", "v0002"):
        registry.verify(version)  # its checksums, the model's layout, tensors that fit
    log = (isolated_env / "logs" / "bot.log").read_text()
    assert "adapter now v0001" in log and "unusable" not in log and "refused" not in log

    again = start()
    assert again.returncode == 0 and "Upgrade:" not in again.stderr
    assert len(list_backups(isolated_env / "backups", "pre-layout-migration")) == 1
