"""The plan of a fault run, drawn from its seed: which jobs (submitted with a prompt marker, scripted
in the simulator, unknown ids), when each is tracked, and when the chaos comes (SIGKILLs, Redis
restarts, 429 bursts, a full disk).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.faults.harness import FaultConfig

Script = list[tuple[str, float | None]]  # the simulator's (status, seconds) steps of one task
Scripted = tuple[Script, str, str | None]  # (script, fate, error_code)
Event = tuple[float, str, Any]  # (seconds after t0, what, its argument)


def plan_jobs(cfg: FaultConfig, rng: random.Random) -> tuple[list[tuple[str, str]], list[Scripted]]:
    """(prompt, fate) for submits, and (script, fate, error_code) for simulator-created tasks."""
    n_unknown = min(cfg.unknown_jobs, cfg.jobs)
    n_submit = int((cfg.jobs - n_unknown) * cfg.submit_fraction)
    n_track = cfg.jobs - n_unknown - n_submit
    submits = [planned_submit(i, rng) for i in range(n_submit)]
    scripted = [planned_script(rng) for _ in range(n_track)]
    return submits, scripted


def planned_submit(i: int, rng: random.Random) -> tuple[str, str]:
    """A prompt whose marker picks the simulator's fate for it."""
    roll = rng.random()
    if roll < 0.15:
        return (f"job {i}: a red fox in snow [fail]", "failed")
    if roll < 0.25:
        return (f"job {i}: a red fox in snow [expire]", "expired")
    return (f"job {i}: a red fox in snow", "succeeded")


def planned_script(rng: random.Random) -> Scripted:
    """A simulator script: mostly succeeded, some through preprocessing, failed, expired, cancelled."""
    u = rng.uniform
    roll = rng.random()
    if roll < 0.55:
        return ([("queued", u(0.3, 3)), ("running", u(0.5, 4)), ("succeeded", None)], "succeeded", None)
    if roll < 0.65:
        steps: Script = [("queued", u(0.3, 2)), ("preprocessing", u(0.5, 2)), ("running", u(0.5, 2))]
        return ([*steps, ("succeeded", None)], "succeeded", None)
    if roll < 0.8:
        return (
            [("queued", u(0.3, 2)), ("running", u(0.5, 3)), ("failed", None)],
            "failed",
            "InternalServiceError",
        )
    if roll < 0.9:
        return ([("queued", u(0.5, 3)), ("expired", None)], "expired", None)
    return ([("queued", u(0.3, 3)), ("cancelled", None)], "cancelled", None)


def chaos_events(cfg: FaultConfig, rng: random.Random) -> list[Event]:
    events: list[Event] = []
    for _ in range(cfg.kills):
        events.append((rng.uniform(cfg.chaos_start_s, cfg.chaos_end_s), "kill", None))
    for _ in range(cfg.redis_restarts):
        # Mid-run, after the tracking window's first half, so jobs are in every stage.
        lo = max(cfg.chaos_start_s, cfg.track_window_s * 0.5)
        events.append((rng.uniform(lo, max(lo, cfg.chaos_end_s)), "restart", None))
    for _ in range(cfg.bursts):
        dur = rng.uniform(*cfg.burst_duration_s)
        ra = rng.choice(cfg.burst_retry_after_s)
        events.append((rng.uniform(cfg.chaos_start_s * 0.5, cfg.chaos_end_s), "burst", (dur, ra)))
    if cfg.full_disk_s > 0:  # drawn last and without the rng: the rest of the plan stays the same
        at = full_disk_start(cfg)
        events += [(at, "disk_full", None), (at + cfg.full_disk_s, "disk_free", None)]
    return sorted(events, key=lambda e: e[0])


def full_disk_start(cfg: FaultConfig) -> float:
    """Mid-run: 40 % into the tracking window, when downloads run steadily (unless set)."""
    return cfg.full_disk_at_s if cfg.full_disk_at_s is not None else cfg.track_window_s * 0.4


def timed_plan(cfg: FaultConfig, rng: random.Random, scripted: list[Scripted]) -> list[Event]:
    """The tracks (scripted tasks and unknown ids, shuffled, spread over the tracking window) and
    the chaos events, in time order (seconds after t0)."""
    unknown = [f"cgt-20990101{n:06d}-nf{n % 1000:03d}" for n in range(min(cfg.unknown_jobs, cfg.jobs))]
    track_items: list[tuple[str, Any]] = [("script", s) for s in scripted] + [("unknown", u) for u in unknown]
    rng.shuffle(track_items)
    step = cfg.track_window_s / max(1, len(track_items))
    plan: list[Event] = [(i * step, "track", item) for i, item in enumerate(track_items)]
    plan += chaos_events(cfg, rng)
    plan.sort(key=lambda e: e[0])
    return plan
