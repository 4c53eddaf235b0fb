"""bench/self_improvement.py on the tiny llama: two simulated days and nights, the second poisoned,
with each warm night also trained from scratch beside it (--compare-full).

The tiny random model cannot tell a poisoned 👍 from a fair one (its gate decides on validation
loss, which warm runs of it fail or pass whatever the votes), so this checks the machinery: the
poisoned votes reach the night's data, that night trains warm from the first night's adapter, the
gate's decision and reasons are recorded, and the table has a row per night."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERDICTS = ("right", "declined", "wrong")


def test_two_tiny_nights_the_second_poisoned(tmp_path, isolated_env):
    home = tmp_path / "simulated"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "self_improvement.py"),
            *("--tiny", "--nights", "2", "--poison-night", "2", "--poison-questions", "20"),
            *("--users", "20", "--questions", "1", "--compare-full", "--home", str(home)),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env={name: value for name, value in os.environ.items() if name != "ANSWER_FROM"},  # served as by default
    )
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((home / "self_improvement.json").read_text())
    first, poisoned = result["nights"]
    assert [first["poisoned"], poisoned["poisoned"]] == [False, True]
    for night in (first, poisoned):
        assert night["asked"] == 20 and night["up"] + night["down"] == 20 - round(20 * night["verdicts"]["failed"])
        assert abs(sum(night["heldout"]["verdicts"][v] for v in VERDICTS) - 1) < 1e-9
        assert night["night_s"] > 0 and night["message"].startswith("Nightly retraining (")
    assert abs(sum(result["baseline"]["verdicts"][v] for v in VERDICTS) - 1) < 1e-9
    if first["corrected"]:
        assert first["corrected_next_day"] and sum(first["corrections"].values()) == first["corrected"]

    assert first["training"]["mode"] == "full" and first["outcome"] == "promoted", first["message"]
    assert first["production"] == first["version"] == "v0001"
    assert poisoned["poisoned_up"] >= 1  # the poisoner's 👍 on wrong answers ...
    plan = poisoned["training"]
    assert plan["mode"] == "warm" and plan["start_version"] == "v0001"  # ... go into a warm night's new examples
    assert plan["new_examples"] >= 1 and plan["steps"] >= 10
    assert poisoned["outcome"] in ("promoted", "rejected") and poisoned["version"] == "v0002"
    assert poisoned["gate"]["accepted"] == (poisoned["outcome"] == "promoted")
    assert poisoned["outcome"] == "promoted" or poisoned["gate"]["failing"]  # refused: the criteria say why

    compared = poisoned["compared"]
    assert compared["warm"]["outcome"] == poisoned["outcome"] and compared["full"]["night_s"] > 0
    assert compared["full"]["outcome"] in ("promoted", "rejected")
    assert abs(sum(compared["full"]["heldout"]["verdicts"][v] for v in VERDICTS) - 1) < 1e-9

    tables = (home / "self_improvement.md").read_text().split("\n\n")
    nightly = tables[0].splitlines()
    assert len(nightly) == 2 + 1 + 2 and len({line.count("|") for line in nightly}) == 1  # header, baseline, 2 nights
    assert nightly[-1].startswith("| 2 ☠ |") and " warm " in nightly[-1]
    assert len(tables) == 2 and tables[1].splitlines()[-1].startswith("| 2 |")  # warm beside full
