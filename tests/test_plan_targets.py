"""Choosing migration targets (issue 14): ``plan.choose_targets`` and how ``plan_stop``
uses it.  Pure: views in, choices out."""

from __future__ import annotations

import random
import re
from typing import Optional

from hypothesis import given
from hypothesis import strategies as st

from virtguests.config import Config, PersistentOnly
from virtguests.model import Action, Guest, GuestPolicy, PeerView, UriView
from virtguests.plan import Choice, choose_targets, movers, plan_stop, stop_commands

MIB = 1024
HOME = "abcdef11-1111-1111-1111-111111111111"
P1, P2, P3 = "qemu+ssh://p1/system", "qemu+ssh://p2/system", "qemu+ssh://p3/system"


def uuid(n: int) -> str:
    return f"5a1e0000-0000-4000-8000-{n:012d}"


def peer(uri: str, free_mib: Optional[int], host: Optional[str] = None,
         error: Optional[str] = None) -> PeerView:
    if error is not None:
        return PeerView(uri, error=error)
    return PeerView(uri, host or f"22222222-0000-0000-0000-{abs(hash(uri)) % 10**12:012d}",
                    None if free_mib is None else free_mib * MIB)


def guests(*mib: Optional[int]) -> list[Guest]:
    return [Guest(uuid(n), f"g{n}", memory_kib=None if m is None else m * MIB)
            for n, m in enumerate(mib, 1)]


def homes(gs: list[Guest], home: Optional[str] = HOME) -> dict[str, Optional[str]]:
    return {g.uuid: home for g in gs}


def test_most_free_wins_and_what_was_sent_counts() -> None:
    gs = guests(4096, 2048, 2048)
    peers = [peer(P1, 6000), peer(P2, 7000)]
    got = choose_targets(gs, peers, homes(gs), 256 * MIB)
    # g1 (largest) to P2 (7000 free); then P1 has 6000, P2 2904: g2 to P1; then P1 3952
    # and P2 2904 left: g3 to P1
    assert got == {uuid(1): Choice(P2), uuid(2): Choice(P1), uuid(3): Choice(P1)}


def test_ties_go_to_the_first_peer_listed() -> None:
    gs = guests(1024)
    assert choose_targets(gs, [peer(P2, 5000), peer(P1, 5000)], homes(gs), 0) == {
        uuid(1): Choice(P2)}


def test_every_reason_named() -> None:
    gs = guests(2048)
    peers = [peer(P1, None, error="cannot connect"), peer(P2, 100000, host=HOME),
             peer(P3, 2200), PeerView("qemu:///x", None, 1),
             PeerView("qemu:///y", HOME[:-1] + "2"),
             peer("qemu:///z", 100000)]
    got = choose_targets(gs, peers, homes(gs), 256 * MIB,
                         {uuid(1): (P1, P2, P3, "qemu:///x", "qemu:///y")})
    assert got[uuid(1)] == Choice(None, (
        "no target: qemu+ssh://p1/system: unreachable (cannot connect); "
        "qemu+ssh://p2/system: the same host as the guest's; "
        "qemu+ssh://p3/system: 2200 MiB free, needs 2304 MiB; "
        "qemu:///x: its host UUID is unknown; qemu:///y: its free memory is unknown; "
        "qemu:///z: not in its migrate_to"))


def test_a_guest_of_unknown_memory_or_without_peers_gets_none() -> None:
    gs = guests(None)
    assert choose_targets(gs, [peer(P1, 10**6)], homes(gs), 0) == {
        uuid(1): Choice(None, "no target: the guest's memory is unknown")}
    assert choose_targets(guests(5), [], {}, 0) == {
        uuid(1): Choice(None, "no target: no peers (MIGRATE_URIS is empty)")}


def test_an_unknown_home_leaves_the_same_host_check_to_libvirt() -> None:
    gs = guests(10)
    assert choose_targets(gs, [peer(P1, 100, host=HOME)], homes(gs, None), 0) == {
        uuid(1): Choice(P1)}
    same = choose_targets(gs, [peer(P1, 100, host=HOME.upper())],
                          homes(gs), 0)
    assert same[uuid(1)].peer is None  # UUIDs compared without regard to case


memories = st.lists(st.one_of(st.none(), st.integers(1, 64 * MIB)), max_size=12)
peer_lists = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 256 * MIB)),  # free MiB
              st.sampled_from(["other", "home", "unknown", "unreachable"])),
    max_size=4)


def _peers(spec: list[tuple[Optional[int], str]]) -> list[PeerView]:
    out = []
    for n, (free, kind) in enumerate(spec):
        uri = f"qemu+ssh://p{n}/system"
        free_kib = None if free is None else free * MIB
        if kind == "unreachable":
            out.append(PeerView(uri, error="down"))
        else:
            host = {"other": f"33333333-0000-0000-0000-{n:012d}", "home": HOME,
                    "unknown": None}[kind]
            out.append(PeerView(uri, host, free_kib))
    return out


