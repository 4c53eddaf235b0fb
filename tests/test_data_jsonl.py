"""The tolerant JSONL reader: good lines are read, every bad one is reported with its place."""

from __future__ import annotations

import logging

from data.jsonl import Problem, field_problem, read_jsonl


def test_good_lines_are_yielded_and_bad_ones_reported(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"a": 1}\n'  # 1: BOM is tolerated
        b"\n"  # 2: empty, ignored
        b"   \n"  # 3: blank, ignored
        b'{"a": 2,}\n'  # 4: bad JSON
        b"[1, 2]\n"  # 5: not an object
        b'{"a": "\xff"}\n'  # 6: invalid UTF-8
        b'{"a": "caf\xc3\xa9"}\n'  # 7: fine
        b'{"a": 3}'  # 8: no final newline, fine
    )
    problems: list[Problem] = []
    with caplog.at_level(logging.WARNING, logger="data.jsonl"):
        records = list(read_jsonl(path, problems))
    assert records == [(1, {"a": 1}), (7, {"a": "café"}), (8, {"a": 3})]
    assert [(p.file, p.line) for p in problems] == [(str(path), 4), (str(path), 5), (str(path), 6)]
    assert problems[0].reason.startswith("bad JSON")
    assert problems[1].reason == "expected a JSON object, got list"
    assert problems[2].reason.startswith("invalid UTF-8")
    assert str(problems[0]).startswith(f"{path}:4: bad JSON")
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 3


def test_missing_file_is_a_problem_not_a_crash(tmp_path):
    problems: list[Problem] = []
    assert list(read_jsonl(tmp_path / "absent.jsonl", problems)) == []
    assert len(problems) == 1
    assert problems[0].line == 0 and "cannot read file" in problems[0].reason


def test_field_problem_explains_missing_and_mistyped_fields():
    fields = {"question": str, "fact": (int, type(None))}
    assert field_problem({"question": "q", "fact": 3}, fields) is None
    assert field_problem({"question": "q", "fact": None}, fields) is None
    assert field_problem({"fact": 3}, fields) == "missing key 'question'"
    assert field_problem({"question": 7, "fact": 3}, fields) == "'question' should be str, got int"
    assert field_problem({"question": "  ", "fact": 3}, fields) == "'question' is empty"
    assert field_problem({"question": "q", "fact": True}, fields) == "'fact' should be int or null, got bool"
