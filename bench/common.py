"""Shared harness of the benchmarks: embedded Redis, the simulator in its own process, real workers.

* ``SimProcess``: ``seedance_worker.testing.simulator.Simulator`` in a separate (spawned) process, so its
  HTTP threads do not share a GIL with the driver; commands over a pipe (add scripted tasks, change
  the config, read the request log in a compact form).
* ``Worker``: ``python -m celery -A seedance_worker worker -P prefork -c N -Q seedance.poll,seedance.post
  --include bench.baseline_tasks`` in its own process group; ready when ``bench:ready:<pid>`` is set.
* ``in_env(env, fn, *args)``: run ``fn`` in a spawned process whose ``SEEDANCE_*`` environment is
  ``env`` (the bundled Celery app reads its broker URL at import), e.g. ``track_many`` batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / "bench" / "results" / "logs.tmp"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402

from seedance_worker import keys  # noqa: E402
from seedance_worker.testing.redis import EmbeddedRedis  # noqa: E402

CTX = mp.get_context("spawn")


# --- the simulator in its own process ---------------------------------------------------------------


def _sim_main(conn: Any, cfg: dict[str, Any]) -> None:
    from seedance_worker.testing.simulator import SimConfig, Simulator

    sim = Simulator(config=SimConfig(**cfg)).start()
    conn.send(sim.base_url)
    while True:
        try:
            cmd, payload = conn.recv()
        except EOFError:
            break
        try:
            if cmd == "stop":
                break
            if cmd == "add":
                out: Any = [sim.add_task([tuple(s) for s in script]) for script in payload]
            elif cmd == "add_n":  # n tasks with the same script
                script, n = payload
                st = [tuple(s) for s in script]
                out = [sim.add_task(st) for _ in range(n)]
            elif cmd == "configure":
                sim.configure(**payload)
                out = None
            elif cmd == "gets":  # (ts, task_id, status) of every GET of a task
                out = [(r.ts, r.task_id, r.status) for r in sim.requests("get")]
            elif cmd == "log":  # (ts, kind, task_id, status) of every request of the given kinds
                out = [(r.ts, r.kind, r.task_id, r.status) for r in sim.requests() if r.kind in payload]
            elif cmd == "statuses":  # how many live tasks are in each status
                out = {}
                for st in sim.tasks():
                    out[st["status"]] = out.get(st["status"], 0) + 1
            elif cmd == "count":
                out = len(sim.requests(payload))
            elif cmd == "since":  # requests answered since a time: GETs, list calls, ids they named
                recs = [r for r in sim.requests() if r.ts >= payload]
                lists = [r for r in recs if r.kind == "list"]
                out = {
                    "get": sum(1 for r in recs if r.kind == "get"),
                    "list": len(lists),
                    "list_ids": sum(
                        len([i for v in r.query.get("filter.task_ids", []) for i in v.split(",") if i])
                        for r in lists
                    ),
                }
            elif cmd == "clear":
                sim.clear_log()
                out = None
            elif cmd == "terminal":  # task_id -> terminal_at (None while not terminal)
                out = {}
                for tid in payload:
                    st = sim.task(tid)
                    out[tid] = None if st is None else st["terminal_at"]
            else:
                raise ValueError(cmd)
            conn.send(("ok", out))
        except Exception as exc:  # report, keep serving
            conn.send(("err", f"{type(exc).__name__}: {exc}"))
    sim.stop()


class SimProcess:
    def __init__(self, **cfg: Any) -> None:
        cfg.setdefault("max_log_records", 2_000_000)
        self.cfg = cfg
        self.proc: Any = None

    def start(self) -> SimProcess:
        parent, child = CTX.Pipe()
        self.conn = parent
        self.proc = CTX.Process(target=_sim_main, args=(child, self.cfg), daemon=True)
        self.proc.start()
        self.base_url: str = parent.recv()
        return self

    def call(self, cmd: str, payload: Any = None) -> Any:
        self.conn.send((cmd, payload))
        status, out = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator {cmd}: {out}")
        return out

    def add(self, scripts: Sequence[Sequence[tuple[str, float | None]]]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(scripts), 5000):
            out += self.call("add", [list(s) for s in scripts[i : i + 5000]])
        return out

    def add_n(self, script: Sequence[tuple[str, float | None]], n: int) -> list[str]:
        out: list[str] = []
        for i in range(0, n, 10000):
            out += self.call("add_n", (list(script), min(10000, n - i)))
        return out

    def pid(self) -> int:
        return int(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(("stop", None))
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- workers ------------------------------------------------------------------------------------------


def base_env(redis_url: str, api_base_url: str, **seedance: Any) -> dict[str, str]:
    """The environment of a worker (and of ``in_env`` helpers): SEEDANCE_* from keyword arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEEDANCE_", "PYTEST_", "BENCH_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["SEEDANCE_REDIS_URL"] = redis_url
    env["SEEDANCE_API_BASE_URL"] = api_base_url
    env["SEEDANCE_API_KEY"] = "bench-key"
    env["SEEDANCE_DOWNLOAD_DIR"] = str(LOGS / "videos")
    env["SEEDANCE_DOWNLOAD_ALLOWED_HOSTS"] = "127.0.0.1,localhost"
    env["SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS"] = "true"  # the simulator serves files on loopback
    for k, v in seedance.items():
        name = k.upper()
        env[name if name.startswith(("SEEDANCE_", "BENCH_")) else "SEEDANCE_" + name] = str(v)
    return env


