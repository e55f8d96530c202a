"""The executor's invariants under fault schedules, on an in-process simulated host.

The runner is the production ``Virsh`` (its timeouts, refusals and the
given-up URI bookkeeping), only process creation is simulated (tests/simvirsh.py),
and time is virtual: each example runs in milliseconds, so hypothesis can try
classes of inputs (names, event lines, failing and hanging calls at any point)
instead of the one example a bug was found with.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simvirsh import BUG, FAIL, HANG, Fault, SimClock, SimGuest, SimHost, SimVirsh
from virtguests.config import Config
from virtguests.executor import JOB_LOCK_WAIT, Executor
from virtguests.plan import PROTECTED, Guest, Res, UriView, plan_stop
from virtguests.report import Reporter

PROPERTY = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = ["web", "db", "'", '"', "': Stopped", " Shutdown", "event 'lifecycle' for domain '",
             ": ", "\\", " ", "x"]
NAMES = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4).map("".join).filter(
    lambda name: name.strip() == name and bool(name))
"""Tenant-chosen names: quotes, event syntax, other guests' names as substrings."""


def uuid(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-000000000000"


def stopped_line(name: str, reason: str = "Shutdown") -> str:
    return f"event 'lifecycle' for domain '{name}': Stopped {reason}"


@dataclass
class Stopped:
    """One `stop` run on the simulated host: what happened, and where to look."""

    executor: Executor
    virsh: SimVirsh
    host: SimHost
    clock: SimClock
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def outcome(self, guest: SimGuest) -> str:
        return self.executor.report.outcomes[("default", guest.uuid)].outcome

    def steps(self, guest: SimGuest) -> list[tuple[str, str]]:
        return [(s.action, s.result)
                for s in self.executor.report.outcomes[("default", guest.uuid)].steps]


def stop(guests: Sequence[SimGuest], config: Config, *, fault: Optional[Fault] = None,
         noise: Sequence[str] = ()) -> Stopped:
    host = SimHost(list(guests), noise=list(noise))
    if fault is not None:
        host.fault = fault
    clock = SimClock()
    virsh = SimVirsh(clock, {"default": host})
    out, err = io.StringIO(), io.StringIO()
    view = UriView("default", tuple(Guest(g.uuid, g.name) for g in guests))
    reporter = Reporter(out, err)
    executor = Executor(virsh, config, reporter, clock)
    executor.stop(plan_stop(config, [view]))
    reporter.close()
    return Stopped(executor, virsh, host, clock, out.getvalue(), err.getvalue())


def shutdown_config(parallel: int, timeout: int, **changes: object) -> Config:
    return dataclasses.replace(Config(), on_shutdown=("shutdown", "poweroff"),
                               parallel_shutdown=parallel, shutdown_timeout=timeout,
                               **changes)  # type: ignore[arg-type]


def assert_every_guest_stopped(run: Stopped, guests: Sequence[SimGuest]) -> None:
    """Shut down by itself (and said so) or powered off: never abandoned, never guessed."""
    for guest in guests:
        complete = f"Shutdown of guest {guest.name} complete."
        assert not guest.active, (guest, run.out, run.err)
        if guest.destroyed:
            assert run.outcome(guest) == Res.POWERED_OFF, run.steps(guest)
            assert complete not in run.lines, (guest, run.out)
        else:
            assert guest.shut_down
            assert run.outcome(guest) in (Res.SHUT_OFF, Res.POWERED_OFF), run.steps(guest)
        if complete in run.lines:
            assert guest.shut_down and not guest.destroyed, (guest, run.out)
    assert "Not tracking it anymore" not in run.out


# -- item 10: an event may only wake the poller ------------------------------------


@PROPERTY
@given(names=st.lists(NAMES, min_size=1, max_size=5, unique=True), data=st.data())
def test_only_a_uuid_listing_decides_that_a_guest_stopped(names: list[str],
                                                          data: st.DataObject) -> None:
    guests = [SimGuest(uuid(i), name, data.draw(st.one_of(
        st.none(), st.floats(0, 40)), label=f"shutdown seconds of {name!r}"))
        for i, name in enumerate(names)]
    # Lines that lie: "Stopped" for guests still running, event syntax inside names.
    noise = data.draw(st.lists(st.one_of(
        st.builds(stopped_line, st.sampled_from(names), st.sampled_from(["Shutdown",
                                                                          "Destroyed"])),
        st.builds(lambda a, b: f"event 'lifecycle' for domain '{a}': Stopped': Started "
                               f"Booted{b}", st.sampled_from(names), st.text(max_size=8)),
        st.text(max_size=40)), max_size=4), label="event lines")
    config = shutdown_config(data.draw(st.sampled_from([0, 2, 4]), label="parallel"),
                             data.draw(st.integers(1, 60), label="timeout"))
    run = stop(guests, config, noise=noise)
    assert_every_guest_stopped(run, guests)
    for guest in guests:
        if guest.shutdown_seconds is None:  # ignores ACPI: only a power-off stops it
            assert guest.destroyed and run.outcome(guest) == Res.POWERED_OFF


@pytest.mark.parametrize("parallel", [0, 3])
def test_a_name_embedding_an_event_never_counts_another_guest_as_stopped(
        parallel: int) -> None:
    """Found: a guest named ``web': Stopped`` made ``web`` count as shut down."""
    victim = SimGuest(uuid(1), "web", None)
    attacker = SimGuest(uuid(2), "web': Stopped", 2.0)
    config = shutdown_config(parallel, 30)
    run = stop([victim, attacker], config, noise=[
        "event 'lifecycle' for domain 'web': Stopped': Started Booted",
        stopped_line("web"), stopped_line("web': Stopped")])
    assert victim.destroyed and "Powering off guest web: done" in run.lines
    assert "Shutdown of guest web complete." not in run.lines
    assert "Shutdown of guest web': Stopped complete." in run.lines


# -- item 8: a failed status poll never abandons a guest ---------------------------


def failing(polls: Sequence[bool], requests: Sequence[bool] = ()) -> Fault:
    """Fail the n-th status check when polls[n] (past the end: the last value), and the
    n-th shutdown request when requests[n]."""
    count = {"list": 0, "shutdown": 0}

    def fault(index: int, args: Sequence[str]) -> Optional[str]:
        if list(args) == ["list", "--uuid"]:
            n = count["list"]
            count["list"] += 1
            return FAIL if polls and polls[min(n, len(polls) - 1)] else None
        if args[0] == "shutdown":
            n = count["shutdown"]
            count["shutdown"] += 1
            return FAIL if n < len(requests) and requests[n] else None
        return None

    return fault


@pytest.mark.parametrize("parallel", [0, 3])
@pytest.mark.parametrize("failures", [[True, False], [True, True, True, False], [True]])
def test_a_guest_ignoring_acpi_is_powered_off_whatever_the_polls_say(
        parallel: int, failures: list[bool]) -> None:
    """Found: one failed poll printed "Not tracking it anymore" and the guest stayed up.

    ``[True]`` fails every check: the guests are followed until their timeout.
    """
    guests = [SimGuest(uuid(1), "stubborn", None), SimGuest(uuid(2), "quick", 1.0)]
    run = stop(guests, shutdown_config(parallel, 20), fault=failing(failures))
    assert_every_guest_stopped(run, guests)
    assert guests[0].destroyed and "Powering off guest stubborn: done" in run.lines
    assert "cannot check which guests on default are still running" in run.err
    assert run.steps(guests[0]) == [("shutdown", Res.TIMED_OUT), ("poweroff", Res.POWERED_OFF)]
    if failures != [True]:
        assert run.outcome(guests[1]) == Res.SHUT_OFF


@PROPERTY
@given(data=st.data())
def test_failed_checks_and_requests_never_leave_a_guest_running(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 5), label="guests")
    guests = [SimGuest(uuid(i), f"g{i}", data.draw(st.one_of(st.none(), st.floats(0, 50)),
                                                    label=f"g{i} shutdown seconds"))
              for i in range(count)]
    polls = data.draw(st.lists(st.booleans(), max_size=60), label="failing checks")
    requests = data.draw(st.lists(st.booleans(), max_size=count), label="failing requests")
    config = shutdown_config(data.draw(st.sampled_from([0, 2, 5]), label="parallel"),
                             data.draw(st.integers(1, 120), label="timeout"))
    run = stop(guests, config, fault=failing(polls, requests))
    assert_every_guest_stopped(run, guests)


