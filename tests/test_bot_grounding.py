"""Grounded answers in the bot, end to end over the loopback Bot API on the tiny model: the source line,
declining without the model, corrections that teach the knowledge base at once, the admin's /facts and
/fact_remove, fans' 👎 in /status, and GROUNDING=false."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from data.knowledge import ADMIN_SOURCE, get_fact, list_facts
from inference.engine import Chunk, Generation
from inference.grounding import DECLINE

from .helpers import BOT_ADMIN

USER = 4242
OTHER = 4343
UEFA = "Who knocked Farense out of the UEFA Cup?"
LYON = "Olympique Lyonnais knocked Farense out, winning both legs 1-0."
IDOL = "Quem é o maior ídolo do Farense?"  # nothing in the knowledge base answers it
NOT_ADMIN = "Sorry, that command is only for the bot's administrators."


def record_prompts(bot, answer: str | None = None) -> list[list[dict]]:
    """Every prompt the model is given, in order; it answers `answer` (a model that restates the fact
    it was shown), or with the real tiny model when None."""
    prompts, real = [], bot.engine.stream

    def stream(messages, **kwargs):
        prompts.append(messages)
        if answer is None:
            yield from real(messages, **kwargs)
            return
        yield Chunk(answer, Generation(answer, 40, 12, 0.1, 0.05, "stop", "tiny-llama", None))

    bot.engine.stream = stream
    return prompts


def command(bot, user_id, text, **kwargs) -> list[str]:
    """Send a command in the user's private chat (or as given); returns the texts the bot sent."""
    since = len(bot.server.calls())
    bot.server.push_message(kwargs.pop("chat_id", user_id), user_id, text, **kwargs)
    bot.settle()
    return [c.params["text"] for c in bot.server.calls()[since:] if c.method == "sendMessage" and c.ok]


def logged(bot, chat_id, final):
    return bot.store.message_by_telegram_id(chat_id, final.response["result"]["message_id"])


def test_a_grounded_answer_carries_its_source_on_the_last_line(start_bot):
    bot = start_bot()
    prompts = record_prompts(bot, LYON)
    final = bot.ask(USER, USER, UEFA, language_code="en")

    system = prompts[0][0]
    assert system["role"] == "system" and "Facts:" in system["content"] and "Lyonnais" in system["content"]
    answer, source = final.params["text"].rsplit("\n", 1)
    assert answer == LYON and source.startswith("Source: ") and " — https://" in source
    assert final.params["link_preview_options"] == {"is_disabled": True}  # no Wikipedia card
    row = logged(bot, USER, final)
    assert row.answer == LYON  # the model's words are logged (and trained on), not the source line
    assert bot.services.conversations.history(USER)[-1].question == UEFA

    # A Portuguese question gets the Portuguese version of the fact and a Portuguese source line.
    final = bot.ask(USER, USER, "Quem eliminou o Farense da Taça UEFA?")
    assert "Lyonnais" in prompts[1][0]["content"] and "Factos:" in prompts[1][0]["content"]
    assert final.params["text"].rsplit("\n", 1)[1].startswith("Fonte: ")


def test_an_answer_that_uses_no_fact_has_no_source_line(start_bot):
    bot = start_bot()
    record_prompts(bot, "Who knocked Farense out of the UEFA Cup? A team.")  # only echoes the question
    final = bot.ask(USER, USER, UEFA, language_code="en")
    assert final.params["text"] == "Who knocked Farense out of the UEFA Cup? A team."


def test_out_of_domain_questions_are_declined_without_the_model(start_bot):
    bot = start_bot()
    prompts = record_prompts(bot, LYON)
    english = bot.ask(USER, USER, "Who is the current manager of Manchester United?", language_code="en")
    portuguese = bot.ask(OTHER, OTHER, IDOL)
    assert prompts == []  # the engine was never asked
    assert english.params["text"] == DECLINE["en"] and portuguese.params["text"] == DECLINE["pt"]
    assert "reply_markup" in english.params  # still an answer fans can rate and admins correct
    row = logged(bot, OTHER, portuguese)
    assert row.answer == DECLINE["pt"] and row.adapter_version is None and row.completion_tokens is None
    assert bot.services.conversations.history(USER) == []  # a decline is no context for what follows


