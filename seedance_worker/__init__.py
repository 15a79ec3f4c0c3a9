"""seedance-worker: run BytePlus ModelArk Seedance video generation jobs inside Celery.

Public surface: ``track``, ``submit``, ``estimate``, ``cancel``, ``install``, the ``poll`` task, ``Outcome``,
``Settings`` (and ``Account``, one of its named accounts) and the ``errors`` module.
``celery -A seedance_worker worker`` finds the bundled ``app``.
"""

from __future__ import annotations

from typing import Any

from seedance_worker import errors

# The modules poll.py, submit.py, track.py and cancel.py share their names with the public
# callables; binding the callables here, after the modules are imported, makes
# `seedance_worker.poll` the task.
from seedance_worker.cancel import CancelResult, cancel
from seedance_worker.engine.poll import poll
from seedance_worker.errors import GenerationCancelled, GenerationExpired, GenerationFailed, TaskNotFound
from seedance_worker.models import Outcome, Status, TaskSnapshot
from seedance_worker.settings import Settings, get_settings
from seedance_worker.settings_parts import Account
from seedance_worker.submit import estimate, submit
from seedance_worker.track import track
from seedance_worker.version import __version__
from seedance_worker.wiring.app import bundled_app, install

__all__ = [
    "Account",
    "CancelResult",
    "GenerationCancelled",
    "GenerationExpired",
    "GenerationFailed",
    "Outcome",
    "Settings",
    "Status",
    "TaskNotFound",
    "TaskSnapshot",
    "__version__",
    "app",
    "cancel",
    "errors",
    "estimate",
    "get_settings",
    "install",
    "poll",
    "submit",
    "track",
]


def __getattr__(name: str) -> Any:
    # Lazy, so `import seedance_worker.testing.simulator` (or the CLI's --help) needs no settings.
    if name in ("app", "celery"):
        return bundled_app()
    raise AttributeError(f"module 'seedance_worker' has no attribute {name!r}")
