"""Two accounts on two simulators, real prefork workers: each job is created, polled and charged with
its own account's key and base URL, and one account's 429 storm does not hold the other's polls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.steps.charge import get_entry
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.track import track_many
from tests.support.env import configure
from tests.support.waiting import wait_for
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

KEY_A = "sk-account-a-" + os.urandom(8).hex()  # the default account (SEEDANCE_API_KEY)
KEY_B = "sk-account-b-" + os.urandom(8).hex()  # account "volc" of SEEDANCE_ACCOUNTS
MODEL = "seedance-1-5-pro-251215"
CLI = str(Path(sys.executable).parent / "seedance-worker")
RETRY_AFTER_S = 3


def _two_accounts(
    env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, status_source: str
) -> Iterator[tuple[Simulator, Simulator]]:
    """Simulator A takes only KEY_A, simulator B only KEY_B; two workers (-c 2) poll both."""
    sim_a = Simulator(config=SimConfig(queued_s=0.3, running_s=0.6, api_keys=frozenset({KEY_A}))).start()
    sim_b = Simulator(config=SimConfig(queued_s=0.3, running_s=0.6, api_keys=frozenset({KEY_B}))).start()
    configure(
        env,
        redis_url,
        api_key=KEY_A,
        api_base_url=sim_a.base_url,
        accounts=json.dumps({"volc": {"api_key": KEY_B, "base_url": sim_b.base_url}}),
        poll_running_interval_s="0.5",
        poll_queued_interval_s="0.5",
        status_source=status_source,
        batch_round_s="0.5",
        batch_queued_interval_s="0.5",
    )
    try:
        with Workers(tmp_path, n=2, concurrency=2):
            yield sim_a, sim_b
    finally:
        sim_a.stop()
        sim_b.stop()


@pytest.fixture
def two(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[tuple[Simulator, Simulator]]:
    """Per-job GETs: each poll is one GET, so a job's polls can be counted at its simulator."""
    yield from _two_accounts(env, tmp_path, redis_url, "get")


