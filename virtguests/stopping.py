"""Stop: each URI in its own thread, each group of guests in order, each guest's chain.

URIs are often different hosts: each has its own timeout accounting.  A
guest's action chain (suspend -> shutdown -> poweroff) moves to the next stage
when a step fails or times out, but never while a save of the guest is still in
progress.  A URI that stopped answering is given up at once (``Virsh.given_up``):
its guests stay recorded and are named in one error; a timeout of one guest's
call costs only that guest's step.  After a stop request (SIGTERM/SIGINT)
nothing new is started; calls in flight finish or time out, and a guest whose
migration was aborted goes on to the rest of its chain (it is in flight).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from virtguests.concurrently import run_all
from virtguests.execution import Execution, next_action
from virtguests.migrating import migrate_all
from virtguests.model import PROTECTED, STOP_CHAIN, Action
from virtguests.plan import GuestStop, StopPlan, UriStop
from virtguests.poweringoff import poweroff_all
from virtguests.shuttingdown import shutdown_all
from virtguests.suspending import suspend_all

_STAGE = {Action.MIGRATE: migrate_all, Action.SUSPEND: suspend_all,
          Action.SHUTDOWN: shutdown_all, Action.POWEROFF: poweroff_all}
"""Each stage: its guests in, the ones the chain's next step takes out."""


def stop(run: Execution, plan: StopPlan) -> None:
    """Stop the plan's guests, the URIs side by side."""
    jobs = [run.guarded(f"stopping the guests on {item.uri}",
                        functools.partial(_stop_uri, run, item))
            for item in plan.uris if item.guests]
    run_all(jobs, len(jobs))


def _stop_uri(run: Execution, item: UriStop) -> None:
    if run.config.on_shutdown == (Action.MIGRATE,):  # drain
        run.messages.say(f"Migrating guests on {item.uri} URI...")
    elif run.config.suspending:
        run.messages.say(f"Suspending guests on {item.uri} URI...")
    else:
        run.messages.say(f"Shutting down guests on {item.uri} URI...")
    try:
        for group in item.by_order():
            run_all([run.guarded(f"stopping a group of guests on {item.uri}",
                                 functools.partial(_stop_group, run, item.uri, group))], 1)
    finally:
        _name_given_up(run, item)


def _name_given_up(run: Execution, item: UriStop) -> None:
    """One error naming every guest a URI that stopped answering left unprotected."""
    why = run.given_up(item.uri)
    if why is None:
        return
    run.fail()
    left = [s for s in item.guests if run.result(item.uri, s).outcome not in PROTECTED]
    recorded = [s.guest.name for s in left if s.record]
    transient = [s.guest.name for s in left if not s.record]
    message = f"gave up on {item.uri}: a call there timed out ({why})"
    if recorded:
        message += ("; not protected, recorded so that start brings them back: "
                    + ", ".join(recorded))
    if transient:
        message += "; not protected (transient): " + ", ".join(transient)
    run.messages.error(message)


def _stop_group(run: Execution, uri: str, stops: Sequence[GuestStop]) -> None:
    """Each stage in turn takes its guests: those whose chain starts there, and those
    an earlier stage failed to stop."""
    queues: dict[Action, list[GuestStop]] = {stage: [] for stage in STOP_CHAIN}
    for planned in stops:
        queues[planned.actions[0]].append(planned)
    for stage in STOP_CHAIN:
        todo = queues[stage]
        if not todo:
            continue
        if run.given_up(uri) is not None:
            for planned in todo:
                run.held_back(uri, planned, stage)
            continue
        held = {id(planned) for planned in todo if run.cancelled_for(uri, planned)}
        for planned in todo:
            if id(planned) in held:
                run.held_back(uri, planned, stage)
        todo = [planned for planned in todo if id(planned) not in held]
        if not todo:
            continue
        for planned in _STAGE[stage](run, uri, todo):
            following = next_action(planned, stage)
            if following is not None:
                queues[following].append(planned)

