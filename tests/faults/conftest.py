"""Fixtures of the fault-injection suite (the harness itself is tests/faults/harness.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def faults_seed() -> int | None:
    """FAULTS_SEED=<n> replays one run's random choices (jobs, kill and restart moments, faults)."""
    value = os.environ.get("FAULTS_SEED")
    return int(value) if value else None


@pytest.fixture
def faults_dir(tmp_path: Path) -> Iterator[Path]:
    """The run's directory: Redis AOF, worker and beat logs, downloads, report.json (kept by pytest)."""
    d = tmp_path / "faults"
    d.mkdir()
    yield d
