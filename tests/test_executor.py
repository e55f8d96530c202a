"""Waiting and timeouts on a virtual clock: the production loops, finishing instantly.

virtguests and the fake virsh run in this process (virtguests.testing.inprocess) on one
virtual clock that jumps as soon as every thread waits, so a guest that takes
12 s to save or ignores a 300 s shutdown timeout costs no real time here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from virtguests.testing import FakeHost, run_inprocess

Make = Callable[..., FakeHost]


def guests(*items: dict[str, Any]) -> dict[str, Any]:
    return {"uris": {"default": {"guests": list(items)}}}


def steps(host: FakeHost) -> dict[str, list[tuple[str, str, float]]]:
    """Each guest's steps in the last run's report: (action, result, virtual seconds)."""
    doc = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    return {g["name"]: [(s["action"], s["result"], s["seconds"]) for s in g["steps"]]
            for g in doc["guests"]}


def test_long_save_prints_progress_every_5_seconds(fake_host: Make) -> None:
    host = fake_host(guests({"name": "big", "save_seconds": 12}))
    run, _ = run_inprocess(host, "stop")
    assert run.code == 0, run.err
    progress = [ln for ln in run.lines if ln.startswith("Suspending big: ")]
    assert progress[0] == "Suspending big: ..." and progress[-1] == "Suspending big: done"
    middle = progress[1:-1]
    assert all(re.fullmatch(r"Suspending big: (\d+(\.\d+)? [KMGT]?i?B|\.\.\.)", ln)
               for ln in middle), middle
    # One line (and one domjobinfo) per 5 virtual seconds of the save: the save ends when
    # the simulated guest sees the virtual clock reach 12 s, which a loaded machine may
    # notice a little late, never early.
    [(action, result, seconds)] = steps(host)["big"]
    assert (action, result) == ("suspend", "saved") and seconds >= 12
    assert 2 <= len(middle) <= seconds // 5
    assert sum(1 for c in host.commands() if c[0] == "domjobinfo") == len(middle)


def test_serial_shutdown_timeout_counts_down_and_does_not_fail(fake_host: Make) -> None:
    host = fake_host(guests({"name": "stubborn", "ignore_shutdown": True},
                            {"name": "quick", "shutdown_seconds": 2}),
                     "ON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=30\n")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 0  # as in the reference, a serial timeout is not an error
    [(action, result, virtual_seconds)] = steps(host)["stubborn"]
    assert (action, result) == ("shutdown", "timed out") and 30 <= virtual_seconds < 31
    waits = [ln for ln in run.lines if ln.startswith("Waiting for guest stubborn")]
    assert waits == [f"Waiting for guest stubborn to shut down, {n} seconds left"
                     for n in (25, 20, 15, 10, 5)]
    assert "Shutdown of guest stubborn failed to complete in time." in run.lines
    assert "Shutdown of guest quick complete." in run.lines


def test_no_timeout_waits_without_countdown(fake_host: Make) -> None:
    host = fake_host(guests({"name": "slow", "shutdown_seconds": 11}),
                     "ON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=0\n")
    run, _ = run_inprocess(host, "stop")
    assert [ln for ln in run.lines if ln.startswith("Waiting")] == [
        "Waiting for guest slow to shut down", "Waiting for guest slow to shut down"]
    assert run.lines[-1] == "Shutdown of guest slow complete."


def test_parallel_timeout_is_per_uri_and_queued_guests_still_get_a_request(
        fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"s{i}", "ignore_shutdown": True} for i in range(3)),
                            {"name": "queued", "ignore_shutdown": True}),
                     "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=3\nSHUTDOWN_TIMEOUT=20\n")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    assert "Waiting for 4 guests to shut down, 15 seconds left" in run.lines
    assert run.lines.count("Timeout expired while shutting down domains") == 1
    # the reference never asks the queued guest to shut down; we do
    assert "Starting shutdown on guest: queued" in run.lines
    assert ["shutdown", host.uuid("queued")] in host.commands()


def test_parallel_timeout_escalates_to_poweroff(fake_host: Make) -> None:
    host = fake_host(guests({"name": "hung", "ignore_shutdown": True},
                            {"name": "fine", "shutdown_seconds": 3}),
                     'ON_SHUTDOWN="shutdown poweroff"\nPARALLEL_SHUTDOWN=4\n'
                     "SHUTDOWN_TIMEOUT=10\n")
    run, _ = run_inprocess(host, "stop")
    assert "Shutdown of guest fine complete." in run.lines
    assert "Powering off guest hung: done" in run.lines
    assert host.active() == set()


def test_waiting_is_woken_by_lifecycle_events_not_by_polling(fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"g{i}", "shutdown_seconds": 2 + 2 * i}
                              for i in range(4))),
                     "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=4\n")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 0
    commands = host.commands()
    assert ["event", "--loop", "--event", "lifecycle"] in commands
    polls = [c for c in commands if c == ["list", "--uuid"]]
    # fast polls until the stream reports its first stop (2 s), then only a safety net:
    # polling alone would make about 90 calls for this 8 s wait
    assert len(polls) < 55, len(polls)
    assert [ln for ln in run.lines if ln.endswith("complete.")] == [
        f"Shutdown of guest g{i} complete." for i in range(4)]
    assert not any(c[0] in ("domid", "domname", "domstate") for c in commands)


def test_without_events_it_polls_one_virsh_call_per_uri_per_tick(fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"g{i}", "shutdown_seconds": 2} for i in range(6))),
                     "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=6\n")
    run, clock = run_inprocess(host, "stop", events=False)  # an old virsh without `event`
    assert run.code == 0
    polls = [c for c in host.commands() if c == ["list", "--uuid"]]
    assert len(polls) == len(clock.slept)  # every sleep here is one tick of the wait loop
    assert run.lines.count("Shutdown of guest g5 complete.") == 1


def test_start_delay_spaces_starts_but_not_before_the_first(fake_host: Make) -> None:
    host = fake_host(guests({"name": "a"}, {"name": "b"}, {"name": "c"}),
                     "START_DELAY=7\n")
    host.run("stop")
    host.virsh("start", "b")
    run, clock = run_inprocess(host, "start")
    assert run.code == 0
    assert [s for s in clock.slept if s == 7] == [7]  # a, (b already active), c
    assert run.lines[1:] == ["Resuming guest a: done", "Resuming guest b: already active",
                             "Resuming guest c: done"]


def test_stop_deadline_budgets_serial_timeouts(fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"h{i}", "ignore_shutdown": True} for i in range(3))),
                     'ON_SHUTDOWN="shutdown poweroff"\nSHUTDOWN_TIMEOUT=300\n'
                     "STOP_DEADLINE=60\n")
    run, clock = run_inprocess(host, "stop")
    assert run.lines.count("Powering off guest h0: done") == 1
    assert sum(clock.slept) <= 61
    assert host.active() == set()
    # each guest got its share of the 60 s (60/3, then what was left / 2, then the rest),
    # less whatever virtual time its shutdown request took
    shares = [steps(host)[f"h{i}"][0] for i in range(3)]
    assert all(action == "shutdown" and result == "timed out" for action, result, _ in shares)
    assert all(18 <= virtual <= 20.5 for _, _, virtual in shares), shares


def test_a_bug_on_one_uri_fails_the_run_but_not_the_other_uris() -> None:
    import io

    from virtguests.clock import Clock
    from virtguests.concurrently import run_all
    from virtguests.config import Config
    from virtguests.execution import Execution
    from virtguests.messages import Messages
    from virtguests.virsh import Virsh

    out, err = io.StringIO(), io.StringIO()
    messages = Messages(out, err)
    run = Execution(Virsh("virsh"), Config(), messages, Clock(), lambda: None)
    done: list[str] = []

    def broken() -> None:
        raise KeyError("surprise")

    run_all([run.guarded("stopping one URI", broken),
             run.guarded("stopping another", lambda: done.append("other URI"))], 2)
    messages.close()
    assert done == ["other URI"]
    assert run.status == 1
    assert err.getvalue() == ("virtguests: error: internal error, please report it: "
                              "stopping one URI: KeyError: 'surprise' "
                              "(run with -v for the traceback)\n")  # one line


def test_a_bug_past_the_stages_guards_fails_the_run_and_is_a_result() -> None:
    """The executor reports its own bugs; stop and start always return their result."""
    import io

    from virtguests.clock import Clock
    from virtguests.config import Config
    from virtguests.executor import Executed, Executor
    from virtguests.messages import Messages
    from virtguests.virsh import Virsh

    class Broken:
        @property
        def uris(self) -> list[object]:
            raise KeyError("surprise")

    for command, verb in (("stop", "stopping"), ("start", "starting")):
        out, err = io.StringIO(), io.StringIO()
        messages = Messages(out, err)
        executor = Executor(Virsh("virsh"), Config(), messages, Clock())
        result = getattr(executor, command)(Broken())
        messages.close()
        assert result == Executed(1, {})
        assert err.getvalue() == ("virtguests: error: internal error, please report it: "
                                  f"{verb} the guests: KeyError: 'surprise' "
                                  "(run with -v for the traceback)\n")


def test_doorbell_only_rings_whatever_a_line_says() -> None:
    """Event lines name guests, and tenants choose names: a line decides nothing."""
    from virtguests.doorbell import Doorbell
    from virtguests.virsh import VirshError

    class NoEvents:
        def watch(self, *args: object) -> None:
            raise VirshError(["virsh", "event"], "not available")

    bell = Doorbell(NoEvents(), "default")  # type: ignore[arg-type]
    assert bell.watch is None
    for line in ("event 'lifecycle' for domain 'db main': Stopped Shutdown\n",
                 "event 'lifecycle' for domain 'web': Stopped': Started Booted\n", "garbage"):
        bell.rung.clear()
        bell._line(line)
        assert bell.rung.is_set()
        assert not bell.proven  # only a UUID listing after a ring can prove the stream
    assert not hasattr(bell, "take_stopped")
