"""Worker logs that read as a timeline, optionally as JSON, and never carry secrets.

Hooked on Celery's ``after_setup_logger`` / ``after_setup_task_logger`` (celeryapp.py imports this
module, so it applies to the bundled app and to host apps that call ``install(app)``). Every
handler Celery configured (root, ``celery.task``, the multiprocessing logger) gets:

* with ``SEEDANCE_LOG_JSON=true``: ``JsonFormatter``, one JSON object per line with ``ts``, ``level``,
  ``logger``, ``message``, ``pid``, ``task_id`` / ``task_name`` inside a task (or on Celery's own
  "received"/"succeeded" lines), ``exc`` for tracebacks, and for the poll decision lines
  (``poll <id> try=N status=S next_in=Xs gen=G``) the fields ``job_id``, ``try``, ``status``,
  ``next_in_s``, ``gen``. Celery's start banner (not a log record) is turned off in that mode.
* always: redaction of the configured secret values (API key, webhook secret, intake token, the
  Redis password) and of the query strings of ``http(s)://`` URLs. Signed ``video_url``s carry
  their credentials in the query, and Celery's ``Task ... succeeded in ...: <return value>`` line
  (``celery.app.trace``) and its DEBUG "TaskPool: Apply" lines print the Outcome that holds them.
  Redaction runs on the formatted line (tracebacks included), so no record escapes it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from seedance_worker.settings_parts import url_passwords

REDACTED = "[redacted]"

_URL_QUERY = re.compile(r"(?P<base>\bhttps?://[^\s?#'\"<>\\]+)\?[^\s'\"<>#\\]*")
# urllib3's DEBUG line names the host apart from the request line: `http://h:1 "POST /p?token=x HTTP/1.1"`.
_REQUEST_LINE_QUERY = re.compile(r'(?P<base>"[A-Z]+ /[^\s?"]*)\?[^\s"]*')
_POLL_LINE = re.compile(
    r"^poll (?P<job_id>\S+) try=(?P<try>\d+) status=(?P<status>\S+)"
    r"(?: next_in=(?P<next_in_s>[0-9.]+)s gen=(?P<gen>\d+)| (?P<terminal>terminal))"
)
_MIN_SECRET_LEN = 4  # shorter values would garble every line; settings keep real secrets longer


def secret_values(settings: Any = None) -> list[str]:
    """The configured secrets, as they could appear in a log line (raw and URL-quoted)."""
    if settings is None:
        try:
            from seedance_worker.settings import get_settings

            settings = get_settings()
        except Exception:
            return []
    found: list[str] = []
    for name in ("api_key", "notify_secret", "intake_token", "redis_sentinel_password"):
        value = getattr(settings, name, None)
        raw = value.get_secret_value() if value is not None else ""
        if raw:
            found.append(raw)
            if raw.startswith("whsec_"):
                found.append(raw.removeprefix("whsec_"))
    for account in (getattr(settings, "accounts", None) or {}).values():
        raw = account.api_key.get_secret_value() if account.api_key is not None else ""
        if raw:
            found.append(raw)
    for password in url_passwords(getattr(settings, "redis_url", None) or ""):
        found.extend([password, unquote(password)])
    variants = set()
    for raw in found:
        variants.update({raw, quote(raw, safe=""), json.dumps(raw)[1:-1]})
    # Longest first: a secret that contains another is replaced whole.
    return sorted((v for v in variants if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def redact(url: str) -> str:
    """``scheme://host/path`` of a URL: signed URLs carry their credentials in the query string."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Redactor:
    """Replaces secret values and URL query strings in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "?" in text:
            text = _URL_QUERY.sub(r"\g<base>?" + REDACTED, text)
            text = _REQUEST_LINE_QUERY.sub(r"\g<base>?" + REDACTED, text)
        return text


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _task_of(record: logging.LogRecord) -> tuple[str | None, str | None]:
    try:
        from celery._state import get_current_task

        task = get_current_task()
    except Exception:
        task = None
    if task is not None and getattr(task, "request", None) is not None and task.request.id:
        return str(task.request.id), str(task.name)
    # Celery's own task lines ("received", "succeeded in") carry the task in their args.
    args = record.args
    if isinstance(args, Mapping) and "id" in args and "name" in args:
        return str(args["id"]), str(args["name"])
    return None, None


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring for the fields."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        red = self.redactor
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the record
            message = f"{record.msg!r} (unformattable: {exc})"
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": red(message),
            "pid": record.process,
        }
        task_id, task_name = _task_of(record)
        if task_id:
            doc["task_id"] = task_id
            doc["task_name"] = task_name
        if record.name == "seedance_worker.engine.poll":
            m = _POLL_LINE.match(message)
            if m:
                doc["job_id"] = m["job_id"]
                doc["try"] = int(m["try"])
                doc["status"] = m["status"]
                if m["terminal"]:
                    doc["terminal"] = True
                else:
                    doc["next_in_s"] = float(m["next_in_s"])
                    doc["gen"] = int(m["gen"])
        if record.exc_info:
            doc["exc"] = red(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc"] = red(record.exc_text)
        if record.stack_info:
            doc["stack"] = red(self.formatStack(record.stack_info))
        return red(json.dumps(doc, ensure_ascii=False, default=str))


class RedactingFormatter(logging.Formatter):
    """Wraps another formatter and redacts its output (plain-text mode)."""

    def __init__(self, inner: logging.Formatter | None, redactor: Redactor) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(self.inner.format(record))


def decorate_handler(handler: logging.Handler, *, json_mode: bool, redactor: Redactor) -> None:
    """Give ``handler`` the JSON or a redacting formatter (idempotent)."""
    current = handler.formatter
    if json_mode:
        if not isinstance(current, JsonFormatter):
            handler.setFormatter(JsonFormatter(redactor))
        else:
            current.redactor = redactor
        return
    if isinstance(current, RedactingFormatter):
        current.redactor = redactor
    else:
        handler.setFormatter(RedactingFormatter(current, redactor))


def _loggers_with_handlers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.handlers:
            found.append(logger)
    return found


def configure(settings: Any = None, loggers: Iterable[logging.Logger] | None = None) -> None:
    """Apply the JSON/redaction setup to every handler of ``loggers`` (default: all configured)."""
    json_mode = False
    if settings is None:
        try:
            from seedance_worker.settings import get_settings

            settings = get_settings()
        except Exception:
            settings = None
    if settings is not None:
        json_mode = bool(settings.log_json)
    redactor = Redactor(secret_values(settings))
    for logger in loggers if loggers is not None else _loggers_with_handlers():
        for handler in logger.handlers:
            decorate_handler(handler, json_mode=json_mode, redactor=redactor)


def setup_process_logging(level: int = logging.INFO, settings: Any = None) -> None:
    """For processes Celery does not configure (the intake): one stderr handler, same rules."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(name)s] %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    configure(settings)


def _json_enabled() -> bool:
    try:
        from seedance_worker.settings import get_settings

        return bool(get_settings().log_json)
    except Exception:
        return False


_early_handler: logging.Handler | None = None


def json_from_the_start(instance: Any = None) -> None:
    """Worker only, before anything is printed: no banner, and start-up warnings as JSON lines.

    The start banner and Celery's start-up warnings (e.g. running as root) come before Celery sets up
    logging; in JSON mode they would break "one object per line".
    """
    global _early_handler
    if not _json_enabled():
        return
    if instance is not None and hasattr(instance, "quiet"):
        instance.quiet = True
    if _early_handler is None:
        _early_handler = logging.StreamHandler()
        _early_handler.setFormatter(JsonFormatter(Redactor(secret_values())))
        warn_log = logging.getLogger("py.warnings")
        warn_log.addHandler(_early_handler)
        warn_log.propagate = False
        logging.captureWarnings(True)


def drop_early_handler() -> None:
    global _early_handler
    if _early_handler is not None:
        warn_log = logging.getLogger("py.warnings")
        warn_log.removeHandler(_early_handler)
        warn_log.propagate = True
        _early_handler = None
