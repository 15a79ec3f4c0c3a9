"""What every ``seedance-worker`` command prints with: its exit codes, the console, JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def console() -> Any:
    from rich.console import Console

    # Piped output (logs, CI, `| grep`) gets wide tables instead of rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 200)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
