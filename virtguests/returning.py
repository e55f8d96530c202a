"""Start's first stage: bring the guests the migrated record names home, live.

Each peer in its own thread, PARALLEL_MIGRATE guests at a time from one peer:
``virsh -c PEER migrate OPTIONS UUID HOME`` (client-driven: virsh on this host
opens both URIs, so HOME as this host names it is right).  Progress every 5 s
from the peer's ``domjobinfo``; at MIGRATE_TIMEOUT, or when a stop is requested,
``virsh domjobabort`` on the peer, and the guest runs on there, still recorded.
A record entry goes (*forget*) only once the guest is seen running at home.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Callable, Optional

from virtguests import commands, query
from virtguests.concurrently import Job, run_all
from virtguests.execution import PROGRESS_EVERY, Execution
from virtguests.model import Action, Departure, Outcome
from virtguests.plan import GuestReturn, ReturnPlan
from virtguests.virsh import VirshError

Forget = Callable[[Departure], None]
"""Drop one guest from the migrated record (and write it)."""


def bring_home(run: Execution, plan: ReturnPlan, forget: Forget) -> None:
    """Say what was decided for each recorded guest, then migrate the rest home."""
    for level, text in decisions(plan):
        if level == ERROR:
            run.fail()
            run.messages.error(text)
        else:
            run.messages.say(text)
    for item in plan.guests:
        if item.decided is not None:
            d = item.departure
            run.run_report.step(run.run_report.guest(d.home, d.uuid, d.name), Action.MIGRATE,
                                item.decided, 0.0, item.detail)
            if not item.kept:
                forget(d)
    peers = plan.by_peer()
    run_all([run.guarded(f"bringing guests home from {peer}",
                         functools.partial(_peer, run, items, forget))
             for peer, items in peers.items()], max(len(peers), 1))


SAY, ERROR = "say", "error"


def decisions(plan: ReturnPlan) -> list[tuple[str, str]]:
    """The lines (SAY or ERROR, text) for the guests not migrated (a dry run prints them
    too): the guests left away in one line, each other guest in its own."""
    lines: list[tuple[str, str]] = []
    away = [i for i in plan.guests if i.decided == Outcome.AWAY]
    if away:
        lines.append((SAY, f"Leaving guests on their peers ({away[0].detail}): " + ", ".join(
            f"{i.departure.name} on {i.departure.peer}" for i in away)))
    for item in plan.guests:
        d = item.departure
        if item.decided == Outcome.ALREADY_ACTIVE:
            lines.append((SAY, f"Bringing {d.name} home from {d.peer}: already running at "
                               "home"))
        elif item.decided == Outcome.GONE:
            lines.append((ERROR, f"migrated guest {d.name} ({d.uuid}) is {item.detail}; "
                                 "dropped from the migrated record"))
        elif item.decided is not None and item.decided != Outcome.AWAY:
            lines.append((ERROR, f"cannot bring {d.name} home from {d.peer}: {item.detail}; "
                                 "it stays recorded for the next start"))
    return lines


def _peer(run: Execution, items: Sequence[GuestReturn], forget: Forget) -> None:
    run_all([run.for_guest(item.departure.home, item.departure.name, item.departure.uuid,
                           Action.MIGRATE, functools.partial(_guest, run, item, forget), None)
             for item in items], max(run.config.parallel_migrate, 1))


def _guest(run: Execution, item: GuestReturn, forget: Forget) -> None:
    """Migrate one guest home and check that it runs there."""
    d = item.departure
    outcome = run.run_report.guest(d.home, d.uuid, d.name)
    label = f"Bringing {d.name} home from {d.peer}: "
    if run.cancelled:
        run.run_report.step(outcome, Action.MIGRATE, Outcome.INTERRUPTED, 0.0,
                            "stop requested before this guest was brought home")
        return
    run.messages.say(f"{label}...")
    started = run.clock.now()
    limit = float(run.config.migrate_timeout)
    aborted: list[str] = []

    def migrate() -> Optional[VirshError]:
        try:
            # bounded even if the abort is lost: the call is killed, libvirt cancels
            run.virsh.run(d.peer, commands.migrate(d.uuid, d.home, run.config.migrate_options),
                          timeout=limit + run.config.query_timeout, ignore_interrupt=True)
        except VirshError as err:
            return err
        return None

    def abort() -> bool:
        """True once libvirt took the abort; False: no job (not begun yet, or over)."""
        try:
            return query.abort_job(run.virsh, d.peer, d.uuid, run.config)
        except VirshError as err:
            run.messages.warn(f"could not abort the migration of {d.name}: {err.detail}")
            return False

    def progress(done: threading.Event) -> None:
        next_tick, limit_at = started + PROGRESS_EVERY, started + limit
        while True:
            now = run.clock.now()
            wake = next_tick if now >= limit_at else min(next_tick, limit_at)
            if run.clock.wait(done, max(wake - now, 0.0)):
                return
            now = run.clock.now()
            why = "stop requested" if run.cancelled else (
                f"MIGRATE_TIMEOUT ({run.config.migrate_timeout} s) reached"
                if now >= limit_at else None)
            if why is not None and abort():
                aborted.append(why)
                # the migrate call ends soon: libvirt fails it, or its own timeout
                while not run.clock.wait(done, PROGRESS_EVERY):
                    pass
                return
            if now >= next_tick:
                next_tick += PROGRESS_EVERY
                if why is None:
                    run.messages.say(f"{label}{_percent(run, d)}")

    [err] = run_all([Job(migrate)], 1, waiting=progress)
    seconds = run.clock.now() - started
    home = _running_at_home(run, d)
    if home is True or (isinstance(home, query.DomState) and home.state in ACTIVE_NOT_RUNNING):
        if home is not True:
            run.messages.warn(f"guest {d.name} came home from {d.peer} but is {home}")
        run.messages.say(f"Brought {d.name} home from {d.peer}")
        run.run_report.step(outcome, Action.MIGRATE, Outcome.RETURNED, seconds)
        forget(d)
        run.checkpoint()
        return
    run.fail()
    if aborted:
        detail = f"aborted: {aborted[0]}"
    elif err is not None:
        detail = err.detail
    else:
        detail = f"virsh migrate succeeded but it is not running at home ({home})"
    run.messages.say(f"{label}failed")
    run.messages.error(f"bringing {d.name} home from {d.peer} failed: {detail}; it stays "
                       "recorded for the next start")
    run.run_report.step(outcome, Action.MIGRATE,
                        Outcome.INTERRUPTED if run.cancelled else Outcome.FAILED,
                        seconds, detail)
    run.checkpoint()


def _percent(run: Execution, d: Departure) -> str:
    """The migration's progress as the peer (its source) reports it, or "..."."""
    try:
        percent = query.job_percent(run.virsh, d.peer, d.uuid, run.config)
    except VirshError:
        return "..."
    return "..." if percent is None else f"{percent}%"


ACTIVE_NOT_RUNNING = frozenset({"paused", "idle", "in shutdown", "pmsuspended"})
"""``virsh domstate`` words for a guest that is at home, though not running: it is home
(its record goes, with a warning); shut off or crashed it is not."""


def _running_at_home(run: Execution, d: Departure) -> object:
    """True if the guest runs at home, else what was seen there (a DomState or an
    error's detail)."""
    try:
        seen = query.domain_state(run.virsh, d.home, d.uuid, run.config)
    except VirshError as err:
        return err.detail
    return True if seen.state == "running" else seen
