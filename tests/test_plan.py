"""Deciding, without doing: config + observed host -> plan -> virsh command lines."""

from __future__ import annotations

from collections.abc import Sequence

from virtguests.config import Config, OnBoot, PersistentOnly
from virtguests.model import Action, Departure, Guest, GuestPolicy, Outcome, UriView
from virtguests.plan import (
    orphans,
    plan_return,
    plan_start,
    plan_stop,
    return_commands,
    start_commands,
    stop_commands,
)

U1, U2, U3, U4 = (f"{i}{i}{i}{i}{i}{i}{i}{i}-0000-0000-0000-000000000000" for i in range(1, 5))


def argv(uri: str, args: Sequence[str]) -> list[str]:
    return ["virsh", *([] if uri == "default" else ["-c", uri]), *args]


def host() -> UriView:
    return UriView("default", (
        Guest(U1, "web", persistent=True),
        Guest(U2, "scratch", persistent=False),
        Guest(U3, "db", persistent=True),
        Guest(U4, "off", active=False),
    ))


def test_suspend_skips_transient_and_records_persistent() -> None:
    config = Config()
    plan = plan_stop(config, [host()])
    item = plan.uris[0]
    assert [g.name for g in item.running] == ["web", "scratch", "db"]
    assert [g.name for g in item.transient_skipped] == ["scratch"]
    assert plan.record() == {"default": [U1, U3]}
    assert stop_commands(plan, config, argv) == [
        ["virsh", "managedsave", U1], ["virsh", "managedsave", U3]]


def test_bypass_cache_and_uri() -> None:
    config = Config(bypass_cache=True)
    view = UriView("qemu:///system", (Guest(U1, "web"),))
    assert stop_commands(plan_stop(config, [view]), config, argv) == [
        ["virsh", "-c", "qemu:///system", "managedsave", "--bypass-cache", U1]]


def test_shutdown_acts_on_transient_but_does_not_record_it() -> None:
    config = Config(on_shutdown=(Action.SHUTDOWN,))
    plan = plan_stop(config, [host()])
    assert [s.guest.name for s in plan.uris[0].guests] == ["web", "scratch", "db"]
    assert plan.uris[0].transient_skipped == ()
    assert plan.record() == {"default": [U1, U3]}
    assert stop_commands(plan, config, argv)[1] == ["virsh", "shutdown", U2]


def test_persistent_only_true_skips_transient_when_shutting_down() -> None:
    plan = plan_stop(Config(on_shutdown=(Action.SHUTDOWN,), persistent_only=PersistentOnly.TRUE),
                     [host()])
    assert [g.name for g in plan.uris[0].transient_skipped] == ["scratch"]


def test_chain_sends_transient_guests_straight_to_shutdown() -> None:
    config = Config(on_shutdown=(Action.SUSPEND, Action.SHUTDOWN, Action.POWEROFF))
    steps = {s.guest.name: s.actions for s in plan_stop(config, [host()]).uris[0].guests}
    assert steps == {"web": ("suspend", "shutdown", "poweroff"),
                     "scratch": ("shutdown", "poweroff"),
                     "db": ("suspend", "shutdown", "poweroff")}


def test_unreachable_uris_are_kept_apart_and_earlier_entries_survive() -> None:
    down = UriView("qemu+ssh://h/system", error="no route")
    plan = plan_stop(Config(), [host(), down], earlier={"qemu+ssh://h/system": [U4]})
    assert plan.unreachable == (down,)
    assert plan.record() == {"qemu+ssh://h/system": [U4], "default": [U1, U3]}


