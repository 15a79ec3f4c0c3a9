"""The README stays true to the code: every setting documented, the two commands present."""

from __future__ import annotations

import re
from pathlib import Path

from seedance_worker.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    """Each Settings field appears as a row of the README's settings table, and no stale row remains."""
    rows = set(re.findall(r"^\| `(SEEDANCE_[A-Z0-9_]+)` \|", README, flags=re.M))
    fields = {f"SEEDANCE_{name.upper()}" for name in Settings.model_fields}
    assert rows == fields, (sorted(fields - rows), sorted(rows - fields))


def test_the_two_commands_are_in_the_quickstart() -> None:
    """The demo command and the test command, as .ci/run runs the latter."""
    assert "seedance-worker demo" in README
    assert ".venv/bin/pip install -e '.[test,lint]' && .venv/bin/python -m pytest -q" in README
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "pip install" in ci and "-e '.[test,lint]'" in ci and "-m pytest -q" in ci
