"""`python -m data` as an operator runs it: real subprocesses, FARENSE_HOME in a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from data.store import Store

ROOT = Path(__file__).resolve().parent.parent
META = dict(model_id="m", adapter_version=None, latency_s=0.1, prompt_tokens=1, completion_tokens=1)


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_PATH", "DATASETS_DIR", "VALID_FRACTION", "TEST_FRACTION", "SPLIT_SALT", "SEED_DIR")
    }
    environment.update(
        PYTHONPATH=str(ROOT), FARENSE_HOME=str(tmp_path / "home"), SEED_DIR=str(tmp_path / "seed"), **env
    )
    return subprocess.run(
        [sys.executable, "-m", "data", *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_seed(tmp_path: Path, count: int = 20) -> None:
    (tmp_path / "seed").mkdir()
    lines = [
        json.dumps({"id": f"f{i}", "fact": i, "lang": "en", "question": f"Q{i} about Farense?", "answer": f"A{i}."})
        for i in range(count)
    ]
    (tmp_path / "seed" / "qa-01.jsonl").write_text("\n".join(lines) + "\n{oops\n")


def test_build_then_stats(tmp_path):
    write_seed(tmp_path)
    with Store(tmp_path / "home" / "farense.db") as store:
        message = store.log_message(5, 5, "Liked question?", "Liked answer.", **META)
        store.set_feedback(message, 5, 1)

    built = run(tmp_path, "build")
    assert built.returncode == 0, built.stderr
    folder = next((tmp_path / "home" / "datasets").glob("2*"))
    assert f"dataset: {folder}" in built.stdout
    assert "sources: seed 20, feedback 1, correction 0, extra 0" in built.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = manifest["splits"]
    assert (
        f"splits: train {counts['train']['count']}, valid {counts['valid']['count']}, test {counts['test']['count']}"
    ) in built.stdout
    assert f"  {tmp_path / 'seed' / 'qa-01.jsonl'}:21: bad JSON" in built.stdout

    stats = run(tmp_path, "stats")
    assert stats.returncode == 0, stats.stderr
    assert "messages 1, feedback +1/-0" in stats.stdout
    assert f"latest dataset: {folder}" in stats.stdout

    as_json = json.loads(run(tmp_path, "stats", "--json").stdout)
    assert as_json["store"]["messages"] == 1
    assert as_json["latest_dataset"]["path"] == str(folder)
    assert as_json["latest_dataset"]["splits"] == {name: counts[name]["count"] for name in counts}


def test_stats_before_anything_exists_creates_nothing(tmp_path):
    result = run(tmp_path, "stats", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "database": str(tmp_path / "home" / "farense.db"),
        "store": None,
        "latest_dataset": None,
    }
    assert not (tmp_path / "home").exists()


def test_bad_setting_is_one_line_and_exit_2(tmp_path):
    result = run(tmp_path, "build", VALID_FRACTION="abc")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "VALID_FRACTION" in lines[0] and "'abc'" in lines[0]
    assert "Traceback" not in result.stderr


def test_unreadable_database_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "farense.db").write_bytes(b"definitely not sqlite" * 50)
    result = run(tmp_path, "stats")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: cannot open database {tmp_path / 'home' / 'farense.db'}: file is not a database"
    ]


def test_nothing_to_build_is_exit_2(tmp_path):
    (tmp_path / "seed").mkdir()
    result = run(tmp_path, "build")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "nothing to build" in result.stderr