def test_policy_orders_groups_and_overrides_actions() -> None:
    def policy(uri: str, guest: Guest) -> GuestPolicy:
        if guest.name == "db":
            return GuestPolicy(actions=(Action.SHUTDOWN,), order=1, shutdown_timeout=30)
        if guest.name == "web":
            return GuestPolicy(actions=())
        return GuestPolicy()

    config = Config(on_shutdown=(Action.SUSPEND, Action.SHUTDOWN))
    plan = plan_stop(config, [host()], policy=policy)
    groups = plan.uris[0].by_order()
    assert [[s.guest.name for s in g] for g in groups] == [["db"], ["scratch"]]
    assert groups[0][0].timeout == 30
    assert groups[1][0].actions == ("shutdown",)
    assert plan.record() == {"default": [U3]}


def test_start_plan() -> None:
    view = UriView("default", (Guest(U1, "web", active=False), Guest(U3, "db", active=True)))
    config = Config(sync_time=True)
    plan = plan_start(config, {"default": [U1, U3, U2], "lxc:///": [U4]}, {"default": view})
    assert plan.ignored == ("lxc:///",)
    assert plan.gone == (("default", U2),)
    assert [(g.name, g.decided) for g in plan.uris[0].guests] == [
        ("web", None), ("db", "already active")]
    assert start_commands(plan, config, argv) == [
        ["virsh", "start", U1], ["virsh", "domtime", "--sync", U1],
        ["virsh", "domtime", "--sync", U3]]


def test_start_keeps_unreachable_uris_for_next_time() -> None:
    config = Config(uris=("default", "qemu+ssh://h/system"))
    plan = plan_start(config, {"qemu+ssh://h/system": [U1]},
                      {"qemu+ssh://h/system": UriView("qemu+ssh://h/system", error="down")})
    assert plan.pending_unreachable == {"qemu+ssh://h/system": [U1]}
    assert plan.uris == ()


def test_orphans_are_saved_inactive_unrecorded_guests() -> None:
    view = UriView("default", (Guest(U1, "a", active=False, managed_save=True),
                               Guest(U2, "b", active=False, managed_save=True),
                               Guest(U3, "c", active=True, managed_save=False)))
    assert orphans(view, [U2]) == [U1]


# -- bringing migrated guests home -----------------------------------------------------

def test_plan_return_decides_from_where_each_guest_is() -> None:
    home, peer, down = "qemu:///system", "qemu+ssh://p/system", "qemu+ssh://d/system"
    ids = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(6)]
    d = [Departure(ids[0], "back", home, peer), Departure(ids[1], "home", home, peer),
         Departure(ids[2], "ghost", home, peer), Departure(ids[3], "off", home, peer),
         Departure(ids[4], "cut", home, down), Departure(ids[5], "stale", home, peer)]
    views = {home: UriView(home, (Guest(ids[1], "home", active=True),
                                  Guest(ids[5], "stale", active=False))),
             peer: UriView(peer, (Guest(ids[0], "back", active=True),
                                  Guest(ids[3], "off", active=False))),
             down: UriView(down, error="no route")}
    config = Config(uris=(home,), on_boot=OnBoot.START)
    got = plan_return(config, d, views)
    assert [(g.departure.name, g.decided, g.kept) for g in got.guests] == [
        ("back", None, True), ("home", Outcome.ALREADY_ACTIVE, False),
        ("ghost", Outcome.GONE, False), ("off", Outcome.FAILED, True),
        ("cut", Outcome.FAILED, True), ("stale", Outcome.GONE, False)]
    assert got.guests[4].detail == f"cannot reach {down}: no route"
    assert got.guests[5].detail == f"no longer on {peer}; shut off at home"
    assert return_commands(got, config, lambda uri, args: ["virsh", "-c", uri, *args]) == [
        ["virsh", "-c", peer, "migrate", "--live", "--persistent", "--undefinesource",
         ids[0], home]]
    for off in (Config(uris=(home,), on_boot=OnBoot.START, migrate_return=False),
                Config(uris=(home,), on_boot=OnBoot.IGNORE)):
        left = plan_return(off, d, views)
        assert {(g.decided, g.kept) for g in left.guests} == {(Outcome.AWAY, True)}
        assert left.by_peer() == {}
