"""Progress of a training run for people (common.progress on stderr: a bar on a terminal, plain
lines otherwise) and for programs
(`--events`: one JSON object per stdout line, {"event": "start"|"step"|"eval"|"checkpoint"|"done"|"error", ...},
which the pipeline and the distributed launcher follow); logs stay on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from common.progress import Progress


class Reporter:
    """Progress for people (on stderr; `bar` False silences it) and programs (--events on stdout)."""

    def __init__(self, events: bool, stream=None):
        self.events = events
        self.stream = stream or sys.stdout
        self.bar = True
        self.progress: Progress | None = None

    stop = None  # the run's StopFlag: a vanished events reader stops the run like SIGTERM

    def emit(self, event: str, **fields) -> None:
        if self.events:
            try:
                self.stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
                self.stream.flush()
            except BrokenPipeError:
                self._reader_gone()
        if self.bar:
            self._show(event, fields)

    def _reader_gone(self) -> None:
        """The parent (pipeline, bot) died: stop writing events, checkpoint, end "cancelled"."""
        self.events = False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())  # later flushes at exit must not raise again
        os.close(devnull)
        if self.stop is not None and self.stop.signal is None:
            self.stop.signal = "events reader gone"
            logging.getLogger(__name__).warning("events pipe closed: saving a checkpoint and stopping")

    def _show(self, event: str, fields: dict) -> None:
        """Steps move the bar (tqdm's rate and ETA); evaluations are logged by the loop itself."""
        if event == "start":
            self.progress = Progress("training", fields["total"], unit="step", initial=fields["step"])
        elif self.progress is None:
            return
        elif event == "step":
            self.progress.update(
                fields["step"],
                loss=fields["loss"],
                val=fields.get("val_loss"),
                tok_s=round(fields.get("tokens_per_s") or 0),
            )
        elif event in ("done", "error"):
            self.progress.close()
            self.progress = None

    def clear(self) -> None:
        """Before a log line: wipe the bar so the line is not glued to it."""
        if self.progress is not None:
            self.progress.clear()


class BarAwareHandler(logging.StreamHandler):
    """Logs to stderr, clearing the progress bar first."""

    reporter: Reporter | None = None

    @classmethod
    def install(cls, reporter: Reporter) -> None:
        """Log through this handler (same format and level as training/cli.py set up), clearing
        `reporter`'s bar before each line."""
        cls.reporter = reporter
        root = logging.getLogger()
        handler = cls(sys.stderr)
        handler.setFormatter(root.handlers[0].formatter if root.handlers else None)
        root.handlers = [handler]

    def emit(self, record: logging.LogRecord) -> None:
        if self.reporter is not None:
            self.reporter.clear()
        super().emit(record)
