"""A /forget that holds, through the real Application and the real CLIs.

The fan's text must be gone from every file under FARENSE_HOME after /forget (database, WAL, logs,
built and grounded datasets), and stay gone after restoring a backup taken before the forget; an
answer in flight when the fan forgets is not stored; /optout and the admin audit survive.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from .helpers import BOT_ADMIN

FAN = 4242
WORD = "zorblaxian"  # in no seed, fact or model: only the fan's question holds it
QUESTION = f"Was the {WORD} ever the mascot of SC Farense?"


def run_cli(package: str, *argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", package, *argv], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def files_holding(root: Path, word: str) -> list[Path]:
    """`grep -rl word root`, in Python: every file whose bytes hold the word."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and word.encode() in path.read_bytes()
    )


def rated_up(bot, question: str) -> int:
    """Ask, tap 👍; returns the store's message id."""
    final = bot.ask(FAN, FAN, question, language_code="en")
    up = final.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    since = len(bot.server.calls())
    bot.server.push_callback_query(FAN, FAN, final.response["result"]["message_id"], up)
    assert bot.server.wait_for("answerCallbackQuery", since=since).ok
    bot.settle()
    return int(up.split(":")[1])


def forget(bot) -> str:
    since = len(bot.server.calls())
    bot.server.push_message(FAN, FAN, "/forget", language_code="en")
    reply = bot.server.wait_for(
        lambda c: c.method == "sendMessage" and "Deleted" in c.params.get("text", ""), 60, since
    ).params["text"]
    bot.settle()
    return reply


def test_forget_leaves_no_trace_under_the_home_even_after_restoring_an_older_backup(start_bot, isolated_env):
    home = isolated_env
    bot = start_bot()
    rated_up(bot, QUESTION)
    dataset = Path(run_cli("data", "build").stdout.splitlines()[0].removeprefix("dataset: "))
    grounded = Path(run_cli("training", "ground", str(dataset)).stdout.splitlines()[0])
    backup = Path(run_cli("data", "backup").stdout.splitlines()[0].removeprefix("backup: "))
    assert files_holding(home, WORD)  # the database, the dataset, its grounded copy

    reply = forget(bot)

    assert "questions and answers: 1" in reply and "training datasets: 1" in reply
    assert files_holding(home, WORD) == []
    assert not dataset.exists() and not grounded.exists() and not (home / "datasets" / "latest").exists()
    bot.stop()
    restored = run_cli("data", "restore", str(backup))
    assert "deleted again: 1 feedback, 1 messages" in restored.stdout
    assert files_holding(home, WORD) == []
    db = sqlite3.connect(home / "farense.db")
    assert db.execute("SELECT COUNT(*) FROM messages WHERE user_id = ?", (FAN,)).fetchone() == (0,)
    assert db.execute("SELECT user_id FROM forgotten_users").fetchall() == [(FAN,)]
    db.close()
    assert "feedback 0" in run_cli("data", "build").stdout
    assert files_holding(home, WORD) == []


def test_forget_while_the_answer_is_generated_stores_nothing_and_replies_after_it(start_bot):
    bot = start_bot()
    generating, release = threading.Event(), threading.Event()
    stream = bot.engine.stream

    def slow_stream(*args, **kwargs):
        generating.set()
        release.wait(30)
        yield from stream(*args, **kwargs)

    bot.engine.stream = slow_stream
    since = len(bot.server.calls())
    bot.server.push_message(FAN, FAN, "Quando foi fundado o Farense?")  # answered by the model
    assert generating.wait(60), "the answer never started"
    bot.server.push_message(FAN, FAN, "/forget")
    threading.Timer(1.0, release.set).start()  # the forget is handled while the answer is generated
    forgot = bot.server.wait_for(
        lambda c: c.method == "sendMessage" and "guardado sobre si" in c.params.get("text", ""), 60, since
    )
    bot.settle()

    calls = bot.server.calls()[since:]
    answer = [
        c
        for c in calls
        if c.method in ("sendMessage", "editMessageText") and c.params.get("chat_id") == FAN and c is not forgot
    ][-1]
    assert calls.index(answer) < calls.index(forgot), "the reply to /forget came before the answer"
    assert "reply_markup" not in answer.params  # nothing stored, nothing to rate
    counts = bot.store.counts()
    assert (counts["messages"], counts["users"], counts["chats"]) == (0, 0, 0)


