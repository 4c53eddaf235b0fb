"""`.env.example` documents every setting of every package with its default."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_env_example_is_in_sync_with_the_settings_classes():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "env_example.py"), "--check"], timeout=120)
    assert result.returncode == 0, "run `python scripts/env_example.py` to update .env.example"


def test_env_example_names_the_settings_the_issues_require():
    text = (REPO / ".env.example").read_text()
    for name in (
        "TELEGRAM_BOT_TOKEN",
        "TELEGRAM_BASE_URL",
        "ADMIN_USER_IDS",
        "MODEL_PATH",
        "FARENSE_HOME",
        "MAX_TOKENS",
        "TEMPERATURE",
        "SYSTEM_PROMPT",
        "TRAIN_CHECKPOINT_EVERY",
        "RETRAIN_CRON",
    ):
        assert f"# {name}=" in text
