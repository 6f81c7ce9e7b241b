"""core.logs: the one known-harmless kafka-python record is dropped, nothing else."""

from __future__ import annotations

import logging
import sys

from core.logs import RetiredTaskNoise


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("kafka.net.selector", logging.ERROR, __file__, 1, "x", (), info)


def test_only_the_retired_task_error_is_dropped() -> None:
    f = RetiredTaskNoise()
    assert not f.filter(_record(RuntimeError("Task is already done!")))
    assert f.filter(_record(RuntimeError("something else")))
    assert f.filter(_record(ValueError("Task is already done!")))
    plain = logging.LogRecord("kafka.net.selector", logging.ERROR, __file__, 1, "x", (), None)
    assert f.filter(plain)
