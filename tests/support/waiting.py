"""Waiting for a condition in tests: poll it, and on a timeout say what was awaited and why it is late."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    pred: Callable[[], Any],
    timeout_s: float = 3.0,
    what: str = "the condition",
    detail: Callable[[], Any] | None = None,
    interval_s: float = 0.05,
) -> Any:
    """The first truthy value of ``pred()``; AssertionError naming ``what`` (and ``detail()``) after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval_s)
    extra = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{extra}")
