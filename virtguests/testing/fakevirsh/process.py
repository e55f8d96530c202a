"""What one fake virsh call sees of the process it runs in: its environment, its parent
(the virtguests that ran it) and when it was started.

A call from the command line is a process of its own (``CallerProcess()``); the
in-process runner (:mod:`virtguests.testing.inprocess`) gives each call the
environment virtguests passed it and refuses to signal the test process.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional


class CallerProcess:
    """This process: ``os.environ``, its parent, its fork time from ``/proc``."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def signal_parent(self, name: str) -> None:
        """Send SIG*name* to the parent (never to init, if orphaned)."""
        if os.getppid() > 1:
            import signal

            os.kill(os.getppid(), getattr(signal, "SIG" + name))

    def call_id(self) -> str:
        """Names this call in the log and the journal: the process, or a session's line."""
        return str(os.getpid())

    def spawned(self) -> float:
        """When this process was forked (wall clock), i.e. when its caller started the
        call."""
        try:
            with open("/proc/self/stat") as file:
                ticks = int(file.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/uptime") as file:
                uptime = float(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            return time.time()
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
