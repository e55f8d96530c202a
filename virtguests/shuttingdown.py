"""The shutdown stage: ``virsh shutdown`` requests, and one loop that waits for them.

The same loop serves both modes; serial (PARALLEL_SHUTDOWN <= 1, the
reference's default) is the parallel wait with one guest in flight, each with
its own timeout, and the reference's per-guest words.  Waiting asks virsh once
per URI per tick which guests are still active, instead of once per guest;
lifecycle events (``doorbell``) only make that check come sooner.  A guest whose
request failed is asked about after the wait: a save in progress (``othersave``)
is waited for and never escalated.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

from virtguests import commands, query
from virtguests.clock import Uncancelled
from virtguests.concurrently import run_all
from virtguests.doorbell import POLL, Doorbell
from virtguests.execution import PROGRESS_EVERY, Execution, one_line
from virtguests.model import Action, Outcome
from virtguests.othersave import OtherSave, after_other_save, other_save
from virtguests.output import WARNING
from virtguests.plan import GuestStop
from virtguests.virsh import Interrupted, VirshError

SLOW_POLL = 1.0
"""Long waits (a guest that ignores ACPI) back off to this, to spare libvirtd."""

CHECKS_FAILING_LIMIT = 60.0
"""With no shutdown timeout (0 = wait forever), status checks that keep failing this
long (at least 3 QUERY_TIMEOUTs) end the wait and the chain goes on: a dead libvirtd
must not hold up the host's shutdown forever."""

QUICK_CALL = 1.0
"""Seconds a request usually takes at most (real time, even under a virtual clock)."""


def poll_interval(waited: float) -> float:
    """Fast checks while shutdowns are fresh (most finish in seconds), slower later."""
    if waited <= 2:
        return POLL
    if waited <= 5:
        return 2 * POLL
    return min(SLOW_POLL, 2 * POLL + (waited - 5) / 50)


@dataclass(frozen=True)
class _Refused:
    """A shutdown request that failed: asked about (another job's save?) after the wait."""

    planned: GuestStop
    error: VirshError
    at: float
    until: float
    """How long a save in progress is waited for (SAVE_TIMEOUT, STOP_DEADLINE)."""


@dataclass
class _Waiting:
    """A guest asked to shut down, with the time its wait ends."""

    planned: GuestStop
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
        return [*self.sending, *(w.planned for w in self.waiting.values()), *self.queue]


def shutdown_all(run: Execution, uri: str, stops: Sequence[GuestStop]) -> list[GuestStop]:
    """Shut the guests down and wait for them; the ones the chain's next step takes."""
    flight = _Flight(deque(stops))
    bell = Doorbell(run.virsh, uri)
    try:
        _Shutdowns(run, uri, flight, bell).wait()
    except Exception as exc:
        run.internal_error(f"waiting for the shutdowns on {uri}", exc)
        for planned in flight.unsettled():
            run.run_report.step(run.result(uri, planned), Action.SHUTDOWN,
                                Outcome.INTERNAL_ERROR, 0.0, one_line(exc))
        run.checkpoint()
    finally:
        bell.close()
    if not flight.refused:
        return flight.failed
    refused = {r.planned.guest.uuid: r for r in flight.refused}
    escalate = run_all([run.for_guest(uri, planned.guest.name, planned.guest.uuid, Action.SHUTDOWN,
                                      functools.partial(_after_refusal, run, uri,
                                                        refused[planned.guest.uuid]), False)
                        for planned in (r.planned for r in flight.refused)],
                       run.config.parallel_shutdown)
    return flight.failed + [r.planned for r, again in zip(flight.refused, escalate) if again]


def _after_refusal(run: Execution, uri: str, refused: _Refused) -> bool:
    """A failed shutdown request: a save in progress (another job's, holding the
    guest's lock) is waited for and never escalated; True: the chain goes on."""
    planned, err = refused.planned, refused.error
    if run.given_up(uri) is None:
        other = other_save(run, uri, planned, refused.until, failure=err)
        if other != OtherSave.NONE:
            return after_other_save(run, uri, planned, Action.SHUTDOWN, other, refused.at)
    return run.failed_step(uri, planned, Action.SHUTDOWN, f"shutdown of guest {planned.guest.name}",
                           err, 0.0)


