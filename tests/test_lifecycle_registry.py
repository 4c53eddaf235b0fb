"""The adapter registry: numbering, the atomic production pointer, promote/rollback/history, pruning,
and corrupt adapters that must never be registered or served."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from inference.adapters import AdapterError, read_production
from training import runs
from training.lifecycle.registry import CANDIDATE, PRODUCTION, RETIRED, Registry, RegistryError

from .models import legacy_adapter, make_adapter, make_tiny_model

MANIFEST = {
    "content_hash": "abc123",
    "created_at": "2026-01-01T00:00:00+00:00",
    "splits": {"train": {"count": 40}, "valid": {"count": 5}, "test": {"count": 5}},
    "sources": {"seed": 50},
}


@pytest.fixture
def registry(isolated_env, tiny_model_dir) -> Registry:
    return Registry(isolated_env, keep=10, base_model=tiny_model_dir)


@pytest.fixture
def adapter(tiny_model_dir, tmp_path) -> Path:
    return make_adapter(tiny_model_dir, tmp_path / "adapter", rank=4, num_layers=2)


def only_versions(registry: Registry) -> list[str]:
    """Every entry of adapters/ except the pointer, the history and the lock: versions, or debris."""
    if not registry.root.is_dir():
        return []
    return sorted(
        p.name for p in registry.root.iterdir() if p.name not in ("production.json", "history.jsonl", ".lock")
    )


def test_candidates_are_numbered_with_their_record(registry, adapter, tmp_path):
    run = tmp_path / "runs" / "20260101-000000-abcd"
    first = registry.add_candidate(adapter, run_dir=run, manifest=MANIFEST, metrics={"best_val_loss": 1.5})
    second = registry.add_candidate(adapter)
    assert [first.version, second.version] == ["v0001", "v0002"]
    assert first.status == CANDIDATE and first.run_id == "20260101-000000-abcd"
    assert first.dataset["content_hash"] == "abc123" and first.dataset["counts"]["train"] == 40
    assert first.metrics == {"best_val_loss": 1.5} and first.gate is None and first.created_at
    assert sorted(p.name for p in first.path.iterdir()) == [
        "adapter_config.json",
        "adapters.safetensors",
        "version.json",
    ]
    assert registry.get("1") == registry.get("v0001") == first
    assert registry.production() is None and registry.history() == []
    with pytest.raises(RegistryError, match="no adapter version v0007"):
        registry.get("7")


def test_promote_and_rollback_switch_the_pointer_and_keep_history(registry, adapter):
    v1, v2, v3 = (registry.add_candidate(adapter).version for _ in range(3))
    registry.promote(v1, by="alice", reason="first")
    registry.promote(v2, by="bob", reason="better")
    assert read_production(registry.home) == ("v0002", registry.root / "v0002")
    assert registry.production().status == PRODUCTION and registry.get(v1).status == RETIRED
    assert registry.previous_production().version == v1
    with pytest.raises(RegistryError, match="already in production"):
        registry.promote(v2, by="bob", reason="again")

    assert registry.rollback(by="carol", reason="answers got worse").version == v1
    assert read_production(registry.home)[0] == v1 and registry.get(v2).status == RETIRED
    assert registry.get(v2).record["rolled_back_by"] == "carol"
    assert registry.rollback(by="carol", reason="back to basics") is None  # nothing older: the base model
    assert read_production(registry.home) is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(by="carol", reason="again")

    history = registry.history()
    assert [(h["action"], h["version"], h["from"], h["by"]) for h in history] == [
        ("promote", v1, None, "alice"),
        ("promote", v2, v1, "bob"),
        ("rollback", v1, v2, "carol"),
        ("rollback", None, v1, "carol"),
    ]
    assert all(h["at"] and h["reason"] for h in history) and registry.get(v3).status == CANDIDATE


def test_pointer_is_replaced_atomically(registry, adapter, monkeypatch):
    v1, v2 = (registry.add_candidate(adapter).version for _ in range(2))
    registry.promote(v1, by="alice", reason="first")
    before = (registry.root / "production.json").read_text()

    def crash(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", crash)  # the crash lands between the temp file and the rename
    with pytest.raises(OSError, match="disk full"):
        registry.promote(v2, by="bob", reason="second")
    monkeypatch.undo()
    assert (registry.root / "production.json").read_text() == before
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".production.json")]
    assert registry.production().version == v1 and registry.get(v2).status == CANDIDATE


def test_pruning_keeps_newest_and_never_production_or_previous(isolated_env, tiny_model_dir, adapter):
    registry = Registry(isolated_env, keep=2, base_model=tiny_model_dir)
    registry.promote(registry.add_candidate(adapter).version, by="a", reason="1")
    registry.promote(registry.add_candidate(adapter).version, by="a", reason="2")
    for _ in range(3):
        registry.add_candidate(adapter)
    assert [v.version for v in registry.versions()] == ["v0001", "v0002", "v0004", "v0005"]
    assert only_versions(registry) == ["v0001", "v0002", "v0004", "v0005"]  # no half-deleted leftovers
    registry.promote("v0005", by="a", reason="3")  # v0001 is no longer the previous one: pruned
    assert [v.version for v in registry.versions()] == ["v0002", "v0004", "v0005"]
    assert registry.rollback(by="a", reason="undo").version == "v0002"


def test_concurrent_adds_get_distinct_numbers(registry, adapter):
    added: list[str] = []
    threads = [threading.Thread(target=lambda: added.append(registry.add_candidate(adapter).version)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(added) == ["v0001", "v0002", "v0003", "v0004"]


def test_truncated_weights_are_never_registered(registry, adapter):
    weights = adapter / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterError, match="truncated"):
        registry.add_candidate(adapter)
    assert registry.versions() == [] and only_versions(registry) == []


def test_bad_config_is_never_registered(registry, adapter):
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        registry.add_candidate(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"num_layers": 2}))
    with pytest.raises(AdapterError, match="lacks a valid"):
        registry.add_candidate(adapter)
    assert registry.versions() == []


def test_adapter_for_another_model_is_never_registered(registry, tiny_model_dir, tmp_path):
    other = make_tiny_model(tmp_path / "wider", tiny_model_dir, hidden=32, heads=2, kv_heads=1)
    with pytest.raises(AdapterError, match="does not fit the base model: shape mismatch"):
        registry.add_candidate(make_adapter(other, tmp_path / "wrong", rank=4, num_layers=2))
    with pytest.raises(AdapterError, match="wants LoRA on 5 layers"):
        registry.add_candidate(
            make_adapter(
                make_tiny_model(tmp_path / "deep", tiny_model_dir, layers=5), tmp_path / "deep-adapter", num_layers=5
            )
        )
    assert registry.versions() == []


def test_damaged_registered_adapter_is_never_promoted(registry, adapter):
    v1, v2 = (registry.add_candidate(adapter).version for _ in range(2))
    registry.promote(v1, by="alice", reason="first")
    weights = registry.root / v2 / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterError, match="changed since it was registered"):
        registry.promote(v2, by="bob", reason="second")
    assert registry.production().version == v1 and read_production(registry.home)[0] == v1
    assert [h["version"] for h in registry.history()] == [v1]


def test_rollback_skips_a_damaged_previous_version(registry, adapter):
    v1, v2 = (registry.add_candidate(adapter).version for _ in range(2))
    registry.promote(v1, by="a", reason="1")
    registry.promote(v2, by="a", reason="2")
    (registry.root / v1 / "adapter_config.json").write_text("{}")
    assert registry.rollback(by="a", reason="undo") is None  # to the base model, not to a broken v0001
    assert "skipped v0001" in registry.history()[-1]["reason"]


def test_a_layout_migration_killed_midway_is_finished_or_undone(isolated_env, tiny_pair, tmp_path, monkeypatch):
    old, twin = tiny_pair
    trained = Registry(isolated_env, base_model=old)  # registered before the model changed layout
    for seed in (1, 2):
        trained.add_candidate(legacy_adapter(old, tmp_path / f"adapter-{seed}", seed=seed))
    trained.promote("v0001", by="test", reason="test")
    registry = Registry(isolated_env, base_model=twin)
    assert [entry.version for entry in registry.layout_migrations()] == ["v0001", "v0002"]
    with pytest.raises(AdapterError, match="interleaved Q/K layout"):
        registry.verify("v0001")  # never served in the wrong layout

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # killed after version.json recorded the new files, before they replaced the old ones
    monkeypatch.setattr(Registry, "_finish_migrations", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.migrate_layouts()
    monkeypatch.undo()
    with pytest.raises(AdapterError, match="changed since it was registered"):
        registry.verify("v0001")
    fixed = Registry(isolated_env, base_model=twin).repair()
    assert any("v0001/adapters.safetensors: the migrated file" in line for line in fixed), fixed
    registry.verify("v0001")
    assert [entry.version for entry in registry.layout_migrations()] == ["v0002"]

    # killed before version.json recorded them
    monkeypatch.setattr(Registry, "_update", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.migrate_layouts()
    monkeypatch.undo()
    fixed = Registry(isolated_env, base_model=twin).repair()
    assert any(line.startswith("v0002/.adapters.safetensors.migrated: removed") for line in fixed), fixed
    trained.verify("v0002")  # still the adapter as trained
    assert registry.migrate_layouts() == ["v0002: migrated from interleaved to hf Q/K layout for tiny-c2"]
    assert registry.layout_migrations() == [] and registry.migrate_layouts() == []
    registry.verify("v0002")
    record = registry.get("v0002").record
    assert [(m["from"], m["to"], m["base_model"]) for m in record["layout_migrations"]] == [
        ("interleaved", "hf", "tiny-c2")
    ]
    assert record["layout_migrations"][0]["files_before"] != record["files"]
    assert sorted(p.name for p in registry.get("v0002").path.iterdir()) == [
        "adapter_config.json",
        "adapters.safetensors",
        "version.json",
    ]
