"""Progress of long work on stderr (a bar on a terminal, plain lines otherwise) beside the JSON
events on stdout, which keep their exact shape: the bot and the pipeline parse them."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios

from common.progress import Progress

from .helpers import TRAIN_ARGS, cli, lifecycle_env, write_seed

STEP_EVENT_KEYS = {"event", "step", "total", "loss", "epoch", "learning_rate", "tokens_per_s", "val_loss", "eta_s"}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_with_counts_status_and_eta():
    stream = io.StringIO()
    with Progress("work", 4, unit="step", stream=stream, every=0) as progress:
        for step in range(1, 5):
            progress.update(step, loss=2.0 / step)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("work: 0/4 step (0%)")
    assert lines[2].startswith("work: 2/4 step (50%) loss 1.000 elapsed ") and " eta " in lines[2]
    assert lines[-1].startswith("work: 4/4 step (100%) loss 0.500") and " eta " not in lines[-1]
    quiet = io.StringIO()
    with Progress("work", 100, stream=quiet) as progress:  # a log file: a line now and then, and the last
        for done in range(1, 101):
            progress.update(done)
    assert [line.split(" elapsed")[0] for line in quiet.getvalue().splitlines()] == [
        "work: 0/100 it (0%)",
        "work: 100/100 it (100%)",
    ]


def test_a_bar_on_a_terminal():
    stream = Terminal()
    with Progress("work", 4, unit="step", stream=stream) as progress:
        for step in range(1, 5):
            progress.update(step, loss=0.25)
    drawn = stream.getvalue()
    assert "\r" in drawn and "4/4" in drawn and "loss=0.250" in drawn and "elapsed" not in drawn


def test_a_terminal_of_no_width_gets_plain_lines_and_a_sized_one_a_bar():
    leader, follower = pty.openpty()  # a new pseudo-terminal is 0 columns wide until sized
    try:
        with open(follower, "w", closefd=False) as stream, Progress("work", 2, stream=stream, every=0) as progress:
            progress.update(2)
        assert os.read(leader, 4096).decode().startswith("work: 0/2 it (0%)")
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        with open(follower, "w", closefd=False) as stream, Progress("work", 2, stream=stream) as progress:
            progress.update(2)
        assert "\r" in os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)


def test_training_shows_progress_and_its_events_keep_their_shape(dataset, tiny_env):
    result = cli(
        "run", "--dataset", dataset, "--events", "--iters", "6", "--eval-every", "3", "--val-batches", "2", env=tiny_env
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events if e["event"] != "checkpoint"] == [
        "start",
        "eval",
        "step",
        "step",
        "step",
        "eval",
        "step",
        "step",
        "step",
        "eval",
        "done",
    ]
    assert all(set(e) == STEP_EVENT_KEYS for e in events if e["event"] == "step")
    assert "training: 0/6 step (0%)" in result.stderr
    assert re.search(r"training: 6/6 step \(100%\) loss \d+\.\d{3} val \d+\.\d{3} tok_s \d+ elapsed", result.stderr)


def test_pipeline_prints_its_stages_and_the_training_steps(monkeypatch, tmp_path, tiny_model_dir, isolated_env):
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    result = cli("pipeline", "--", *TRAIN_ARGS, env=dict(os.environ), timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Promoted v0001 over base model")
    stages = re.findall(r"^\[(?:\d+m)?\d+s\] (\w+)", result.stderr, re.MULTILINE)
    assert stages == ["dataset", "ground", "train", "register", "gate", "promote"], result.stderr
    assert "training: 0/30 step (0%)" in result.stderr and "training: 30/30 step (100%)" in result.stderr
    assert "step 10: val loss" in result.stderr

    assert cli("rollback", env=dict(os.environ)).returncode == 0  # back to the base model, to gate v0001 again
    gate = cli("gate", "v0001", env=dict(os.environ), timeout=600)  # alone, the gate shows its own
    assert gate.returncode == 0, gate.stderr
    assert "gate v0001: 4/4 answer (100%)" in gate.stderr


def test_grounding_counts_the_examples(monkeypatch, tmp_path, tiny_model_dir, isolated_env, dataset):
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    subprocess.run([sys.executable, "-m", "data", "knowledge", "stats"], check=True, capture_output=True)
    result = cli("ground", dataset, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "grounding: 28/28 example (100%)" in result.stderr  # write_dataset's 20 train + 8 valid


def test_converting_a_model_says_so(tmp_path, default_model_dir):
    """The first run converts the default model: a line when it starts and when it is done."""
    from inference.modelstore import DEFAULT_GGUF_NAME

    downloads = tmp_path / "models" / "downloads"
    downloads.mkdir(parents=True)
    shutil.copy(default_model_dir.parent / "downloads" / DEFAULT_GGUF_NAME, downloads)
    models = str(tmp_path / "models")
    code = (
        "from pathlib import Path; from inference.modelstore import ensure_default_model; "
        f"ensure_default_model(Path({models!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"converting {DEFAULT_GGUF_NAME} to an mlx-lm model (once): 0/1 model (0%)" in result.stderr
    assert f"converting {DEFAULT_GGUF_NAME} to an mlx-lm model (once): 1/1 model (100%)" in result.stderr
