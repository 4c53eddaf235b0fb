"""One style for the whole tree: ruff's formatter, sorted imports and the lint rules in
pyproject.toml, checked by `make test` like any behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_the_tree_passes_ruff(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"`ruff {' '.join(command)}` (run `ruff check --fix . && ruff format .`):\n" + (
        result.stdout + result.stderr
    )
