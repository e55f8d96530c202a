"""The poweroff stage: ``virsh destroy``, one guest after the other; the chain's last step.

A guest that another job is saving is never powered off while its memory is
being written (``othersave``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from virtguests import commands
from virtguests.concurrently import run_all
from virtguests.execution import Execution
from virtguests.model import Action, Outcome
from virtguests.othersave import OtherSave, after_other_save, other_save
from virtguests.plan import GuestStop
from virtguests.virsh import VirshError


def poweroff_all(run: Execution, uri: str, steps: Sequence[GuestStop]) -> list[GuestStop]:
    """Power each guest off; nothing is left for a next step (an empty list)."""
    escalate = run_all([run.for_guest(uri, step.guest.name, step.guest.uuid, Action.POWEROFF,
                                      functools.partial(_poweroff, run, uri, step), False)
                        for step in steps], 1)
    return [step for step, again in zip(steps, escalate) if again]


def _poweroff(run: Execution, uri: str, step: GuestStop) -> bool:
    """virsh destroy, unless another job is saving the guest; never escalates."""
    if run.cancelled:
        run.interrupted(uri, step)
        return False
    if run.given_up(uri) is not None:
        run.give_up(uri, step, Action.POWEROFF)
        return False
    started = run.clock.now()
    budget = min(float(run.config.save_timeout), run.remaining())
    other = other_save(run, uri, step, started + budget)
    if other != OtherSave.NONE:
        return after_other_save(run, uri, step, Action.POWEROFF, other, started)
    outcome = run.result(uri, step)
    try:
        run.virsh.run(uri, commands.destroy(step.guest.uuid),
                      timeout=run.request_timeout(Action.POWEROFF), ignore_interrupt=True)
    except VirshError as err:
        if err.given_up:
            run.give_up(uri, step, Action.POWEROFF)
            return False
        run.fail()
        run.messages.error(f"powering off guest {step.guest.name} failed: {err.detail}")
        run.run_report.step(outcome, Action.POWEROFF, Outcome.FAILED, 0.0, err.detail)
    else:
        run.messages.say(f"Powering off guest {step.guest.name}: done")
        run.run_report.step(outcome, Action.POWEROFF, Outcome.POWERED_OFF,
                            run.clock.now() - started)
    run.checkpoint()
    return False