class Worker:
    """One ``celery worker`` (main process + prefork children) in its own process group."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        *,
        concurrency: int = 2,
        queues: str = "seedance.poll,seedance.post",
        loglevel: str = "WARNING",
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.env = env
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self.cmd = [
            sys.executable, "-m", "celery", "-A", "seedance_worker", "worker",
            "-P", "prefork", "-c", str(concurrency), "-Q", queues, "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", loglevel,
            "--include", "bench.baseline_tasks", *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, r: redis.Redis | None = None, timeout_s: float = 60.0) -> None:
        r = redis.Redis.from_url(self.env["SEEDANCE_REDIS_URL"], decode_responses=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log_path.read_text()[-3000:]}")
            if r.exists(f"bench:ready:{self.pid}"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready: {self.log_path.read_text()[-3000:]}")

    def processes(self) -> tuple[psutil.Process, list[psutil.Process]]:
        main = psutil.Process(self.pid)
        return main, main.children(recursive=True)

    def rss(self) -> dict[str, Any]:
        """RSS in MB of the main process and of each pool child."""
        try:
            main, kids = self.processes()
            return {
                "main_mb": main.memory_info().rss / 2**20,
                "children_mb": [k.memory_info().rss / 2**20 for k in kids],
            }
        except psutil.Error:
            return {"main_mb": float("nan"), "children_mb": []}

    def cpu_s(self) -> float:
        try:
            main, kids = self.processes()
            return sum(sum(p.cpu_times()[:2]) for p in [main, *kids])
        except psutil.Error:
            return float("nan")

    def child_pids(self) -> list[int]:
        try:
            return [p.pid for p in self.processes()[1]]
        except psutil.Error:
            return []

    def sigterm(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def wait_exit(self, timeout_s: float) -> float | None:
        """Seconds until the whole process group is gone, or None on timeout (then it is killed)."""
        assert self.proc is not None
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        # children of a warm shutdown exit with the main process; wait for stragglers too
        while time.monotonic() - t0 < timeout_s:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        return time.monotonic() - t0

    def stop(self, timeout_s: float = 30.0) -> float | None:
        """Warm shutdown (SIGTERM to the main process); returns how long it took."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self._log.close()
            return 0.0
        t0 = time.monotonic()
        self.sigterm()
        took = self.wait_exit(timeout_s)
        self._log.close()
        return None if took is None else time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_workers(r: redis.Redis, workers: Iterable[Worker]) -> list[Worker]:
    ws = [w.start() for w in workers]
    try:
        for w in ws:
            w.wait_ready(r)
    except BaseException:
        for w in ws:  # never leave a half-started fleet behind
            w.kill()
        raise
    return ws


