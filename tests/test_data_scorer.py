"""Scoring: key facts are found whatever the accents, case, dashes or thousands separators."""

from __future__ import annotations

import json

import pytest

from data.scorer import EvalReport, contains, evaluate, is_decline, normalise
from data.seed import EvalItem, OODItem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Estádio de São Luís", "estadio de sao luis"),
        ("  FARENSE\n\tfoi  FUNDADO ", "farense foi fundado"),
        ("14,000 fans", "14000 fans"),
        ("10.018 espectadores", "10018 espectadores"),
        ("14 000 adeptos", "14000 adeptos"),
        ("3,000,000 euros", "3000000 euros"),
        ("won 2–1 — again", "won 2-1 - again"),
        ("1910 and 1990", "1910 and 1990"),
        ("score 2.5 goals, 1,5 per game", "score 2.5 goals, 1,5 per game"),
        ("the club’s ground", "the club's ground"),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_contains_matches_word_starts_and_whole_numbers():
    assert contains("Founded in 1910.", "1910")
    assert not contains("Code 19100.", "1910")
    assert not contains("In 1970 and 2017.", "7")
    assert contains("Shirt number 7.", "7")
    assert contains("No dia 1 de Abril!", "1 de abril")
    assert contains("Capacidade: 14.000 lugares", "14 000")
    assert contains("Uma sede administrativa", "administrativ")
    assert contains("Olympique Lyonnais", "lyon")
    assert not contains("Algarve", "garve")
    assert contains("Ganhou 2–1 e ficou em 3.º lugar", "3.o")
    assert contains("Ganhou 2–1", "2-1")


def item(id: str, lang: str, *groups: list[str], fact: int = 1) -> EvalItem:
    return EvalItem(id, fact, lang, f"question {id}?", tuple(tuple(group) for group in groups))


ITEMS = [
    item("e001-en", "en", ["1910"], ["1 april", "april 1"]),
    item("e001-pt", "pt", ["1910"], ["1 de abril"]),
    item("e002-en", "en", ["sao luis"]),
    item("e002-pt", "pt", ["14000"]),
]
OOD = [
    OODItem("ood-en-1", "en", "Best pizza in Rome?"),
    OODItem("ood-pt-1", "pt", "Receita de bacalhau?"),
]
ANSWERS = {
    "question e001-en?": "SC Farense was founded on April 1, 1910.",
    "question e001-pt?": "Foi fundado em 1910.",  # misses the date group
    "question e002-en?": "It plays at the ESTÁDIO DE SÃO LUÍS.",
    "question e002-pt?": "Cabem lá 14,000 pessoas.",
    "Best pizza in Rome?": "Sorry, I only answer questions about SC Farense.",
    "Receita de bacalhau?": "Bacalhau com natas!",
}


def fake_model(question: str, lang: str) -> str:
    assert lang in ("en", "pt")
    return ANSWERS[question]


def test_per_item_results_and_aggregates():
    report = evaluate(fake_model, list(reversed(ITEMS)), OOD)
    assert [(r.id, r.passed, r.matched_groups) for r in report.items] == [
        ("e001-en", True, (True, True)),
        ("e001-pt", False, (True, False)),
        ("e002-en", True, (True,)),
        ("e002-pt", True, (True,)),
    ]
    assert report.accuracy == 0.75
    assert report.accuracy_by_lang == {"en": 1.0, "pt": 0.5}
    assert report.key_fact_recall == 5 / 6
    assert [r.declined for r in report.ood] == [True, False]
    assert report.ood_decline_rate == 0.5
    assert report.summary() == (
        "accuracy 75.0% (en 100.0%, pt 50.0%) | declined 0.0% | wrong 25.0% |"
        " key facts 83.3% |"
        " out-of-domain declined 50.0% | 4 items, 2 ood"
    )


def test_report_is_json_ready():
    data = json.loads(json.dumps(evaluate(fake_model, ITEMS, OOD).to_dict()))
    assert data["counts"] == {"items": 4, "ood": 2}
    assert data["items"][1]["matched_groups"] == [True, False]
    assert data["ood"][0]["answer"] == ANSWERS["Best pizza in Rome?"]


def test_limit_takes_the_first_items_in_id_order():
    asked = []

    def recording_model(question: str, lang: str) -> str:
        asked.append(question)
        return ANSWERS[question]

    report = evaluate(recording_model, list(reversed(ITEMS)), OOD, limit=1)
    assert asked == ["question e001-en?", "Best pizza in Rome?"]
    assert (len(report.items), len(report.ood)) == (1, 1)


def test_empty_report_has_no_rates():
    report = EvalReport((), ())
    assert report.accuracy is None and report.ood_decline_rate is None
    assert report.accuracy_by_lang == {"en": None, "pt": None}
    assert report.summary().startswith("accuracy n/a (en n/a, pt n/a)")


def test_seed_items_are_used_by_default(tmp_path, monkeypatch):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "eval-01.jsonl").write_text(
        json.dumps({"id": "e001-en", "fact": 1, "lang": "en", "question": "When?", "key_facts": [["1910"]]}) + "\n"
    )
    (seed / "out_of_domain.jsonl").write_text(
        json.dumps({"id": "ood-en-1", "lang": "en", "question": "Weather?", "expected": "decline"}) + "\n"
    )
    monkeypatch.setenv("SEED_DIR", str(seed))
    report = evaluate(lambda question, lang: "Sorry, 1910.")
    assert (report.accuracy, report.ood_decline_rate) == (1.0, 1.0)


def test_every_answer_is_right_declined_or_wrong():
    items = [
        item("e001-en", "en", ["1910"]),
        item("e001-pt", "pt", ["1910"]),
        item("e002-en", "en", ["sao luis"]),
        item("e002-pt", "pt", ["14000"]),
    ]
    answers = {
        "question e001-en?": "Founded in 1910.",
        "question e001-pt?": "Desculpa, só sei sobre o SC Farense e não encontrei nada sobre isso.",
        "question e002-en?": "Farense plays at the Estádio Algarve.",  # asserts the wrong ground
        "question e002-pt?": "Não sei quantos lugares tem.",
    }
    report = evaluate(lambda question, _lang: answers[question], items, [])
    assert [r.verdict for r in report.items] == ["right", "declined", "wrong", "declined"]
    assert report.verdicts() == {"right": 0.25, "declined": 0.5, "wrong": 0.25}
    assert report.verdicts("en") == {"right": 0.5, "declined": 0.0, "wrong": 0.5}
    assert report.wrong_rate == 0.25


def test_a_reply_naming_farense_is_not_a_decline():
    probes = [OODItem("ood-en-1", "en", "Who won the 2022 World Cup?")]
    report = evaluate(lambda question, _lang: "Farense won the 2022 World Cup.", [], probes)
    assert report.ood_decline_rate == 0.0
    assert is_decline("Sorry, I only know about SC Farense, and I found nothing on that.")
    assert is_decline("Desculpa, só sei sobre o SC Farense e não encontrei nada sobre isso.")
