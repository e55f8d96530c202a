"""Time and waiting, injectable so timeout logic is tested without waiting.

All waits in virtguests go through a Clock and can be cut short by the
cancel event (SIGTERM/SIGINT), so the production loops are the tested loops.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

MAX_WAIT = threading.TIMEOUT_MAX
"""The longest wait threading accepts: longer (or infinite) waits are clamped to it."""


def clamp(seconds: float) -> float:
    """A wait threading accepts: nan and negatives are 0, inf and huge are MAX_WAIT."""
    if seconds != seconds or seconds <= 0:
        return 0.0
    return min(seconds, MAX_WAIT)


class Clock:
    """Real time."""

    def __init__(self, cancel: Optional[threading.Event] = None) -> None:
        self.cancel = cancel or threading.Event()

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> bool:
        """Sleep; return False early if a stop was requested."""
        if not clamp(seconds):
            return not self.cancel.is_set()
        return not self.cancel.wait(clamp(seconds))

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for *event* up to *seconds*; True if it was set."""
        return event.wait(clamp(seconds))


class FakeClock(Clock):
    """Virtual time: sleeping advances it at once.

    With *now_file*, the virtual time is published for the fake virsh
    (``VIRTGUESTS_FAKE_NOW_FILE``) so simulated guests age with it.
    """

    def __init__(
        self,
        start: float = 1_000_000.0,
        *,
        now_file: Optional[Path] = None,
        cancel: Optional[threading.Event] = None,
    ) -> None:
        super().__init__(cancel)
        self._now = start
        self._lock = threading.Lock()
        self.now_file = now_file
        self.slept: list[float] = []
        self._publish()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:  # one writer at a time: concurrent URIs wait on the same clock
            self._now += max(seconds, 0)
            self.slept.append(seconds)
            self._publish()

    def sleep(self, seconds: float) -> bool:
        if self.cancel.is_set():
            return False
        self.advance(clamp(seconds))
        return not self.cancel.is_set()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Advance in small steps, giving real processes a moment to react to each."""
        left = seconds
        while True:
            if event.wait(0.02):
                return True
            if left <= 0:
                return False
            step = min(left, 0.25)
            self.advance(step)
            left -= step

    def _publish(self) -> None:
        if self.now_file is not None:
            tmp = self.now_file.with_suffix(".tmp")
            tmp.write_text(repr(self._now))
            tmp.replace(self.now_file)
