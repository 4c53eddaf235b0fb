"""The knowledge base on the data side: seeding, admin changes, the index, versioning, the CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest

from data.__main__ import main as data_main
from data.builder import build_dataset
from data.knowledge import (
    ADMIN_SOURCE,
    PACKAGE_KNOWLEDGE_DIR,
    add_fact,
    amend_fact,
    get_fact,
    knowledge_hash,
    knowledge_stats,
    list_facts,
    load_seed_facts,
    remove_fact,
    seed_fact_questions,
    seed_knowledge,
    seed_synonyms,
)
from data.migrations import MIGRATIONS
from data.settings import DataSettings
from data.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "farense.db") as opened:
        yield opened


def seed_line(fact: int, lang: str, text: str, **extra) -> str:
    record = {"fact": fact, "lang": lang, "text": text, "source": "Test Source", "url": "https://example.org", **extra}
    return json.dumps(record, ensure_ascii=False)


def test_a_fresh_store_holds_every_seed_fact_in_both_languages(store):
    problems = []
    seed = load_seed_facts(PACKAGE_KNOWLEDGE_DIR, problems)
    assert problems == []
    stats = knowledge_stats(store)
    assert stats["by_origin_lang"] == {"seed/en": len(seed) // 2, "seed/pt": len(seed) // 2}
    assert {item.fact for item in seed if item.lang == "en"} == {item.fact for item in seed if item.lang == "pt"}
    assert all(item.source and item.url.startswith("http") for item in seed)
    # Facts marked uncertain in the research notes are left out.
    assert not {8, 34, 82, 86, 119} & {item.fact for item in seed}


def test_seeding_is_idempotent_across_reopening(tmp_path, store):
    before = knowledge_hash(store)
    assert seed_knowledge(store) == 0
    store.close()
    with Store(tmp_path / "farense.db") as again:
        assert knowledge_stats(again)["live"] == 230
        assert knowledge_hash(again) == before


def test_the_fact_questions_are_the_seed_qas_and_change_the_hash(tmp_path, store):
    """They decide what is retrieved, so the training prompts built from them: a dataset grounded
    with other questions must hash otherwise."""
    questions = set(store.read("SELECT fact, lang, question FROM fact_questions"))
    assert (9, "en", "Which ship brought football to Faro?") not in questions and len(questions) >= 600
    before = knowledge_hash(store)
    seed = tmp_path / "seed"
    seed.mkdir()
    line = {"id": "f009-en-1", "fact": 9, "lang": "en", "question": "Which ship brought football to Faro?"}
    (seed / "qa-009.jsonl").write_text(json.dumps(line | {"answer": "The fact's words."}) + "\n", encoding="utf-8")
    assert seed_fact_questions(store, seed) is True
    assert set(store.read("SELECT fact, lang, question FROM fact_questions")) == {(9, "en", line["question"])}
    assert knowledge_hash(store) != before
    assert seed_fact_questions(store) is True and knowledge_hash(store) == before


def test_add_amend_remove_are_searchable_at_once_and_change_the_hash(store):
    hashes = [knowledge_hash(store)]
    fact_id = add_fact(store, "O Farense estreou um equipamento cor-de-rosa em 2099.", "pt", author_id=5001)
    hashes.append(knowledge_hash(store))
    assert [row.id for row in list_facts(store, "cor-de-rosa")] == [fact_id]
    row = get_fact(store, fact_id)
    assert (row.origin, row.author_id, row.source, row.fact) == ("admin", 5001, ADMIN_SOURCE, None)

    amend_fact(store, fact_id, "O Farense estreou um equipamento dourado em 2099.", 5002)
    hashes.append(knowledge_hash(store))
    assert list_facts(store, "cor-de-rosa") == []
    assert [row.id for row in list_facts(store, "dourado")] == [fact_id]
    assert get_fact(store, fact_id).author_id == 5002

    assert remove_fact(store, fact_id, 5001) is True
    hashes.append(knowledge_hash(store))
    assert list_facts(store, "dourado") == []
    assert remove_fact(store, fact_id, 5001) is False
    assert list_facts(store, limit=1, include_removed=True)[0].removed_at is not None
    assert len(set(hashes)) == 3 and hashes[-1] == hashes[0]  # removal restores the original
    with pytest.raises(ValueError, match="does not exist or was removed"):
        amend_fact(store, fact_id, "again", 5001)


@pytest.mark.parametrize(
    "text, lang, message",
    [
        ("   ", "pt", "needs some text"),
        ("x" * 1001, "en", "limited to 1000"),
        ("Fine text.", "fr", "'lang' should be one of en, pt"),
    ],
)
def test_bad_admin_facts_are_refused(store, text, lang, message):
    with pytest.raises(ValueError, match=message):
        add_fact(store, text, lang)
    assert knowledge_stats(store)["live"] == 230


def test_admin_changes_to_seed_facts_survive_reseeding(store):
    founded = next(row for row in list_facts(store, "founded 1910") if row.fact == 2)
    amend_fact(store, founded.id, "Farense was founded on 1 April 1910 in Faro.", 7)
    colours = next(row for row in list_facts(store, "black white") if row.fact == 10)
    remove_fact(store, colours.id, 7)
    assert seed_knowledge(store) == 0
    assert get_fact(store, founded.id).text == "Farense was founded on 1 April 1910 in Faro."
    assert get_fact(store, colours.id).removed_at is not None


def test_an_edited_seed_file_updates_its_fact(tmp_path, store):
    folder = tmp_path / "knowledge"
    folder.mkdir()
    (folder / "facts.en.jsonl").write_text(seed_line(500, "en", "The old wording.") + "\n")
    assert seed_knowledge(store, folder) == 1
    (folder / "facts.en.jsonl").write_text(seed_line(500, "en", "The new wording.") + "\n")
    assert seed_knowledge(store, folder) == 1
    assert seed_knowledge(store, folder) == 0
    assert [row.text for row in list_facts(store, "wording")] == ["The new wording."]


def test_bad_seed_lines_are_reported_as_file_and_line_and_the_rest_is_imported(tmp_path, store):
    folder = tmp_path / "knowledge"
    folder.mkdir()
    lines = [
        seed_line(501, "en", "A good fact about goats."),
        '{"fact": 502, "lang": "en", "text": "broken"',
        seed_line(503, "xx", "Wrong language."),
        json.dumps({"fact": 504, "lang": "en", "text": "No source."}),
        seed_line(501, "en", "The same fact twice."),
        seed_line(505, "pt", "Um bom facto sobre cabras."),
    ]
    path = folder / "facts.test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    problems = []
    assert seed_knowledge(store, folder, problems) == 2
    assert [(problem.file, problem.line) for problem in problems] == [(str(path), n) for n in (2, 3, 4, 5)]
    assert "bad JSON" in problems[0].reason and "'lang'" in problems[1].reason
    assert "missing key 'source'" in problems[2].reason and "already given at" in problems[3].reason
    assert {row.fact for row in [*list_facts(store, "goats"), *list_facts(store, "cabras")]} == {501, 505}


def test_a_missing_seed_folder_is_reported_not_fatal(tmp_path, store):
    problems = []
    assert seed_knowledge(store, tmp_path / "nowhere", problems) == 0
    assert len(problems) == 1 and "no facts.*.jsonl file" in problems[0].reason


def test_an_existing_database_gains_the_knowledge_base(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO chats VALUES (1, 'private', NULL, 't', 't')")
    db.execute("INSERT INTO users VALUES (1, 'Ana', 'pt', 0, 't', 't')")
    db.execute(
        "INSERT INTO messages (chat_id, user_id, question, answer, created_at) VALUES (1, 1, 'Olá?', 'Olá!', 't')"
    )
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.message(1).question == "Olá?"
        assert knowledge_stats(store)["live"] == 230
        assert store.read("PRAGMA user_version")[0][0] == len(MIGRATIONS)


def test_the_dataset_manifest_records_the_knowledge_hash(store):
    result = build_dataset(DataSettings.load(), store=store)
    assert result.manifest["knowledge_hash"] == knowledge_hash(store)


def test_cli_adds_searches_removes_and_reports(capsys):
    assert (
        data_main(
            [
                "knowledge",
                "add",
                "Farense tem um golfinho como segunda mascote.",
                "--lang",
                "pt",
                "--source",
                "Teste",
                "--url",
                "https://example.org",
            ]
        )
        == 0
    )
    fact_id = int(capsys.readouterr().out.split()[-1])
    assert data_main(["knowledge", "search", "golfinho"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{fact_id} [pt admin] Farense tem um golfinho") and "Teste https://example.org" in out
    assert data_main(["knowledge", "remove", str(fact_id)]) == 0
    assert data_main(["knowledge", "remove", str(fact_id)]) == 1
    assert data_main(["knowledge", "stats", "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{") :])
    assert stats["live"] == 230 and stats["removed"] == 1
    assert data_main(["knowledge", "amend", "99999", "text"]) == 2
    assert "error: fact 99999 does not exist" in capsys.readouterr().err


def test_the_lexicon_is_seeded_folded_and_follows_its_files(tmp_path, store):
    rows = store.read("SELECT lang, word, means FROM synonyms")
    assert ("pt", "nasceu", "fundado") in rows and ("en", "born", "founded") in rows
    assert all(word == word.lower() and "ã" not in word for _, word, _ in rows)
    before = knowledge_hash(store)
    folder = tmp_path / "knowledge"
    folder.mkdir()
    (folder / "synonyms.pt.jsonl").write_text(
        json.dumps({"lang": "pt", "words": ["Guardião"], "means": ["guarda"]})
        + "\n"
        + json.dumps({"lang": "pt", "words": ["dois words"], "means": ["x"]})
        + "\n"
        + json.dumps({"lang": "fr", "words": ["gardien"], "means": ["guarda"]})
        + "\n"
    )
    problems = []
    assert seed_synonyms(store, folder, problems) is True
    assert store.read("SELECT lang, word, means FROM synonyms") == [("pt", "guardiao", "guarda")]
    assert [problem.line for problem in problems] == [2, 3]
    assert seed_synonyms(store, folder) is False  # unchanged: left alone
    assert knowledge_hash(store) != before  # what is retrieved changed
    assert seed_synonyms(store, tmp_path / "nowhere") is False  # no lexicon files: kept as is


def test_the_shipped_hash_follows_the_files_and_not_the_admins_edits(tmp_path, store):
    from data.knowledge import shipped_knowledge_hash

    shipped, live = shipped_knowledge_hash(store), knowledge_hash(store)
    fact_id = add_fact(store, "O Farense estreou um equipamento cor-de-rosa em 2099.", "pt", author_id=5001)
    amend_fact(store, list_facts(store, "1910")[0].id, "O Farense foi fundado a 1 de abril de 1910.", 5001)
    remove_fact(store, fact_id, 5001)
    assert knowledge_hash(store) != live and shipped_knowledge_hash(store) == shipped

    folder = tmp_path / "release"
    folder.mkdir()
    for path in PACKAGE_KNOWLEDGE_DIR.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    lines = (folder / "facts.en.jsonl").read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[-1]) | {"text": "A new release says this fact in other words, about Farense."}
    (folder / "facts.en.jsonl").write_text("\n".join([*lines[:-1], json.dumps(edited)]) + "\n", encoding="utf-8")
    assert seed_knowledge(store, folder) == 1
    assert shipped_knowledge_hash(store) != shipped
