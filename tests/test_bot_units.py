"""The bot's pure parts: message splitting, settings, rate limiting, context budget, progress, plot."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import texts
from bot.conversation import RateLimiter
from bot.plot import latest_run, loss_plot, read_losses
from bot.retraining import ProgressText
from bot.settings import BotSettings
from bot.splitting import split_text, utf16_len
from bot.texts import language
from common.home import Home
from common.settings import SettingsError
from training.lifecycle.messages import NOTES

words = st.text(st.sampled_from("abcdefghij ⚽🦁é\n.!?,"), min_size=1, max_size=60)


@given(st.lists(words, max_size=30), st.integers(min_value=8, max_value=120))
def test_split_parts_fit_and_lose_nothing(pieces, limit):
    text = " ".join(pieces)
    parts = split_text(text, limit)
    assert all(part and part == part.strip() and utf16_len(part) <= limit for part in parts)
    assert "".join("".join(part.split()) for part in parts) == "".join(text.split())


def test_split_prefers_paragraphs_then_sentences_then_words():
    paragraphs = ["a" * 3000, "b" * 3000, "c" * 100]
    assert split_text("\n\n".join(paragraphs)) == [paragraphs[0], paragraphs[1] + "\n\n" + paragraphs[2]]
    sentences = "O Farense foi fundado em 1910. " * 200
    parts = split_text(sentences)
    assert len(parts) == 2 and parts[0].endswith("1910.") and parts[1].startswith("O Farense")
    assert split_text("palavra " * 1000, 100)[0] == ("palavra " * 12).strip()
    assert split_text("🦁" * 3000) == ["🦁" * 2048, "🦁" * 952]  # emoji count twice in UTF-16


def test_admin_ids_split_on_commas_and_spaces_and_refuse_duplicates_and_non_positive(monkeypatch):
    for written in ("111 222", "111,222", " 111 ,\t222\n", "111, 222,"):
        monkeypatch.setenv("ADMIN_USER_IDS", written)
        assert BotSettings.load().admin_user_ids == (111, 222), written
    monkeypatch.setenv("ADMIN_USER_IDS", "111 222 111")
    with pytest.raises(SettingsError, match="ADMIN_USER_IDS names 111 more than once"):
        BotSettings.load()
    for bad in ("111 -5", "0", "111 2x2"):
        monkeypatch.setenv("ADMIN_USER_IDS", bad)
        with pytest.raises(SettingsError, match="ADMIN_USER_IDS must be Telegram user ids"):
            BotSettings.load()
    with pytest.raises(SettingsError, match="names 7 more than once"):
        BotSettings.load(admin_user_ids=(7, 7))


def test_settings_warn_of_no_admins_and_a_cleartext_non_loopback_bot_api(monkeypatch):
    monkeypatch.setenv("ADMIN_USER_IDS", "5001")
    assert BotSettings.load().telegram_warnings() == []
    for local in ("http://127.0.0.1:8081/bot", "http://localhost:8081/bot", "http://[::1]:8081/bot"):
        assert BotSettings.load(telegram_base_url=local).telegram_warnings() == []
    cleartext = BotSettings.load(telegram_base_url="http://api.example.org/bot").telegram_warnings()
    assert cleartext == ["TELEGRAM_BASE_URL is not https (http://api.example.org): the bot token travels in cleartext"]
    monkeypatch.delenv("ADMIN_USER_IDS")
    assert BotSettings.load().telegram_warnings()[0].startswith("ADMIN_USER_IDS is empty")


def test_settings_parse_admin_ids_and_reject_bad_values(monkeypatch):
    monkeypatch.setenv("ADMIN_USER_IDS", "12, 34")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:secret")
    settings = BotSettings.load()
    assert settings.admin_user_ids == (12, 34) and settings.is_admin(34) and not settings.is_admin(5)
    assert "secret" not in repr(settings) and settings.telegram_bot_token.get_secret_value() == "123:secret"
    assert BotSettings.load(telegram_bot_token="  ").telegram_bot_token is None
    assert str(settings.cron_trigger().timezone) == "Europe/Lisbon"

    monkeypatch.setenv("ADMIN_USER_IDS", "12;34")
    with pytest.raises(SettingsError, match="ADMIN_USER_IDS must be Telegram user ids .*'12;34' is not one"):
        BotSettings.load()
    monkeypatch.delenv("ADMIN_USER_IDS")
    with pytest.raises(SettingsError, match="RETRAIN_TIMEZONE: unknown time zone 'Lisboa'"):
        BotSettings.load(retrain_timezone="Lisboa")
    with pytest.raises(SettingsError, match="RETRAIN_CRON is not a valid crontab line"):
        BotSettings.load(retrain_cron="every night")
    with pytest.raises(SettingsError, match="RATE_LIMIT_PER_MINUTE"):
        BotSettings.load(rate_limit_per_minute=0)


def test_rate_limiter_window_is_per_user_and_tells_once():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert [limiter.check(1) for _ in range(4)] == [(True, False), (True, False), (False, True), (False, False)]
    assert limiter.check(2) == (True, False)
    now[0] = 60.0
    assert limiter.check(1) == (True, False)


def test_progress_text_follows_stages_steps_and_evaluations():
    english, portuguese = ProgressText("en"), ProgressText("pt")
    for progress in (english, portuguese):
        progress.update({"event": "stage", "stage": "dataset"})
    assert english.render() == "Retraining…\nStage: dataset"
    assert portuguese.render() == "A treinar de novo…\nEtapa: conjunto de treino"
    for event in (
        {"event": "stage", "stage": "train"},
        {"event": "eval", "step": 0, "val_loss": 3.21},
        {"event": "step", "step": 3, "total": 600, "loss": 2.5, "eta_s": 3725.0},
    ):
        english.update(event)
        portuguese.update(event)
    assert english.render() == "Retraining…\nStage: train\nstep 3/600 · loss 2.500 · val 3.210 · ETA 1h02m"
    assert portuguese.render() == (
        "A treinar de novo…\nEtapa: treino\npasso 3/600 · perda 2.500 · validação 3.210 · faltam 1h02m"
    )


def test_language_is_portuguese_for_any_pt_code():
    assert [language(code) for code in ("pt", "pt-BR", "PT-pt", "en", "es", None)] == [
        "pt",
        "pt",
        "pt",
        "en",
        "en",
        "en",
    ]


def placeholders(message: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(message) if field is not None}


# Entries that are only placeholders and punctuation: the same in both languages by design.
LANGUAGE_NEUTRAL = {"learned", "list"}


@pytest.mark.parametrize(
    "table", [texts.TEXTS, texts.ADMIN_TEXTS, NOTES], ids=["fan texts", "admin texts", "pipeline notes"]
)
def test_every_text_is_in_english_and_portuguese_with_the_same_placeholders(table):
    for key, versions in table.items():
        assert set(versions) == {"en", "pt"}, key
        assert placeholders(versions["en"]) == placeholders(versions["pt"]), key
        assert (versions["en"] == versions["pt"]) == (key in LANGUAGE_NEUTRAL), key
    assert not set(texts.TEXTS) & set(texts.ADMIN_TEXTS)  # text() looks a key up in both


def test_every_name_table_names_the_same_things_in_both_languages():
    for table in (texts.OUTCOMES, texts.STAGES, texts.RETAINED_KINDS, texts.DELETED_KINDS, texts.HELP):
        assert set(table) == {"en", "pt"}
    for table in (texts.OUTCOMES, texts.STAGES, texts.RETAINED_KINDS, texts.DELETED_KINDS):
        assert set(table["en"]) == set(table["pt"])
    for commands in (texts.PUBLIC_COMMANDS, texts.ADMIN_COMMANDS):
        assert [name for name, _ in commands["en"]] == [name for name, _ in commands["pt"]]


def test_loss_plot_reads_both_metric_formats_and_skips_bad_lines(tmp_path):
    assert latest_run(Home(tmp_path)) is None
    old, new = tmp_path / "runs" / "20250101-000000-aaaa", tmp_path / "runs" / "20250102-000000-bbbb"
    for run in (old, new):
        run.mkdir(parents=True)
    lines = [
        {"kind": "train", "step": 1, "loss": 3.0},
        {"step": 2, "train_loss": 2.5, "val_loss": 2.8},
        {"kind": "eval", "step": 2, "val_loss": 2.7},
        "not json",
        {"kind": "train"},
    ]
    (new / "metrics.jsonl").write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines))
    (old / "metrics.jsonl").write_text("")
    assert latest_run(Home(tmp_path)) == new
    assert read_losses(new) == ([(1, 3.0), (2, 2.5)], [(2, 2.8), (2, 2.7)])
    assert loss_plot(new).startswith(b"\x89PNG") and loss_plot(old) is None
