"""Virtual time for tests: a Clock whose sleeping advances it at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from virtguests.clock import Clock, clamp


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
