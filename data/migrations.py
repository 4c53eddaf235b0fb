"""Schema migrations of the conversation store, applied in order at open.

The database records how many have run in `PRAGMA user_version`; a change to the schema is a new
entry appended here, never an edit of an old one, so every existing database can catch up.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE chats (
            id INTEGER PRIMARY KEY,
            type TEXT NOT NULL,
            title TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT,
            language TEXT,
            opted_out INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            chat_id INTEGER NOT NULL REFERENCES chats(id),
            user_id INTEGER NOT NULL REFERENCES users(id),
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            lang TEXT,
            created_at TEXT NOT NULL,
            model_id TEXT,
            adapter_version TEXT,
            latency_s REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            telegram_message_id INTEGER)""",
        "CREATE INDEX messages_by_user ON messages(user_id)",
        "CREATE INDEX messages_by_telegram_id ON messages(chat_id, telegram_message_id)",
        """CREATE TABLE feedback (
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            user_id INTEGER NOT NULL,
            value INTEGER NOT NULL CHECK (value IN (-1, 1)),
            created_at TEXT NOT NULL,
            PRIMARY KEY (message_id, user_id))""",
        "CREATE INDEX feedback_by_user ON feedback(user_id)",
        """CREATE TABLE corrections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            admin_id INTEGER NOT NULL,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        "CREATE INDEX corrections_by_message ON corrections(message_id)",
        """CREATE TABLE job_runs (
            name TEXT NOT NULL,
            period_key TEXT NOT NULL,
            started_at TEXT NOT NULL,
            PRIMARY KEY (name, period_key))""",
        """CREATE TABLE admin_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL,
            command TEXT NOT NULL,
            allowed INTEGER NOT NULL,
            created_at TEXT NOT NULL)""",
        "CREATE INDEX admin_events_by_user ON admin_events(user_id)",
    ),
    # 2: the knowledge base (data/knowledge.py), searched read-only by inference/grounding.py.
    # `facts_fts` indexes live facts only; the triggers keep it in step with every write, so an
    # admin's correction is searchable the moment it commits.
    (
        """CREATE TABLE facts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fact INTEGER,
            lang TEXT NOT NULL,
            text TEXT NOT NULL,
            source TEXT NOT NULL,
            url TEXT,
            origin TEXT NOT NULL CHECK (origin IN ('seed', 'admin')),
            author_id INTEGER,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            removed_at TEXT)""",
        "CREATE UNIQUE INDEX facts_by_seed_number ON facts(fact, lang) WHERE origin = 'seed'",
        """CREATE VIRTUAL TABLE facts_fts USING fts5(
            text, content='facts', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2')""",
        """CREATE TRIGGER facts_fts_insert AFTER INSERT ON facts WHEN new.removed_at IS NULL BEGIN
            INSERT INTO facts_fts (rowid, text) VALUES (new.id, new.text);
        END""",
        # One trigger, so the old text is always unindexed before the new one is indexed.
        """CREATE TRIGGER facts_fts_update AFTER UPDATE ON facts BEGIN
            INSERT INTO facts_fts (facts_fts, rowid, text)
                SELECT 'delete', old.id, old.text WHERE old.removed_at IS NULL;
            INSERT INTO facts_fts (rowid, text) SELECT new.id, new.text WHERE new.removed_at IS NULL;
        END""",
        """CREATE TRIGGER facts_fts_delete AFTER DELETE ON facts WHEN old.removed_at IS NULL BEGIN
            INSERT INTO facts_fts (facts_fts, rowid, text) VALUES ('delete', old.id, old.text);
        END""",
    ),
    # 3: `facts_fts` indexes the words as written (folded), without porter: porter is English-only
    # ("fundou" never met "fundado"), so inference/retrieval.py stems the question itself (Snowball,
    # EN or PT) into prefix queries. The triggers of migration 2 keep serving the new table; only
    # live facts are put back in.
    (
        "DROP TABLE facts_fts",
        """CREATE VIRTUAL TABLE facts_fts USING fts5(
            text, content='facts', content_rowid='id', tokenize='unicode61 remove_diacritics 2')""",
        "INSERT INTO facts_fts (rowid, text) SELECT id, text FROM facts WHERE removed_at IS NULL",
    ),
    # 4: the retrieval lexicon, read by inference/retrieval.py and seeded from data/knowledge/:
    # `synonyms`, words fans use for what the facts say otherwise ("born" for "founded", "mister"
    # for "treinador"), per language (synonyms.*.jsonl); `other_subjects`, words naming another
    # club or competition (other_subjects.jsonl), which alone never make a fact relevant.
    # Words are stored folded.
    (
        """CREATE TABLE synonyms (
            lang TEXT NOT NULL,
            word TEXT NOT NULL,
            means TEXT NOT NULL,
            PRIMARY KEY (lang, word, means)) WITHOUT ROWID""",
        "CREATE TABLE other_subjects (word TEXT PRIMARY KEY) WITHOUT ROWID",
    ),
    # 5: a forget that holds. `forgotten_users` is the tombstone of each /forget (the user id and
    # when, nothing else): the user's rows from before then are deleted wherever they come back (a
    # restored backup, an upgrade) and kept out of every dataset. `opt_outs` takes the opt-out flag
    # off the user row, which /forget deletes, so forgetting does not undo /optout.
    (
        """CREATE TABLE forgotten_users (
            user_id INTEGER PRIMARY KEY,
            forgotten_at TEXT NOT NULL)""",
        """CREATE TABLE opt_outs (
            user_id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL)""",
        "INSERT INTO opt_outs (user_id, created_at) SELECT id, updated_at FROM users WHERE opted_out = 1",
        "ALTER TABLE users DROP COLUMN opted_out",
    ),
    # 6: facts keep their history and say where they came from. `facts` holds each fact's current
    # revision (what retrieval reads); `fact_revisions` every revision, the current one included,
    # so an amendment never loses the words it replaced and an admin can restore them.
    # `source_message_id`: the logged answer an admin's correction was made on (an id, no text).
    (
        "ALTER TABLE facts ADD COLUMN revision INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE facts ADD COLUMN source_message_id INTEGER",
        """CREATE TABLE fact_revisions (
            fact_id INTEGER NOT NULL REFERENCES facts(id),
            revision INTEGER NOT NULL,
            text TEXT NOT NULL,
            source TEXT NOT NULL,
            url TEXT,
            author_id INTEGER,
            source_message_id INTEGER,
            created_at TEXT NOT NULL,
            PRIMARY KEY (fact_id, revision)) WITHOUT ROWID""",
        "INSERT INTO fact_revisions (fact_id, revision, text, source, url, author_id, created_at)"
        " SELECT id, 1, text, source, url, author_id, updated_at FROM facts",
    ),
    # 7: questions a seed fact answers, as retrieval keys (inference/retrieval.py): fans ask in
    # question words ("Who do the fans hate most?") that a fact's statement does not use ("rival").
    # Seeded from the seed QA questions (data/seed/qa-*.jsonl) by fact number and language; never
    # shown to the model. Its own FTS5 table: rows are replaced whole at each seeding.
    (
        """CREATE VIRTUAL TABLE fact_questions USING fts5(
            question, fact UNINDEXED, lang UNINDEXED, tokenize='unicode61 remove_diacritics 2')""",
    ),
]
