"""Fault-injection harness shared by tests/faults/test_faults.py (CI size) and bench/faults.py (long).

One run:

* an ``EmbeddedRedis(appendonly=True)`` of its own (free port, own dir; ``restart()`` keeps both, so
  the AOF replays), restarted mid-run;
* the simulator with faults (5xx, read timeouts, malformed bodies, the first download of every video
  answered 403 "expired", 429 bursts with ``Retry-After``);
* a Standard Webhooks receiver (stdlib ``ThreadingHTTPServer``) that verifies every signature, answers
  some deliveries 503 on purpose and records every delivery;
* real prefork ``celery -A seedance_worker worker`` processes (``tests/workers.py``), SIGKILLed as a
  whole process group at random moments and replaced;
* the sweeper: a real ``celery -A seedance_worker beat`` process (``-s`` in the run's directory);
* N jobs: some created over HTTP with ``seedance_worker.submit`` (prompt markers pick the fate),
  most created in the simulator with scripts and tracked with ``seedance_worker.track``, a few
  unknown ids.

Afterwards ``check()`` compares the simulator's request log, the job records, the ledger, the files,
the webhook receiver and the logs, and returns a report (a JSON-able dict) whose ``failures`` list
is empty only when every check held.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import random
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from seedance_worker.testing.redis import EmbeddedRedis
from seedance_worker.testing.simulator import RequestRecord, SimConfig
from tests.faults.services import (
    Delivery,
    RecordingSimulator,
    WebhookReceiver,
    driver_app,
    seedance_environ,
)
from tests.support.workers import WorkerProcess, Workers, worker_env

TERMINAL = ("succeeded", "failed", "expired", "cancelled")
POLL_TASK = "seedance.poll"
QUEUES = ("seedance.poll", "seedance.post")
MODEL = "seedance-1-5-pro-251215"


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class FaultConfig:
    jobs: int = 300
    kills: int = 1
    redis_restarts: int = 1
    workers: int = 3
    concurrency: int = 2
    seed: int | None = None
    submit_fraction: float = 0.2  # share of jobs created over HTTP with seedance_worker.submit()
    unknown_jobs: int = 3  # ids the API does not know: Outcome not_found
    track_window_s: float = 15.0  # jobs are tracked spread over this long
    chaos_start_s: float = 4.0  # kills / restarts fall in [chaos_start_s, chaos_end_s]
    chaos_end_s: float = 25.0
    bursts: int = 3  # 429 bursts during the chaos window
    burst_duration_s: tuple[float, float] = (1.0, 2.5)
    burst_retry_after_s: tuple[int, ...] = (1, 2, 3)
    webhook_fail_rate: float = 0.1  # the receiver answers 503 to this share of deliveries
    sweeper: str = "beat"  # "beat" (a real celery beat process) | "thread" (run_sweep() in a thread)
    settle_timeout_s: float = 120.0  # after the last chaos event, every job must be done by then
    drain_timeout_s: float = 50.0  # then queues and unacked must empty (a VT restore included)
    quiet_s: float = 2.0  # and stay quiet this long, so late duplicates show up
    sim: SimConfig = field(
        default_factory=lambda: SimConfig(
            queued_s=1.0,
            running_s=2.0,
            error_rate_5xx=0.2,
            timeout_rate=0.05,
            timeout_sleep_s=2.5,  # > SEEDANCE_HTTP_READ_TIMEOUT_S: the client's read timeout fires
            malformed_rate=0.02,
            expire_first_download=True,
            max_log_records=2_000_000,
        )
    )
    env: dict[str, str] = field(
        default_factory=lambda: {
            "SEEDANCE_HTTP_CONNECT_TIMEOUT_S": "1",
            "SEEDANCE_HTTP_READ_TIMEOUT_S": "1.5",
            # countdown cap 5 + connect 1 + read 1.5 = 7.5 s < VT/2 = 15 s (the product's own check)
            "SEEDANCE_VISIBILITY_TIMEOUT_S": "30",
            "SEEDANCE_POLL_COUNTDOWN_CAP_S": "5",
            "SEEDANCE_POLL_FIRST_DELAY_S": "0.5",
            "SEEDANCE_POLL_MIN_INTERVAL_S": "0.5",
            "SEEDANCE_POLL_MAX_INTERVAL_S": "3",
            "SEEDANCE_POLL_QUEUED_INTERVAL_S": "1.5",
            "SEEDANCE_POLL_RUNNING_INTERVAL_S": "1",
            "SEEDANCE_POLL_LEASE_GRACE_S": "3",
            "SEEDANCE_SWEEP_INTERVAL_S": "1",
            "SEEDANCE_HANDOFF_LEASE_S": "20",
            "SEEDANCE_NOTIFY_TIMEOUT_S": "5",
            "SEEDANCE_DOWNLOAD_TIMEOUT_S": "10",
            "SEEDANCE_DOWNLOAD_ALLOWED_HOSTS": "127.0.0.1",
        }
    )


def ci_config(seed: int | None = None) -> FaultConfig:
    """The CI-sized run: ~300 jobs, 1 SIGKILL, 1 Redis restart, the full fault mix."""
    return FaultConfig(jobs=300, kills=1, redis_restarts=1, seed=seed)


def bench_config(jobs: int, kills: int, *, seed: int | None = None, restarts: int = 1) -> FaultConfig:
    """A longer run: jobs tracked at ~10/s, kills spread over the whole active window."""
    track = max(15.0, jobs / 10.0)
    end = track + 20.0
    return FaultConfig(
        jobs=jobs,
        kills=kills,
        redis_restarts=restarts,
        seed=seed,
        track_window_s=track,
        chaos_end_s=end,
        bursts=max(3, int(end // 15)),
        settle_timeout_s=180.0,
    )


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class Job:
    task_id: str
    fate: str  # the status the job must end with
    via: str  # submit | track | unknown
    tracked_at: float = 0.0


@dataclass
class KillEvent:
    ts: float
    worker: str
    held: list[str]  # remote task ids whose poll was active/reserved/scheduled in the killed worker
    inspected: bool


def p99(values: list[float]) -> float | None:
    return percentile(values, 99)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))  # nearest rank
    return s[k]


def _is_ready(w: WorkerProcess) -> bool:
    try:
        return b" ready." in w.log_path.read_bytes()
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class FaultRun:
    def __init__(self, cfg: FaultConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.seed = cfg.seed if cfg.seed is not None else secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self.workdir = Path(workdir)
        self.logdir = self.workdir / "logs"
        self.download_dir = self.workdir / "videos"
        self.api_key = "sk-faults-" + secrets.token_hex(16)
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.jobs: dict[str, Job] = {}
        self.kills: list[KillEvent] = []
        self.restarts: list[tuple[float, float]] = []  # (start, downtime_s)
        self.bursts: list[tuple[float, float, int]] = []  # (ts, duration_s, retry_after_s)
        self.events: list[str] = []
        self.redis: EmbeddedRedis | None = None
        self.sim: RecordingSimulator | None = None
        self.receiver: WebhookReceiver | None = None
        self.workers: Workers | None = None
        self.beat: subprocess.Popen[bytes] | None = None
        self.beat_log: Path = self.logdir / "beat.log"
        self._sweep_stop = threading.Event()
        self._sup_stop = threading.Event()
        self._sup_thread: threading.Thread | None = None
        self._procs_lock = threading.Lock()
        self._killed: set[int] = set()  # id() of WorkerProcess objects the harness SIGKILLed
        self.crashes: list[dict[str, Any]] = []  # workers that exited on their own
        self._sweep_thread: threading.Thread | None = None
        self.t0 = 0.0
        self.wall_s = 0.0
        self.settled_at: float | None = None
        self.drained = False
        self.residual: dict[str, int] = {}

    # ---- set-up ----------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        assert self.redis and self.sim and self.receiver
        price = self.workdir / "prices.json"
        price.write_text(json.dumps({MODEL: {"default": "2.50", "flex": "1.25"}, "*": {"default": "3.00"}}))
        values = dict(self.cfg.env)
        values.update(
            {
                "SEEDANCE_API_KEY": self.api_key,
                "SEEDANCE_API_BASE_URL": self.sim.base_url,
                "SEEDANCE_REDIS_URL": self.redis.url,
                "SEEDANCE_NOTIFY_URL": self.receiver.url,
                "SEEDANCE_NOTIFY_SECRET": self.webhook_secret,
                "SEEDANCE_DOWNLOAD_DIR": str(self.download_dir),
                "SEEDANCE_PRICE_TABLE": str(price),
            }
        )
        return values

    def run(self) -> dict[str, Any]:
        """Run the whole scenario and return the report (``report["failures"]`` empty = passed)."""
        started = time.monotonic()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(appendonly=True, workdir=str(self.workdir / "redis")).start()
        sim_cfg = dataclasses.replace(
            self.cfg.sim, seed=self.rng.randrange(2**31), api_keys=frozenset({self.api_key})
        )
        faults = {k: getattr(sim_cfg, k) for k in ("error_rate_5xx", "timeout_rate", "malformed_rate")}
        # Submits go out fault-free (a POST that times out is ambiguous by design, never re-posted);
        # every fault is switched on once they are in.
        self.sim = RecordingSimulator(
            config=dataclasses.replace(sim_cfg, error_rate_5xx=0, timeout_rate=0, malformed_rate=0)
        ).start()
        self.receiver = WebhookReceiver(
            self.webhook_secret, self.cfg.webhook_fail_rate, random.Random(self.rng.random())
        ).start()
        report: dict[str, Any]
        try:
            with seedance_environ(self.env()), driver_app() as app:
                self.app = app
                self.workers = Workers(self.logdir, n=self.cfg.workers, concurrency=self.cfg.concurrency)
                self.workers.__enter__()
                self._start_sweeper()
                self._sup_thread = threading.Thread(
                    target=self._supervise, name="faults-supervisor", daemon=True
                )
                self._sup_thread.start()
                try:
                    self._scenario(faults)
                    self._settle()
                finally:
                    self._sup_stop.set()
                    self._sup_thread.join(10)
                    self._stop_sweeper()
                    self.workers.__exit__(None, None, None)
                self.wall_s = time.monotonic() - started
                report = self.check()
                self._dump_requests()
        finally:
            self.receiver.stop()
            self.sim.stop()
            self.redis.stop()
        return report

    def _start_sweeper(self) -> None:
        if self.cfg.sweeper == "beat":
            cmd = [
                sys.executable, "-m", "celery", "-A", "seedance_worker", "beat", "-l", "INFO",
                "-s", str(self.workdir / "beat-schedule"), "--pidfile", str(self.workdir / "beat.pid"),
            ]  # fmt: skip
            log = open(self.beat_log, "ab")  # noqa: SIM115
            self.beat = subprocess.Popen(
                cmd,
                env=worker_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
            log.close()
            return
        from seedance_worker.engine.sweep import run_sweep

        interval = float(self.cfg.env.get("SEEDANCE_SWEEP_INTERVAL_S", "1"))

        def loop() -> None:
            while not self._sweep_stop.wait(interval):
                with contextlib.suppress(Exception):
                    run_sweep()

        self._sweep_thread = threading.Thread(target=loop, name="faults-sweeper", daemon=True)
        self._sweep_thread.start()

    def _supervise(self) -> None:
        """Like systemd's Restart=on-failure: a worker that exits on its own is recorded and replaced."""
        assert self.workers is not None
        while not self._sup_stop.wait(0.5):
            with self._procs_lock:
                for w in list(self.workers.procs):
                    if w.proc is None or id(w) in self._killed or w.proc.poll() is None:
                        continue
                    code = w.proc.returncode
                    w._close()
                    tail = [
                        ln for ln in w.log_text().splitlines() if "CRITICAL" in ln or "Unrecoverable" in ln
                    ][-3:]
                    self.crashes.append(
                        {
                            "t": round(time.time() - self.t0, 2),
                            "worker": w.name,
                            "exit_code": code,
                            "log": tail,
                        }
                    )
                    self._killed.add(id(w))  # handled
                    new = self.workers.spawn()
                    self.events.append(
                        f"{time.time() - self.t0:6.2f}s {w.name} exited on its own (code {code}); {new.name} started"
                    )

    def _stop_sweeper(self) -> None:
        if self.beat is not None and self.beat.poll() is None:
            self.beat.terminate()
            try:
                self.beat.wait(10)
            except subprocess.TimeoutExpired:
                self.beat.kill()
                self.beat.wait(5)
        self._sweep_stop.set()
        if self._sweep_thread is not None:
            self._sweep_thread.join(5)

    # ---- the scenario ----------------------------------------------------------------------------

    def _plan_jobs(
        self,
    ) -> tuple[list[tuple[str, str]], list[tuple[list[tuple[str, float | None]], str, str | None]]]:
        """(prompt, fate) for submits, and (script, fate, error_code) for simulator-created tasks."""
        n_unknown = min(self.cfg.unknown_jobs, self.cfg.jobs)
        n_submit = int((self.cfg.jobs - n_unknown) * self.cfg.submit_fraction)
        n_track = self.cfg.jobs - n_unknown - n_submit
        submits: list[tuple[str, str]] = []
        for i in range(n_submit):
            roll = self.rng.random()
            if roll < 0.15:
                submits.append((f"job {i}: a red fox in snow [fail]", "failed"))
            elif roll < 0.25:
                submits.append((f"job {i}: a red fox in snow [expire]", "expired"))
            else:
                submits.append((f"job {i}: a red fox in snow", "succeeded"))
        scripted: list[tuple[list[tuple[str, float | None]], str, str | None]] = []
        u = self.rng.uniform
        for _ in range(n_track):
            roll = self.rng.random()
            if roll < 0.55:
                scripted.append(
                    ([("queued", u(0.3, 3)), ("running", u(0.5, 4)), ("succeeded", None)], "succeeded", None)
                )
            elif roll < 0.65:
                scripted.append(
                    (
                        [
                            ("queued", u(0.3, 2)),
                            ("preprocessing", u(0.5, 2)),
                            ("running", u(0.5, 2)),
                            ("succeeded", None),
                        ],
                        "succeeded",
                        None,
                    )
                )
            elif roll < 0.8:
                scripted.append(
                    (
                        [("queued", u(0.3, 2)), ("running", u(0.5, 3)), ("failed", None)],
                        "failed",
                        "InternalServiceError",
                    )
                )
            elif roll < 0.9:
                scripted.append(([("queued", u(0.5, 3)), ("expired", None)], "expired", None))
            else:
                scripted.append(([("queued", u(0.3, 3)), ("cancelled", None)], "cancelled", None))
        return submits, scripted

    def _schedule(self) -> list[tuple[float, str, Any]]:
        cfg = self.cfg
        events: list[tuple[float, str, Any]] = []
        for _ in range(cfg.kills):
            events.append((self.rng.uniform(cfg.chaos_start_s, cfg.chaos_end_s), "kill", None))
        for _ in range(cfg.redis_restarts):
            # Mid-run, after the tracking window's first half, so jobs are in every stage.
            lo = max(cfg.chaos_start_s, cfg.track_window_s * 0.5)
            events.append((self.rng.uniform(lo, max(lo, cfg.chaos_end_s)), "restart", None))
        for _ in range(cfg.bursts):
            dur = self.rng.uniform(*cfg.burst_duration_s)
            ra = self.rng.choice(cfg.burst_retry_after_s)
            events.append((self.rng.uniform(cfg.chaos_start_s * 0.5, cfg.chaos_end_s), "burst", (dur, ra)))
        return sorted(events, key=lambda e: e[0])

    def _scenario(self, faults: dict[str, float]) -> None:
        import seedance_worker

        assert self.sim is not None
        submits, scripted = self._plan_jobs()
        self.t0 = time.time()
        for prompt, fate in submits:
            tid, _ = seedance_worker.submit(
                MODEL, [{"type": "text", "text": prompt}], idempotency_key=f"faults-{self.seed}-{prompt}",
                metadata={"via": "submit"}, resolution="720p", duration=5,
            )  # fmt: skip
            self.jobs[tid] = Job(tid, fate, "submit", time.time())
        self.sim.configure(**faults)
        self.events.append(f"{time.time() - self.t0:6.2f}s {len(submits)} submitted; faults on")

        unknown = [
            f"cgt-20990101{n:06d}-nf{n % 1000:03d}" for n in range(min(self.cfg.unknown_jobs, self.cfg.jobs))
        ]
        track_items: list[tuple[str, Any]] = [("script", s) for s in scripted] + [
            ("unknown", u) for u in unknown
        ]
        self.rng.shuffle(track_items)
        step = self.cfg.track_window_s / max(1, len(track_items))
        plan: list[tuple[float, str, Any]] = [(i * step, "track", item) for i, item in enumerate(track_items)]
        plan += self._schedule()
        plan.sort(key=lambda e: e[0])
        for at, what, arg in plan:
            delay = self.t0 + at - time.time()
            if delay > 0:
                time.sleep(delay)
            if what == "track":
                self._track_one(arg)
            elif what == "kill":
                self._kill_one()
            elif what == "restart":
                self._restart_redis()
            elif what == "burst":
                dur, ra = arg
                self.sim.burst_429(dur, ra)
                self.bursts.append((time.time(), dur, ra))
                self.events.append(f"{time.time() - self.t0:6.2f}s 429 burst {dur:.1f}s Retry-After {ra}")
        self.events.append(f"{time.time() - self.t0:6.2f}s all {len(self.jobs)} jobs tracked, chaos over")

    def _track_one(self, item: tuple[str, Any]) -> None:
        import seedance_worker

        assert self.sim is not None
        kind, arg = item
        if kind == "unknown":
            tid, fate, via = arg, "not_found", "unknown"
        else:
            script, fate, code = arg
            tid = self.sim.add_task(script, error_code=code)
            via = "track"
        for attempt in range(20):  # track() is idempotent: a retry after a Redis blip is safe
            try:
                seedance_worker.track(tid, metadata={"via": via})
                break
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                if attempt == 19:
                    raise
                time.sleep(0.25)
        self.jobs[tid] = Job(tid, fate, via, time.time())

    def _kill_one(self) -> None:
        assert self.workers is not None
        deadline = time.time() + 30
        while True:
            live = [
                w for w in self.workers.procs if w.proc is not None and w.proc.poll() is None and _is_ready(w)
            ]
            if len(live) >= 2 or time.time() > deadline:
                break
            time.sleep(0.2)  # keep at least one other worker alive while replacements boot
        if not live:
            return
        victim = self.rng.choice(live)
        held, inspected = self._held_polls(victim)
        with self._procs_lock:
            if victim.proc is None or victim.proc.poll() is not None:
                return  # it exited on its own meanwhile (the supervisor replaces it)
            ts = time.time()
            self._killed.add(id(victim))
            victim.kill()
            self.kills.append(KillEvent(ts, victim.name, held, inspected))
            self.workers.spawn()
        self.events.append(
            f"{ts - self.t0:6.2f}s SIGKILL {victim.name} (holding {len(held)} polls); replacement started"
        )

    def _held_polls(self, w: WorkerProcess) -> tuple[list[str], bool]:
        """The polls a worker holds right now (executing, reserved, or waiting for their ETA)."""
        node = f"{w.name}@{socket.gethostname()}"
        held: set[str] = set()
        ok = True
        insp = self.app.control.inspect(destination=[node], timeout=2.0, limit=1)
        for method in ("scheduled", "active", "reserved"):
            try:
                replies = getattr(insp, method)() or {}
            except Exception:
                replies = {}
            if node not in replies:
                ok = False
                continue
            for item in replies[node]:
                req = item.get("request", item)
                if req.get("name") == POLL_TASK and req.get("args"):
                    held.add(str(req["args"][0]))
        return sorted(held), ok

    def _restart_redis(self) -> None:
        assert self.redis is not None
        ts = time.time()
        self.redis.restart()
        down = time.time() - ts
        self.restarts.append((ts, down))
        self.events.append(f"{ts - self.t0:6.2f}s Redis restarted (AOF), down {down:.2f}s")

    # ---- waiting ---------------------------------------------------------------------------------

    def _r(self) -> redis.Redis:
        assert self.redis is not None
        return redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=10)

    def _states(self, r: redis.Redis) -> dict[str, str | None]:
        pipe = r.pipeline(transaction=False)
        ids = list(self.jobs)
        for tid in ids:
            pipe.hget(f"seedance:job:{tid}", "state")
        return dict(zip(ids, pipe.execute(), strict=True))

    def _settle(self) -> None:
        r = self._r()
        deadline = time.time() + self.cfg.settle_timeout_s
        while time.time() < deadline:
            try:
                states = self._states(r)
            except redis.RedisError:
                time.sleep(0.5)
                continue
            if all(s == "done" for s in states.values()):
                self.settled_at = time.time()
                break
            time.sleep(0.5)
        self.events.append(
            f"{time.time() - self.t0:6.2f}s "
            + ("every job done" if self.settled_at else f"settle timeout ({self.cfg.settle_timeout_s:g}s)")
        )
        # Drain: nothing left in the queues or held unacked (a killed worker's messages come back
        # after the visibility timeout and must find nothing to do), then stay quiet a little.
        deadline = time.time() + (self.cfg.drain_timeout_s if self.settled_at else 5)
        calm = 0
        while time.time() < deadline:
            residual = {q: int(r.llen(q)) for q in QUEUES}
            residual["unacked"] = int(r.hlen("unacked"))
            if not any(residual.values()):
                calm += 1
                if calm >= 3:
                    self.drained = True
                    break
            else:
                calm = 0
            time.sleep(0.5)
        self.residual = {q: int(r.llen(q)) for q in QUEUES} | {"unacked": int(r.hlen("unacked"))}
        self.residual_detail = self._unacked_detail(r)
        time.sleep(self.cfg.quiet_s)
        self.events.append(f"{time.time() - self.t0:6.2f}s drained={self.drained} residual={self.residual}")

    def _unacked_detail(self, r: redis.Redis) -> dict[str, Any]:
        """What is stuck in kombu's unacked hash, and whether its index entry and the restore mutex allow
        a restore (kombu restores only tags in ``unacked_index``, under the ``unacked_mutex``)."""
        now = time.time()
        out: list[dict[str, Any]] = []
        for tag, raw in r.hgetall("unacked").items():
            item: dict[str, Any] = {"tag": tag, "index_score_age_s": None}
            score = r.zscore("unacked_index", tag)
            if score is not None:
                item["index_score_age_s"] = round(now - score, 1)
            try:
                msg, _ex, rk = json.loads(raw)
                hdr = msg.get("headers") or {}
                body = (
                    json.loads(base64.b64decode(msg["body"]))
                    if msg.get("properties", {}).get("body_encoding") == "base64"
                    else None
                )
                item.update(
                    task=hdr.get("task"),
                    id=hdr.get("id"),
                    eta=hdr.get("eta"),
                    routing_key=rk,
                    args=(body[0] if isinstance(body, list) and body else None),
                )
                if isinstance(item["args"], list) and item["args"] and isinstance(item["args"][0], dict):
                    item["args"] = [item["args"][0].get("task_id")]
            except Exception as exc:  # diagnostics only
                item["error"] = repr(exc)
            out.append(item)
        return {
            "entries": out,
            "index_size": int(r.zcard("unacked_index")),
            "mutex_ttl_s": r.ttl("unacked_mutex"),
            "mutex_holder": r.get("unacked_mutex"),
        }

    # ---- checks ----------------------------------------------------------------------------------

    def _logs(self) -> dict[str, str]:
        out = {}
        for p in sorted(self.logdir.glob("*.log")):
            out[p.name] = p.read_text(errors="replace")
        return out

    def _excerpt(self, logs: dict[str, str], task_id: str, n: int = 25) -> list[str]:
        lines = [
            f"{name}: {line}" for name, text in logs.items() for line in text.splitlines() if task_id in line
        ]
        return lines[-n:]

    def check(self) -> dict[str, Any]:
        from seedance_worker.engine.store import get_store
        from seedance_worker.steps.charge import LEDGER, list_ledger
        from seedance_worker.steps.notify import delivery_key, webhook_id

        assert self.sim is not None and self.receiver is not None
        failures: list[str] = []
        details: list[dict[str, Any]] = []
        store = get_store()
        r = self._r()
        logs = self._logs()
        records = {tid: store.get(tid) for tid in self.jobs}
        requests_all = self.sim.requests()
        gets: dict[str, list[RequestRecord]] = defaultdict(list)
        files_403: dict[str, list[RequestRecord]] = defaultdict(list)
        for rec in requests_all:
            if rec.kind == "get" and rec.task_id:
                gets[rec.task_id].append(rec)
            elif rec.kind == "file" and rec.task_id and rec.status == 403 and rec.path.endswith(".mp4"):
                files_403[rec.task_id].append(rec)

        def bad(job_id: str | None, what: str, **extra: Any) -> None:
            failures.append(f"{job_id or '-'}: {what}")
            if job_id and len(details) < 40:
                rec = records.get(job_id)
                details.append(
                    {
                        "job": job_id,
                        "what": what,
                        "record": None
                        if rec is None
                        else rec.public() | {"handoff_fires": rec.handoff_fires},
                        "sim": self._sim_state(job_id),
                        "log": self._excerpt(logs, job_id),
                        **extra,
                    }
                )

        # 1. every job reached its right Outcome
        lost: list[str] = []
        outcomes: Counter[str] = Counter()
        for tid, job in self.jobs.items():
            rec = records[tid]
            sim_task = self.sim.task(tid)
            expected = job.fate if sim_task is None else sim_task["status"]
            if job.fate != expected:
                bad(tid, f"harness: planned fate {job.fate} but the simulator says {expected}")
            if rec is None or rec.state != "done":
                lost.append(tid)
                bad(tid, f"lost: record state {None if rec is None else rec.state}, expected done/{expected}")
                continue
            outcomes[str(rec.status)] += 1
            final = rec.outcome or {}
            if rec.status != expected or final.get("status") != expected:
                bad(
                    tid,
                    f"wrong outcome: record status {rec.status}, outcome {final.get('status')}, simulator {expected}",
                )
            if rec.handoff != "done":
                bad(tid, f"hand-off {rec.handoff!r}, expected 'done'")
            note = final.get("notification") or {}
            if not note.get("delivered"):
                bad(tid, f"outcome.notification not delivered: {note}")
            if final.get("step_errors"):
                bad(tid, f"outcome.step_errors: {final.get('step_errors')}")
            if expected == "succeeded" and (not final.get("video") or not final.get("charge")):
                bad(
                    tid,
                    f"succeeded outcome without video/charge: video={final.get('video')} charge={final.get('charge')}",
                )

        # 2. ledger == succeeded jobs, no task id twice
        succeeded = {tid for tid, j in self.jobs.items() if j.fate == "succeeded"}
        raw_ledger = [str(x) for x in r.lrange(LEDGER, 0, -1)]
        entries, totals = list_ledger()
        ledger_counts = Counter(raw_ledger)
        duplicate_charges = sum(c - 1 for c in ledger_counts.values() if c > 1)
        for tid, c in ledger_counts.items():
            if c > 1:
                bad(tid, f"charged {c} times")
        for tid in sorted(succeeded - set(ledger_counts)):
            bad(tid, "succeeded but not charged")
        for tid in sorted(set(ledger_counts) - succeeded):
            bad(tid, "charged but did not succeed")
        if len(entries) != len(raw_ledger):
            failures.append(f"ledger: {len(raw_ledger)} ids but {len(entries)} entries")

        # 3. webhooks: every job exactly one 2xx delivery, each 2xx webhook-id once, all signed
        deliveries = list(self.receiver.deliveries)
        ok_by_wid: Counter[str] = Counter(d.webhook_id for d in deliveries if 200 <= d.code < 300)
        # A repeat is "in doubt", not a duplicate, when the first 2xx went to a sender SIGKILLed
        # before it could record it: a kill landed right after that 2xx and the product counted the
        # resend in the delivery record (in_doubt). No sender can close that window; a receiver
        # drops the repeat by its webhook-id (Standard Webhooks). Any other repeat is a failure.
        in_doubt: dict[str, int] = {}
        for wid, c in ok_by_wid.items():
            if c < 2:
                continue
            first = min(d.ts for d in deliveries if d.webhook_id == wid and 200 <= d.code < 300)
            counted = int(r.hget(delivery_key(wid), "in_doubt") or 0)
            if counted >= c - 1 and any(-0.5 <= k.ts - first <= 2.0 for k in self.kills):
                in_doubt[wid] = c - 1
        duplicate_deliveries = sum(c - 1 for wid, c in ok_by_wid.items() if c > 1 and wid not in in_doubt)
        unverified = [d for d in deliveries if not d.verified]
        for d in unverified[:5]:
            bad(d.task_id, f"webhook {d.webhook_id} failed verification: {d.error}")
        for tid, job in self.jobs.items():
            expected = records[tid].status if records[tid] is not None else job.fate
            wid = webhook_id(tid, str(job.fate))
            ok = [d for d in deliveries if d.task_id == tid and 200 <= d.code < 300]
            if len(ok) != 1 + in_doubt.get(wid, 0):
                bad(
                    tid,
                    f"{len(ok)} 2xx deliveries (expected exactly 1)",
                    deliveries=[
                        (d.ts, d.webhook_id, d.status, d.code) for d in deliveries if d.task_id == tid
                    ],
                )
            elif ok[0].webhook_id != wid or ok[0].status != job.fate:
                bad(
                    tid,
                    f"delivery {ok[0].webhook_id}/{ok[0].status}, expected {wid}/{job.fate} (record {expected})",
                )
        for wid, c in ok_by_wid.items():
            if c > 1 and wid not in in_doubt:
                failures.append(f"{wid}: delivered 2xx {c} times")

        # 4. files: one per succeeded job, sha256 of what the simulator serves, no partials, no extras
        present = {p.name for p in self.download_dir.iterdir()} if self.download_dir.exists() else set()
        expected_files = {f"{tid}.mp4" for tid in succeeded}
        for name in sorted(present):
            if name.endswith(".part"):
                failures.append(f"partial file left: {name}")
            elif name not in expected_files:
                failures.append(f"extra file: {name}")
        for tid in sorted(succeeded):
            path = self.download_dir / f"{tid}.mp4"
            if not path.exists():
                bad(tid, "video file missing")
                continue
            want = hashlib.sha256(self.sim.file_bytes(tid)).hexdigest()
            got = hashlib.sha256(path.read_bytes()).hexdigest()
            video = ((records[tid].outcome if records[tid] else None) or {}).get("video") or {}
            if got != want or video.get("sha256") != want:
                bad(
                    tid,
                    f"sha256 mismatch: file {got[:12]} outcome {str(video.get('sha256'))[:12]} simulator {want[:12]}",
                )

        # 5. Retry-After: no GET of a task before a 429's ts + Retry-After (same task)
        retry_after_violations = 0
        n429 = 0
        for tid, recs in gets.items():
            for rec in recs:
                if rec.status != 429:
                    continue
                n429 += 1
                ra = self._retry_after(rec)
                # Later by arrival time (the log is in answer order: a held "timeout" GET that
                # arrived before this 429 is logged after it and is no violation).
                early = sorted((x for x in recs if rec.ts < x.ts < rec.ts + ra), key=lambda x: x.ts)
                if early:
                    retry_after_violations += len(early)
                    bad(
                        tid,
                        f"GET {early[0].ts - rec.ts:.3f}s after a 429 ({rec.fault}) with Retry-After {ra:g}",
                        gets_around=[
                            (round(x.ts - rec.ts, 3), x.status, x.fault)
                            for x in recs
                            if abs(x.ts - rec.ts) < 10
                        ],
                        file_403_around=[
                            round(f.ts - rec.ts, 3) for f in files_403.get(tid, []) if abs(f.ts - rec.ts) < 10
                        ],
                        record_terminal_at=None
                        if records[tid] is None
                        else records[tid].terminal_at and round(records[tid].terminal_at - rec.ts, 3),
                    )
        # ... and the shared cool-down (informational: a GET already in flight when the 429 came back
        # is legitimate, so only GETs starting 0.5 s or more after the 429 are counted)
        polls_in_cooldown, refresh_in_cooldown = self._cooldown_overlaps(gets, files_403)

        # 6. no poll after the job's end (terminal poll recorded): only the download's URL refreshes,
        # each answering one 403 of the video URL just before it (with its retries of failed GETs)
        polls_after_end = 0
        refresh_gets = 0
        unanswered_403 = 0
        for tid in self.jobs:
            rec = records[tid]
            if rec is None or rec.terminal_at is None:
                continue
            # By arrival time: a GET the simulator held (timeout fault) is logged after later ones.
            after = sorted((g for g in gets.get(tid, []) if g.ts > rec.terminal_at), key=lambda g: g.ts)
            pending = sorted(f.ts for f in files_403.get(tid, []) if f.ts > rec.terminal_at)
            extra = []
            for g in after:
                earlier = [t for t in pending if t < g.ts]
                if rec.status == "succeeded" and earlier:
                    # A refresh tries its GET a few times on 5xx/timeouts; the one that got the
                    # fresh URL (200) answers the 403.
                    if g.status == 200 and g.fault is None:
                        pending.remove(earlier[0])
                    refresh_gets += 1
                else:
                    extra.append(g)
            unanswered_403 += len(pending)
            if extra:
                polls_after_end += len(extra)
                bad(
                    tid,
                    f"{len(extra)} GET(s) after the terminal poll ({rec.terminal_at:.3f}) not explained by a URL refresh",
                    gets_after=[(round(g.ts - rec.terminal_at, 3), g.status, g.fault) for g in after],
                    file_403=[round(f.ts - rec.terminal_at, 3) for f in files_403.get(tid, [])],
                )

        # 7. no secret anywhere: worker / beat logs, job records, results, anything in Redis, webhooks
        secret_hits = self._secret_hits(logs, r, deliveries)
        for where in secret_hits[:10]:
            failures.append(f"secret found in {where}")

        # 8. numbers
        faults = Counter(rec.fault for rec in requests_all if rec.fault)
        resume = self._resume_times(gets, records)
        # The promise: a chain held by a SIGKILLed worker resumes within its interval plus 30 s
        # (every interval here is at most the countdown cap).
        for tid, waited in resume["over_budget"][:10]:
            failures.append(f"{tid}: resumed {waited:.1f} s after its worker's SIGKILL (> {resume['budget_s']:g} s)")
        sweeps = sum(len(re.findall(r"lease ran out at gen=", t)) for t in logs.values())
        refires = sum(len(re.findall(r"hand-off lease ran out", t)) for t in logs.values())
        stale = sum(
            len(re.findall(r"copy dropped|lost the race|lost the terminal race", t)) for t in logs.values()
        )
        for c in self.crashes:
            failures.append(
                f"worker {c['worker']} exited on its own at {c['t']}s (code {c['exit_code']}): {c['log']}"
            )
        if not self.settled_at:
            failures.append(
                f"not every job done within {self.cfg.settle_timeout_s:g}s after the chaos window"
            )
        if not self.drained:
            failures.append(f"queues/unacked not drained: {self.residual}")
        report: dict[str, Any] = {
            "seed": self.seed,
            "jobs": len(self.jobs),
            "jobs_by_origin": dict(Counter(j.via for j in self.jobs.values())),
            "kills": len(self.kills),
            "worker_crashes": self.crashes,
            "restarts": len(self.restarts),
            "redis_downtime_s": [round(d, 3) for _, d in self.restarts],
            "bursts": [(round(ts - self.t0, 2), round(d, 2), ra) for ts, d, ra in self.bursts],
            "faults_served": dict(sorted(faults.items())),
            "requests": dict(Counter(rec.kind for rec in requests_all)),
            "responses_429": n429,
            "outcomes": dict(sorted(outcomes.items())),
            "expected_outcomes": dict(sorted(Counter(j.fate for j in self.jobs.values()).items())),
            "lost": len(lost),
            "duplicate_charges": duplicate_charges,
            "ledger_entries": len(raw_ledger),
            "ledger_totals": totals,
            "duplicate_deliveries": duplicate_deliveries,
            "in_doubt_resends": sum(in_doubt.values()),
            "deliveries": {
                "total": len(deliveries),
                "2xx": sum(ok_by_wid.values()),
                "503": sum(1 for d in deliveries if d.code == 503),
                "unverified": len(unverified),
            },
            "retry_after_violations": retry_after_violations,
            "cooldown_overlaps": {"polls": polls_in_cooldown, "url_refreshes": refresh_in_cooldown},
            "polls_after_end": polls_after_end,
            "url_refresh_gets": refresh_gets,
            "url_403_without_refresh": unanswered_403,
            "secret_leaks": len(secret_hits),
            "resume": resume,
            "resume_p99_s": resume["p99_s"],
            "sweeper": self.cfg.sweeper,
            "sweeper_redrives": sweeps,
            "handoff_refires": refires,
            "stale_copies_dropped": stale,
            "handoff_fires_gt1": sum(1 for x in records.values() if x is not None and x.handoff_fires > 1),
            "settle_s": None if not self.settled_at else round(self.settled_at - self.t0, 2),
            "residual": self.residual,
            "residual_unacked": getattr(self, "residual_detail", None),
            "wall_s": round(self.wall_s, 1),
            "events": self.events,
            "kill_events": [
                {
                    "t": round(k.ts - self.t0, 2),
                    "worker": k.worker,
                    "held_polls": len(k.held),
                    "inspected": k.inspected,
                    "held": k.held,
                }
                for k in self.kills
            ],
            "failures": failures,
            "failure_details": details,
        }
        return report

    def _dump_requests(self) -> None:
        """The simulator's request log (and the receiver's deliveries) as JSON lines, for post-mortems."""
        assert self.sim is not None and self.receiver is not None
        with open(self.workdir / "requests.jsonl", "w") as fh:
            for rec in self.sim.requests():
                row = {
                    "ts": rec.ts,
                    "kind": rec.kind,
                    "task_id": rec.task_id,
                    "status": rec.status,
                    "fault": rec.fault,
                    "rid": rec.request_id,
                    "retry_after": self.sim.retry_after.get(rec.request_id),
                }
                fh.write(json.dumps(row) + "\n")
        with open(self.workdir / "deliveries.jsonl", "w") as fh:
            for d in self.receiver.deliveries:
                row = {
                    "ts": d.ts,
                    "webhook_id": d.webhook_id,
                    "task_id": d.task_id,
                    "status": d.status,
                    "code": d.code,
                    "verified": d.verified,
                }
                fh.write(json.dumps(row) + "\n")

    def _retry_after(self, rec: RequestRecord) -> float:
        assert self.sim is not None
        ra = self.sim.retry_after.get(rec.request_id)
        if ra is None:
            raise AssertionError(f"429 {rec.request_id} without a recorded Retry-After")
        return ra

    def _sim_state(self, tid: str) -> dict[str, Any] | None:
        assert self.sim is not None
        t = self.sim.task(tid)
        if t is None:
            return None
        return {k: t.get(k) for k in ("status", "terminal_at", "history") if k in t}

    def _cooldown_overlaps(
        self, gets: dict[str, list[RequestRecord]], files_403: dict[str, list[RequestRecord]]
    ) -> tuple[int, int]:
        windows = sorted(
            (rec.ts + 0.5, rec.ts + self._retry_after(rec))
            for recs in gets.values()
            for rec in recs
            if rec.status == 429
        )
        if not windows:
            return 0, 0
        polls = refreshes = 0
        for tid, recs in gets.items():
            f403 = [f.ts for f in files_403.get(tid, [])]
            for g in recs:
                if any(a <= g.ts < b for a, b in windows):
                    # a GET right after a 403 of its video URL is the download's URL refresh
                    if any(0 <= g.ts - t < 2.0 for t in f403):
                        refreshes += 1
                    else:
                        polls += 1
        return polls, refreshes

    def _resume_times(self, gets: dict[str, list[RequestRecord]], records: dict[str, Any]) -> dict[str, Any]:
        samples: list[float] = []
        no_get = 0
        budget_s = float(self.cfg.env.get("SEEDANCE_POLL_COUNTDOWN_CAP_S", "300")) + 30.0
        over: list[tuple[str, float]] = []
        for k in self.kills:
            for tid in k.held:
                rec = records.get(tid)
                if rec is not None and rec.terminal_at is not None and rec.terminal_at <= k.ts:
                    # Its poll had already ended the job (an `active` terminal poll finishing its
                    # hand-off): what remains is the downstream chain, under the hand-off lease.
                    continue
                nxt = [g.ts for g in gets.get(tid, []) if g.ts >= k.ts]
                if nxt:
                    samples.append(nxt[0] - k.ts)
                    if samples[-1] > budget_s:
                        over.append((tid, samples[-1]))
                elif rec is None or rec.terminal_at is None or rec.terminal_at > k.ts:
                    no_get += 1
        return {
            "budget_s": budget_s,
            "over_budget": over,
            "n": len(samples),
            "p50_s": _round(percentile(samples, 50)),
            "p99_s": _round(p99(samples)),
            "max_s": _round(max(samples) if samples else None),
            "held_without_later_get": no_get,
            "kills_inspected": sum(1 for k in self.kills if k.inspected),
        }

    def _secret_hits(self, logs: dict[str, str], r: redis.Redis, deliveries: list[Delivery]) -> list[str]:
        needles = [self.api_key, self.webhook_secret, self.webhook_secret.removeprefix("whsec_")]
        hits: list[str] = []
        for name, text in logs.items():
            for n in needles:
                if n in text:
                    hits.append(f"log {name}")
        rb = redis.Redis.from_url(self.redis.url if self.redis else "", socket_timeout=10)
        bneedles = [n.encode() for n in needles]
        for key in rb.scan_iter("*", count=1000):
            t = rb.type(key).decode()
            if t == "string":
                values = [rb.get(key) or b""]
            elif t == "hash":
                values = [k + b"=" + v for k, v in rb.hgetall(key).items()]
            elif t == "list":
                values = rb.lrange(key, 0, -1)
            elif t == "set":
                values = list(rb.smembers(key))
            elif t == "zset":
                values = rb.zrange(key, 0, -1)
            else:
                values = []
            if any(n in v for v in values for n in bneedles):
                hits.append(f"redis key {key.decode(errors='replace')}")
        for d in deliveries:
            if any(n in d.body for n in bneedles):
                hits.append(f"webhook body {d.webhook_id}")
        return hits


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def summary(report: dict[str, Any]) -> str:
    """The headline numbers of a report, one line each (for test messages and the bench)."""
    keys = (
        "seed", "jobs", "kills", "restarts", "faults_served", "outcomes", "lost", "duplicate_charges",
        "duplicate_deliveries", "in_doubt_resends", "retry_after_violations", "polls_after_end", "url_refresh_gets", "secret_leaks",
        "resume_p99_s", "sweeper_redrives", "settle_s", "wall_s",
    )  # fmt: skip
    lines = [f"{k}: {report.get(k)}" for k in keys]
    if report.get("worker_crashes"):
        lines.append(f"worker_crashes: {len(report['worker_crashes'])}")
    lines += ["events:", *("  " + e for e in report.get("events", []))]
    fails = report.get("failures", [])
    lines.append(f"failures ({len(fails)}):")
    lines += ["  " + f for f in fails[:40]]
    return "\n".join(lines)
