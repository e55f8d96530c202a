"""Carry out a plan: run the virsh commands, wait for guests, escalate, report.

Each URI runs in its own thread (URIs are often different hosts), with its
own timeout accounting.  Waiting for shutdowns asks virsh once per URI per
tick which guests are still active, instead of once per guest; lifecycle
events only make that check come sooner.  A guest's action chain (suspend ->
shutdown -> poweroff) moves to the next step when a step fails or times out,
but never while a save of the guest is still in progress.  A URI that stopped
answering is given up at once (``Virsh.wedged``): its guests stay recorded and
are named in one error; a timeout of one guest's call costs only that guest's
step.  A bug hit while handling one guest is that guest's
internal error; the others are still handled.  After a stop request
(SIGTERM/SIGINT) nothing new is started; calls in flight finish or time out.
It runs a ``plan``, builds each call with ``commands`` and asks its questions
while waiting through ``query``, never through ``observe``.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar, Union

from virtguests import commands, query, virshout
from virtguests.clock import Clock
from virtguests.concurrently import Job, run_all
from virtguests.config import Config
from virtguests.model import POWEROFF, SHUTDOWN, START, SUSPEND
from virtguests.plan import (
    PROTECTED,
    SETTLED,
    GuestStart,
    GuestStop,
    Res,
    StartPlan,
    StopPlan,
    UriStart,
    UriStop,
)
from virtguests.report import Outcome, Reporter
from virtguests.virsh import Interrupted, Virsh, VirshError, Watch

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL = 0.05
"""Seconds between two "which guests are still active" checks (one virsh call)."""

SLOW_POLL = 1.0
"""Long waits (a guest that ignores ACPI) back off to this, to spare libvirtd."""


def poll_interval(waited: float) -> float:
    """Fast checks while shutdowns are fresh (most finish in seconds), slower later."""
    if waited <= 2:
        return POLL
    if waited <= 5:
        return 2 * POLL
    return min(SLOW_POLL, 2 * POLL + (waited - 5) / 50)


PROGRESS_EVERY = 5.0
"""The reference prints save and shutdown progress every 5 seconds."""

STAGES = (SUSPEND, SHUTDOWN, POWEROFF)

SAFETY_POLL = 1.0
"""With a lifecycle event stream, checks run on each event, and at least this often."""

CHECKS_FAILING_LIMIT = 60.0
"""With no shutdown timeout (0 = wait forever), status checks that keep failing this
long (at least 3 QUERY_TIMEOUTs) end the wait and the chain goes on: a dead libvirtd
must not hold up the host's shutdown forever."""


def save_job_poll(waited: float) -> float:
    """How often to ask whether another job's save has ended: each second, later each 5 s."""
    return 1.0 if waited < 10 else 5.0


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

QUICK_CALL = 1.0
"""Seconds a request usually takes at most (real time, even under a virtual clock)."""

SAVING = ("paused", "saving")
"""``virsh domstate --reason`` while a managedsave of a running guest runs
(fixtures/qemu-domstate-reason-saving); a guest paused before keeps its reason."""


class OtherSave:
    """How another job's save of a guest ended, as far as we waited for it."""

    NONE = "none"
    """No save in progress, or it ended leaving the guest running: go on with the chain."""
    SAVED = "saved"
    """The guest has a managed-save image now: it counts as saved."""
    OFF = "off"
    """The guest is shut off without an image (by its tenant or another tool)."""
    STILL_SAVING = "still saving"
    """Still saving when our time ran out: never shut down or powered off."""
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class _Refused:
    """A shutdown request that failed: asked about (another job's save?) after the wait."""

    step: GuestStop
    error: VirshError
    at: float
    until: float
    """How long a save in progress is waited for (SAVE_TIMEOUT, STOP_DEADLINE)."""


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


@dataclass
class _Waiting:
    """A guest asked to shut down, with the time its wait ends."""

    step: GuestStop
    since: float
    due: float
    next_progress: float


