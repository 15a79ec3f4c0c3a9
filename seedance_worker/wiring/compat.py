"""Work-arounds for third-party bugs that hurt reliability or memory, each applied once at import.

kombu 5.7's Redis transport: when the broker connection drops, the worker's consumer first
``collect()``s the connection (which clears its client) and then ``close()``s it; closing restores
unacked messages and builds a connection pool from ``self.connection.client``, now ``None``. The
``AttributeError`` that follows is not a connection error, so it escapes and the worker exits with
"Unrecoverable error" on a plain Redis restart (seen in tests/faults). Raising a Redis connection
error instead lets kombu's own error handling skip the restore (the messages stay in the unacked
index and are restored by the next sweep) and the worker reconnects.

billiard's ExceptionInfo copies every bytecode position of every traceback frame it wraps; see
the second section.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import sys
import types
from collections.abc import Iterator
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


# --- billiard's ExceptionInfo ---------------------------------------------------------------------
#
# billiard 4.x (billiard/einfo.py, ``_Code.__init__``) copies ``list(code.co_positions())`` for
# every frame of every traceback it wraps, on Python 3.11+: one 4-tuple per code unit of the whole
# function, 2,341 for Celery's ``trace_task`` alone. Celery builds two ``ExceptionInfo`` for each
# ``raise Ignore()`` (celery/app/trace.py: the trace result, which the pool also pickles to the
# parent, and ``TraceInfo.handle_ignore``), and every poll that reschedules ends with ``Ignore``.
# The copies sit in reference cycles until a full collection. Measured (bench/pool_memory.py,
# 20,000 polls on ``-c 2``): each pool child grows from 60 to 170 MB as shipped, to 67 MB with
# this work-around, and a poll costs 27 % less CPU.
#
# The only reader of those positions is ``traceback``'s ``_get_code_position(code, lasti)``, which
# takes entry ``lasti // 2`` of ``co_positions()``: a traceback entry needs one position, the one
# at its ``tb_lasti``. So each ``_Code`` is built without the copy, and ``Traceback`` gives it that
# one position (``_Positions``: as many entries as the original, all blank but that one, made on
# iteration). A traceback formatted from the copy reads exactly as before. The patch touches
# billiard only when its internals are the ones described here (see ``_billiard_fits``).

_NO_POSITION: tuple[None, None, None, None] = (None, None, None, None)


class _Positions:
    """What a copied code object's ``co_positions()`` iterates: as many entries as the original
    (one per code unit), all blank but the one at ``index``."""

    __slots__ = ("index", "position", "total")

    def __init__(self, total: int, index: int = -1, position: tuple[Any, ...] = _NO_POSITION) -> None:
        self.total = total
        self.index = index
        self.position = position

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if not 0 <= self.index < self.total:
            return itertools.repeat(_NO_POSITION, self.total)
        return itertools.chain(
            itertools.repeat(_NO_POSITION, self.index),
            (self.position,),
            itertools.repeat(_NO_POSITION, self.total - self.index - 1),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return _Positions, (self.total, self.index, self.position)


class _CodeView:
    """A code object as billiard's ``_Code`` reads it, minus the positions it would copy."""

    def __init__(self, code: types.CodeType) -> None:
        self._code = code

    def __getattr__(self, name: str) -> Any:
        return getattr(self._code, name)

    def co_positions(self) -> Iterator[tuple[Any, ...]]:
        return iter(())


def _position_at(code: types.CodeType, lasti: int) -> _Positions:
    total = len(code.co_code) // 2
    if lasti < 0:
        return _Positions(total)
    index = lasti // 2
    return _Positions(total, index, next(itertools.islice(code.co_positions(), index, None), _NO_POSITION))


def _billiard_fits(einfo: Any) -> bool:
    """True when billiard's ``_Code`` copies ``co_positions`` the way the patch expects."""
    code_cls, tb_cls = getattr(einfo, "_Code", None), getattr(einfo, "Traceback", None)
    if sys.version_info < (3, 11) or code_cls is None or tb_cls is None:
        return False
    if not isinstance(getattr(code_cls, "co_positions", None), property):
        return False
    try:
        probe = code_cls(_billiard_fits.__code__)
    except Exception:  # a different constructor: leave it alone
        return False
    return isinstance(vars(probe).get("_co_positions"), list)


def _patch_billiard_einfo(einfo: Any = None) -> bool:
    """Apply the work-around to ``billiard.einfo`` (or a stand-in); False when it does not fit."""
    if einfo is None:
        einfo = importlib.import_module("billiard.einfo")
    if not _billiard_fits(einfo) or getattr(einfo._Code.__init__, "_seedance_patched", False):
        return False
    code_init, tb_init = einfo._Code.__init__, einfo.Traceback.__init__

    def code_init_lean(self: Any, code: types.CodeType) -> None:
        code_init(self, _CodeView(code))
        self._co_positions = _Positions(len(code.co_code) // 2)  # blanks until Traceback fills one in

    def tb_init_positioned(self: Any, tb: types.TracebackType, *args: Any, **kwargs: Any) -> None:
        tb_init(self, tb, *args, **kwargs)
        copied: Any = getattr(getattr(self, "tb_frame", None), "f_code", None)
        if isinstance(getattr(copied, "_co_positions", None), _Positions):
            with contextlib.suppress(Exception):  # at worst the copy lacks column markers
                copied._co_positions = _position_at(tb.tb_frame.f_code, tb.tb_lasti)

    patched: list[tuple[Any, Any]] = [(code_init_lean, code_init), (tb_init_positioned, tb_init)]
    for fn, original in patched:
        fn._seedance_patched = True
        fn._seedance_original = original  # bench/einfo_unpatched.py puts it back to compare
    einfo._Code.__init__ = code_init_lean
    einfo.Traceback.__init__ = tb_init_positioned
    return True


_patch_billiard_einfo()
