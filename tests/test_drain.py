"""stop with migrate in its chain, the migrated record, and ``drain``: whole runs of
virtguests against the in-process fake on a virtual clock.

Target choice is plan's (tests/test_plan_targets.py); here ``plan.plan_stop`` is
replaced by one that sends every guest whose chain has migrate to the first
MIGRATE_URIS peer, so these tests see only what the stop flow does with a target.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtguests import plan, state
from virtguests.config import Config
from virtguests.model import Action, Departure, UriView
from virtguests.testing import FakeHost, run_inprocess

Make = Callable[..., FakeHost]

HOME, PEER = "qemu:///system", "qemu+ssh://peer/system"


def _first_peer_plan(config: Config, views: Sequence[UriView],
                     earlier: Optional[Any] = None, *args: Any, **kwargs: Any
                     ) -> plan.StopPlan:
    """Every running guest gets ON_SHUTDOWN's chain, migrate's target the first peer."""
    uris = []
    for view in views:
        if not view.reachable:
            continue
        running = tuple(g for g in view.guests if g.active)
        stops = []
        for guest in running:
            chain = config.on_shutdown
            target = config.migrate_uris[0] if Action.MIGRATE in chain else None
            stops.append(plan.GuestStop(guest, chain, config.shutdown_timeout, 0,
                                        guest.persistent, target=target))
        uris.append(plan.UriStop(view.uri, running, (), tuple(stops)))
    return plan.StopPlan(config.suspending, tuple(uris),
                         tuple(v for v in views if not v.reachable), dict(earlier or {}))


@pytest.fixture(autouse=True)
def _targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "plan_stop", _first_peer_plan)


CONFIG = f"URIS={HOME}\nMIGRATE_URIS={PEER}\nON_SHUTDOWN=\"migrate suspend\"\n"


def two_hosts(fake_host: Make, *guests: dict[str, Any], config: str = CONFIG,
              peer: Optional[dict[str, Any]] = None) -> FakeHost:
    return fake_host({"uris": {HOME: {"guests": list(guests)},
                               PEER: {"guests": [], **(peer or {})}}}, config)


def migrated(host: FakeHost) -> list[Departure]:
    departures, problems = state.read_migrated(host.state_dir / "virtguests-migrated")
    assert not problems
    return departures


def listed(host: FakeHost) -> dict[str, list[str]]:
    entries, bad = state.read_list(host.state_dir / "libvirt-guests")
    assert not bad
    return entries


def test_stop_migrates_records_and_lists_only_saved_guests(fake_host: Make) -> None:
    host = two_hosts(fake_host, {"name": "mover"}, {"name": "pinned", "fail_migrate": True})
    host_metrics = host.root / "metrics.prom"
    host.set_config(CONFIG + f"METRICS_FILE={host_metrics}\n")
    mover = host.uuid("mover", HOME)  # asked before: it is no longer there after
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1, run.err  # a failed migration is a failed step, like a failed save
    assert f"Migrated mover to {PEER}" in run.lines
    assert f"Migration of pinned to {PEER} failed" in run.err
    assert migrated(host) == [Departure(mover, "mover", HOME, PEER)]
    assert listed(host) == {HOME: [host.uuid("pinned", HOME)]}
    report = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    outcomes = {g["name"]: g["outcome"] for g in report["guests"]}
    assert outcomes == {"mover": "migrated", "pinned": "saved"}
    shown, _ = run_inprocess(host, "report")
    assert any(ln.split()[:1] == ["mover"] and "migrated" in ln for ln in shown.lines)
    assert f"Away from home: mover ({mover}) runs on {PEER}, home {HOME}" in shown.lines
    metrics = [ln for ln in host_metrics.read_text().splitlines()
               if ln.startswith("virtguests_last_run_guests{") and 'outcome="migrated"' in ln]
    assert {ln.split('uri="')[1].split('"')[0]: ln.rsplit(" ", 1)[1] for ln in metrics} \
        == {HOME: "1", PEER: "0"}, metrics  # the peer: asked where the guest is


def test_a_damaged_record_is_set_aside_and_its_guests_kept(fake_host: Make) -> None:
    host = two_hosts(fake_host, {"name": "g"})
    record = host.state_dir / "virtguests-migrated"
    host.state_dir.mkdir(parents=True, exist_ok=True)
    away = Departure("0f1e7a5e-0000-4000-8000-000000000003", "old", HOME, PEER)
    record.write_text(json.dumps({"format_version": 1, "guests": [
        {"uuid": away.uuid, "name": "old", "home": HOME, "peer": PEER},
        {"uuid": "not-a-uuid", "name": "bad", "home": HOME, "peer": PEER}]}, indent=1))
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    assert f"{record}:" in run.err and "not a UUID" in run.err
    aside = [p for p in host.state_dir.iterdir() if p.name.startswith("virtguests-migrated.")]
    assert len(aside) == 1 and "not-a-uuid" in aside[0].read_text()
    assert [d.name for d in migrated(host)] == ["old", "g"]


def test_drain_migrates_and_stops_nothing_else(fake_host: Make) -> None:
    host = two_hosts(fake_host, {"name": "a"}, {"name": "b", "fail_migrate": True})
    host.state_dir.mkdir(parents=True, exist_ok=True)
    marker = host.state_dir / "libvirt-guests.started"
    marker.touch()
    run, _ = run_inprocess(host, "drain")
    assert run.code == 1, run.err  # b stayed: the host is not drained
    assert f"Migrating guests on {HOME} URI..." in run.lines
    assert "drain: not evacuated: b" in run.err
    assert host.active(HOME) == {"b"}
    assert [d.name for d in migrated(host)] == ["a"]
    assert listed(host) == {}  # nothing was saved
    assert marker.exists()
    assert not any(c[0] == "managedsave" for c in host.commands())


def test_drain_with_fallback_saves_what_cannot_leave(fake_host: Make) -> None:
    host = two_hosts(fake_host, {"name": "a"}, {"name": "b", "fail_migrate": True})
    run, _ = run_inprocess(host, "drain", "--fallback")
    assert run.code == 1, run.err  # the failed migration, as in stop
    assert "not evacuated" not in run.err
    assert host.active(HOME) == set()
    assert listed(host) == {HOME: [host.uuid("b", HOME)]}
    assert [d.name for d in migrated(host)] == ["a"]


def test_drain_to_replaces_migrate_uris(fake_host: Make) -> None:
    other = "qemu+ssh://other/system"
    host = fake_host({"uris": {HOME: {"guests": [{"name": "a"}]}, PEER: {"guests": []},
                               other: {"guests": []}}}, CONFIG)
    uuid = host.uuid("a", HOME)
    run, _ = run_inprocess(host, "drain", "--to", other)
    assert run.code == 0, run.err
    assert migrated(host) == [Departure(uuid, "a", HOME, other)]


def test_drain_without_peers_is_a_config_error(fake_host: Make) -> None:
    host = two_hosts(fake_host, {"name": "a"}, config=f"URIS={HOME}\n")
    run, _ = run_inprocess(host, "drain")
    assert run.code == 6 and "no peer to migrate to" in run.err
    assert host.active(HOME) == {"a"}


@pytest.mark.parametrize("argv", [["stop", "--to", PEER], ["status", "--fallback"],
                                  ["drain", "--to", "-c"], ["drain", "--to", "a b"]])
def test_drain_options_are_drains_and_checked(fake_host: Make, argv: list[str]) -> None:
    host = two_hosts(fake_host, {"name": "a"})
    run, _ = run_inprocess(host, *argv)
    assert run.code == 2, run.err


# -- the record never loses a guest that is away ---------------------------------------

GUESTS = [f"0f1e7a5e-0000-4000-8000-00000000000{i}" for i in range(4)]
PEERS = ("qemu+ssh://p1/system", "qemu+ssh://p2/system")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["left", "home", "saved", "crash"]),
                          st.integers(0, 3), st.integers(0, 1)), max_size=12))
def test_any_sequence_of_stop_outcomes_keeps_every_departed_guest(
        tmp_path_factory: pytest.TempPathFactory,
        events: list[tuple[str, int, int]]) -> None:
    """Runs of MigratedRecord (each a stop): a guest leaves (its entry written), is seen
    running at home (dropped), is saved (no change), or the run dies mid-way (a new
    record object reads the file).  The file always names exactly the guests away."""
    from virtguests.actions.records import MigratedRecord

    ctx = _Ctx(tmp_path_factory.mktemp("record"))
    record = MigratedRecord(ctx)  # type: ignore[arg-type]
    away: dict[str, str] = {}
    for what, guest, peer in events:
        uuid = GUESTS[guest]
        if what == "left":
            record(Departure(uuid, f"g{guest}", HOME, PEERS[peer]))
            away[uuid] = PEERS[peer]
        elif what == "home":
            record.home_again({HOME: [uuid]})
            away.pop(uuid, None)
        elif what == "crash":
            record = MigratedRecord(ctx)  # type: ignore[arg-type]
        on_disk, problems = state.read_migrated(ctx.paths.migrated)
        assert not problems and not record.failed
        assert {d.uuid: d.peer for d in on_disk} == away
        assert len(on_disk) == len(away)
    assert not ctx.errors


class _Messages:
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def error(self, line: str) -> None:
        self.errors.append(line)


class _Ctx:
    """What MigratedRecord uses of a Context."""

    def __init__(self, directory: Path) -> None:
        self.paths = state.Paths.in_dir(directory)
        self.dry_run = False
        self.errors: list[str] = []
        self.messages = _Messages(self.errors)
