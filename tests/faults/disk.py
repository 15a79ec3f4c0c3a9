"""A full disk for a window of a fault run.

The download directory lives on a small tmpfs of the run's own (``mount -t tmpfs -o size=...``), and
for the window a filler file next to it takes every free byte, topped up every 50 ms (a partial file
a worker discards frees pages the filler takes again), so every write of a video fails with
``ENOSPC`` the way a real full disk fails it; then the filler goes and the space comes back.

Mounting needs CAP_SYS_ADMIN in the current mount namespace: ``bench/faults.py --full-disk`` re-runs
itself under ``unshare --mount`` (with ``--map-root-user`` when not root), so the mount is private to
the bench and its workers and disappears with them, even after a SIGKILL of the bench.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.faults.rundata import Timeline

FILLER = ".filler"  # on the tmpfs beside the download dir, never inside it
_CHUNKS = (1 << 20, 1 << 16, 1 << 12, 512, 1)  # bytes; down to the last one


class MountRefused(RuntimeError):
    """The tmpfs could not be mounted (no CAP_SYS_ADMIN in this mount namespace)."""


class FullDisk:
    def __init__(self, root: Path, size_mb: int, timeline: Timeline) -> None:
        self.root = root  # the mount point; the download dir is a directory in it
        self.size_mb = size_mb
        self.timeline = timeline
        self.mounted = False
        self.window: tuple[float, float] | None = None  # (filled at, freed at), time.time()
        self.filled_bytes = 0
        self.max_free_bytes_while_full: int | None = None  # what statvfs saw after each top-up
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._full_at = 0.0

    def mount(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        opts = f"size={self.size_mb}m,mode=0755"
        cmd = ["mount", "-t", "tmpfs", "-o", opts, "seedance-faults", str(self.root)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise MountRefused(
                f"{' '.join(cmd)} failed ({done.stderr.strip()}); run the bench as root or let it re-run "
                "itself under `unshare --mount --map-root-user` (bench/faults.py --full-disk does)"
            )
        self.mounted = True

    def unmount(self) -> None:
        self.free()
        if self.mounted:
            # Lazy: a worker SIGKILLed a moment ago may still hold a file open for a few ms.
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)
            self.mounted = False

    def fill(self) -> None:
        """Take every free byte, and keep taking what is freed, until ``free()``."""
        self._stop.clear()
        self._fill_once()
        self._full_at = time.time()
        self.timeline.note(f"disk full ({self.filled_bytes / 1e6:.1f} MB filler, {self.free_bytes()} B free)")
        self._thread = threading.Thread(target=self._keep_full, name="faults-full-disk", daemon=True)
        self._thread.start()

    def free(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(5)
        self._thread = None
        (self.root / FILLER).unlink(missing_ok=True)
        freed = time.time()
        self.window = (self._full_at, freed)
        self.timeline.note(f"disk freed ({self.free_bytes() / 1e6:.1f} MB free)", freed)

    def report(self) -> dict[str, Any]:
        """What the run's checks need: the window (time.time()) and how full it really was."""
        return {
            "window": self.window,
            "size_mb": self.size_mb,
            "filled_bytes": self.filled_bytes,
            "max_free_bytes_while_full": self.max_free_bytes_while_full,
        }

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _keep_full(self) -> None:
        while not self._stop.wait(0.05):
            self._fill_once()
            left = self.free_bytes()
            seen = self.max_free_bytes_while_full
            self.max_free_bytes_while_full = left if seen is None else max(seen, left)

    def _fill_once(self) -> None:
        with open(self.root / FILLER, "ab", buffering=0) as fh:
            for size in _CHUNKS:
                block = b"\0" * size
                while True:
                    try:
                        n = fh.write(block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    self.filled_bytes += n or 0
                    if not n:
                        break
