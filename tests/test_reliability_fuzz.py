"""Fuzzing with hypothesis: what users type, the callback data and command arguments they send, the
files the dataset builder reads and the adapter files the bot loads. No crash, a clear answer or
error every time, and nothing lost. Each target runs a fixed number of examples (EXAMPLES), printed
with `-s`.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.handlers.questions import FEEDBACK_PATTERN
from bot.splitting import TELEGRAM_LIMIT, utf16_len
from data.builder import SPLITS, build_dataset
from data.privacy import scrub
from data.settings import DataSettings
from data.store import MAX_CORRECTION_CHARS
from data.text import normalise
from inference.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterError, read_adapter

from .helpers import BOT_ADMIN

EXAMPLES = {
    "message text": 150,
    "callback data": 150,
    "command arguments": 100,
    "dataset builder": 80,
    "adapter files": 300,
}
FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
MAX_QUESTION = 1000
BOT_USERNAME = "farense_test_bot"
COMMAND = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")  # what Telegram marks as a command
HELP_START = ("Olá! Respondo a perguntas", "Hi! I answer questions")

# Telegram text: any Unicode scalar value (lone surrogates cannot travel in UTF-8), control
# characters included; Markdown/HTML specials, huge texts, empty and blank texts on purpose.
CHARS = st.characters(blacklist_categories=("Cs",))
SPECIAL = st.text(
    st.sampled_from(list("*_[]()~`>#+-=|{}.!<>&;\\\"'/@ \n\t\r\x00\u200b\u202e")), min_size=1, max_size=40
)
MARKUP = st.sampled_from(
    [
        "<b>bold</b>",
        "*bold* _it_ `code` [link](http://x.y)",
        "&amp; &lt;tag&gt;",
        "<a href='tg://user?id=1'>x</a>",
        "```\ncode\n```",
        "||spoiler||",
        "\\",
        "@",
        f"@{BOT_USERNAME}",
        f"@{BOT_USERNAME} ",
        "/",
        "/start",
        "/unknown_command x",
        "",
        " ",
        "\n\n",
        "\x00",
        "\u200b",
        "🦁" * 3000,
    ]
)
HUGE = st.builds(lambda piece, times: piece * times, st.text(CHARS, min_size=1, max_size=4), st.integers(300, 3000))
TEXTS = st.one_of(st.text(CHARS, max_size=80), SPECIAL, MARKUP, HUGE, st.builds("{} {}".format, MARKUP, SPECIAL))


@pytest.fixture
def fuzz_bot(roomy_server, start_bot):  # noqa: F811
    return start_bot(
        max_tokens=3, rate_limit_per_minute=100_000, updates_per_minute=100_000, max_question_chars=MAX_QUESTION
    )


def errors(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def expected_question(text: str) -> str | None:
    """What the bot must answer and log for this private message, or None when it is no question."""
    if not text or COMMAND.match(text):
        return None
    return re.sub(rf"@{BOT_USERNAME}\b", "", text, flags=re.I).strip()


def test_fuzz_message_text(fuzz_bot, caplog):
    bot, server, users = fuzz_bot, fuzz_bot.server, itertools.count(20_000)
    caplog.set_level(logging.WARNING)
    seen = {"answered": 0, "too long": 0, "help": 0, "command or nothing": 0}

    @settings(max_examples=EXAMPLES["message text"], **FUZZ)
    @given(TEXTS)
    def one(text: str) -> None:
        user = next(users)  # a fresh chat each time: no context to carry over
        before = bot.store.counts()["messages"]
        since = len(server.calls())
        server.push_message(user, user, text or None, language_code="en")
        bot.settle()
        calls = server.calls()[since:]
        replies = [c for c in calls if c.method == "sendMessage"]
        assert all(c.ok for c in calls), [c.summary() for c in calls if not c.ok]
        assert errors(caplog) == []
        question = expected_question(text)
        logged = bot.store.counts()["messages"] - before
        if question is None:
            seen["command or nothing"] += 1
            if text.split(maxsplit=1)[0:1] in (["/start"], ["/help"]):
                assert replies and replies[0].params["text"].startswith(HELP_START)
            assert logged == 0
            return
        if not question:
            seen["help"] += 1
            assert [c.params["text"][:22] for c in replies] == [HELP_START[1][:22]]
        elif len(question) > MAX_QUESTION:
            seen["too long"] += 1
            assert (
                len(replies) == 1
                and f"({len(question)} characters; the limit is {MAX_QUESTION})" in replies[0].params["text"]
            )
        else:
            seen["answered"] += 1
            final = [c for c in replies if "reply_markup" in c.params]
            assert len(final) == 1 and final[0].params["text"].strip()
            assert all(utf16_len(c.params["text"]) <= TELEGRAM_LIMIT for c in replies)
            row = bot.store.message_by_telegram_id(user, final[0].response["result"]["message_id"])
            assert row is not None and row.question == question and row.user_id == user  # stored intact
        assert logged == (1 if question and len(question) <= MAX_QUESTION else 0)  # logged once, or not at all

    one()
    print(f"\nmessage text: {sum(seen.values())} examples {seen}")
    assert sum(seen.values()) >= EXAMPLES["message text"] // 2 and seen["answered"] > 0


CALLBACK_DATA = st.one_of(
    st.text(CHARS, max_size=64).filter(lambda d: len(d.encode()) <= 64),
    st.builds("fb:{}:{}".format, st.integers(-5, 10**20), st.sampled_from(["up", "down", "UP", "", "up\n", "x"])),
    st.builds(
        "fb:{}:{}".format,
        st.text(st.characters(whitelist_categories=("Nd",)), min_size=1, max_size=3),
        st.sampled_from(["up", "down"]),
    ),
    st.sampled_from(["fb", "fb:", "fb::", "fb:1", "fb:1:", ":::", "fb:1:up:down", "status", "/rollback"]),
)


def test_fuzz_callback_data(fuzz_bot, caplog):
    bot, server = fuzz_bot, fuzz_bot.server
    caplog.set_level(logging.WARNING)
    USER, OTHER = 4242, 4343
    answers = {user: bot.ask(user, user, f"Pergunta de {user}?") for user in (USER, OTHER)}
    ids = {
        user: int(a.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
        for user, a in answers.items()
    }
    votes: dict[int, int] = {}  # what the store must hold: USER's own valid votes only
    count = itertools.count(1)

    @settings(max_examples=EXAMPLES["callback data"], **FUZZ)
    @given(CALLBACK_DATA, st.sampled_from([USER, OTHER]), st.booleans())
    def one(data: str, presser: int, name_a_real_message: bool) -> None:
        next(count)
        if name_a_real_message and data.startswith("fb:") and data.count(":") == 2:
            data = f"fb:{ids[USER]}:{data.split(':')[2]}"  # the forged kind that names a real answer
        on_message = answers[presser].response["result"]["message_id"]
        since = len(server.calls())
        query = server.push_callback_query(presser, presser, on_message, data)["callback_query"]["id"]
        bot.settle()
        answered = [c for c in server.calls()[since:] if c.method == "answerCallbackQuery"]
        assert [c.params["callback_query_id"] for c in answered] == [query] and answered[0].ok  # exactly once
        well_formed = re.match(FEEDBACK_PATTERN, data)
        own = well_formed and int(data.split(":")[1]) == ids[presser]
        if own:
            votes[presser] = 1 if data.endswith(":up") else -1
            assert "Thanks" in answered[0].params["text"] or "Obrigado" in answered[0].params["text"]
        elif well_formed:
            assert "Só quem fez a pergunta" in answered[0].params["text"]
        else:
            assert "text" not in answered[0].params  # a stale or forged button: the spinner stops, nothing else
        with bot.store._connection() as db:
            stored = dict(db.execute("SELECT user_id, value FROM feedback").fetchall())
        assert stored == votes
        assert errors(caplog) == []

    one()
    print(f"\ncallback data: {next(count) - 1} examples; votes stored {votes}")


ARGUMENTS = st.one_of(
    st.text(CHARS, max_size=60),
    SPECIAL,
    MARKUP,
    st.builds(lambda c, n: c * n, st.text(CHARS, min_size=1, max_size=3), st.integers(1000, 2500)),
)


def test_fuzz_command_arguments(fuzz_bot, caplog):
    bot, server = fuzz_bot, fuzz_bot.server
    caplog.set_level(logging.WARNING)
    ASKER, GROUP, SOMEONE = 4242, -100777, 4444
    server.push_message(GROUP, BOT_ADMIN, "olá", chat_type="group")
    answer = bot.ask(GROUP, ASKER, f"@{BOT_USERNAME} Quem fundou o Farense?", chat_type="group")
    target = server.sent_messages(GROUP)[-1]
    message_id = int(answer.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
    count = itertools.count(1)

    @settings(max_examples=EXAMPLES["command arguments"], **FUZZ)
    @given(
        st.sampled_from(["correct", "forget", "start", "help", "reset", "optout", "optin", "status", "rollback"]),
        st.sampled_from([" ", "\n", "  ", "\t"]),
        ARGUMENTS,
        st.sampled_from([BOT_ADMIN, SOMEONE]),
    )
    def one(name: str, separator: str, argument: str, sender: int) -> None:
        next(count)
        text = f"/{name}{separator}{argument}"
        if name == "correct":  # an admin's fix goes in reply to the answer
            chat, extra = GROUP, {"reply_to_message": target, "chat_type": "group"}
        else:
            chat, extra = sender, {}
        corrections = bot.store.counts()["corrections"]
        since = len(server.calls())
        server.push_message(chat, sender, text, language_code="en", **extra)
        bot.settle()
        replies = [c.params["text"] for c in server.calls()[since:] if c.method == "sendMessage" and c.ok]
        assert len(replies) == 1, replies  # every command answers exactly once, whatever follows it
        assert errors(caplog) == []
        reply = replies[0]
        if name in ("correct", "status", "rollback") and sender != BOT_ADMIN:
            assert reply == "Sorry, that command is only for the bot's administrators."
        elif name == "correct":
            fix = text.split(maxsplit=1)[1].strip() if len(text.split(maxsplit=1)) > 1 else ""
            if not fix:
                assert reply.startswith("Reply to one of my answers with /correct")
            elif len(fix) > MAX_CORRECTION_CHARS:
                assert reply.startswith(f"Correction not saved: a correction is limited to {MAX_CORRECTION_CHARS}")
            else:
                assert reply.startswith("Correction saved")
                with bot.store._connection() as db:
                    stored = db.execute("SELECT message_id, text FROM corrections ORDER BY id DESC LIMIT 1").fetchone()
                assert stored == (message_id, fix) and bot.store.counts()["corrections"] == corrections + 1
                return
        elif name == "forget":  # an admin's /forget takes the corrections they wrote along (their data)
            assert reply.startswith(("Deleted everything stored about you", "There was nothing stored"))
            return
        elif name == "status":
            assert reply.startswith("Model:")
        assert bot.store.counts()["corrections"] == corrections

    one()
    print(f"\ncommand arguments: {next(count) - 1} examples")


# --- the dataset builder -----------------------------------------------------------------------

PAIR_TEXT = st.text(CHARS, min_size=1, max_size=40).filter(lambda t: t.strip())
VALID = st.one_of(
    st.builds(lambda q, a: {"question": q, "answer": a}, PAIR_TEXT, PAIR_TEXT),
    st.builds(
        lambda q, a: {
            "messages": [
                {"role": "system", "content": "x"},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        },
        PAIR_TEXT,
        PAIR_TEXT,
    ),
    st.sampled_from(
        [
            {"question": "Who founded Farense?", "answer": "Founded in 1910."},  # duplicates
            {"question": "WHO  founded farense?", "answer": "founded in 1910."},
            {"question": "Call me on 912 345 678?", "answer": "Write to ana@example.pt."},
        ]
    ),
)


def _not_blank_line(data: bytes) -> bool:
    """A line the reader must report (blank lines, Unicode whitespace included, are just skipped)."""
    if b"\n" in data or data.startswith(b"\xef\xbb\xbf"):
        return False
    try:
        return bool(data.decode("utf-8").strip()) and not _is_pair(data)
    except UnicodeDecodeError:
        return True


def _is_pair(data: bytes) -> bool:  # random bytes that happen to be a good record are not "bad"
    try:
        record = json.loads(data)
    except ValueError:
        return False
    return isinstance(record, dict) and ("question" in record or "messages" in record)


INVALID = st.one_of(
    st.sampled_from(
        [
            b"{",
            b"[1, 2]",
            b"null",
            b'"text"',
            b"{}",
            b'{"question": "q"}',
            b'{"question": " ", "answer": "a"}',
            b'{"question": 1, "answer": "a"}',
            b'{"messages": []}',
            b'{"messages": "x"}',
            b'{"messages": [{"role": "user", "content": "q"}]}',
            b'{"question": "q\\ud800", "answer": "a"}',
            b'{"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            b"\xff\xfe garbage",
            b'{"question": "q", "answer": "a"',
            b"\x00",
        ]
    ),
    st.binary(min_size=1, max_size=30).filter(_not_blank_line),
)


def test_fuzz_dataset_builder(tmp_path):
    from data.curation import instructs_the_model

    from .helpers import seed_pairs
    from .helpers import write_qa_seed as write_qa

    seed = write_qa(tmp_path / "seed", seed_pairs(4))
    runs = itertools.count(1)

    @settings(max_examples=EXAMPLES["dataset builder"], **FUZZ)
    @given(
        st.lists(
            st.one_of(VALID.map(lambda r: ("ok", r)), INVALID.map(lambda b: ("bad", b)), st.just(("blank", b"   "))),
            max_size=25,
        )
    )
    def one(lines: list) -> None:
        number = next(runs)
        extra = tmp_path / f"extra-{number}.jsonl"
        raw = [
            json.dumps(item, ensure_ascii=bool(number % 2)).encode() if kind == "ok" else item for kind, item in lines
        ]
        extra.write_bytes(b"\n".join(raw) + b"\n")
        settings_ = DataSettings.load(farense_home=tmp_path / f"home-{number}", seed_dir=seed)
        build = build_dataset(settings_, extra_jsonl=[extra])  # never raises: the seed alone is enough
        manifest = build.manifest
        valid = [item for kind, item in lines if kind == "ok"]
        reported = {p["line"] for p in manifest["problems"] if Path(p["file"]).name == extra.name}
        bad_lines = {n for n, (kind, _) in enumerate(lines, start=1) if kind == "bad"}
        assert reported == bad_lines  # every bad line reported with its place, no good one
        assert all(p["reason"] for p in manifest["problems"])
        outputs = []
        for name in SPLITS:  # every line written parses as a chat record
            for text in (build.path / f"{name}.jsonl").read_text(encoding="utf-8").split("\n")[:-1]:  # not at U+2028
                messages = json.loads(text)["messages"]
                outputs.append((normalise(messages[0]["content"]), normalise(messages[1]["content"])))
        assert len(outputs) == len(set(outputs)) == sum(manifest["sources"].values())
        kept_or_dropped = (
            sum(manifest["sources"].values()) + manifest["dropped"]["duplicates"] + manifest["dropped"]["instructions"]
        )
        assert kept_or_dropped == len(valid) + 4  # nothing lost: kept, or counted as dropped and why
        for record in valid:  # each valid pair is in the dataset (scrubbed of personal data)
            if "messages" in record:
                question, answer = record["messages"][1]["content"], record["messages"][2]["content"]
            else:
                question, answer = record["question"], record["answer"]
            if not instructs_the_model(question):  # those are withheld, and counted above
                assert (normalise(scrub(question)), normalise(scrub(answer))) in outputs

    one()
    print(f"\ndataset builder: {next(runs) - 1} examples")


# --- adapter files -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
TENSOR = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", 3]),
        "shape": st.one_of(st.lists(st.integers(-2, 70), max_size=3), JSON),
        "data_offsets": st.one_of(st.lists(st.integers(-5, 5000), min_size=2, max_size=2), JSON),
    }
)
HEADER = st.one_of(
    JSON,
    st.dictionaries(
        st.sampled_from(["a.lora_a", "b.lora_b", "c.weight", "__metadata__"]), st.one_of(TENSOR, JSON), max_size=3
    ),
)
CONFIG = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "num_layers": st.one_of(st.integers(-2, 4), JSON),
            "fine_tune_type": st.sampled_from(["lora", "dora", 5]),
            "lora_parameters": st.one_of(
                JSON,
                st.fixed_dictionaries(
                    {
                        "rank": st.one_of(st.integers(-1, 8), JSON),
                        "scale": st.one_of(st.floats(), JSON),
                        "keys": st.one_of(st.none(), JSON),
                    }
                ),
            ),
        }
    ),
)


def _damage(data: bytes, at: int, cut: bool, patch: bytes) -> bytes:
    """A real file truncated at `at`, or with `patch` written over it there."""
    at = at % (len(data) + 1)
    return data[:at] if cut else data[:at] + patch + data[at + len(patch) :]


def test_fuzz_adapter_files(tmp_path, tiny_model_dir):
    from .models import make_adapter

    real = make_adapter(tiny_model_dir, tmp_path / "real")
    real_weights, real_config = (real / WEIGHTS_FILE).read_bytes(), (real / CONFIG_FILE).read_text()
    folder = tmp_path / "adapter"
    folder.mkdir()
    outcomes = {"refused": 0, "accepted": 0}

    @settings(max_examples=EXAMPLES["adapter files"], **FUZZ)
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.builds(
                lambda header, pad, declared: (
                    struct.pack("<Q", len(header) if declared is None else declared) + header + pad
                ),
                HEADER.map(lambda h: json.dumps(h).encode()),
                st.binary(max_size=64),
                st.none() | st.integers(0, 2**64 - 1),
            ),
            st.builds(
                _damage, st.just(real_weights), st.integers(0, 2**31), st.booleans(), st.binary(min_size=1, max_size=8)
            ),
        ),
        st.one_of(
            CONFIG.map(json.dumps),
            st.text(max_size=30),
            st.just(real_config),
            st.builds(
                lambda at, cut, patch: _damage(real_config.encode(), at, cut, patch).decode("utf-8", "replace"),
                st.integers(0, 400),
                st.booleans(),
                st.binary(min_size=1, max_size=4),
            ),
        ),
    )
    def one(weights: bytes, config: str) -> None:
        (folder / WEIGHTS_FILE).write_bytes(weights)
        (folder / CONFIG_FILE).write_text(config, encoding="utf-8", errors="surrogatepass")
        try:
            adapter = read_adapter(folder)
        except AdapterError as error:  # the only way to say no: one clear message naming the folder
            assert str(folder) in str(error) and "\n" not in str(error)
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1  # well-formed: shapes are known and every tensor lies inside the file
        assert adapter.spec.rank >= 1 and adapter.spec.num_layers >= 1
        assert all(name.endswith((".lora_a", ".lora_b")) for name in adapter.shapes)

    one()
    print(f"\nadapter files: {sum(outcomes.values())} examples {outcomes}")
    assert outcomes["refused"] > 0


def test_an_empty_answer_stays_a_logged_message_that_an_admin_can_correct(fuzz_bot):
    """Found by the message fuzzer: an answer the model left empty was read back as a corrupt row,
    so /correct on exactly the answers that most need it said "reply to one of my answers"."""
    from inference.engine import Chunk, Generation

    bot, server, group, asker = fuzz_bot, fuzz_bot.server, -100777, 4242

    def silent(messages, **kwargs):  # the model, ending at once
        yield Chunk("", Generation("", 10, 1, 0.1, 0.1, "stop", "tiny-llama", None))

    server.push_message(group, BOT_ADMIN, "olá", chat_type="group")
    bot.engine.stream = silent
    # Ungrounded (as with GROUNDING=false): with facts, the faithfulness guard would send the best one.
    bot.services.conversations.index = None
    final = bot.ask(group, asker, f"@{BOT_USERNAME} Quando foi fundado o Farense?", chat_type="group")
    assert final.params["text"] == "(Não tenho resposta para isso.)"
    row = bot.store.message_by_telegram_id(group, final.response["result"]["message_id"])
    assert row is not None and row.answer == ""
    since = len(server.calls())
    server.push_message(
        group,
        BOT_ADMIN,
        "/correct Foi fundado em 1910.",
        chat_type="group",
        reply_to_message=server.sent_messages(group)[-1],
        language_code="en",
    )
    bot.settle()
    replies = [c.params["text"] for c in server.calls()[since:] if c.method == "sendMessage"]
    assert len(replies) == 1 and replies[0].startswith(
        "Correction saved — it will be used in the next training run.\nFact #"
    )  # and a new fact
    assert [(e.question, e.answer) for e in bot.store.curated_examples()] == [
        ("Quando foi fundado o Farense?", "Foi fundado em 1910.")
    ]
