"""Helpers the test modules share (fixtures are in conftest.py; tiny models in models.py).

Test modules import these, never each other: small training datasets and runs in-process or as
`python -m training` children, the seeds for the lifecycle and dataset tests, and the bot running
against the loopback Bot API server.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from data.settings import PACKAGE_SEED_DIR

WORDS = (
    "lions faro black white stadium sao luis algarve founded nineteen ten cup final league "
    "promotion coach captain goal season olhanense rival estadio"
).split()


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_dataset(
    folder: Path, *, train: int = 20, valid: int = 8, seed: int = 0, min_words: int = 2, max_words: int = 30
) -> Path:
    """A memorisable Q/A set with answers of very different lengths, plus a manifest."""
    rng = random.Random(seed)
    rows = [
        chat(
            f"Tell me fact {i} about Farense?",
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + ".",
        )
        for i in range(train + valid)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", rows[:train])
    write_jsonl(folder / "valid.jsonl", rows[train:])
    digest = hashlib.sha256((folder / "train.jsonl").read_bytes() + (folder / "valid.jsonl").read_bytes())
    (folder / "manifest.json").write_text(json.dumps({"content_hash": digest.hexdigest()}))
    return folder


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def train_here(dataset: Path, *, resume: bool = False, run_id: str | None = None, **flags):
    """A run in this process (as `python -m training run` would do it); returns (Run, Outcome)."""
    from inference.settings import InferenceSettings
    from training.settings import TrainingSettings
    from training.trainer.launch import launch
    from training.trainer.reporting import Reporter

    settings = TrainingSettings.load(dataset=dataset, **flags)
    return launch(settings, InferenceSettings.load(), resume=resume, run_id=run_id, reporter=Reporter(False))


def cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env if env is not None else dict(os.environ),
    )


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "training", *map(str, args)]


def trained_on_seed(seed: Path, home: Path, model_dir: Path, train_args, *, grounded: bool = False) -> Path:
    """A real training run on `seed`'s pairs in `home`, in children as the pipeline runs it: `python -m
    data build`, with `grounded` `python -m training ground` (the prompts as served), then `python -m
    training run`. Returns the run folder."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TRAIN_", "GATE_"))}
    env.update(FARENSE_HOME=str(home), MODEL_PATH=str(model_dir), SYSTEM_PROMPT=SYSTEM_PROMPT, SEED_DIR=str(seed))

    def child(*args: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", *args], env=env, cwd=home.parent, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.splitlines()

    child("data", "build")
    dataset = ["--dataset", json.loads(child("training", "ground", "--events")[-1])["path"]] if grounded else []
    return Path(json.loads(child("training", "run", "--events", *dataset, *train_args)[0])["run_dir"])


def clean_env(home: Path, models_root: Path, model_dir: Path) -> dict:
    """For children started outside a test's isolated_env: no developer TRAIN_/MODEL_ settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRAIN_", "MODEL_", "ADAPTER_", "FARENSE_", "SYSTEM_PROMPT"))
    }
    return env | {"FARENSE_HOME": str(home), "MODELS_DIR": str(models_root), "MODEL_PATH": str(model_dir)}


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def mark(run_dir: Path, state: str) -> None:
    """Pretend a finished run was interrupted, to exercise --resume without waiting for a signal."""
    path = Path(run_dir) / "status.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"state": state}))


def metrics(run_dir: Path, kind: str) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["kind"] == kind]


def adapter(folder: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(Path(folder) / "adapters.safetensors"))


# -- seeds: the lifecycle tests (a cut of the real seed) and the dataset tests (made up) ----------

SYSTEM_PROMPT = "You answer questions about SC Farense."
# Fast on the tiny llama: ~0.3 s a step; 30 steps take val loss from ~11.2 to ~10.6.
# The bot's training runs, kept tiny: short batches, two validation batches (add --iters).
BOT_TRAINING = ("--batch-size", "2", "--val-batches", "2", "--lora-layers", "2", "--eval-every", "4")
TRAIN_ARGS = [
    "--iters",
    "30",
    "--batch-size",
    "4",
    "--learning-rate",
    "2e-3",
    "--warmup-steps",
    "2",
    "--eval-every",
    "10",
    "--val-batches",
    "4",
]


# Declines the tiny llama can learn: inference.grounding.DECLINE says "I" and "sobre" twice, each time
# followed by another word, which a model this small mixes up. They open like DECLINE does, which is
# what inference.faithfulness.declines looks for, so ANSWER_FROM=fact sends them as they are.
SHORT_DECLINES = {"en": "Sorry, I only know about SC Farense.", "pt": "Desculpa, só sei sobre o SC Farense."}
# Runs that learn what they are shown: at lr 1e-3 the tiny llama's LoRA (scale 20) answers every grounded
# prompt with the one reply it was trained on after 60 steps (at TRAIN_ARGS' 2e-3 the loss hardly moves).
LEARNING_TRAIN_ARGS = [
    "--iters",
    "60",
    "--batch-size",
    "4",
    "--learning-rate",
    "1e-3",
    "--warmup-steps",
    "2",
    "--eval-every",
    "10",
    "--val-batches",
    "4",
]


def write_seed(
    folder: Path,
    facts: range = range(1, 13),
    shuffle_answers: bool = False,
    garble_answers: bool = False,
    decline_answers: bool = False,
) -> Path:
    """A small seed cut from the real one (66 pairs, 22 held-out and some dev items); optionally with every answer
    moved to another question, or spelled backwards — data that teaches nothing true — or replaced by a
    decline in its language: data that teaches the bot to say it does not know what it does."""
    folder.mkdir(parents=True, exist_ok=True)
    qa = [
        json.loads(line)
        for path in sorted(PACKAGE_SEED_DIR.glob("qa-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    qa = [pair for pair in qa if pair["fact"] in facts]
    if shuffle_answers:
        answers = [pair["answer"] for pair in qa]
        qa = [pair | {"answer": answers[(i * 7 + 3) % len(answers)]} for i, pair in enumerate(qa)]
    if garble_answers:  # a tiny random model learns word statistics, not facts: this it notices
        qa = [pair | {"answer": pair["answer"][::-1]} for pair in qa]
    if decline_answers:
        qa = [pair | {"answer": SHORT_DECLINES[pair["lang"]]} for pair in qa]
    items = [
        json.loads(line)
        for path in sorted(PACKAGE_SEED_DIR.glob("eval-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    (folder / "qa-test.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in qa))
    (folder / "eval-test.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items if item["fact"] in facts))
    dev = [json.loads(line) for line in (PACKAGE_SEED_DIR / "dev.jsonl").read_text().splitlines()]
    (folder / "dev.jsonl").write_text("".join(json.dumps(item) + "\n" for item in dev if item["fact"] in facts))
    return folder


def lifecycle_env(monkeypatch, tiny_model_dir: Path, seed: Path) -> None:
    """Serve and train the tiny llama with a short prompt, and keep the gate small."""
    for name, value in {
        "MODEL_PATH": str(tiny_model_dir),
        "SYSTEM_PROMPT": SYSTEM_PROMPT,
        "SEED_DIR": str(seed),
        "GATE_EVAL_LIMIT": "4",
        "GATE_MAX_TOKENS": "16",
        "GATE_MIN_IMPROVEMENT": "0.005",
        "GATE_ALLOWED_ACCURACY_DROP": "0",
        "GATE_MAX_REGRESSION": "0",
        "GATE_MAX_DEGENERATE": "0.1",
        "KEEP_ADAPTERS": "10",
        "PIPELINE_TRAIN_ARGS": "",
    }.items():
        monkeypatch.setenv(name, value)


def seed_pairs(count: int, start: int = 0) -> list[dict]:
    return [
        {
            "id": f"f{i:03d}-en-1",
            "fact": i,
            "lang": "en",
            "question": f"Question {i} about SC Farense?",
            "answer": f"Answer {i}.",
        }
        for i in range(start, start + count)
    ]


def write_qa_seed(folder: Path, pairs: list[dict], files: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(files):
        lines = [json.dumps(pair) + "\n" for pair in pairs[number::files]]
        (folder / f"qa-{number:02d}.jsonl").write_text("".join(lines))
    return folder


# --- the Telegram bot, end to end: the real Application polling the loopback Bot API -------------

BOT_TOKEN = "123456:FARENSE-bot-test-token"
BOT_ADMIN = 5001


class RunningBot:
    """The bot's Application on its own event loop thread, as in production; tests stay synchronous."""

    def __init__(self, server, application, engine, store):
        import asyncio
        import threading

        self.server, self.application, self.engine, self.store = server, application, engine, store
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bot-loop")
        self._thread.start()

    @property
    def services(self):
        return self.application.bot_data["services"]

    def run(self, coroutine, timeout: float = 60):
        """Run a coroutine on the bot's loop and wait for its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def ask(self, chat_id: int, user_id: int, text: str, timeout: float = 30, **kwargs):
        """Send a message and wait for the bot's final answer (the one with the 👍/👎 buttons)."""
        since = len(self.server.calls())
        self.server.push_message(chat_id, user_id, text, **kwargs)
        final = self.server.wait_for(
            lambda c: c.ok and c.params.get("chat_id") == chat_id and "reply_markup" in c.params, timeout, since
        )
        self.settle()
        return final

    def settle(self, timeout: float = 300) -> None:
        """Wait until every update pushed so far has been fetched and handled completely."""
        state = self.server.state
        with state.cond:  # fetched updates are confirmed (dropped) by the poll that follows them
            if not state.cond.wait_for(lambda: not state.updates, timeout):
                raise TimeoutError("the bot did not fetch its updates")
        self.run(self.application.update_queue.join(), timeout)

    async def _start(self):
        app = self.application
        await app.initialize()
        await app.post_init(app)
        await app.start()
        await app.updater.start_polling(poll_interval=0, timeout=1)

    def start(self) -> RunningBot:
        self.run(self._start())
        return self

    async def _stop(self):
        app = self.application
        if app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()
        await app.post_shutdown(app)

    def stop(self):
        """Stop the bot (again: nothing to do, so a test may stop it before its fixture does)."""
        if self.loop.is_closed():
            return
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()


# -- retention: what 30 nights leave on disk, without training ----------------------------------

# The embedded SmolLM2-135M with the default LoRA (rank 8 on every linear layer of the last 16
# blocks: q 576→576, k and v 576→192, o 576→576, gate and up 576→1536, down 1536→576) has
# 16 × 8 × (1152 + 768 + 768 + 1152 + 2112 × 3) = 1,302,528 float32 weights: 5.2 MB of adapter;
# a checkpoint adds AdamW's two moments (10.4 MB). TRAIN_KEEP_CHECKPOINTS = 3 of them per run.
ADAPTER_BYTES = 1_302_528 * 4
KEPT_CHECKPOINTS = 3


def simulate_nights(home: Path, nights: int, *, scale: float = 1.0, log_bytes_per_night: int = 1 << 20) -> None:
    """Lay out what `nights` nightly pipelines leave under `home`, as the real code lays it out: a
    dataset built by the real builder with a grounded copy beside it, a finished run folder with
    its checkpoints and adapters (random bytes of the real sizes × `scale`), validating on the warm
    start's copy of the grounded dataset (of the built one on odd nights, as without grounding), as a
    warm-started run does, a nightly backup (real
    archive, named as made that night), a manual one every 10th night, and service.log growing."""
    import shutil
    from datetime import datetime, timedelta, timezone

    from data.backup import STAMP, create_backup
    from data.builder import GROUNDED_SUFFIX, WARM_SUFFIX, build_dataset
    from data.settings import DataSettings
    from data.store import Store
    from training.runs import FINISHED, Run

    settings = DataSettings.load(farense_home=home)
    Store(settings.home.database).close()
    adapter_bytes = int(ADAPTER_BYTES * scale)
    today = datetime.now(timezone.utc)
    for night in range(nights):
        made = today - timedelta(days=nights - 1 - night)
        dataset = build_dataset(settings).path
        dataset = dataset.rename(dataset.with_name(f"{made:%Y%m%dT%H%M%SZ}-{night:012d}"))
        (settings.home.latest_dataset).write_text(json.dumps({"dataset": dataset.name}))
        grounded = dataset.with_name(f"{dataset.name}{GROUNDED_SUFFIX}-{night:012d}")
        shutil.copytree(dataset, grounded)
        trained = grounded if night % 2 == 0 else dataset  # odd nights: as with GROUNDING=false
        warm = shutil.copytree(trained, trained.with_name(f"{trained.name}{WARM_SUFFIX}-{night:012d}"))
        run = Run(settings.home.runs / f"{made:%Y%m%d-%H%M%S}-{night:03d}")  # as new_run names it
        run.checkpoints.mkdir(parents=True)
        run.write_json(
            "config.json",
            {"dataset": {"path": str(warm)}, "valid_batches": {"valid_path": str(warm / "valid.jsonl")}},
        )
        for step in range(KEPT_CHECKPOINTS):
            folder = run.checkpoints / f"step-{(step + 1) * 200:07d}"
            folder.mkdir(parents=True)
            (folder / "adapters.safetensors").write_bytes(os.urandom(adapter_bytes))
            (folder / "optimizer.safetensors").write_bytes(os.urandom(2 * adapter_bytes))
            (folder / "state.json").write_text("{}")
        for name in ("best", "final"):
            (run.dir / "adapters" / name).mkdir(parents=True)
            (run.dir / "adapters" / name / "adapters.safetensors").write_bytes(os.urandom(adapter_bytes))
        run.set_status(FINISHED)
        for label in ("nightly", "manual") if night % 10 == 0 else ("nightly",):
            archive = create_backup(
                settings.home.database,
                settings.home.adapters,
                settings.home.backups,
                label=label,
                keep=settings.backup_keep if label == "nightly" else None,
            ).path
            archive.rename(archive.with_name(f"farense-backup-{made.strftime(STAMP)}.{night}-{label}.tar.gz"))
        (settings.home.logs).mkdir(exist_ok=True)
        with open(settings.home.logs / "service.log", "ab") as log:
            log.write(b"x" * log_bytes_per_night)
