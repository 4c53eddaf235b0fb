"""Retrieval and grounded prompts (inference/grounding.py) over a real seeded knowledge base."""

from __future__ import annotations

import logging
import sqlite3
import threading

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from data.knowledge import add_fact, remove_fact
from data.store import Store
from inference import retrieval
from inference.grounding import (
    DECLINE,
    Fact,
    FactIndex,
    RetrievalError,
    approximate_tokens,
    build_grounded,
    cite,
    detect_language,
    used_facts,
)
from inference.settings import InferenceSettings


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_portuguese_question_about_hassan_finds_him_in_portuguese(index):
    facts = index.search("Quem foi Hassan Nader?", lang="pt")
    assert facts and all(fact.lang == "pt" and "Hassan" in fact.text for fact in facts)
    assert all(fact.source and fact.url for fact in facts)
    assert 80 in [fact.fact for fact in index.search("Quem foi Hassan Nader?", k=10, lang="pt")]


def test_a_fact_matched_in_one_language_is_returned_in_the_asked_one(index):
    facts = index.search("Who knocked Farense out of the UEFA Cup?", lang="pt")
    assert facts[0].fact == 69 and facts[0].lang == "pt" and "Lyonnais" in facts[0].text


def test_diacritics_are_folded_both_ways(index):
    plain = index.search("record attendance Sao Luis", lang="en")
    assert plain[0].fact == 26 and "São Luís" in plain[0].text
    accented = index.search("recorde de público no Estádio de São Luís", lang="pt")
    assert accented[0].fact == 26


# FTS syntax in a question is the user's words, never operators: it finds what the words say.
@pytest.mark.parametrize(
    "text, first",
    [
        ("NEAR(hassan nader)", 80),
        ("hassan*", 80),
        ("text:hassan nader", 80),
        ("^hassan", 80),
        ("\x00hassan", 80),
        ('"hassan" OR "nader"', 80),
        ("hassan" + " OR" * 200, 80),
        ("Rufai AND NOT Nigerian", 95),
        ('"', None),
        ("AND OR NOT", None),
        (")(", None),
        ("a" * 100_000, None),
        ("🦁 " * 500, None),
        ("", None),
        ("   ", None),
        ("?!", None),
    ],
)
def test_fts_syntax_and_odd_text_are_words_not_operators(index, text, first):
    found = index.search(text, lang="en")
    assert (found[0].fact if found else None) == first


def test_a_query_the_index_refuses_raises_instead_of_finding_nothing(index, monkeypatch):
    """A bug building the FTS5 query must surface, not read as "nothing relevant" (a decline)."""
    assert index.search("Who was Hassan Nader?", lang="en")[0].fact == 80
    monkeypatch.setattr(retrieval, "_atom", lambda word, stem: f'"{word}" AND')
    with pytest.raises(RetrievalError, match="failed"):
        index.search("Who was Hassan Nader?", lang="en")


def test_a_missing_knowledge_base_warns_once_and_is_reported_unavailable(tmp_path, caplog):
    missing = FactIndex(tmp_path / "nowhere.db")
    with caplog.at_level(logging.WARNING, logger="inference.grounding"):
        assert missing.search("Quem foi Hassan Nader?") == [] == missing.search("Who was Hassan?")
        assert not missing.available()
    assert len([record for record in caplog.records if "unavailable" in record.getMessage()]) == 1
    Store(tmp_path / "nowhere.db").close()  # the bot creates it: the same index finds facts then
    assert missing.available() and missing.search("Quem foi Hassan Nader?", lang="pt")[0].fact == 80
    missing.close()


PIECES = [
    "hassan",
    "Nader",
    "São",
    "Luís",
    "farense",
    "taça",
    '"',
    "*",
    "NEAR(",
    ")",
    "OR",
    "AND",
    "NOT",
    "^",
    ":",
    "-",
    "+",
    "{",
    "}",
    "\x00",
    "ß",
    "İ",
    "1910",
    "e\u0301",
]


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(), st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=3))).map("".join)))
def test_search_never_raises_on_any_text(index, text):
    facts = index.search(text, k=3, lang=detect_language(text))
    assert len(facts) <= 3
    assert len({fact.fact if fact.fact is not None else -fact.id for fact in facts}) == len(facts)
    for fact in facts:
        assert isinstance(fact, Fact) and fact.score > 0


