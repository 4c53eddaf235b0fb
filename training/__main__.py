"""`python -m training ...` — see training/cli.py for the commands and exit codes."""

import inference  # noqa: F401  (preloads the optimized BLAS before anything imports mlx)

import sys

from .cli import main, register
from .grounding_cli import GROUNDING_SUBCOMMANDS
from .lifecycle_cli import SUBCOMMANDS

for name, (help_text, configure, handler) in {**SUBCOMMANDS, **GROUNDING_SUBCOMMANDS}.items():
    register(name, help_text, configure, handler)

sys.exit(main())
