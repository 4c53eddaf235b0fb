"""`python -m bot` without a token: the console chat, through the same pipeline as Telegram."""

from __future__ import annotations

import os
import subprocess
import sys

from common.home import Home
from data.store import Store

from .botapi.media import image_size
from .models import gated_registry


def run_bot(stdin: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot"], input=stdin, capture_output=True, text=True, timeout=120, env=os.environ | env
    )


def test_console_answers_rates_corrects_reports_status_and_exits_on_eof(tiny_model_dir, isolated_env):
    script = "Quando foi fundado o Farense?\n/good\n/correct Em 1910, em Faro.\n/status\n"
    result = run_bot(script, MODEL_PATH=str(tiny_model_dir), MAX_TOKENS="16", TEMPERATURE="0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "model tiny-llama" in out and "bot> " in out
    answer = out.split("bot> ", 1)[1].split("\nyou> ", 1)[0]
    assert answer.strip()  # the streamed answer (the tiny random model may start it with a newline)
    assert "Thanks for the feedback!" in out and "Correction saved" in out
    assert "Model: tiny-llama" in out and "Memory: process" in out and "Queue: 0" in out
    assert "Traceback" not in result.stderr
    with Store(isolated_env / "farense.db") as store:
        counts = store.counts()
        row = store.message(1)
    assert (counts["messages"], counts["feedback_up"], counts["corrections"]) == (1, 1, 1)
    assert row.question == "Quando foi fundado o Farense?" and row.user_id == 1
    # what was sent and logged is shown whole, after the stream when the guard replaced it
    assert answer.strip() == row.answer or row.answer in answer.splitlines()


def test_the_console_shows_what_is_sent_the_quoted_fact_with_answer_from_fact(tiny_model_dir, isolated_env):
    result = run_bot("When was Farense founded?\n", MODEL_PATH=str(tiny_model_dir), ANSWER_FROM="fact")
    assert result.returncode == 0, result.stderr
    answer, source = result.stdout.split("bot> ", 1)[1].split("\nyou> ", 1)[0].strip().rsplit("\n", 1)
    with Store(isolated_env / "farense.db") as store:
        logged = store.message(1).answer
        facts = [row[0] for row in store.read("SELECT text FROM facts WHERE lang = 'en'")]
    assert answer == logged and logged in facts and source.startswith("Source: ")  # not the model's words


def test_bad_settings_and_a_missing_model_exit_2_with_one_clear_line(tmp_path):
    bad = run_bot("", ADMIN_USER_IDS="12,Ana")
    assert bad.returncode == 2 and bad.stdout == ""
    assert (
        "ADMIN_USER_IDS must be Telegram user ids (positive integers) separated by commas or spaces; 'Ana'"
        in bad.stderr
    )
    assert "Traceback" not in bad.stderr

    missing = run_bot("", MODEL_PATH=str(tmp_path / "no-such-model"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-model" in errors[0]


def test_with_a_token_it_long_polls_telegram_and_stops_cleanly_on_sigterm(tiny_model_dir, isolated_env):
    import signal

    from .botapi import BotApiServer
    from .helpers import BOT_TOKEN

    with BotApiServer(BOT_TOKEN) as server:
        env = os.environ | {
            "MODEL_PATH": str(tiny_model_dir),
            "MAX_TOKENS": "8",
            "TEMPERATURE": "0",
            "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "TELEGRAM_BASE_URL": server.base_url,
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
            server.push_message(4242, 4242, "Quando foi fundado o Farense?")  # the first poll gets it
            answer = server.wait_for(lambda c: c.method == "sendMessage" and "reply_markup" in c.params, timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            server.state.close()  # ends the pending long poll now rather than at its timeout
            out, err = process.communicate(timeout=60)
    assert answer.ok and process.returncode == 0
    assert server.calls("getUpdates")[0].params.get("allowed_updates") == ["message", "callback_query"]
    assert "answered chat 4242" in err and "Traceback" not in err
    assert "ADMIN_USER_IDS is empty: nobody can /retrain or /rollback" in err  # said at start, not silent
    assert BOT_TOKEN not in err + out and BOT_TOKEN.split(":")[1] not in err + out


def restate_the_first_fact(messages, **kwargs):
    """A model that answers with the first fact its prompt holds (the tiny model's words cite nothing)."""
    from inference.engine import Chunk, Generation

    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    answer = next((line[2:] for line in system.splitlines() if line.startswith("- ")), "I don't know.")
    yield Chunk(answer, Generation(answer, 40, 12, 0.1, 0.05, "stop", "tiny-llama", None))


def test_console_cites_sources_declines_and_admins_the_knowledge_base(tiny_model_dir, isolated_env):
    import asyncio
    import io

    from bot.console import Console
    from bot.services import Services
    from bot.settings import BotSettings
    from data.knowledge import list_facts
    from data.settings import DataSettings
    from inference.engine import Engine
    from inference.grounding import DECLINE
    from inference.settings import InferenceSettings

    engine = Engine(InferenceSettings.load(model_path=str(tiny_model_dir)), adapter=None)
    store = Store(DataSettings.load().home.database)
    engine.stream = restate_the_first_fact

    def run(script: str) -> str:
        out = io.StringIO()
        services = Services.create(BotSettings.load(), engine, store)

        async def session():
            try:
                await Console(services, out).run(io.StringIO(script))
            finally:
                await asyncio.to_thread(services.close)

        asyncio.run(session())
        return out.getvalue()

    try:
        out = run(
            "Who knocked Farense out of the UEFA Cup?\nQual é o hino do Farense?\n"
            "/correct Chama-se «Avante, Leões».\nQual é o hino do Farense?\n/facts hino\n"
        )
        answers = [block.split("\nyou> ")[0] for block in out.split("bot> ")[1:]]
        assert answers[0].startswith("Olympique Lyonnais") and "\nSource: " in answers[0]
        assert answers[1].strip() == DECLINE["pt"]
        assert "Correction saved" in out and "the next answer to that question uses it." in out
        assert answers[2] == (
            "hino Farense — Chama-se «Avante, Leões».\nFonte: Farense bot admin"
        )  # the corrected fact, at once
        fact = list_facts(store, "Avante")[0]
        assert f"#{fact.id} [pt, admin, by 1, from message 2, r2] hino Farense" in out  # /facts found it

        out = run(f"/fact_remove {fact.id}\nQual é o hino do Farense?\n/fact_remove x\n")
        assert f"Removed fact #{fact.id}" in out and DECLINE["pt"] in out
        assert "Usage: /fact_remove <id>" in out
    finally:
        engine.close()
        store.close()


def test_console_status_writes_the_gate_answers_per_version_plot(tiny_model_dir, isolated_env, tmp_path):
    gated_registry(isolated_env, tiny_model_dir, tmp_path)
    result = run_bot("/status\n", MODEL_PATH=str(tiny_model_dir))
    assert result.returncode == 0, result.stderr
    plot = Home(isolated_env).accuracy_plot
    assert f"Gate answers per adapter version: {plot}" in result.stdout
    assert image_size(plot.read_bytes()) == (640, 400)
