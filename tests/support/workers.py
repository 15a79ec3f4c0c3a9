"""Real `celery -A seedance_worker worker` processes (prefork) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from seedance_worker.engine.store import JobRecord, get_store
from tests.support.waiting import wait_for


class WorkerProcess:
    """One worker (main process plus its prefork children) in its own process group."""

    def __init__(
        self,
        name: str,
        *,
        env: dict[str, str],
        logdir: Path,
        concurrency: int = 2,
        queues: str = "seedance.poll,seedance.post",
        extra_args: list[str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.cmd = [
            sys.executable, "-m", "celery", "-A", "seedance_worker", "worker",
            "-P", "prefork", "-c", str(concurrency), "-Q", queues, "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
            *(extra_args or []),
        ]  # fmt: skip
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log_path.read_text()[-3000:]}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"worker {self.name} not ready in {timeout_s}s: {self.log_path.read_text()[-3000:]}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._close()

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and every pool child."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Workers:
    """Start N workers with the current SEEDANCE_* environment; stop them all on exit."""

    def __init__(self, logdir: Path, n: int = 2, **kw: object) -> None:
        self.logdir = logdir
        self.n = n
        self.kw = kw
        self.procs: list[WorkerProcess] = []

    def spawn(self, name: str | None = None) -> WorkerProcess:
        w = WorkerProcess(name or f"w{len(self.procs) + 1}", env=worker_env(), logdir=self.logdir, **self.kw)  # type: ignore[arg-type]
        self.procs.append(w.start())
        return w

    def __enter__(self) -> Workers:
        for _ in range(self.n):
            self.spawn()
        for w in self.procs:
            w.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.procs:
            w.stop()

    def logs(self) -> str:
        return "\n".join(w.log_text() for w in self.procs)

    def tails(self) -> str:
        """The last 2,500 characters of each worker's log: what a failed wait shows."""
        return "\n".join(f"=== {w.name}\n{w.log_text()[-2500:]}" for w in self.procs)


def wait_done(tid: str, timeout_s: float, ws: Workers) -> JobRecord:
    """The job's record once it is done; on a timeout, its record and the workers' log tails."""

    def done() -> JobRecord | None:
        rec = get_store().get(tid)
        return rec if rec is not None and rec.state == "done" else None

    rec: JobRecord = wait_for(
        done, timeout_s, f"job {tid} done", lambda: f"{get_store().get(tid)}\n{ws.tails()}"
    )
    return rec
