"""A Redis Sentinel set-up on loopback for the failover tests: a primary, a replica of it and one
sentinel watching them, all the embedded ``redis-server`` (testing/redis.py) on free ports.

Both data servers run with AOF (``appendfsync everysec``); the sentinel is the same binary started
with ``--sentinel`` on a config file of its own (it rewrites that file as it learns the set-up).
One sentinel with quorum 1 is enough to fail over on loopback; production runs three or more.
With ``password`` the data servers require it (and the replica uses it towards the primary); with
``sentinel_password`` the sentinel requires its own.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import redis
from redis.sentinel import Sentinel

from seedance_worker.errors import ConfigError
from seedance_worker.testing.redis import EmbeddedRedis, free_port, redis_server_binary, stop_process

MASTER_NAME = "mymaster"


class SentinelRedis:
    """``url`` is the ``sentinel://`` URL of the sentinel; ``kill_primary()`` SIGKILLs the current
    master, after which the sentinel promotes the replica once ``down_after_ms`` have passed."""

    def __init__(
        self,
        *,
        master_name: str = MASTER_NAME,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        self.sentinel_password = sentinel_password
        self.dir = Path(tempfile.mkdtemp(prefix="seedance-sentinel-"))
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.primary = EmbeddedRedis(appendonly=True, workdir=str(self._subdir("a")), extra_args=auth)
        self.replica = EmbeddedRedis(
            appendonly=True,
            workdir=str(self._subdir("b")),
            extra_args=[*auth, "--replicaof", "127.0.0.1", str(self.primary.port)],
        )
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    def _subdir(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"sentinel://{auth}127.0.0.1:{self.sentinel_port}/0"

    @property
    def servers(self) -> list[EmbeddedRedis]:
        return [self.primary, self.replica]

    def __repr__(self) -> str:
        ports = (self.primary.port, self.replica.port, self.sentinel_port)
        return f"SentinelRedis(primary={ports[0]}, replica={ports[1]}, sentinel={ports[2]})"

    def data_client(self, port: int) -> redis.Redis:
        """A plain client of one data server (not through the sentinel)."""
        return redis.Redis(port=port, password=self.password, decode_responses=True, socket_timeout=2)

    def start(self, timeout_s: float = 15.0) -> SentinelRedis:
        self.primary.start()
        self.replica.start()
        replica = self.data_client(self.replica.port)
        self._wait(
            lambda: replica.info("replication").get("master_link_status") == "up", timeout_s, "replica link"
        )
        conf = self._subdir("s") / "sentinel.conf"
        lines = [
            f"port {self.sentinel_port}",
            "bind 127.0.0.1",
            f"dir {conf.parent}",
            f"logfile {conf.parent / 'sentinel.log'}",
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary.port} 1",
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
        conf.write_text("\n".join(lines) + "\n")
        cmd = [redis_server_binary(), str(conf), "--sentinel"]
        self.sentinel = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Ready once it knows the replica as a healthy one: only such a replica can be promoted.
        self._wait(lambda: self.healthy_replicas() == 1, timeout_s, "the sentinel to see the replica")
        return self

    def _wait(self, pred: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sentinel is not None and self.sentinel.poll() is not None:
                raise ConfigError(f"redis sentinel exited at start (see {self.dir}/s/sentinel.log)")
            try:
                if pred():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise ConfigError(f"timed out after {timeout_s:g} s waiting for {what} (logs in {self.dir})")

    def _sentinel_client(self) -> redis.Redis:
        return redis.Redis(
            port=self.sentinel_port, password=self.sentinel_password, decode_responses=True, socket_timeout=2
        )

    def healthy_replicas(self) -> int:
        """Replicas the sentinel knows that are up and linked to their master."""
        replicas = self._sentinel_client().execute_command("SENTINEL", "REPLICAS", self.master_name)
        return sum(1 for r in replicas if r.get("flags") == "slave" and r.get("master-link-status") == "ok")

    def master_port(self) -> int:
        """The port of the master the sentinel names now."""
        addr = self._sentinel_client().execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        return int(addr[1])

    def master(self) -> EmbeddedRedis:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self) -> EmbeddedRedis:
        """SIGKILL the current master (no shutdown, no last fsync); the sentinel then fails over."""
        victim = self.master()
        victim.kill()
        return victim

    def failover(self) -> EmbeddedRedis:
        """``SENTINEL FAILOVER``: the replica is promoted at once; the old master, still up, is made
        its replica only when the sentinel next looks at it."""
        old = self.master()
        self._sentinel_client().execute_command("SENTINEL", "FAILOVER", self.master_name)
        return old

    def role(self, server: EmbeddedRedis) -> str:
        """``master`` or ``slave``, as ``server`` itself says."""
        return str(self.data_client(server.port).role()[0])

    def wait_promoted(self, old: EmbeddedRedis, timeout_s: float = 30.0) -> float:
        """Seconds until clients are sent to a master other than ``old`` that takes writes: redis-py
        asks the sentinel's master table, which names the new master once the failover has ended."""
        t0 = time.monotonic()
        kwargs = {"socket_timeout": 2, "password": self.sentinel_password}
        sentinel = Sentinel([("127.0.0.1", self.sentinel_port)], sentinel_kwargs=kwargs)

        def promoted() -> bool:
            _, port = sentinel.discover_master(self.master_name)
            return int(port) != old.port and str(self.data_client(int(port)).role()[0]) == "master"

        self._wait(promoted, timeout_s, "the sentinel to promote the replica")
        return time.monotonic() - t0

    def sentinel_log(self) -> str:
        path = self.dir / "s" / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.sentinel, timeout_s=10)
        self.sentinel = None
        for server in self.servers:
            server.stop()

    def __enter__(self) -> SentinelRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AppendProbe(threading.Thread):
    """Appends 1, 2, 3, ... to the list ``key`` through ``client`` every few milliseconds until
    ``halt`` is set, keeping when each append was acknowledged; errors (the outage) are retried.
    ``lost(master)`` then says which acknowledged appends the master no longer has."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.key = key
        self.acked: dict[int, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.halt.is_set():
            seq += 1
            with contextlib.suppress(redis.RedisError):
                self.client.rpush(self.key, seq)
                self.acked[seq] = time.monotonic()
            time.sleep(0.005)

    def lost(self, master: redis.Redis) -> list[float]:
        """When each acknowledged append missing on ``master`` was acknowledged (monotonic), sorted."""
        kept = {int(v) for v in master.lrange(self.key, 0, -1)}
        return sorted(at for seq, at in self.acked.items() if seq not in kept)
