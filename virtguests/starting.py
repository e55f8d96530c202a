"""Start: resume the recorded guests, each URI in its own thread, group after group.

Within a group guests start one after the other (START_DELAY, a guest's own
delay), or PARALLEL_START at a time when nothing asks for a delay.  On a URI
that was not listed, the first ``virsh start`` doubles as its connection check.
Only a definite outcome (``model.SETTLED``) ends a guest's record
(``Starting.settled``); every other guest stays recorded for the next start.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from virtguests import commands, query, virshout
from virtguests.concurrently import Job, run_all
from virtguests.execution import Execution
from virtguests.model import SETTLED, Action, Outcome
from virtguests.othersave import saving
from virtguests.output import WARNING
from virtguests.plan import GuestStart, StartPlan, UriStart
from virtguests.runreport import GuestResult
from virtguests.virsh import VirshError
from virtguests.virshout import StartRefusal


@dataclass(frozen=True)
class _Attempt:
    """One ``virsh start``: its time, and either the name virsh printed or the error."""

    seconds: float
    name: Optional[str] = None
    error: Optional[VirshError] = None

    @property
    def refusal(self) -> Optional[StartRefusal]:
        return virshout.start_refusal(self.error.stderr) if self.error else None

    @property
    def timed_out(self) -> bool:
        return self.error is not None and self.error.timed_out

    @property
    def detail(self) -> str:
        return self.error.detail if self.error else ""


class Starting:
    """One start run: its URIs' threads share the guests settled so far."""

    def __init__(self, run: Execution) -> None:
        self.run = run
        self._settled: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def start(self, plan: StartPlan) -> None:
        """Start the plan's guests, the URIs side by side."""
        jobs = [self.run.guarded(f"starting the guests on {item.uri}",
                                 functools.partial(self._uri, item))
                for item in plan.uris]
        run_all(jobs, len(jobs))

    def settled(self) -> Mapping[str, frozenset[str]]:
        """The UUIDs per URI with a definite outcome so far (``model.SETTLED``)."""
        with self._lock:
            return {uri: frozenset(ids) for uri, ids in self._settled.items()}

    def _uri(self, item: UriStart) -> None:
        try:
            self._guests(item)
        finally:
            self._name_given_up(item)

    def _name_given_up(self, item: UriStart) -> None:
        run = self.run
        why = run.given_up(item.uri)
        if why is None:
            return
        run.fail()
        settled = self.settled().get(item.uri, frozenset())
        left = [g.name for g in item.guests if g.uuid not in settled]
        if left:
            run.messages.error(f"gave up on {item.uri}: a call there timed out ({why}); not "
                               f"resumed, kept for the next start: {', '.join(left)}")

    def _guests(self, item: UriStart) -> None:
        run = self.run
        ordered = sorted(item.guests, key=lambda g: g.order)  # stable: list order per order
        tried: dict[str, _Attempt] = {}
        if item.probe and not run.cancelled:
            lead = next((g for g in ordered if g.decided is None), None)
            if lead is not None:
                attempt = self._attempt(item.uri, lead, first=True)
                if attempt.refusal == StartRefusal.UNREACHABLE:
                    run.fail()
                    run.messages.cannot_resume_uri(item.uri, attempt.detail,
                                                   [g.uuid for g in item.guests])
                    return
                tried[lead.uuid] = attempt
        run.messages.say(f"Resuming guests on {item.uri} URI...")

        def start_one(guest: GuestStart) -> Job[bool]:
            return run.for_guest(
                item.uri, guest.name, guest.uuid, Action.START,
                functools.partial(self._guest, item.uri, guest, tried.get(guest.uuid)),
                False)

        first = True
        for group in sorted({g.order for g in ordered}):
            members = [g for g in ordered if g.order == group]
            parallel = (run.config.start_delay == 0 and run.config.parallel_start > 1
                        and all(g.delay_after is None for g in members))
            if parallel:
                run_all([start_one(guest) for guest in members], run.config.parallel_start)
                continue
            for guest in members:
                if guest.decided is None and not first and not run.cancelled \
                        and guest.uuid not in tried and run.given_up(item.uri) is None:
                    delay = run.config.start_delay
                    if delay:
                        run.clock.sleep(delay)
                [started] = run_all([start_one(guest)], 1)
                if started:
                    first = False
                    if guest.delay_after and run.given_up(item.uri) is None:
                        run.clock.sleep(guest.delay_after)

    def _attempt(self, uri: str, guest: GuestStart, *, first: bool = False) -> _Attempt:
        """One ``virsh start``.  The *first* on a URI that was not listed doubles as its
        connection check, retried like a listing while libvirtd may still be starting."""
        run = self.run
        began = run.clock.now()
        try:
            result = query.run_with_retries(
                run.virsh, uri, commands.start(guest.uuid, run.config), run.config,
                run.clock,
                timeout=run.config.save_timeout,
                retry_if=lambda err: first
                and virshout.start_refusal(err.stderr) == StartRefusal.UNREACHABLE)
        except VirshError as err:
            return _Attempt(run.clock.now() - began, error=err)
        return _Attempt(run.clock.now() - began, name=virshout.started_name(result.stdout))

    def _step(self, uri: str, outcome: GuestResult, result: Outcome, seconds: float,
              detail: str = "") -> None:
        """Record a start step; a definite outcome (``model.SETTLED``) ends the record."""
        self.run.run_report.step(outcome, Action.START, result, seconds, detail)
        if result in SETTLED:
            with self._lock:
                self._settled.setdefault(uri, set()).add(outcome.uuid)

    def _guest(self, uri: str, guest: GuestStart, attempt: Optional[_Attempt] = None) -> bool:
        """Start (resume) one guest; True if a start was issued and succeeded."""
        run = self.run
        outcome = run.run_report.guest(uri, guest.uuid, guest.name)
        issued = False
        if guest.decided is not None:
            if guest.decided == Outcome.ALREADY_ACTIVE \
                    and self._kept_while_saved(uri, guest.uuid, guest.name, outcome, 0.0):
                return False
            run.messages.say(f"Resuming guest {guest.name}: {guest.decided}")
            self._step(uri, outcome, guest.decided, 0.0)
        elif run.cancelled and attempt is None:
            self._step(uri, outcome, Outcome.INTERRUPTED, 0.0,
                       "stop requested before this guest was started")
        else:
            if attempt is None and run.given_up(uri) is None:
                attempt = self._attempt(uri, guest)
            if attempt is None or (attempt.error is not None and attempt.error.given_up):
                self._step(uri, outcome, Outcome.GIVEN_UP, 0.0,
                           f"{uri} is not answering: {run.given_up(uri)}")
                run.checkpoint()
                return False
            name = attempt.name or guest.name
            if attempt.refusal == StartRefusal.ALREADY_ACTIVE \
                    and self._kept_while_saved(uri, guest.uuid, name, outcome, attempt.seconds):
                return False
            if attempt.refusal == StartRefusal.ALREADY_ACTIVE:
                run.messages.say(f"Resuming guest {name}: already active")
                self._step(uri, outcome, Outcome.ALREADY_ACTIVE, attempt.seconds)
            elif attempt.refusal == StartRefusal.GONE:
                run.fail()
                run.messages.gone(uri, guest.uuid)
                self._step(uri, outcome, Outcome.GONE, attempt.seconds, attempt.detail)
                run.checkpoint()
                return False
            elif attempt.error is not None:
                run.fail()
                run.messages.say(f"Resuming guest {name}: failed", WARNING)
                run.messages.error(f"starting guest {name} failed: {attempt.detail}; "
                                   "it stays recorded for the next start")
                self._step(uri, outcome, Outcome.FAILED, attempt.seconds, attempt.detail)
                run.checkpoint()
                return False
            else:
                issued = True
                outcome.name = name
                run.messages.say(f"Resuming guest {name}: done")
                self._step(uri, outcome, Outcome.RESUMED, attempt.seconds)
        if run.config.sync_time and guest.decided != Outcome.SKIPPED_BY_POLICY \
                and not run.cancelled and run.given_up(uri) is None:
            self._sync_time(uri, guest)
        run.checkpoint()
        return issued

    def _kept_while_saved(self, uri: str, uuid: str, name: str, outcome: GuestResult,
                          seconds: float) -> bool:
        """An active guest that another job is saving is not "already active": once
        that save ends it is shut off with an image, so its record stays (True)."""
        run = self.run
        _state, what = saving(run, uri, uuid)
        if what is None:
            return False
        run.messages.say(f"Resuming guest {name}: a save by another job is in progress")
        run.messages.warn(f"guest {name} on {uri} is being saved by another job ({what}); "
                          "not resumed, kept for the next start")
        self._step(uri, outcome, Outcome.SAVE_IN_PROGRESS, seconds,
                   f"being saved by another job ({what})")
        run.checkpoint()
        return True

    def _sync_time(self, uri: str, guest: GuestStart) -> None:
        run = self.run
        try:
            run.virsh.run(uri, commands.sync_time(guest.uuid),
                          timeout=run.config.query_timeout, ignore_interrupt=True)
        except VirshError as err:
            run.messages.warn(f"could not sync the time of guest {guest.name}: {err.detail}")
