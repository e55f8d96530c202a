"""start brings migrated guests home: ``virsh -c PEER migrate ... UUID HOME``, against the
fake virsh in-process on a virtual clock (virtguests.testing.inprocess)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from virtguests import state
from virtguests.model import Departure
from virtguests.testing import FakeHost, run_inprocess
from virtguests.testing.inprocess import VIRTUAL_EPOCH

Make = Callable[..., FakeHost]
HOME, PEER, OTHER = "qemu:///system", "qemu+ssh://peer/system", "qemu+ssh://other/system"
CONFIG = f"URIS={HOME}\nON_BOOT=start\n"


def _host(fake_host: Make, peer_guests: list[dict[str, Any]], config: str = "",
          home_guests: tuple[dict[str, Any], ...] = (), **peer: Any) -> FakeHost:
    return fake_host({"uris": {HOME: {"guests": list(home_guests)},
                               PEER: {"guests": peer_guests, **peer}}}, CONFIG + config)


def _record(host: FakeHost, *names: str, peer: str = PEER) -> list[Departure]:
    away = [Departure(_uuid(host, name), name, HOME, peer) for name in names]
    state.write_migrated(host.state_dir / "virtguests-migrated", away)
    return away


def _uuid(host: FakeHost, name: str) -> str:
    """From the fake's host file (asking its virsh would log a call)."""
    for guests in host.guests_now().values():
        for guest in guests:
            if guest["name"] == name:
                return str(guest["uuid"])
    return "0e4ad7a8-1d1c-4d6b-9b8e-3a2a4b1c0d99"  # on no host


def _where(host: FakeHost) -> dict[str, dict[str, str]]:
    guests = host.guests_now()
    return {uri: {g["name"]: f"{g['state']}/{g['reason']}" for g in guests[uri]}
            for uri in (HOME, PEER)}


def _left(host: FakeHost) -> list[str]:
    return [d.name for d in state.read_migrated(host.state_dir / "virtguests-migrated")[0]]


def _outcomes(host: FakeHost) -> dict[str, list[tuple[str, str]]]:
    doc = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    return {g["name"]: [(s["action"], s["result"]) for s in g["steps"]] for g in doc["guests"]}


def test_start_brings_migrated_guests_home_and_clears_the_record(fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "web", "reason": "migrated", "migrate_seconds": 12},
                             {"name": "db", "reason": "migrated", "migrate_seconds": 3}])
    uuids = {d.name: d.uuid for d in _record(host, "web", "db")}
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err
    assert _where(host) == {HOME: {"web": "running/migrated", "db": "running/migrated"},
                            PEER: {}}
    assert _left(host) == [] and not (host.state_dir / "virtguests-migrated").exists()
    assert "Brought web home from qemu+ssh://peer/system" in run.lines
    assert "Brought db home from qemu+ssh://peer/system" in run.lines
    progress = [ln for ln in run.lines if ln.startswith("Bringing web home from ")]
    assert progress[0] == f"Bringing web home from {PEER}: ..." and len(progress) >= 2
    assert all(ln.endswith("%") or ln.endswith("...") for ln in progress), progress
    migrates = [c for c in host.calls() if "migrate" in c["argv"]]
    assert {tuple(c["argv"][-2:]) for c in migrates} == {(uuids["web"], HOME),
                                                         (uuids["db"], HOME)}
    assert all(c["argv"][c["argv"].index("-c") + 1] == PEER for c in migrates)
    assert _outcomes(host) == {"web": [("migrate", "returned home")],
                               "db": [("migrate", "returned home")]}


def test_at_most_parallel_migrate_guests_come_from_one_peer_at_once(fake_host: Make) -> None:
    host = _host(fake_host, [{"name": f"g{i}", "migrate_seconds": 100} for i in range(4)],
                 "PARALLEL_MIGRATE=2\n")
    _record(host, "g0", "g1", "g2", "g3")
    run, clock = run_inprocess(host, "start")
    assert run.code == 0, run.err
    assert sorted(_where(host)[HOME]) == ["g0", "g1", "g2", "g3"]
    # two rounds of 100 virtual seconds: two at a time, never four, never one
    assert 200 <= clock.now() - VIRTUAL_EPOCH < 300


