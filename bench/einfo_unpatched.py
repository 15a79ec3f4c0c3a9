"""Loaded into a bench worker (``--include``) to undo the billiard ExceptionInfo work-around, so
bench/pool_memory.py can run the product with and without it side by side. Never imported by the
product or by tests.
"""

from __future__ import annotations

import os

import redis
from billiard import einfo

from seedance_worker.wiring import compat  # noqa: F401  (patched first, so there is something to undo)

for _cls in (einfo._Code, einfo.Traceback):
    _original = getattr(_cls.__init__, "_seedance_original", None)
    if _original is not None:
        _cls.__init__ = _original  # type: ignore[method-assign]
UNPATCHED = not getattr(einfo._Code.__init__, "_seedance_patched", False)

# Tell the harness this worker really runs without the work-around.
redis.Redis.from_url(os.environ["SEEDANCE_REDIS_URL"]).set("bench:einfo_unpatched", int(UNPATCHED))