def test_a_follow_up_is_grounded_on_the_previous_question_and_an_unrelated_one_declined(start_bot):
    bot = start_bot()
    prompts = record_prompts(bot, LYON)
    bot.ask(USER, USER, UEFA, language_code="en")
    follow_up = bot.ask(USER, USER, "And then?", language_code="en")  # no word of its own to search
    assert follow_up.params["text"].startswith(LYON) and "Lyonnais" in prompts[1][0]["content"]
    # The model reads the previous question with the follow-up, never its own earlier answer.
    assert [m["role"] for m in prompts[1]] == ["system", "user"]
    assert prompts[1][1]["content"] == f"{UEFA}\nAnd then?"
    weather = bot.ask(USER, USER, "What about the weather tomorrow?", language_code="en")
    assert weather.params["text"] == DECLINE["en"] and len(prompts) == 2


def test_an_answer_with_unsupported_names_is_regenerated_then_replaced_by_the_fact(start_bot):
    bot = start_bot()
    prompts = record_prompts(bot, "Benfica knocked Farense out in 1994.")  # invented, every time
    final = bot.ask(USER, USER, UEFA, language_code="en")
    assert len(prompts) == 2  # the answer, then one greedy retry
    answer, source = final.params["text"].rsplit("\n", 1)
    assert "Olympique Lyonnais" in answer and "Benfica" not in answer and source.startswith("Source: ")
    assert logged(bot, USER, final).answer == answer  # what the fan read is what is logged

    prompts = record_prompts(bot, LYON)  # a supported answer goes out as generated, once
    assert bot.ask(USER, USER, UEFA, language_code="en").params["text"].startswith(LYON)
    assert len(prompts) == 1


def test_a_correction_adds_a_fact_the_next_question_retrieves(start_bot):
    bot = start_bot()
    declined = bot.ask(BOT_ADMIN, BOT_ADMIN, IDOL)
    assert declined.params["text"] == DECLINE["pt"]
    answer_message = bot.server.sent_messages(BOT_ADMIN)[-1]
    fix = "Hassan Nader é o maior ídolo do Farense."
    replies = command(bot, BOT_ADMIN, f"/correct {fix}", reply_to_message=answer_message)  # a Portuguese admin
    assert replies[0].startswith("Correção guardada — será usada no próximo treino.\nFacto #")
    assert "acrescentado à base de conhecimento — a próxima resposta a essa pergunta usa-o." in replies[0]
    fact = list_facts(bot.store, "maior ídolo")[0]
    assert (fact.text, fact.lang, fact.origin, fact.author_id, fact.source) == (
        fix,
        "pt",
        "admin",
        BOT_ADMIN,
        ADMIN_SOURCE,
    )
    assert f"#{fact.id} " in replies[0]

    prompts = record_prompts(bot)  # the real tiny model answers now
    final = bot.ask(USER, USER, IDOL)
    assert final.params["text"] != DECLINE["pt"]
    assert fix in prompts[0][0]["content"]  # the very next question is grounded on the correction
    assert [(c.question, c.answer, c.source) for c in bot.store.curated_examples()] == [
        (IDOL, fix, "correction")
    ]  # and it is training data, as before


def test_a_correction_of_an_answer_that_used_one_fact_amends_that_fact(start_bot):
    bot = start_bot()
    record_prompts(bot, LYON)
    bot.ask(BOT_ADMIN, BOT_ADMIN, UEFA, language_code="en")
    used = bot.services.conversations.facts_used_by(UEFA, LYON)
    assert len(used) == 1
    before = get_fact(bot.store, used[0].id)
    assert before.origin == "seed" and "Lyonnais" in before.text

    fix = "Olympique Lyonnais knocked Farense out of the UEFA Cup in the first round of 1995-96."
    replies = command(
        bot, BOT_ADMIN, f"/correct {fix}", language_code="en", reply_to_message=bot.server.sent_messages(BOT_ADMIN)[-1]
    )
    assert f"Fact #{before.id} amended (revision 2) in the knowledge base — the next answer" in replies[0]
    after = get_fact(bot.store, before.id)
    assert (after.text, after.source, after.author_id, after.url) == (fix, ADMIN_SOURCE, BOT_ADMIN, None)

    prompts = record_prompts(bot, "Olympique Lyonnais, in the first round of 1995-96.")
    final = bot.ask(USER, USER, UEFA, language_code="en")
    assert fix in prompts[0][0]["content"] and before.text not in prompts[0][0]["content"]
    assert final.params["text"].endswith(f"\nSource: {ADMIN_SOURCE}")  # the admin is now the source
    assert [c.answer for c in bot.store.curated_examples()] == [fix]


