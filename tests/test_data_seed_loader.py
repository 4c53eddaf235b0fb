"""Loading seed files: each bad line is reported as file:line, and cross-file rules are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.seed import EvalItem, QAPair, SeedError, load_conversations, load_eval, load_seed


def write(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def qa(id: str, fact: int | None, lang: str, question: str, answer: str = "A.", **extra) -> dict:
    return {"id": id, "fact": fact, "lang": lang, "question": question, "answer": answer, **extra}


def good_seed(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    write(
        folder / "qa-01.jsonl",
        qa("f001-en-1", 1, "en", "When was SC Farense founded?", "On 1 April 1910."),
        qa("f001-pt-1", 1, "pt", "Quando foi fundado o SC Farense?", "A 1 de abril de 1910."),
        qa("d-en-1", None, "en", "Who will win the election?", "I only know about Farense.", kind="decline"),
    )
    write(
        folder / "eval-01.jsonl",
        {
            "id": "e001-en",
            "fact": 1,
            "lang": "en",
            "question": "In which year was Farense born?",
            "key_facts": [["1910"]],
        },
        {
            "id": "e001-pt",
            "fact": 1,
            "lang": "pt",
            "question": "Em que ano nasceu o Farense?",
            "key_facts": [["1910"], ["abril", "april"]],
        },
    )
    write(
        folder / "out_of_domain.jsonl",
        {"id": "ood-en-1", "lang": "en", "question": "Bake me a cake recipe", "expected": "decline"},
        {"id": "ood-pt-1", "lang": "pt", "question": "Qual é a capital de França?", "expected": "decline"},
    )
    return folder


def test_a_good_seed_loads_without_problems(tmp_path):
    seed = load_seed(good_seed(tmp_path / "seed"))
    assert seed.problems == []
    seed.check()
    assert [pair.id for pair in seed.qa] == ["f001-en-1", "f001-pt-1", "d-en-1"]
    assert seed.qa[2] == QAPair(
        "d-en-1", None, "en", "Who will win the election?", "I only know about Farense.", "decline"
    )
    assert seed.eval[1] == EvalItem("e001-pt", 1, "pt", "Em que ano nasceu o Farense?", (("1910",), ("abril", "april")))
    assert seed.qa[0].file.endswith("qa-01.jsonl") and seed.qa[0].line == 1
    assert seed.ood[1].question == "Qual é a capital de França?"


def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path):
    folder = good_seed(tmp_path / "seed")
    write(
        folder / "qa-02.jsonl",
        qa("f001-en-2", 1, "en", "Where does Farense play?", "Estádio de São Luís."),
        qa("bad-lang", 1, "fr", "Où joue Farense?"),
        qa("bad-fact", None, "en", "A question without a fact?"),
        qa("bad-kind", 1, "en", "What kind?", kind="chitchat"),
        {"id": "missing-answer", "fact": 1, "lang": "en", "question": "No answer?"},
        "{broken",
    )
    write(
        folder / "eval-02.jsonl",
        {"id": "e-bad", "fact": 1, "lang": "en", "question": "Empty group?", "key_facts": [[]]},
    )
    seed = load_seed(folder)
    assert [pair.id for pair in seed.qa] == ["f001-en-1", "f001-pt-1", "d-en-1", "f001-en-2"]
    where = {(Path(p.file).name, p.line): p.reason for p in seed.problems}
    assert where == {
        ("qa-02.jsonl", 2): "'lang' should be one of en, pt, got 'fr'",
        ("qa-02.jsonl", 3): "'fact' may be null only for kind 'decline'",
        ("qa-02.jsonl", 4): "'kind' should be one of qa, decline, got 'chitchat'",
        ("qa-02.jsonl", 5): "missing key 'answer'",
        ("qa-02.jsonl", 6): where[("qa-02.jsonl", 6)],
        ("eval-02.jsonl", 1): "'key_facts' should be a non-empty list of non-empty lists of non-empty strings",
    }
    assert where[("qa-02.jsonl", 6)].startswith("bad JSON")
    with pytest.raises(SeedError) as caught:
        seed.check()
    assert len(str(caught.value).splitlines()) == 6
    assert f"{folder / 'qa-02.jsonl'}:5: missing key 'answer'" in str(caught.value)


def test_cross_file_rules(tmp_path):
    folder = good_seed(tmp_path / "seed")
    write(
        folder / "qa-02.jsonl",
        qa("f001-en-1", 1, "en", "Another question entirely?"),  # id reused
        qa("f002-en-1", 2, "en", "  in which YEAR was Farense   born? "),
    )  # = an eval question
    write(
        folder / "eval-02.jsonl",
        {"id": "e009-en", "fact": 9, "lang": "en", "question": "What about fact nine?", "key_facts": [["nine"]]},
    )
    write(
        folder / "out_of_domain.jsonl",
        {"id": "ood-en-1", "lang": "en", "question": "Quando foi fundádo o SC Farense?", "expected": "decline"},
    )
    reasons = [p.reason for p in load_seed(folder).problems]
    assert "id 'f001-en-1' already used at " + str(folder / "qa-01.jsonl") + ":1" in reasons
    assert any(r.startswith("question of 'e001-en' duplicates 'f002-en-1'") for r in reasons)
    assert any(r.startswith("question of 'ood-en-1' duplicates 'f001-pt-1'") for r in reasons)
    assert "eval item 'e009-en' tests fact 9, which no training pair teaches" in reasons
    assert "no out-of-domain items in language(s): pt" in reasons


def test_missing_files_are_problems(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    reasons = {p.reason for p in load_seed(folder).problems}
    assert {"no qa-*.jsonl file", "no eval-*.jsonl file", "no out_of_domain.jsonl file"} <= reasons


def test_dev_items_and_conversations_load_per_split(tmp_path):
    folder = tmp_path / "seed"
    folder.mkdir()
    write(
        folder / "dev.jsonl",
        {
            "id": "d002-en",
            "fact": 2,
            "facts": [2, 5],
            "lang": "en",
            "question": "Farense born when?",
            "key_facts": [["1910"]],
        },
        {"id": "d003-en", "fact": 3, "facts": [], "lang": "en", "question": "Nickname?", "key_facts": [["lions"]]},
    )
    write(
        folder / "multiturn.jsonl",
        {
            "id": "mt-01",
            "split": "dev",
            "lang": "pt",
            "turns": [
                {"question": "Quem foi Hassan Nader?", "expected": "answer", "key_facts": [["marroquino"]]},
                {"question": "E o tempo amanhã?", "expected": "decline"},
            ],
        },
        {
            "id": "mt-02",
            "split": "heldout",
            "lang": "en",
            "turns": [{"question": "Who founded Farense?", "expected": "answer", "key_facts": [["lot"]]}],
        },
        {"id": "mt-03", "split": "dev", "lang": "en", "turns": [{"question": "And then?", "expected": "answer"}]},
    )
    problems = []
    (item,) = load_eval(folder, problems, split="dev")
    assert item.facts == (2, 5) and item.key_facts == (("1910",),)
    (conversation,) = load_conversations(folder, problems, split="dev")
    assert conversation.id == "mt-01" and [t.expected for t in conversation.turns] == ["answer", "decline"]
    assert conversation.turns[0].key_facts == (("marroquino",),)
    assert [load.id for load in load_conversations(folder, [], split="heldout")] == ["mt-02"]
    assert [(p.line, p.reason) for p in problems] == [
        (2, "'facts' should be a non-empty list of fact numbers"),
        (3, "turn 1: an answer turn needs 'key_facts' (lists of phrasings)"),
    ]
