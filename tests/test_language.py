"""The answer's language: the question's, else the user's own, else English."""

import pytest

from inference.grounding import detect_language


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Olá, tudo bem?", "pt"),
        ("Quem foi Hassan Nader?", "pt"),
        ("E quando?", "pt"),
        ("Estádio do Farense?", "pt"),
        ("Who was Hassan Nader?", "en"),
        ("And when?", "en"),
        ("Farense founded when?", "en"),
    ],
)
def test_the_question_tells(question, expected):
    assert detect_language(question, default="pt" if expected == "en" else "en") == expected


@pytest.mark.parametrize("question", ["Hassan?", "Farense?", "1910?", "👍"])
def test_a_question_that_does_not_tell_takes_the_users_language(question):
    assert detect_language(question, default="pt") == "pt"
    assert detect_language(question) == "en"
