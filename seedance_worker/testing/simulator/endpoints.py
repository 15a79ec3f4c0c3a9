"""The task API proper: bearer auth, the injected fault, then create / get / list / delete against
the task book, each answering the JSON the live service answers.
"""

from __future__ import annotations

import time
from typing import Any

from seedance_worker.testing.simulator.config import (
    LIST_STATUSES,
    TASKS_PATH,
    RequestKind,
    Shared,
    SimConfig,
)
from seedance_worker.testing.simulator.faults import FaultGate
from seedance_worker.testing.simulator.state import Jobs, Script, TaskBook
from seedance_worker.testing.simulator.task import Task
from seedance_worker.testing.simulator.validate import invalid, parse_markers, validate_create
from seedance_worker.testing.simulator.wire import ApiError, Reply, dumps


def _not_found(task_id: str, cfg: SimConfig) -> ApiError:
    return ApiError(404, cfg.not_found_code, f"The specified task {task_id} is not found.", "id")


def _check_auth(auth: str | None, cfg: SimConfig) -> None:
    key = ""
    if auth and auth[:7].lower() == "bearer ":
        key = auth[7:].strip()
    if not key or (cfg.api_keys is not None and key not in cfg.api_keys):
        raise ApiError(
            401, "AuthenticationError", "The API key or AK/SK in the request is missing or invalid."
        )


def _list_refused(status: int) -> ApiError:
    # What a gateway without the list route answers: no Ark envelope semantics behind it.
    code = "NotFound" if status == 404 else "MethodNotAllowed"
    return ApiError(status, code, f"GET {TASKS_PATH} is not supported.", "")


class _ListQuery:
    """The list endpoint's query string, checked the way the live service checks it.

    ``page_size`` defaults to 10 (what the SDK example sends; the API's own default is not
    documented); ``filter.service_tier`` to ``default``, so flex tasks are listed only when asked
    for; only tasks created within ``list_window_s`` (7 days) are covered.
    """

    def __init__(self, query: dict[str, list[str]], cfg: SimConfig) -> None:
        self._query = query
        self.page_num = self._int_param("page_num", 1)
        self.page_size = self._int_param("page_size", 10)
        self.statuses = {v for v in query.get("filter.status", []) if v}
        for s in self.statuses:
            if s not in LIST_STATUSES:
                raise invalid("filter.status", f"unknown status {s!r}")
        self.ids = {i for v in query.get("filter.task_ids", []) for i in v.split(",") if i}
        self.model = self._last("filter.model")
        if self.model is None and cfg.list_requires_model:
            raise ApiError(
                400, "MissingParameter", "The parameter filter.model is required for this API key.",
                "filter.model",
            )  # fmt: skip
        self.window_s = cfg.list_window_s
        self.tier = self._last("filter.service_tier") or "default"
        if self.tier not in ("default", "flex"):
            raise invalid("filter.service_tier", "must be one of default, flex")

    def _last(self, name: str) -> str | None:
        vals = [v for v in self._query.get(name, []) if v != ""]
        return vals[-1] if vals else None

    def _int_param(self, name: str, default: int) -> int:
        v = self._last(name)
        if v is None:
            return default
        try:
            n = int(v)
        except ValueError:
            raise invalid(name, "must be an integer") from None
        if not 1 <= n <= 500:
            raise invalid(name, "value must be in [1, 500]")
        return n

    def matches(self, t: Task, now: float) -> bool:
        return (
            t.created_at > now - self.window_s
            and (not self.statuses or t.status in self.statuses)
            and (not self.ids or t.id in self.ids)
            and (self.model is None or t.model == self.model)
            and t.request.get("service_tier", "default") == self.tier
        )


