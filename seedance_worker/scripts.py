"""Lua scripts from ``.lua`` files, read once per process and registered once per Redis client.

Each script lives beside the module that owns its keys (``engine/lua/``, ``steps/lua/``, ``lua/``)
and opens with its KEYS/ARGV map. A registered script runs as EVALSHA and falls back to EVAL by
itself when a restarted Redis has forgotten it.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis
from redis.commands.core import Script


@functools.cache
def source(package: str, name: str) -> str:
    """The text of ``<package>/lua/<name>.lua``."""
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def load(client: redis.Redis, package: str, name: str) -> Script:
    return client.register_script(source(package, name))
