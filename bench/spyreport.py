"""Summarise py-spy ``--format raw`` (collapsed stacks) files: self and total samples per function."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    f = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", "/work/main/"):
        if marker in f:
            f = f.split(marker, 1)[1]
            break
    return f"{m.group('fn')} ({f})"


def summarise(paths: list[Path], top: int = 25) -> dict:
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    n = 0
    for p in paths:
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            c = int(count)
            frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
            if not frames:
                continue
            n += c
            self_c[frames[-1]] += c
            for f in set(frames):
                total_c[f] += c
    return {
        "samples": n,
        "self": [(f, c, c / n) for f, c in self_c.most_common(top)],
        "total": [(f, c, c / n) for f, c in total_c.most_common(top * 2)],
    }


if __name__ == "__main__":
    res = summarise([Path(p) for p in sys.argv[1:]])
    print("samples", res["samples"])
    print("-- self")
    for f, _c, share in res["self"]:
        print(f"{share:6.1%}  {f}")
    print("-- total")
    for f, _c, share in res["total"]:
        print(f"{share:6.1%}  {f}")
