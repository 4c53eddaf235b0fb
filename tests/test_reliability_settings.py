"""Settings: every invalid value of every setting is one clear line naming it; a missing optimized
BLAS or a missing Metal device is a fallback with a log line, never a crash."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.settings import BotSettings
from common.settings import SettingsError
from data.settings import DataSettings
from inference.settings import InferenceSettings
from training.lifecycle.settings import LifecycleSettings
from training.settings import TrainingSettings

EXAMPLES = int(os.environ.get("SETTINGS_EXAMPLES", "400"))
CLASSES = (InferenceSettings, DataSettings, BotSettings, TrainingSettings, LifecycleSettings)
VARIABLES = sorted(
    ((f"{cls.model_config.get('env_prefix', '')}{name}".upper(), cls) for cls in CLASSES for name in cls.model_fields),
    key=lambda item: (item[0], item[1].__name__),
)
ODD_VALUES = [
    "",
    " ",
    "0",
    "-1",
    "1",
    "2",
    "0.5",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "abc",
    "true",
    "none",
    "null",
    "[]",
    "{}",
    "[1, 2]",
    '{"a": 1}',
    "0 3 * * *",
    "61 25 * * *",
    "* * * * * * *",
    "Europe/Lisbon",
    "Mars/Olympus",
    "../../etc/passwd",
    "x" * 300,
    "\t",
    "１２",
    "٣",
    "1_000",
    "0x10",
    " 5 ",
    "5\n",
    "1,2,3",
    "12,Ana",
    "-5,7",
    "'quoted",
    "--iters 5",
    "~",
    "/nonexistent/dir",
    "é",
]
VALUES = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24),
)


def load_with(name: str, cls: type, value: str) -> bool:
    """Load `cls` with NAME=value in the environment: True if accepted; a refusal must be one line
    naming the variable (anything else, e.g. a traceback-worthy exception, fails the test)."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        cls.load()
        return True
    except SettingsError as error:
        lines = [line for line in str(error).splitlines() if line != "invalid settings:"]
        assert len(lines) == 1, lines  # one line per bad setting...
        assert name in lines[0], lines  # ...naming it as it is spelled in the environment
        return False
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


def test_every_odd_value_of_every_setting_is_accepted_or_one_line_naming_it():
    refused = sum(not load_with(name, cls, value) for name, cls in VARIABLES for value in ODD_VALUES)
    print(f"\nsettings sweep: {len(VARIABLES)} variables × {len(ODD_VALUES)} values, {refused} refused")
    assert refused > 0


def test_fuzz_every_setting_with_random_text():
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(VARIABLES), VALUES)
    def one(variable: tuple[str, type], value: str) -> None:
        outcomes["accepted" if load_with(*variable, value) else "refused"] += 1

    one()
    print(f"\nsettings fuzz: {sum(outcomes.values())} examples over {len(VARIABLES)} variables {outcomes}")
    assert outcomes["refused"] > 0 and outcomes["accepted"] > 0


@pytest.mark.parametrize(
    "name, value",
    [
        ("DEVICE", "tpu"),
        ("VALID_FRACTION", "0"),
        ("RETRAIN_TIMEZONE", "Mars/Olympus"),
        ("TRAIN_GRAD_CHECKPOINT", "sometimes"),
        ("PIPELINE_TRAIN_ARGS", "--iters '5"),
    ],
)
def test_bad_settings_stop_every_entry_point_with_one_line(name, value, tmp_path, tiny_model_dir):
    """The bot, the trainer, the lifecycle commands and the data builder, from the environment or .env."""
    (tmp_path / ".env").write_text(f"{name}={value}\n")  # the same as exporting it
    env = {k: v for k, v in os.environ.items() if k != name} | {"MODEL_PATH": str(tiny_model_dir)}
    owner = next(cls for variable, cls in VARIABLES if variable == name)
    commands = {
        InferenceSettings: ["bot"],
        BotSettings: ["bot"],
        DataSettings: ["data", "build"],
        TrainingSettings: ["training", "run"],
        LifecycleSettings: ["training", "adapters"],
    }[owner]
    result = subprocess.run(
        [sys.executable, "-m", *commands],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    errors = [line for line in result.stderr.splitlines() if name in line]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_no_metal_device_falls_back_to_the_cpu_with_a_log_line(tiny_model_dir, caplog):
    from inference.engine import Engine

    with caplog.at_level(logging.WARNING, logger="inference.backend"):
        engine = Engine(InferenceSettings.load(model_path=str(tiny_model_dir), device="gpu", max_tokens=3))
    try:
        assert engine.info.device == "cpu" and engine.generate([{"role": "user", "content": "Olá"}]).completion_tokens
    finally:
        engine.close()
    assert "DEVICE=gpu but MLX has no Metal/CUDA device here; using the CPU" in caplog.text


NO_BLAS = r"""
import ctypes, ctypes.util, logging, sys
real = ctypes.CDLL
def refuse(name, *args, **kwargs):  # as on a machine without OpenBLAS installed
    if "blas" in str(name).lower():
        raise OSError(f"{name}: cannot open shared object file (simulated)")
    return real(name, *args, **kwargs)
ctypes.CDLL = refuse
ctypes.util.find_library = lambda name: None
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
from inference.engine import Engine
from inference.settings import InferenceSettings
engine = Engine(InferenceSettings.load(max_tokens=3))
print(engine.info.blas, engine.generate([{"role": "user", "content": "Olá"}]).completion_tokens > 0)
engine.close()
"""


def test_no_optimized_blas_falls_back_to_the_reference_one_with_a_log_line(tiny_model_dir):
    env = os.environ | {"MODEL_PATH": str(tiny_model_dir), "BLAS_PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", NO_BLAS],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(tiny_model_dir).parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["reference", "True"]
    assert "BLAS reference (no optimized BLAS found" in result.stderr and "Traceback" not in result.stderr
