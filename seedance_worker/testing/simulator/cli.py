"""``seedance-worker simulate``: one simulator in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from seedance_worker.testing.simulator.config import API_PREFIX, SimConfig
from seedance_worker.testing.simulator.simulator import Simulator


def serve_forever_cli(host: str, port: int, config: SimConfig | None = None) -> None:
    """Run the simulator until SIGINT/SIGTERM (``seedance-worker simulate``)."""
    sim = Simulator(host, port, config).start()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    shown = f"[{host}]" if ":" in host else host
    print(f"simulator listening on http://{shown}:{sim.port}{API_PREFIX}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for s, h in previous.items():
            signal.signal(s, h)
