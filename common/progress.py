"""Progress of long work for people, on stderr: a tqdm bar when stderr is a terminal, else a plain
line now and then (a service's log file, a pipe), so an operator can tell it is alive and when it
will end. Programs follow the JSON events on stdout, which this never touches.
"""

from __future__ import annotations

import os
import sys
import time

PLAIN_EVERY_SECONDS = 30.0  # a log file gets a line this often, and one at the end
BYTES = "B"  # the unit of downloads: shown in MB


class Progress:
    """`done` of `total` units of one piece of work; `update()` as it advances, `close()` at the end."""

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        unit: str = "it",
        initial: int = 0,
        stream=None,
        every: float = PLAIN_EVERY_SECONDS,
    ):
        self.description, self.total, self.unit = description, total, unit
        self.stream = stream or sys.stderr
        self.every = every
        self.done = self.started_at = initial
        self.status: dict = {}
        self._started = self._printed = time.monotonic()
        self._printed_done: int | None = None
        self._bar = None
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=description,
                unit=unit,
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
                unit_scale=unit == BYTES,
                unit_divisor=1024,
            )
        else:
            self._line()

    def update(self, done: int | None = None, **status) -> None:
        """Move to `done` units (default: one more); `status` (loss, val...) is shown beside."""
        done = self.done + 1 if done is None else done
        self.status.update({key: value for key, value in status.items() if value is not None})
        if self._bar is not None:
            if self.status:
                self._bar.set_postfix({key: _short(value) for key, value in self.status.items()}, refresh=False)
            self._bar.update(done - self.done)
            self.done = done
            return
        self.done = done
        if time.monotonic() - self._printed >= self.every:
            self._line()

    def note(self, text: str) -> None:
        """A line of its own (an evaluation's result, a stage), kept above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._write(text)

    def clear(self) -> None:
        """Wipe the bar before someone else writes a line to the terminal; the next update redraws it."""
        if self._bar is not None:
            self._bar.clear()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._printed_done != self.done:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self) -> None:
        elapsed = time.monotonic() - self._started
        amount = (lambda n: f"{n / 1e6:.1f}") if self.unit == BYTES else str
        parts = [
            f"{self.description}: {amount(self.done)}"
            + (f"/{amount(self.total)}" if self.total else "")
            + (" MB" if self.unit == BYTES else f" {self.unit}")
        ]
        if self.total:
            parts.append(f"({self.done / self.total:.0%})")
        parts += [f"{key} {_short(value)}" for key, value in self.status.items()]
        parts.append(f"elapsed {clock(elapsed)}")
        advanced = self.done - self.started_at
        if self.total and 0 < advanced and self.done < self.total:
            parts.append(f"eta {clock(elapsed / advanced * (self.total - self.done))}")
        self._write(" ".join(parts))
        self._printed, self._printed_done = time.monotonic(), self.done

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def clock(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _short(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _is_terminal(stream) -> bool:
    """A terminal a bar can be drawn on: tqdm draws nothing on one of 0 columns (a pseudo-terminal
    nobody sized, as `script` or a container's `-t` can give), where plain lines still show."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # a closed or fake stream
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no descriptor to ask: take the stream's word
        return True
