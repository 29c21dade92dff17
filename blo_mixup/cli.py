"""The `blo-mixup` entry point (pyproject's console script, and `python -m blo_mixup.cli`); the commands
live in blo_mixup/commands/."""

import sys

from .commands import build_parser, main, resolve_finetune

__all__ = ["build_parser", "main", "resolve_finetune"]

if __name__ == "__main__":
    sys.exit(main())
