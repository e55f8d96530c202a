"""SIGTERM/SIGINT: record the request; act on it outside the signal handler.

A Python signal handler runs in the main thread between two bytecodes, in the
middle of whatever that thread was doing, possibly holding a lock (a queue's,
an Event's, a stream's).  A handler that takes any lock can therefore wait
for itself forever.  So the handler here does nothing at all: the interpreter
writes the signal number to a wakeup pipe (``signal.set_wakeup_fd``, done in
C when the signal arrives), and a watcher thread reads it and does the work:
set the cancel event, stop new virsh calls, report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Callable, Optional

HANDLED = (signal.SIGTERM, signal.SIGINT)

_WAKE_TO_EXIT = 0
"""Written by ``__exit__`` to end the watcher (no real signal has number 0)."""


def _record(signum: int, frame: Optional[FrameType]) -> None:
    """Replaces the default action (exit, KeyboardInterrupt); the wakeup fd does the rest."""


class StopRequests:
    """While active, SIGTERM/SIGINT call *on_signal(signum, first)* in a watcher thread."""

    def __init__(self, on_signal: Callable[[int, bool], None]) -> None:
        self.on_signal = on_signal
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        self._previous_fd: Optional[int] = None
        self._pipe: Optional[tuple[int, int]] = None
        self._watcher: Optional[threading.Thread] = None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers (tests run us in threads)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        self._watcher = threading.Thread(target=self._watch, name="virtguests-signals",
                                         daemon=True)
        self._watcher.start()
        self._previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, _record)
        return self

    def __exit__(self, kind: Optional[type[BaseException]], value: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self._pipe is None:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
        read_end, write_end = self._pipe
        with contextlib.suppress(OSError):
            os.write(write_end, bytes([_WAKE_TO_EXIT]))
        if self._watcher is not None:
            self._watcher.join(5)
        os.close(write_end)
        if self._watcher is None or not self._watcher.is_alive():
            os.close(read_end)
        self._pipe = None

    def _watch(self) -> None:
        assert self._pipe is not None
        read_end = self._pipe[0]
        while True:
            try:
                data = os.read(read_end, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            for signum in data:
                if signum == _WAKE_TO_EXIT:
                    return
                if signum in HANDLED:
                    first = not self.received
                    self.received.append(signum)
                    with contextlib.suppress(Exception):  # nor stop the next signal
                        self.on_signal(signum, first)
            if not data:
                return