@given(memories, peer_lists, st.integers(0, 4096), st.randoms(use_true_random=False))
def test_properties(mib: list[Optional[int]], spec: list[tuple[Optional[int], str]],
                    reserve_mib: int, rnd: random.Random) -> None:
    gs = guests(*mib)
    peers = _peers(spec)
    allowed = {g.uuid: tuple(p.uri for p in peers if rnd.random() < 0.8) for g in gs}
    got = choose_targets(gs, peers, homes(gs), reserve_mib * MIB, allowed)
    assert set(got) == {g.uuid for g in gs}
    by_uri = {p.uri: p for p in peers}
    sent = {p.uri: 0 for p in peers}
    for g in gs:
        choice = got[g.uuid]
        if choice.peer is None:
            assert choice.reason.startswith("no target: ")
            if g.memory_kib is not None:
                for p in peers:  # every peer is named with its reason
                    assert re.search(re.escape(p.uri) + r": [^;]+", choice.reason), p.uri
            continue
        target = by_uri[choice.peer]
        assert choice.peer in allowed[g.uuid]
        assert target.reachable and target.host_uuid not in (None, HOME)
        assert g.memory_kib is not None
        sent[choice.peer] += g.memory_kib
    for uri, total in sent.items():
        placed = [g for g in gs if got[g.uuid].peer == uri]
        free = by_uri[uri].free_kib
        if placed:
            assert free is not None
            # never over-committed: what went there, plus one reserve, fits its free memory
            assert total + reserve_mib * MIB <= free
    # the order guests come in does not matter
    shuffled = list(gs)
    rnd.shuffle(shuffled)
    assert choose_targets(shuffled, peers, homes(gs), reserve_mib * MIB, allowed) == got


@given(memories, peer_lists)
def test_a_guest_is_left_without_a_target_only_when_no_peer_could_take_it(
        mib: list[Optional[int]], spec: list[tuple[Optional[int], str]]) -> None:
    """Largest first: a guest left out found no peer with room after the larger ones
    (none had its memory free even then)."""
    gs = guests(*mib)
    peers = _peers(spec)
    got = choose_targets(gs, peers, homes(gs), 0)
    for g in gs:
        if got[g.uuid].peer is None and g.memory_kib is not None:
            for p in peers:
                usable = p.reachable and p.host_uuid not in (None, HOME) and p.free_kib is not None
                if usable:
                    assert p.free_kib is not None
                    larger_sent = sum(o.memory_kib or 0 for o in gs
                                      if got[o.uuid].peer == p.uri)
                    assert p.free_kib - larger_sent < g.memory_kib


# -- plan_stop ---------------------------------------------------------------------------


def view() -> UriView:
    return UriView("default", (
        Guest(uuid(1), "web", memory_kib=2048 * MIB),
        Guest(uuid(2), "db", memory_kib=8192 * MIB),
        Guest(uuid(3), "scratch", persistent=False, memory_kib=512 * MIB),
        Guest(uuid(4), "off", active=False),
    ))


CONFIG = Config(on_shutdown=(Action.MIGRATE, Action.SUSPEND, Action.SHUTDOWN),
                migrate_uris=(P1, P2))


def test_plan_stop_fills_targets_and_drops_migrate_with_its_note() -> None:
    peers = [peer(P1, 4096), PeerView(P2, error="cannot connect")]
    plan = plan_stop(CONFIG, [view()], peers=peers, home_uuids={"default": HOME})
    stops = {s.guest.name: s for s in plan.uris[0].guests}
    assert (stops["web"].actions, stops["web"].target) == (CONFIG.on_shutdown, P1)
    assert stops["db"].actions == (Action.SUSPEND, Action.SHUTDOWN)
    assert stops["db"].target is None
    assert stops["db"].target_note == (
        "no target: qemu+ssh://p1/system: 4096 MiB free, needs 8448 MiB; "
        "qemu+ssh://p2/system: unreachable (cannot connect)")
    # a transient guest migrates too (it cannot be saved: suspend leaves its chain)
    assert (stops["scratch"].actions, stops["scratch"].target) == (
        (Action.MIGRATE, Action.SHUTDOWN), P1)
    assert plan.record() == {"default": [uuid(1), uuid(2)]}
    assert stop_commands(plan, CONFIG, lambda u, a: list(a)) == [
        ["migrate", "--live", "--persistent", "--undefinesource", uuid(1), P1],
        ["managedsave", uuid(2)],
        ["migrate", "--live", "--persistent", "--undefinesource", uuid(3), P1]]


