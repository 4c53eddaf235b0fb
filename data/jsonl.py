"""A tolerant JSONL reader: one bad line is reported with its place, the rest is still read.

Training data is assembled from files written by people and by other programs; a stray comma must
neither stop a nightly build nor vanish without a trace, so every skipped line becomes a `Problem`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """Something skipped while reading: where it was and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "reason": self.reason}


def report(problems: list[Problem], file: object, line: int, reason: str) -> None:
    """Record a problem and log it, so it is both returned to the caller and visible in logs."""
    problem = Problem(str(file), line, reason)
    problems.append(problem)
    log.warning("skipped %s", problem)


def read_jsonl(path: Path, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each good line; bad ones are appended to `problems`.

    Empty lines are ignored; invalid UTF-8, bad JSON and non-object values are reported.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        report(problems, path, 0, f"cannot read file: {error.strerror or error}")
        return
    for line_no, line in enumerate(raw.split(b"\n"), start=1):
        if line_no == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            report(problems, path, line_no, f"invalid UTF-8 at byte {error.start}")
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            report(problems, path, line_no, f"bad JSON: {error.msg} (column {error.colno})")
            continue
        if not isinstance(value, dict):
            report(problems, path, line_no, f"expected a JSON object, got {type(value).__name__}")
            continue
        yield line_no, value


def field_problem(record: Mapping[str, object], fields: Mapping[str, type | tuple[type, ...]]) -> str | None:
    """Why `record` lacks the required `fields` or has them with the wrong type; None if it is fine.

    Strings must be non-blank, and booleans never pass for numbers (JSON `true` is not a fact id).
    """
    for name, expected in fields.items():
        if name not in record:
            return f"missing key {name!r}"
        value = record[name]
        types = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) and bool not in types:
            return f"{name!r} should be {_names(types)}, got bool"
        if not isinstance(value, types):
            return f"{name!r} should be {_names(types)}, got {type(value).__name__}"
        if isinstance(value, str) and not value.strip():
            return f"{name!r} is empty"
        if isinstance(value, str) and not _encodable(value):
            return f"{name!r} is not valid Unicode (a lone surrogate such as \\ud800)"
    return None


def _encodable(text: str) -> bool:
    """False for text no UTF-8 file or SQLite can hold (JSON's escapes allow lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if kind is type(None) else kind.__name__ for kind in types)
