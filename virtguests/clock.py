"""Time and waiting, injectable so timeout logic is tested without waiting.

All waits in virtguests go through a Clock and can be cut short by the
cancel event (SIGTERM/SIGINT), so the production loops are the tested loops
(tests use ``virtguests.testing.clock.FakeClock``).
"""

from __future__ import annotations

import threading
import time
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


class Uncancelled(Clock):
    """*clock*'s time, deaf to the stop request: the waits of a step that a stop request
    lets finish (the shutdown of a guest whose migration it aborted).  Without it such a
    wait would end at once, again and again."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.inner = clock

    def now(self) -> float:
        return self.inner.now()

    def sleep(self, seconds: float) -> bool:
        self.inner.wait(threading.Event(), seconds)
        return True

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return self.inner.wait(event, seconds)
