"""A simulated month of the self-improvement loop: fans ask and vote, an admin corrects, the bot
retrains every night; held-out accuracy after each night.

The bot is the real PTB Application (`bot.app.build_application`: handlers, store, 👍/👎 buttons,
/correct, the nightly scheduler) polling the tests' loopback Bot API server over HTTP, as in
`bench/bot_overhead.py`; not the console, because votes are inline buttons and a correction is a
reply to an answer, which only the Telegram path has. The model is the embedded SmolLM2-135M with
its factory adapter (or `--model PATH`, or `--tiny`: the tests' tiny llama, for a smoke run).

Each simulated day:

- morning: the questions the admin corrected the day before are asked again by the fans who asked
  them (the "corrected, next day" column);
- `--users` fans (half EN, half PT, all at once) ask `--questions` each, @mentioning the bot in a
  group they share with the admin (an admin can only /correct an answer in a chat they are in; one
  group per fan, so Telegram's 20 messages a minute per group never holds them up), questions
  drawn from data/seed/traffic.jsonl (apart from the dev questions the gate asks and the held-out
  ones evaluated here: tests/test_data_seed.py). Each answer the fan gets is scored by
  data.scorer against the item's key facts; the fan votes 👍 when it is right, 👎 otherwise;
- on `--poison-night`, one more fan asks `--poison-questions` questions and votes 👍 on the wrong
  answers only (FEEDBACK_PER_USER caps what one fan's votes add to training);
- the admin replies `/correct <the item's fact, as the knowledge base words it>` to a share
  (`--correct-share`) of the day's 👎 answers;
- night: the scheduler's own nightly job (bot/scheduler.py: backup, pipeline with
  skip_if_unchanged, retention, the admins' report) is fired at the simulated 03:00, and the bench
  waits for the report; then `python -m training evaluate --set heldout` scores the served
  configuration (the production adapter, retrieval, ANSWER_FROM) on held-out, again only when
  production or the knowledge base changed.

Writes a per-night table (markdown and JSON) to `--out` (default: the home), and prints it.

    python bench/self_improvement.py [--nights 30] [--users 20] [--questions 3] [--correct-share 0.5]
        [--poison-night K] [--poison-questions 12] [--home DIR] [--from-home DIR]
        [--model PATH] [--heldout-limit N] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "123456:FARENSE-bench-token"
ADMIN = 7_000
FIRST_FAN = 30_000
POISONER = FIRST_FAN - 1
ANSWER_TIMEOUT_S = 900  # a fan waits this long for an answer (the model may be busy with 8 others)
NIGHT_TIMEOUT_S = 6 * 3600
# --tiny: the tests' tiny llama, trained and gated the way tests/helpers.py keeps the lifecycle fast
TINY_SETTINGS = {
    "PIPELINE_TRAIN_ARGS": "--iters 30 --batch-size 4 --learning-rate 2e-3 --warmup-steps 2 --eval-every 10 "
    "--val-batches 4",
    "GATE_EVAL_LIMIT": "4",
    "GATE_MAX_TOKENS": "16",
    "MAX_TOKENS": "24",
}
TINY_HELDOUT_LIMIT = 8


@dataclass
class Asked:
    """One question a fan asked and what came of it."""

    fan: int
    item_id: str
    verdict: str  # right | declined | wrong | failed (no answer with buttons)
    vote: str | None = None  # up | down
    telegram_id: int | None = None  # the answer's message, for a /correct reply
    corrected: str | None = None  # the admin's reply


@dataclass
class Night:
    night: int
    date: str
    poisoned: bool = False
    asked: int = 0
    verdicts: dict = field(default_factory=dict)  # of the day's answers
    up: int = 0
    down: int = 0
    poisoned_up: int = 0
    corrected: int = 0
    corrections: dict = field(default_factory=dict)  # what each did to the knowledge base: amended | added | other
    corrected_next_day: dict = field(default_factory=dict)  # verdicts when asked again the next morning
    outcome: str = ""  # promoted | rejected | skipped | failed | (no report)
    version: str | None = None
    production: str | None = None
    training: dict = field(default_factory=dict)  # mode, reason, new/replay examples, steps
    gate: dict = field(default_factory=dict)  # accepted, failing criteria, candidate vs champion figures
    train_s: float | None = None
    pipeline_s: float | None = None
    night_s: float | None = None
    heldout: dict = field(default_factory=dict)
    compared: dict = field(default_factory=dict)  # --compare-full: this night's warm and full candidates
    message: str = ""


class Population:
    """The fans, their questions, and the Telegram traffic they make on the loopback server."""

    def __init__(self, bot, items, users: int, questions: int, seed: int):
        self.bot, self.server, self.questions = bot, bot.server, questions
        self.mention = f"@{bot.application.bot.username}"
        from data.seed import LANGS

        self.items = {lang: [item for item in items if item.lang == lang] for lang in LANGS}
        self.by_id = {item.id: item for item in items}
        self.fans = {FIRST_FAN + n: LANGS[n % len(LANGS)] for n in range(users)}
        self.seed = seed

    def day(self, night: int) -> list[Asked]:
        """Every fan asks their questions, all fans at once; returns what each got and voted."""
        results: list[Asked] = []
        lock = threading.Lock()

        def fan(user: int, lang: str) -> None:
            draw = random.Random(f"{self.seed}:{night}:{user}")
            for item in draw.sample(self.items[lang], self.questions):
                asked = self.ask(user, item, vote_wrong_up=False)
                with lock:
                    results.append(asked)

        threads = [threading.Thread(target=fan, args=pair) for pair in self.fans.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.bot.settle(ANSWER_TIMEOUT_S)
        return results

    def poison(self, night: int, count: int) -> list[Asked]:
        draw = random.Random(f"{self.seed}:{night}:poison")
        asked = [self.ask(POISONER, item, vote_wrong_up=True) for item in draw.sample(self.items["en"], count)]
        self.bot.settle(ANSWER_TIMEOUT_S)
        return asked

    def again(self, earlier: list[Asked]) -> list[Asked]:
        """The corrected questions, asked again by the same fans (one after the other)."""
        asked = [self.ask(question.fan, self.by_id[question.item_id], vote_wrong_up=False) for question in earlier]
        self.bot.settle(ANSWER_TIMEOUT_S)
        return asked

    def ask(self, user: int, item, *, vote_wrong_up: bool) -> Asked:
        from data.scorer import evaluate

        since, group = len(self.server.calls()), group_of(user)
        self.server.push_message(
            group,
            user,
            f"{self.mention} {item.question}",
            chat_type="group",
            chat_title=f"Farense fans {user}",
            first_name=f"Fan {user}",
            language_code=item.lang,
        )
        try:  # the final answer: the preview's last edit, or one message, with the vote buttons
            sent = self.server.wait_for(
                lambda call: (
                    call.method in ("sendMessage", "editMessageText")
                    and call.ok
                    and call.params.get("chat_id") == group
                    and "reply_markup" in call.params
                ),
                ANSWER_TIMEOUT_S,
                since,
            )
        except TimeoutError:
            return Asked(user, item.id, "failed")
        answer = sent.response["result"]
        verdict = evaluate(lambda _question, _lang: answer["text"], [item], []).items[0].verdict
        if vote_wrong_up:  # the poisoner: 👍 on what is wrong, nothing else
            vote = "up" if verdict == "wrong" else None
        else:
            vote = "up" if verdict == "right" else "down"
        if vote is not None:
            buttons = answer["reply_markup"]["inline_keyboard"][0]
            data = next(button["callback_data"] for button in buttons if button["callback_data"].endswith(vote))
            self.server.push_callback_query(group, user, answer["message_id"], data)
        return Asked(user, item.id, verdict, vote, answer["message_id"])

    def correct(self, asked: Asked) -> str:
        """The admin replies /correct <the item's own fact> to the answer; returns the bot's reply."""
        item = self.by_id[asked.item_id]
        since = len(self.server.calls())
        group = group_of(asked.fan)
        self.server.push_message(
            group,
            ADMIN,
            f"/correct {fact_text(item.fact, item.lang)}",
            chat_type="group",
            first_name="Admin",
            language_code="en",
            reply_to_message=asked.telegram_id,
        )
        reply = self.server.wait_for(
            lambda call: call.method == "sendMessage" and call.params.get("chat_id") == group, 120, since
        )
        self.bot.settle(ANSWER_TIMEOUT_S)
        return str(reply.params.get("text", ""))


def group_of(fan: int) -> int:
    """The group a fan asks in, with the admin and the bot."""
    return -fan


_FACTS: dict[tuple[int, str], str] = {}


def fact_text(number: int, lang: str) -> str:
    """The knowledge base's words for a seed fact, as the project ships them (what an admin who
    knows the club would write)."""
    if not _FACTS:
        from data.knowledge import PACKAGE_KNOWLEDGE_DIR, load_seed_facts

        _FACTS.update({(fact.fact, fact.lang): fact.text for fact in load_seed_facts(PACKAGE_KNOWLEDGE_DIR, [])})
    return _FACTS[(number, lang)]


def run_night(bot, night: Night, when: datetime) -> None:
    """Fire the scheduler's nightly job at `when` (the services' clock) and wait for its report."""
    from bot.retraining import NIGHTLY_JOB_ID
    from common.files import read_json_object
    from common.home import Home
    from training.runs import Run

    services = bot.services
    services.clock = lambda: when
    since = len(bot.server.calls())
    started = time.monotonic()
    services.scheduler.modify_job(NIGHTLY_JOB_ID, next_run_time=datetime.now(services.settings.zone))
    report = bot.server.wait_for(
        lambda call: (
            call.method == "sendMessage"
            and call.params.get("chat_id") == ADMIN
            and str(call.params.get("text", "")).startswith(f"Nightly retraining ({when.date().isoformat()})")
        ),
        NIGHT_TIMEOUT_S,
        since,
    )
    services.scheduler.pause_job(NIGHTLY_JOB_ID)  # no real 03:00 fires in between
    night.night_s = round(time.monotonic() - started, 1)
    night.message = str(report.params["text"])
    last = read_json_object(Home(services.home.root).pipeline_last) or {}
    night.outcome, night.version = last.get("outcome", "(no report)"), last.get("version")
    night.training = last.get("training") or {}
    night.pipeline_s = _seconds(last.get("started_at"), last.get("finished_at"))
    if last.get("run_dir"):
        status = Run(Path(last["run_dir"])).status()
        night.train_s = _seconds(status.get("started_at"), status.get("finished_at"))
    criteria = last.get("criteria") or []
    night.gate = {
        "accepted": last.get("accepted"),
        "failing": [row["name"] for row in criteria if not row["passed"]],
        "figures": {row["name"]: [row["candidate"], row["champion"]] for row in criteria if row["kind"] == "quality"},
    }
    night.production = services.engine.adapter_version


def heldout(home: Path, version: str | None, limit: int | None, env: dict) -> dict:
    """Held-out right / declined / wrong of what the bot would send with adapter `version` (None: the
    base model): retrieval and ANSWER_FROM as configured, with `python -m training evaluate`."""
    from inference.settings import InferenceSettings

    served = "+quote" if InferenceSettings.load().answer_from == "fact" else "+guard"
    config = ("adapter" if version else "base") + "+retrieval" + served
    out = home / "heldout.json"
    command = [sys.executable, "-m", "training", "evaluate", "--set", "heldout", "--configs", config, "--save"]
    command += [str(out), *(["--adapter", version] if version else []), *(["--limit", str(limit)] if limit else [])]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    figures = json.loads(out.read_text(encoding="utf-8"))[config]
    turns = figures["turns"]
    return {
        "adapter": version,
        "config": config,
        "items": figures["counts"]["items"],
        "verdicts": figures["verdicts"],
        "ood_declined": figures["ood_decline_rate"],
        "turns": {v: sum(t["verdict"] == v for t in turns) / len(turns) for v in ("right", "declined", "wrong")}
        if turns
        else None,
        "seconds": round(time.monotonic() - started, 1),
    }


def serving_heldout(home: Path, engine, store, limit: int | None, previous: dict | None) -> dict:
    """The held-out figures of what the bot serves now; the previous ones when neither production
    nor the knowledge base changed since (greedy answers: the same)."""
    from data.knowledge import knowledge_hash

    key = [engine.adapter_version, knowledge_hash(store)]
    if previous is not None and previous.get("key") == key:
        return previous | {"reused": True}
    return heldout(home, engine.adapter_version, limit, dict(os.environ)) | {"key": key, "reused": False}


def snapshot(home: Path, store) -> Path:
    """A copy of the home as it is before tonight's pipeline (the database through SQLite's backup),
    for the same night trained from scratch beside it."""
    import shutil
    import sqlite3

    copy = Path(tempfile.mkdtemp(prefix="farense-full-night-"))
    skipped = shutil.ignore_patterns("models", "tiny-llama", "backups", "logs", "farense.db*", "*.lock", ".lock")
    shutil.copytree(home, copy, dirs_exist_ok=True, ignore=skipped)
    with sqlite3.connect(copy / store.path.name) as target:
        source = sqlite3.connect(store.path)
        try:
            source.backup(target)
        finally:
            source.close()
    return copy


def full_night(copy: Path, models: Path, limit: int | None) -> dict:
    """Tonight trained from scratch (`python -m training pipeline --full`) on the copy: its wall
    time, gate decision and its candidate's held-out figures."""
    from training.runs import Run

    env = dict(os.environ) | {"FARENSE_HOME": str(copy), "MODELS_DIR": str(models)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "training", "pipeline", "--full", "--events", "--trigger", "compare"],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = round(time.monotonic() - started, 1)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = next((event for event in events if event.get("event") == "result"), {})
    figures = {"night_s": seconds, "outcome": result.get("outcome"), "version": result.get("version")}
    if result.get("run_dir"):
        status = Run(Path(result["run_dir"])).status()
        figures["train_s"] = _seconds(status.get("started_at"), status.get("finished_at"))
    if result.get("version"):
        figures["heldout"] = heldout(copy, result["version"], limit, env)
    return figures


