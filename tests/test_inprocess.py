"""The jumping virtual clock of virtguests.testing.inprocess: it moves only when every
thread waits."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from virtguests.testing import FakeHost, VirtualClock, run_inprocess
from virtguests.testing.inprocess import VIRTUAL_EPOCH

Make = Callable[..., FakeHost]

START = 1_000_000.0


def run_threads(*targets: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    return threads


def joined(threads: list[threading.Thread]) -> bool:
    for thread in threads:
        thread.join(30)
    return not any(thread.is_alive() for thread in threads)


def test_sleeping_threads_wake_in_order_of_their_virtual_deadlines() -> None:
    clock = VirtualClock(START)
    woke: list[tuple[str, float]] = []
    lock = threading.Lock()

    def sleeper(name: str, seconds: float) -> None:
        assert clock.sleep(seconds)
        with lock:
            woke.append((name, clock.now() - START))

    threads = run_threads(lambda: sleeper("long", 300), lambda: sleeper("short", 100))
    assert joined(threads)
    assert woke == [("short", 100.0), ("long", 300.0)]
    assert clock.jumps == 2 and clock.stalls == 0


def test_the_clock_stays_while_a_thread_is_running() -> None:
    clock = VirtualClock(START)
    seen: list[float] = []

    def busy() -> None:
        until = time.monotonic() + 0.2  # real work, no clock call, longer than QUIET
        while time.monotonic() < until:
            pass
        seen.append(clock.now())

    threads = run_threads(busy)
    assert clock.sleep(10)
    assert joined(threads)
    assert seen == [START]  # the sleep could only end once the worker had finished
    assert clock.now() == START + 10 and clock.stalls == 0


def test_a_thread_blocked_on_another_does_not_hold_the_clock() -> None:
    clock = VirtualClock(START)
    release = threading.Event()
    seen: list[float] = []

    def blocked() -> None:
        release.wait(30)
        seen.append(clock.now())

    threads = run_threads(blocked)
    assert clock.sleep(5)  # the worker waits for us: time may pass
    release.set()
    assert joined(threads)
    assert seen == [START + 5] and clock.stalls == 0


def test_an_event_set_by_a_thread_ends_a_wait_before_its_time() -> None:
    clock = VirtualClock(START)
    done = threading.Event()

    def worker() -> None:
        assert clock.sleep(3)
        done.set()

    threads = run_threads(worker)
    assert clock.wait(done, 60)
    assert joined(threads)
    assert clock.now() == START + 3
    assert clock.slept == [3.0]  # the worker's sleep; the wait did not time out


def twin_hosts(tmp_path: Path, host: dict[str, Any], config: str) -> tuple[FakeHost, FakeHost]:
    return (FakeHost(tmp_path / "process", host, config),
            FakeHost(tmp_path / "inprocess", host, config))


def calls(host: FakeHost) -> set[tuple[str, ...]]:
    return {tuple(argv) for argv in host.commands()}


def three_guests(*faults: dict[str, Any]) -> dict[str, Any]:
    host: dict[str, Any] = {"uris": {"default": {"guests": [
        {"name": "a"}, {"name": "b", "state": "paused"}, {"name": "c", "state": "shutoff"}]}}}
    if faults:
        host["faults"] = list(faults)
    return host


@pytest.mark.parametrize(("command", "host", "config"), [
    ("stop", three_guests(), ""),
    ("stop", three_guests({"cmd": "managedsave", "guest": "a", "action": "fail",
                           "error": "internal"}), ""),
    # a shuts off long before b: a process run's two requests are two fake processes
    # started at once, dispatched a second or more apart under load (b's first), and
    # it must still see a first
    ("stop", {"uris": {"default": {"guests": [{"name": "a", "shutdown_seconds": 0.1},
                                              {"name": "b", "shutdown_seconds": 3}]}},
              "faults": [{"cmd": "shutdown", "guest": "a", "action": "garbage"}]},
     "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=2\nSHUTDOWN_TIMEOUT=20\n"),
    ("gueststatus", three_guests({"cmd": "list", "options": ["uuid"], "action": "garbage",
                                  "output": "not-uuid"}), ""),
    ("gueststatus", three_guests({"cmd": "list", "options": ["uuid"], "nth": 1,
                                  "action": "fail"}), ""),
], ids=["stop", "save-fails", "garbage-shutdown", "garbage-listing", "listing-fails"])
def test_in_process_runs_say_and_call_what_a_process_run_does(
        tmp_path: Path, command: str, host: dict[str, Any], config: str) -> None:
    process, inprocess = twin_hosts(tmp_path, host, config)
    expected = process.run(command)
    run, clock = run_inprocess(inprocess, command)
    assert (run.code, run.lines, run.err) == (expected.code, expected.lines, expected.err)
    # the same calls; how often the wait loop polls depends on when events arrive
    assert calls(inprocess) == calls(process)
    assert inprocess.guests_now() == process.guests_now()
    assert clock.stalls == 0


def test_a_hung_call_is_killed_at_its_timeout_in_virtual_time(fake_host: Make) -> None:
    host = fake_host(three_guests({"cmd": "list", "nth": 1, "action": "hang"}),
                     "QUERY_TIMEOUT=40\n")
    run, clock = run_inprocess(host, "stop")
    assert run.code != 0
    assert "timed out after 40s and was killed" in run.out + run.err
    assert clock.now() - START >= 40
    assert host.commands() == []  # the listing hung and was killed: the fake logs nothing


def test_a_killed_call_is_logged_only_when_asked(fake_host: Make) -> None:
    host = fake_host(three_guests({"cmd": "list", "nth": 1, "action": "hang"}),
                     "QUERY_TIMEOUT=40\n")
    run, _ = run_inprocess(host, "gueststatus", log_killed=True)
    assert run.code != 0
    assert [(call["argv"], call["exit"], call["virtual_start"] - START)
            for call in host.calls()] == [(["list"], None, 0.0)]


def test_a_signal_fault_is_refused_in_process(fake_host: Make) -> None:
    host = fake_host(three_guests({"cmd": "managedsave", "action": "signal"}))
    run, _ = run_inprocess(host, "stop")
    assert run.code != 0
    assert "would signal the test process" in run.out + run.err


def test_a_run_for_another_virsh_is_refused_not_ignored(fake_host: Make, tmp_path: Path) -> None:
    host = fake_host(three_guests())
    wrapper = tmp_path / "wrapper-virsh"
    wrapper.write_text(f"#!/bin/sh\nexec {host.bin / 'virsh'} \"$@\"\n")
    wrapper.chmod(0o755)
    with pytest.raises(ValueError, match="wrapper-virsh"):
        run_inprocess(host, "--virsh", str(wrapper), "stop")
    assert host.commands() == []
    assert run_inprocess(host, "--virsh", str(host.bin / "virsh"), "stop")[0].code == 0


def test_a_second_run_goes_on_from_the_virtual_time_the_first_left(tmp_path: Path) -> None:
    """Found in review: each run started the virtual clock at the same moment again, so
    a save or shutdown still under way from the first run went back in time."""
    host = FakeHost(tmp_path, {"uris": {"default": {"guests": [
        {"name": "g", "shutdown_seconds": 40}]}}}, "ON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=5\n")
    first, clock = run_inprocess(host, "stop")
    left_at = clock.now()
    assert left_at > VIRTUAL_EPOCH, first
    second, again = run_inprocess(host, "status")
    assert again.now() >= left_at, (left_at, again.now(), second)


# -- a migration in virtual time -------------------------------------------------------

HOME, PEER = "qemu:///system", "qemu+ssh://peer/system"


def _migrating_host(fake_host: Make, seconds: float) -> FakeHost:
    return fake_host({"uris": {HOME: {"guests": [{"name": "g", "migrate_seconds": seconds}]},
                               PEER: {"guests": []}}})


def _runner(host: FakeHost, clock: VirtualClock) -> Any:
    from virtguests.testing.inprocess import InProcessVirsh, _World

    return InProcessVirsh(str(host.bin / "virsh"), world=_World(clock, events=False),
                          environ=host.env())


def _where(host: FakeHost, clock: VirtualClock) -> tuple[str, str]:
    from virtguests.testing.fakevirsh.state import apply_due_transitions_now

    guests = apply_due_transitions_now(str(host.host_file), now=clock.now())
    return tuple(",".join(f"{g['state']}/{g['reason']}" for g in guests[uri])  # type: ignore[return-value]
                 for uri in (HOME, PEER))


def test_a_migration_takes_its_virtual_time(fake_host: Make) -> None:
    from virtguests import commands

    host = _migrating_host(fake_host, 100)
    clock = VirtualClock(START)
    virsh = _runner(host, clock)
    uuid = host.uuid("g", HOME)
    result = virsh.run(HOME, commands.migrate(uuid, PEER, ("--live", "--undefinesource")),
                       timeout=300)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "\n", "")
    assert 100 <= clock.now() - START <= 101
    assert _where(host, clock) == ("", "running/migrated")


def test_a_migration_killed_at_its_timeout_is_cancelled(fake_host: Make) -> None:
    """MIGRATE_TIMEOUT's kill: libvirt cancels a migration whose client went away."""
    from virtguests import commands
    from virtguests.virsh import VirshError

    host = _migrating_host(fake_host, 100)
    clock = VirtualClock(START)
    virsh = _runner(host, clock)
    uuid = host.uuid("g", HOME)
    with pytest.raises(VirshError) as killed:
        virsh.run(HOME, commands.migrate(uuid, PEER, ("--live",)), timeout=30)
    assert killed.value.timed_out
    assert clock.now() - START == pytest.approx(30)
    clock_then = clock.now()
    assert _where(host, clock) == ("running/booted", "")
    assert clock.now() == clock_then


