"""The suspend stage: ``virsh managedsave``, PARALLEL_SUSPEND guests at a time.

Each save runs in a worker thread while its guest's own thread prints the
reference's progress line every 5 s (``Data processed`` from ``virsh
domjobinfo``).  A save that failed is never followed by a harsher step while a
save of the guest is still in progress (``othersave``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Optional

from virtguests import commands, virshout
from virtguests.concurrently import Job, run_all
from virtguests.execution import PROGRESS_EVERY, Execution
from virtguests.model import Action, Outcome
from virtguests.othersave import OtherSave, after_other_save, other_save
from virtguests.plan import GuestStop
from virtguests.virsh import Interrupted, VirshError


def suspend_all(run: Execution, uri: str, stops: Sequence[GuestStop]) -> list[GuestStop]:
    """Save each guest; the ones the chain's next step takes."""
    escalate = run_all([run.for_guest(uri, planned.guest.name, planned.guest.uuid, Action.SUSPEND,
                                      functools.partial(_suspend, run, uri, planned), False)
                        for planned in stops], run.config.parallel_suspend)
    return [planned for planned, again in zip(stops, escalate) if again]


def _suspend(run: Execution, uri: str, planned: GuestStop) -> bool:
    """managedsave one guest, printing progress every 5 s; True: go on with the chain."""
    name, uuid = planned.guest.name, planned.guest.uuid
    outcome = run.result(uri, planned)
    label = f"Suspending {name}: "
    if run.held_back(uri, planned, Action.SUSPEND):
        return False
    budget = min(float(run.config.save_timeout), run.remaining())
    if budget <= 0:
        trying, escalate = run.escalating(uri, planned, Action.SUSPEND)
        run.messages.error(f"no time left before STOP_DEADLINE to save guest {name}{trying}")
        run.run_report.step(outcome, Action.SUSPEND, Outcome.SKIPPED, 0.0, "STOP_DEADLINE reached")
        return escalate
    run.messages.say(f"{label}...")
    started = run.clock.now()

    def save() -> Optional[VirshError]:
        try:
            run.virsh.run(uri, commands.managedsave(uuid, run.config), timeout=budget,
                          ignore_interrupt=True)
        except VirshError as err:
            return err
        return None

    def progress(done: threading.Event) -> None:
        next_progress = started + PROGRESS_EVERY
        asking = True  # until a progress query times out (a hung QEMU): then "..."
        while not run.clock.wait(done, max(next_progress - run.clock.now(), 0.0)):
            if run.clock.now() >= next_progress:
                next_progress += PROGRESS_EVERY
                said = _save_progress(run, uri, uuid) if asking else "..."
                asking = said is not None
                run.messages.say(f"{label}{said or '...'}")

    # a bug in the save is raised again here, in this guest's own guard
    [err] = run_all([Job(save)], 1, waiting=progress)
    if err is None:
        run.messages.say(f"{label}done")
        run.run_report.step(outcome, Action.SUSPEND, Outcome.SAVED, run.clock.now() - started)
        run.checkpoint()
        return False
    if err.given_up:
        run.give_up(uri, planned, Action.SUSPEND)
        return False
    if run.given_up(uri) is None:
        # A save must end before anything harsher is tried: another job's (an
        # earlier run killed mid-save, another tool) or ours, which libvirt goes on
        # with after its virsh timed out (SAVE_TIMEOUT, STOP_DEADLINE).
        other = other_save(run, uri, planned, started + budget, failure=err,
                           ours=err.timed_out)
        if other != OtherSave.NONE:
            return after_other_save(run, uri, planned, Action.SUSPEND, other, started,
                                    failure=err if err.timed_out else None)
    return run.failed_step(uri, planned, Action.SUSPEND, f"saving guest {name}", err,
                           run.clock.now() - started)


def _save_progress(run: Execution, uri: str, uuid: str) -> Optional[str]:
    """``Data processed`` of a save, or "..."; None once a query timed out."""
    try:
        result = run.virsh.run(uri, commands.domjobinfo(uuid),
                               timeout=run.config.query_timeout)
    except Interrupted:
        return "..."
    except VirshError as err:
        return None if err.timed_out else "..."
    return virshout.data_processed(result.stdout) or "..."