@pytest.fixture
def two_batched(
    env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> Iterator[tuple[Simulator, Simulator]]:
    """Batched status (the default): jobs are read by list calls, grouped by account."""
    yield from _two_accounts(env, tmp_path, redis_url, "batch")


def _task_gets(sim: Simulator) -> dict[str, list[tuple[float, int]]]:
    out: dict[str, list[tuple[float, int]]] = {}
    for rec in sim.requests(kind="get"):
        if rec.task_id:
            out.setdefault(rec.task_id, []).append((rec.ts, rec.status))
    return out


def _lists(sim: Simulator) -> list[tuple[float, int, set[str]]]:
    """(time, status, ids named) of each list call the simulator saw."""
    return [(r.ts, r.status, set(r.query.get("filter.task_ids", []))) for r in sim.requests(kind="list")]


def _stored_bytes(url: str) -> bytes:
    """Every value in the test Redis, as one blob (to look for secrets in)."""
    r = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"string":
            parts.append(r.get(key) or b"")
        elif kind == b"hash":
            parts.extend(k + b"=" + v for k, v in r.hgetall(key).items())
        elif kind == b"list":
            parts.extend(r.lrange(key, 0, -1))
        elif kind == b"zset":
            parts.extend(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == b"set":
            parts.extend(r.smembers(key))
        parts.append(key)
    return b"\n".join(parts)


def test_each_job_uses_only_its_own_account(two: tuple[Simulator, Simulator], redis_url: str) -> None:
    """submit/track with and without account=: every GET of a job reaches its own account's simulator
    with that account's key (no 401 anywhere), the Outcome and the ledger name the account, and no
    key is stored in Redis (the record keeps the name)."""
    sim_a, sim_b = two
    a_ids = [sim_a.add_task([("queued", 0.3), ("running", 0.6), ("succeeded", None)]) for _ in range(4)]
    b_ids = [sim_b.add_task([("queued", 0.3), ("running", 0.6), ("succeeded", None)]) for _ in range(4)]
    assert not set(a_ids) & set(b_ids)
    handles = {tid: seedance_worker.track(tid) for tid in a_ids}
    handles.update(zip(b_ids, track_many(b_ids, account="volc"), strict=True))
    in_canvas = sim_b.add_task([("queued", 0.3), ("running", 0.6), ("succeeded", None)])
    handles[in_canvas] = seedance_worker.poll.delay(in_canvas, {"account": "volc"})  # a user's poll.s()
    b_ids.append(in_canvas)
    made_b, handle = seedance_worker.submit(MODEL, [{"type": "text", "text": "a fox"}], account="volc")
    handles[made_b] = handle
    b_ids.append(made_b)
    made_a, handle = seedance_worker.submit(MODEL, [{"type": "text", "text": "a hare"}])
    handles[made_a] = handle
    a_ids.append(made_a)
    assert [r.body for r in sim_b.requests(kind="create")] and [r.body for r in sim_a.requests(kind="create")]

    for tid, res in handles.items():
        outcome = res.get(timeout=60)
        assert outcome["status"] == "succeeded", (tid, outcome)
        assert outcome["account"] == ("volc" if tid in b_ids else None)

    gets_a, gets_b = _task_gets(sim_a), _task_gets(sim_b)
    assert set(gets_a) == set(a_ids) and set(gets_b) == set(b_ids)
    every = [st for gets in (gets_a, gets_b) for calls in gets.values() for _, st in calls]
    assert 401 not in every and every.count(200) == len(every)  # each key was the expected one
    for tid in b_ids:
        rec = get_store().get(tid)
        assert rec is not None and rec.account == "volc"
        assert rec.polls == len(gets_b[tid])  # its polls are exactly the GETs simulator B saw
    assert all(get_store().get(tid).account is None for tid in a_ids)  # type: ignore[union-attr]

    wait_for(lambda: all(get_entry(t) for t in a_ids + b_ids), timeout_s=30)
    assert all(get_entry(t)["account"] == "volc" for t in b_ids)  # type: ignore[index]
    assert all("account" not in get_entry(t) for t in a_ids)  # type: ignore[operator]
    stored = _stored_bytes(redis_url)
    assert KEY_A.encode() not in stored and KEY_B.encode() not in stored


def test_a_429_storm_on_one_account_does_not_hold_the_other(two: tuple[Simulator, Simulator]) -> None:
    """While account A cools down after a 429 (Retry-After 3 s), no poll of A is answered, and every
    in-flight job of account B is still polled inside that cool-down, never refused."""
    sim_a, sim_b = two
    a_ids = [sim_a.add_task([("running", 12.0), ("succeeded", None)]) for _ in range(5)]
    b_ids = [sim_b.add_task([("running", 12.0), ("succeeded", None)]) for _ in range(5)]
    results = [seedance_worker.track(t) for t in a_ids] + track_many(b_ids, account="volc")
    wait_for(lambda: all(_task_gets(sim_b).get(t) for t in b_ids), timeout_s=20)
    sim_a.burst_429(1.0, retry_after_s=RETRY_AFTER_S)
    for res in results:
        assert res.get(timeout=90)["status"] == "succeeded"

    limited = [ts for calls in _task_gets(sim_a).values() for ts, st in calls if st == 429]
    assert limited, "the storm should have answered 429s"
    first = min(limited)
    cool_until = first + RETRY_AFTER_S
    # Account A really cooled down: nothing of A was answered until its Retry-After had passed.
    answered_a = [ts for calls in _task_gets(sim_a).values() for ts, st in calls if st == 200]
    assert not [ts for ts in answered_a if first + 0.05 < ts < cool_until - 0.05]
    # Account B did not wait on it: each of its jobs was polled (and answered) during A's cool-down.
    gets_b = _task_gets(sim_b)
    for tid in b_ids:
        inside = [ts for ts, st in gets_b[tid] if first + 0.05 < ts < cool_until - 0.05]
        assert inside, (tid, round(first, 2), [round(ts - first, 2) for ts, _ in gets_b[tid]])
    assert all(st == 200 for calls in gets_b.values() for _, st in calls)
    assert all(get_store().get(t).last_error is None for t in b_ids)  # type: ignore[union-attr]


def test_cli_account_option_and_jobs_column(two: tuple[Simulator, Simulator]) -> None:
    """`track --account`, `submit --account` and `status --account` use that account; `jobs` shows
    the account column once a job is not the default's; an unknown name is refused by name."""
    sim_a, sim_b = two
    tid = sim_b.add_task([("queued", 0.2), ("running", 0.4), ("succeeded", None)])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], env=dict(os.environ), capture_output=True, text=True, timeout=60)

    plain = cli("jobs")
    assert plain.returncode == 0 and "account" not in plain.stdout
    tracked = cli("track", "--account", "volc", "--wait", tid)
    assert tracked.returncode == 0 and f"{tid}: succeeded" in tracked.stdout, tracked.stderr
    made = cli("submit", "--account", "volc", "--model", MODEL, "--prompt", "a lynx", "--wait")
    assert made.returncode == 0, made.stderr
    made_id = made.stdout.split()[0]
    assert made_id in {r.task_id for r in sim_b.requests(kind="get")}
    status = cli("status", "--account", "volc", "--json", tid)
    assert status.returncode == 0 and json.loads(status.stdout)["id"] == tid
    listing = cli("jobs")
    assert listing.returncode == 0 and "account" in listing.stdout
    row = next(line for line in listing.stdout.splitlines() if tid in line)
    assert "volc" in row
    unknown = cli("track", "--account", "volcx", tid)
    assert unknown.returncode != 0 and "'volcx'" in unknown.stderr and "did you mean 'volc'" in unknown.stderr
    assert not [r for r in sim_a.requests() if r.task_id in (tid, made_id)]  # nothing went to A


