"""`python -m training ...` (or `farense.training ...`): see training/cli.py for the commands,
training/errors.py for the exit codes."""

import sys

import inference  # noqa: F401  (preloads the optimized BLAS before anything imports mlx)

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