@dataclass
class _Flight:
    """The guests of one shutdown stage on one URI, wherever they are in the wait."""

    queue: deque[GuestStop]
    sending: list[GuestStop] = field(default_factory=list)
    waiting: dict[str, _Waiting] = field(default_factory=dict)
    failed: list[GuestStop] = field(default_factory=list)
    """Timed out: the chain's next step takes them."""
    refused: list[_Refused] = field(default_factory=list)
    """Their request failed: whether the chain goes on is decided after the wait."""

    def unsettled(self) -> list[GuestStop]:
        return [*self.sending, *(w.step for w in self.waiting.values()), *self.queue]


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
        self.deadline: Optional[float] = None
        self.status = 0
        self.settled: dict[str, set[str]] = {}
        """start: the guests with a definite outcome (``plan.SETTLED``) per URI; every
        other recorded guest stays recorded for the next start."""
        self._lock = threading.Lock()

    # -- shared helpers -------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self.clock.cancel.is_set()

    def _fail(self) -> None:
        with self._lock:
            self.status = 1

    def _remaining(self) -> float:
        if self.deadline is None:
            return math.inf
        return self.deadline - self.clock.now()

    def _run_concurrently(self, jobs: Sequence[tuple[str, Callable[[], None]]]) -> None:
        """Run one job per URI in its own thread; the main thread stays signal-ready.

        A bug hit on one URI is reported and fails the run, but never stops the
        other URIs' guests from being handled.
        """
        run_all([self._guarded(what, job) for what, job in jobs], len(jobs))

    def _guarded(self, what: str, job: Callable[[], None]) -> Job[None]:
        """*job*, whose bug is reported as an internal error about *what*."""
        return Job(job, lambda exc: self.internal_error(what, exc))

    def internal_error(self, what: str, exc: BaseException) -> None:
        """Report a bug (see ``internal_error``); the run fails."""
        self._fail()
        self.report.internal_error(what, exc)

    def _for_guest(self, uri: str, guest: str, uuid: str, action: str,
                   job: Callable[[], T], after_bug: T) -> Job[T]:
        """One guest's step; a bug there is reported for that guest alone.

        The guest keeps its record, and a bug never leads to a harsher step
        (*after_bug* says "do not escalate").
        """
        def bug(exc: Exception) -> T:
            self.internal_error(f"{action} of guest {guest} on {uri}", exc)
            self.report.step(self.report.outcome(uri, uuid, guest), action,
                             Res.INTERNAL_ERROR, 0.0, _one_line(exc))
            self.checkpoint()
            return after_bug

        return Job(job, bug)

    # -- stop -----------------------------------------------------------------

    def stop(self, plan: StopPlan) -> int:
        if self.config.stop_deadline > 0:
            self.deadline = self.clock.now() + self.config.stop_deadline
        self._run_concurrently([(f"stopping the guests on {item.uri}",
                                 functools.partial(self._stop_uri, item))
                                for item in plan.uris if item.guests])
        return self.status

    def _stop_uri(self, item: UriStop) -> None:
        if self.config.suspending:
            self.report.say(f"Suspending guests on {item.uri} URI...")
        else:
            self.report.say(f"Shutting down guests on {item.uri} URI...")
        try:
            for group in item.groups():
                run_all([self._guarded(f"stopping a group of guests on {item.uri}",
                                       functools.partial(self._stop_group, item.uri, group))],
                        1)
        finally:
            self._report_given_up_stop(item)

    def _report_given_up_stop(self, item: UriStop) -> None:
        """One error naming every guest a URI that stopped answering left unprotected."""
        why = self.virsh.wedged(item.uri)
        if why is None:
            return
        self._fail()
        left = [s for s in item.guests if self._outcome(item.uri, s).outcome not in PROTECTED]
        recorded = [s.guest.name for s in left if s.record]
        transient = [s.guest.name for s in left if not s.record]
        message = f"gave up on {item.uri}: a call there timed out ({why})"
        if recorded:
            message += ("; not protected, recorded so that start brings them back: "
                        + ", ".join(recorded))
        if transient:
            message += "; not protected (transient): " + ", ".join(transient)
        self.report.error(message)

    def _stop_group(self, uri: str, steps: Sequence[GuestStop]) -> None:
        queues: dict[str, list[GuestStop]] = {stage: [] for stage in STAGES}
        for step in steps:
            queues[step.actions[0]].append(step)
        for stage in STAGES:
            todo = queues[stage]
            if not todo:
                continue
            if self.cancelled:
                for step in todo:
                    self._interrupted(uri, step)
                continue
            if self.virsh.wedged(uri) is not None:
                for step in todo:
                    self._give_up(uri, step, stage)
                continue
            if stage == SUSPEND:
                failed = self._suspend_all(uri, todo)
            elif stage == SHUTDOWN:
                failed = self._shutdown_all(uri, todo)
            else:
                failed = self._poweroff_all(uri, todo)
            for step in failed:
                following = _next_action(step, stage)
                if following is not None:
                    queues[following].append(step)

    def _outcome(self, uri: str, step: GuestStop) -> Outcome:
        return self.report.outcome(uri, step.guest.uuid, step.guest.name)

    def _interrupted(self, uri: str, step: GuestStop) -> None:
        self.report.step(self._outcome(uri, step), "none", Res.INTERRUPTED, 0.0,
                         "stop requested before this guest was handled")
        self.checkpoint()

    def _give_up(self, uri: str, step: GuestStop, action: str) -> None:
        """Not tried: the URI stopped answering.  Named in the URI's error at the end."""
        self.report.step(self._outcome(uri, step), action, Res.GIVEN_UP, 0.0,
                         f"{uri} is not answering: {self.virsh.wedged(uri)}")
        self.checkpoint()

    def _escalating(self, uri: str, step: GuestStop, action: str) -> tuple[str, bool]:
        """Whether the chain's next step takes a guest, and the words that say so.

        Not on a URI given up (nothing more is tried there); after a stop request
        the next step only records the guest as interrupted, so "trying" is not said.
        """
        following = _next_action(step, action)
        if following is None or self.virsh.wedged(uri) is not None:
            return "", False
        return ("" if self.cancelled else f"; trying {following}"), True

    def _failed_step(self, uri: str, step: GuestStop, action: str, what: str,
                     err: VirshError, seconds: float) -> bool:
        """Report a failed step (``WHAT failed: DETAIL[; trying NEXT]``); True: escalate."""
        trying, escalate = self._escalating(uri, step, action)
        self._fail()
        self.report.error(f"{what} failed: {err.detail}{trying}")
        self.report.step(self._outcome(uri, step), action, Res.FAILED, seconds, err.detail)
        self.checkpoint()
        return escalate

    def _each_guest(self, uri: str, steps: Sequence[GuestStop], action: str,
                    job: Callable[[str, GuestStop], bool], workers: int = 1) -> list[GuestStop]:
        """Run *job* for each guest (*workers* at once); the ones to escalate.

        *job* returns True when the chain's next step should take the guest.
        """
        escalate = run_all([self._for_guest(uri, step.guest.name, step.guest.uuid, action,
                                            functools.partial(job, uri, step), False)
                            for step in steps], workers)
        return [step for step, again in zip(steps, escalate) if again]

    # suspend ---------------------------------------------------------------

    def _suspend_all(self, uri: str, steps: Sequence[GuestStop]) -> list[GuestStop]:
        return self._each_guest(uri, steps, SUSPEND, self._suspend,
                                self.config.parallel_suspend)

    def _suspend(self, uri: str, step: GuestStop) -> bool:
        """managedsave one guest, printing progress every 5 s; True: go on with the chain."""
        name, uuid = step.guest.name, step.guest.uuid
        outcome = self._outcome(uri, step)
        label = f"Suspending {name}: "
        if self.cancelled:
            self._interrupted(uri, step)
            return False
        if self.virsh.wedged(uri) is not None:
            self._give_up(uri, step, SUSPEND)
            return False
        budget = min(float(self.config.save_timeout), self._remaining())
        if budget <= 0:
            trying, escalate = self._escalating(uri, step, SUSPEND)
            self.report.error(f"no time left before STOP_DEADLINE to save guest {name}"
                              f"{trying}")
            self.report.step(outcome, SUSPEND, Res.SKIPPED, 0.0, "STOP_DEADLINE reached")
            return escalate
        self.report.say(f"{label}...")
        started = self.clock.now()

        def save() -> Optional[VirshError]:
            try:
                self.virsh.run(uri, commands.managedsave(uuid, self.config), timeout=budget,
                               ignore_interrupt=True)
            except VirshError as err:
                return err
            return None

        def progress(done: threading.Event) -> None:
            next_progress = started + PROGRESS_EVERY
            asking = True  # until a progress query times out (a hung QEMU): then "..."
            while not self.clock.wait(done, max(next_progress - self.clock.now(), 0.0)):
                if self.clock.now() >= next_progress:
                    next_progress += PROGRESS_EVERY
                    progress = self._save_progress(uri, uuid) if asking else "..."
                    asking = progress is not None
                    self.report.say(f"{label}{progress or '...'}")

        # a bug in the save is raised again here, in this guest's own guard
        [err] = run_all([Job(save)], 1, waiting=progress)
        if err is None:
            self.report.say(f"{label}done")
            self.report.step(outcome, SUSPEND, Res.SAVED, self.clock.now() - started)
            self.checkpoint()
            return False
        if err.wedged:
            self._give_up(uri, step, SUSPEND)
            return False
        if self.virsh.wedged(uri) is None:
            # A save must end before anything harsher is tried: another job's (an
            # earlier run killed mid-save, another tool) or ours, which libvirt goes on
            # with after its virsh timed out (SAVE_TIMEOUT, STOP_DEADLINE).
            other = self._other_save(uri, step, started + budget, failure=err,
                                     ours=err.timed_out)
            if other != OtherSave.NONE:
                return self._after_other_save(uri, step, SUSPEND, other, started,
                                              failure=err if err.timed_out else None)
        return self._failed_step(uri, step, SUSPEND, f"saving guest {name}", err,
                                 self.clock.now() - started)

    def _save_progress(self, uri: str, uuid: str) -> Optional[str]:
        """``Data processed`` of a save, or "..."; None once a query timed out."""
        try:
            result = self.virsh.run(uri, commands.domjobinfo(uuid),
                                    timeout=self.config.query_timeout)
        except Interrupted:
            return "..."
        except VirshError as err:
            return None if err.timed_out else "..."
        return virshout.data_processed(result.stdout) or "..."

    # another job's save ----------------------------------------------------

    def _domain_state(self, uri: str, uuid: str) -> Optional[tuple[str, str]]:
        try:
            return query.domain_state(self.virsh, uri, uuid, self.config)
        except VirshError as err:
            log.debug("%s", err)
            return None

    def _save_job(self, uri: str, uuid: str) -> Optional[bool]:
        """Whether ``virsh domjobinfo`` shows a save job; None if it cannot tell."""
        try:
            return query.save_job_running(self.virsh, uri, uuid, self.config)
        except VirshError as err:
            log.debug("%s", err)
            return None

    def _saving(self, uri: str, uuid: str, failure: Optional[VirshError] = None
                ) -> tuple[Optional[tuple[str, str]], Optional[str]]:
        """The guest's ``domstate --reason`` (None: no answer), and what shows a save of
        it in progress (None: nothing does).

        Any one sign is enough: the reason ``saving`` (a guest that was running when
        the save began); for a paused guest, or after a call that failed on a lock held
        by a save, a save job in ``virsh domjobinfo``; and when domjobinfo cannot
        tell, that failed call's own words.  A shut-off guest is saved or not, no
        longer being saved.
        """
        state = self._domain_state(uri, uuid)
        if state == SAVING:
            return state, f"virsh domstate: {state[0]} ({state[1]})"
        lock = virshout.save_lock(failure.stderr) if failure is not None else None
        if state is not None and state[0] == "shut off":
            return state, None
        if (state is not None and state[0] == "paused") or lock:
            job = self._save_job(uri, uuid)
            if job:
                return state, "virsh domjobinfo: a save job is running"
            if job is None and lock:
                return state, f"the failed call said: {lock}"
        return state, None

    def _other_save(self, uri: str, step: GuestStop, until: float, *,
                    failure: Optional[VirshError] = None, ours: bool = False) -> str:
        """Is a save of this guest in progress?  Wait for it until *until*; how did it end?

        Asked only on failure paths (a failed save or shutdown request, before a
        power-off), with calls that need no job on the guest, so they answer while
        the save holds the guest's state-change lock.  *failure* is the call that
        failed; *ours*: it was our own save whose virsh timed out, which libvirt goes
        on with: our time is up, so it is not waited for.
        """
        name, uuid = step.guest.name, step.guest.uuid
        state, saving = self._saving(uri, uuid, failure)
        if saving is not None:
            if ours:
                return OtherSave.STILL_SAVING
            began = self.clock.now()
            self.report.warn(f"guest {name} on {uri} is being saved by another job "
                             f"({saving}); waiting up to {max(round(until - began), 0)}s "
                             "for it to finish; it is not shut down or powered off "
                             "meanwhile")
            while saving is not None:
                left = until - self.clock.now()
                if left <= 0:
                    return OtherSave.STILL_SAVING
                if not self.clock.sleep(min(save_job_poll(self.clock.now() - began), left)):
                    return OtherSave.INTERRUPTED
                answer, still = self._saving(uri, uuid, failure)
                if answer is None and still is None:  # no answer: still saving, as far
                    if self.virsh.wedged(uri) is not None:  # as we know
                        return OtherSave.STILL_SAVING
                    continue
                state, saving = answer, still
        if state is None or state[0] != "shut off":
            return OtherSave.NONE
        if state[1] == "saved":
            return OtherSave.SAVED
        try:
            saved = query.has_managed_save(self.virsh, uri, uuid, self.config)
        except VirshError as err:
            log.debug("%s", err)
            return OtherSave.NONE
        return OtherSave.SAVED if saved else OtherSave.OFF

    def _after_other_save(self, uri: str, step: GuestStop, action: str, other: str,
                          started: float, *, failure: Optional[VirshError] = None) -> bool:
        """Report how a save in progress ended; never escalates (False).

        *failure*: our own save, whose virsh call timed out (see ``_other_save``).
        """
        name = step.guest.name
        outcome = self._outcome(uri, step)
        seconds = self.clock.now() - started
        if other == OtherSave.SAVED:
            if action == SUSPEND:
                self.report.say(f"Suspending {name}: done")
            else:
                self.report.warn(f"guest {name} on {uri} was saved by another job; "
                                 f"no {action} needed")
            self.report.step(outcome, SUSPEND, Res.SAVED, seconds,
                             "saved after its virsh call timed out" if failure
                             else "saved by another job")
        elif other == OtherSave.OFF:
            self.report.warn(f"guest {name} on {uri} is shut off already (without a "
                             f"managed-save image); no {action} needed")
            self.report.step(outcome, action, Res.SHUT_OFF, seconds, "already shut off")
        elif other == OtherSave.STILL_SAVING:
            self._fail()
            if failure is not None:
                what = (f"saving guest {name} failed: {failure.detail}; libvirt is still "
                        "saving it:")
                detail = "still being saved when our time ran out"
            else:
                what = f"guest {name} on {uri} is still being saved by another job;"
                detail = "another job was still saving it when our time ran out"
            self.report.error(f"{what} not shutting it down or powering it off while its "
                              "memory is being written (it stays recorded)")
            self.report.step(outcome, action, Res.SAVE_IN_PROGRESS, seconds, detail)
        else:
            self.report.step(outcome, action, Res.INTERRUPTED, seconds,
                             "stop requested while another job was saving it")
        self.checkpoint()
        return False

    # shutdown --------------------------------------------------------------

    def _shutdown_all(self, uri: str, steps: Sequence[GuestStop]) -> list[GuestStop]:
        flight = _Flight(deque(steps))
        bell = Doorbell(self.virsh, uri)
        try:
            self._wait_for_shutdowns(uri, flight, bell)
        except Exception as exc:
            self.internal_error(f"waiting for the shutdowns on {uri}", exc)
            for step in flight.unsettled():
                self.report.step(self._outcome(uri, step), SHUTDOWN, Res.INTERNAL_ERROR, 0.0,
                                 _one_line(exc))
            self.checkpoint()
        finally:
            bell.close()
        if not flight.refused:
            return flight.failed
        refused = {r.step.guest.uuid: r for r in flight.refused}
        return flight.failed + self._each_guest(
            uri, [r.step for r in flight.refused], SHUTDOWN,
            lambda uri, step: self._after_refusal(uri, refused[step.guest.uuid]),
            self.config.parallel_shutdown)

    def _request_timeout(self, action: str) -> float:
        """QUERY_TIMEOUT, plus what libvirt itself may wait before it answers *action*."""
        return self.config.query_timeout + (
            AGENT_SHUTDOWN_WAIT if action == SHUTDOWN else JOB_LOCK_WAIT)

    def _send_shutdown(self, uri: str, step: GuestStop) -> Optional[Union[bool, _Refused]]:
        """One shutdown request: True sent; a _Refused if it failed; None if nothing
        more is done (the URI was given up)."""
        try:
            self.virsh.run(uri, commands.shutdown(step.guest.uuid),
                           timeout=self._request_timeout(SHUTDOWN), ignore_interrupt=True)
        except VirshError as err:
            if err.wedged:
                self._give_up(uri, step, SHUTDOWN)
                return None
            now = self.clock.now()
            return _Refused(step, err, now,
                            now + min(float(self.config.save_timeout), self._remaining()))
        return True

    def _after_refusal(self, uri: str, refused: _Refused) -> bool:
        """A failed shutdown request: a save in progress (another job's, holding the
        guest's lock) is waited for and never escalated; True: the chain goes on."""
        step, err = refused.step, refused.error
        if self.virsh.wedged(uri) is None:
            other = self._other_save(uri, step, refused.until, failure=err)
            if other != OtherSave.NONE:
                return self._after_other_save(uri, step, SHUTDOWN, other, refused.at)
        return self._failed_step(uri, step, SHUTDOWN, f"shutdown of guest {step.guest.name}",
                                 err, 0.0)

    def _request_shutdowns(self, uri: str, steps: Sequence[GuestStop]
                           ) -> list[Optional[Union[bool, _Refused]]]:
        """Announce, then send shutdown requests, PARALLEL_SHUTDOWN at a time at most
        (each is one virsh call)."""
        for step in steps:
            self.report.say(f"Starting shutdown on guest: {step.guest.name}")

        return run_all([self._for_guest(uri, step.guest.name, step.guest.uuid, SHUTDOWN,
                                        functools.partial(self._send_shutdown, uri, step),
                                        None) for step in steps],
                       max(1, self.config.parallel_shutdown), waiting=self._through_clock)

    def _through_clock(self, done: threading.Event) -> None:
        """Wait for requests in worker threads: a call that takes longer than QUICK_CALL
        (virsh waiting for a guest's lock, say) is waited for through the Clock, so that a
        virtual clock lets time pass for it too; each virsh call has its own timeout."""
        if not done.wait(QUICK_CALL):
            while not self.clock.wait(done, PROGRESS_EVERY):
                pass

    def _wait_for_shutdowns(self, uri: str, flight: _Flight, bell: Doorbell) -> None:
        """Request shutdowns and wait for them: one loop for both modes.

        Serial (PARALLEL_SHUTDOWN <= 1, the reference's default): one guest at a
        time, each with its own timeout (its share of STOP_DEADLINE at most).
        Parallel: up to PARALLEL_SHUTDOWN guests in flight, SHUTDOWN_TIMEOUT for
        the whole URI, and the guests still queued when it expires get a request
        too.  A failed check is retried: a guest is followed until it is seen
        stopped (by UUID) or its time is up, then the chain's next step takes it.
        """
        serial = self.config.parallel_shutdown <= 1
        width = 1 if serial else self.config.parallel_shutdown
        started = self.clock.now()
        timeout = self.config.shutdown_timeout
        uri_deadline = started + self._remaining()
        if not serial and timeout > 0:
            uri_deadline = min(uri_deadline, started + timeout)
        next_progress = started + PROGRESS_EVERY
        last_request = started
        failing_since: Optional[float] = None
        expired = False
        while flight.queue or flight.waiting:
            if flight.queue and len(flight.waiting) < width and not self.cancelled \
                    and self.virsh.wedged(uri) is None:
                self._admit(uri, flight, width, serial, uri_deadline)
                last_request = self.clock.now()
            if self.cancelled:
                for step in flight.queue:
                    self._interrupted(uri, step)
                flight.queue.clear()
            if self.virsh.wedged(uri) is not None:
                self._give_up_waiting(uri, flight)
                return
            if not flight.waiting:
                continue
            now = self.clock.now()
            first_due = min(w.due for w in flight.waiting.values())
            rang = bell.wait(self.clock, poll_interval(now - last_request), first_due - now)
            bell.rung.clear()
            active = self._check_active(uri, flight, first_failure=failing_since is None)
            if active is None:
                failing_since = failing_since if failing_since is not None \
                    else self.clock.now()
            else:
                failing_since = None
            now = self.clock.now()
            if active is not None:
                stopped = [uuid for uuid in flight.waiting if uuid not in active]
                if rang and stopped:
                    bell.proven = True
                for uuid in stopped:
                    waited = flight.waiting.pop(uuid)
                    self.report.say(f"Shutdown of guest {waited.step.guest.name} complete.")
                    self.report.step(self._outcome(uri, waited.step), SHUTDOWN, Res.SHUT_OFF,
                                     now - waited.since)
                    self.checkpoint()
            if self.cancelled and flight.waiting:
                for waited in flight.waiting.values():
                    self.report.step(self._outcome(uri, waited.step), SHUTDOWN,
                                     Res.INTERRUPTED, now - waited.since,
                                     "stop requested while waiting")
                flight.waiting.clear()
                self.checkpoint()
                continue
            if self.virsh.wedged(uri) is not None:
                self._give_up_waiting(uri, flight)
                return
            if not serial and now >= uri_deadline and not expired \
                    and (flight.waiting or flight.queue):
                expired = True
                self.report.say("Timeout expired while shutting down domains")
                self._fail()
                # Unlike the reference, guests still queued get a shutdown request too
                # (PARALLEL_SHUTDOWN requests at a time, like the others).
                self._admit(uri, flight, len(flight.waiting) + len(flight.queue), serial,
                            uri_deadline, due=now)
            if failing_since is not None and now - failing_since >= max(
                    CHECKS_FAILING_LIMIT, 3.0 * self.config.query_timeout):
                self._checks_keep_failing(uri, flight, now - failing_since)
            for uuid in [u for u, w in flight.waiting.items() if now >= w.due]:
                waited = flight.waiting.pop(uuid)
                if serial:
                    self.report.say(f"Shutdown of guest {waited.step.guest.name} failed to "
                                    "complete in time.")
                self.report.step(self._outcome(uri, waited.step), SHUTDOWN, Res.TIMED_OUT,
                                 now - waited.since)
                flight.failed.append(waited.step)
                self.checkpoint()
            if serial:
                for waited in flight.waiting.values():
                    if now >= waited.next_progress:
                        waited.next_progress += PROGRESS_EVERY
                        self.report.say(_waiting(f"guest {waited.step.guest.name}",
                                                 waited.due - now))
            elif now >= next_progress and (flight.waiting or flight.queue):
                next_progress += PROGRESS_EVERY
                self.report.say(_waiting(f"{len(flight.waiting) + len(flight.queue)} guests",
                                         uri_deadline - now))

    def _check_active(self, uri: str, flight: _Flight, *,
                      first_failure: bool) -> Optional[set[str]]:
        """The UUIDs active on *uri*, or None when the check failed (it is retried).

        Even a bug here only fails the check: the guests stay followed until
        their timeout, and the chain goes on.
        """
        try:
            return query.active_uuids(self.virsh, uri, self.config)
        except (VirshError, Interrupted) as err:
            if first_failure and self.virsh.wedged(uri) is None:
                self.report.warn(f"cannot check which guests on {uri} are still running "
                                 f"({err}); still waiting for {len(flight.waiting)} "
                                 "guest(s), checking again")
        except Exception as exc:
            if first_failure:
                self.internal_error(f"checking which guests on {uri} are still running", exc)
        return None

    def _admit(self, uri: str, flight: _Flight, width: int, serial: bool, uri_deadline: float,
               *, due: Optional[float] = None) -> None:
        """Send the next guests their shutdown requests, up to *width* in flight."""
        count = min(width - len(flight.waiting), len(flight.queue))
        if count <= 0:
            return
        flight.sending = [flight.queue.popleft() for _ in range(count)]
        share = self._remaining() / (len(flight.queue) + count)
        sent = self._request_shutdowns(uri, flight.sending)
        now = self.clock.now()
        for step, ok in zip(flight.sending, sent):
            if isinstance(ok, _Refused):
                flight.refused.append(ok)
                continue
            if not ok:
                continue
            own = now + step.timeout if step.timeout > 0 else math.inf
            limit = min(own, now + share) if serial else min(own, uri_deadline)
            flight.waiting[step.guest.uuid] = _Waiting(
                step, now, limit if due is None else due, now + PROGRESS_EVERY)
        flight.sending = []

    def _give_up_waiting(self, uri: str, flight: _Flight) -> None:
        """The URI stopped answering: no check can succeed there, stop waiting at once."""
        for step in flight.unsettled():
            self._give_up(uri, step, SHUTDOWN)
        flight.waiting.clear()
        flight.queue.clear()

    def _checks_keep_failing(self, uri: str, flight: _Flight, seconds: float) -> None:
        """Waiting forever on guests we cannot see would hang the host's shutdown."""
        for uuid in [u for u, w in flight.waiting.items() if math.isinf(w.due)]:
            waited = flight.waiting.pop(uuid)
            step = waited.step
            self._fail()
            trying, _ = self._escalating(uri, step, SHUTDOWN)
            self.report.error(f"cannot tell whether guest {step.guest.name} on {uri} shut "
                              f"down: its status checks failed for {round(seconds)}s"
                              f"{trying}")
            self.report.step(self._outcome(uri, step), SHUTDOWN, Res.FAILED,
                             self.clock.now() - waited.since, "status checks kept failing")
            flight.failed.append(step)
            self.checkpoint()

    # poweroff --------------------------------------------------------------

    def _poweroff_all(self, uri: str, steps: Sequence[GuestStop]) -> list[GuestStop]:
        return self._each_guest(uri, steps, POWEROFF, self._poweroff)

    def _poweroff(self, uri: str, step: GuestStop) -> bool:
        """virsh destroy, unless another job is saving the guest; never escalates."""
        if self.cancelled:
            self._interrupted(uri, step)
            return False
        if self.virsh.wedged(uri) is not None:
            self._give_up(uri, step, POWEROFF)
            return False
        started = self.clock.now()
        budget = min(float(self.config.save_timeout), self._remaining())
        other = self._other_save(uri, step, started + budget)
        if other != OtherSave.NONE:
            return self._after_other_save(uri, step, POWEROFF, other, started)
        outcome = self._outcome(uri, step)
        try:
            self.virsh.run(uri, commands.destroy(step.guest.uuid),
                           timeout=self._request_timeout(POWEROFF), ignore_interrupt=True)
        except VirshError as err:
            if err.wedged:
                self._give_up(uri, step, POWEROFF)
                return False
            self._fail()
            self.report.error(f"powering off guest {step.guest.name} failed: {err.detail}")
            self.report.step(outcome, POWEROFF, Res.FAILED, 0.0, err.detail)
        else:
            self.report.say(f"Powering off guest {step.guest.name}: done")
            self.report.step(outcome, POWEROFF, Res.POWERED_OFF, self.clock.now() - started)
        self.checkpoint()
        return False

    # -- start ----------------------------------------------------------------

    def start(self, plan: StartPlan) -> int:
        self._run_concurrently([(f"starting the guests on {item.uri}",
                                 functools.partial(self._start_uri, item))
                                for item in plan.uris])
        return self.status

    def _start_uri(self, item: UriStart) -> None:
        try:
            self._start_guests(item)
        finally:
            self._report_given_up_start(item)

    def _report_given_up_start(self, item: UriStart) -> None:
        why = self.virsh.wedged(item.uri)
        if why is None:
            return
        self._fail()
        settled = self.settled.get(item.uri, set())
        left = [g.name for g in item.guests if g.uuid not in settled]
        if left:
            self.report.error(f"gave up on {item.uri}: a call there timed out ({why}); not "
                              f"resumed, kept for the next start: {', '.join(left)}")

    def _start_guests(self, item: UriStart) -> None:
        order = sorted(item.guests, key=lambda g: g.group)  # stable: list order within a group
        tried: dict[str, _Attempt] = {}
        if item.probe and not self.cancelled:
            lead = next((g for g in order if g.start), None)
            if lead is not None:
                attempt = self._attempt(item.uri, lead, first=True)
                if attempt.refusal == "unreachable":
                    self._fail()
                    self.report.cannot_resume_uri(item.uri, attempt.detail,
                                                  [g.uuid for g in item.guests])
                    return
                tried[lead.uuid] = attempt
        self.report.say(f"Resuming guests on {item.uri} URI...")

        def start_one(guest: GuestStart) -> Job[bool]:
            return self._for_guest(
                item.uri, guest.name, guest.uuid, START,
                functools.partial(self._start_guest, item.uri, guest, tried.get(guest.uuid)),
                False)

        first = True
        for group in sorted({g.group for g in order}):
            members = [g for g in order if g.group == group]
            parallel = (self.config.start_delay == 0 and self.config.parallel_start > 1
                        and all(g.delay_after is None for g in members))
            if parallel:
                run_all([start_one(guest) for guest in members], self.config.parallel_start)
                continue
            for guest in members:
                if guest.start and not first and not self.cancelled \
                        and guest.uuid not in tried and self.virsh.wedged(item.uri) is None:
                    delay = self.config.start_delay
                    if delay:
                        self.clock.sleep(delay)
                [started] = run_all([start_one(guest)], 1)
                if started:
                    first = False
                    if guest.delay_after and self.virsh.wedged(item.uri) is None:
                        self.clock.sleep(guest.delay_after)

    def _attempt(self, uri: str, guest: GuestStart, *, first: bool = False) -> _Attempt:
        """One ``virsh start``.  The *first* on a URI that was not listed doubles as its
        connection check, retried like a listing while libvirtd may still be starting."""
        began = self.clock.now()
        try:
            result = query.run_with_retries(
                self.virsh, uri, commands.start(guest.uuid, self.config), self.config,
                self.clock,
                timeout=self.config.save_timeout,
                retry_if=lambda err: first
                and virshout.start_refusal(err.stderr) == "unreachable")
        except VirshError as err:
            return _Attempt(self.clock.now() - began, error=err)
        return _Attempt(self.clock.now() - began, name=virshout.started_name(result.stdout))

    def _start_step(self, uri: str, outcome: Outcome, result: str, seconds: float,
                    detail: str = "") -> None:
        """Record a start step; a definite outcome (``plan.SETTLED``) ends the record."""
        self.report.step(outcome, START, result, seconds, detail)
        if result in SETTLED:
            with self._lock:
                self.settled.setdefault(uri, set()).add(outcome.uuid)

    def _start_guest(self, uri: str, guest: GuestStart,
                     attempt: Optional[_Attempt] = None) -> bool:
        """Start (resume) one guest; True if a start was issued and succeeded."""
        outcome = self.report.outcome(uri, guest.uuid, guest.name)
        issued = False
        if not guest.start:
            if guest.reason == Res.ALREADY_ACTIVE \
                    and self._kept_while_saved(uri, guest.uuid, guest.name, outcome, 0.0):
                return False
            self.report.say(f"Resuming guest {guest.name}: {guest.reason}")
            self._start_step(uri, outcome, guest.reason, 0.0)
        elif self.cancelled and attempt is None:
            self._start_step(uri, outcome, Res.INTERRUPTED, 0.0,
                             "stop requested before this guest was started")
        else:
            if attempt is None and self.virsh.wedged(uri) is None:
                attempt = self._attempt(uri, guest)
            if attempt is None or (attempt.error is not None and attempt.error.wedged):
                self._start_step(uri, outcome, Res.GIVEN_UP, 0.0,
                                 f"{uri} is not answering: {self.virsh.wedged(uri)}")
                self.checkpoint()
                return False
            name = attempt.name or guest.name
            if attempt.refusal == "already active" \
                    and self._kept_while_saved(uri, guest.uuid, name, outcome, attempt.seconds):
                return False
            if attempt.refusal == "already active":
                self.report.say(f"Resuming guest {name}: already active")
                self._start_step(uri, outcome, Res.ALREADY_ACTIVE, attempt.seconds)
            elif attempt.refusal == "missing":
                self._fail()
                self.report.gone(uri, guest.uuid)
                self._start_step(uri, outcome, Res.GONE, attempt.seconds, attempt.detail)
                self.checkpoint()
                return False
            elif attempt.error is not None:
                self._fail()
                self.report.say(f"Resuming guest {name}: failed")
                self.report.error(f"starting guest {name} failed: {attempt.detail}; "
                                  "it stays recorded for the next start")
                self._start_step(uri, outcome, Res.FAILED, attempt.seconds, attempt.detail)
                self.checkpoint()
                return False
            else:
                issued = True
                outcome.name = name
                self.report.say(f"Resuming guest {name}: done")
                self._start_step(uri, outcome, Res.RESUMED, attempt.seconds)
        if self.config.sync_time and guest.reason != Res.SKIPPED_BY_POLICY \
                and not self.cancelled and self.virsh.wedged(uri) is None:
            self._sync_time(uri, guest)
        self.checkpoint()
        return issued

    def _kept_while_saved(self, uri: str, uuid: str, name: str, outcome: Outcome,
                          seconds: float) -> bool:
        """An active guest that another job is saving is not "already active": once
        that save ends it is shut off with an image, so its record stays (True)."""
        _state, saving = self._saving(uri, uuid)
        if saving is None:
            return False
        self.report.say(f"Resuming guest {name}: a save by another job is in progress")
        self.report.warn(f"guest {name} on {uri} is being saved by another job ({saving}); "
                         "not resumed, kept for the next start")
        self._start_step(uri, outcome, Res.SAVE_IN_PROGRESS, seconds,
                         f"being saved by another job ({saving})")
        self.checkpoint()
        return True

    def _sync_time(self, uri: str, guest: GuestStart) -> None:
        try:
            self.virsh.run(uri, commands.sync_time(guest.uuid),
                           timeout=self.config.query_timeout, ignore_interrupt=True)
        except VirshError as err:
            self.report.warn(f"could not sync the time of guest {guest.name}: {err.detail}")


@dataclass(frozen=True)
class _Attempt:
    """One ``virsh start``: its time, and either the name virsh printed or the error."""

    seconds: float
    name: Optional[str] = None
    error: Optional[VirshError] = None

    @property
    def refusal(self) -> Optional[str]:
        return virshout.start_refusal(self.error.stderr) if self.error else None

    @property
    def timed_out(self) -> bool:
        return self.error is not None and self.error.timed_out

    @property
    def detail(self) -> str:
        return self.error.detail if self.error else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _waiting(who: str, left: float) -> str:
    """The reference's progress line, with or without a countdown."""
    if math.isinf(left):
        return f"Waiting for {who} to shut down"
    return f"Waiting for {who} to shut down, {max(round(left), 0)} seconds left"


def _next_action(step: GuestStop, after: str) -> Optional[str]:
    actions = step.actions
    if after not in actions:
        return None
    index = actions.index(after)
    return actions[index + 1] if index + 1 < len(actions) else None
