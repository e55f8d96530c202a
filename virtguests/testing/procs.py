"""Whether a process has exited, for tests and tools that kill processes and must know
they are gone.  A SIGKILL is delivered, not waited for, and a zombie is dead already:
in a container init may never reap it."""

from __future__ import annotations

import time
from collections.abc import Iterable


def exited(pid: int) -> bool:
    """*pid* is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            stat = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    try:
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except IndexError:
        return False


def wait_exited(pids: Iterable[int], deadline: float, what: str = "processes") -> None:
    """Until every pid has exited; TimeoutError naming those left at *deadline*
    (``time.monotonic``)."""
    alive = set(pids)
    while True:
        alive = {pid for pid in alive if not exited(pid)}
        if not alive:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} {sorted(alive)} still running")
        time.sleep(0.01)
