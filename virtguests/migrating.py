"""The migrate stage: ``virsh migrate`` to the peer the plan chose, PARALLEL_MIGRATE
guests at a time per source URI.

Each migration runs in a worker thread while its guest's own thread prints
``Migrating NAME to PEER: 42%`` every PROGRESS_EVERY seconds (``virsh
domjobinfo``).  At MIGRATE_TIMEOUT (or STOP_DEADLINE, or a stop request) the
job is aborted with ``virsh domjobabort`` and the migrate call is waited for a
bounded time.  Whatever the call said, the guest is then looked for: gone from
home and running on the peer is a migration (it may have arrived although the
call failed); anything else goes on to the chain's next step.

A guest whose migration a stop request (SIGTERM/SIGINT) aborted is in flight,
not untouched: it goes on to the rest of its chain even after the request
(``Execution.carry_on``), so a host that is going down still saves or shuts it
down rather than leave it running unprotected.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from typing import Optional

from virtguests import commands, query
from virtguests.concurrently import Job, run_all
from virtguests.execution import PROGRESS_EVERY, Execution
from virtguests.model import Action, Departure, Outcome
from virtguests.plan import GuestStop
from virtguests.runreport import GuestResult
from virtguests.virsh import Interrupted, VirshError

log = logging.getLogger(__name__)

NOT_DEFINED = "error: failed to get domain "
"""virsh's answer about a guest not defined on the URI (fixtures/
qemu-domstate-migration-aborted-peer, qemu-domjobinfo-migrated-away)."""

ABORT_POLL = 1.0
"""How often (seconds) a migration's waiting thread looks for a stop request."""

# -- words (documented in virtguests(8), MESSAGES) -------------------------------------


def _progress(name: str, peer: str, said: str) -> str:
    return f"Migrating {name} to {peer}: {said}"


def _migrated(name: str, peer: str) -> str:
    return f"Migrated {name} to {peer}"


def _failed(name: str, peer: str, detail: str, trying: str) -> str:
    return f"Migration of {name} to {peer} failed: {detail}{trying}"


def _timed_out(seconds: float) -> str:
    return f"not done after {seconds:g}s (MIGRATE_TIMEOUT); aborted"


STOP_REQUESTED = "stop requested during the migration; aborted"
DEADLINE = "STOP_DEADLINE reached; aborted"
NO_TIME = "no time left before STOP_DEADLINE"
NO_TARGET = "no target"


# -- the stage --------------------------------------------------------------------------


def migrate_all(run: Execution, uri: str, stops: Sequence[GuestStop]) -> list[GuestStop]:
    """Migrate each guest to its target; the ones the chain's next step takes."""
    escalate = run_all([run.for_guest(uri, planned.guest.name, planned.guest.uuid,
                                      Action.MIGRATE,
                                      functools.partial(_migrate, run, uri, planned), False)
                        for planned in stops], run.config.parallel_migrate)
    return [planned for planned, again in zip(stops, escalate) if again]


def abort_grace(run: Execution) -> float:
    """How long a migrate call may go on after its budget: the abort request's own time
    limit, then as long again for the cancelled migration to end the call.  Past it the
    call is killed, and libvirt cancels a migration whose client went away."""
    return 2.0 * run.config.query_timeout


class _Watch:
    """What the waiting thread did to a migration: why it aborted it, if it did."""

    def __init__(self) -> None:
        self.aborted: Optional[str] = None
        self.stop_requested = False


def _migrate(run: Execution, uri: str, planned: GuestStop) -> bool:
    """Migrate one guest; True: go on with the chain."""
    name, uuid, peer = planned.guest.name, planned.guest.uuid, planned.target
    outcome = run.result(uri, planned)
    if peer is None:  # the planner drops migrate without a target; never guess one
        trying, escalate = run.escalating(uri, planned, Action.MIGRATE)
        run.run_report.step(outcome, Action.MIGRATE, Outcome.SKIPPED, 0.0,
                            planned.target_note or NO_TARGET)
        return escalate
    if run.held_back(uri, planned, Action.MIGRATE):
        return False
    budget = min(float(run.config.migrate_timeout), run.remaining())
    if budget <= 0:
        trying, escalate = run.escalating(uri, planned, Action.MIGRATE)
        run.messages.error(_failed(name, peer, NO_TIME, trying))
        run.run_report.step(outcome, Action.MIGRATE, Outcome.SKIPPED, 0.0, NO_TIME)
        run.checkpoint()
        return escalate
    run.messages.say(_progress(name, peer, "..."))
    started = run.clock.now()
    watch = _Watch()

    def migrate() -> Optional[VirshError]:
        try:
            run.virsh.run(uri, commands.migrate(uuid, peer, run.config.migrate_options),
                          timeout=budget + abort_grace(run), ignore_interrupt=True)
        except VirshError as err:
            return err
        return None

    def waiting(done: threading.Event) -> None:
        _wait(run, uri, planned, peer, started, budget, watch, done)

    [err] = run_all([Job(migrate)], 1, waiting=waiting)
    seconds = run.clock.now() - started
    if watch.stop_requested:
        run.carry_on(uri, planned)
    if err is not None and err.given_up:
        run.give_up(uri, planned, Action.MIGRATE)
        return False
    home, there = _where(run, uri, uuid, peer)
    if there and home is not True:
        # Arrived on the peer (running, or paused as it was: not "paused (migrating)"):
        # libvirt switched it over, even when home cannot be asked any more (its URI
        # given up meanwhile).
        detail = "" if err is None else f"arrived although the call failed: {err.detail}"
        return _arrived(run, uri, planned, peer, outcome, seconds, detail)
    if err is None and home is False:
        # It left home; we could not see it running on the peer: record it so that
        # start looks for it there, and say so.
        run.fail()
        run.messages.error(f"guest {name} left {uri} for {peer} but is not seen running "
                           "there; recorded as migrated")
        return _arrived(run, uri, planned, peer, outcome, seconds,
                        "left home; not seen running on the peer")
    if err is None:
        detail = ("the call succeeded but the guest is still active at home"
                  if home else "the call succeeded but where the guest is cannot be told")
    else:
        detail = err.detail
    if watch.aborted is not None:
        detail = watch.aborted if err is None else f"{watch.aborted}: {err.detail}"
    if home is None and err is not None and run.given_up(uri) is not None:
        run.give_up(uri, planned, Action.MIGRATE)
        return False
    trying, escalate = run.escalating(uri, planned, Action.MIGRATE)
    run.fail()
    run.messages.error(_failed(name, peer, detail, trying))
    result = Outcome.TIMED_OUT if watch.aborted is not None else Outcome.FAILED
    run.run_report.step(outcome, Action.MIGRATE, result, seconds, detail)
    run.checkpoint()
    return escalate


def _arrived(run: Execution, uri: str, planned: GuestStop, peer: str, outcome: GuestResult,
             seconds: float, detail: str) -> bool:
    """The guest runs on *peer* now: record it (before anything else), report it."""
    guest = planned.guest
    run.departed(Departure(guest.uuid, guest.name, uri, peer))
    run.messages.say(_migrated(guest.name, peer))
    run.run_report.step(outcome, Action.MIGRATE, Outcome.MIGRATED, seconds,
                        f"to {peer}" + (f"; {detail}" if detail else ""))
    run.checkpoint()
    return False


def _wait(run: Execution, uri: str, planned: GuestStop, peer: str, started: float,
          budget: float, watch: _Watch, done: threading.Event) -> None:
    """Progress lines until the migrate call ends; the abort at its time limit or at a
    stop request."""
    clock, name, uuid = run.clock, planned.guest.name, planned.guest.uuid
    next_progress = started + PROGRESS_EVERY
    expires = started + budget
    asking = True  # until a progress query times out (a hung QEMU): then "..."
    while True:
        now = clock.now()
        due = min(next_progress, expires) if watch.aborted is None else next_progress
        if clock.wait(done, min(max(due - now, 0.0), ABORT_POLL)):
            return
        now = clock.now()
        if watch.aborted is None and (run.cancelled or now >= expires):
            if run.cancelled:
                watch.stop_requested = True
                why = STOP_REQUESTED
            elif budget < run.config.migrate_timeout:
                why = DEADLINE
            else:
                why = _timed_out(budget)
            watch.aborted = why
            _abort(run, uri, uuid)
            continue
        if now >= next_progress:
            next_progress += PROGRESS_EVERY
            said = _percent(run, uri, uuid) if asking and watch.aborted is None else "..."
            asking = asking and said is not None
            run.messages.say(_progress(name, peer, said or "..."))


def _abort(run: Execution, uri: str, uuid: str) -> None:
    """``virsh domjobabort``; its failure is logged: the migrate call's own time limit
    (the budget plus ``abort_grace``) still ends the wait, and libvirt cancels a
    migration whose virsh was killed."""
    try:
        query.abort_job(run.virsh, uri, uuid, run.config)
    except VirshError as err:
        log.debug("%s", err)


def _percent(run: Execution, uri: str, uuid: str) -> Optional[str]:
    """``42%``, or "..." while there are no figures; None once a query timed out."""
    try:
        percent = query.job_percent(run.virsh, uri, uuid, run.config)
    except Interrupted:
        return "..."
    except VirshError as err:
        return None if err.timed_out else "..."
    return "..." if percent is None else f"{percent}%"


def _where(run: Execution, uri: str, uuid: str, peer: str) -> tuple[Optional[bool], bool]:
    """(active at home: True/False/None for unknown, arrived on *peer*)."""
    return _active(run, uri, uuid), _active(run, peer, uuid, arrived_only=True) is True


INCOMING = "migrating"
"""The reason of a guest's copy on its peer while the migration is still under way
(``paused (migrating)``, fixtures/qemu-domstate-reason-incoming)."""


def _active(run: Execution, uri: str, uuid: str, *, arrived_only: bool = False
            ) -> Optional[bool]:
    """Whether the guest is active (running or paused) on *uri*; False when it is not
    defined there; None when *uri* cannot tell.  *arrived_only*: running, or paused but
    not an incoming migration's copy (a guest paused at home arrives paused, its reason
    kept: fixtures/qemu-domstate-reason-migrated-paused)."""
    if run.given_up(uri) is not None:
        return None
    try:
        state = query.domain_state(run.virsh, uri, uuid, run.config)
    except VirshError as err:
        if any(line.strip().startswith(NOT_DEFINED) for line in err.stderr.split("\n")):
            return False  # "failed to get domain": not defined there
        log.debug("%s", err)  # nonsense output (OutputError) too: cannot tell
        return None
    if arrived_only:
        return state.state == "running" or (state.paused and state.reason != INCOMING)
    return state.state in ("running", "paused", "in shutdown", "pmsuspended", "blocked")