def test_an_abort_from_another_thread_ends_the_migration_soon(fake_host: Make) -> None:
    from virtguests import commands, query
    from virtguests.config import Config

    host = _migrating_host(fake_host, 1000)
    clock = VirtualClock(START)
    virsh = _runner(host, clock)
    uuid = host.uuid("g", HOME)
    results: dict[str, Any] = {}

    def migrate() -> None:
        results["migrated"] = virsh.run(HOME, commands.migrate(uuid, PEER, ("--live",)),
                                        timeout=2000, check=False)

    def abort() -> None:
        for _ in range(100):  # until the migration shows (however late its thread starts)
            clock.sleep(1)
            results["percent"] = query.job_percent(virsh, HOME, uuid, Config())
            if results["percent"] is not None:
                break
        results["at"] = clock.now()
        results["aborted"] = query.abort_job(virsh, HOME, uuid, Config())

    assert joined(run_threads(migrate, abort))
    assert results["aborted"] is True and 0 <= results["percent"] < 100
    migrated = results["migrated"]
    assert migrated.exit_code == 1 and "canceled by client" in migrated.stderr
    assert clock.now() - results["at"] <= 1  # not at the migration's own end, 1000 s on
    assert _where(host, clock) == ("running/booted", "")


def test_the_in_process_watch_prints_a_migration_as_recorded(fake_host: Make) -> None:
    """The in-process event watch prints what the fake's own event loop prints: the
    recorded lines of a migration on both URIs (fixtures/qemu-event-migrate-home and
    -peer), not Stopped Shutdown / Started Booted."""
    from virtguests import commands
    from virtguests.testing import fixtures_dir
    from virtguests.testing.inprocess import InProcessVirsh, _World
    from virtguests.testing.recordings import load_yaml

    host = _migrating_host(fake_host, 10)
    clock = VirtualClock(START)
    virsh = InProcessVirsh(str(host.bin / "virsh"), world=_World(clock, events=True),
                           environ=host.env())
    lines: dict[str, list[str]] = {HOME: [], PEER: []}
    watches = [virsh.watch(uri, commands.lifecycle_events(), lines[uri].append)
               for uri in (HOME, PEER)]
    uuid = host.uuid("g", HOME)
    result = virsh.run(HOME, commands.migrate(uuid, PEER, ("--live", "--persistent",
                                                           "--undefinesource")), timeout=300)
    assert result.exit_code == 0, result.stderr
    for watch in watches:
        watch.look()
        watch.close()

    def recorded(side: str) -> list[str]:
        doc = load_yaml(os.path.join(fixtures_dir(), f"qemu-event-migrate-{side}.yaml"))
        name = doc["subjects"][0]["name"]
        return [line.replace(f"'{name}'", "'g'") for line in doc["stdout"].splitlines(True)
                if line.startswith("event 'lifecycle'")]

    assert lines == {HOME: recorded("home"), PEER: recorded("peer")}
