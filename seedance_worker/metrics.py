"""Prometheus metrics (the metrics issue fills these in; the call sites are final)."""

from __future__ import annotations


def poll(status: str) -> None:
    """One poll decided: the remote status seen, or what went wrong (error class, 'ratelimited')."""


def poll_lateness(seconds: float) -> None:
    """Actual start minus scheduled time of a poll message."""


def outcome(status: str) -> None:
    """A job reached its terminal Outcome."""


def http_response(code: str) -> None:
    """One API call answered: the HTTP status, or 'timeout' / 'connection' / 'malformed'."""


def ratelimit_wait(seconds: float, kind: str) -> None:
    """A poll was held back by the fleet-wide limiter ('slot') or a 429 cool-down ('cooldown')."""
