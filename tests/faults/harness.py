"""Fault-injection harness shared by tests/faults/test_faults.py (CI size) and bench/faults.py (long).

One run:

* an ``EmbeddedRedis(appendonly=True)`` of its own (free port, own dir; ``restart()`` keeps both, so
  the AOF replays), restarted mid-run;
* the simulator with faults (5xx, read timeouts, malformed bodies, the first download of every video
  answered 403 "expired", 429 bursts with ``Retry-After``);
* the Standard Webhooks receiver of ``seedance_worker.testing.webhooks``: verifies every signature, answers
  some deliveries 503 on purpose and records every delivery;
* real prefork ``celery -A seedance_worker worker`` processes (``tests/support/workers.py``), SIGKILLed as a
  whole process group at random moments and replaced;
* the sweeper: a real ``celery -A seedance_worker beat`` process (``-s`` in the run's directory);
* with ``full_disk_s``, the download directory on a small tmpfs of its own, full (``ENOSPC``) for
  that long mid-run (disk.py);
* status read in batch (list calls, the default) or per-job GETs: ``SEEDANCE_STATUS_SOURCE`` of
  ``env`` (``with_status_source``);
* N jobs: some created over HTTP with ``seedance_worker.submit`` (prompt markers pick the fate),
  most created in the simulator with scripts and tracked with ``seedance_worker.track``, a few
  unknown ids.

Afterwards ``check()`` gathers what the run left behind into a ``RunData`` (collect.py: the
simulator's request log, the job records, the ledger, the files, the webhook receiver, the logs) and
judges it (checks.py, one function per invariant); the report is a JSON-able dict whose ``failures``
list is empty only when every check held.

The other modules: services.py (the webhook receiver, the recording simulator, the run's environment
and Celery app), storm.py (workers, sweeper, SIGKILLs, Redis restarts), plan.py (the jobs and the
chaos, drawn from the seed), disk.py (the full disk), rundata.py (the data types).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis

import seedance_worker
from seedance_worker.testing.redis import EmbeddedRedis
from seedance_worker.testing.simulator import SimConfig
from seedance_worker.testing.webhooks import WebhookReceiver, flaky
from tests.faults import collect, plan
from tests.faults.checks import judge
from tests.faults.disk import FullDisk
from tests.faults.rundata import Job, RunData, Timeline
from tests.faults.services import RecordingSimulator, driver_app, seedance_environ
from tests.faults.storm import Storm

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
    full_disk_s: float = 0.0  # the download dir's filesystem is full (ENOSPC) this long; 0: never
    full_disk_at_s: float | None = None  # when it fills (plan.full_disk_start: 40 % into tracking)
    full_disk_mb: int = 64  # size of that tmpfs: room for every video once it is freed
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
            "SEEDANCE_STATUS_SOURCE": "batch",  # with_status_source() switches it
            # Batched status (the default) reads in rounds: as brisk as the per-job intervals above.
            "SEEDANCE_BATCH_ROUND_S": "1",
            "SEEDANCE_BATCH_QUEUED_INTERVAL_S": "1.5",
            # The storm's vanished ids 404 from the start: under the default 180 s grace for a
            # gateway's early 404 they would outlast the settle window; 5 s still exercises it.
            "SEEDANCE_NOT_FOUND_GRACE_S": "5",
            "SEEDANCE_SWEEP_INTERVAL_S": "1",
            "SEEDANCE_HANDOFF_LEASE_S": "20",
            "SEEDANCE_NOTIFY_TIMEOUT_S": "5",
            "SEEDANCE_DOWNLOAD_TIMEOUT_S": "10",
            "SEEDANCE_DOWNLOAD_ALLOWED_HOSTS": "127.0.0.1",
            "SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS": "true",  # the simulator serves files on loopback
        }
    )


def with_status_source(cfg: FaultConfig, source: Literal["batch", "get"]) -> FaultConfig:
    """Status read by list calls of a chunk of jobs (``batch``) or one GET per job (``get``)."""
    cfg.env["SEEDANCE_STATUS_SOURCE"] = source
    return cfg


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
# The run
# --------------------------------------------------------------------------------------------------


class FaultRun:
    def __init__(self, cfg: FaultConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.seed = cfg.seed if cfg.seed is not None else secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self.workdir = Path(workdir)
        self.logdir = self.workdir / "logs"
        self.timeline = Timeline()
        self.disk: FullDisk | None = None
        self.download_dir = self.workdir / "videos"
        if cfg.full_disk_s > 0:
            self.disk = FullDisk(self.workdir / "disk", cfg.full_disk_mb, self.timeline)
            self.download_dir = self.disk.root / "videos"
        self.api_key = "sk-faults-" + secrets.token_hex(16)
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.jobs: dict[str, Job] = {}
        self.bursts: list[tuple[float, float, int]] = []  # (ts, duration_s, retry_after_s)
        self.storm = Storm(
            workdir=self.workdir,
            logdir=self.logdir,
            workers=cfg.workers,
            concurrency=cfg.concurrency,
            sweeper=cfg.sweeper,
            sweep_interval_s=float(cfg.env.get("SEEDANCE_SWEEP_INTERVAL_S", "1")),
            rng=self.rng,
            timeline=self.timeline,
        )
        self.redis: EmbeddedRedis | None = None
        self.sim: RecordingSimulator | None = None
        self.receiver: WebhookReceiver | None = None
        self.wall_s = 0.0
        self.settled_at: float | None = None
        self.drained = False
        self.residual: dict[str, int] = {}
        self.residual_detail: dict[str, Any] | None = None

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
        faults = self._start_services()
        assert self.sim is not None and self.receiver is not None and self.redis is not None
        report: dict[str, Any]
        try:
            with seedance_environ(self.env()), driver_app() as app:
                self.storm.start(app)
                try:
                    self._scenario(faults)
                    self._settle()
                finally:
                    self.storm.stop()
                self.wall_s = time.monotonic() - started
                report = self.check()
                collect.dump_requests(self.workdir, self.sim, self.receiver)
        finally:
            self.receiver.stop()
            self.sim.stop()
            self.redis.stop()
            if self.disk is not None:
                self.disk.unmount()  # the videos go with it (--keep keeps logs, AOF, request logs)
        return report

    def _start_services(self) -> dict[str, float]:
        """Redis, the simulator (fault-free for now) and the receiver; returns the faults to switch on."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        if self.disk is not None:
            self.disk.mount()
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
        answer = flaky(self.cfg.webhook_fail_rate, random.Random(self.rng.random()))
        self.receiver = WebhookReceiver(self.webhook_secret, answer=answer).start()
        return faults

    # ---- the scenario ----------------------------------------------------------------------------

    def _scenario(self, faults: dict[str, float]) -> None:
        assert self.sim is not None
        submits, scripted = plan.plan_jobs(self.cfg, self.rng)
        self.timeline.t0 = time.time()
        self._submit_all(submits)
        self.sim.configure(**faults)
        self.timeline.note(f"{len(submits)} submitted; faults on")
        for at, what, arg in plan.timed_plan(self.cfg, self.rng, scripted):
            delay = self.timeline.t0 + at - time.time()
            if delay > 0:
                time.sleep(delay)
            self._play(what, arg)
        self.timeline.note(f"all {len(self.jobs)} jobs tracked, chaos over")

    def _submit_all(self, submits: list[tuple[str, str]]) -> None:
        for prompt, fate in submits:
            tid, _ = seedance_worker.submit(
                MODEL, [{"type": "text", "text": prompt}], idempotency_key=f"faults-{self.seed}-{prompt}",
                metadata={"via": "submit"}, resolution="720p", duration=5,
            )  # fmt: skip
            self.jobs[tid] = Job(tid, fate, "submit", time.time())

    def _play(self, what: str, arg: Any) -> None:
        assert self.sim is not None and self.redis is not None
        if what == "track":
            self._track_one(arg)
        elif what == "kill":
            self.storm.kill_one()
        elif what == "restart":
            self.storm.restart_redis(self.redis)
        elif what == "burst":
            dur, ra = arg
            self.sim.burst_429(dur, ra)
            self.bursts.append((time.time(), dur, ra))
            self.timeline.note(f"429 burst {dur:.1f}s Retry-After {ra}")
        elif what == "disk_full" and self.disk is not None:
            self.disk.fill()
        elif what == "disk_free" and self.disk is not None:
            self.disk.free()

    def _track_one(self, item: tuple[str, Any]) -> None:
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

    # ---- waiting ---------------------------------------------------------------------------------

    def _r(self) -> redis.Redis:
        assert self.redis is not None
        return collect.text_redis(self.redis.url)

    def _settle(self) -> None:
        r = self._r()
        self._wait_done(r)
        self.timeline.note(
            "every job done" if self.settled_at else f"settle timeout ({self.cfg.settle_timeout_s:g}s)"
        )
        self._drain(r)
        self.residual = collect.residual(r)
        self.residual_detail = collect.unacked_detail(r)
        time.sleep(self.cfg.quiet_s)
        self.timeline.note(f"drained={self.drained} residual={self.residual}")

    def _wait_done(self, r: redis.Redis) -> None:
        """Until every job record is done (``settled_at``), or the settle timeout."""
        deadline = time.time() + self.cfg.settle_timeout_s
        while time.time() < deadline:
            try:
                states = collect.job_states(r, list(self.jobs))
            except redis.RedisError:
                time.sleep(0.5)
                continue
            if all(s == "done" for s in states.values()):
                self.settled_at = time.time()
                break
            time.sleep(0.5)

    def _drain(self, r: redis.Redis) -> None:
        """Until nothing is left in the queues or held unacked three looks in a row (``drained``).

        A killed worker's messages come back after the visibility timeout and must find nothing to do.
        """
        deadline = time.time() + (self.cfg.drain_timeout_s if self.settled_at else 5)
        calm = 0
        while time.time() < deadline:
            if not any(collect.residual(r).values()):
                calm += 1
                if calm >= 3:
                    self.drained = True
                    break
            else:
                calm = 0
            time.sleep(0.5)

    # ---- checks ----------------------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        """Gather what the run left behind and judge it: the report."""
        return judge(self.run_data())

    def run_data(self) -> RunData:
        """Everything the checks look at, read from Redis, the simulator, the receiver, files and logs."""
        assert self.sim is not None and self.receiver is not None and self.redis is not None
        r = self._r()
        deliveries = list(self.receiver.deliveries)
        ledger_ids, ledger_entries, ledger_totals = collect.ledger(r)
        succeeded = sorted(tid for tid, j in self.jobs.items() if j.fate == "succeeded")
        files, file_sha256, served_sha256 = collect.video_hashes(self.download_dir, self.sim, succeeded)
        sim_ids = {*self.jobs, *ledger_ids, *(d.task_id for d in deliveries if d.task_id)}
        return RunData(
            seed=self.seed,
            jobs=self.jobs,
            timeline=self.timeline,
            kills=self.storm.kills,
            restarts=self.storm.restarts,
            bursts=self.bursts,
            crashes=self.storm.crashes,
            sweeper=self.cfg.sweeper,
            status_source=self.cfg.env.get("SEEDANCE_STATUS_SOURCE", "batch"),
            full_disk=None if self.disk is None else self.disk.report(),
            settle_timeout_s=self.cfg.settle_timeout_s,
            settled_at=self.settled_at,
            drained=self.drained,
            residual=self.residual,
            residual_detail=self.residual_detail,
            wall_s=self.wall_s,
            countdown_cap_s=float(self.cfg.env.get("SEEDANCE_POLL_COUNTDOWN_CAP_S", "300")),
            api_key=self.api_key,
            webhook_secret=self.webhook_secret,
            records=collect.job_records(self.jobs),
            ledger_ids=ledger_ids,
            ledger_entries=ledger_entries,
            ledger_totals=ledger_totals,
            in_doubt_counted=collect.in_doubt_counted(r, deliveries),
            requests=self.sim.requests(),
            retry_after=dict(self.sim.retry_after),
            sim_states=collect.sim_states(self.sim, sorted(sim_ids)),
            served_sha256=served_sha256,
            deliveries=deliveries,
            files=files,
            file_sha256=file_sha256,
            logs=collect.read_logs(self.logdir),
            redis_values=collect.redis_values(self.redis.url),
        )


def summary(report: dict[str, Any]) -> str:
    """The headline numbers of a report, one line each (for test messages and the bench)."""
    keys = (
        "seed", "jobs", "status_source", "kills", "restarts", "faults_served", "requests", "outcomes", "lost",
        "duplicate_charges", "succeeded_uncharged", "succeeded_unnotified", "duplicate_deliveries",
        "in_doubt_resends", "storage_full", "retry_after_violations", "polls_after_end", "url_refresh_gets",
        "secret_leaks", "resume_p99_s", "sweeper_redrives", "settle_s", "wall_s",
    )  # fmt: skip
    lines = [f"{k}: {report.get(k)}" for k in keys]
    if report.get("worker_crashes"):
        lines.append(f"worker_crashes: {len(report['worker_crashes'])}")
    lines += ["events:", *("  " + e for e in report.get("events", []))]
    fails = report.get("failures", [])
    lines.append(f"failures ({len(fails)}):")
    lines += ["  " + f for f in fails[:40]]
    return "\n".join(lines)
