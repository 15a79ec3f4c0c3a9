"""Work-arounds for third-party bugs that hurt reliability, each applied once at import.

kombu 5.7's Redis transport: when the broker connection drops, the worker's consumer first
``collect()``s the connection (which clears its client) and then ``close()``s it; closing restores
unacked messages and builds a connection pool from ``self.connection.client``, now ``None``. The
``AttributeError`` that follows is not a connection error, so it escapes and the worker exits with
"Unrecoverable error" on a plain Redis restart (seen in tests/faults). Raising a Redis connection
error instead lets kombu's own error handling skip the restore (the messages stay in the unacked
index and are restored by the next sweep) and the worker reconnects.
"""

from __future__ import annotations

from typing import Any

import redis


def _patch_kombu_redis() -> None:
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "_seedance_patched", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.exceptions.ConnectionError("broker connection was already collected")
        return original(self, asynchronous)

    _connparams._seedance_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]


_patch_kombu_redis()