def test_with_no_timeout_checks_that_keep_failing_end_the_wait_not_the_guest() -> None:
    """SHUTDOWN_TIMEOUT=0 waits forever, but not on a libvirtd that stopped answering."""
    guests = [SimGuest(uuid(1), "stubborn", None)]
    run = stop(guests, shutdown_config(0, 0), fault=failing([True]))
    assert guests[0].destroyed and "Powering off guest stubborn: done" in run.lines
    assert re.search(r"its status checks failed for 6[01]s; trying poweroff", run.err)
    assert 60 <= run.clock.now() - 1_000_000.0 < 62  # virtual: one check a second


# -- item 7: a wedged URI is given up once ------------------------------------------


def hang_at(call: int) -> Fault:
    return lambda index, args: HANG if index == call else None


@PROPERTY
@given(data=st.data())
def test_after_a_timeout_nothing_more_is_run_on_that_uri(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 5), label="guests")
    guests = [SimGuest(uuid(i), f"g{i}", data.draw(st.one_of(st.none(), st.floats(0, 30)),
                                                    label=f"g{i} shutdown seconds"))
              for i in range(count)]
    query_timeout = data.draw(st.integers(1, 30), label="QUERY_TIMEOUT")
    config = shutdown_config(data.draw(st.sampled_from([0, 3])), 40,
                             query_timeout=query_timeout)
    call = data.draw(st.integers(0, 40), label="hanging call")
    run = stop(guests, config, fault=hang_at(call))
    if len(run.host.calls) <= call:  # the run ended before that call: nothing hung
        assert_every_guest_stopped(run, guests)
        return
    hung_at, hung = run.host.calls[call]
    assert len(run.host.calls) == call + 1, run.host.calls[call:]  # refused at once since
    # one timeout, nothing more: QUERY_TIMEOUT, plus libvirt's own lock wait for requests
    limit = query_timeout + (JOB_LOCK_WAIT if hung[0] in ("shutdown", "destroy") else 0)
    assert run.clock.now() - hung_at == limit
    assert run.executor.status == 1
    given_up = [line for line in run.err.splitlines() if "gave up on default" in line]
    assert len(given_up) == 1, run.err
    assert "timed out after" in given_up[0]
    for guest in guests:
        if run.outcome(guest) not in PROTECTED:
            assert guest.name in given_up[0]
            assert guest.active != guest.destroyed or guest.shut_down


