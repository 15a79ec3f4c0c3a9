"""``seedance-worker`` (also ``python -m seedance_worker``): the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from seedance_worker import errors
from seedance_worker.version import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _console() -> Any:
    from rich.console import Console

    # Piped output (logs, CI, `| grep`) gets wide tables instead of rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 200)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


# --- commands -------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from seedance_worker.client import get_client, validate_task_id

    validate_task_id(args.task_id)
    try:
        snap = get_client().get_task(args.task_id)
    except errors.TaskNotFound as exc:
        print(f"seedance-worker: task {args.task_id} not found ({exc})", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        _print_json(snap.model_dump(mode="json", exclude_none=True))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"task {snap.id}", show_header=False)
    for key, value in snap.model_dump(mode="json", exclude_none=True).items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    _console().print(table)
    return EXIT_OK


def _wait_outcomes(results: Sequence[Any], timeout_s: float | None, as_json: bool) -> int:
    code = EXIT_OK
    for res in results:
        try:
            outcome = res.get(timeout=timeout_s, propagate=True)
        except errors.GenerationFailed as exc:
            outcome = exc.outcome.wire()
            code = EXIT_FAILED
        if as_json:
            _print_json(outcome)
        else:
            print(f"{outcome['task_id']}: {outcome['status']}")
    return code


def cmd_track(args: argparse.Namespace) -> int:
    from seedance_worker.track import track_many

    results = track_many(args.task_ids, metadata=args.metadata)
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
    fields: dict[str, Any] = {}
    for name in ("resolution", "ratio", "duration", "service_tier"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    remote_id, result = submit(
        args.model, content, idempotency_key=args.idempotency_key, metadata=args.metadata, **fields
    )
    print(remote_id)
    if args.wait:
        return _wait_outcomes([result], args.timeout, args.json)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    from seedance_worker.engine.store import get_store

    records = get_store().all(limit=args.limit)
    if args.json:
        _print_json([r.public() for r in records])
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"{len(records)} tracked jobs")
    for col in ("task id", "state", "status", "polls", "next poll", "hand-off", "last error"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r.task_id,
            r.state,
            str(r.status or "-"),
            str(r.polls),
            _fmt_ts(r.next_due_at) if r.state == "polling" else "-",
            r.handoff or "-",
            _short_error(r.last_error),
        )
    _console().print(table)
    return EXIT_OK


def _short_error(text: str | None, width: int = 90) -> str:
    """The error's class and the end of its message (where the cause is), for a table cell."""
    if not text:
        return ""
    if len(text) <= width:
        return text
    head, _, rest = text.partition(": ")
    return f"{head}: ...{rest[-(width - len(head) - 5):]}"


def _export_ledger(since: float | None) -> int:
    """One JSON object per line on stdout, in charge order; the count on stderr."""
    from seedance_worker.settings import get_settings
    from seedance_worker.steps.charge import iter_ledger

    count = 0
    for entry in iter_ledger(get_settings(), since=since):
        sys.stdout.write(json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n")
        count += 1
    sys.stdout.flush()
    print(f"exported {count} ledger entries", file=sys.stderr)
    return EXIT_OK


def cmd_ledger(args: argparse.Namespace) -> int:
    from seedance_worker.settings import get_settings
    from seedance_worker.steps.charge import list_ledger

    if args.export:
        return _export_ledger(args.since)
    if args.since is not None:
        print("seedance-worker: --since goes with --export jsonl", file=sys.stderr)
        return EXIT_FAILED
    entries, totals = list_ledger(get_settings())
    if args.json:
        _print_json({"entries": entries, "totals": totals})
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"ledger: {len(entries)} entries")
    for col in ("task id", "model", "tier", "tokens", "amount", "metadata"):
        table.add_column(col)
    for e in entries:
        amount = f"{e.get('amount')} {e.get('currency')}" if e.get("amount") else "-"
        table.add_row(
            str(e.get("task_id")),
            str(e.get("model")),
            str(e.get("service_tier") or "-"),
            str(e.get("completion_tokens")),
            amount,
            json.dumps(e.get("metadata") or {}),
        )
    _console().print(table)
    _print_json(totals)
    return EXIT_OK


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
    s.add_argument("--resolution")
    s.add_argument("--ratio")
    s.add_argument("--duration", type=int)
    s.add_argument("--service-tier", dest="service_tier")
    s.add_argument("--idempotency-key")
    s.add_argument("--metadata", type=_json_object)
    s.add_argument("--wait", action="store_true")
    s.add_argument("--timeout", type=float, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("track", help="start tracking existing remote tasks")
    s.add_argument("task_ids", nargs="+", metavar="ID")
    s.add_argument("--metadata", type=_json_object)
    s.add_argument("--wait", action="store_true", help="wait and print each Outcome")
    s.add_argument("--timeout", type=float, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_track)

    s = sub.add_parser("status", help="one GET of a remote task")
    s.add_argument("task_id", metavar="ID")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("jobs", help="tracked jobs and where each stands")
    s.add_argument("--json", action="store_true")
    s.add_argument("--limit", type=int, default=1000)
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("ledger", help="recorded charges (kept SEEDANCE_LEDGER_RETENTION_DAYS)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--export", choices=["jsonl"], help="every entry as one JSON line, for billing")
    s.add_argument("--since", type=float, help="with --export: only entries charged at or after this "
                   "unix time")  # fmt: skip
    s.set_defaults(func=cmd_ledger)


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
    """Host and port of SEEDANCE_REDIS_URL, without any password in it."""
    from urllib.parse import urlsplit

    from seedance_worker.settings import get_settings

    parts = urlsplit(get_settings().redis_url)
    return f"SEEDANCE_REDIS_URL ({parts.hostname}:{parts.port or 6379})"


if __name__ == "__main__":
    sys.exit(main())
