"""The store under real concurrency: bot threads, a training process, and a killed writer."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from data.store import Store

ROOT = Path(__file__).resolve().parent.parent
META = dict(model_id="m", adapter_version=None, latency_s=0.1, prompt_tokens=1, completion_tokens=1)

# A separate writer process: opens the store, says "ready", waits for "go", then does its job.
WRITER = """
import sys
from data.store import Store
store = Store(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
mode = sys.argv[2]
if mode == "log":
    for i in range(int(sys.argv[3])):
        store.log_message(7, 7, f"process-{i}", "a", model_id="m", adapter_version=None,
                          latency_s=0.1, prompt_tokens=1, completion_tokens=1)
elif mode == "claim":
    print("claimed" if store.claim_job("nightly", "2026-11-26") else "refused", flush=True)
elif mode == "forever":
    i = 0
    while True:
        message_id = store.log_message(7, 7, f"crash-{i}", "a", model_id="m", adapter_version=None,
                                       latency_s=0.1, prompt_tokens=1, completion_tokens=1)
        print(message_id, i, flush=True)  # printed only after the commit returned
        i += 1
store.close()
"""


def start_writer(db: Path, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def go(process: subprocess.Popen) -> None:
    process.stdin.write("go\n")
    process.stdin.flush()


def test_threads_and_another_process_write_at_once_and_nothing_is_lost(tmp_path):
    db = tmp_path / "farense.db"
    store = Store(db)
    writer = start_writer(db, "log", "200")
    start = threading.Barrier(9)
    errors: list[BaseException] = []

    def bot_thread(number: int) -> None:
        start.wait()
        try:
            for i in range(50):
                store.log_message(number, number, f"thread-{number}-{i}", "a", **META)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=bot_thread, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    go(writer)
    start.wait()
    for thread in threads:
        thread.join()
    assert writer.wait() == 0
    assert errors == []
    raw = sqlite3.connect(db)
    questions = [row[0] for row in raw.execute("SELECT question FROM messages")]
    raw.close()
    expected = {f"thread-{n}-{i}" for n in range(8) for i in range(50)} | {f"process-{i}" for i in range(200)}
    assert len(questions) == 600
    assert set(questions) == expected
    store.close()


def test_asyncio_to_thread_callers_share_one_store(tmp_path):
    store = Store(tmp_path / "farense.db")

    async def many_users() -> list[int]:
        return await asyncio.gather(
            *(asyncio.to_thread(store.log_message, user, user, f"q{user}", "a", **META) for user in range(100))
        )

    ids = asyncio.run(many_users())
    assert len(set(ids)) == 100
    assert store.counts()["messages"] == 100 and store.counts()["users"] == 100
    store.close()


def test_only_one_process_claims_a_nightly_job(tmp_path):
    db = tmp_path / "farense.db"
    Store(db).close()
    writers = [start_writer(db, "claim") for _ in range(4)]
    for writer in writers:
        go(writer)
    outcomes = sorted(writer.communicate()[0].strip() for writer in writers)
    assert outcomes == ["claimed", "refused", "refused", "refused"]
    with Store(db) as store:
        assert not store.claim_job("nightly", "2026-11-26")


def test_a_killed_writer_loses_no_committed_message(tmp_path):
    db = tmp_path / "farense.db"
    writer = start_writer(db, "forever")
    go(writer)
    committed = {}
    for _ in range(40):
        message_id, number = writer.stdout.readline().split()
        committed[int(message_id)] = f"crash-{number}"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    writer.stdin.close()
    assert writer.returncode == -signal.SIGKILL

    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    raw.close()
    with Store(db) as store:
        for message_id, question in committed.items():
            assert store.message(message_id).question == question
        total = store.counts()["messages"]
        assert total >= len(committed)
        assert store.log_message(7, 7, "after the crash", "a", **META) > max(committed)


def test_a_write_waits_out_a_lock_held_beyond_busy_timeout(tmp_path, monkeypatch):
    """The retry loop, not only SQLite's busy timeout, gets a write through a long lock."""
    import data.store as store_module

    db = tmp_path / "farense.db"
    Store(db).close()
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 1)
    retried = threading.Event()
    real_sleep = store_module.time.sleep

    class RecordingTime:
        @staticmethod
        def sleep(seconds: float) -> None:
            retried.set()
            real_sleep(seconds)

    monkeypatch.setattr(store_module, "time", RecordingTime)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    results: list[str] = []

    def write() -> None:
        with Store(db) as store:
            message_id = store.log_message(1, 1, "through the lock", "a", **META)
            results.append(store.message(message_id).question)

    writer = threading.Thread(target=write)
    writer.start()
    assert retried.wait(timeout=60)
    blocker.execute("COMMIT")
    blocker.close()
    writer.join()
    assert results == ["through the lock"]