class _Shutdowns:
    """Shutdown requests on one URI and the wait for them."""

    def __init__(self, run: Execution, uri: str, flight: _Flight, bell: Doorbell) -> None:
        self.run = run
        self.uri = uri
        self.flight = flight
        self.bell = bell
        self.serial = run.config.parallel_shutdown <= 1
        self.width = 1 if self.serial else run.config.parallel_shutdown
        self.carried = run.cancelled and not any(run.cancelled_for(uri, planned)
                                                 for planned in flight.queue)
        """Only guests whose migration a stop request aborted: their shutdowns go on
        (``migrating``)."""

    def _cancelled(self) -> bool:
        return self.run.cancelled and not self.carried

    def wait(self) -> None:
        """Request shutdowns and wait for them: one loop for both modes.

        Serial: one guest at a time, each with its own timeout (its share of
        STOP_DEADLINE at most).  Parallel: up to PARALLEL_SHUTDOWN guests in flight,
        SHUTDOWN_TIMEOUT for the whole URI, and the guests still queued when it
        expires get a request too.  A failed check is retried: a guest is followed
        until it is seen stopped (by UUID) or its time is up, then the chain's next
        step takes it.
        """
        run, uri, flight, bell, serial = self.run, self.uri, self.flight, self.bell, self.serial
        clock = Uncancelled(run.clock) if self.carried else run.clock
        started = clock.now()
        timeout = run.config.shutdown_timeout
        uri_deadline = started + run.remaining()
        if not serial and timeout > 0:
            uri_deadline = min(uri_deadline, started + timeout)
        next_progress = started + PROGRESS_EVERY
        last_request = started
        failing_since: Optional[float] = None
        expired = False
        while flight.queue or flight.waiting:
            if flight.queue and len(flight.waiting) < self.width and not self._cancelled() \
                    and run.given_up(uri) is None:
                self._admit(self.width, uri_deadline)
                last_request = clock.now()
            if self._cancelled():
                for planned in flight.queue:
                    run.interrupted(uri, planned)
                flight.queue.clear()
            if run.given_up(uri) is not None:
                self._give_up_waiting()
                return
            if not flight.waiting:
                continue
            now = clock.now()
            first_due = min(w.due for w in flight.waiting.values())
            rang = bell.wait(clock, poll_interval(now - last_request), first_due - now)
            bell.rung.clear()
            active = self._check_active(first_failure=failing_since is None)
            if active is None:
                failing_since = failing_since if failing_since is not None else clock.now()
            else:
                failing_since = None
            now = clock.now()
            if active is not None:
                stopped = [uuid for uuid in flight.waiting if uuid not in active]
                if rang and stopped:
                    bell.proven = True
                for uuid in stopped:
                    waited = flight.waiting.pop(uuid)
                    run.messages.say(f"Shutdown of guest {waited.planned.guest.name} complete.")
                    run.run_report.step(run.result(uri, waited.planned), Action.SHUTDOWN,
                                        Outcome.SHUT_OFF, now - waited.since)
                    run.checkpoint()
            if self._cancelled() and flight.waiting:
                for waited in flight.waiting.values():
                    run.run_report.step(run.result(uri, waited.planned), Action.SHUTDOWN,
                                        Outcome.INTERRUPTED, now - waited.since,
                                        "stop requested while waiting")
                flight.waiting.clear()
                run.checkpoint()
                continue
            if run.given_up(uri) is not None:
                self._give_up_waiting()
                return
            if not serial and now >= uri_deadline and not expired \
                    and (flight.waiting or flight.queue):
                expired = True
                run.messages.say("Timeout expired while shutting down domains", WARNING)
                run.fail()
                # Unlike the reference, guests still queued get a shutdown request too
                # (PARALLEL_SHUTDOWN requests at a time, like the others).
                self._admit(len(flight.waiting) + len(flight.queue), uri_deadline, due=now)
            if failing_since is not None and now - failing_since >= max(
                    CHECKS_FAILING_LIMIT, 3.0 * run.config.query_timeout):
                self._checks_keep_failing(now - failing_since)
            for uuid in [u for u, w in flight.waiting.items() if now >= w.due]:
                waited = flight.waiting.pop(uuid)
                if serial:
                    run.messages.say(f"Shutdown of guest {waited.planned.guest.name} failed to "
                                     "complete in time.", WARNING)
                run.run_report.step(run.result(uri, waited.planned), Action.SHUTDOWN,
                                    Outcome.TIMED_OUT, now - waited.since)
                flight.failed.append(waited.planned)
                run.checkpoint()
            if serial:
                for waited in flight.waiting.values():
                    if now >= waited.next_progress:
                        waited.next_progress += PROGRESS_EVERY
                        run.messages.say(_waiting(f"guest {waited.planned.guest.name}",
                                                  waited.due - now))
            elif now >= next_progress and (flight.waiting or flight.queue):
                next_progress += PROGRESS_EVERY
                run.messages.say(_waiting(f"{len(flight.waiting) + len(flight.queue)} guests",
                                          uri_deadline - now))

    def _check_active(self, *, first_failure: bool) -> Optional[set[str]]:
        """The UUIDs active on the URI, or None when the check failed (it is retried).

        Even a bug here only fails the check: the guests stay followed until
        their timeout, and the chain goes on.
        """
        run, uri = self.run, self.uri
        try:
            return query.active_uuids(run.virsh, uri, run.config)
        except (VirshError, Interrupted) as err:
            if first_failure and run.given_up(uri) is None:
                run.messages.warn(f"cannot check which guests on {uri} are still running "
                                  f"({err}); still waiting for {len(self.flight.waiting)} "
                                  "guest(s), checking again")
        except Exception as exc:
            if first_failure:
                run.internal_error(f"checking which guests on {uri} are still running", exc)
        return None

    def _admit(self, width: int, uri_deadline: float, *, due: Optional[float] = None) -> None:
        """Send the next guests their shutdown requests, up to *width* in flight."""
        run, flight = self.run, self.flight
        count = min(width - len(flight.waiting), len(flight.queue))
        if count <= 0:
            return
        flight.sending = [flight.queue.popleft() for _ in range(count)]
        share = run.remaining() / (len(flight.queue) + count)
        sent = self._request_shutdowns(flight.sending)
        now = run.clock.now()
        for planned, ok in zip(flight.sending, sent):
            if isinstance(ok, _Refused):
                flight.refused.append(ok)
                continue
            if not ok:
                continue
            own = now + planned.timeout if planned.timeout > 0 else math.inf
            limit = min(own, now + share) if self.serial else min(own, uri_deadline)
            flight.waiting[planned.guest.uuid] = _Waiting(
                planned, now, limit if due is None else due, now + PROGRESS_EVERY)
        flight.sending = []

    def _request_shutdowns(self, stops: Sequence[GuestStop]
                           ) -> list[Optional[Union[bool, _Refused]]]:
        """Announce, then send shutdown requests, PARALLEL_SHUTDOWN at a time at most
        (each is one virsh call, in a worker thread)."""
        run, uri = self.run, self.uri
        for planned in stops:
            run.messages.say(f"Starting shutdown on guest: {planned.guest.name}")
        return run_all([run.for_guest(uri, planned.guest.name, planned.guest.uuid, Action.SHUTDOWN,
                                      functools.partial(self._send_shutdown, planned), None)
                        for planned in stops],
                       max(1, run.config.parallel_shutdown), waiting=self._through_clock)

    def _through_clock(self, done: threading.Event) -> None:
        """Wait for the requests: a call that takes longer than QUICK_CALL (virsh waiting
        for a guest's lock, say) is waited for through the Clock, so that a virtual
        clock lets time pass for it too; each virsh call has its own timeout."""
        if not done.wait(QUICK_CALL):
            while not self.run.clock.wait(done, PROGRESS_EVERY):
                pass

    def _send_shutdown(self, planned: GuestStop) -> Optional[Union[bool, _Refused]]:
        """One shutdown request: True sent; a _Refused if it failed; None if nothing
        more is done (the URI was given up)."""
        run = self.run
        err = run.request(self.uri, planned, Action.SHUTDOWN,
                          commands.shutdown(planned.guest.uuid))
        if err is None:
            return True
        if err.given_up:
            return None
        now = run.clock.now()
        return _Refused(planned, err, now,
                        now + min(float(run.config.save_timeout), run.remaining()))

    def _give_up_waiting(self) -> None:
        """The URI stopped answering: no check can succeed there, stop waiting at once."""
        for planned in self.flight.unsettled():
            self.run.give_up(self.uri, planned, Action.SHUTDOWN)
        self.flight.waiting.clear()
        self.flight.queue.clear()

    def _checks_keep_failing(self, seconds: float) -> None:
        """Waiting forever on guests we cannot see would hang the host's shutdown."""
        run, uri, flight = self.run, self.uri, self.flight
        for uuid in [u for u, w in flight.waiting.items() if math.isinf(w.due)]:
            waited = flight.waiting.pop(uuid)
            planned = waited.planned
            run.fail()
            trying, _ = run.escalating(uri, planned, Action.SHUTDOWN)
            run.messages.error(f"cannot tell whether guest {planned.guest.name} on {uri} shut "
                               f"down: its status checks failed for {round(seconds)}s"
                               f"{trying}")
            run.run_report.step(run.result(uri, planned), Action.SHUTDOWN, Outcome.FAILED,
                                run.clock.now() - waited.since, "status checks kept failing")
            flight.failed.append(planned)
            run.checkpoint()


def _waiting(who: str, left: float) -> str:
    """The reference's progress line, with or without a countdown."""
    if math.isinf(left):
        return f"Waiting for {who} to shut down"
    return f"Waiting for {who} to shut down, {max(round(left), 0)} seconds left"
