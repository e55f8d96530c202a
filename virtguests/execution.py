"""What the stages of one run of a plan share: its status, its deadline, and the
words every stage uses for a guest's step.

A stage (``stopping``, ``suspending``, ``shuttingdown``, ``poweringoff``,
``starting``) gets one ``Execution`` and reports through it.  The status is the
only thing stages change here; it is read back once, as the run's result.
A bug hit while handling one guest is that guest's internal error (``for_guest``);
a bug on a URI is that URI's (``guarded``): the others are still handled.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Optional, TypeVar

from virtguests.clock import Clock
from virtguests.concurrently import Job
from virtguests.config import Config
from virtguests.messages import Messages
from virtguests.model import Action, Departure, Outcome
from virtguests.plan import GuestStop
from virtguests.runreport import GuestResult, RunReport
from virtguests.virsh import Virsh, VirshError

T = TypeVar("T")

PROGRESS_EVERY = 5.0
"""The reference prints save and shutdown progress every 5 seconds."""

JOB_LOCK_WAIT = 30.0
"""libvirt waits this long for a guest's state-change lock (held by a save, say) before
a request fails: a destroy request gets QUERY_TIMEOUT on top of it."""

AGENT_SHUTDOWN_WAIT = 70.0
"""How long libvirt may spend on ``virsh shutdown`` of a guest with a guest agent before
it falls back to ACPI.  Without flags it tries the agent first (qemuDomainShutdownFlags):
up to 2 x 5 s to sync with it, then 60 s for ``guest-shutdown``
(VIR_DOMAIN_QEMU_AGENT_COMMAND_SHUTDOWN).  A tenant's unresponsive agent must not look
like a hung libvirtd, so a shutdown request gets QUERY_TIMEOUT on top of it.  A guest
being saved is paused, and the agent path then fails at once: this wait and
JOB_LOCK_WAIT do not add up."""


class Execution:
    """One run of a plan, shared by its stages (and their threads)."""

    def __init__(self, virsh: Virsh, config: Config, messages: Messages, clock: Clock,
                 checkpoint: Callable[[], None], deadline: Optional[float] = None,
                 run_report: Optional[RunReport] = None,
                 departed: Callable[[Departure], None] = lambda departure: None) -> None:
        self.virsh = virsh
        self.config = config
        self.messages = messages
        self.run_report = run_report if run_report is not None else RunReport()
        self.clock = clock
        self.checkpoint = checkpoint
        """Called after each guest's step, to save the progress so far."""
        self.deadline = deadline
        """STOP_DEADLINE as a time on *clock*; None: no deadline."""
        self.departed = departed
        """Called when a guest has left for a peer, before anything else is said of it:
        the migrated record's checkpoint."""
        self._status = 0
        self._lock = threading.Lock()
        self._carried: set[tuple[str, str]] = set()

    @property
    def status(self) -> int:
        return self._status

    @property
    def cancelled(self) -> bool:
        return self.clock.cancel.is_set()

    def carry_on(self, uri: str, planned: GuestStop) -> None:
        """A guest whose migration a stop request aborted: in flight, so the rest of its
        chain still runs after the request."""
        with self._lock:
            self._carried.add((uri, planned.guest.uuid))

    def cancelled_for(self, uri: str, planned: GuestStop) -> bool:
        """Whether a stop request holds this guest back (a carried-on guest goes on)."""
        with self._lock:
            return self.cancelled and (uri, planned.guest.uuid) not in self._carried

    def given_up(self, uri: str) -> Optional[str]:
        """Why *uri* was given up (a call there timed out), or None."""
        return self.virsh.given_up(uri)

    def fail(self) -> None:
        with self._lock:
            self._status = 1

    def remaining(self) -> float:
        if self.deadline is None:
            return math.inf
        return self.deadline - self.clock.now()

    def request_timeout(self, action: Action) -> float:
        """QUERY_TIMEOUT, plus what libvirt itself may wait before it answers *action*."""
        return self.config.query_timeout + (
            AGENT_SHUTDOWN_WAIT if action == Action.SHUTDOWN else JOB_LOCK_WAIT)

    def request(self, uri: str, planned: GuestStop, action: Action,
                argv: list[str]) -> Optional[VirshError]:
        """Send the request that does *action* to the guest: None once sent, else the
        error; a URI given up meanwhile is recorded here (the error says ``given_up``)."""
        try:
            self.virsh.run(uri, argv, timeout=self.request_timeout(action),
                           ignore_interrupt=True)
        except VirshError as err:
            if err.given_up:
                self.give_up(uri, planned, action)
            return err
        return None

    # -- bugs -------------------------------------------------------------------

    def internal_error(self, what: str, exc: BaseException) -> None:
        """Report a bug (see ``Messages.internal_error``); the run fails."""
        self.fail()
        self.messages.internal_error(what, exc)

    def guarded(self, what: str, job: Callable[[], None]) -> Job[None]:
        """*job*, whose bug is reported as an internal error about *what*."""
        return Job(job, lambda exc: self.internal_error(what, exc))

    def for_guest(self, uri: str, guest: str, uuid: str, action: Action,
                  job: Callable[[], T], after_bug: T) -> Job[T]:
        """One guest's step; a bug there is reported for that guest alone.

        The guest keeps its record, and a bug never leads to a harsher step
        (*after_bug* says "do not escalate").
        """
        def bug(exc: Exception) -> T:
            self.internal_error(f"{action} of guest {guest} on {uri}", exc)
            self.run_report.step(self.run_report.guest(uri, uuid, guest), action,
                                 Outcome.INTERNAL_ERROR, 0.0, one_line(exc))
            self.checkpoint()
            return after_bug

        return Job(job, bug)

    # -- a stop step's words ----------------------------------------------------

    def result(self, uri: str, planned: GuestStop) -> GuestResult:
        return self.run_report.guest(uri, planned.guest.uuid, planned.guest.name)

    def interrupted(self, uri: str, planned: GuestStop) -> None:
        self.run_report.step(self.result(uri, planned), Action.NONE, Outcome.INTERRUPTED, 0.0,
                             "stop requested before this guest was handled")
        self.checkpoint()

    def give_up(self, uri: str, planned: GuestStop, action: Action) -> None:
        """Not tried: the URI stopped answering.  Named in the URI's error at the end."""
        self.run_report.step(self.result(uri, planned), action, Outcome.GIVEN_UP, 0.0,
                             f"{uri} is not answering: {self.given_up(uri)}")
        self.checkpoint()

    def held_back(self, uri: str, planned: GuestStop, action: Action) -> bool:
        """True when *action* may no longer be tried on the guest (a stop was requested,
        or its URI was given up); its run report then says why."""
        if self.cancelled_for(uri, planned):
            self.interrupted(uri, planned)
            return True
        if self.given_up(uri) is not None:
            self.give_up(uri, planned, action)
            return True
        return False

    def escalating(self, uri: str, planned: GuestStop, action: Action) -> tuple[str, bool]:
        """Whether the chain's next step takes a guest, and the words that say so.

        Not on a URI given up (nothing more is tried there); after a stop request
        the next step only records the guest as interrupted, so "trying" is not said.
        """
        following = next_action(planned, action)
        if following is None or self.given_up(uri) is not None:
            return "", False
        return ("" if self.cancelled_for(uri, planned) else f"; trying {following}"), True

    def failed_step(self, uri: str, planned: GuestStop, action: Action, what: str,
                    err: VirshError, seconds: float) -> bool:
        """Report a failed step (``WHAT failed: DETAIL[; trying NEXT]``); True: escalate."""
        trying, escalate = self.escalating(uri, planned, action)
        self.fail()
        self.messages.error(f"{what} failed: {err.detail}{trying}")
        self.run_report.step(self.result(uri, planned), action, Outcome.FAILED, seconds, err.detail)
        self.checkpoint()
        return escalate


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def next_action(planned: GuestStop, after: Action) -> Optional[Action]:
    """The action of *step*'s chain after *after*, or None (none, or not in the chain)."""
    actions = planned.actions
    if after not in actions:
        return None
    index = actions.index(after)
    return actions[index + 1] if index + 1 < len(actions) else None
