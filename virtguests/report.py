"""Output: the reference's message lines on stdout, problems on stderr.

Admins and test suites grep libvirt-guests' exact English lines, so the
wording of every ``say`` call matches the reference.  Lines are written whole
under a lock, because URIs are handled concurrently.  Per-guest outcomes are
collected here too, for the run report.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, TextIO


@dataclass
class Step:
    action: str
    result: str
    seconds: float
    detail: str = ""


@dataclass
class Outcome:
    """What happened to one guest during this run."""

    uri: str
    uuid: str
    name: str
    outcome: str = "pending"
    steps: list[Step] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Reporter:
    def __init__(
        self,
        out: Optional[TextIO] = None,
        err: Optional[TextIO] = None,
        *,
        quiet: bool = False,
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.quiet = quiet
        self._lock = threading.Lock()
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        self.started = time.time()

    def say(self, line: str) -> None:
        """A progress line, worded like libvirt-guests."""
        if self.quiet:
            return
        with self._lock:
            _write(self.out, line)

    def warn(self, line: str) -> None:
        if self.quiet:
            return
        self._stderr(f"virtguests: warning: {line}")

    def error(self, line: str) -> None:
        self._stderr(f"virtguests: error: {line}")

    def _stderr(self, line: str) -> None:
        with self._lock:
            _write(self.err, line)

    def cannot_resume_uri(self, uri: str, why: str, uuids: list[str]) -> None:
        self.say(f"Can't connect to {uri}. Skipping.")
        self.error(f"cannot reach {uri}: {why}; its {len(uuids)} guest(s) stay recorded for "
                   f"the next start: {' '.join(uuids)}")

    def gone(self, uri: str, uuid: str) -> None:
        self.error(f"recorded guest {uuid} no longer exists on {uri}; dropped")

    def outcome(self, uri: str, uuid: str, name: str) -> Outcome:
        with self._lock:
            key = (uri, uuid)
            if key not in self.outcomes:
                self.outcomes[key] = Outcome(uri, uuid, name)
            return self.outcomes[key]

    def step(self, outcome: Outcome, action: str, result: str, seconds: float,
             detail: str = "") -> None:
        with self._lock:
            outcome.steps.append(Step(action, result, round(seconds, 3), detail))
            outcome.outcome = result

    def document(self, command: str, status: int) -> dict[str, Any]:
        with self._lock:
            return {
                "command": command,
                "started": self.started,
                "finished": time.time(),
                "exit_status": status,
                "guests": [o.to_json() for o in self.outcomes.values()],
            }


def _write(stream: TextIO, line: str) -> None:
    """A closed journal or console must never interrupt protecting the guests."""
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass
