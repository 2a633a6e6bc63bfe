"""
Stop on SIGINT and SIGTERM: the batch, the emulator and the JetStream worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = ["on_stop_signals"]


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], object]) -> Iterator[list[signal.Signals]]:
    """
    Call *callback* on SIGINT and SIGTERM while the block runs; yield the signals handled.

    The loop's own handlers exist on Unix only, and only in the main thread; elsewhere
    Python's default (KeyboardInterrupt) applies and the list is empty.
    """
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield []
        return
    loop = asyncio.get_running_loop()
    installed = [signal.SIGINT, signal.SIGTERM]
    for signum in installed:
        loop.add_signal_handler(signum, callback)
    try:
        yield installed
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
