"""The faithfulness guard: claims an answer makes must stand in its facts or its question."""

from inference.faithfulness import FACT, KEPT, QUOTED, REGENERATED, claims, guard, quote, unsupported
from inference.grounding import DECLINE

LYON = (
    "Olympique Lyonnais knocked Farense out in the first round of the 1995/96 UEFA Cup, winning"
    " both legs 1-0 (2-0 on aggregate)."
)
NADER_PT = "Hassan Nader é um antigo avançado marroquino que se tornou uma lenda do Farense; também jogou no Benfica."
FOUNDED = "Farense was founded on 1 April 1910."


def test_claims_are_numbers_and_names_not_sentence_openers():
    assert claims("Yes, Olympique Lyonnais won 1-0 in 1995/96. The club was founded in 1910.") == [
        "olympique",
        "lyonnais",
        "1",
        "0",
        "1995",
        "96",
        "1910",
    ]
    assert claims("Sim, o Farense foi fundado em 1910.") == ["1910"]


def test_an_answer_restating_its_fact_is_supported():
    assert unsupported("Olympique Lyonnais, who won both legs 1-0 in the first round.", [LYON]) == []
    assert unsupported("Hassan Nader foi um avançado marroquino, lenda do Farense.", [NADER_PT]) == []
    assert unsupported("It was founded on April 1st, 1910.", [FOUNDED]) == []


def test_invented_names_and_numbers_are_caught():
    assert unsupported("The 1994 World Cup was won by the England team.", [LYON, FOUNDED]) == [
        "1994",
        "world",
        "england",
    ]
    assert unsupported("Farense was founded on 1 April 1912.", [FOUNDED]) == ["1912"]
    assert unsupported("Hassan Nader jogou no Sporting e no Porto.", [NADER_PT]) == ["porto"]


def test_the_question_counts_as_support():
    question = "Did Farense ever play Lyon in Europe?"
    assert unsupported("Yes, Lyon knocked Farense out.", [FOUNDED, question]) == []


def test_guard_keeps_a_supported_answer_without_regenerating():
    def regenerate():
        raise AssertionError("a supported answer must not be regenerated")

    result = guard("Farense was founded in 1910.", [FOUNDED], "When was Farense founded?", regenerate)
    assert (result.text, result.verdict, result.unsupported) == ("Farense was founded in 1910.", KEPT, ())


def test_guard_regenerates_then_falls_back_to_the_best_fact():
    question = "When was Farense founded?"
    retried = guard(
        "Farense was founded in 1912.", [FOUNDED, LYON], question, lambda: "It was founded on 1 April 1910."
    )
    assert (retried.text, retried.verdict, retried.unsupported) == (
        "It was founded on 1 April 1910.",
        REGENERATED,
        ("1912",),
    )
    fallback = guard("Farense was founded in 1912.", [FOUNDED, LYON], question, lambda: "In 1905.")
    assert (fallback.text, fallback.verdict) == (FOUNDED, FACT)
    empty = guard("  ", [FOUNDED], question)
    assert (empty.text, empty.verdict) == (FOUNDED, FACT)


def test_guard_leaves_ungrounded_answers_alone():
    assert guard("Paris is the capital of France.", [], "Capital of France?").verdict == KEPT


def test_quote_sends_the_fact_the_answer_drew_on_and_the_best_one_when_it_drew_on_none():
    facts = ["Farense were founded on 1 April 1910 in Faro.", "Hassan Nader scored 26 league goals in 1994/95."]
    drew = quote("Nader scored 26 goals that season.", facts, "Who was Farense's top scorer in 1994/95?")
    assert drew.text == facts[1] and drew.verdict == QUOTED
    assert quote("I think so.", facts, "Was Hassan Nader good?").text == facts[0]
    assert quote("Hello", [], "Hi").verdict == KEPT


def test_quote_keeps_the_models_decline_when_the_facts_do_not_answer():
    facts = ["Farense were founded on 1 April 1910 in Faro."]
    for decline in (DECLINE["en"], DECLINE["pt"], "Desculpa, só sei sobre o SC Farense."):
        assert quote(decline, facts, "Who won the 2022 World Cup?").text == decline
