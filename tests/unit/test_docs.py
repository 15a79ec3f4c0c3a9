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


def test_the_readme_user_test_is_the_one_our_suite_runs() -> None:
    """The README's ten-line user test (and its conftest) is, character for character, the test
    tests/e2e/test_user_plugin.py runs through the installed plugin."""
    from tests.e2e.test_user_plugin import USER_CONFTEST, USER_TEST

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"# conftest.py\n{USER_CONFTEST}```" in readme
    assert f"# test_video.py\n{USER_TEST}```" in readme
    assert len(USER_TEST.strip().splitlines()) <= 10