def test_optout_and_the_refused_admin_attempts_survive_forget(start_bot):
    bot = start_bot()
    for command in ("/optout", "/status"):
        since = len(bot.server.calls())
        bot.server.push_message(FAN, FAN, command, language_code="en")
        assert bot.server.wait_for("sendMessage", since=since).ok
        bot.settle()
    rated_up(bot, "Quando foi fundado o Farense?")

    forget(bot)

    assert bot.store.is_opted_out(FAN)
    db = sqlite3.connect(bot.store.path)
    assert db.execute("SELECT user_id, command, allowed FROM admin_events").fetchall() == [(FAN, "status", 0)]
    db.close()
    rated_up(bot, "Qual é o estádio do Farense?")  # back after the forget, still opted out
    assert bot.store.curated_examples() == [] and bot.store.withheld_opted_out() == 1


# -- point 13: the home is the owner's alone ---------------------------------------------------------


def test_every_entry_point_keeps_the_home_for_its_owner(isolated_env):
    from data.store import Store

    home = isolated_env
    with Store(home / "farense.db") as store:
        store.log_message(
            FAN,
            FAN,
            QUESTION,
            "No.",
            model_id=None,
            adapter_version=None,
            latency_s=None,
            prompt_tokens=None,
            completion_tokens=None,
        )
    run_cli("data", "build")
    (home / "logs").mkdir()
    (home / "logs" / "bot.log").write_text("a fan's question\n")
    loose = [home / "farense.db", home / "logs" / "bot.log", *(home / "datasets").rglob("*")]
    for path in [*loose, home / "logs", home / "datasets"]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # as an older version left them
    run_cli("data", "stats")
    run_cli("data", "build")
    everything = [path for path in home.rglob("*") if "models" not in path.parts]
    assert everything and all(path.stat().st_mode & 0o077 == 0 for path in everything), [
        (str(path), oct(path.stat().st_mode)) for path in everything if path.stat().st_mode & 0o077
    ]


# -- point 14: bounded disk ------------------------------------------------------------------------


def test_retention_keeps_the_newest_runs_datasets_and_backups_and_rotates_the_service_log(isolated_env, monkeypatch):
    from common.home import Home
    from data.backup import NAME, list_backups

    from .helpers import simulate_nights

    home = Home(isolated_env)
    simulate_nights(isolated_env, 30, scale=0.01, log_bytes_per_night=50_000)
    before = home.disk_use()
    for name, value in {
        "KEEP_RUNS": "4",
        "KEEP_DATASETS": "3",
        "BACKUP_MAX_AGE_DAYS": "14",
        "LOG_MAX_MB": "1",
        "LOG_BACKUPS": "2",
    }.items():
        monkeypatch.setenv(name, value)

    result = run_cli("bot", "retention")

    after = home.disk_use()
    runs = sorted(path for path in home.runs.iterdir() if path.is_dir())
    assert [path.name[-3:] for path in runs] == ["026", "027", "028", "029"]
    assert all(not any((run / "checkpoints").iterdir()) and (run / "adapters" / "best").is_dir() for run in runs)
    datasets = sorted(path.name for path in home.datasets.iterdir() if path.is_dir())
    # The newest 3, and the one the oldest kept run validates on (the gate reads it again, from the warm
    # start's copy); each with its grounded and warm copies.
    assert [name[-3:] for name in datasets] == [night for night in ("026", "027", "028", "029") for _ in range(3)]
    kept = [NAME.match(path.name)["label"] for path in list_backups(home.backups)]
    assert kept == ["manual"] + ["nightly"] * 7  # manual ones of nights 0 and 10 were over 14 days old
    assert (home.logs / "service.log").stat().st_size == 0 and (home.logs / "service.log.1").stat().st_size == 1_500_000
    assert after["runs"] < before["runs"] / 10 and after["datasets"] < before["datasets"] / 5
    assert "Retention: deleted" in result.stdout and "Disk use: database" in result.stdout