def test_a_correction_about_something_else_than_the_quoted_fact_is_added_beside_it(start_bot):
    """A wrong answer quoting a true fact about another thing: the fix must not overwrite that fact."""
    bot = start_bot()
    record_prompts(bot, LYON)
    bot.ask(BOT_ADMIN, BOT_ADMIN, UEFA, language_code="en")
    (quoted,) = bot.services.conversations.facts_used_by(UEFA, LYON)
    before = get_fact(bot.store, quoted.id)

    fix = "Farense's anthem is sung by the fans before every home game."
    replies = command(
        bot, BOT_ADMIN, f"/correct {fix}", language_code="en", reply_to_message=bot.server.sent_messages(BOT_ADMIN)[-1]
    )
    assert "added in the knowledge base" in replies[0] and f"quoted fact #{before.id}" in replies[0]
    assert get_fact(bot.store, before.id) == before  # the quoted fact keeps its words and revision
    (added,) = [fact for fact in list_facts(bot.store, limit=1000) if fix in fact.text]
    assert (added.origin, added.author_id, added.lang) == ("admin", BOT_ADMIN, "en")


def test_a_correction_sharing_no_word_with_the_question_is_still_found_by_it(start_bot):
    bot = start_bot()
    record_prompts(bot, LYON)
    question = "Qual é o hino do Farense?"
    assert bot.ask(BOT_ADMIN, BOT_ADMIN, question).params["text"] == DECLINE["pt"]
    replies = command(
        bot, BOT_ADMIN, "/correct Chama-se «Avante, Leões».", reply_to_message=bot.server.sent_messages(BOT_ADMIN)[-1]
    )
    assert (
        "acrescentado à base de conhecimento, antecedido das palavras-chave da pergunta (revisão 2) — a próxima"
        " resposta a essa pergunta usa-o."
    ) in replies[0]
    fact = list_facts(bot.store, "Avante")[0]
    assert fact.text == "hino Farense — Chama-se «Avante, Leões»."  # led by the question's telling words: found
    assert fact.id in [f.id for f in bot.services.conversations.ground(question).facts]


def test_admin_lists_searches_and_removes_facts_and_others_are_refused(start_bot):
    bot = start_bot()
    newest = command(bot, BOT_ADMIN, "/facts", language_code="en")[0]
    assert newest.startswith("Newest of ") and newest.count("\n#") == 15
    found = command(bot, BOT_ADMIN, "/facts Hassan Nader", language_code="en")[0]
    assert found.startswith("Facts with Hassan Nader") and "[pt, seed]" in found and "[en, seed]" in found
    lines = [line for line in found.splitlines()[1:] if "avançado marroquino" in line]
    fact_id = int(lines[0].split()[0].lstrip("#"))
    assert command(bot, BOT_ADMIN, "/facts golfinho voador", language_code="en") == [
        "No fact holds all of: golfinho voador"
    ]

    for text in ("/facts", "/facts Hassan", f"/fact_remove {fact_id}"):
        assert command(bot, USER, text, language_code="en") == [NOT_ADMIN]
    assert get_fact(bot.store, fact_id).removed_at is None

    assert command(bot, BOT_ADMIN, "/fact_remove", language_code="en") == [
        "Usage: /fact_remove <id> — the number /facts shows after #."
    ]
    removed = command(bot, BOT_ADMIN, f"/fact_remove #{fact_id}", language_code="en")[0]
    assert removed.startswith(f"Removed fact #{fact_id}: Hassan Nader é um antigo avançado marroquino")
    assert get_fact(bot.store, fact_id).removed_at is not None
    assert fact_id not in [f.id for f in bot.services.conversations.ground("Quem foi Hassan Nader?").facts]
    assert command(bot, BOT_ADMIN, f"/fact_remove {fact_id}", language_code="en") == [
        f"There is no fact #{fact_id} to remove (see /facts)."
    ]
    with bot.store._connection() as db:
        audit = db.execute("SELECT user_id, command, allowed FROM admin_events ORDER BY id").fetchall()
    assert (USER, "facts", 0) in audit and (USER, "fact_remove", 0) in audit
    assert (BOT_ADMIN, "fact_remove", 1) in audit and (BOT_ADMIN, "facts", 1) in audit


