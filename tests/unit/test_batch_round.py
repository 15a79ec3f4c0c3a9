"""A batched round driven in-process against the simulator and a real Redis (no worker: the jobs
never end, so nothing is published)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from seedance_worker import connections
from seedance_worker.engine.batch import run_round
from seedance_worker.engine.store import get_store
from seedance_worker.ratelimit import RateLimiter
from seedance_worker.settings import get_settings
from seedance_worker.testing.simulator import Simulator
from seedance_worker.track import track_many
from tests.support.env import configure


@pytest.fixture
def capped(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    """Batched status with chunks of 10, the list-call cap at 5/s and rounds of 1 s: a round paces
    up to ~5 list calls and defers the chunks left."""
    sim = Simulator().start()
    configure(env, redis_url, api_base_url=sim.base_url, status_source="batch", batch_size="10",
              batch_list_rps="5", batch_round_s="1.0")  # fmt: skip
    try:
        yield sim
    finally:
        sim.stop()


CAP_GAP_S = 0.2  # 5 list calls a second
TOLERANCE_S = 0.02  # the simulator stamps a request when it reads it, not when it was sent


def list_gaps(sim: Simulator) -> list[float]:
    ts = sorted(r.ts for r in sim.requests(kind="list"))
    return [b - a for a, b in itertools.pairwise(ts)]


# The round records each job's POLLING progress through Celery's Redis backend, which calls setex.
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_a_capped_round_paces_its_chunks_at_the_cap(capped: Simulator) -> None:
    """30 running jobs, 3 chunks, a 5/s cap, a 1 s round: the round waits for each cap slot inside
    its interval and reads all three chunks (before: it read one and deferred two, so a 5/s cap gave
    ~1 list call a second), and no two list calls come closer than the cap allows."""
    tids = [capped.add_task([("running", None)]) for _ in range(30)]
    track_many(tids)
    store = get_store(get_settings())
    stats = run_round(get_settings(), now=time.time() + 30)
    polls = {rec.task_id: rec.polls for rec in store.get_many(tids)}
    assert stats.list_calls == 3 and stats.deferred == 0, stats
    assert sorted(polls.values()) == [1] * 30, polls
    assert min(list_gaps(capped)) >= CAP_GAP_S - TOLERANCE_S, list_gaps(capped)


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_more_chunks_than_a_round_can_pace_reach_every_job_in_turn(capped: Simulator) -> None:
    """160 jobs, 16 chunks against 5 list calls a second and 1 s rounds: each round reads what its
    interval allows (more than one chunk) and defers the rest, which go first in the next round
    (the jobs read longest ago first), so every job is read before any is read twice; a round
    reserves no cap slot for what it defers (before: 16 held chunks pushed the cap 3 s ahead, and
    bench/soak.py saw no list call in 30 min)."""
    tids = [capped.add_task([("running", None)]) for _ in range(160)]
    track_many(tids)
    store = get_store(get_settings())
    reads: list[int] = []
    while sum(reads) < 16 and len(reads) < 12:
        reads.append(run_round(get_settings(), now=time.time() + 30).list_calls)
    polls = [rec.polls for rec in store.get_many(tids)]
    assert sum(reads) >= 16 and all(n >= 2 for n in reads[:-1]), reads
    assert min(polls) >= 1 and max(polls) - min(polls) <= 1, sorted(polls)
    assert min(list_gaps(capped)) >= CAP_GAP_S - TOLERANCE_S, list_gaps(capped)


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_a_capped_round_takes_one_account_slot_per_list_call(
    capped: Simulator, env: pytest.MonkeyPatch
) -> None:
    """With the account's own rate limit set too (1/s, a burst of 10), a round of 3 list calls
    paced by the 5/s cap uses 3 of the account's slots, leaving 7 for its GETs and downloads
    (before: each pacing retry took an account slot the cap then refused, ~2 per call)."""
    configure(env, rate_limit_rps="1", rate_limit_burst="10")
    tids = [capped.add_task([("running", None)]) for _ in range(30)]
    track_many(tids)
    settings = get_settings()
    stats = run_round(settings, now=time.time() + 30)
    assert stats.list_calls == 3 and stats.deferred == 0, stats
    limiter = RateLimiter(connections.get_redis(settings), settings)
    granted = [limiter.try_acquire().wait_s == 0 for _ in range(8)]
    assert granted.count(True) >= 7, granted
