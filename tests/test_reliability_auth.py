"""Authorisation: admin commands, forged votes, /forget, and the bot token, over the loopback Bot API."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys

import pytest
from telegram.error import InvalidToken

from bot.settings import BotSettings
from common.settings import SettingsError
from inference.adapters import read_production
from training.lifecycle.registry import Registry

from .botapi import BotApiServer
from .helpers import BOT_ADMIN, BOT_TOKEN
from .models import make_adapter

pytestmark = pytest.mark.usefixtures("roomy_server")  # bursts of requests need a listen backlog

USER, OTHER = 4242, 4343
GROUP = -100777
ANONYMOUS_ADMIN = 1087968824  # Telegram's GroupAnonymousBot: a group admin posting as the group
NOT_ADMIN = "Sorry, that command is only for the bot's administrators."
SECRET = BOT_TOKEN.split(":")[1]


def since(bot, index):
    return bot.server.calls()[index:]


def sent(calls, method="sendMessage"):
    return [c for c in calls if c.method == method and c.ok]


def audit(store):
    with store._connection() as db:
        return db.execute("SELECT user_id, command, allowed FROM admin_events ORDER BY id").fetchall()


def test_every_admin_command_refuses_non_admins_in_every_form(start_bot, isolated_env, tiny_model_dir, tmp_path):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    for seed in (1, 2):
        registry.promote(
            registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed)).version,
            by="test",
            reason="setup",
        )
    bot = start_bot(rate_limit_per_minute=1000, updates_per_minute=1000, max_tokens=4)
    server = bot.server
    server.push_message(GROUP, BOT_ADMIN, "olá", chat_type="group", first_name="Admin")
    answer = bot.ask(GROUP, USER, "@farense_test_bot Quem fundou o Farense?", chat_type="group", language_code="en")
    answer_message = server.sent_messages(GROUP)[-1]
    admin_message = next(
        m for (c, _), m in server.state.messages.items() if c == GROUP and m["from"]["id"] == BOT_ADMIN
    )
    forwarded_from_admin = {"type": "user", "date": 0, "sender_user": admin_message["from"]}
    start = len(server.calls())

    attempts = []  # (who, chat, text, extra): every command in every form a non-admin can send it
    for command in ("/status", "/retrain", "/rollback", "/correct Hassan Nader"):
        attempts += [
            (USER, USER, command, {}),  # private chat
            (USER, GROUP, command, {"chat_type": "group"}),
            (
                USER,
                GROUP,
                command.replace(" ", "@farense_test_bot ", 1) if " " in command else command + "@farense_test_bot",
                {"chat_type": "group"},
            ),
            (USER, GROUP, command, {"chat_type": "group", "reply_to_message": answer_message}),
            (USER, GROUP, command, {"chat_type": "group", "reply_to_message": admin_message}),
            (USER, USER, command, {"forward_origin": forwarded_from_admin}),  # an admin's words, forwarded
            (ANONYMOUS_ADMIN, GROUP, command, {"chat_type": "group", "reply_to_message": answer_message}),
        ]
    for user, chat, text, extra in attempts:
        server.push_message(chat, user, text, language_code="en", **extra)
        bot.settle()
    calls = since(bot, start)
    refusals = [c for c in sent(calls) if c.params["text"] == NOT_ADMIN]
    assert len(refusals) == len(attempts) and len(sent(calls)) == len(attempts)
    assert not sent(calls, "sendPhoto") and not sent(calls, "editMessageText")

    # Edits never run commands, whoever edits: a harmless message edited into /rollback does nothing.
    for user in (USER, BOT_ADMIN):
        server.push_message(user, user, "olá" if user == USER else "/help")
        bot.settle()
        edited_at = len(server.calls())
        server.push_message(user, user, "/rollback", edited=True)
        bot.settle()
        assert not sent(since(bot, edited_at))

    assert read_production(isolated_env)[0] == "v0002" and len(registry.history()) == 2  # no rollback
    assert bot.services.retrainer.running is False and not (isolated_env / "runs").exists()  # no training
    assert bot.store.counts()["corrections"] == 0
    events = audit(bot.store)
    assert len(events) == len(attempts) and not any(allowed for _, _, allowed in events)
    assert {command for _, command, _ in events} == {"status", "retrain", "rollback", "correct"}
    assert answer.ok

    # The same commands from the admin do run (so the refusals above are about who asks).
    admin_at = len(server.calls())
    server.push_message(BOT_ADMIN, BOT_ADMIN, "/rollback", language_code="en")
    bot.settle()
    assert [c.params["text"] for c in sent(since(bot, admin_at))] == ["Rolled back. Now serving: v0001"]


def test_votes_cannot_be_forged_onto_someone_elses_answer(start_bot, caplog):
    bot = start_bot(rate_limit_per_minute=1000, updates_per_minute=1000, max_tokens=4)
    server = bot.server
    mine = bot.ask(USER, USER, "Quando foi fundado o Farense?")
    theirs = bot.ask(OTHER, OTHER, "Onde joga o Farense?")
    mine_id = int(mine.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
    their_id = int(theirs.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
    on_their_message = theirs.response["result"]["message_id"]
    forged = [
        f"fb:{mine_id}:down",
        f"fb:{mine_id}:up",
        f"fb:{mine_id + 1000}:up",
        f"fb:{mine_id}:up\n",
        f"fb:{mine_id}:up:x",
        f"fb: {mine_id}:up",
        "fb:١:up",
        "fb:" + "9" * 30 + ":up",
        "fb:-1:up",
        "fb:0:up",
        "fb::up",
        "status",
        "rollback",
        "",
        f"fb:{mine_id}:sideways",
    ]
    caplog.set_level(logging.WARNING)
    start = len(server.calls())
    queries = [
        server.push_callback_query(OTHER, OTHER, on_their_message, data)["callback_query"]["id"] for data in forged
    ]  # OTHER presses "buttons" that name USER's answer (or nonsense)
    bot.settle()
    answered = {
        c.params["callback_query_id"]: c.params.get("text") for c in sent(since(bot, start), "answerCallbackQuery")
    }
    assert set(answered) == set(queries)  # every press is answered: no spinner left, no crash
    refused = [data for data, query in zip(forged, queries) if answered[query]]
    assert refused == forged[:3] + ["fb:0:up"]  # well-formed but not OTHER's to rate; the rest is stale
    assert {answered[q] for q in queries if answered[q]} == {"Só quem fez a pergunta pode avaliar esta resposta."}
    counts = bot.store.counts()
    assert (counts["feedback_up"], counts["feedback_down"]) == (0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    server.push_callback_query(OTHER, OTHER, on_their_message, f"fb:{their_id}:up")  # their own: fine
    bot.settle()
    server.push_callback_query(USER, USER, mine.response["result"]["message_id"], f"fb:{mine_id}:up\n")
    bot.settle()  # "$" would have matched before the newline and counted this 👍 as a 👎
    assert (bot.store.counts()["feedback_up"], bot.store.counts()["feedback_down"]) == (1, 0)


def test_forget_deletes_only_the_senders_data_whatever_it_names(start_bot):
    bot = start_bot(rate_limit_per_minute=1000, updates_per_minute=1000, max_tokens=4)
    server = bot.server
    for user in (USER, OTHER, BOT_ADMIN):
        final = bot.ask(user, user, f"Pergunta de {user}?")
        server.push_callback_query(
            user,
            user,
            final.response["result"]["message_id"],
            final.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
        )
        bot.ask(GROUP, user, f"@farense_test_bot Pergunta de grupo de {user}?", chat_type="group")
    bot.settle()
    other_rows = [bot.store.message(i) for i in range(1, 7)]
    other_rows = [row for row in other_rows if row and row.user_id == OTHER]
    other_message = server.sent_messages(GROUP)[-2]  # the bot's answer to OTHER in the group

    for text, extra in ((f"/forget {OTHER}", {}), (f"/forget@farense_test_bot {OTHER}", {})):
        server.push_message(USER, USER, text, **extra)
        bot.settle()
    server.push_message(GROUP, USER, f"/forget {OTHER}", chat_type="group", reply_to_message=other_message)
    server.push_message(GROUP, BOT_ADMIN, f"/forget {OTHER}", chat_type="group", reply_to_message=other_message)
    bot.settle()

    assert [bot.store.message(row.id) for row in other_rows] == other_rows  # all of OTHER's rows intact
    with bot.store._connection() as db:
        users = {row[0] for row in db.execute("SELECT id FROM users")}
        chats = {row[0] for row in db.execute("SELECT id FROM chats")}
        votes = {row[0] for row in db.execute("SELECT user_id FROM feedback")}
    assert users == {OTHER} and votes == {OTHER}
    assert chats == {OTHER, GROUP}  # the group stays: OTHER's messages are in it


def test_the_token_never_appears_in_logs_errors_or_status(start_bot, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    bot = start_bot(max_tokens=4)
    server = bot.server
    bot.ask(USER, USER, "Olá?")
    server.fail_next("sendMessage", 500, description="Internal Server Error")  # the answer cannot be sent
    server.push_message(USER, USER, "Outra pergunta?")
    bot.settle()
    bot.store.set_opt_out = None  # a handler crash: the error handler logs the traceback
    server.push_message(USER, USER, "/optout")
    bot.settle()
    status_at = len(server.calls())
    server.push_message(BOT_ADMIN, BOT_ADMIN, "/status", language_code="en")
    bot.settle()
    status = sent(since(bot, status_at))[0].params["text"]
    server.fail_next("getUpdates", 401, description="Unauthorized")  # revoked while running
    server.push_message(USER, USER, "E agora?")
    server.wait_for(lambda c: c.method == "getUpdates" and not c.ok)
    with contextlib.suppress(InvalidToken):  # polling gave up on the revoked token: stop it here
        bot.run(bot.application.updater.stop())

    assert "error handling update" in caplog.text and "Internal Server Error" in caplog.text
    assert status.startswith("Model:")
    for text in (caplog.text, status, repr(bot.services.settings), str(bot.services.settings)):
        assert BOT_TOKEN not in text and SECRET not in text

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("ADMIN_USER_IDS", "12,Ana")
    monkeypatch.setenv("RETRAIN_CRON", "every night")
    with pytest.raises(SettingsError) as bad:
        BotSettings.load()
    assert SECRET not in str(bad.value) and "ADMIN_USER_IDS" in str(bad.value)


@pytest.mark.parametrize("server_token", [BOT_TOKEN.replace("FARENSE", "OTHER"), None])
def test_a_refused_or_unreachable_telegram_at_start_is_one_line_without_the_token(
    server_token, tiny_model_dir, isolated_env
):
    """PTB's own InvalidToken message (and its log line) quote the token; neither may reach stderr."""
    server = BotApiServer(server_token or BOT_TOKEN).start()
    base_url = server.base_url
    if server_token is None:
        server.stop()  # nothing listens there any more
    try:
        env = os.environ | {
            "MODEL_PATH": str(tiny_model_dir),
            "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "TELEGRAM_BASE_URL": base_url,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            out, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
    finally:
        server.stop()
    assert process.returncode == 2, err[-3000:]
    assert BOT_TOKEN not in out + err and SECRET not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("Telegram refused TELEGRAM_BOT_TOKEN" if server_token else "Telegram:") in errors[0]