def test_batched_rounds_read_each_account_with_its_own_key(two_batched: tuple[Simulator, Simulator]) -> None:
    """Batched status: every list call reaches its own account's simulator with that account's key
    and names only that account's jobs; while account A cools down after a 429 (Retry-After 3 s),
    no list call of A is answered and B's jobs are still read by list calls inside that cool-down."""
    sim_a, sim_b = two_batched
    script = [("running", 8.0), ("succeeded", None)]
    a_ids = [sim_a.add_task(script) for _ in range(5)]
    b_ids = [sim_b.add_task(script) for _ in range(5)]
    results = track_many(a_ids) + track_many(b_ids, account="volc")
    wait_for(lambda: len(_lists(sim_a)) >= 2 and len(_lists(sim_b)) >= 2, timeout_s=20)
    sim_a.burst_429(1.0, retry_after_s=RETRY_AFTER_S)
    for res, tid in zip(results, a_ids + b_ids, strict=True):
        outcome = res.get(timeout=90)
        assert outcome["status"] == "succeeded" and outcome["account"] == ("volc" if tid in b_ids else None)

    lists_a, lists_b = _lists(sim_a), _lists(sim_b)
    assert all(named <= set(a_ids) for _, _, named in lists_a)
    assert all(named <= set(b_ids) for _, _, named in lists_b)
    assert set().union(*(n for _, _, n in lists_b)) == set(b_ids)
    assert all(st == 200 for _, st, _ in lists_b)  # B's key was right every time, and never limited
    assert 401 not in [st for _, st, _ in lists_a]
    limited = [ts for ts, st, _ in lists_a if st == 429]
    assert limited, "the storm should have answered 429s"
    first = min(limited)
    cool_until = first + RETRY_AFTER_S
    assert not [ts for ts, st, _ in lists_a if st == 200 and first + 0.05 < ts < cool_until - 0.05]
    read_inside = set().union(*(n for ts, _, n in lists_b if first + 0.05 < ts < cool_until - 0.05))
    assert read_inside == set(b_ids), (round(first, 2), [round(ts - first, 2) for ts, _, _ in lists_b])
