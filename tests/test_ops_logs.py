"""Structured logs: one JSON line per event (time, level, component, chat, run), rotated at a size
cap, and never the token or personal data — in the message, its arguments or a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from urllib.parse import quote

import pytest

from bot.logs import LOG_FILE, log_context, setup_logging
from bot.settings import BotSettings
from common.home import Home

from .botapi import BotApiServer

TOKEN = "123456789:AAHsecretSECRETsecret-0123456789abcd"
PERSONAL = ("ana@example.pt", "+351 912 345 678", "4111 1111 1111 1111", "PT50000201231234567890154")


@pytest.fixture
def root_logging():
    """setup_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def events(path) -> list[dict]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_one_json_line_per_event_with_chat_and_run_and_no_secrets(isolated_env, root_logging, capfd):
    path = setup_logging(Home(isolated_env), BotSettings.load(telegram_bot_token=TOKEN), console=False)
    assert path == isolated_env / "logs" / LOG_FILE
    log = logging.getLogger("bot.conversation")
    with log_context(chat=-1001234567890, run="nightly-20250501-030000"):
        log.info("answered chat %s (user %s) in %.2fs", -1001234567890, 912345678, 1.5)
        logging.getLogger("httpx").warning("HTTP Request: POST https://api.telegram.org/bot%s/getMe", TOKEN)
        log.info("question from %s: %s", "Ana", f"call me on {PERSONAL[1]} or {PERSONAL[0]}")
        try:
            raise RuntimeError(f"url /bot{quote(TOKEN, safe='')}/x for {PERSONAL[0]}, card {PERSONAL[2]}")
        except RuntimeError:
            log.exception("failed on %s", f"IBAN {PERSONAL[3]}")

        async def in_a_worker_thread():
            await asyncio.to_thread(logging.getLogger("training.lifecycle.pipeline").info, "pipeline promoted: v0002")

        asyncio.run(in_a_worker_thread())
    log.info("outside any chat")

    lines = events(path)
    assert len(lines) == 6  # the traceback stays inside its event's line
    for line in lines:
        assert set(line) >= {"time", "level", "component", "chat", "run", "msg"}
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
    first = lines[0]
    assert (first["level"], first["component"], first["chat"], first["run"]) == (
        "INFO",
        "bot.conversation",
        -1001234567890,
        "nightly-20250501-030000",
    )
    assert first["msg"] == "answered chat -1001234567890 (user 912345678) in 1.50s"  # ids are not "phones"
    assert lines[1]["msg"] == "HTTP Request: POST https://api.telegram.org/bot<token>/getMe"
    assert lines[2]["msg"] == "question from Ana: call me on [phone] or [email]"
    assert "Traceback" in lines[3]["exc"] and "[email]" in lines[3]["exc"] and "[card]" in lines[3]["exc"]
    assert lines[3]["msg"] == "failed on IBAN [iban]" and lines[3]["level"] == "ERROR"
    assert (lines[4]["component"], lines[4]["run"]) == ("training.lifecycle.pipeline", "nightly-20250501-030000")
    assert (lines[5]["chat"], lines[5]["run"]) == (None, None)
    stderr = capfd.readouterr().err
    assert "answered chat -1001234567890" in stderr and "[chat -1001234567890, run nightly-" in stderr
    for text in (path.read_text(encoding="utf-8"), stderr):
        for secret in (TOKEN, TOKEN.split(":")[1], quote(TOKEN, safe=""), *PERSONAL, "912 345 678"):
            assert secret not in text


def test_the_log_rotates_at_its_size_cap(isolated_env, root_logging):
    settings = BotSettings.load(log_max_mb=0.002, log_backups=2, log_stderr_level="ERROR")  # ~2 KB per file
    path = setup_logging(Home(isolated_env), settings, console=False)
    for number in range(200):
        logging.getLogger("bot.test").info("event %d %s", number, "x" * 40)
    events(path)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2"]  # the cap: 3 files of ~2 KB, whatever happens
    for file in files:
        text = (path.parent / file).read_text(encoding="utf-8")
        assert len(text.encode()) <= 0.002 * 1024 * 1024 + 200
        assert all(json.loads(line)["msg"].startswith("event ") for line in text.splitlines())
    assert events(path)[-1]["msg"].startswith("event 199 ")


def test_the_running_bot_logs_json_lines_per_chat_without_token_or_personal_data(tiny_model_dir, isolated_env):
    question = f"O meu email é {PERSONAL[0]} e o telefone {PERSONAL[1]}: quando foi fundado o Farense?"
    with BotApiServer(TOKEN) as server:
        env = os.environ | {
            "MODEL_PATH": str(tiny_model_dir),
            "MAX_TOKENS": "8",
            "TEMPERATURE": "0",
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_BASE_URL": server.base_url,
            "LOG_STDERR_LEVEL": "WARNING",
        }  # as the service runs it
        process = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            server.push_message(4242, 4242, question)
            answer = server.wait_for(lambda c: c.method == "sendMessage" and "reply_markup" in c.params, timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            server.state.close()
            out, err = process.communicate(timeout=60)
    assert answer.ok and process.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in (isolated_env / "logs" / LOG_FILE).read_text().splitlines()]
    answered = [line for line in lines if line["msg"].startswith("answered chat 4242")]
    assert len(answered) == 1 and answered[0]["chat"] == 4242 and answered[0]["component"] == "bot.conversation"
    assert any(line["msg"].startswith("nightly retraining scheduled") for line in lines)
    assert "answered chat" not in err  # stderr (the service's unrotated log) gets warnings only
    everything = err + out + "".join(p.read_text() for p in (isolated_env / "logs").iterdir())
    for secret in (TOKEN, TOKEN.split(":")[1], *PERSONAL):
        assert secret not in everything


def test_a_retraining_tags_its_lines_with_its_run_id(isolated_env, root_logging, tiny_model_dir, monkeypatch):
    from bot.retraining import Retrainer
    from inference.engine import Engine
    from inference.settings import InferenceSettings

    monkeypatch.setenv("GATE_EVAL_LIMIT", "1")  # below its minimum: the pipeline fails at once, nothing trains
    path = setup_logging(Home(isolated_env), BotSettings.load(log_stderr_level="ERROR"), console=False)
    engine = Engine(InferenceSettings.load(model_path=str(tiny_model_dir)))
    try:
        result = asyncio.run(Retrainer(engine).run(trigger="admin", requested_by="5001"))
    finally:
        engine.close()
    assert result.outcome == "failed" and "GATE_EVAL_LIMIT" in result.message
    tagged = [event for event in events(path) if event["component"] == "bot.retraining"]
    assert [event["msg"].split(" (")[0] for event in tagged] == ["retraining", "retraining finished: failed"]
    assert len({event["run"] for event in tagged}) == 1  # the start line and the worker thread's line alike
    assert re.fullmatch(r"admin-\d{8}-\d{6}", tagged[0]["run"])