def test_migrate_return_0_leaves_them_away_and_says_so_once(fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "web"}, {"name": "db"}], "MIGRATE_RETURN=0\n")
    _record(host, "web", "db")
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err
    assert [ln for ln in run.lines if "peer" in ln] == [
        f"Leaving guests on their peers (MIGRATE_RETURN=0): web on {PEER}, db on {PEER}"]
    assert _left(host) == ["web", "db"]
    assert not any("migrate" in c["argv"] for c in host.calls())
    assert _outcomes(host) == {"web": [("migrate", "left on peer")],
                               "db": [("migrate", "left on peer")]}


def test_on_boot_ignore_keeps_the_record(fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "web"}], "ON_BOOT=ignore\n")
    _record(host, "web")
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err
    assert f"Leaving guests on their peers (ON_BOOT=ignore): web on {PEER}" in run.lines
    assert _left(host) == ["web"] and host.calls() == []


def test_gone_from_its_peer_is_reported_and_dropped_home_already_is_dropped(
        fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "there"}],
                 home_guests=({"name": "home"},))
    away = _record(host, "there", "home", "ghost")
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    assert f"Bringing home home from {PEER}: already running at home" in run.lines
    assert (f"virtguests: error: migrated guest ghost ({away[2].uuid}) is no longer on "
            f"{PEER} nor at home; dropped from the migrated record") in run.err.splitlines()
    assert _left(host) == [] and _where(host)[HOME]["there"] == "running/migrated"


def test_an_unreachable_peer_keeps_its_guests_recorded_and_fails(fake_host: Make) -> None:
    host = fake_host({"uris": {HOME: {"guests": []}, PEER: {"guests": [{"name": "web"}],
                                                            "unreachable": True},
                               OTHER: {"guests": [{"name": "db"}]}}}, CONFIG)
    uuid_web = _uuid(host, "web")
    state.write_migrated(host.state_dir / "virtguests-migrated", [
        Departure(uuid_web, "web", HOME, PEER),
        Departure(_uuid(host, "db"), "db", HOME, OTHER)])
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    assert any(ln.startswith(f"virtguests: error: cannot bring web home from {PEER}: cannot reach ")
               and ln.endswith("it stays recorded for the next start")
               for ln in run.err.splitlines()), run.err
    assert _left(host) == ["web"]
    assert f"Brought db home from {OTHER}" in run.lines


def test_a_return_past_migrate_timeout_is_aborted_and_stays_recorded(fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "big", "migrate_seconds": 1000}], "MIGRATE_TIMEOUT=30\n")
    _record(host, "big")
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    assert any(c["argv"][-2:] == ["domjobabort", _uuid(host, "big")]
               for c in host.calls()), host.commands()
    assert (f"virtguests: error: bringing big home from {PEER} failed: aborted: "
            "MIGRATE_TIMEOUT (30 s) reached; it stays recorded for the next start") \
        in run.err.splitlines()
    assert _where(host)[HOME] == {} and _where(host)[PEER]["big"].startswith("running/")
    assert _left(host) == ["big"]
    assert _outcomes(host) == {"big": [("migrate", "failed")]}


def test_dry_run_and_plan_change_nothing(fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "web"}], home_guests=({"name": "home"},))
    away = _record(host, "web", "home")
    run, _ = run_inprocess(host, "--dry-run", "start")
    assert run.code == 0, run.err
    assert f"Bringing home home from {PEER}: already running at home" in run.lines
    assert any(ln.endswith(f"-c {PEER} migrate --live --persistent --undefinesource "
                           f"{away[0].uuid} {HOME}") for ln in run.lines), run.lines
    assert _left(host) == ["web", "home"]
    assert not any("migrate" in c["argv"] for c in host.calls())


def test_a_damaged_record_is_set_aside_reported_and_its_valid_entries_kept(
        fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "web"}])
    path = host.state_dir / "virtguests-migrated"
    path.write_text(json.dumps({"format_version": 1, "guests": [
        {"uuid": _uuid(host, "web"), "name": "web", "home": HOME, "peer": PEER},
        {"uuid": "not-a-uuid", "name": "x", "home": HOME, "peer": PEER}]}, indent=1))
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    assert any(":10: guests[1].uuid: not a UUID" in ln for ln in run.err.splitlines()), run.err
    [aside] = host.state_dir.glob("virtguests-migrated.unreadable-*")
    assert "not-a-uuid" in aside.read_text()
    assert "Brought web home from qemu+ssh://peer/system" in run.lines
    assert _left(host) == []


