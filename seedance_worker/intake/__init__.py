"""The callback intake: Ark's ``callback_url`` posts as hints that poll a job right away.

A stdlib WSGI app (no new dependency; mountable in any WSGI server, ``make_wsgi_app()``) served by
``serve_intake(host, port)`` on a threaded ``wsgiref`` server. Routes:

* ``POST /callbacks/j/<nonce>.<mac>``, the per-task URL ``submit()`` gives Ark, or the shared
  ``POST /callbacks/<token>`` of earlier versions (``urls.py`` has the format); anything else is 404
  and counted, and so is a per-task URL used for another task. Ark does not sign callbacks: the path
  is the only authentication, so it is never logged (request lines show ``/callbacks/[redacted]``).
  The body has the shape of GET task (``id``, ``status``, ``updated_at``) and is not kept: over
  ``MAX_BODY_BYTES`` is 413; bad JSON, JSON nested deeper than ``MAX_JSON_DEPTH``, no valid ``id``,
  a status no task has or an ``updated_at`` that is no Unix time is 400. The job is looked up first
  (``JobStore.hint``, one Lua script): an untracked or finished job is 202 ``ignored`` and nothing is
  written; a repeat of the job's last callback is 200 ``duplicate``; a status the last poll already
  saw is 202 ``unchanged``. Otherwise the job gets one early poll (202 ``accepted``; the poll stays
  the source of truth, the body is not trusted), at most one per poll generation (202 ``pending``
  while it is on its way) and never sooner than ``SEEDANCE_INTAKE_POLL_MIN_INTERVAL_S`` after the
  job's last poll (it is published with the rest as countdown; 202 ``scheduled`` when the regular
  poll comes as soon). So a token holder cannot make more GETs than that floor allows. Redis or the
  broker down: 503, so Ark retries.
* ``GET /healthz``: 200 ``ok``.

The server reads each request under two deadlines (``SEEDANCE_INTAKE_HEADER_TIMEOUT_S`` for the
request line and headers, ``SEEDANCE_INTAKE_BODY_TIMEOUT_S`` for the body; 408 and closed past
them) and serves at most ``SEEDANCE_INTAKE_MAX_CONNECTIONS`` connections at once, one thread each;
one more is answered 503 and closed at once by the accepting thread. Values from a request reach
log lines escaped (``shown``), never raw; no traceback is printed or sent to the peer.

Modules: ``body`` (reading a callback body), ``urls`` (the URLs and their check), ``app`` (the WSGI
app), ``server`` (serving it).
"""

from __future__ import annotations

from seedance_worker.intake.app import IntakeApp, make_wsgi_app
from seedance_worker.intake.body import MAX_BODY_BYTES, MAX_JSON_DEPTH, Callback, parse_callback, shown
from seedance_worker.intake.server import CONN_THREAD_NAME, make_intake_server, serve_intake
from seedance_worker.intake.urls import CALLBACK_PREFIX, JOB_PREFIX, callback_url_for, job_callback_url

__all__ = [
    "CALLBACK_PREFIX", "CONN_THREAD_NAME", "JOB_PREFIX", "MAX_BODY_BYTES", "MAX_JSON_DEPTH", "Callback",
    "IntakeApp", "callback_url_for", "job_callback_url", "make_intake_server", "make_wsgi_app",
    "parse_callback", "serve_intake", "shown",
]  # fmt: skip
