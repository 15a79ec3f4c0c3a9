#!/usr/bin/env python3
"""Every ``SEEDANCE_*`` name mentioned under deploy/ must be a setting the product knows.

The product rejects unknown ``SEEDANCE_*`` variables at start, so a misspelt name in a
manifest, unit or env file would only fail in production. This check fails CI instead.

Also checks that deploy/env.example documents every setting: an assignment line
(``NAME=value`` or commented ``# NAME=value``) directly preceded by a comment line.

Stdlib only. Usage: ``python deploy/check_env.py [DEPLOY_DIR]``; exit 1 on any problem.
When the ``seedance_worker`` package is importable, the allowed list below is also checked
against the package's own list of settings, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

# The deployment contract: the only SEEDANCE_* names deploy files may use.
ALLOWED: frozenset[str] = frozenset(
    {
        "SEEDANCE_API_KEY",
        "SEEDANCE_API_BASE_URL",
        "SEEDANCE_REDIS_URL",
        "SEEDANCE_DOWNLOAD_DIR",
        "SEEDANCE_DOWNLOAD_ALLOWED_HOSTS",
        "SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS",
        "SEEDANCE_NOTIFY_URL",
        "SEEDANCE_NOTIFY_SECRET",
        "SEEDANCE_ON_SUCCEEDED",
        "SEEDANCE_ON_FAILED",
        "SEEDANCE_POLL_MIN_INTERVAL_S",
        "SEEDANCE_POLL_MAX_INTERVAL_S",
        "SEEDANCE_VISIBILITY_TIMEOUT_S",
        "SEEDANCE_LOG_JSON",
        "SEEDANCE_METRICS_PORT",
        "SEEDANCE_METRICS_ADDR",
        "SEEDANCE_RATE_LIMIT_RPS",
        "SEEDANCE_INTAKE_URL",
        "SEEDANCE_INTAKE_TOKEN",
        "SEEDANCE_INTAKE_MAX_CONNECTIONS",
        "SEEDANCE_INTAKE_HEADER_TIMEOUT_S",
        "SEEDANCE_INTAKE_BODY_TIMEOUT_S",
        "SEEDANCE_INTAKE_SHARED_PATH",
    }
)

# An upper-case SEEDANCE_ prefix (the lower-case `seedance_worker` is the Python package),
# then the rest of the identifier in any case: the product upper-cases names before checking.
NAME_RE = re.compile(r"(?<![A-Za-z0-9_])SEEDANCE_[A-Za-z0-9_]*[A-Za-z0-9]")
ASSIGN_RE = re.compile(r"^(?:#\s*)?(SEEDANCE_[A-Z0-9_]+)=")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "secrets"}


def iter_text_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part in SKIP_DIRS for part in path.relative_to(root).parts):
            continue
        files.append(path)
    return files


def scan(root: Path, shown_root: Path) -> list[str]:
    problems = []
    for path in iter_text_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: nothing to check
        for lineno, line in enumerate(text.splitlines(), start=1):
            for match in NAME_RE.finditer(line):
                name = match.group(0).upper()
                if name in ALLOWED:
                    continue
                close = difflib.get_close_matches(name, sorted(ALLOWED), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                shown = path.relative_to(shown_root)
                problems.append(f"{shown}:{lineno}: unknown setting {match.group(0)}{hint}")
    return problems


def check_env_example(path: Path, shown_root: Path) -> list[str]:
    shown = path.relative_to(shown_root) if path.is_relative_to(shown_root) else path
    if not path.is_file():
        return [f"{shown}: missing"]
    lines = path.read_text(encoding="utf-8").splitlines()
    documented: dict[str, int] = {}
    problems = []
    for i, line in enumerate(lines):
        match = ASSIGN_RE.match(line.strip())
        if not match:
            continue
        name = match.group(1)
        documented.setdefault(name, i + 1)
        previous = lines[i - 1].strip() if i > 0 else ""
        if not previous.startswith("#") or ASSIGN_RE.match(previous):
            problems.append(f"{shown}:{i + 1}: {name} has no comment line right above it")
    for name in sorted(ALLOWED - documented.keys()):
        problems.append(f"{shown}: {name} is not documented (expected a `{name}=` line)")
    return problems


def check_against_package() -> list[str]:
    try:
        from seedance_worker.settings import known_env_names  # type: ignore[import-not-found]
    except Exception as exc:  # not installed here, or mid-edit: this part is best effort
        print(f"check_env: package cross-check skipped ({type(exc).__name__})")
        return []
    unknown = sorted(ALLOWED - set(known_env_names()))
    if not unknown:
        print("check_env: every allowed name is a setting of the installed seedance_worker package")
    return [f"deploy/check_env.py: {name} is not a setting of the installed package" for name in unknown]


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parent
    shown_root = root.parent
    problems = scan(root, shown_root)
    problems += check_env_example(root / "env.example", shown_root)
    problems += check_against_package()
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"check_env: {len(problems)} problem(s)")
        return 1
    print(f"check_env: ok ({len(iter_text_files(root))} files scanned, {len(ALLOWED)} allowed names)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
