"""Lifecycle events on a URI, used only to make the shutdown wait's next check sooner."""

from __future__ import annotations

import threading
from typing import Optional

from virtguests import commands
from virtguests.clock import Clock
from virtguests.virsh import Virsh, VirshError, Watch

POLL = 0.05
"""Seconds between two "which guests are still active" checks (one virsh call)."""

SAFETY_POLL = 1.0
"""With a lifecycle event stream, checks run on each event, and at least this often."""


class Doorbell:
    """``virsh event --loop --event lifecycle`` on a URI: wakes the wait loop early.

    A line only rings the bell.  Event lines carry guest names, which tenants
    choose, so nothing in them decides anything: the loop then checks with one
    UUID listing.  The loop marks the stream *proven* once a ring was followed
    by a check that found a guest stopped; until then checks stay as frequent
    as without events.  Where events are unavailable (or the URI was given up)
    the loop simply polls.
    """

    def __init__(self, virsh: Virsh, uri: str) -> None:
        self.rung = threading.Event()
        self.proven = False
        self.watch: Optional[Watch] = None
        try:
            self.watch = virsh.watch(uri, commands.lifecycle_events(), self._line)
        except VirshError:
            self.watch = None

    def _line(self, line: str) -> None:
        self.rung.set()

    def wait(self, clock: Clock, poll: float, limit: float) -> bool:
        """Until an event, or the next check, or *limit* seconds; True if an event came.

        Even a stream of events (a guest rebooting in a loop) leaves POLL between
        two checks: tenants cannot make us run virsh without pause.
        """
        limit = max(limit, 0.0)
        if self.watch is None or not self.watch.alive():
            clock.sleep(min(poll, limit))
            return self.rung.is_set()
        began = clock.now()
        every = max(poll, SAFETY_POLL) if self.proven else poll
        rang = clock.wait(self.rung, min(every, limit))
        waited = clock.now() - began
        if rang and waited < min(POLL, limit):
            clock.sleep(min(POLL, limit) - waited)
        return rang

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
