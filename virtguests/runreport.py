"""The run report: what happened to each guest during this run, step by step.

Written to ``virtguests-last-run.json`` at the end of a run (``report``, ``status
--json``); the field names of ``GuestResult`` and ``StepResult`` are its JSON keys, and
``virsh`` holds the virsh processes and connections the run started per URI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from virtguests.model import Action, Outcome


@dataclass
class StepResult:
    """One action on a guest and its outcome (the run report's ``steps``; the field
    names are its JSON keys)."""

    action: Action
    result: Outcome
    seconds: float
    detail: str = ""


@dataclass
class GuestResult:
    """What happened to one guest during this run: the outcome of its last step
    (``pending`` before the first)."""

    uri: str
    uuid: str
    name: str
    outcome: Outcome = Outcome.PENDING
    steps: list[StepResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RunReport:
    """The results of one run, filled in by the executor's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.results: dict[tuple[str, str], GuestResult] = {}
        self.started = time.time()

    def guest(self, uri: str, uuid: str, name: str) -> GuestResult:
        """The guest's result, made pending on first use."""
        with self._lock:
            key = (uri, uuid)
            if key not in self.results:
                self.results[key] = GuestResult(uri, uuid, name)
            return self.results[key]

    def step(self, result: GuestResult, action: Action, outcome: Outcome, seconds: float,
             detail: str = "") -> None:
        """A step ended: its outcome is now the guest's."""
        with self._lock:
            result.steps.append(StepResult(action, outcome, round(seconds, 3), detail))
            result.outcome = outcome

    def outcomes(self) -> list[tuple[str, Outcome]]:
        """Each guest's URI and outcome so far."""
        with self._lock:
            return [(r.uri, r.outcome) for r in self.results.values()]

    def document(self, command: str, status: int,
                 virsh: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """The report; *virsh*: per URI, ``uri``, ``processes`` and ``connections``."""
        with self._lock:
            return {
                "command": command,
                "started": self.started,
                "finished": time.time(),
                "exit_status": status,
                "guests": [r.to_json() for r in self.results.values()],
                "virsh": [dict(entry) for entry in virsh],
            }
