"""The processes of a fault run and the chaos done to them: real prefork workers (SIGKILLed as whole
process groups and replaced), a supervisor replacing workers that exit on their own, the sweeper (a
real ``celery beat`` or ``run_sweep()`` in a thread) and Redis restarts.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from seedance_worker.engine.sweep import run_sweep
from seedance_worker.testing.redis import EmbeddedRedis
from tests.faults.rundata import KillEvent, Timeline
from tests.support.workers import WorkerProcess, Workers, worker_env

POLL_TASK = "seedance.poll"


def is_ready(w: WorkerProcess) -> bool:
    try:
        return b" ready." in w.log_path.read_bytes()
    except OSError:
        return False


class Storm:
    """Starts, supervises, SIGKILLs and stops a run's workers and sweeper; restarts its Redis."""

    def __init__(
        self,
        *,
        workdir: Path,
        logdir: Path,
        workers: int,
        concurrency: int,
        sweeper: str,
        sweep_interval_s: float,
        rng: random.Random,
        timeline: Timeline,
    ) -> None:
        self.workdir = workdir
        self.logdir = logdir
        self.n_workers = workers
        self.concurrency = concurrency
        self.sweeper = sweeper
        self.sweep_interval_s = sweep_interval_s
        self.rng = rng
        self.timeline = timeline
        self.kills: list[KillEvent] = []
        self.restarts: list[tuple[float, float]] = []  # (start, downtime_s)
        self.crashes: list[dict[str, Any]] = []  # workers that exited on their own
        self.workers: Workers | None = None
        self.beat: subprocess.Popen[bytes] | None = None
        self.beat_log: Path = logdir / "beat.log"
        self.app: Any = None
        self._sweep_stop = threading.Event()
        self._sweep_thread: threading.Thread | None = None
        self._sup_stop = threading.Event()
        self._sup_thread: threading.Thread | None = None
        self._procs_lock = threading.Lock()
        self._killed: set[int] = set()  # id() of WorkerProcess objects the harness SIGKILLed

    # ---- start / stop ----------------------------------------------------------------------------

    def start(self, app: Any) -> None:
        """The workers, the sweeper and the supervisor (in the run's SEEDANCE_* environment)."""
        self.app = app
        self.workers = Workers(self.logdir, n=self.n_workers, concurrency=self.concurrency)
        self.workers.__enter__()
        self._start_sweeper()
        self._sup_thread = threading.Thread(target=self._supervise, name="faults-supervisor", daemon=True)
        self._sup_thread.start()

    def stop(self) -> None:
        self._sup_stop.set()
        if self._sup_thread is not None:
            self._sup_thread.join(10)
        self._stop_sweeper()
        if self.workers is not None:
            self.workers.__exit__(None, None, None)

    def _start_sweeper(self) -> None:
        if self.sweeper == "beat":
            self._start_beat()
            return

        def loop() -> None:
            while not self._sweep_stop.wait(self.sweep_interval_s):
                with contextlib.suppress(Exception):
                    run_sweep()

        self._sweep_thread = threading.Thread(target=loop, name="faults-sweeper", daemon=True)
        self._sweep_thread.start()

    def _start_beat(self) -> None:
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

    # ---- the supervisor --------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Like systemd's Restart=on-failure: a worker that exits on its own is recorded and replaced."""
        assert self.workers is not None
        while not self._sup_stop.wait(0.5):
            with self._procs_lock:
                for w in list(self.workers.procs):
                    if w.proc is None or id(w) in self._killed or w.proc.poll() is None:
                        continue
                    self._replace_crashed(w)

    def _replace_crashed(self, w: WorkerProcess) -> None:
        assert self.workers is not None and w.proc is not None
        code = w.proc.returncode
        w._close()
        tail = [ln for ln in w.log_text().splitlines() if "CRITICAL" in ln or "Unrecoverable" in ln][-3:]
        self.crashes.append(
            {"t": round(time.time() - self.timeline.t0, 2), "worker": w.name, "exit_code": code, "log": tail}
        )
        self._killed.add(id(w))  # handled
        new = self.workers.spawn()
        self.timeline.note(f"{w.name} exited on its own (code {code}); {new.name} started")

    # ---- chaos -----------------------------------------------------------------------------------

    def kill_one(self) -> None:
        """SIGKILL a random ready worker (keeping another one alive) and start its replacement."""
        assert self.workers is not None
        live = self._live_workers()
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
        self.timeline.note(f"SIGKILL {victim.name} (holding {len(held)} polls); replacement started", ts)

    def _live_workers(self) -> list[WorkerProcess]:
        """The running, ready workers: waits (up to 30 s) while replacements boot, for at least two."""
        assert self.workers is not None
        deadline = time.time() + 30
        while True:
            live = [
                w for w in self.workers.procs if w.proc is not None and w.proc.poll() is None and is_ready(w)
            ]
            if len(live) >= 2 or time.time() > deadline:
                return live
            time.sleep(0.2)  # keep at least one other worker alive while replacements boot

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

    def restart_redis(self, server: EmbeddedRedis) -> None:
        ts = time.time()
        server.restart()
        down = time.time() - ts
        self.restarts.append((ts, down))
        self.timeline.note(f"Redis restarted (AOF), down {down:.2f}s", ts)