class TaskApi:
    """Answers the four task endpoints; an ``ApiError`` raised here becomes the error envelope."""

    def __init__(self, shared: Shared, book: TaskBook, faults: FaultGate) -> None:
        self._shared = shared
        self._book = book
        self._faults = faults

    def answer(
        self,
        kind: RequestKind,
        task_id: str | None,
        query: dict[str, list[str]],
        raw: bytes,
        parsed: Any,
        auth: str | None,
        cfg: SimConfig,
    ) -> Reply:
        if cfg.latency_s > 0:
            time.sleep(cfg.latency_s)
        if kind == "list" and cfg.list_refusal is not None:
            raise _list_refused(cfg.list_refusal)
        _check_auth(auth, cfg)
        with self._shared.lock:
            fault = self._faults.decide(kind, task_id, cfg)
        if fault == "timeout":
            time.sleep(cfg.timeout_sleep_s)
        try:
            if kind == "create":
                status, body, tid = self._create(raw, parsed, cfg)
            elif kind == "get":
                status, body, tid = self._get(task_id or "", cfg)
            elif kind == "list":
                status, body = self._list(query, cfg)
                tid = None
            else:
                status, body, tid = self._delete(task_id or "", cfg)
        except ApiError as e:
            if e.fault is None:
                e.fault = fault
            raise
        data = dumps(body)
        if fault == "malformed":
            data = data[: max(1, len(data) // 2)]
        return Reply(status, data, fault=fault, task_id=tid)

    def _create(self, raw: bytes, parsed: Any, cfg: SimConfig) -> tuple[int, Any, str]:
        if parsed is None:
            if not raw.strip():
                raise ApiError(400, "MissingParameter", "The request body is empty.", "")
            raise ApiError(400, "InvalidParameter", "The request body is not valid JSON.", "")
        req = validate_create(parsed, cfg.strict_model_fields)
        text = " ".join(
            str(c.get("text") or "")
            for c in req["content"]
            if isinstance(c, dict) and c.get("type") == "text"
        )
        fate, code, slow = parse_markers(text, cfg)
        q, r = cfg.queued_s, cfg.running_s
        if slow:
            q, r = q * cfg.slow_factor, r * cfg.slow_factor
        script: Script = [("queued", q), ("running", r), (fate, None)]

        def op(now: float, jobs: Jobs) -> Task:
            if cfg.max_queued is not None and self._book.queued_count_locked() >= cfg.max_queued:
                raise ApiError(
                    429,
                    "QuotaExceeded",
                    f"The number of queued tasks has reached the limit of {cfg.max_queued}.",
                    "",
                    [("Retry-After", str(int(cfg.retry_after_s)))],
                )
            return self._book.new_task_locked(
                now, req, script, fate=fate, usage_tokens=None, error_code=code, error_message=None,
                task_id=None, overrides={}, response_extra={}, jobs=jobs,
            )  # fmt: skip

        task = self._book.run(op)
        return 200, {"id": task.id}, task.id

    def _get(self, task_id: str, cfg: SimConfig) -> tuple[int, Any, str]:
        def op(now: float, jobs: Jobs) -> dict[str, Any]:
            t = self._book.find_locked(task_id)
            if t is None:
                raise _not_found(task_id, cfg)
            return self._book.body_locked(t, now)

        return 200, self._book.run(op), task_id

    def _list(self, query: dict[str, list[str]], cfg: SimConfig) -> tuple[int, Any]:
        q = _ListQuery(query, cfg)

        def op(now: float, jobs: Jobs) -> dict[str, Any]:
            if q.ids and len(q.ids) < len(self._book.tasks):
                found = (self._book.tasks.get(i) for i in q.ids)
                pool = [t for t in found if t is not None]
            else:
                pool = list(self._book.tasks.values())
            matches = [t for t in pool if q.matches(t, now)]
            matches.sort(key=lambda t: (t.created_at, t.seq), reverse=True)
            page = matches[(q.page_num - 1) * q.page_size : q.page_num * q.page_size]
            return {"items": [self._book.body_locked(t, now) for t in page], "total": len(matches)}

        return 200, self._book.run(op)

    def _delete(self, task_id: str, cfg: SimConfig) -> tuple[int, Any, str]:
        def op(now: float, jobs: Jobs) -> None:
            t = self._book.find_locked(task_id)
            if t is None:
                raise _not_found(task_id, cfg)
            if t.status == "queued":
                self._book.cancel_locked(t, now, jobs)
            elif t.status in ("succeeded", "failed", "expired"):
                self._book.delete_locked(t, now)
            else:
                raise ApiError(
                    403,
                    "OperationDenied.InvalidState",
                    f"The operation is denied because the task {task_id} is in `{t.status}` status "
                    "and can be neither cancelled nor deleted.",
                    "id",
                )

        self._book.run(op)
        return 200, {}, task_id
