"""The run's stand-ins and process plumbing: the simulator that also keeps the ``Retry-After`` it
answered, the SEEDANCE_* environment of a run and the driver's Celery app.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from celery import Celery, current_app

from seedance_worker import install
from seedance_worker.settings import get_settings
from seedance_worker.testing.simulator import Simulator
from seedance_worker.wiring import host
from seedance_worker.wiring.app import reset_caches
from seedance_worker.wiring.conf import celery_config


@contextlib.contextmanager
def seedance_environ(values: dict[str, str]) -> Iterator[None]:
    """Exactly these SEEDANCE_* variables for the run (workers inherit them); restored afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("SEEDANCE_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(values)
    reset_caches()
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.upper().startswith("SEEDANCE_")]:
            del os.environ[k]
        os.environ.update(saved)
        reset_caches()


@contextlib.contextmanager
def driver_app() -> Iterator[Any]:
    """A Celery app for this process on the run's Redis (track()/submit() publish through it)."""
    previous = current_app._get_current_object()
    app = Celery("seedance_faults_driver")
    app.conf.update(celery_config(get_settings()))
    install(app)
    app.set_current()
    try:
        yield app
    finally:
        previous.set_current()
        host.forget()
        with contextlib.suppress(Exception):
            app.close()


class RecordingSimulator(Simulator):
    """The simulator, also keeping the ``Retry-After`` it answered, by request id.

    ``RequestRecord`` keeps the request's headers, not the response's; the exact value each 429 told
    the client is what the Retry-After check must compare with.  (The simulator's server already
    keeps quiet about the resets of SIGKILLed workers.)
    """

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.retry_after: dict[str, float] = {}
        self.add_response_observer(self._keep_retry_after)

    def _keep_retry_after(self, request_id: str, status: int, headers: Mapping[str, str]) -> None:
        for k, v in headers.items():
            if k.lower() == "retry-after":
                with contextlib.suppress(ValueError):
                    self.retry_after[request_id] = float(v)


def quiet_resets(server: Any) -> None:
    """A SIGKILLed worker resets its keep-alive sockets: not worth a traceback on stderr."""
    original = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        original(request, client_address)

    server.handle_error = handle_error