def test_a_guest_also_in_the_list_file_comes_home_first_then_counts_as_active(
        fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "web"}])
    [away] = _record(host, "web")
    state.write_list(host.state_dir / "libvirt-guests", {HOME: [away.uuid]})
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err
    brought = run.lines.index(f"Brought web home from {PEER}")
    assert run.lines.index("Resuming guest web: already active") > brought
    assert _left(host) == [] and not (host.state_dir / "libvirt-guests").exists()
    assert _outcomes(host) == {"web": [("migrate", "returned home"),
                                       ("start", "already active")]}


def test_plan_start_shows_the_returns_in_text_and_json(fake_host: Make) -> None:
    host = _host(fake_host, [{"name": "web"}], home_guests=({"name": "home"},))
    away = _record(host, "web", "home", "ghost")
    run, _ = run_inprocess(host, "--json", "plan", "start")
    assert run.code == 1  # start would report ghost gone
    returns = json.loads(run.out)["returns"]
    assert [(r["name"], r["note"], r["detail"]) for r in returns] == [
        ("web", None, ""), ("home", "already active", "already running at home"),
        ("ghost", "no longer exists", f"no longer on {PEER} nor at home")]
    assert returns[0]["commands"] == [[str(host.bin / "virsh"), "-c", PEER, "migrate",
                                       "--live", "--persistent", "--undefinesource",
                                       away[0].uuid, HOME]]
    text, _ = run_inprocess(host, "plan", "start")
    assert "Bringing home (the migrated record):" in text.lines
    assert _left(host) == ["web", "home", "ghost"]
    assert not any("migrate" in c["argv"] for c in host.calls())


def test_sigterm_while_a_guest_comes_home_aborts_it_and_keeps_it_recorded(
        fake_host: Make) -> None:
    """A real process and real time: the abort must reach the peer's migration job."""
    host = _host(fake_host, [{"name": "big", "migrate_seconds": 600}])
    _record(host, "big")
    proc = host.spawn("start")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # said just before the migrate call: a race the
        assert first == f"Bringing big home from {PEER}: ...\n"  # code must survive
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 1, err
    assert (f"bringing big home from {PEER} failed: aborted: stop requested; it stays "
            "recorded for the next start") in err
    assert any(c["argv"][-2:] == ["domjobabort", _uuid(host, "big")] for c in host.calls())
    assert _where(host)[HOME] == {} and _where(host)[PEER]["big"].startswith("running/")
    assert _left(host) == ["big"]



def test_a_guest_paused_on_its_peer_comes_home_paused_with_a_warning(fake_host: Make) -> None:
    """libvirt keeps a paused guest paused (its reason too) where it arrives
    (fixtures/qemu-domstate-reason-migrated-paused-back): it is home, so its record goes,
    with a warning naming its state."""
    host = _host(fake_host, [{"name": "p", "state": "paused", "reason": "user",
                              "migrate_seconds": 4}])
    _record(host, "p")
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err
    assert _where(host) == {HOME: {"p": "paused/user"}, PEER: {}}
    assert f"virtguests: warning: guest p came home from {PEER} but is paused (user)" in \
        run.err.splitlines(), run.err
    assert f"Brought p home from {PEER}" in run.lines
    assert _left(host) == []
    assert _outcomes(host) == {"p": [("migrate", "returned home")]}


def test_stop_migrates_a_paused_guest_and_start_brings_it_home_paused(fake_host: Make) -> None:
    """The round trip of a guest paused at home, migrate first in its chain: stop sends it
    to its peer where it stays paused (migrated, exit 0, nothing shut down), start brings
    it home paused (a warning, then its record goes)."""
    host = _host(fake_host, [], f"ON_SHUTDOWN=\"migrate shutdown\"\nMIGRATE_URIS={PEER}\n",
                 home_guests=({"name": "p", "state": "paused", "migrate_seconds": 4},))
    run, _ = run_inprocess(host, "stop")
    assert run.code == 0, run.err
    assert _where(host) == {HOME: {}, PEER: {"p": "paused/user"}}
    assert f"Migrated p to {PEER}" in run.lines
    assert _outcomes(host) == {"p": [("migrate", "migrated")]}
    assert _left(host) == ["p"]
    assert not [c for c in host.calls() if "shutdown" in c["argv"]]
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err
    assert _where(host) == {HOME: {"p": "paused/user"}, PEER: {}}
    assert f"guest p came home from {PEER} but is paused (user)" in run.err, run.err
    assert _left(host) == []
