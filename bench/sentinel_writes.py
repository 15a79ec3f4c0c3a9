"""Acknowledged writes lost in a Redis Sentinel failover, four ways of failing over (issue 15).

A primary, its replica and one sentinel on loopback (seedance_worker/testing/sentinel.py, AOF
everysec, down-after-milliseconds 1000). A probe appends 1, 2, 3, ... to a list every 5 ms through
the job store's own client (``connections.redis_client``: redis-py's Sentinel ``master_for``),
noting when each append was acknowledged. After the failover (and, where it matters, the old
master's demotion) the list on the new master is compared with the acknowledged appends:

* ``sigkill``: the primary gets SIGKILL; the sentinel promotes the replica after down-after.
* ``sentinel failover``: ``SENTINEL FAILOVER``; the old master, alive, keeps its clients and
  takes their writes until the sentinel demotes it at its next look (INFO every 10 s).
* ``+ client kill``: the same, then ``CLIENT KILL TYPE normal`` on the old master once the
  sentinel names the new one: clients reconnect through the sentinel.
* ``+ pause, kill``: ``CLIENT PAUSE 5000 WRITE`` on the primary first, then the two above: writes
  wait instead of landing on the old master, and fail over to the new one when killed.

reproduce with: python bench/sentinel_writes.py      (quick: --quick, one run of the first and last)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.common import table, write_json
from seedance_worker import connections
from seedance_worker.settings import load_settings
from seedance_worker.testing.sentinel import AppendProbe, SentinelRedis

KEY = "bench:probe"
METHODS = ("sigkill", "sentinel failover", "+ client kill", "+ pause, kill")


def _fail_over(ha: SentinelRedis, method: str) -> tuple[float, float]:
    """Fail over by ``method``; (seconds until clients are sent to the new master, until no client
    can write to the old one any more)."""
    if method == "+ pause, kill":
        ha.data_client(ha.master_port()).execute_command("CLIENT", "PAUSE", "5000", "WRITE")
    t0 = time.monotonic()
    old = ha.kill_primary() if method == "sigkill" else ha.failover()
    promoted_s = ha.wait_promoted(old)
    if method in ("+ client kill", "+ pause, kill"):
        ha.data_client(old.port).execute_command("CLIENT", "KILL", "TYPE", "normal")
    elif method == "sentinel failover":
        deadline = time.monotonic() + 60
        while ha.role(old) != "slave" and time.monotonic() < deadline:
            time.sleep(0.05)
    closed_s = time.monotonic() - t0
    return promoted_s, closed_s


def run_one(method: str) -> dict[str, Any]:
    ha = SentinelRedis().start()
    try:
        client = connections.redis_client(
            load_settings({"SEEDANCE_REDIS_URL": ha.url}), socket_timeout=1, socket_connect_timeout=1
        )
        probe = AppendProbe(client, KEY)
        probe.start()
        time.sleep(2.0)
        hit = time.monotonic()
        promoted_s, closed_s = _fail_over(ha, method)
        time.sleep(1.0)  # the probe's next appends reach the new master
        probe.halt.set()
        probe.join(5)
        lost = [at - hit for at in probe.lost(ha.data_client(ha.master_port()))]
        return {
            "method": method,
            "acked": len(probe.acked),
            "lost": len(lost),
            "lost from s": lost[0] if lost else float("nan"),
            "lost to s": lost[-1] if lost else float("nan"),
            "new master named s": promoted_s,
            "old master closed s": closed_s,
        }
    finally:
        ha.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    methods = (METHODS[0], METHODS[-1]) if a.quick else METHODS
    runs = 1 if a.quick else a.runs
    t0 = time.time()
    rows = [run_one(m) for _ in range(runs) for m in methods]
    cols = [
        "method",
        "acked",
        "lost",
        "lost from s",
        "lost to s",
        "new master named s",
        "old master closed s",
    ]
    print(table(rows, cols, "acknowledged appends lost per failover (times from the failover's start)"))
    path = write_json("sentinel_writes_quick.json" if a.quick else "sentinel_writes.json",
                      {"rows": rows, "runs": runs, "wall_s": time.time() - t0})  # fmt: skip
    print(f"wrote {path} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