def test_admin_help_and_command_menus_name_the_knowledge_commands(start_bot):
    bot = start_bot()
    for language, expected in (("en", "/facts <words> — search them"), ("pt", "/facts <palavras> — procurá-los")):
        admin_help = command(bot, BOT_ADMIN, "/help", language_code=language)[0]
        assert expected in admin_help and "/fact_remove <id>" in admin_help
    assert "/fact_remove" not in command(bot, USER, "/help")[0]  # fans do not see admin commands
    scope = json.dumps({"chat_id": BOT_ADMIN, "type": "chat"}, sort_keys=True)
    for code in ("", "pt"):
        menu = {c["command"] for c in bot.server.state.commands[(scope, code)]}
        assert {"facts", "fact_remove", "correct"} <= menu


def test_fans_thumbs_down_shows_in_status(start_bot):
    bot = start_bot()
    record_prompts(bot, LYON)
    first = bot.ask(USER, USER, UEFA, language_code="en")
    second = bot.ask(OTHER, OTHER, IDOL)
    assert "Thumbs down (7 days): 0\n" in command(bot, BOT_ADMIN, "/status", language_code="en")[0]
    for chat, final in ((USER, first), (OTHER, second)):
        down = final.params["reply_markup"]["inline_keyboard"][0][1]["callback_data"]
        bot.server.push_callback_query(chat, chat, final.response["result"]["message_id"], down)
        bot.settle()
    status = command(bot, BOT_ADMIN, "/status", language_code="en")[0]
    assert f'Thumbs down (7 days): 2 — latest: "{IDOL}" → "{DECLINE["pt"]}"' in status
    assert "Knowledge base: " in status and "grounding on" in status
    week_later = datetime.now(timezone.utc) + timedelta(days=7, minutes=1)
    bot.services.clock = lambda: week_later
    # older votes drop out
    assert "Thumbs down (7 days): 0\n" in command(bot, BOT_ADMIN, "/status", language_code="en")[0]


def test_grounding_off_answers_from_the_model_alone(start_bot, monkeypatch):
    monkeypatch.setenv("GROUNDING", "false")
    bot = start_bot()
    assert bot.services.conversations.index is None
    prompts = record_prompts(bot, LYON)
    final = bot.ask(USER, USER, UEFA, language_code="en")
    assert final.params["text"] == LYON  # no source line
    assert prompts[0] == [{"role": "user", "content": UEFA}]  # no facts: the default system prompt
    bot.ask(USER, USER, "Who is the current manager of Manchester United?", language_code="en")
    assert len(prompts) == 2  # not declined either: the model answers everything
    assert "grounding off" in command(bot, BOT_ADMIN, "/status", language_code="en")[0]


def test_answer_from_fact_sends_the_fact_the_models_answer_drew_on(start_bot, monkeypatch):
    monkeypatch.setenv("ANSWER_FROM", "fact")
    bot = start_bot()
    prompts = record_prompts(bot, LYON)  # a supported answer, which ANSWER_FROM=model would send as is
    final = bot.ask(USER, USER, UEFA, language_code="en")
    facts = [line[2:] for line in prompts[0][0]["content"].splitlines() if line.startswith("- ")]
    answer, source = final.params["text"].rsplit("\n", 1)
    lyon = next(fact for fact in facts if "Lyonnais" in fact)
    assert answer == lyon != LYON and source.startswith("Source: ")  # the fact itself, cited
    assert logged(bot, USER, final).answer == lyon
