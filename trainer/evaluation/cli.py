"""Shared exit behaviour of the evaluate / score / predict commands."""
from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


def run_command(command: Callable, cfg) -> None:
    """Runs ``command(cfg)``; bad input (data, paths, arguments) ends with one clear message and exit code 2."""
    try:
        command(cfg)
    except (ValueError, FileNotFoundError) as error:  # DataValidationError and ImageReadError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
