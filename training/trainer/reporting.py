"""Progress of a training run for people (a bar on stderr when it is a terminal) and for programs
(`--events`: one JSON object per stdout line, {"event": "start"|"step"|"eval"|"checkpoint"|"done"|"error", ...},
which the pipeline and the distributed launcher follow); logs stay on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys


class Reporter:
    """Progress for people (a bar on stderr when it is a terminal) and programs (--events on stdout)."""

    def __init__(self, events: bool, stream=None):
        self.events = events
        self.stream = stream or sys.stdout
        self.bar = sys.stderr.isatty()
        self._drawn = False

    stop = None  # the run's StopFlag: a vanished events reader stops the run like SIGTERM

    def emit(self, event: str, **fields) -> None:
        if self.events:
            try:
                self.stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
                self.stream.flush()
            except BrokenPipeError:
                self._reader_gone()
        if self.bar and event == "step":
            self._draw(fields)

    def _reader_gone(self) -> None:
        """The parent (pipeline, bot) died: stop writing events, checkpoint, end "cancelled"."""
        self.events = False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())  # later flushes at exit must not raise again
        os.close(devnull)
        if self.stop is not None and self.stop.signal is None:
            self.stop.signal = "events reader gone"
            logging.getLogger(__name__).warning("events pipe closed: saving a checkpoint and stopping")

    def _draw(self, f: dict) -> None:
        width = 24
        done = int(width * f["step"] / max(1, f["total"]))
        val = f" val {f['val_loss']:.3f}" if f.get("val_loss") is not None else ""
        eta = f" eta {int(f['eta_s']) // 60}m{int(f['eta_s']) % 60:02d}s" if f.get("eta_s") is not None else ""
        sys.stderr.write(f"\r\033[K[{'#' * done}{'.' * (width - done)}] {f['step']}/{f['total']} "
                         f"loss {f['loss']:.3f}{val} {f.get('tokens_per_s', 0):.0f} tok/s{eta}")
        sys.stderr.flush()
        self._drawn = True

    def clear(self) -> None:
        """Before a log line: wipe the bar so the line is not glued to it."""
        if self._drawn:
            sys.stderr.write("\r\033[K")
            self._drawn = False


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
