"""``seedance-worker`` (also ``python -m seedance_worker``): the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from seedance_worker import errors
from seedance_worker.cli_ledger import add_ledger_parser
from seedance_worker.cli_output import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, console, print_json
from seedance_worker.version import __version__


def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


# --- commands -------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from seedance_worker.client import get_client, validate_task_id

    validate_task_id(args.task_id)
    try:
        snap = get_client(None, args.account).get_task(args.task_id)
    except errors.TaskNotFound as exc:
        print(f"seedance-worker: task {args.task_id} not found ({exc})", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(snap.model_dump(mode="json", exclude_none=True))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"task {snap.id}", show_header=False)
    for key, value in snap.model_dump(mode="json", exclude_none=True).items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console().print(table)
    return EXIT_OK


def _step_errors_note(step_errors: dict[str, Any]) -> str:
    if not step_errors:
        return ""
    kinds = ", ".join(f"{step}: {(err or {}).get('kind') or 'error'}" for step, err in step_errors.items())
    return f" (step errors: {kinds})"


def _wait_outcomes(results: Sequence[Any], timeout_s: float | None, as_json: bool) -> int:
    code = EXIT_OK
    for res in results:
        try:
            outcome = res.get(timeout=timeout_s, propagate=True)
        except errors.GenerationFailed as exc:
            outcome = exc.outcome.wire()
            code = EXIT_FAILED
        step_errors = outcome.get("step_errors") or {}
        if step_errors:
            code = EXIT_FAILED  # a paid video that was not stored (or not charged, not notified)
        if as_json:
            print_json(outcome)
        else:
            print(f"{outcome['task_id']}: {outcome['status']}{_step_errors_note(step_errors)}")
    return code


def cmd_track(args: argparse.Namespace) -> int:
    from seedance_worker.track import track_many

    results = track_many(args.task_ids, metadata=args.metadata, account=args.account)
    for tid, res in zip(args.task_ids, results, strict=True):
        print(f"tracking {tid} (poll chain {res.id})")
    if args.wait:
        return _wait_outcomes(results, args.timeout, args.json)
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from seedance_worker.submit import submit

    content: list[dict[str, Any]] = [{"type": "text", "text": args.prompt}]
    roles = list(args.role or [])
    for i, url in enumerate(args.image or []):
        item: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
        if i < len(roles):
            item["role"] = roles[i]
        content.append(item)
    for url in args.video or []:
        content.append({"type": "video_url", "video_url": {"url": url}, "role": "reference_video"})
    fields: dict[str, Any] = {}
    for name in ("resolution", "ratio", "duration", "service_tier"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    remote_id, result = submit(
        args.model,
        content,
        idempotency_key=args.idempotency_key,
        metadata=args.metadata,
        account=args.account,
        reserve=args.reserve,
        **fields,
    )
    # Waiting for an admission slot: no remote id yet, the handle's id instead.
    print(remote_id or f"waiting {result.id}")
    if args.wait:
        return _wait_outcomes([result], args.timeout, args.json)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from seedance_worker.cancel import cancel

    code = EXIT_OK
    for tid in args.task_ids:
        res = cancel(tid, stop_tracking=args.stop_tracking)
        if not res.ended:
            code = EXIT_FAILED
        if args.json:
            print_json({"task_id": res.task_id, "result": res.result, "message": res.message})
        else:
            print(f"{res.task_id}: {res.result}: {res.message}")
    return code


def cmd_jobs(args: argparse.Namespace) -> int:
    from seedance_worker.engine.admission import waiting
    from seedance_worker.engine.store import get_store
    from seedance_worker.settings import DEFAULT_ACCOUNT, get_settings

    records = get_store().all(limit=args.limit)
    queued = waiting(get_settings(), limit=args.limit)
    if args.json:
        print_json([r.public() for r in records] + queued)
        return EXIT_OK
    from rich.table import Table

    if queued:
        console().print(_waiting_table(queued))

    table = Table(title=f"{len(records)} tracked jobs")
    # The account column only when some job is not the default account's.
    accounts = any(r.account for r in records)
    for col in ("task id", *(("account",) if accounts else ()), "state", "status", "polls", "next poll",
                "hand-off", "last error"):  # fmt: skip
        table.add_column(col)
    for r in records:
        table.add_row(
            r.task_id,
            *((r.account or DEFAULT_ACCOUNT,) if accounts else ()),
            r.state,
            str(r.status or "-"),
            str(r.polls),
            _fmt_ts(r.next_due_at) if r.state == "polling" else "-",
            r.handoff or "-",
            _short_error(r.last_error),
        )
    console().print(table)
    return EXIT_OK


def _waiting_table(queued: list[dict[str, Any]]) -> Any:
    """Submissions waiting for an admission slot (not created yet: no task id)."""
    from rich.table import Table

    from seedance_worker.settings import DEFAULT_ACCOUNT

    table = Table(title=f"{len(queued)} waiting submissions (admission control)")
    for col in ("position", "account", "state", "idempotency key", "handle", "waiting since"):
        table.add_column(col)
    for w in queued:
        table.add_row(str(w["position"]), w["account"] or DEFAULT_ACCOUNT, "waiting", w["idempotency_key"],
                      w["handle"], _fmt_ts(w["queued_at"]))  # fmt: skip
    return table


def _short_error(text: str | None, width: int = 90) -> str:
    """The error's class and the end of its message (where the cause is), for a table cell."""
    if not text:
        return ""
    if len(text) <= width:
        return text
    head, _, rest = text.partition(": ")
    return f"{head}: ...{rest[-(width - len(head) - 5) :]}"