def test_retention_keeps_the_production_adapters_run_however_old(isolated_env, tiny_model_dir, monkeypatch):
    from common.home import Home
    from training.lifecycle.registry import Registry

    from .helpers import simulate_nights
    from .models import make_adapter

    home = Home(isolated_env)
    simulate_nights(isolated_env, 8, scale=0.01)
    oldest = min(path for path in home.runs.iterdir() if path.is_dir())
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    production = registry.add_candidate(make_adapter(tiny_model_dir, isolated_env / "made"), run_dir=oldest)
    registry.promote(production.version, by="test", reason="trained on the oldest night")
    monkeypatch.setenv("KEEP_RUNS", "2")
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))

    run_cli("bot", "retention")

    runs = sorted(path.name for path in home.runs.iterdir() if path.is_dir())
    newest = sorted(runs)[-2:]
    assert runs == sorted([oldest.name, *newest]) and len(set(runs)) == 3
    assert not any((oldest / "checkpoints").iterdir())  # its checkpoints go like any ended run's


def test_status_and_doctor_show_the_disk_use_of_the_home_by_part(start_bot):
    bot = start_bot()
    since = len(bot.server.calls())
    bot.server.push_message(BOT_ADMIN, BOT_ADMIN, "/status", language_code="en")
    status = bot.server.wait_for("sendMessage", since=since).params["text"]
    bot.settle()
    disk = next(line for line in status.splitlines() if line.startswith("Disk: "))
    assert all(
        part in disk for part in ("database", "models", "adapters", "runs", "datasets", "backups", "logs", "total")
    )
    doctor = subprocess.run(
        [sys.executable, "-m", "bot", "doctor", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert "FARENSE_HOME uses database" in doctor.stdout, doctor.stdout + doctor.stderr


def test_the_nightly_job_applies_retention_and_reports_it(isolated_env, tiny_model_dir, monkeypatch):
    import asyncio
    import functools
    from datetime import datetime

    from bot.retention import retention_report
    from bot.retraining import Retrainer, nightly_retrain
    from bot.settings import BotSettings
    from data.settings import DataSettings
    from data.store import Store
    from inference.engine import Engine
    from inference.settings import InferenceSettings

    from .helpers import simulate_nights

    simulate_nights(isolated_env, 4, scale=0.001, log_bytes_per_night=10)
    monkeypatch.setenv("KEEP_RUNS", "2")
    engine = Engine(InferenceSettings.load(model_path=str(tiny_model_dir)))
    retrainer = Retrainer(engine)
    retrainer._lock.acquire()  # a run is going on: the nightly job gets "busy" without training
    reports = []

    async def notify(report) -> None:
        reports.append(report("en"))

    try:
        with Store(isolated_env / "farense.db") as store:
            asyncio.run(
                nightly_retrain(
                    retrainer,
                    store,
                    datetime(2025, 5, 1, 3),
                    notify,
                    functools.partial(retention_report, DataSettings.load(), BotSettings.load()),
                )
            )
    finally:
        retrainer._lock.release()
        engine.close()
    assert len([path for path in (isolated_env / "runs").iterdir() if path.is_dir()]) == 2
    assert "Retention: deleted 2 runs, 2 checkpoint folders" in reports[0]


def test_the_privacy_notice_states_the_backup_window(start_bot, monkeypatch):
    monkeypatch.setenv("BACKUP_MAX_AGE_DAYS", "21")
    bot = start_bot()
    for language, expected in (("en", "deleted within 21 days"), ("pt", "apagadas em 21 dias")):
        since = len(bot.server.calls())
        bot.server.push_message(FAN, FAN, "/help", language_code=language)
        assert expected in bot.server.wait_for("sendMessage", since=since).params["text"]
        bot.settle()
