"""The billiard ExceptionInfo work-around (seedance_worker/wiring/compat.py): what Celery keeps for
each ``raise Ignore()`` is small, and a traceback formatted from it reads as before."""

from __future__ import annotations

import pickle
import sys
import traceback
import types
from typing import Any

import pytest
from billiard import einfo
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.app.trace import build_tracer
from celery.exceptions import Ignore

from seedance_worker.wiring import compat

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="co_positions exists from 3.11")


def _ignored_in_a_traced_task() -> Any:
    """The ExceptionInfo Celery hands the pool for a task that raises Ignore, as in every poll."""
    app = Celery(set_as_current=False)

    @app.task(bind=True, name="t.ignore")
    def ignore(self: Any) -> None:
        def deeper(n: int) -> None:
            if n == 0:
                raise Ignore()
            deeper(n - 1)

        deeper(6)

    trace = build_tracer(ignore.name, ignore, app=app, eager=False, propagate=False)
    return trace("id-1", (), {}, request={"id": "id-1"})[0]


def test_the_work_around_is_applied() -> None:
    assert getattr(einfo._Code.__init__, "_seedance_patched", False)
    assert getattr(einfo.Traceback.__init__, "_seedance_patched", False)


def test_what_celery_keeps_for_an_ignore_is_small() -> None:
    """billiard as shipped copies every bytecode position of each frame (2,341 4-tuples for
    Celery's trace_task, 38 KB pickled for this trace); with the work-around each frame keeps one."""
    info = _ignored_in_a_traced_task()
    assert isinstance(info, ExceptionInfo)
    frames, tb = 0, info.tb
    while tb is not None:
        positions = vars(tb.tb_frame.f_code)["_co_positions"]
        assert len(pickle.dumps(positions)) < 200  # shipped: a list, ~30 KB for trace_task's frame
        frames, tb = frames + 1, tb.tb_next
    assert frames >= 8
    assert len(pickle.dumps(info)) < 8_000  # shipped: ~38 KB; the pool pipes it to the parent


def test_a_traceback_formatted_from_the_copy_is_unchanged() -> None:
    """Same lines and the same ^^^ column markers as the live traceback, also after pickling."""

    def fails() -> None:
        values: dict[str, int] = {}
        print(values["missing"] + 1)

    try:
        fails()
    except KeyError:
        live = traceback.format_tb(sys.exc_info()[2])
        info = ExceptionInfo()
    assert traceback.format_tb(info.tb) == live
    assert traceback.format_tb(pickle.loads(pickle.dumps(info)).tb) == live
    assert any("^" in line for line in live)  # there are column markers to keep
    positions = list(info.tb.tb_frame.f_code.co_positions())
    code = test_a_traceback_formatted_from_the_copy_is_unchanged.__code__
    assert len(positions) == len(list(code.co_positions()))


def test_it_leaves_a_billiard_it_does_not_recognise_alone() -> None:
    """A _Code that keeps no _co_positions list (another billiard version) is not patched."""

    class Code:
        def __init__(self, code: types.CodeType) -> None:
            self.co_name = code.co_name

        @property
        def co_positions(self) -> Any:
            return iter

    class Traceback:
        def __init__(self, tb: Any) -> None:
            self.tb = tb

    stand_in = types.SimpleNamespace(_Code=Code, Traceback=Traceback)
    before = (Code.__init__, Traceback.__init__)
    assert compat._patch_billiard_einfo(stand_in) is False
    assert (Code.__init__, Traceback.__init__) == before
    assert compat._patch_billiard_einfo(types.SimpleNamespace()) is False
    assert compat._patch_billiard_einfo() is False  # billiard itself: patched once already
