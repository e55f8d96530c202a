"""Another job's save of a guest: is one in progress, wait for it, report how it ended.

A save must end before anything harsher is tried on a guest: another job's (an
earlier run killed mid-save, another tool) or ours, which libvirt goes on with
after its virsh timed out.  Asked only on failure paths (a failed save or
shutdown request, before a power-off, a start refused as "already active"), with
calls that need no job on the guest, so they answer while the save holds the
guest's state-change lock.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Optional

from virtguests import query, virshout
from virtguests.execution import Execution
from virtguests.model import Action, Outcome
from virtguests.plan import GuestStop
from virtguests.virsh import VirshError

log = logging.getLogger(__name__)

class OtherSave(Enum):
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


def save_job_poll(waited: float) -> float:
    """How often to ask whether another job's save has ended: each second, later each 5 s."""
    return 1.0 if waited < 10 else 5.0


def _domain_state(run: Execution, uri: str, uuid: str) -> Optional[query.DomState]:
    try:
        return query.domain_state(run.virsh, uri, uuid, run.config)
    except VirshError as err:
        log.debug("%s", err)
        return None


def _save_job(run: Execution, uri: str, uuid: str) -> Optional[bool]:
    """Whether ``virsh domjobinfo`` shows a save job; None if it cannot tell."""
    try:
        return query.save_job_running(run.virsh, uri, uuid, run.config)
    except VirshError as err:
        log.debug("%s", err)
        return None


def saving(run: Execution, uri: str, uuid: str, failure: Optional[VirshError] = None
           ) -> tuple[Optional[query.DomState], Optional[str]]:
    """The guest's ``domstate --reason`` and what shows a save of it in progress
    (None: nothing does); (None, None) when virsh could not tell.

    Any one sign is enough: the reason ``saving`` (a guest that was running when
    the save began); for a paused guest, or after a call that failed on a lock held
    by a save, a save job in ``virsh domjobinfo``; and when domjobinfo cannot
    tell, that failed call's own words.  A shut-off guest is saved or not, no
    longer being saved.  A paused guest whose domjobinfo failed is not known to be
    free of a save: no answer (it may also have been saved just after its domstate).
    """
    state = _domain_state(run, uri, uuid)
    if state is not None and state.saving:
        return state, f"virsh domstate: {state}"
    lock = virshout.save_lock(failure.stderr) if failure is not None else None
    if state is not None and state.shut_off:
        return state, None
    if (state is not None and state.paused) or lock:
        job = _save_job(run, uri, uuid)
        if job:
            return state, "virsh domjobinfo: a save job is running"
        if job is None and lock:
            return state, f"the failed call said: {lock}"
        if job is None:
            return None, None
    return state, None


def other_save(run: Execution, uri: str, planned: GuestStop, until: float, *,
               failure: Optional[VirshError] = None, ours: bool = False) -> OtherSave:
    """Is a save of this guest in progress?  Wait for it until *until*; how did it end?

    *failure* is the call that failed; *ours*: it was our own save whose virsh
    timed out, which libvirt goes on with: our time is up, so it is not waited for.
    """
    name, uuid = planned.guest.name, planned.guest.uuid
    clock = run.clock
    state, still = saving(run, uri, uuid, failure)
    if still is not None:
        if ours:
            return OtherSave.STILL_SAVING
        began = clock.now()
        run.messages.warn(f"guest {name} on {uri} is being saved by another job "
                          f"({still}); waiting up to {max(round(until - began), 0)}s "
                          "for it to finish; it is not shut down or powered off "
                          "meanwhile")
        while still is not None:
            left = until - clock.now()
            if left <= 0:
                return OtherSave.STILL_SAVING
            if not clock.sleep(min(save_job_poll(clock.now() - began), left)):
                return OtherSave.INTERRUPTED
            answer, again = saving(run, uri, uuid, failure)
            if answer is None and again is None:  # no answer: still saving, as far
                if run.given_up(uri) is not None:  # as we know
                    return OtherSave.STILL_SAVING
                continue
            state, still = answer, again
    if state is None or not state.shut_off:
        return OtherSave.NONE
    if state.saved:
        return OtherSave.SAVED
    try:
        saved = query.has_managed_save(run.virsh, uri, uuid, run.config)
    except VirshError as err:
        log.debug("%s", err)
        return OtherSave.NONE
    return OtherSave.SAVED if saved else OtherSave.OFF


def after_other_save(run: Execution, uri: str, planned: GuestStop, action: Action,
                     other: OtherSave, started: float, *,
                     failure: Optional[VirshError] = None) -> bool:
    """Report how a save in progress ended; never escalates (False).

    *failure*: our own save, whose virsh call timed out (see ``other_save``).
    """
    name = planned.guest.name
    outcome = run.result(uri, planned)
    seconds = run.clock.now() - started
    if other == OtherSave.SAVED:
        if action == Action.SUSPEND:
            run.messages.say(f"Suspending {name}: done")
        else:
            run.messages.warn(f"guest {name} on {uri} was saved by another job; "
                              f"no {action} needed")
        run.run_report.step(outcome, Action.SUSPEND, Outcome.SAVED, seconds,
                            "saved after its virsh call timed out" if failure
                            else "saved by another job")
    elif other == OtherSave.OFF:
        run.messages.warn(f"guest {name} on {uri} is shut off already (without a "
                          f"managed-save image); no {action} needed")
        run.run_report.step(outcome, action, Outcome.SHUT_OFF, seconds, "already shut off")
    elif other == OtherSave.STILL_SAVING:
        run.fail()
        if failure is not None:
            what = (f"saving guest {name} failed: {failure.detail}; libvirt is still "
                    "saving it:")
            detail = "still being saved when our time ran out"
        else:
            what = f"guest {name} on {uri} is still being saved by another job;"
            detail = "another job was still saving it when our time ran out"
        run.messages.error(f"{what} not shutting it down or powering it off while its "
                           "memory is being written (it stays recorded)")
        run.run_report.step(outcome, action, Outcome.SAVE_IN_PROGRESS, seconds, detail)
    else:
        run.run_report.step(outcome, action, Outcome.INTERRUPTED, seconds,
                            "stop requested while another job was saving it")
    run.checkpoint()
    return False