def test_a_missing_database_or_table_gives_no_facts_and_no_grounding(tmp_path, caplog):
    missing = FactIndex(tmp_path / "nowhere.db")
    assert missing.search("Quem foi Hassan Nader?") == [] and not missing.available()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.close()
    no_table = FactIndex(empty)
    assert no_table.search("Quem foi Hassan Nader?") == []
    grounding = build_grounded(ask("Quem foi Hassan Nader?"), no_table, InferenceSettings.load())
    assert grounding.messages == ask("Quem foi Hassan Nader?") and grounding.decline is None
    assert "knowledge base" in caplog.text


def test_admin_changes_are_seen_by_an_open_index_at_once(db_path, index):
    assert index.search("golfinho") == []
    with Store(db_path) as store:
        fact_id = add_fact(store, "A segunda mascote do Farense é um golfinho.", "pt", author_id=1)
        assert [fact.id for fact in index.search("golfinho", lang="pt")] == [fact_id]
        remove_fact(store, fact_id, 1)
        assert index.search("golfinho") == []


def test_out_of_domain_questions_are_declined_in_their_language(index):
    settings = InferenceSettings.load()
    english = build_grounded(ask("Who is the current manager of Manchester United?"), index, settings)
    assert english.facts == [] and english.decline == DECLINE["en"] and english.lang == "en"
    portuguese = build_grounded(ask("Como se diz «obrigado» em japonês?"), index, settings)
    assert portuguese.decline == DECLINE["pt"] and portuguese.messages[0]["role"] == "system"


def test_grounded_prompt_holds_the_facts_in_the_question_language(index):
    messages = [{"role": "system", "content": "old"}, *ask("Quando foi fundado o Farense?")]
    grounding = build_grounded(messages, index, InferenceSettings.load())
    assert grounding.decline is None and grounding.lang == "pt"
    system = grounding.messages[0]["content"]
    assert "Factos:" in system and "1910" in system and "old" not in system
    assert grounding.messages[1:] == messages[1:]


def test_grounding_off_leaves_the_messages_alone(index):
    settings = InferenceSettings.load(grounding=False)
    grounding = build_grounded(ask("Quem foi Hassan Nader?"), index, settings)
    assert grounding.messages == ask("Quem foi Hassan Nader?") and grounding.facts == []
    assert grounding.decline is None


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("budget", [16, 40, 80, 256])
def test_the_facts_block_respects_the_token_budget(index, budget):
    settings = InferenceSettings.load(grounding_context_tokens=budget)
    grounding = build_grounded(ask("Tell me about Hassan Nader and Farense"), index, settings, words)
    block = grounding.messages[0]["content"].split("\n\n", 1)[1]
    assert grounding.facts and words(block) <= budget
    assert approximate_tokens("x" * 30) >= 10


def test_citation_names_the_source_of_the_fact_used(index):
    facts = index.search("Who knocked Farense out of the UEFA Cup?", lang="en")
    answer = "Olympique Lyonnais knocked Farense out, winning both legs 1-0."
    assert used_facts(answer, facts) == [facts[0]]
    assert cite(answer, facts, "en") == f"Source: {facts[0].source} — {facts[0].url}"
    assert cite(answer, facts, "pt").startswith("Fonte: ")
    assert cite(DECLINE["en"], facts, "en") == "" and cite("", [], "en") == ""


def test_an_answer_echoing_the_question_uses_no_fact(index):
    question = "Quem foi Hassan Nader?"
    facts = index.search(question, lang="pt")
    echo = "Hassan Nader foi um jogador do Farense."
    assert len(used_facts(echo, facts)) > 1  # every fact shares the question's names...
    assert used_facts(echo, facts, question) == [] and cite(echo, facts, "pt", question) == ""
    told = "Hassan Nader é um antigo avançado marroquino do Farense."  # ...only one says this
    assert [fact.text for fact in used_facts(told, facts, question)] == [
        fact.text for fact in facts if "avançado marroquino" in fact.text
    ]
    assert cite(told, facts, "pt", question).startswith("Fonte: ")


@pytest.mark.parametrize(
    "text, lang",
    [
        ("Quem foi Hassan Nader?", "pt"),
        ("Who was Hassan Nader?", "en"),
        ("Em que ano o Farense foi à Taça UEFA?", "pt"),
        ("When was the Estádio de São Luís built?", "en"),
        ("???", "en"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_one_index_serves_many_threads(index):
    expected = [fact.id for fact in index.search("Quem foi Hassan Nader?", lang="pt")]
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append([fact.id for fact in index.search("Quem foi Hassan Nader?", lang="pt")])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 80 and all(ids == expected for ids in results)
