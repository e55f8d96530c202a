"""Carry out a plan: the stages run it, this hands them one ``Execution`` and returns
what happened as a value.

``stopping`` (per URI, per group: ``suspending``, ``shuttingdown``,
``poweringoff``, with ``othersave`` before anything harsher than a save),
``returning`` and ``starting`` do the work; every thread they start comes from
``concurrently``.  They build each call with ``commands`` and ask their
questions through ``query``, never through ``observe``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional

from virtguests import returning, stopping
from virtguests.clock import Clock
from virtguests.config import Config
from virtguests.execution import Execution
from virtguests.messages import Messages
from virtguests.model import Departure
from virtguests.plan import ReturnPlan, StartPlan, StopPlan
from virtguests.returning import Forget
from virtguests.runreport import RunReport
from virtguests.starting import Starting
from virtguests.virsh import Virsh


@dataclass(frozen=True)
class Executed:
    """What a stop or a start did, beyond the outcomes in the run report."""

    status: int
    """0, or 1 when anything failed (a step, a URI given up, a bug)."""
    settled: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """start: the guests with a definite outcome (``model.SETTLED``) per URI; every
    other recorded guest stays recorded for the next start.  Empty for stop."""


class Executor:
    def __init__(
        self,
        virsh: Virsh,
        config: Config,
        messages: Messages,
        clock: Clock,
        *,
        checkpoint: Callable[[], None] = lambda: None,
        run_report: Optional[RunReport] = None,
        departed: Callable[[Departure], None] = lambda departure: None,
    ) -> None:
        self.virsh = virsh
        self.config = config
        self.messages = messages
        self.clock = clock
        self.checkpoint = checkpoint
        self.departed = departed
        """Each guest that left for a peer, as soon as it did (the migrated record)."""
        self.run_report = run_report if run_report is not None else RunReport()
        """Where each guest's steps go (the action's, to be written at the end)."""

    def _execution(self, deadline: Optional[float] = None) -> Execution:
        return Execution(self.virsh, self.config, self.messages, self.clock, self.checkpoint,
                         deadline, self.run_report, self.departed)

    def stop(self, plan: StopPlan) -> Executed:
        deadline = None
        if self.config.stop_deadline > 0:
            deadline = self.clock.now() + self.config.stop_deadline
        run = self._execution(deadline)
        try:
            stopping.stop(run, plan)
        except Exception as exc:  # a bug past the stages' own guards
            run.internal_error("stopping the guests", exc)
        return Executed(run.status)

    def bring_home(self, plan: ReturnPlan, forget: Forget) -> Executed:
        """Migrate the recorded guests home (``returning``); *forget* drops one from the
        migrated record once it runs at home (or is known gone or home already)."""
        run = self._execution()
        try:
            returning.bring_home(run, plan, forget)
        except Exception as exc:  # a bug past the stage's own guards
            run.internal_error("bringing the guests home", exc)
        return Executed(run.status)

    def start(self, plan: StartPlan) -> Executed:
        run = self._execution()
        starting = Starting(run)
        try:
            starting.start(plan)
        except Exception as exc:  # a bug past the stages' own guards: the settled so far
            run.internal_error("starting the guests", exc)
        return Executed(run.status, starting.settled())
