"""Carry out a plan: the stages run it, this hands them one ``Execution``.

``stopping`` (per URI, per group: ``suspending``, ``shuttingdown``,
``poweringoff``, with ``othersave`` before anything harsher than a save) and
``starting`` do the work; every thread they start comes from
``concurrently``.  They build each call with ``commands`` and ask their
questions through ``query``, never through ``observe``.
"""

from __future__ import annotations

from typing import Callable, Optional

from virtguests import stopping
from virtguests.clock import Clock
from virtguests.config import Config
from virtguests.execution import Execution
from virtguests.plan import StartPlan, StopPlan
from virtguests.report import Reporter
from virtguests.starting import Starting
from virtguests.virsh import Virsh


class Executor:
    def __init__(
        self,
        virsh: Virsh,
        config: Config,
        reporter: Reporter,
        clock: Clock,
        *,
        checkpoint: Callable[[], None] = lambda: None,
    ) -> None:
        self.virsh = virsh
        self.config = config
        self.report = reporter
        self.clock = clock
        self.checkpoint = checkpoint
        self._run = self._execution()
        self.settled: dict[str, set[str]] = {}
        """start: the guests with a definite outcome (``plan.SETTLED``) per URI; every
        other recorded guest stays recorded for the next start."""

    def _execution(self, deadline: Optional[float] = None) -> Execution:
        return Execution(self.virsh, self.config, self.report, self.clock, self.checkpoint,
                         deadline)

    @property
    def status(self) -> int:
        return self._run.status

    def internal_error(self, what: str, exc: BaseException) -> None:
        """Report a bug (see ``Reporter.internal_error``); the run fails."""
        self._run.internal_error(what, exc)

    def stop(self, plan: StopPlan) -> int:
        deadline = None
        if self.config.stop_deadline > 0:
            deadline = self.clock.now() + self.config.stop_deadline
        self._run = self._execution(deadline)
        stopping.stop(self._run, plan)
        return self.status

    def start(self, plan: StartPlan) -> int:
        self._run = self._execution()
        starting = Starting(self._run)
        try:
            starting.start(plan)
        finally:
            self.settled = {uri: set(ids) for uri, ids in starting.settled().items()}
        return self.status