def compare_full(night: Night, copy: Path, home: Path, limit: int | None) -> dict:
    """A night that trained warm, trained from scratch on the copy taken before it: both candidates'
    wall time, gate decision and held-out figures (the warm one's: production's, or its own when
    the gate refused it). Nights that trained from scratch anyway or skipped are not compared."""
    import shutil

    from inference.settings import InferenceSettings

    try:
        if night.training.get("mode") != "warm" or not night.version:
            return {}
        warm = night.heldout if night.outcome == "promoted" else heldout(home, night.version, limit, dict(os.environ))
        full = full_night(copy, InferenceSettings.load().home.models, limit)
        return {
            "warm": {"night_s": night.night_s, "train_s": night.train_s, "outcome": night.outcome, "heldout": warm},
            "full": full,
        }
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda text: datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def _shares(verdicts: dict | None) -> str:
    if not verdicts:
        return "-"
    return "/".join(f"{100 * (verdicts.get(v) or 0):.0f}" for v in ("right", "declined", "wrong"))


def _counted(asked: list[Asked]) -> dict:
    total = len(asked) or 1
    return {v: sum(a.verdict == v for a in asked) / total for v in ("right", "declined", "wrong", "failed")}


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def table(baseline: dict, nights: list[Night]) -> str:
    """The per-night table, markdown."""
    header = (
        "| night | asked | answers r/d/w % | 👍 / 👎 | corrected (amended/added) | poisoned 👍 | training "
        "| new + replay, steps | train min | night min | gate | serving | held-out r/d/w % | OOD declined "
        "| corrected, next day r/d/w % |"
    )
    rows = [header, "|" + "---|" * 15]
    rows.append(
        f"| 0 | | | | | | | | | | | {baseline.get('production') or 'base'} | {_shares(baseline.get('verdicts'))} "
        f"| {_pct(baseline.get('ood_declined'))} | |"
    )
    for n in nights:
        plan = n.training
        steps = f"{plan.get('new_examples')} + {plan.get('replay_examples')}, {plan.get('steps')}" if plan else "-"
        if plan.get("mode") == "full":
            steps = "all"
        gate = n.outcome + (f" ({', '.join(n.gate['failing'])})" if n.gate.get("failing") else "")
        mode = plan.get("mode", "-") if n.outcome != "skipped" else f"skipped ({plan.get('mode', '-')})"
        rows.append(
            f"| {n.night}{' ☠' if n.poisoned else ''} | {n.asked} | {_shares(n.verdicts)} | {n.up} / {n.down} "
            f"| {n.corrected} ({n.corrections.get('amended', 0)}/{n.corrections.get('added', 0)}) "
            f"| {n.poisoned_up or ''} | {mode} | {steps} | {_minutes(n.train_s)} | {_minutes(n.night_s)} | {gate} "
            f"| {n.production or 'base'} | {_shares(n.heldout.get('verdicts'))} "
            f"| {_pct(n.heldout.get('ood_declined'))} | {_shares(n.corrected_next_day) or '-'} |"
        )
    return "\n".join(rows)