def test_a_uri_that_hangs_at_the_first_save_gives_up_its_other_guests_at_once() -> None:
    guests = [SimGuest(uuid(i), f"g{i}") for i in range(4)]
    config = dataclasses.replace(Config(), on_shutdown=("suspend", "shutdown", "poweroff"),
                                 save_timeout=1800)
    run = stop(guests, config, fault=hang_at(0))
    assert [args[0] for _, args in run.host.calls] == ["managedsave"]
    assert run.clock.now() - 1_000_000.0 == 1800  # one SAVE_TIMEOUT, not four
    assert run.virsh.watchers == {}  # no virsh event on a URI given up
    assert run.steps(guests[0]) == [("suspend", Res.FAILED), ("shutdown", Res.GIVEN_UP)]
    assert all(run.steps(g) == [("suspend", Res.GIVEN_UP)] for g in guests[1:])
    assert all(g.active for g in guests)
    assert "gave up on default: a call there timed out (virsh managedsave " in run.err
    assert "recorded so that start brings them back: g0, g1, g2, g3" in run.err


# -- item 3: a bug while handling one guest is that guest's alone --------------------


@PROPERTY
@given(data=st.data())
def test_a_bug_on_one_guest_never_stops_the_others(data: st.DataObject) -> None:
    count = data.draw(st.integers(2, 5), label="guests")
    guests = [SimGuest(uuid(i), f"g{i}", data.draw(st.one_of(st.none(), st.floats(0, 30)),
                                                    label=f"g{i} shutdown seconds"))
              for i in range(count)]
    actions = data.draw(st.sampled_from([("suspend",), ("shutdown", "poweroff"),
                                         ("suspend", "shutdown", "poweroff")]))
    config = dataclasses.replace(Config(), on_shutdown=actions, shutdown_timeout=30,
                                 parallel_shutdown=data.draw(st.sampled_from([0, 3])),
                                 parallel_suspend=data.draw(st.sampled_from([0, 3])))
    call = data.draw(st.integers(0, 15), label="call with a bug")
    run = stop(guests, config, fault=lambda index, args: BUG if index == call else None)
    assert "Traceback" not in run.err
    hurt = [g for g in guests if run.outcome(g) == Res.INTERNAL_ERROR]
    if len(run.host.calls) > call:
        assert run.executor.status == 1
        assert "internal error, please report it: " in run.err
        assert "RuntimeError: injected bug in call" in run.err
        assert len(run.err.splitlines()) <= 2 * count  # one line each, no traceback
    for guest in guests:
        if guest in hurt:  # reported; a bug never escalates to a power-off
            assert run.steps(guest)[-1][1] == Res.INTERNAL_ERROR
            continue
        assert run.outcome(guest) in PROTECTED, (guest, run.steps(guest), run.err)
        assert not guest.active, (guest, run.out, run.err)