# --- helpers in their own environment -----------------------------------------------------------------


def _env_main(q: Any, env: dict[str, str], module: str, fn: str, args: tuple[Any, ...]) -> None:
    os.environ.clear()
    os.environ.update(env)
    try:
        import importlib

        mod = importlib.import_module(module)
        q.put(("ok", getattr(mod, fn)(*args)))
    except BaseException as exc:
        import traceback

        q.put(("err", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def in_env_many(env: dict[str, str], module: str, fn: str, arg_list: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``module.fn(*args)`` for each args tuple, each in its own spawned process, in parallel."""
    procs = []
    for args in arg_list:
        q = CTX.Queue()
        p = CTX.Process(target=_env_main, args=(q, env, module, fn, args), daemon=True)
        p.start()
        procs.append((p, q))
    out = []
    for p, q in procs:
        status, val = q.get()
        p.join()
        if status != "ok":
            raise RuntimeError(val)
        out.append(val)
    return out


def in_env(env: dict[str, str], module: str, fn: str, *args: Any) -> Any:
    return in_env_many(env, module, fn, [args])[0]


def _envproc_main(conn: Any, env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    import importlib
    import traceback

    import bench.drive  # noqa: F401  (imports seedance_worker with this environment)

    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        module, fn, args = msg
        try:
            conn.send(("ok", getattr(importlib.import_module(module), fn)(*args)))
        except BaseException as exc:
            conn.send(("err", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class EnvProc:
    """A persistent spawned helper with a run's SEEDANCE_* environment (no spawn cost per call)."""

    def __init__(self, env: dict[str, str]) -> None:
        parent, child = CTX.Pipe()
        self.conn = parent
        self.proc = CTX.Process(target=_envproc_main, args=(child, env), daemon=True)
        self.proc.start()
        if parent.recv() != "ready":
            raise RuntimeError("helper did not start")

    def call(self, fn: str, *args: Any, module: str = "bench.drive") -> Any:
        self.conn.send((module, fn, args))
        status, out = self.conn.recv()
        if status != "ok":
            raise RuntimeError(out)
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()

    def __enter__(self) -> EnvProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Redis ----------------------------------------------------------------------------------------------


def start_redis() -> EmbeddedRedis:
    """Use as ``with start_redis() as red:`` (``__enter__`` starts it, ``__exit__`` stops it)."""
    return EmbeddedRedis()


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def timed_floats(r: redis.Redis, key: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (x.split() for x in r.lrange(key, 0, -1))]


# --- statistics and output ------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and relative spread ((max - min) / median) of repeated measurements."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "spread": float("nan")}
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else float("nan"),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str], title: str = "") -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def product_fingerprint() -> str:
    """sha256 of seedance_worker/*.py: the product code changes under us, so results say which."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((ROOT / "seedance_worker").glob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        **data,
        "machine": {**machine(), "loadavg_end": os.getloadavg()},
        "product_sha256_16": product_fingerprint(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def total_polls(r: redis.Redis, ids: Sequence[str]) -> int:
    """Job reads so far: the sum of every record's ``polls`` (a job read by a list call counts like
    one read by its own GET); one round trip per 5,000 ids."""
    n = 0
    for i in range(0, len(ids), 5000):
        pipe = r.pipeline(transaction=False)
        for tid in ids[i : i + 5000]:
            pipe.hget(keys.job(tid), "polls")
        n += sum(int(v or 0) for v in pipe.execute())
    return n


def wait_until(pred: Callable[[], bool], timeout_s: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