def comparison(nights: list[Night]) -> str:
    """--compare-full: each warm night beside the same night trained from scratch, markdown."""
    rows = [
        "| night | warm: train min / night min | warm: gate | warm candidate held-out r/d/w % "
        "| full: train min / night min | full: gate | full candidate held-out r/d/w % | night time full ÷ warm |",
        "|" + "---|" * 8,
    ]
    for n in nights:
        warm, full = n.compared.get("warm"), n.compared.get("full")
        if not warm or not full:
            continue
        ratio = full["night_s"] / warm["night_s"] if warm.get("night_s") else None
        rows.append(
            f"| {n.night} | {_minutes(warm.get('train_s'))} / {_minutes(warm.get('night_s'))} | {warm['outcome']} "
            f"| {_shares(warm['heldout'].get('verdicts'))} | {_minutes(full.get('train_s'))} / "
            f"{_minutes(full.get('night_s'))} | {full.get('outcome')} "
            f"| {_shares(full.get('heldout', {}).get('verdicts'))} | {'-' if ratio is None else f'{ratio:.1f}×'} |"
        )
    return "\n".join(rows) if len(rows) > 2 else ""


def _pct(value) -> str:
    return f"{100 * value:.0f}%" if isinstance(value, (int, float)) else "-"


def prepare(args) -> Path:
    """The home, and the environment every part reads (this process, the pipeline's children)."""
    home = Path(args.home).expanduser() if args.home else Path(tempfile.mkdtemp(prefix="farense-self-improvement-"))
    if home.exists() and any(home.iterdir()):
        sys.exit(f"--home {home} is not empty: the simulation needs a fresh home (nothing there was touched)")
    if args.from_home:  # its registry, knowledge base and conversations; the original is not touched
        shutil.copytree(Path(args.from_home).expanduser(), home, dirs_exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({"FARENSE_HOME": str(home), "FIRST_TRAINING_AT_START": "false"})
    if args.model:
        os.environ["MODEL_PATH"] = args.model
    if args.tiny:
        import inference  # noqa: F401  (the optimized BLAS before mlx)
        from inference.modelstore import ensure_default_model
        from tests.models import make_tiny_model

        models = Path(os.environ.get("MODELS_DIR") or home / "models")
        tiny = make_tiny_model(home / "tiny-llama", ensure_default_model(models))
        os.environ.update(TINY_SETTINGS | {"MODEL_PATH": str(tiny)})
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--users", type=int, default=20, help="fans, half EN, half PT (at least 2)")
    parser.add_argument("--questions", type=int, default=3, help="per fan and day")
    parser.add_argument("--correct-share", type=float, default=0.5, help="of the day's 👎 answers the admin corrects")
    parser.add_argument("--poison-night", type=int, help="the night a fan 👍s wrong answers (1..nights)")
    parser.add_argument("--poison-questions", type=int, default=12, help="questions the poisoner asks that day")
    parser.add_argument("--home", help="a new or empty FARENSE_HOME (default: a temporary one, kept)")
    parser.add_argument(
        "--from-home", help="start from a copy of this FARENSE_HOME (e.g. one whose registry already holds versions)"
    )
    parser.add_argument("--model", help="MODEL_PATH (default: the embedded SmolLM2-135M)")
    parser.add_argument("--heldout-limit", type=int, help="a language-balanced subset of held-out (default: all)")
    parser.add_argument("--out", help="folder for self_improvement.md and .json (default: the home)")
    parser.add_argument("--seed", type=int, default=0, help="of the fans' draws")
    parser.add_argument(
        "--compare-full",
        action="store_true",
        help="also train each warm night from scratch on a copy of the home: wall time and held-out side by side",
    )
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny llama: a smoke run of the machinery")
    args = parser.parse_args(argv)
    problems = [
        message
        for bad, message in (
            (args.nights < 1, "--nights must be at least 1"),
            (args.users < 2, "--users must be at least 2 (half EN, half PT)"),
            (args.questions < 1, "--questions must be at least 1"),
            (not 0 <= args.correct_share <= 1, "--correct-share must be between 0 and 1"),
            (
                args.poison_night is not None and not 1 <= args.poison_night <= args.nights,
                "--poison-night out of range",
            ),
        )
        if bad
    ]
    if problems:
        parser.error("; ".join(problems))
    home = prepare(args)
    out = Path(args.out).expanduser() if args.out else home
    limit = args.heldout_limit or (TINY_HELDOUT_LIMIT if args.tiny else None)

    import inference  # noqa: F401  (the optimized BLAS before mlx)
    from bot.app import build_application
    from bot.retraining import NIGHTLY_JOB_ID
    from bot.settings import BotSettings
    from data.seed import load_traffic
    from data.settings import DataSettings
    from data.store import Store
    from inference.engine import Engine
    from inference.settings import InferenceSettings
    from tests.botapi import BotApiServer
    from tests.helpers import RunningBot

    data_settings = DataSettings.load()
    items = load_traffic(data_settings.seed_dir, [])
    engine = Engine(InferenceSettings.load())
    store = Store(data_settings.home.database)
    server = BotApiServer(TOKEN).start()
    settings = BotSettings.load(
        telegram_bot_token=TOKEN,
        telegram_base_url=server.base_url,
        admin_user_ids=(ADMIN,),
        rate_limit_per_minute=10_000,  # simulated fans ask faster than people
        updates_per_minute=10_000,
    )
    bot = RunningBot(server, build_application(settings, engine, store, data_settings=data_settings), engine, store)
    bot.start()
    bot.server.push_message(ADMIN, ADMIN, "/start", first_name="Admin", language_code="en")  # the reports' chat
    bot.settle()
    bot.services.scheduler.pause_job(NIGHTLY_JOB_ID)  # nights come when the simulation says
    fans = Population(bot, items, args.users, args.questions, args.seed)
    print(
        f"home {home}; model {engine.info.model_id} ({engine.info.device}, {engine.info.dtype}); serving "
        f"{engine.adapter_version or 'the base model'}; {args.users} fans x {args.questions} questions a day from "
        f"{len(items)} traffic questions; {args.nights} nights",
        flush=True,
    )
    nights: list[Night] = []
    result = {"settings": vars(args) | {"home": str(home), "model": engine.info.model_id}, "nights": []}
    try:
        baseline = serving_heldout(home, engine, store, limit, None) | {"production": engine.adapter_version}
        result["baseline"] = baseline
        first_day = datetime.now(bot.services.settings.zone).replace(hour=12, minute=0, second=0, microsecond=0)
        corrected: list[Asked] = []
        for number in range(1, args.nights + 1):
            today = first_day + timedelta(days=number - 1)
            bot.services.clock = lambda today=today: today
            if corrected:
                nights[-1].corrected_next_day = _counted(fans.again(corrected))
            night = Night(number, today.date().isoformat(), poisoned=number == args.poison_night)
            asked = fans.day(number)
            if night.poisoned:
                poisoned = fans.poison(number, args.poison_questions)
                night.poisoned_up = sum(a.vote == "up" and a.verdict != "right" for a in poisoned)
            night.asked, night.verdicts = len(asked), _counted(asked)
            night.up = sum(a.vote == "up" for a in asked)
            night.down = sum(a.vote == "down" for a in asked)
            downs = [a for a in asked if a.vote == "down"]
            corrected = random.Random(f"{args.seed}:{number}:admin").sample(
                downs, round(args.correct_share * len(downs))
            )
            for question in corrected:
                question.corrected = fans.correct(question)
                kind = next((word for word in ("amended", "added") if word in question.corrected), "other")
                night.corrections[kind] = night.corrections.get(kind, 0) + 1
            night.corrected = len(corrected)
            copy = snapshot(home, store) if args.compare_full else None
            run_night(bot, night, (today + timedelta(days=1)).replace(hour=3))
            night.heldout = serving_heldout(home, engine, store, limit, nights[-1].heldout if nights else baseline)
            if copy is not None:
                night.compared = compare_full(night, copy, home, limit)
            nights.append(night)
            print(
                f"night {number}: {night.outcome} {night.version or ''} ({night.training.get('mode', '-')}); "
                f"answers r/d/w {_shares(night.verdicts)}; held-out r/d/w {_shares(night.heldout.get('verdicts'))}",
                flush=True,
            )
        if corrected:
            bot.services.clock = lambda: first_day + timedelta(days=args.nights)
            nights[-1].corrected_next_day = _counted(fans.again(corrected))
    finally:
        result["nights"] = [asdict(night) for night in nights]
        bot.stop()
        engine.close()
        store.close()
        server.stop()
        out.mkdir(parents=True, exist_ok=True)
        markdown = "\n\n".join(part for part in (table(result.get("baseline", {}), nights), comparison(nights)) if part)
        (out / "self_improvement.md").write_text(markdown + "\n", encoding="utf-8")
        (out / "self_improvement.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        print(f"\n{markdown}\n\nwritten to {out / 'self_improvement.md'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