def cmd_simulate(args: argparse.Namespace) -> int:
    from seedance_worker.testing.simulator import SimConfig, serve_forever_cli

    cfg = SimConfig()
    for name in ("queued_s", "running_s", "latency_s", "error_rate_5xx", "rate_429", "malformed_rate"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.require_key:
        cfg.api_keys = frozenset(args.require_key)
    serve_forever_cli(args.host, args.port, cfg)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from seedance_worker.check import run_checks

    problems = run_checks()
    if problems:
        print(f"seedance-worker check: {problems[0]}", file=sys.stderr)
        return EXIT_FAILED
    print("ok")
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from seedance_worker.engine.sweep import run_sweep
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    print(f"re-adopted {run_sweep()} jobs")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from seedance_worker.demo import run_demo

    return run_demo(jobs=args.jobs, workdir=args.dir, timeout_s=args.timeout)


def cmd_intake(args: argparse.Namespace) -> int:
    from seedance_worker.intake import serve_intake

    serve_intake(args.host, args.port)
    return EXIT_OK


# --- parser ---------------------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, like \'{"user": "u1"}\'')
    return value


Sub = Any  # argparse's sub-parsers action (its type is private to argparse)
_ACCOUNT_HELP = "a name of SEEDANCE_ACCOUNTS (default: the SEEDANCE_API_KEY account)"


def _add_job_commands(sub: Sub) -> None:
    """The commands that start or show jobs: demo, submit, track, status, jobs, ledger."""
    s = sub.add_parser("demo", help="run the whole job on an embedded Redis, simulator and worker")
    s.add_argument("--jobs", type=int, default=4, help="how many videos to generate (default 4)")
    s.add_argument("--dir", default="seedance-demo", help="where videos, ledger and logs go")
    s.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("submit", help="create a generation task (once per key) and track it")
    s.add_argument("--model", required=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--image", action="append", help="image URL (repeatable)")
    s.add_argument("--role", action="append", help="role of the image at the same position")
    s.add_argument("--video", action="append", help="reference video URL (repeatable)")
    s.add_argument("--resolution")
    s.add_argument("--ratio")
    s.add_argument("--duration", type=int)
    s.add_argument("--service-tier", dest="service_tier")
    s.add_argument("--reserve", action="store_true", help="hold the estimate in the ledger until charged")
    s.add_argument("--idempotency-key")
    s.add_argument("--account", help=_ACCOUNT_HELP)
    s.add_argument("--metadata", type=_json_object)
    s.add_argument("--wait", action="store_true")
    s.add_argument("--timeout", type=float, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("track", help="start tracking existing remote tasks")
    s.add_argument("task_ids", nargs="+", metavar="ID")
    s.add_argument("--account", help=_ACCOUNT_HELP)
    s.add_argument("--metadata", type=_json_object)
    s.add_argument("--wait", action="store_true", help="wait and print each Outcome")
    s.add_argument("--timeout", type=float, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_track)

    s = sub.add_parser("cancel", help="cancel a queued remote task and end its job as cancelled")
    s.add_argument("task_ids", nargs="+", metavar="ID")
    s.add_argument("--stop-tracking", action="store_true", help="a running task (Ark cannot cancel "
                   "it): end the job here without downstream steps; Ark runs and bills it on")  # fmt: skip
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("status", help="one GET of a remote task")
    s.add_argument("task_id", metavar="ID")
    s.add_argument("--account", help=_ACCOUNT_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("jobs", help="tracked jobs and where each stands, and submissions waiting")
    s.add_argument("--json", action="store_true")
    s.add_argument("--limit", type=int, default=1000)
    s.set_defaults(func=cmd_jobs)

    add_ledger_parser(sub)


def _add_operations_commands(sub: Sub) -> None:
    """The commands that run services or maintenance: simulate, check, sweep, intake."""
    s = sub.add_parser("simulate", help="run the local Ark API simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8089)
    s.add_argument("--queued-s", dest="queued_s", type=float)
    s.add_argument("--running-s", dest="running_s", type=float)
    s.add_argument("--latency-s", dest="latency_s", type=float)
    s.add_argument("--error-rate", dest="error_rate_5xx", type=float)
    s.add_argument("--rate-429", dest="rate_429", type=float)
    s.add_argument("--malformed-rate", dest="malformed_rate", type=float)
    s.add_argument("--require-key", action="append", help="accept only this API key (repeatable)")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("check", help="exit 0 when Redis, the API and the download dir are usable")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("sweep", help="re-drive jobs whose lease ran out (beat does this periodically)")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("intake", help="serve the callback intake web app")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8090)
    s.set_defaults(func=cmd_intake)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seedance-worker", description="Seedance video jobs inside Celery.")
    p.add_argument("--version", action="version", version=f"seedance-worker {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_job_commands(sub)
    _add_operations_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in ("simulate", "demo"):
            from seedance_worker.settings import get_settings

            get_settings()  # a bad SEEDANCE_* variable fails here, naming it
        code: int = args.func(args)
        return code
    except errors.ConfigError as exc:
        print(f"seedance-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except errors.SeedanceError as exc:
        print(f"seedance-worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        import redis

        if isinstance(exc, redis.exceptions.RedisError):
            print(f"seedance-worker: cannot use Redis at {_redis_where()}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


def _redis_where() -> str:
    """Host and port of SEEDANCE_REDIS_URL (the sentinels and master name of a sentinel:// one),
    without any password in it."""
    from urllib.parse import urlsplit

    from seedance_worker.settings import get_settings
    from seedance_worker.settings_parts import is_sentinel_url, sentinel_url

    settings = get_settings()
    if is_sentinel_url(settings.redis_url):
        nodes = ",".join(f"{host}:{port}" for host, port in sentinel_url(settings.redis_url).nodes)
        return f"SEEDANCE_REDIS_URL (master {settings.redis_sentinel_master} of sentinels {nodes})"
    parts = urlsplit(settings.redis_url)
    return f"SEEDANCE_REDIS_URL ({parts.hostname}:{parts.port or 6379})"


if __name__ == "__main__":
    sys.exit(main())
