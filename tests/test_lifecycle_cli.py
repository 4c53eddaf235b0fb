"""The lifecycle commands (promote, rollback, adapters, gate, pipeline): output, exit codes, and
expected errors as one stderr line without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inference.adapters import read_production
from training.cli import COMMANDS, command
from training.lifecycle.registry import Registry

from .models import make_adapter


@pytest.fixture
def registry(monkeypatch, isolated_env, tiny_model_dir, tmp_path) -> Registry:
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    registry = Registry(isolated_env)
    for seed in (1, 2):
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed))
    return registry


def run(capsys, name: str, *argv: str) -> tuple[int, str, str]:
    code = command(name)(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_commands_are_the_five_lifecycle_ones():
    assert {"promote", "rollback", "adapters", "gate", "pipeline"} <= set(COMMANDS)  # in the one command table


def test_promote_list_and_rollback(registry, capsys):
    code, out, _ = run(capsys, "promote", "1", "--by", "alice", "--reason", "first one")
    assert code == 0 and "v0001 is now in production (was the base model)" in out
    assert run(capsys, "promote", "v0002", "--by", "bob")[0] == 0
    code, out, _ = run(capsys, "adapters")
    assert code == 0
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [
        ["v0001", "retired", registry.get("1").created_at],
        ["*", "v0002", "production"],
    ]
    code, out, _ = run(capsys, "adapters", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["production"] == "v0002" and len(listing["versions"]) == 2
    assert [h["by"] for h in listing["history"]] == ["alice", "bob"] and listing["history"][0]["reason"] == "first one"
    code, out, _ = run(capsys, "rollback", "--by", "carol", "--reason", "bad answers")
    assert code == 0 and "rolled back v0002: now serving v0001" in out
    assert read_production(registry.home)[0] == "v0001"


def gate_report(accepted: bool, right: float, right_en: float, right_pt: float, wrong: float) -> dict:
    """The figures of a gate report that the adapters table shows."""
    return {
        "accepted": accepted,
        "candidate": {
            "val_loss": 0.91,
            "accuracy": right,
            "accuracy_by_lang": {"en": right_en, "pt": right_pt},
            "wrong_rate": wrong,
        },
    }


def test_adapters_lists_each_versions_figures_trigger_and_hashes_rejected_candidates_too(
    registry, capsys, tiny_model_dir, tmp_path
):
    registry.record_gate("v0001", gate_report(True, 0.625, 0.75, 0.5, 0.125), True)
    registry.promote("v0001", by="test", reason="passed")
    registry.add_candidate(
        make_adapter(tiny_model_dir, tmp_path / "a3", seed=3),
        manifest={"content_hash": "d" * 64, "knowledge_hash": "f" * 64, "splits": {"train": {"count": 12}}},
        metrics={"best_val_loss": 0.98},
        trigger="nightly",
        requested_by="scheduler",
    )
    registry.record_gate("v0003", gate_report(False, 0.5, 0.625, 0.375, 0.375), False)

    code, out, _ = run(capsys, "adapters")
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[3:6] == ["trigger", "dataset", "knowledge"]
    assert header.split()[-6:] == ["right", "EN", "PT", "declined", "wrong", "gate"]
    production, untested, rejected = (row.split() for row in rows)
    assert production[:3] == ["*", "v0001", "production"]
    assert production[-6:] == ["62.5%", "75.0%", "50.0%", "25.0%", "12.5%", "accepted"]
    assert untested[:2] == ["v0002", "candidate"] and untested[-1] == "-"  # never gated: no figures
    assert rejected[:2] == ["v0003", "rejected"]
    assert rejected[3:7] == ["nightly", "d" * 12, "f" * 12, "12"]
    assert rejected[-8:] == ["0.9800", "0.9100", "50.0%", "62.5%", "37.5%", "12.5%", "37.5%", "rejected"]

    code, out, _ = run(capsys, "adapters", "--json")
    listed = {row["version"]: row for row in json.loads(out)["versions"]}
    assert listed["v0003"]["status"] == "rejected" and listed["v0003"]["trigger"] == "nightly"
    assert listed["v0003"]["knowledge_hash"] == "f" * 64 and listed["v0003"]["gate_declined_rate"] == 0.125


@pytest.mark.parametrize(
    "argv, message",
    [
        (["promote", "v9"], "no adapter version v0009 (registered: v0001, v0002)"),
        (["promote", "latest"], "'latest' is not a version"),
        (["rollback"], "nothing to roll back"),
        (["gate", "1"], "its training run (none recorded) is gone"),
    ],
)
def test_expected_errors_are_one_line_exit_2(registry, capsys, argv, message):
    code, out, err = run(capsys, argv[0], *argv[1:])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("training: error: ") and message in err


def test_damaged_adapter_is_refused_by_promote(registry, capsys):
    weights = registry.root / "v0002" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    code, _, err = run(capsys, "promote", "2")
    assert code == 2 and "changed since it was registered" in err and read_production(registry.home) is None


def test_bad_setting_is_named(registry, capsys, monkeypatch):
    monkeypatch.setenv("KEEP_ADAPTERS", "0")
    code, _, err = run(capsys, "adapters")
    assert code == 2 and err.count("\n") == 1 and "KEEP_ADAPTERS" in err


def test_busy_pipeline_exits_2(registry, capsys):
    from training.lifecycle.pipeline import _pipeline_lock

    with _pipeline_lock(registry.home, trigger="nightly", requested_by="cron"):
        code, out, err = run(capsys, "pipeline", "--", "--iters", "0")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "already running" in err and "nightly by cron" in err


def test_module_entry_point_has_no_traceback(registry):
    done = subprocess.run([sys.executable, "-m", "training", "promote", "v7"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "training: error: no adapter version v0007 (registered: v0001, v0002)"


def test_pipeline_events_end_with_the_result(registry, capsys):
    code, out, _ = run(capsys, "pipeline", "--events", "--trigger", "manual", "--by", "ops", "--", "--iters", "0")
    events = [json.loads(line) for line in out.splitlines()]
    # the training flags are refused before any dataset is built
    assert code == 1 and [e["event"] for e in events] == ["result"]
    assert events[-1]["outcome"] == "failed" and "TRAIN_ITERS" in events[-1]["message"]
