"""The record is never dropped: stop and start end to end on the in-process simulated host,
with a bug (an unexpected exception) injected into any virsh call.

The actions (files, list file, pending file, status) are the production ones;
only process creation is simulated (tests/simvirsh.py), so every position of the
bug can be tried.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simvirsh import BUG, HANG, Fault, SimClock, SimGuest, SimHost, SimVirsh
from tests.sizes import examples
from virtguests import state
from virtguests.actions.context import Context
from virtguests.actions.start import run_start
from virtguests.actions.status import run_status
from virtguests.actions.stop import run_stop
from virtguests.clock import Clock
from virtguests.config import Config, Loaded
from virtguests.messages import Messages
from virtguests.model import Action
from virtguests.virsh import Virsh

PROPERTY = settings(max_examples=examples(60), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def uuid(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-00000000000{index % 10}"


class Box:
    """A simulated host with one URI and a state directory."""

    def __init__(self, root: Path, count: int, config: Config) -> None:
        self.guests = [SimGuest(uuid(i), f"g{i}") for i in range(count)]
        self.host = SimHost(self.guests)
        self.clock = SimClock()
        self.virsh = SimVirsh(self.clock, {"default": self.host})
        self.paths = state.Paths.in_dir(root)
        self.config = config

    def run(self, command: str, fault: Optional[Fault] = None) -> tuple[int, str, str]:
        self.host.fault = fault or (lambda index, args: None)
        self.virsh = SimVirsh(self.clock, {"default": self.host})  # a new run: nothing wedged
        out, err = io.StringIO(), io.StringIO()
        messages = Messages(out, err)
        ctx = Context(Loaded(self.config, None), self.paths, self.virsh, messages, self.clock)
        code = {"stop": run_stop, "start": run_start, "status": run_status}[command](ctx)
        messages.close()
        return code, out.getvalue(), err.getvalue()

    def recorded(self) -> set[str]:
        entries, _ = state.read_list(self.paths.list_file)
        pending, _ = state.read_list(self.paths.pending)
        return {u for ids in [*entries.values(), *pending.values()] for u in ids}


def bug_at(call: int) -> Fault:
    count = [0]

    def fault(index: int, args: Sequence[str]) -> Optional[str]:
        count[0] += 1
        return BUG if count[0] - 1 == call else None

    return fault


@PROPERTY
@given(count=st.integers(1, 6), call=st.integers(0, 8),
       parallel_start=st.sampled_from([1, 4]), start_delay=st.sampled_from([0, 7, 10**12]))
def test_a_bug_at_start_keeps_every_guest_not_resumed(count: int, call: int,
                                                      parallel_start: int,
                                                      start_delay: int) -> None:
    """Found: an overflow while starting (a huge START_DELAY) dropped every guest after
    the first.  Whatever call hits a bug, exactly the guests with a definite outcome
    leave the record, status does not say "started" while others are owed, and the
    next start brings them back."""
    config = dataclasses.replace(Config(), parallel_start=parallel_start,
                                 start_delay=start_delay)
    with tempfile.TemporaryDirectory() as root:
        box = Box(Path(root), count, config)
        assert box.run("stop")[0] == 0
        assert box.recorded() == {g.uuid for g in box.guests}
        code, out, err = box.run("start", bug_at(call))
        down = {g.uuid for g in box.guests if not g.active}
        assert box.recorded() == down, (out, err)
        assert "Traceback" not in err
        if down:
            assert code == 1 and "internal error, please report it: " in err
            assert "RuntimeError: injected bug in call" in err
            assert ("not resumed, kept for the next start: " in err
                    or "stay recorded for the next start: " in err)
        status, said, _ = box.run("status")
        assert (status, said.splitlines()[0]) == (
            (3, "stopped, with saved guests") if down else (0, "started"))
        assert box.run("start")[0] == 0
        assert all(g.active for g in box.guests) and box.recorded() == set()
        assert box.run("status")[:2] == (0, "started\n")


@PROPERTY
@given(count=st.integers(1, 6), call=st.integers(0, 8),
       actions=st.sampled_from([(Action.SUSPEND,), (Action.SHUTDOWN, Action.POWEROFF),
                                (Action.SUSPEND, Action.SHUTDOWN, Action.POWEROFF)]))
def test_a_bug_at_stop_leaves_every_guest_recorded(count: int, call: int,
                                                   actions: tuple[Action, ...]) -> None:
    config = dataclasses.replace(Config(), on_shutdown=actions, shutdown_timeout=30)
    with tempfile.TemporaryDirectory() as root:
        box = Box(Path(root), count, config)
        for guest in box.guests:
            guest.shutdown_seconds = 1.0
        code, out, err = box.run("stop", bug_at(call))
        assert "Traceback" not in err
        if call == 0:  # the bug hit the listing: like an unreachable URI
            assert "Can't connect to default. Skipping." in out and code == 1
            return
        assert box.recorded() == {g.uuid for g in box.guests}, (out, err)
        hurt = [g for g in box.guests if g.active]
        assert len(hurt) <= 1, (out, err)  # the one whose call hit the bug, if any
        for guest in hurt:
            assert f"of guest {guest.name} on default: RuntimeError" in err
        if call < len(box.host.calls):
            assert code == 1


def test_a_uri_given_up_at_start_names_its_guests_once() -> None:
    """The given-up URI's error names the guests it keeps; the summary of guests not
    resumed leaves them out (as it does for unreachable URIs)."""
    config = dataclasses.replace(Config(), parallel_start=1)
    with tempfile.TemporaryDirectory() as root:
        box = Box(Path(root), 3, config)
        assert box.run("stop")[0] == 0
        first = len(box.host.calls)  # libvirtd stops answering after one start
        code, out, err = box.run("start", lambda index, args: HANG if index > first else None)
        assert code == 1 and "Resuming guest g0: done" in out
        assert [args for _, args in box.host.calls[first:]] == [
            ("start", uuid(0)), ("start", uuid(1)), ("list", "--uuid")]
        assert ("gave up on default: a call there timed out (virsh start " + uuid(1)) in err
        assert err.count("kept for the next start") == 1, err
        assert err.rstrip().endswith("not resumed, kept for the next start: g1, g2"), err
        assert box.recorded() == {uuid(1), uuid(2)}


def test_the_clock_and_the_runner_take_absurd_durations() -> None:
    """A duration past threading.TIMEOUT_MAX waits as long as it can, never raises."""
    cancel = threading.Event()
    cancel.set()
    clock = Clock(cancel)
    assert clock.sleep(1e300) is False and clock.sleep(float("inf")) is False
    ready = threading.Event()
    ready.set()
    assert clock.wait(ready, 10**30) is True
    problems: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: problems.append(args.exc_value or RuntimeError(args))
    try:
        result = Virsh("true").run("default", [], timeout=10**30)
    finally:
        threading.excepthook = previous
    assert result.exit_code == 0
    assert problems == []  # the timer thread accepted its (clamped) wait


@pytest.mark.parametrize("seconds", [float("nan"), -5.0, 0.0])
def test_nonsense_durations_do_not_wait(seconds: float) -> None:
    clock = Clock()
    assert clock.sleep(seconds) is True
    assert clock.wait(threading.Event(), seconds) is False
