"""A local simulator of the BytePlus ModelArk Seedance task API (stdlib only).

It is a real HTTP server on a socket that answers like ``https://ark.ap-southeast.bytepluses.com/api/v3``
for the four video-generation task endpoints, so any client (``requests``, the official
``byteplussdkarkruntime.Ark(base_url=sim.base_url)``, a Celery worker in another process) can be
pointed at it unchanged::

    POST   /api/v3/contents/generations/tasks          create  -> {"id": "cgt-YYYYMMDDHHMMSS-xxxxx"}
    GET    /api/v3/contents/generations/tasks/{id}     get     -> the task object
    GET    /api/v3/contents/generations/tasks          list    -> {"items": [...], "total": N}
    DELETE /api/v3/contents/generations/tasks/{id}     cancel (queued) / delete (terminal) -> {}
    GET    /files/{id}.mp4?X-Tos-...                   the generated video behind a signed, expiring URL
    GET    /files/{id}.png?X-Tos-...                   the last frame (only with ``return_last_frame``)

Usage::

    with Simulator(config=SimConfig(queued_s=0.1, running_s=0.2)) as sim:
        client = Ark(base_url=sim.base_url, api_key="any")
        ...
        task_id = sim.add_task([("queued", 0.1), ("preprocessing", 0.1), ("failed", None)])

Task life cycle.  Every task follows a *script*: a list of ``(status, duration_s)`` stages, the
last one usually ``(terminal_status, None)``.  Tasks created over HTTP get
``[("queued", queued_s), ("running", running_s), (fate, None)]``; ``sim.add_task(status_script=...)``
creates a task with any script, including undocumented statuses (served verbatim).  Independently
of the script, a non-terminal task whose ``created_at + execution_expires_after * time_scale`` has
passed becomes ``expired``.  Transitions are evaluated lazily on every request and by a background
ticker, so ``callback_url`` posts are sent even when nobody polls.  The clock is injectable
(``Simulator(clock=...)``, default ``time.time``).

Prompt markers (in any ``text`` content item of an HTTP create) pick the fate of that task:

* ``[fail]``            ends in ``failed`` with ``SimConfig.fail_code`` / ``fail_message``
* ``[fail:SomeCode]``   ends in ``failed`` with ``error.code == "SomeCode"``
* ``[expire]``          ends in ``expired`` (after the queued and running stages)
* ``[succeed]``         ends in ``succeeded`` even when ``SimConfig.default_fate`` says otherwise
* ``[slow]``            multiplies the queued and running durations by ``SimConfig.slow_factor``

Without a marker the fate is ``SimConfig.default_fate`` (``"succeeded"``).

Faults (``SimConfig``; change them at runtime with ``sim.configure(**kw)``) apply to the task API:
``latency_s``, ``error_rate_5xx`` (500 ``InternalServiceError``), ``rate_429`` (429 with
``Retry-After: retry_after_s``), ``timeout_rate`` (sleeps ``timeout_sleep_s`` and then answers
normally, so a client read timeout fires while the server still did the work), ``malformed_rate``
(200 with a truncated JSON body; the operation itself is performed), ``rps_limit`` (token bucket,
429 ``RateLimitExceeded.EndpointRPMExceeded``), plus ``sim.burst_429(...)`` and
``sim.rate_limit_task(...)``.  Faults apply to file downloads only with ``faults_apply_to_files``.

List (a multi-id read): repeated ``filter.task_ids``, ``filter.status``, ``filter.model``,
``filter.service_tier`` (flex tasks only with ``flex``), ``page_num`` and ``page_size`` in
[1, 500] (default 10), tasks created within ``list_window_s`` (7 days), newest first, ``total``
counted before paging.  ``list_refusal`` (404 or 405) answers every list like a gateway without
one; ``list_rps_limit`` / ``list_rps_burst`` rate-limit list calls on their own;
``list_requires_model`` wants ``filter.model`` (a key with Custom permissions).

Every request is recorded (``sim.requests()``) without the ``Authorization`` value; every callback
attempt is recorded in ``sim.callbacks_sent``; ``sim.add_response_observer(fn)`` sees the status
and headers of each response (a 429's ``Retry-After``, say) just before it is written.

Internal layout (import only the names re-exported here; the modules are internal and may change).
A request flows ``server`` (route, record, observe, write) -> ``endpoints`` (auth, ``faults``, the
task API) or ``downloads`` (signed files from ``media``) -> ``state`` (the ``TaskBook`` state machine
over ``task`` records, ``urls`` signing) -> ``callbacks`` (posts after the lock is released);
``config``, ``wire`` and ``validate`` are the shared vocabulary, ``simulator`` the facade, ``cli``
the foreground command.
"""

from seedance_worker.testing.simulator.cli import serve_forever_cli
from seedance_worker.testing.simulator.config import (
    API_PREFIX,
    TERMINAL_STATUSES,
    CallbackRecord,
    RequestKind,
    RequestRecord,
    SimConfig,
)
from seedance_worker.testing.simulator.media import make_mp4, make_png
from seedance_worker.testing.simulator.server import ResponseObserver
from seedance_worker.testing.simulator.simulator import Simulator

__all__ = [
    "API_PREFIX",
    "TERMINAL_STATUSES",
    "CallbackRecord",
    "RequestKind",
    "RequestRecord",
    "ResponseObserver",
    "SimConfig",
    "Simulator",
    "make_mp4",
    "make_png",
    "serve_forever_cli",
]
