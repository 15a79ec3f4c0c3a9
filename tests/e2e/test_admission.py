"""Admission control end to end: a simulator enforcing Ark's queued-task cap, real prefork workers,
submits from this process. Beyond the cap a submission waits in Redis and is created, in submit
order and once per idempotency key, when a job of the account leaves the queue."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seedance_worker.engine import admission
from seedance_worker.settings import get_settings
from seedance_worker.submit import submit
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.bad_input_helpers import main
from tests.support.env import configure
from tests.support.waiting import wait_for
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

MODEL = "seedance-1-5-pro-251215"
_RUN = time.time_ns()


def _prompt(i: int) -> list[dict[str, Any]]:
    return [{"type": "text", "text": f"a red fox, job {i}"}]


def _created_order(sim: Simulator) -> list[int]:
    """The job numbers of the creates the simulator made, in the order it made them."""
    out = []
    for rec in sim.requests(kind="create"):
        if rec.status == 200:
            match = re.search(r"job (\d+)", json.dumps(rec.body))
            assert match, rec.body
            out.append(int(match.group(1)))
    return out


def _refused(sim: Simulator) -> list[Any]:
    return [r for r in sim.requests(kind="create") if r.status == 429]


def _workers(tmp_path: Path, n: int = 2) -> Workers:
    return Workers(tmp_path, n=n, concurrency=2)


@pytest.fixture
def capped(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    """A simulator holding at most 120 queued tasks (Ark's cap); admission control at 120, batched
    status (the default mode) on short rounds, no downstream steps."""
    sim = Simulator(config=SimConfig(max_queued=120, queued_s=1.0, running_s=1.0)).start()
    configure(env, redis_url, api_base_url=sim.base_url, admission_max_queued="120", status_source="batch",
              batch_round_s="0.5", batch_queued_interval_s="0.5", on_succeeded="", on_failed="")  # fmt: skip
    try:
        yield sim
    finally:
        sim.stop()


def test_300_submits_against_the_120_cap_create_each_once_in_order(capped: Simulator, tmp_path: Path) -> None:
    """300 submits, each with its own key: no create is refused, 300 remote tasks, each made once,
    in submit order; the ones past the cap waited (no remote id at submit) and every handle
    resolves to its Outcome."""
    sim = capped
    with _workers(tmp_path):
        submitted = [
            submit(MODEL, _prompt(i), idempotency_key=f"adm-{_RUN}-{i}", metadata={"n": i})
            for i in range(300)
        ]
        waited = [i for i, (remote_id, _) in enumerate(submitted) if remote_id is None]
        outcomes = [handle.get(timeout=180) for _, handle in submitted]
    assert _refused(sim) == []
    assert _created_order(sim) == list(range(300))
    ids = [o["task_id"] for o in outcomes]
    assert len(set(ids)) == 300 and [o["status"] for o in outcomes] == ["succeeded"] * 300
    assert [o["metadata"]["n"] for o in outcomes] == list(range(300))  # each handle is its own job's
    for i, (remote_id, _) in enumerate(submitted):
        assert remote_id in (None, ids[i])
    assert waited and waited[0] >= 120, waited  # past the cap they waited; never one of the first 120
    assert admission.Admission(get_settings(), None).waiting(10) == []


@pytest.fixture
def capped_get(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    """Admission control at 2, per-job polling (SEEDANCE_STATUS_SOURCE=get), no downstream steps."""
    sim = Simulator(config=SimConfig(max_queued=2, queued_s=0.5, running_s=0.5)).start()
    configure(env, redis_url, api_base_url=sim.base_url, admission_max_queued="2", on_succeeded="",
              on_failed="")  # fmt: skip
    try:
        yield sim
    finally:
        sim.stop()


def test_a_key_submitted_twice_while_waiting_is_one_task(capped_get: Simulator, tmp_path: Path) -> None:
    """With no worker running, two submits take the slots and the next ones wait: `jobs` lists them
    in order; the same key again returns the same handle and adds no entry. Once workers run,
    each key made one task and the duplicate's handle resolves to the same Outcome."""
    sim = capped_get
    keys = [f"dup-{_RUN}-{i}" for i in range(4)]
    first = [submit(MODEL, _prompt(i), idempotency_key=k) for i, k in enumerate(keys)]
    assert [r is None for r, _ in first] == [False, False, True, True]
    assert first[2][1].state == admission.WAITING
    again = submit(MODEL, _prompt(2), idempotency_key=keys[2])
    assert again[0] is None and again[1].id == first[2][1].id
    listed = json.loads(main("jobs", "--json").stdout)
    waiting = [j for j in listed if j["state"] == "waiting"]
    assert [(j["position"], j["idempotency_key"]) for j in waiting] == [(1, keys[2]), (2, keys[3])]
    table = " ".join(main("jobs").stdout.split())
    assert "2 waiting submissions" in table and keys[3] in table
    with _workers(tmp_path):
        outcomes = [h.get(timeout=60) for _, h in first]
        twice = again[1].get(timeout=10)
        # A key that made its task: the same remote id and handle, nothing posted.
        late = submit(MODEL, _prompt(3), idempotency_key=keys[3])
    assert twice == outcomes[2]
    assert late[0] == outcomes[3]["task_id"] and late[1].id == first[3][1].id
    assert _created_order(sim) == [0, 1, 2, 3]
    assert _refused(sim) == []
    assert len({o["task_id"] for o in outcomes}) == 4


@pytest.fixture
def crowded(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    """Ark's queue is fuller than admission knows: the simulator holds 2 queued tasks, the cap says 4
    (another client of the account takes the rest)."""
    sim = Simulator(config=SimConfig(max_queued=2, queued_s=0.5, running_s=0.3, retry_after_s=1)).start()
    configure(env, redis_url, api_base_url=sim.base_url, admission_max_queued="4", on_succeeded="",
              on_failed="")  # fmt: skip
    try:
        yield sim
    finally:
        sim.stop()


def test_a_quota_refusal_holds_the_queue_and_nothing_fails(crowded: Simulator, tmp_path: Path) -> None:
    """Creates refused with 429 QuotaExceeded (the direct one and the admitter's) wait first in line
    instead of failing: every submission is created once, in submit order, and resolves."""
    sim = crowded
    with _workers(tmp_path):
        submitted = [submit(MODEL, _prompt(i), idempotency_key=f"crowd-{_RUN}-{i}") for i in range(10)]
        outcomes = [h.get(timeout=90) for _, h in submitted]
    assert _refused(sim), "the simulator never refused a create: the test did not crowd the queue"
    assert _created_order(sim) == list(range(10))
    assert [o["status"] for o in outcomes] == ["succeeded"] * 10
    assert len({o["task_id"] for o in outcomes}) == 10


def test_a_stalled_queue_is_driven_by_the_dispatcher(capped_get: Simulator, tmp_path: Path) -> None:
    """Slots whose release never came (the jobs were created while no worker ran, and the slots
    were then taken by ids no job record backs) are freed by the dispatcher's reconcile; the
    waiting submissions are then created without any release message."""
    sim = capped_get
    gate = admission.Admission(get_settings(), None)
    gate.r.zadd(gate.slots, {"cgt-lost-release-1": 1.0, "cgt-lost-release-2": 1.0})  # long ago
    submitted = [submit(MODEL, _prompt(i), idempotency_key=f"stall-{_RUN}-{i}") for i in range(3)]
    assert [r for r, _ in submitted] == [None, None, None]
    with _workers(tmp_path, n=1):
        outcomes = [h.get(timeout=60) for _, h in submitted]
        wait_for(lambda: gate.used() == 0, 10, "every slot freed")
    assert _created_order(sim) == [0, 1, 2]
    assert [o["status"] for o in outcomes] == ["succeeded"] * 3


def test_a_create_refused_for_good_fails_only_its_handle(capped_get: Simulator) -> None:
    """The admitter (run here, in this process) meets a 401 for the head: its handle raises the
    error submit() would have raised, it leaves the queue and its slot, and the next head is tried."""
    from seedance_worker import errors
    from seedance_worker.admit import admit
    from seedance_worker.wiring.app import ensure_app

    sim = capped_get
    made = [submit(MODEL, _prompt(i), idempotency_key=f"bad-{_RUN}-{i}") for i in range(2)]
    waiting = [submit(MODEL, _prompt(i), idempotency_key=f"bad-{_RUN}-{i}") for i in range(2, 4)]
    assert [r for r, _ in waiting] == [None, None]
    gate = admission.Admission(get_settings(), None)
    assert made[0][0] is not None and gate.release(made[0][0])  # job 0 left the queue
    sim.configure(api_keys=frozenset({"another-key"}))
    assert admit(get_settings(), None, ensure_app().backend) == 0
    for _, handle in waiting:
        with pytest.raises(errors.AuthenticationFailed):
            handle.get(timeout=5)
    assert gate.waiting(10) == [] and gate.used() == 1  # job 1's slot only
    assert len(_created_order(sim)) == 2