def test_a_chain_of_only_migrate_without_target_leaves_the_guest_with_its_note() -> None:
    config = Config(on_shutdown=(Action.MIGRATE,), migrate_uris=(P1,),
                    persistent_only=PersistentOnly.TRUE)
    plan = plan_stop(config, [view()], peers=[peer(P1, 3000)], home_uuids={})  # db first
    item = plan.uris[0]
    assert [(s.guest.name, s.target) for s in item.guests] == [("web", P1)]
    assert item.notes == {uuid(2): "no target: qemu+ssh://p1/system: 3000 MiB free, needs "
                                    "8448 MiB"}
    assert [g.name for g in item.transient_skipped] == ["scratch"]


def test_migrate_to_narrows_the_peers_and_policy_without_migrate_keeps_a_guest_home() -> None:
    def policy(uri: str, guest: Guest) -> GuestPolicy:
        if guest.name == "web":
            return GuestPolicy(migrate_to=(P2, "qemu+ssh://unlisted/system"))
        if guest.name == "db":
            return GuestPolicy(actions=(Action.SUSPEND,))
        return GuestPolicy(actions=())

    peers = [peer(P1, 100000), peer(P2, 3000)]
    plan = plan_stop(CONFIG, [view()], policy=policy, peers=peers,
                     home_uuids={"default": HOME})
    stops = {s.guest.name: s for s in plan.uris[0].guests}
    assert stops["web"].target == P2
    assert (stops["db"].actions, stops["db"].target) == ((Action.SUSPEND,), None)
    assert movers(CONFIG, [view()], policy) == {"default": [uuid(1)]}


def test_without_migrate_nothing_changes_and_nothing_is_asked() -> None:
    config = Config(on_shutdown=(Action.SUSPEND, Action.SHUTDOWN), migrate_uris=(P1,))
    assert movers(config, [view()]) == {}
    plan = plan_stop(config, [view()])
    assert all(s.target is None and s.target_note == "" for s in plan.uris[0].guests)
    assert plan.uris[0].notes == {}


def test_peers_not_looked_at_are_unreachable() -> None:
    plan = plan_stop(CONFIG, [view()], peers=[], home_uuids={})
    db = next(s for s in plan.uris[0].guests if s.guest.name == "db")
    assert db.target_note == ("no target: qemu+ssh://p1/system: unreachable (not contacted); "
                              "qemu+ssh://p2/system: unreachable (not contacted)")


@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(1, 8 * MIB)), st.booleans(),
                          st.sampled_from([(), (Action.MIGRATE,),
                                           (Action.MIGRATE, Action.SUSPEND),
                                           (Action.MIGRATE, Action.SHUTDOWN), None])),
                max_size=8),
       peer_lists, st.sampled_from(list(PersistentOnly)))
def test_plan_stop_properties(spec: list[tuple[Optional[int], bool, Optional[tuple[Action, ...]]]],
                              peer_spec: list[tuple[Optional[int], str]],
                              persistent_only: PersistentOnly) -> None:
    """Every running guest is acted on, skipped as transient, left by policy or left with
    a no-target note; a chain starts with migrate exactly when it has a target, and a
    guest that lost its migrate keeps the reason."""
    gs = [Guest(uuid(n), f"g{n}", persistent=persistent, memory_kib=None if m is None
                else m * MIB) for n, (m, persistent, _) in enumerate(spec, 1)]
    chains = {g.uuid: chain for g, (_, _, chain) in zip(gs, spec)}
    peers = _peers(peer_spec)
    config = Config(on_shutdown=(Action.MIGRATE, Action.SUSPEND, Action.SHUTDOWN),
                    migrate_uris=tuple(p.uri for p in peers), persistent_only=persistent_only)
    plan = plan_stop(config, [UriView("default", tuple(gs))],
                     policy=lambda uri, g: GuestPolicy(actions=chains[g.uuid]),
                     peers=peers, home_uuids={"default": HOME})
    item = plan.uris[0]
    acted = {s.guest.uuid for s in item.guests}
    skipped = {g.uuid for g in item.transient_skipped}
    for g in gs:
        places = [g.uuid in acted, g.uuid in skipped, g.uuid in item.notes,
                  chains[g.uuid] == ()]
        assert places.count(True) == 1, (g, places)
    for s in item.guests:
        assert s.actions
        assert (s.actions[0] == Action.MIGRATE) == (s.target is not None)
        if s.target is not None:
            assert s.target_note == ""
        wanted = chains[s.guest.uuid] or config.on_shutdown
        if wanted[0] == Action.MIGRATE and s.target is None:
            assert s.target_note.startswith("no target: ")
    for note in item.notes.values():
        assert note.startswith("no target: ")
