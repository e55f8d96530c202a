"""The migrate stage of stop against the fake virsh, in-process on a virtual clock.

Plans are built by hand here (target choice is ``plan.choose_targets``'s, tested in
test_plan): each guest's chain and target as a test needs them.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from virtguests import stopping
from virtguests.config import Config
from virtguests.execution import Execution
from virtguests.messages import Messages
from virtguests.model import Action, Departure, Guest, Outcome
from virtguests.plan import GuestStop, StopPlan, UriStop
from virtguests.testing import FakeHost
from virtguests.testing.inprocess import VirtualClock

Make = Callable[..., FakeHost]

HOME, PEER = "qemu:///system", "qemu+ssh://peer/system"
START = 2_000_000.0
MIGRATE_SUSPEND = (Action.MIGRATE, Action.SUSPEND)


@dataclass
class Ran:
    run: Execution
    departures: list[Departure]
    lines: list[str]
    errors: list[str]
    clock: VirtualClock
    host: FakeHost
    uuids: dict[str, str]

    def outcome(self, name: str) -> Outcome:
        return self.run.run_report.guest(HOME, self.uuids[name], name).outcome

    def steps(self, name: str) -> list[tuple[str, str]]:
        return [(str(s.action), str(s.result))
                for s in self.run.run_report.guest(HOME, self.uuids[name], name).steps]

    def where(self, name: str) -> tuple[str, str]:
        """(state/reason at home, on the peer): "" where it is not defined."""
        from virtguests.testing.fakevirsh.state import apply_due_transitions_now

        guests = apply_due_transitions_now(str(self.host.host_file), now=self.clock.now())
        return tuple(",".join(f"{g['state']}/{g['reason']}" for g in guests[uri]  # type: ignore[return-value]
                              if g["name"] == name) for uri in (HOME, PEER))


def host_with(fake_host: Make, *guests: dict[str, Any], peer: Optional[dict[str, Any]] = None
              ) -> FakeHost:
    return fake_host({"uris": {HOME: {"guests": list(guests)},
                               PEER: {"guests": [], **(peer or {})}}})


def execute(host: FakeHost, chains: dict[str, Sequence[Action]], *,
            target: Optional[str] = PEER, cancel_at: Optional[float] = None,
            **config: Any) -> Ran:
    """Run the stop stages over a hand-made plan: each guest of *chains* with its chain
    and *target*; a stop request (as SIGTERM makes it) *cancel_at* virtual seconds in."""
    from virtguests.testing.inprocess import InProcessVirsh, _World

    clock = VirtualClock(START)
    virsh = InProcessVirsh(str(host.bin / "virsh"), world=_World(clock, events=False),
                           environ=host.env())
    out, err = io.StringIO(), io.StringIO()
    messages = Messages(out, err)
    departures: list[Departure] = []
    settings = Config(uris=(HOME,), migrate_uris=(PEER,), **config)
    run = Execution(virsh, settings, messages, clock, lambda: None,
                    departed=departures.append)
    stops = tuple(GuestStop(Guest(host.uuid(name, HOME), name), tuple(chain), 0,
                            target=target if Action.MIGRATE in chain else None)
                  for name, chain in chains.items())
    plan = StopPlan(True, (UriStop(HOME, tuple(s.guest for s in stops), (), stops),), ())
    threads = []
    if cancel_at is not None:
        def cancel() -> None:
            clock.sleep(cancel_at)
            clock.cancel.set()
            virsh.interrupt()

        threads.append(threading.Thread(target=cancel, daemon=True))
        threads[0].start()
    stopping.stop(run, plan)
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    messages.close()
    return Ran(run, departures, out.getvalue().splitlines(), err.getvalue().splitlines(),
               clock, host, {s.guest.name: s.guest.uuid for s in stops})


def test_guests_migrate_with_progress_and_are_recorded(fake_host: Make) -> None:
    host = host_with(fake_host, {"name": "a", "migrate_seconds": 12},
                     {"name": "b", "migrate_seconds": 6})
    ran = execute(host, {"a": MIGRATE_SUSPEND, "b": MIGRATE_SUSPEND}, parallel_migrate=2)
    assert ran.run.status == 0, ran.errors
    assert ran.outcome("a") == ran.outcome("b") == Outcome.MIGRATED
    assert ran.where("a") == ("", "running/migrated") == ran.where("b")
    assert sorted(ran.departures, key=str) == sorted(
        (Departure(ran.uuids[n], n, HOME, PEER) for n in ("a", "b")), key=str)
    progress = [ln for ln in ran.lines if ln.startswith("Migrating a to ")]
    assert progress[0] == f"Migrating a to {PEER}: ..."
    # one line per 5 virtual seconds of the migration, which a loaded machine may see end
    # a little late, never early
    [step] = ran.run.run_report.guest(HOME, ran.uuids["a"], "a").steps
    assert step.seconds >= 12 and 2 <= len(progress) - 1 <= step.seconds // 5
    assert all(ln.endswith("%") or ln.endswith("...") for ln in progress)
    assert f"Migrated a to {PEER}" in ran.lines and f"Migrated b to {PEER}" in ran.lines
    # in parallel: both were in flight at once, so the run took about a's 12 virtual
    # seconds (its end may be seen a little late), not a's + b's 18
    assert ran.clock.now() - START < 15
    assert ran.steps("a") == [("migrate", "migrated")]


def test_parallel_migrate_limits_guests_in_flight(fake_host: Make) -> None:
    host = host_with(fake_host, *({"name": f"g{i}", "migrate_seconds": 10} for i in range(3)))
    ran = execute(host, {f"g{i}": MIGRATE_SUSPEND for i in range(3)}, parallel_migrate=1)
    assert ran.run.status == 0, ran.errors
    assert ran.clock.now() - START >= 30  # one at a time
    assert len(ran.departures) == 3


def test_a_refused_migration_goes_on_to_the_next_step(fake_host: Make) -> None:
    host = host_with(fake_host, {"name": "pinned", "fail_migrate": True},
                     {"name": "free"})
    ran = execute(host, {"pinned": MIGRATE_SUSPEND, "free": MIGRATE_SUSPEND})
    assert ran.run.status == 1  # a failed step, like a failed save
    assert ran.steps("pinned") == [("migrate", "failed"), ("suspend", "saved")]
    assert ran.where("pinned") == ("shutoff/saved", "")
    [failed] = [ln for ln in ran.errors if "Migration of pinned" in ln]
    assert failed.startswith(f"virtguests: error: Migration of pinned to {PEER} failed: error:")
    assert failed.endswith("; trying suspend")
    assert [d.name for d in ran.departures] == ["free"]


def test_a_slow_migration_is_aborted_at_migrate_timeout(fake_host: Make) -> None:
    host = host_with(fake_host, {"name": "busy", "migrate_seconds": 1000})
    ran = execute(host, {"busy": MIGRATE_SUSPEND}, migrate_timeout=30)
    assert ran.steps("busy") == [("migrate", "timed out"), ("suspend", "saved")]
    assert any(c[0] == "domjobabort" for c in host.commands())
    [failed] = [ln for ln in ran.errors if "Migration of busy" in ln]
    assert "not done after 30s (MIGRATE_TIMEOUT); aborted" in failed
    assert failed.endswith("; trying suspend")
    assert ran.where("busy") == ("shutoff/saved", "")
    assert not ran.departures
    assert 30 <= ran.clock.now() - START < 1000


def test_a_hung_migrate_is_killed_and_the_guest_saved(fake_host: Make) -> None:
    """A migrate call that ignores the abort (a hung peer) ends at its own time limit."""
    host = host_with(fake_host, {"name": "g"}, peer={"hang": True})
    ran = execute(host, {"g": MIGRATE_SUSPEND}, migrate_timeout=20)
    assert ran.steps("g") == [("migrate", "timed out"), ("suspend", "saved")]
    assert ran.where("g")[0] == "shutoff/saved"
    assert ran.run.given_up(HOME) is None  # the home URI answered: not its fault
    assert not ran.departures


def test_sigterm_mid_migration_aborts_it_and_the_chain_goes_on(fake_host: Make) -> None:
    host = host_with(fake_host, {"name": "moving", "migrate_seconds": 1000},
                     {"name": "queued", "migrate_seconds": 1000})
    ran = execute(host, {"moving": MIGRATE_SUSPEND, "queued": MIGRATE_SUSPEND},
                  parallel_migrate=1, cancel_at=10)
    assert ran.steps("moving") == [("migrate", "timed out"), ("suspend", "saved")]
    assert ran.where("moving") == ("shutoff/saved", "")
    [failed] = [ln for ln in ran.errors if "Migration of moving" in ln]
    assert "stop requested during the migration; aborted" in failed
    assert failed.endswith("; trying suspend")
    # the queued guest was never started on: interrupted, still running at home
    assert ran.outcome("queued") == Outcome.INTERRUPTED
    assert ran.where("queued") == ("running/booted", "")
    assert ran.clock.now() - START < 1000


def test_a_guest_that_arrived_although_the_call_failed_counts_as_migrated(
        fake_host: Make) -> None:
    host = fake_host({"uris": {HOME: {"guests": [{"name": "g", "migrate_seconds": 2}]},
                               PEER: {"guests": []}},
                      "faults": [{"cmd": "migrate", "action": "slow", "seconds": 5000}]})
    ran = execute(host, {"g": MIGRATE_SUSPEND}, migrate_timeout=30)
    assert ran.where("g") == ("", "running/migrated")
    assert ran.outcome("g") == Outcome.MIGRATED
    assert [d.name for d in ran.departures] == ["g"]
    assert f"Migrated g to {PEER}" in ran.lines
    [step] = ran.run.run_report.guest(HOME, ran.uuids["g"], "g").steps
    assert step.detail.startswith(f"to {PEER}; arrived although the call failed: ")
    assert ran.run.status == 0


def test_a_peer_that_is_gone_sends_the_guest_to_the_next_step(fake_host: Make) -> None:
    host = host_with(fake_host, {"name": "g"}, peer={"unreachable": True})
    ran = execute(host, {"g": (Action.MIGRATE, Action.SHUTDOWN)}, shutdown_timeout=30)
    assert ran.steps("g") == [("migrate", "failed"), ("shutdown", "shut off")]
    assert not ran.departures
    assert ran.run.given_up(HOME) is None


def test_a_chain_without_a_target_goes_on_to_the_next_step(fake_host: Make) -> None:
    """The planner drops migrate when no peer qualifies; a hand-made plan that keeps it
    without a target is never given one here."""
    ran = execute(host_with(fake_host, {"name": "h"}), {"h": MIGRATE_SUSPEND}, target=None)
    assert ran.steps("h") == [("migrate", "skipped"), ("suspend", "saved")]
    assert not ran.departures and ran.run.status == 0


def test_sigterm_mid_migration_then_the_shutdown_step_still_runs(fake_host: Make) -> None:
    """The next step is a shutdown: its waits are not cut short by the stop request."""
    host = host_with(fake_host, {"name": "moving", "migrate_seconds": 1000,
                                 "shutdown_seconds": 20})
    ran = execute(host, {"moving": (Action.MIGRATE, Action.SHUTDOWN, Action.POWEROFF)},
                  cancel_at=10, shutdown_timeout=60)
    assert ran.steps("moving") == [("migrate", "timed out"), ("shutdown", "shut off")]
    assert ran.where("moving") == ("shutoff/shutdown", "")
    assert "Shutdown of guest moving complete." in ran.lines
    # polled as without a stop request (a 20 s shutdown: about 140 checks, fast at first),
    # not spun: a wait cut short by the request would check without end
    checks = [c for c in host.commands() if c[:1] == ["list"]]
    assert len(checks) < 200, len(checks)


def test_a_paused_guest_arrives_paused_and_counts_as_migrated(fake_host: Make) -> None:
    """libvirt keeps a paused guest paused where it arrives, its reason kept
    (fixtures/qemu-domstate-reason-migrated-paused): it left home and is on its peer as it
    was, so it is migrated, not "not seen running there"; the chain stops there."""
    host = host_with(fake_host, {"name": "p", "state": "paused", "migrate_seconds": 4})
    ran = execute(host, {"p": (Action.MIGRATE, Action.SHUTDOWN)})
    assert ran.run.status == 0, ran.errors
    assert ran.outcome("p") == Outcome.MIGRATED
    assert ran.where("p") == ("", "paused/user")
    assert ran.departures == [Departure(ran.uuids["p"], "p", HOME, PEER)]
    assert f"Migrated p to {PEER}" in ran.lines and ran.errors == []
    assert ran.steps("p") == [("migrate", "migrated")]


def test_migrations_ring_the_watches_but_only_stopped_guests_count_as_shut_down(
        fake_host: Make) -> None:
    """The shutdown waits of both hosts with their event watches on while a guest leaves
    home for the peer (someone else's migration, the recorded event lines on both: see
    test_inprocess): the lines only ring the bell, so the guest that left is not counted
    as shut down at home, the one arriving is not taken for a guest of the peer's wait,
    and each waited guest counts as shut off only once it has stopped."""
    from virtguests import commands
    from virtguests.testing.inprocess import InProcessVirsh, _World

    host = fake_host({"uris": {
        HOME: {"guests": [{"name": "stays", "shutdown_seconds": 30},
                          {"name": "leaves", "migrate_seconds": 10}]},
        PEER: {"guests": [{"name": "there", "shutdown_seconds": 20}]}}})
    clock = VirtualClock(START)
    virsh = InProcessVirsh(str(host.bin / "virsh"), world=_World(clock, events=True),
                           environ=host.env())
    out, err = io.StringIO(), io.StringIO()
    messages = Messages(out, err)
    run = Execution(virsh, Config(uris=(HOME, PEER)), messages, clock, lambda: None)
    stops = {uri: GuestStop(Guest(host.uuid(name, uri), name), (Action.SHUTDOWN,), 0)
             for uri, name in ((HOME, "stays"), (PEER, "there"))}
    plan = StopPlan(True, tuple(UriStop(uri, (s.guest,), (), (s,))
                                for uri, s in stops.items()), ())
    migrated: dict[str, Any] = {}
    leaves = host.uuid("leaves", HOME)  # asked now: the harness asks at real time

    def migrate() -> None:
        clock.sleep(2)  # the shutdown requests are sent, the waits watching
        migrated["result"] = virsh.run(HOME, commands.migrate(
            leaves, PEER, ("--live", "--persistent", "--undefinesource")), timeout=300)

    mover = threading.Thread(target=migrate, daemon=True)
    mover.start()
    stopping.stop(run, plan)
    mover.join(60)
    assert not mover.is_alive()
    messages.close()
    assert migrated["result"].exit_code == 0
    lines = out.getvalue().splitlines()
    assert run.status == 0, err.getvalue()
    assert sorted(ln for ln in lines if ln.startswith("Shutdown of guest")) == [
        "Shutdown of guest stays complete.", "Shutdown of guest there complete."], lines
    for uri, name, seconds in ((HOME, "stays", 30), (PEER, "there", 20)):
        guest = run.run_report.guest(uri, stops[uri].guest.uuid, name)
        assert guest.outcome == Outcome.SHUT_OFF
        [step] = guest.steps
        assert step.seconds >= seconds, (name, step, lines)
    assert "leaves" not in out.getvalue() + err.getvalue()
    guests = host.guests_now()
    assert [(g["name"], g["state"], g["reason"]) for g in guests[PEER]] == [
        ("there", "shutoff", "shutdown"), ("leaves", "running", "migrated")]
    assert [g["name"] for g in guests[HOME]] == ["stays"]
