#!/usr/bin/env python3
"""Cross-file checks of the deployment contract that no schema can express.

- Graceful shutdown: every Celery worker has a hard ``--time-limit`` and its stop grace
  period is longer than it, in all three deployments (compose ``stop_grace_period``, k8s
  ``terminationGracePeriodSeconds``, systemd ``TimeoutStopSec``), so a warm shutdown never
  cuts a running task.
- Redis persistence: AOF on, ``appendfsync everysec``, ``maxmemory-policy noeviction`` in
  compose and in the k8s StatefulSet.
- One beat: compose ``deploy.replicas: 1``; k8s ``replicas: 1`` + ``Recreate``; the systemd
  target does not pull beat in.
- Compose: every service has a healthcheck; the simulator is behind the ``sim`` profile.
- Kubernetes: every container has resource requests and limits and a readiness probe;
  Celery workers have a liveness probe.
- systemd: EnvironmentFile, KillSignal=SIGTERM, KillMode=mixed for workers, Restart,
  a non-root User, hardening (NoNewPrivileges, ProtectSystem=strict, ReadWritePaths) and
  no unescaped ``%h`` in ExecStart (systemd would expand it to a home directory).
- Dockerfile: non-root USER and a HEALTHCHECK running ``seedance-worker check``.

Needs PyYAML. Usage: ``python deploy/check_contract.py [DEPLOY_DIR]``; exit 1 on problems.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

REDIS_FLAGS = {"--appendonly": "yes", "--appendfsync": "everysec", "--maxmemory-policy": "noeviction"}
GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|ns)")
GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
SYSTEMD_UNITS: dict[str | None, float] = {
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("min", "minute", "minutes", "m"), 60.0),
    **dict.fromkeys((None, "s", "sec", "second", "seconds"), 1.0),
    "ms": 1e-3,
}
SYSTEMD_TIME = re.compile(
    r"(\d+(?:\.\d+)?)\s*(hours|hour|hr|h|minutes|minute|min|ms|m|seconds|second|sec|s)?"
)


class Checker:
    def __init__(self, deploy: Path) -> None:
        self.deploy = deploy
        self.problems: list[str] = []

    def fail(self, path: Path, message: str) -> None:
        self.problems.append(f"{path.relative_to(self.deploy.parent)}: {message}")


def go_duration(value: Any) -> float | None:
    text = str(value).strip()
    parts = GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * GO_UNITS[u] for n, u in parts)


def systemd_seconds(value: str) -> float | None:
    text = value.strip()
    total, pos = 0.0, 0
    for match in SYSTEMD_TIME.finditer(text):
        if text[pos : match.start()].strip():
            return None
        total += float(match.group(1)) * SYSTEMD_UNITS[match.group(2)]
        pos = match.end()
    return total if pos and not text[pos:].strip() else None


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def is_celery(argv: list[str], sub: str) -> bool:
    return any(a.endswith("celery") for a in argv) and sub in argv


def check_shutdown(c: Checker, path: Path, what: str, argv: list[str], grace: float | None) -> None:
    if not is_celery(argv, "worker"):
        return
    limit = flag_value(argv, "--time-limit")
    if limit is None:
        c.fail(path, f"{what}: Celery worker without --time-limit: its shutdown grace cannot be bounded")
        return
    if grace is None:
        c.fail(path, f"{what}: no (parsable) stop grace period")
    elif grace <= float(limit):
        c.fail(path, f"{what}: grace period {grace:g} s is not longer than --time-limit {limit} s")


def check_redis_args(c: Checker, path: Path, what: str, argv: list[str]) -> None:
    for flag, want in REDIS_FLAGS.items():
        got = flag_value(argv, flag)
        if got != want:
            c.fail(path, f"{what}: redis-server needs {flag} {want} (got {got!r})")


def check_compose(c: Checker) -> None:
    path = c.deploy / "docker-compose.yml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    services: dict[str, Any] = data.get("services", {})
    for name, svc in services.items():
        argv = [str(a) for a in svc.get("command") or []] if isinstance(svc.get("command"), list) else []
        if isinstance(svc.get("command"), str):
            argv = shlex.split(svc["command"])
        what = f"service {name}"
        check_shutdown(c, path, what, argv, go_duration(svc.get("stop_grace_period", "10s")))
        if "healthcheck" not in svc or svc["healthcheck"].get("disable"):
            c.fail(path, f"{what}: no healthcheck")
        if argv[:1] == ["redis-server"]:
            check_redis_args(c, path, what, argv)
        if is_celery(argv, "beat") and (svc.get("deploy") or {}).get("replicas") != 1:
            c.fail(path, f"{what}: beat must say deploy.replicas: 1")
        if "simulate" in argv and svc.get("profiles") != ["sim"]:
            c.fail(path, f'{what}: the simulator must be behind profiles: ["sim"]')
    if not any(
        a[:1] == ["redis-server"]
        for a in ([str(x) for x in s.get("command") or []] for s in services.values())
    ):
        c.fail(path, "no redis-server service")


def check_k8s(c: Checker) -> None:
    for path in sorted((c.deploy / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(doc, dict) or doc.get("kind") not in ("Deployment", "StatefulSet"):
                continue
            name = f"{doc['kind']} {doc['metadata']['name']}"
            pod = doc["spec"]["template"]["spec"]
            grace = float(pod.get("terminationGracePeriodSeconds", 30))
            for ctr in pod.get("containers", []):
                argv = [str(a) for a in (ctr.get("command") or []) + (ctr.get("args") or [])]
                what = f"{name} container {ctr['name']}"
                check_shutdown(c, path, what, argv, grace)
                res = ctr.get("resources") or {}
                if not res.get("requests") or not res.get("limits"):
                    c.fail(path, f"{what}: needs resources.requests and resources.limits")
                if "readinessProbe" not in ctr:
                    c.fail(path, f"{what}: no readinessProbe")
                if is_celery(argv, "worker") and "livenessProbe" not in ctr:
                    c.fail(path, f"{what}: Celery worker without livenessProbe")
                if argv[:1] == ["redis-server"]:
                    check_redis_args(c, path, what, argv)
                if is_celery(argv, "beat"):
                    if doc["spec"].get("replicas") != 1:
                        c.fail(path, f"{what}: beat needs replicas: 1")
                    if (doc["spec"].get("strategy") or {}).get("type") != "Recreate":
                        c.fail(path, f"{what}: beat needs strategy Recreate (a rolling update runs two)")


def parse_unit(path: Path) -> dict[str, list[str]]:
    """Return {"Section.Key": [values...]} with line continuations joined."""
    out: dict[str, list[str]] = {}
    section, pending = "", ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def check_systemd(c: Checker) -> None:
    units = sorted((c.deploy / "systemd").glob("*.service"))
    if not units:
        c.fail(c.deploy / "systemd", "no .service units")
    required = {
        "Service.EnvironmentFile": "/etc/seedance-worker/env",
        "Service.KillSignal": "SIGTERM",
        "Service.Restart": "on-failure",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectSystem": "strict",
    }
    for path in units:
        unit = parse_unit(path)
        for key, want in required.items():
            if want not in unit.get(key, []):
                c.fail(path, f"needs {key.split('.', 1)[1]}={want}")
        user = (unit.get("Service.User") or [""])[-1]
        if user in ("", "root", "0"):
            c.fail(path, "needs a dedicated non-root User=")
        if not any("/var/lib/seedance-worker" in v for v in unit.get("Service.ReadWritePaths", [])):
            c.fail(path, "needs ReadWritePaths= covering the download dir (/var/lib/seedance-worker)")
        exec_start = " ".join(unit.get("Service.ExecStart", []))
        if not exec_start:
            c.fail(path, "no ExecStart=")
        if re.search(r"(?<!%)%h", exec_start.replace("%%", "")):
            c.fail(path, "ExecStart has %h, which systemd expands to a home directory: write %%h")
        argv = shlex.split(exec_start)
        stop = unit.get("Service.TimeoutStopSec")
        grace = systemd_seconds(stop[-1]) if stop else None
        if stop is None:
            c.fail(path, "needs TimeoutStopSec=")
        if is_celery(argv, "worker") and "mixed" not in unit.get("Service.KillMode", []):
            c.fail(path, "Celery worker needs KillMode=mixed (SIGTERM to the main process only)")
        check_shutdown(c, path, "ExecStart", argv, grace)
    for target in sorted((c.deploy / "systemd").glob("*.target")):
        wants = " ".join(parse_unit(target).get("Unit.Wants", []))
        if "seedance-beat.service" in wants:
            c.fail(target, "must not pull in seedance-beat.service (one beat per Redis, enabled by hand)")


def check_dockerfile(c: Checker) -> None:
    path = c.deploy / "Dockerfile"
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        c.fail(path, "the final USER must be non-root")
    health = re.findall(r"^HEALTHCHECK\s.*$", text, re.M)
    if not health or "seedance-worker" not in health[-1] or "check" not in health[-1]:
        c.fail(path, "needs a HEALTHCHECK running `seedance-worker check`")


def main(argv: list[str]) -> int:
    deploy = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parent
    c = Checker(deploy)
    for check in (check_compose, check_k8s, check_systemd, check_dockerfile):
        try:
            check(c)
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
            c.problems.append(f"{check.__name__}: could not check: {type(exc).__name__}: {exc}")
    for problem in c.problems:
        print(f"FAIL {problem}")
    if c.problems:
        print(f"check_contract: {len(c.problems)} problem(s)")
        return 1
    print("check_contract: ok (shutdown grace > --time-limit, Redis AOF/noeviction, one beat, units)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
