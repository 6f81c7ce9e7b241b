"""Stopping a long-running process cleanly on Ctrl-C or SIGTERM: one helper for every command.

Example:
    >>> with stop_on_signals() as stop:  # doctest: +SKIP
    ...     while not stop.wait(0.5):
    ...         work()
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(
    notice: str | None = None, *, second_aborts: bool = True
) -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets, for the duration of the ``with`` block.

    The previous handlers come back on exit. Outside the main thread (where Python cannot
    install handlers) the event is returned unchanged, for the caller to set.

    Args:
        notice: printed on stderr at the first signal (e.g. "stopping after this batch").
        second_aborts: a second signal raises KeyboardInterrupt, for a user who does not
            want to wait for a clean stop.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and second_aborts:
            raise KeyboardInterrupt
        stop.set()
        if notice:
            print(f"\n{notice}", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
