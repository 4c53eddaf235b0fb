"""The conversation store: its API, privacy guarantees, migrations and tolerance of bad rows."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from data import migrations
from data.store import MAX_CORRECTION_CHARS, CuratedExample, Store, StoreError

USER_A, USER_B, ADMIN = 101, 202, 999
META = dict(model_id="smollm2", adapter_version="a1", latency_s=0.25, prompt_tokens=12, completion_tokens=34)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "farense.db") as opened:
        yield opened


def ask(store: Store, user: int, question: str, answer: str = "An answer.", **extra) -> int:
    return store.log_message(user, user, question, answer, **{**META, **extra})


def test_logged_message_reads_back_with_all_fields(store):
    store.upsert_chat(USER_A, "private", "Ana")
    store.upsert_user(USER_A, "Ana", "pt-PT")
    message_id = ask(store, USER_A, "Quando foi fundado?", "Em 1910.", lang="pt")
    assert store.attach_telegram_id(message_id, 5555)
    logged = store.message(message_id)
    assert logged is not None
    assert (logged.id, logged.chat_id, logged.user_id) == (message_id, USER_A, USER_A)
    assert (logged.question, logged.answer, logged.lang) == ("Quando foi fundado?", "Em 1910.", "pt")
    assert (logged.model_id, logged.adapter_version, logged.latency_s) == ("smollm2", "a1", 0.25)
    assert (logged.prompt_tokens, logged.completion_tokens, logged.telegram_message_id) == (12, 34, 5555)
    assert store.message_by_telegram_id(USER_A, 5555) == logged
    assert store.message_by_telegram_id(USER_B, 5555) is None
    assert store.message(message_id + 1) is None
    assert not store.attach_telegram_id(message_id + 1, 1)


def test_upserts_update_in_place(store):
    store.upsert_user(USER_A, "Ana", "pt")
    store.upsert_user(USER_A, "Ana Sousa", "en")
    store.upsert_chat(-100, "group", "Adeptos")
    store.upsert_chat(-100, "supergroup", "Adeptos do Farense")
    store.log_message(-100, USER_B, "q", "a", **META)  # unknown user: registered, not lost
    assert store.counts() == {
        "users": 2,
        "chats": 1,
        "messages": 1,
        "feedback_up": 0,
        "feedback_down": 0,
        "corrections": 0,
        "opted_out": 0,
    }


def test_feedback_only_from_the_asker_and_revoting_replaces(store):
    message_id = ask(store, USER_A, "Who founded Farense?")
    assert not store.set_feedback(message_id, USER_B, 1)  # forged callback from another user
    assert not store.set_feedback(message_id + 7, USER_A, 1)  # no such message
    assert store.counts()["feedback_up"] == 0
    assert store.set_feedback(message_id, USER_A, 1)
    assert store.set_feedback(message_id, USER_A, -1)
    assert (store.counts()["feedback_up"], store.counts()["feedback_down"]) == (0, 1)
    for bad in (0, 2, True, "1"):
        with pytest.raises(ValueError, match="must be \\+1 or -1"):
            store.set_feedback(message_id, USER_A, bad)


def test_corrections_are_validated(store):
    message_id = ask(store, USER_A, "q?")
    assert store.add_correction(message_id, ADMIN, "  The right answer.  ") > 0
    with pytest.raises(ValueError, match="needs some text"):
        store.add_correction(message_id, ADMIN, "   ")
    with pytest.raises(ValueError, match=f"limited to {MAX_CORRECTION_CHARS} characters"):
        store.add_correction(message_id, ADMIN, "x" * (MAX_CORRECTION_CHARS + 1))
    with pytest.raises(ValueError, match="message 12345 does not exist"):
        store.add_correction(12345, ADMIN, "text")
    assert store.counts()["corrections"] == 1


def test_curated_examples_prefer_the_latest_correction_over_feedback(store):
    store.upsert_user(USER_A, "Ana", "pt-PT")
    liked = ask(store, USER_A, "Liked?", "Liked answer.")
    store.set_feedback(liked, USER_A, 1)
    disliked = ask(store, USER_A, "Disliked?", "Bad answer.")
    store.set_feedback(disliked, USER_A, -1)
    corrected = ask(store, USER_A, "Corrected?", "Wrong answer.", lang="en")
    store.set_feedback(corrected, USER_A, 1)
    store.add_correction(corrected, ADMIN, "First fix.")
    store.add_correction(corrected, ADMIN, "Second fix.")
    ask(store, USER_A, "Ignored?")
    examples = store.curated_examples()
    assert [(e.question, e.answer, e.source, e.message_id, e.lang) for e in examples] == [
        ("Liked?", "Liked answer.", "feedback", liked, "pt"),
        ("Corrected?", "Second fix.", "correction", corrected, "en"),
    ]
    assert all(isinstance(example, CuratedExample) and example.created_at for example in examples)


def test_opted_out_users_never_feed_training(store):
    a_message = ask(store, USER_A, "A asks?")
    store.set_feedback(a_message, USER_A, 1)
    b_message = ask(store, USER_B, "B asks?")
    store.set_feedback(b_message, USER_B, 1)
    store.add_correction(b_message, ADMIN, "Fixed for B.")
    assert not store.is_opted_out(USER_B)
    store.set_opt_out(USER_B, True)
    assert store.is_opted_out(USER_B)
    assert [e.question for e in store.curated_examples()] == ["A asks?"]
    assert store.withheld_opted_out() == 1
    assert store.counts()["opted_out"] == 1
    store.set_opt_out(USER_B, False)
    assert [e.source for e in store.curated_examples()] == ["feedback", "correction"]
    store.set_opt_out(777, True)  # a user never seen before is remembered too
    assert store.is_opted_out(777)


def test_forget_user_removes_everything_of_one_user_and_nothing_else(store):
    for user in (USER_A, USER_B):
        store.upsert_user(user, f"user {user}", "en")
        store.upsert_chat(user, "private", f"user {user}")
    store.upsert_chat(-5, "group", "Adeptos")
    a_private = ask(store, USER_A, "A private?")
    a_group = store.log_message(-5, USER_A, "A in group?", "a", **META)
    b_private = ask(store, USER_B, "B private?")
    b_group = store.log_message(-5, USER_B, "B in group?", "b", **META)
    store.set_feedback(a_private, USER_A, 1)
    store.set_feedback(b_private, USER_B, 1)
    store.add_correction(a_group, ADMIN, "fix A")
    store.add_correction(b_group, ADMIN, "fix B")
    store.add_correction(b_private, USER_A, "A acting as admin on B's message")
    store.log_admin_event(USER_A, "/retrain", False)
    store.log_admin_event(USER_B, "/status", False)
    before_b = (store.message(b_private), store.message(b_group))

    deleted = store.forget_user(USER_A)

    assert deleted == {"feedback": 1, "corrections": 2, "messages": 2, "chats": 1, "users": 1}
    assert store.message(a_private) is None and store.message(a_group) is None
    assert (store.message(b_private), store.message(b_group)) == before_b
    assert store.counts() == {
        "users": 1,
        "chats": 2,
        "messages": 2,
        "feedback_up": 1,
        "feedback_down": 0,
        "corrections": 1,
        "opted_out": 0,
    }
    assert [(e.question, e.answer) for e in store.curated_examples()] == [
        ("B private?", "An answer."),
        ("B in group?", "fix B"),
    ]
    raw = sqlite3.connect(store.path)
    for table, column in (
        ("messages", "user_id"),
        ("feedback", "user_id"),
        ("corrections", "admin_id"),
        ("users", "id"),
    ):
        assert raw.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (USER_A,)).fetchone() == (0,)
    # The audit keeps the refused attempt (id, command name, time: no text); the tombstone the id.
    assert raw.execute("SELECT user_id, command, allowed FROM admin_events ORDER BY id").fetchall() == [
        (USER_A, "/retrain", 0),
        (USER_B, "/status", 0),
    ]
    assert raw.execute("SELECT user_id FROM forgotten_users").fetchall() == [(USER_A,)]
    raw.close()
    assert store.forget_user(USER_A) == dict.fromkeys(deleted, 0)


def test_forget_leaves_no_text_in_the_database_file_or_its_wal(store):
    store.upsert_user(USER_A, "Ana", "pt")
    message = ask(store, USER_A, "Is zanzibarquux the mascot?", "No.")
    store.set_feedback(message, USER_A, 1)
    store.checkpoint()  # the text is now in the main file, and its pages must be wiped, not freed
    store.forget_user(USER_A)
    assert store.checkpoint()
    files = [store.path, store.path.with_name(store.path.name + "-wal")]
    assert not any(b"zanzibarquux" in path.read_bytes() for path in files if path.exists())
    assert store.path.with_name(store.path.name + "-wal").stat().st_size == 0


def test_an_answer_asked_before_the_forget_is_not_logged_after_it(store):
    from data.store import now

    asked_at = now()
    store.forget_user(USER_A)
    store.upsert_user(USER_A, "Ana", "pt", asked_at=asked_at)
    store.upsert_chat(USER_A, "private", None, user_id=USER_A, asked_at=asked_at)
    assert ask(store, USER_A, "In flight?", asked_at=asked_at) is None
    assert store.counts()["messages"] == store.counts()["users"] == store.counts()["chats"] == 0
    time.sleep(0.002)
    later = ask(store, USER_A, "Back again?", asked_at=now())  # a question after the forget is new
    assert store.message(later).question == "Back again?"


def test_tombstones_delete_rows_that_come_back_and_only_those(tmp_path):
    path = tmp_path / "farense.db"
    with Store(path) as store:
        old = ask(store, USER_A, "Before the forget?")
        store.set_feedback(old, USER_A, 1)
        raw = sqlite3.connect(path)
        rows = raw.execute("SELECT * FROM messages").fetchall()  # what an old backup still holds
        raw.close()
        store.forget_user(USER_A)
        time.sleep(0.002)
        after = ask(store, USER_A, "After the forget?")
        ask(store, USER_B, "Someone else?")
    raw = sqlite3.connect(path)  # an old backup's rows come back (say, by a restore)
    raw.executemany(f"INSERT INTO messages VALUES ({', '.join('?' * len(rows[0]))})", rows)
    raw.execute("INSERT INTO feedback VALUES (?, ?, 1, '2000-01-01T00:00:00.000+00:00')", (old, USER_A))
    raw.commit()
    raw.close()
    with Store(path, readonly=True) as store:  # not applied yet: the dataset query still skips them
        assert [e.question for e in store.curated_examples()] == []
        assert store.message(old) is not None
    with Store(path) as store:  # opening applies the tombstones
        assert store.message(old) is None
        assert store.message(after).question == "After the forget?"
        assert [e.question for e in store.curated_examples()] == []
        assert store.counts()["messages"] == 2


def test_opt_out_survives_forget(store):
    store.set_opt_out(USER_A, True)
    store.forget_user(USER_A)
    assert store.is_opted_out(USER_A)
    time.sleep(0.002)  # timestamps have milliseconds: a row of the forget's own millisecond counts as forgotten
    message = ask(store, USER_A, "Back, still opted out?")
    store.set_feedback(message, USER_A, 1)
    assert store.curated_examples() == [] and store.withheld_opted_out() == 1


def test_claim_job_once_per_period(store):
    assert store.claim_job("nightly-train", "2026-11-26")
    assert not store.claim_job("nightly-train", "2026-11-26")
    assert store.claim_job("nightly-train", "2026-11-27")
    assert store.claim_job("backup", "2026-11-26")


def test_admin_events_are_recorded(store, tmp_path):
    store.log_admin_event(USER_B, "/retrain", False)
    store.log_admin_event(ADMIN, "/retrain", True)
    raw = sqlite3.connect(tmp_path / "farense.db")
    rows = raw.execute("SELECT user_id, command, allowed FROM admin_events ORDER BY id").fetchall()
    raw.close()
    assert rows == [(USER_B, "/retrain", 0), (ADMIN, "/retrain", 1)]


def test_database_settings_are_durable(store):
    assert store._connection().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._connection().execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert store._connection().execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_reopening_is_idempotent_and_keeps_data(tmp_path):
    path = tmp_path / "farense.db"
    with Store(path) as first:
        message_id = ask(first, USER_A, "kept?")
    with Store(path) as second:
        assert second.message(message_id).question == "kept?"
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone() == (len(migrations.MIGRATIONS),)
    raw.close()


def test_new_migrations_run_once_on_an_existing_database(tmp_path, monkeypatch):
    path = tmp_path / "farense.db"
    with Store(path) as old:
        ask(old, USER_A, "before upgrade?")
    upgraded = [*migrations.MIGRATIONS, ("ALTER TABLE users ADD COLUMN nickname TEXT",)]
    monkeypatch.setattr("data.store.MIGRATIONS", upgraded)
    for _ in range(2):  # the ALTER would fail if it ran twice
        with Store(path) as new:
            assert new.counts()["messages"] == 1
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone() == (len(upgraded),)
    assert "nickname" in [row[1] for row in raw.execute("PRAGMA table_info(users)")]
    raw.close()


def test_a_read_only_open_writes_nothing(tmp_path):
    path = tmp_path / "farense.db"
    with pytest.raises(StoreError, match="no database"):
        Store(path, readonly=True)
    assert not path.exists()  # not even an empty file
    with Store(path) as writer:
        ask(writer, USER_A, "kept?")
        facts = writer.read("SELECT COUNT(*) FROM facts")[0][0]
    before = path.read_bytes()
    with Store(path, readonly=True) as reader:
        assert reader.counts()["messages"] == 1
        assert reader.read("SELECT COUNT(*) FROM facts")[0][0] == facts > 0  # seeded by the read-write open
        with pytest.raises(StoreError, match="read-only"):
            ask(reader, USER_A, "refused")
    assert path.read_bytes() == before  # (SQLite's -shm/-wal beside it are how WAL readers share)


def test_a_read_only_open_refuses_a_schema_it_would_have_to_migrate(tmp_path, monkeypatch):
    path = tmp_path / "farense.db"
    Store(path).close()
    monkeypatch.setattr("data.store.MIGRATIONS", [*migrations.MIGRATIONS, ("SELECT 1",)])
    with pytest.raises(StoreError, match="open it read-write once"):
        Store(path, readonly=True)


def test_a_database_newer_than_the_code_is_refused(tmp_path):
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(migrations.MIGRATIONS) + 5}")
    raw.close()
    with pytest.raises(StoreError, match=f"schema version {len(migrations.MIGRATIONS) + 5}, newer"):
        Store(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match=f"cannot open database {path}"):
        Store(path)


def test_closed_store_refuses_use(tmp_path):
    store = Store(tmp_path / "farense.db")
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.counts()


def test_corrupt_rows_are_reported_and_skipped(store, caplog):
    good = ask(store, USER_A, "Good?", "Good answer.")
    blob = ask(store, USER_A, "Blob?", "placeholder")
    bad_utf8 = ask(store, USER_A, "Bad UTF-8?", "placeholder")
    blank = ask(store, USER_A, "   ", "Blank question.")
    for message_id in (good, blob, bad_utf8, blank):
        store.set_feedback(message_id, USER_A, 1)
    raw = sqlite3.connect(store.path)
    raw.execute("UPDATE messages SET answer = x'00ff' WHERE id = ?", (blob,))
    raw.execute("UPDATE messages SET answer = CAST(x'c328' AS TEXT) WHERE id = ?", (bad_utf8,))
    raw.commit()
    raw.close()
    problems = []
    with caplog.at_level(logging.WARNING, logger="data.jsonl"):
        examples = store.curated_examples(problems)
    assert [example.message_id for example in examples] == [good]
    assert [(p.line, p.reason) for p in problems] == [
        (blob, "corrupt row: answer is b'\\x00\\xff'"),
        (bad_utf8, "corrupt row: answer is undecodable text"),
        (blank, "corrupt row: question is '   '"),
    ]
    assert all(p.file == f"{store.path}#messages" for p in problems)
    assert store.message(bad_utf8) is None
    assert store.message(good).answer == "Good answer."
    assert sum("corrupt row" in record.getMessage() for record in caplog.records) == 4
