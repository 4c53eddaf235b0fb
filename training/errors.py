"""Exit codes of every `python -m training` command, defined once: the pipeline (a parent process)
relies on them, and so does rank 0 when it reports another rank's failure.

    0  done (also a run cancelled by SIGINT/SIGTERM after its checkpoint, a candidate the gate rejected)
    1  failed (training, the gate or a child crashed; another run holds the lock)
    2  bad input: settings, dataset, memory budget, changed fingerprint, nothing (or only corrupt
       checkpoints) to resume, unknown adapter version. The pipeline takes 2 from `run --resume` as
       "start a fresh run instead".

Expected errors print one line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from common.settings import SettingsError
from inference.adapters import AdapterError
from inference.modelstore import ModelNotFound

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Base of our errors that mean bad input (exit 2) rather than a failure."""


# inference's errors that mean bad input to a training command
INPUT_ERRORS = (UsageError, SettingsError, ModelNotFound, AdapterError)


def exit_code(error: BaseException) -> int:
    """An error's own `exit_code` (another rank's, relayed), else 2 for bad input, else 1."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    return EXIT_USAGE if isinstance(error, INPUT_ERRORS) else EXIT_FAILED


def one_line(error: BaseException) -> str:
    return str(error).replace(":\n", ": ").replace("\n", "; ")


def report(message: str) -> None:
    print(f"training: error: {message}", file=sys.stderr)


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input becomes one stderr line and exit 2; anything else exit 1, still one line."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Exception as error:
            code = exit_code(error)
            if code == EXIT_USAGE:
                report(one_line(error))
            else:
                logging.getLogger("training").debug("command failed", exc_info=True)
                report(f"{type(error).__name__}: {one_line(error)}")
            return code

    return run


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """argparse's result, or the exit code when it stopped (--help: 0, a usage error it explained: 2)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
