"""common/: the paths under FARENSE_HOME, durable files and locks, the settings base; and the
import contract that makes it a leaf (inference and data may use it, and nothing else of ours)."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import BotSettings
from common.files import LockBusy, acquire_lock, file_lock, is_locked, replace_dir, sha256_file, write_atomic
from common.home import Home
from data.settings import DataSettings
from inference.settings import InferenceSettings

REPO = Path(__file__).resolve().parents[1]
OURS = {"bot", "training", "inference", "data", "common"}
ALLOWED = {"common": set(), "inference": {"common"}, "data": {"common"}}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Our top-level packages each module of `package` imports (at any depth in the module)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = (names & OURS) - {package}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_common_is_a_leaf_and_inference_and_data_import_only_it(package):
    wrong = {
        module: sorted(names - ALLOWED[package])
        for module, names in imported_packages(package).items()
        if names - ALLOWED[package]
    }
    assert not wrong


def test_every_settings_class_sees_the_same_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FARENSE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "elsewhere.db"))
    monkeypatch.setenv("BACKUPS_DIR", "")  # empty = the default under FARENSE_HOME
    homes = {cls.load().home for cls in (InferenceSettings, DataSettings, BotSettings)}
    assert len(homes) == 1
    home = homes.pop()
    assert home.database == tmp_path / "elsewhere.db"
    assert home.backups == tmp_path / "h" / "backups"
    assert home.production_pointer == tmp_path / "h" / "adapters" / "production.json"
    assert set(home.live_locks()) == {home.bot_lock, home.pipeline_lock, home.runs_lock, home.adapters_lock}


def test_write_atomic_replaces_whole_files(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    target = folder / "pointer.json"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two" and oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in folder.iterdir()] == ["pointer.json"]  # no temporary left behind
    assert sha256_file(target) == hashlib.sha256(b"two").hexdigest()


def test_replace_dir_swaps_a_folder_in_one_rename(tmp_path):
    tmp_path = tmp_path / "r"
    tmp_path.mkdir()
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "old").write_text("old")
    (tmp_path / "staging" / "new").mkdir(parents=True)
    replace_dir(tmp_path / "staging" / "new", tmp_path / "live")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "staging"]
    assert list((tmp_path / "live").iterdir()) == []


def test_a_lock_held_by_another_process_is_busy(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from common.files import acquire_lock;"
            f" h = acquire_lock({str(lock)!r}, shared=True); print('held', flush=True);"
            " sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(lock)
        with pytest.raises(LockBusy):
            acquire_lock(lock, timeout=0.3)
        with file_lock(lock, shared=True):  # shared locks do not stop each other
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not is_locked(lock)
    assert Home(tmp_path).bot_lock == tmp_path / "bot.lock"


def test_protect_tightens_the_homes_parts_and_nothing_else(tmp_path):
    import os
    import stat

    home = Home(tmp_path / "h")
    for path in (
        home.database,
        home.logs / "bot.log",
        home.datasets / "d" / "train.jsonl",
        home.root / "notes-of-the-owner.txt",
        home.models / "m" / "config.json",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        path.chmod(0o644)
    for folder in (home.root, home.logs, home.datasets, home.datasets / "d", home.models):
        folder.chmod(0o755)
    before = os.umask(0o022)
    try:
        home.protect()
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(before)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert [
        mode(p)
        for p in (
            home.root,
            home.database,
            home.logs,
            home.logs / "bot.log",
            home.datasets,
            home.datasets / "d",
            home.datasets / "d" / "train.jsonl",
        )
    ] == [0o700, 0o600, 0o700, 0o600, 0o700, 0o700, 0o600]
    assert mode(home.root / "notes-of-the-owner.txt") == 0o644 and mode(home.models) == 0o755
