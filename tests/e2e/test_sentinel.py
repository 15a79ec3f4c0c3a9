"""Redis Sentinel: the job store, the broker and the result backend on ``sentinel://``, and a
failover in the middle of a run.

Two Redis servers (a primary and its replica, both ``appendonly yes``, ``appendfsync everysec``,
both with a password) and one sentinel with a password of its own, all started here on free
loopback ports (seedance_worker/testing/sentinel.py). Real prefork workers (the bundled app,
``SEEDANCE_REDIS_URL=sentinel://...``) poll jobs against the simulator; this process is a host app
whose broker and backend are the same ``sentinel://`` URL, so its job store takes the master name
and the sentinel password from the host's transport options. Mid-run the primary gets SIGKILL (the
sentinel promotes the replica after ``down-after-milliseconds``, 1000), or ``SENTINEL FAILOVER``
promotes it while the old master stays up.

What a failover may lose. Replication is asynchronous: the primary acknowledges a write before the
replica has it, so writes acknowledged in the last moment before a SIGKILL (the replication lag:
the test allows the last second; on loopback none were lost) can be missing on the promoted
replica. AOF ``everysec`` bounds a different loss, of a Redis restarting from its own file after a
machine crash: up to ~1 s of acknowledged writes not yet fsynced. After ``SENTINEL FAILOVER`` the
old master keeps its clients and takes their writes until the sentinel demotes it (its next INFO,
about 10 s) and then drops them: the test allows exactly that window.

What the engine does about it. The replica gets the primary's writes in order, so what survives is
the primary's state at an earlier instant, as after a restore to that instant: a job whose record
lost its last advances keeps an old lease, which runs out, and the sweeper re-drives it with a new
generation; a poll message taken or acknowledged after that instant comes back and is dropped as
stale by its generation; a download, ledger entry or delivery mark lost is written again by the
step that re-runs (same file, same entry; a webhook may go out again with the same
``webhook-id``). Only a ``track()``/``submit()`` acknowledged in the lost window is forgotten,
since nothing else holds it.

The probe measures the window: it appends 1, 2, 3, ... to a list through the job store's sentinel
client every few milliseconds across the failover; the acknowledged appends missing on the new
master must all fall inside the window above.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from celery import Celery

import seedance_worker
from seedance_worker import connections
from seedance_worker.engine.store import get_store
from seedance_worker.settings import get_settings
from seedance_worker.testing.sentinel import AppendProbe, SentinelRedis
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.wiring import host
from tests.support.env import configure, reset_caches
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

MASTER = "seedance-ha"  # not the default "mymaster": the name has to come through both paths
REDIS_PW = "redis-pw-SECRET-a41c"  # the data servers'
SENTINEL_PW = "sentinel-pw-SECRET-7d02"  # the sentinel's own
N_JOBS = 30
PROBE_KEY = "test:probe"


@dataclass
class Fleet:
    redis: SentinelRedis
    sim: Simulator
    app: Celery
    workers: list[WorkerProcess] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(w.log_text() for w in self.workers)


@pytest.fixture
def fleet(env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Fleet]:
    ha = SentinelRedis(master_name=MASTER, password=REDIS_PW, sentinel_password=SENTINEL_PW).start()
    sim = Simulator(config=SimConfig()).start()
    configure(env, api_base_url=sim.base_url, poll_min_interval_s="0.3", poll_max_interval_s="1.0")
    wenv = {
        **worker_env(),
        "SEEDANCE_REDIS_URL": ha.url,
        "SEEDANCE_REDIS_SENTINEL_MASTER": MASTER,
        "SEEDANCE_REDIS_SENTINEL_PASSWORD": SENTINEL_PW,
    }
    workers = [WorkerProcess(f"s{i}", env=wenv, logdir=tmp_path, concurrency=2) for i in (1, 2)]
    # This process: a host app on the same sentinel:// URL, the job store following its backend.
    env.delenv("SEEDANCE_REDIS_URL")
    options = {"master_name": MASTER, "sentinel_kwargs": {"password": SENTINEL_PW}}
    app = Celery(
        "sentinel_host",
        broker=ha.url,
        backend=ha.url,
        broker_transport_options=options,
        result_backend_transport_options=options,
    )
    seedance_worker.install(app)
    app.set_current()
    reset_caches()
    fleet = Fleet(ha, sim, app, workers)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        yield fleet
    finally:
        for w in workers:
            w.stop()
        host.forget()
        seedance_worker.app.set_current()
        reset_caches()
        sim.stop()
        ha.stop()


def _probe() -> AppendProbe:
    return AppendProbe(
        connections.redis_client(get_settings(), socket_timeout=1, socket_connect_timeout=1), PROBE_KEY
    )


def _all_done(ids: list[str]) -> bool:
    store = get_store()
    return all((rec := store.get(t)) is not None and rec.state == "done" for t in ids)


@pytest.mark.parametrize("how", ["sigkill", "sentinel-failover"])
def test_a_failover_mid_run_loses_no_job(fleet: Fleet, how: str) -> None:
    """30 jobs in flight when the primary gets SIGKILL (the sentinel promotes the replica after
    down-after-milliseconds) or when ``SENTINEL FAILOVER`` promotes it (the old master, alive, is
    made a replica at the sentinel's next look at it): every job finishes succeeded with its video.
    Acknowledged writes lost: with SIGKILL only those of the last second before it (the replication
    lag); with SENTINEL FAILOVER only those the old master took after the command and before the
    sentinel demoted it, and the jobs whose advances those were are re-driven by the sweeper."""
    settings = get_settings()
    assert settings.redis_url == fleet.redis.url and settings.redis_sentinel_master == MASTER
    assert settings.redis_sentinel_password is not None
    sim, ha = fleet.sim, fleet.redis
    probe = _probe()
    probe.start()
    ids = [
        sim.add_task([("queued", 1.5 + (i % 4) * 0.5), ("running", 3.0 + i % 5), ("succeeded", None)])
        for i in range(N_JOBS)
    ]
    results = [seedance_worker.track(t) for t in ids]
    assert all(r.app is fleet.app for r in results)
    wait_for(lambda: all(sim.requests(kind="get", task_id=t) for t in ids), 15, "every job's first poll")
    time.sleep(max(0.0, 2.0 - (time.monotonic() - min(probe.acked.values()))))  # probe history

    old = ha.master()
    in_flight = sum(1 for t in ids if get_store().get(t).state != "done")  # type: ignore[union-attr]
    if how == "sigkill":
        ha.kill_primary()
    else:
        ha.failover()
    hit_at = time.monotonic()  # after the SIGKILL was reaped: no later write reached the primary
    failover_s = ha.wait_promoted(old)
    demoted_at = time.monotonic()
    if how == "sentinel-failover":  # until the sentinel demotes it, the old master still takes writes
        wait_for(lambda: ha.role(old) == "slave", 30, "the old master's demotion")
        demoted_at = time.monotonic()
    wait_for(lambda: _all_done(ids), 75, "every job done on the promoted master")
    outcomes = {tid: res.get(timeout=30)["status"] for tid, res in zip(ids, results, strict=True)}
    probe.halt.set()
    probe.join(5)

    assert set(outcomes.values()) == {"succeeded"}, outcomes
    store = get_store()
    for tid in ids:
        rec = store.get(tid)
        assert rec is not None and rec.outcome is not None and rec.outcome["status"] == "succeeded", rec
        video = rec.outcome.get("video") or {}
        path = Path(unquote(urlsplit(video.get("uri") or "").path))
        assert path.is_file(), (tid, video)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == video["sha256"], (tid, video)

    lost = probe.lost(ha.data_client(ha.master_port()))
    window = (hit_at - 1.0, hit_at) if how == "sigkill" else (hit_at - 0.1, demoted_at)
    assert all(window[0] <= at <= window[1] for at in lost), ([round(at - hit_at, 3) for at in lost], window)
    assert in_flight >= N_JOBS // 2, in_flight  # the failover hit a run, not its end
    logs = fleet.logs()
    assert "Connection to broker lost" in logs  # the workers were on the old master
    cli = subprocess.run(
        [sys.executable, "-m", "seedance_worker", "jobs", "--json"],
        env=fleet.workers[0].env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    for secret in (REDIS_PW, SENTINEL_PW):
        assert secret not in logs + cli.stdout + cli.stderr, secret
    assert {j["task_id"]: j["state"] for j in json.loads(cli.stdout)} == dict.fromkeys(ids, "done")
    redriven = len(set(re.findall(r"sweep (\S+): lease ran out at gen=", logs)))
    print(
        f"sentinel {how}: clients on the new master {failover_s:.2f} s after it"
        + (f", old master demoted after {demoted_at - hit_at:.2f} s" if how != "sigkill" else "")
        + f"; {in_flight}/{N_JOBS} jobs in flight, 0 lost, {redriven} re-driven by the sweeper; "
        f"probe: {len(lost)} of {len(probe.acked)} acknowledged writes lost"
    )


def test_a_worker_refuses_a_bad_sentinel_url_naming_the_setting(tmp_path: Path) -> None:
    """`celery -A seedance_worker worker` with a malformed sentinel:// URL: one line naming the
    setting, the password in it not shown, exit 2."""
    env = worker_env()
    env["SEEDANCE_REDIS_URL"] = "sentinel://:pw-SECRET-0f3e@127.0.0.1:26379;redis://127.0.0.1:6379"
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "seedance_worker", "worker", "-P", "solo", "--without-mingle",
         "--without-gossip", "--without-heartbeat"],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "refusing to start" in out.stderr and "SEEDANCE_REDIS_URL" in out.stderr
    assert "every ';'-separated part must be a sentinel://host[:port] URL" in out.stderr
    assert "pw-SECRET-0f3e" not in out.stderr + out.stdout
