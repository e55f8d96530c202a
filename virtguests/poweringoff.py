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


def poweroff_all(run: Execution, uri: str, stops: Sequence[GuestStop]) -> list[GuestStop]:
    """Power each guest off; nothing is left for a next step (an empty list)."""
    escalate = run_all([run.for_guest(uri, planned.guest.name, planned.guest.uuid, Action.POWEROFF,
                                      functools.partial(_poweroff, run, uri, planned), False)
                        for planned in stops], 1)
    return [planned for planned, again in zip(stops, escalate) if again]


def _poweroff(run: Execution, uri: str, planned: GuestStop) -> bool:
    """virsh destroy, unless another job is saving the guest; never escalates."""
    if run.held_back(uri, planned, Action.POWEROFF):
        return False
    started = run.clock.now()
    budget = min(float(run.config.save_timeout), run.remaining())
    other = other_save(run, uri, planned, started + budget)
    if other != OtherSave.NONE:
        return after_other_save(run, uri, planned, Action.POWEROFF, other, started)
    outcome = run.result(uri, planned)
    err = run.request(uri, planned, Action.POWEROFF, commands.destroy(planned.guest.uuid))
    if err is not None and err.given_up:
        return False
    if err is not None:
        run.fail()
        run.messages.error(f"powering off guest {planned.guest.name} failed: {err.detail}")
        run.run_report.step(outcome, Action.POWEROFF, Outcome.FAILED, 0.0, err.detail)
    else:
        run.messages.say(f"Powering off guest {planned.guest.name}: done")
        run.run_report.step(outcome, Action.POWEROFF, Outcome.POWERED_OFF,
                            run.clock.now() - started)
    run.checkpoint()
    return False
