"""The simulator's account caps (``max_running``) as bench/budget.py uses them: scripted tasks wait
queued for a slot, the oldest waiting one takes the slot a task frees, and its running time counts
from that moment."""

from __future__ import annotations

from seedance_worker.testing.simulator import SimConfig, Simulator


def _script(running_s: float) -> list[tuple[str, float | None]]:
    return [("queued", 0.0), ("running", running_s), ("succeeded", None)]


def test_scripted_tasks_take_freed_slots_oldest_first() -> None:
    now = [1_800_000_000.0]
    t0 = now[0]
    # No ticker: transitions happen only on tick(), at the injected clock's time.
    with Simulator(config=SimConfig(max_running=2, ticker_interval_s=3600), clock=lambda: now[0]) as sim:
        a, b, c, d = (sim.add_task(_script(s)) for s in (5.0, 10.0, 10.0, 3.0))

        def status(*ids: str) -> list[str]:
            return [(sim.task(i) or {})["status"] for i in ids]

        assert status(a, b, c, d) == ["running", "running", "queued", "queued"]
        now[0] = t0 + 5
        sim.tick()
        assert status(a, b, c, d) == ["succeeded", "running", "running", "queued"]  # c before d
        late = sim.add_task(_script(1.0))  # joins the back of the queue, behind d
        assert status(late) == ["queued"]
        now[0] = t0 + 10
        sim.tick()
        assert status(b, c, d, late) == ["succeeded", "running", "running", "queued"]
        now[0] = t0 + 13
        sim.tick()
        d_state, late_state = sim.task(d), sim.task(late)
        assert d_state is not None and late_state is not None
        # d ran its 3 s from the slot it got at +10, not from its creation
        assert d_state["history"] == [("queued", t0), ("running", t0 + 10), ("succeeded", t0 + 13)]
        assert d_state["terminal_at"] == t0 + 13
        assert late_state["history"][-1] == ("running", t0 + 13)
        now[0] = t0 + 15
        sim.tick()
        assert status(c, late) == ["succeeded", "succeeded"]
        c_state = sim.task(c)
        assert c_state is not None and c_state["terminal_at"] == t0 + 15
        running = [t for t in sim.tasks() if t["status"] == "running"]
        assert running == []
