"""Remote task ids for tests: valid for the client's id check, and unique per call."""

from __future__ import annotations

import uuid


def new_id() -> str:
    return f"cgt-20260101000000-{uuid.uuid4().hex[:10]}"
