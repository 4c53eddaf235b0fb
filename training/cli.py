"""`python -m training [-v] COMMAND ...`: one static table of commands, each imported only when run.

So `status`, `promote` or the pipeline never import MLX, and a command is registered in one place.
Each command module parses its own arguments and returns the exit code (training/errors.py).
"""

from __future__ import annotations

import importlib
import logging
import sys

from common.settings import protect_home

from .errors import EXIT_USAGE

# name -> ("module:function(argv) -> exit code", help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("training.trainer.launch:main", "train a LoRA adapter (new run, or --resume an interrupted one)"),
    "status": ("training.lifecycle.commands:status", "show the latest training runs"),
    "adapters": ("training.lifecycle.commands:adapters", "list registered adapter versions; * marks production"),
    "promote": (
        "training.lifecycle.commands:promote",
        "put a registered adapter version into production (files are verified first)",
    ),
    "rollback": (
        "training.lifecycle.commands:rollback",
        "go back to the previous production adapter (or the base model)",
    ),
    "gate": (
        "training.evaluation.gate:main",
        "compare a version with production on validation loss and eval questions",
    ),
    "pipeline": ("training.lifecycle.commands:pipeline", "build the dataset, train, gate, and promote or reject, once"),
    "ground": (
        "training.evaluation.grounding:main",
        "rewrite a built dataset with the prompts as served (retrieved facts included)",
    ),
    "evaluate": (
        "training.evaluation.evaluate:main",
        "right / declined / wrong of base and adapter, with retrieval and the guard, EN and PT",
    ),
    "memory-plan": (
        "training.trainer.memory:main",
        "the memory tuner's plan and its estimate's parts for a model's dimensions, bits and a machine's RAM",
    ),
    "export": (
        "training.evaluation.export:main",
        "fuse an adapter into the base model (Hugging Face layout), optionally also as GGUF or PEFT",
    ),
    "migrate": (
        "training.lifecycle.upgrade:main",
        "migrate adapters trained for the base model's other Q/K layout (the bot does it at start)",
    ),
    "factory": (
        "training.lifecycle.factory:main",
        "write a registered version as the factory adapter of the configured base model",
    ),
}

USAGE = "usage: python -m training [-v] COMMAND ...  (COMMAND --help for its options)"


def command(name: str):
    """The function behind a command name."""
    module, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    protect_home()
    verbose = False
    while argv[:1] and argv[0] in ("-v", "--verbose"):
        verbose, argv = True, argv[1:]
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\nLoRA training of the Farense bot and its adapters' lifecycle.\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(f"{USAGE}\npython -m training: error: choose a command from {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    return command(argv[0])(argv[1:])
