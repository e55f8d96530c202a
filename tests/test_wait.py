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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.simvirsh import (
    BUG,
    FAIL,
    HANG,
    Fault,
    SimClock,
    SimGuest,
    SimHost,
    SimVirsh,
    slow,
)
from tests.sizes import examples
from virtguests.config import Config
from virtguests.execution import AGENT_SHUTDOWN_WAIT, JOB_LOCK_WAIT
from virtguests.executor import Executed, Executor
from virtguests.messages import Messages
from virtguests.model import PROTECTED, STOP_CHAIN, Action, Guest, Outcome, UriView
from virtguests.plan import plan_stop
from virtguests.runreport import RunReport
from virtguests.virsh import is_guest_call

PROPERTY = settings(max_examples=examples(120), deadline=None,
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

    result: Executed
    run_report: RunReport
    virsh: SimVirsh
    host: SimHost
    clock: SimClock
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def outcome(self, guest: SimGuest) -> str:
        return self.run_report.results[("default", guest.uuid)].outcome

    def steps(self, guest: SimGuest) -> list[tuple[str, str]]:
        return [(s.action, s.result)
                for s in self.run_report.results[("default", guest.uuid)].steps]


def stop(guests: Sequence[SimGuest], config: Config, *, fault: Optional[Fault] = None,
         noise: Sequence[str] = ()) -> Stopped:
    host = SimHost(list(guests), noise=list(noise))
    if fault is not None:
        host.fault = fault
    clock = SimClock()
    virsh = SimVirsh(clock, {"default": host}, query_timeout=config.query_timeout)
    out, err = io.StringIO(), io.StringIO()
    view = UriView("default", tuple(Guest(g.uuid, g.name) for g in guests))
    messages = Messages(out, err)
    executor = Executor(virsh, config, messages, clock)
    result = executor.stop(plan_stop(config, [view]))
    messages.close()
    return Stopped(result, executor.run_report, virsh, host, clock, out.getvalue(),
                   err.getvalue())


def shutdown_config(parallel: int, timeout: int, **changes: object) -> Config:
    return dataclasses.replace(Config(), on_shutdown=(Action.SHUTDOWN, Action.POWEROFF),
                               parallel_shutdown=parallel, shutdown_timeout=timeout,
                               **changes)  # type: ignore[arg-type]


def assert_every_guest_stopped(run: Stopped, guests: Sequence[SimGuest]) -> None:
    """Shut down by itself (and said so) or powered off: never abandoned, never guessed."""
    for guest in guests:
        complete = f"Shutdown of guest {guest.name} complete."
        assert not guest.active, (guest, run.out, run.err)
        if guest.destroyed:
            assert run.outcome(guest) == Outcome.POWERED_OFF, run.steps(guest)
            assert complete not in run.lines, (guest, run.out)
        else:
            assert guest.shut_down
            assert run.outcome(guest) in (Outcome.SHUT_OFF, Outcome.POWERED_OFF), run.steps(guest)
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
            assert guest.destroyed and run.outcome(guest) == Outcome.POWERED_OFF


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
    assert run.steps(guests[0]) == [("shutdown", Outcome.TIMED_OUT),
                                    ("poweroff", Outcome.POWERED_OFF)]
    if failures != [True]:
        assert run.outcome(guests[1]) == Outcome.SHUT_OFF


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


# -- item 7: a wedged URI is given up once; one guest's timeout is that guest's alone ---


def wedge_from(call: int) -> Fault:
    """Every call from number *call* on hangs: libvirtd stopped answering."""
    return lambda index, args: HANG if index >= call else None


VERBS = ["list", "managedsave", "shutdown", "domstate", "destroy"]


def hang_nth(verb: str, nth: int, *, wedge: bool) -> Fault:
    """The *nth* call of *verb* hangs (and, with *wedge*, every call after it)."""
    seen = {"count": 0, "from": -1}

    def fault(index: int, args: Sequence[str]) -> Optional[str]:
        if 0 <= seen["from"] <= index and wedge:
            return HANG
        if args[0] == verb:
            seen["count"] += 1
            if seen["count"] == nth:
                seen["from"] = index
                return HANG
        return None

    return fault


def first_hung(run: Stopped, verb: str, nth: int) -> Optional[int]:
    """The index of the call *hang_nth* made hang, if the run got that far."""
    of_verb = [i for i, (_, args) in enumerate(run.host.calls) if args[0] == verb]
    return of_verb[nth - 1] if len(of_verb) >= nth else None


def limit_of(args: Sequence[str], config: Config) -> float:
    """The timeout virtguests gives a call."""
    extra = {"shutdown": AGENT_SHUTDOWN_WAIT, "destroy": JOB_LOCK_WAIT}
    if args[0] == "managedsave":
        return float(config.save_timeout)
    return config.query_timeout + extra.get(args[0], 0.0)


ACTION_VERBS = {"suspend": "managedsave", "shutdown": "shutdown", "poweroff": "destroy"}
PROMISE = re.compile(r"guest (?P<name>g\d+)\b.*; trying (?P<action>\w+)$")


def assert_trying_is_tried(run: Stopped, guests: Sequence[SimGuest]) -> None:
    """A chain message "trying X" is only printed when X is then tried."""
    ids = {g.name: g.uuid for g in guests}
    for line in run.err.splitlines():
        match = PROMISE.search(line)
        if match is None:
            continue
        call = (ACTION_VERBS[match["action"]], ids[match["name"]])
        assert call in [args for _, args in run.host.calls], (line, run.host.calls)


CHAINS = [("suspend",), ("shutdown", "poweroff"), ("shutdown", "poweroff"),
          ("suspend", "shutdown", "poweroff"), ("poweroff",)]


@PROPERTY
@given(data=st.data())
def test_a_wedged_libvirtd_is_given_up_once_within_the_bound(data: st.DataObject) -> None:
    """Whatever call is the first to hang for good: a URI-level call gives the URI up at
    once; a guest's call costs its timeout plus one liveness check.  Nothing more runs
    there.  Serial: the simulated host serialises calls, so calls in flight at the same
    time are tried by the real-process tests (tests/test_faults.py)."""
    count = data.draw(st.integers(1, 5), label="guests")
    guests = [SimGuest(uuid(i), f"g{i}", data.draw(st.one_of(st.none(), st.floats(0, 30)),
                                                    label=f"g{i} shutdown seconds"))
              for i in range(count)]
    query_timeout = data.draw(st.integers(1, 30), label="QUERY_TIMEOUT")
    config = dataclasses.replace(shutdown_config(0, 40, query_timeout=query_timeout),
                                 on_shutdown=data.draw(st.sampled_from(CHAINS)))
    verb = data.draw(st.sampled_from(VERBS), label="first hanging call")
    nth = data.draw(st.integers(1, 4), label="its number")
    run = stop(guests, config, fault=hang_nth(verb, nth, wedge=True))
    assert_trying_is_tried(run, guests)
    call = first_hung(run, verb, nth)
    if call is None:  # the run ended before that call: nothing hung
        assert "gave up" not in run.err
        return
    hung_at, hung = run.host.calls[call]
    event(f"first hung call: {hung[0]}")
    after = [args for _, args in run.host.calls[call + 1:]]
    bound = limit_of(hung, config)
    if is_guest_call(hung):
        assert after == [("list", "--uuid")], after  # the liveness check, then nothing
        bound += query_timeout
    else:
        assert after == [], after
    assert run.clock.now() - hung_at == bound
    assert run.result.status == 1
    given_up = [line for line in run.err.splitlines() if "gave up on default" in line]
    assert len(given_up) == 1, run.err
    assert "timed out after" in given_up[0]
    for guest in guests:
        if run.outcome(guest) not in PROTECTED:
            assert guest.name in given_up[0]
            assert guest.active != guest.destroyed or guest.shut_down


@PROPERTY
@given(data=st.data())
def test_one_guests_timeout_costs_that_guest_not_its_uri(data: st.DataObject) -> None:
    """Any one call hangs, libvirtd still answers: a URI-level call gives the URI up
    (nothing more is run there); a guest's call fails that guest's step only, after one
    liveness check, and every other guest is handled as without the fault."""
    count = data.draw(st.integers(2, 5), label="guests")
    guests = [SimGuest(uuid(i), f"g{i}", data.draw(st.one_of(st.none(), st.floats(0, 30)),
                                                    label=f"g{i} shutdown seconds"))
              for i in range(count)]
    config = dataclasses.replace(
        shutdown_config(data.draw(st.sampled_from([0, 3]), label="parallel"), 40,
                        query_timeout=data.draw(st.integers(1, 30), label="QUERY_TIMEOUT")),
        on_shutdown=data.draw(st.sampled_from(CHAINS)),
        parallel_suspend=data.draw(st.sampled_from([0, 3]), label="parallel suspend"))
    verb = data.draw(st.sampled_from(VERBS), label="hanging call")
    nth = data.draw(st.integers(1, 4), label="its number")
    run = stop(guests, config, fault=hang_nth(verb, nth, wedge=False))
    assert_trying_is_tried(run, guests)
    call = first_hung(run, verb, nth)
    if call is None:
        assert "gave up" not in run.err
        return
    hung = run.host.calls[call][1]
    event(f"hung call: {hung[0]}")
    if not is_guest_call(hung):
        assert len(run.host.calls) == call + 1, run.host.calls[call:]
        assert "gave up on default" in run.err
        return
    assert run.virsh.liveness_checks == 1
    assert run.virsh.given_up("default") is None and "gave up" not in run.err, run.err
    hurt = run.host.find(hung[-1])
    for guest in guests:
        assert not guest.destroyed_while_saving
        if guest is hurt:
            continue
        assert run.outcome(guest) in PROTECTED, (guest, run.steps(guest), run.err)
        assert not guest.active
    assert hurt is not None
    if hurt.active:  # its step failed, said so, and the chain went on as far as it could
        assert hurt.name in run.err, run.err
        assert run.steps(hurt)[-1][1] in (Outcome.FAILED, Outcome.TIMED_OUT), run.steps(hurt)


@pytest.mark.parametrize("parallel", [0, 3])
def test_a_save_outlasting_save_timeout_is_left_to_libvirt_and_the_others_saved(
        parallel: int) -> None:
    """Found: the save's timeout gave the whole URI up ("trying shutdown", and nothing
    was tried).  libvirt goes on saving after virsh is killed: never shut down or
    powered off meanwhile, and the other guests are saved."""
    big = SimGuest(uuid(0), "g0", save_seconds=3000)
    others = [SimGuest(uuid(i), f"g{i}") for i in range(1, 4)]
    config = dataclasses.replace(Config(), on_shutdown=STOP_CHAIN,
                                 save_timeout=1800, parallel_suspend=parallel)
    run = stop([big, *others], config)
    assert run.steps(big) == [("suspend", Outcome.SAVE_IN_PROGRESS)]
    assert [args[0] for _, args in run.host.calls if args[-1] == big.uuid] == [
        "managedsave", "domstate"]
    assert ("saving guest g0 failed: timed out after 1800s and was killed; libvirt is "
            "still saving it: not shutting it down or powering it off while its memory "
            "is being written (it stays recorded)") in run.err
    assert "trying" not in run.err and "gave up" not in run.err
    assert all(run.steps(g) == [("suspend", Outcome.SAVED)] for g in others)
    assert run.virsh.liveness_checks == 1 and run.result.status == 1
    assert big.saving_until == 1_000_000.0 + 3000  # libvirt's job goes on


def test_a_save_cut_at_stop_deadline_leaves_the_other_guests_handled() -> None:
    big = SimGuest(uuid(0), "g0", save_seconds=3000)
    others = [SimGuest(uuid(i), f"g{i}", None) for i in range(1, 3)]
    config = dataclasses.replace(Config(), on_shutdown=STOP_CHAIN,
                                 save_timeout=1800, stop_deadline=600, shutdown_timeout=60)
    run = stop([big, *others], config)
    assert run.clock.now() - 1_000_000.0 >= 600
    assert run.steps(big) == [("suspend", Outcome.SAVE_IN_PROGRESS)]
    assert "timed out after 600s and was killed; libvirt is still saving it" in run.err
    for guest in others:  # no time left to save them: the chain goes on, as it says
        assert f"no time left before STOP_DEADLINE to save guest {guest.name}; trying " \
            "shutdown" in run.err
        assert run.outcome(guest) == Outcome.POWERED_OFF and not guest.active
    assert_trying_is_tried(run, [big, *others])
    assert not big.destroyed and "gave up" not in run.err


@pytest.mark.parametrize("parallel", [0, 3])
def test_a_shutdown_request_hung_on_one_guest_fails_that_guest_only(parallel: int) -> None:
    """A tenant's guest agent that never answers keeps ``virsh shutdown`` busy past its
    timeout: that guest goes on to poweroff, the others shut down as usual."""
    guests = [SimGuest(uuid(i), f"g{i}", 2.0) for i in range(4)]
    deaf = guests[1]
    config = shutdown_config(parallel, 300)

    def fault(index: int, args: Sequence[str]) -> Optional[str]:
        return HANG if tuple(args) == ("shutdown", deaf.uuid) else None

    run = stop(guests, config, fault=fault)
    limit = config.query_timeout + AGENT_SHUTDOWN_WAIT
    assert (f"shutdown of guest g1 failed: timed out after {limit:g}s and was killed; "
            "trying poweroff") in run.err
    assert deaf.destroyed and run.steps(deaf) == [("shutdown", Outcome.FAILED),
                                                  ("poweroff", Outcome.POWERED_OFF)]
    for guest in guests:
        if guest is not deaf:
            assert run.steps(guest) == [("shutdown", Outcome.SHUT_OFF)], run.steps(guest)
            assert guest.shut_down
    assert run.virsh.liveness_checks == 1 and "gave up" not in run.err
    assert_trying_is_tried(run, guests)


def test_a_shutdown_answered_after_libvirts_agent_wait_is_no_timeout() -> None:
    """libvirt tries the guest agent first and waits up to 60 s (2 x 5 s to reach it)
    before ACPI: a request answered after that is a request, not a hung libvirtd."""
    guests = [SimGuest(uuid(i), f"g{i}", 2.0) for i in range(2)]

    def fault(index: int, args: Sequence[str]) -> Optional[str]:
        return slow(65) if tuple(args) == ("shutdown", guests[0].uuid) else None

    run = stop(guests, shutdown_config(0, 300, query_timeout=1), fault=fault)
    assert run.err == "" and run.virsh.liveness_checks == 0
    assert all(run.steps(g) == [("shutdown", Outcome.SHUT_OFF)] for g in guests)


def test_a_uri_that_hangs_at_the_first_save_gives_up_its_other_guests_at_once() -> None:
    guests = [SimGuest(uuid(i), f"g{i}") for i in range(4)]
    config = dataclasses.replace(Config(), on_shutdown=STOP_CHAIN,
                                 save_timeout=1800)
    run = stop(guests, config, fault=wedge_from(0))
    assert [args for _, args in run.host.calls] == [("managedsave", guests[0].uuid),
                                                   ("list", "--uuid")]
    assert run.clock.now() - 1_000_000.0 == 1800 + 10  # one SAVE_TIMEOUT + the check
    assert run.virsh.watchers == {}  # no virsh event on a URI given up
    assert run.steps(guests[0]) == [("suspend", Outcome.FAILED)]
    assert all(run.steps(g) == [("suspend", Outcome.GIVEN_UP)] for g in guests[1:])
    assert all(g.active for g in guests)
    assert "saving guest g0 failed: timed out after 1800s and was killed\n" in run.err
    assert ("gave up on default: a call there timed out (virsh managedsave "
            + guests[0].uuid + ": timed out after 1800s and was killed; then virsh list "
            "--uuid: timed out after 10s and was killed)") in run.err
    assert "recorded so that start brings them back: g0, g1, g2, g3" in run.err


# -- item 3: a bug while handling one guest is that guest's alone --------------------


@PROPERTY
@given(data=st.data())
def test_a_bug_on_one_guest_never_stops_the_others(data: st.DataObject) -> None:
    count = data.draw(st.integers(2, 5), label="guests")
    guests = [SimGuest(uuid(i), f"g{i}", data.draw(st.one_of(st.none(), st.floats(0, 30)),
                                                    label=f"g{i} shutdown seconds"))
              for i in range(count)]
    actions = data.draw(st.sampled_from([(Action.SUSPEND,), (Action.SHUTDOWN, Action.POWEROFF),
                                         (Action.SUSPEND, Action.SHUTDOWN, Action.POWEROFF)]))
    config = dataclasses.replace(Config(), on_shutdown=actions, shutdown_timeout=30,
                                 parallel_shutdown=data.draw(st.sampled_from([0, 3])),
                                 parallel_suspend=data.draw(st.sampled_from([0, 3])))
    call = data.draw(st.integers(0, 15), label="call with a bug")
    run = stop(guests, config, fault=lambda index, args: BUG if index == call else None)
    assert "Traceback" not in run.err
    hurt = [g for g in guests if run.outcome(g) == Outcome.INTERNAL_ERROR]
    if len(run.host.calls) > call:
        assert run.result.status == 1
        assert "internal error, please report it: " in run.err
        assert "RuntimeError: injected bug in call" in run.err
        assert len(run.err.splitlines()) <= 2 * count  # one line each, no traceback
    for guest in guests:
        if guest in hurt:  # reported; a bug never escalates to a power-off
            assert run.steps(guest)[-1][1] == Outcome.INTERNAL_ERROR
            continue
        assert run.outcome(guest) in PROTECTED, (guest, run.steps(guest), run.err)
        assert not guest.active, (guest, run.out, run.err)
