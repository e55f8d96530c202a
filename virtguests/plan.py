"""Decide what to do: pure functions from config + observed host state to a plan.

Nothing here talks to virsh or the disk, so every decision is testable with
plain data, and ``--dry-run`` prints exactly what the executor would run (both
build their calls with ``commands``).  It reads ``model`` values from
``observe`` and ``policy`` and is read by ``executor``, never the other way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from virtguests import commands
from virtguests.config import Config, OnBoot, PersistentOnly
from virtguests.model import (
    Action,
    Departure,
    Guest,
    Outcome,
    PeerView,
    PeerWhy,
    PolicyLookup,
    UriView,
    no_policy,
    no_target,
)


@dataclass(frozen=True)
class GuestStop:
    guest: Guest
    actions: tuple[Action, ...]
    timeout: int
    order: int = 0
    record: bool = True
    target: Optional[str] = None
    """The peer its ``migrate`` step goes to (then ``actions`` starts with migrate)."""
    target_note: str = ""
    """Why its chain had migrate but no target (``no target: PEER: WHY; ...``)."""


@dataclass(frozen=True)
class UriStop:
    uri: str
    running: tuple[Guest, ...]
    transient_skipped: tuple[Guest, ...]
    guests: tuple[GuestStop, ...]
    notes: Mapping[str, str] = field(default_factory=dict)
    """UUID -> why a running guest is left as it is when its chain was only ``migrate``
    and no peer could take it (a ``no target`` note)."""

    def by_order(self) -> list[list[GuestStop]]:
        """Order groups for stopping: highest first."""
        keys = sorted({g.order for g in self.guests}, reverse=True)
        return [[g for g in self.guests if g.order == k] for k in keys]


@dataclass(frozen=True)
class StopPlan:
    suspending: bool
    uris: tuple[UriStop, ...]
    unreachable: tuple[UriView, ...]
    earlier: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def record(self) -> dict[str, list[str]]:
        """The list-file entries: what `start` must bring back."""
        out: dict[str, dict[str, None]] = {}  # insertion-ordered sets: linear in size
        for uri, ids in self.earlier.items():
            out.setdefault(uri, {}).update(dict.fromkeys(ids))
        for item in self.uris:
            out.setdefault(item.uri, {}).update(
                dict.fromkeys(g.guest.uuid for g in item.guests if g.record))
        return {uri: list(ids) for uri, ids in out.items() if ids}


def plan_stop(
    config: Config,
    views: Sequence[UriView],
    earlier: Optional[Mapping[str, Sequence[str]]] = None,
    policy: PolicyLookup = no_policy,
    peers: Sequence[PeerView] = (),
    home_uuids: Optional[Mapping[str, Optional[str]]] = None,
) -> StopPlan:
    """Which running guests get which action chain, per reachable URI.

    A chain that starts with ``migrate`` gets a target (``choose_targets`` over
    *peers*, the MIGRATE_URIS views; *home_uuids*: each URI's host UUID); without
    one, ``migrate`` is dropped and the reason kept in ``target_note``.
    """
    drafts: list[tuple[UriView, tuple[Guest, ...], list[Guest], list[GuestStop]]] = []
    allowed: dict[str, tuple[str, ...]] = {}
    moving: list[Guest] = []
    homes: dict[str, Optional[str]] = {}
    for view in views:
        if not view.reachable:
            continue
        running, skipped, stops, peers_of = _draft(config, view, policy)
        for stop in stops:
            if stop.actions[0] == Action.MIGRATE:
                moving.append(stop.guest)
                homes[stop.guest.uuid] = (home_uuids or {}).get(view.uri)
                allowed[stop.guest.uuid] = peers_of[stop.guest.uuid]
        drafts.append((view, running, skipped, stops))
    choices = choose_targets(moving, _peer_list(config, peers), homes,
                             config.migrate_reserve_mib * 1024, allowed)
    uris: list[UriStop] = []
    for view, running, skipped, stops in drafts:
        placed: list[GuestStop] = []
        notes: dict[str, str] = {}
        for stop in stops:
            if stop.actions[0] != Action.MIGRATE:
                placed.append(stop)
                continue
            choice = choices[stop.guest.uuid]
            if choice.peer is not None:
                placed.append(replace(stop, target=choice.peer))
            elif len(stop.actions) > 1:
                placed.append(replace(stop, actions=stop.actions[1:], target_note=choice.reason))
            else:
                notes[stop.guest.uuid] = choice.reason
        uris.append(UriStop(view.uri, running, tuple(skipped), tuple(placed), notes))
    unreachable = tuple(v for v in views if not v.reachable)
    return StopPlan(config.suspending, tuple(uris), unreachable, dict(earlier or {}))


def _draft(config: Config, view: UriView, policy: PolicyLookup) -> tuple[
        tuple[Guest, ...], list[Guest], list[GuestStop], dict[str, tuple[str, ...]]]:
    """One URI's running guests, the transient ones skipped, each other's chain (migrate
    still in it, no target yet), and the peers each guest may go to (its ``migrate_to``
    within MIGRATE_URIS, in MIGRATE_URIS order)."""
    running = tuple(g for g in view.guests if g.active)
    stops: list[GuestStop] = []
    skipped: list[Guest] = []
    peers_of: dict[str, tuple[str, ...]] = {}
    for guest in running:
        rule = policy(view.uri, guest)
        actions = rule.actions if rule.actions is not None else config.on_shutdown
        if not actions:
            continue
        if not guest.persistent:
            if not _acts_on_transient(config, actions):
                skipped.append(guest)
                continue
            actions = tuple(a for a in actions if a != Action.SUSPEND)
            if not actions:
                skipped.append(guest)
                continue
        timeout = (rule.shutdown_timeout if rule.shutdown_timeout is not None
                   else config.shutdown_timeout)
        stops.append(GuestStop(guest, actions, timeout, rule.order, guest.persistent))
        wanted = rule.migrate_to if rule.migrate_to is not None else config.migrate_uris
        peers_of[guest.uuid] = tuple(p for p in config.migrate_uris if p in wanted)
    return running, skipped, stops, peers_of


def movers(config: Config, views: Sequence[UriView],
           policy: PolicyLookup = no_policy) -> dict[str, list[str]]:
    """URI -> the running guests whose chain starts with ``migrate``: whose memory, and
    the peers', observe must know before ``plan_stop`` (empty: ask nothing more)."""
    out: dict[str, list[str]] = {}
    for view in views:
        if view.reachable:
            found = [s.guest.uuid for s in _draft(config, view, policy)[2]
                     if s.actions[0] == Action.MIGRATE]
            if found:
                out[view.uri] = found
    return out


def _peer_list(config: Config, peers: Sequence[PeerView]) -> list[PeerView]:
    """A view for every MIGRATE_URIS peer, in that order (one not looked at: unreachable)."""
    seen = {p.uri: p for p in peers}
    return [seen.get(uri) or PeerView(uri, error="not contacted")
            for uri in config.migrate_uris]


@dataclass(frozen=True)
class Choice:
    """A guest's migration target, or None and why (``no target: PEER: WHY; ...``)."""

    peer: Optional[str]
    reason: str = ""


def choose_targets(
    guests: Sequence[Guest],
    peers: Sequence[PeerView],
    home_host_uuid: Mapping[str, Optional[str]],
    reserve_kib: int,
    allowed: Optional[Mapping[str, Sequence[str]]] = None,
) -> dict[str, Choice]:
    """A peer for each guest, or why none (guest UUID -> Choice).

    A peer qualifies when it is reachable, its host UUID is known and differs from
    the guest's home's (*home_host_uuid*: guest UUID -> its home's host UUID; unknown
    there, libvirt itself refuses a same-host migration), it is in the guest's
    *allowed* list (default: every peer), and its free memory, less what this plan
    already sends there, covers the guest's memory plus *reserve_kib*.  The one with
    the most left wins; ties go to the first in *peers* (MIGRATE_URIS order).  Guests
    are placed largest first (ties by UUID), so the result does not depend on the
    order of *guests*.
    """
    sent = {p.uri: 0 for p in peers}
    out: dict[str, Choice] = {}
    order = sorted(guests, key=lambda g: (-(g.memory_kib or 0), g.uuid))
    for guest in order:
        if guest.uuid in out:
            continue
        if not peers:
            out[guest.uuid] = Choice(None, no_target([("", PeerWhy.NO_PEERS)]))
            continue
        if guest.memory_kib is None:
            out[guest.uuid] = Choice(None, no_target([("", PeerWhy.MEMORY_UNKNOWN)]))
            continue
        need = guest.memory_kib + reserve_kib
        home = home_host_uuid.get(guest.uuid)
        may = allowed.get(guest.uuid) if allowed is not None else None
        best: Optional[PeerView] = None
        best_left = 0
        why: list[tuple[str, str]] = []
        for peer in peers:
            reason = _unfit(peer, may, home)
            if reason is None:
                assert peer.free_kib is not None
                left = peer.free_kib - sent[peer.uri]
                if left < need:
                    reason = PeerWhy.TOO_LITTLE.format(free=max(left, 0) // 1024,
                                                       need=-(-need // 1024))
                elif best is None or left > best_left:
                    best, best_left = peer, left
            if reason is not None:
                why.append((peer.uri, reason))
        if best is None:
            out[guest.uuid] = Choice(None, no_target(why))
        else:
            sent[best.uri] += guest.memory_kib
            out[guest.uuid] = Choice(best.uri)
    return out


def _unfit(peer: PeerView, allowed: Optional[Sequence[str]],
           home: Optional[str]) -> Optional[str]:
    """Why *peer* cannot take any guest of that home, or None."""
    if allowed is not None and peer.uri not in allowed:
        return PeerWhy.NOT_ALLOWED
    if not peer.reachable:
        return PeerWhy.UNREACHABLE.format(error=peer.error)
    if peer.host_uuid is None:
        return PeerWhy.HOST_UNKNOWN
    if home is not None and peer.host_uuid.lower() == home.lower():
        return PeerWhy.SAME_HOST
    if peer.free_kib is None:
        return PeerWhy.FREE_UNKNOWN
    return None


def _acts_on_transient(config: Config, actions: Sequence[Action]) -> bool:
    """PERSISTENT_ONLY as the reference defines it; a chain past suspend can stop them."""
    if config.persistent_only == PersistentOnly.TRUE:
        return False
    if config.persistent_only == PersistentOnly.FALSE:
        return True
    return actions[0] != Action.SUSPEND or len(actions) > 1


def stop_commands(plan: StopPlan, config: Config,
                  argv: Callable[[str, Sequence[str]], list[str]]) -> list[list[str]]:
    """The virsh command lines that change something, in execution order per URI.

    Only each guest's first action is certain; fallbacks are listed by
    ``describe_fallbacks``.
    """
    out: list[list[str]] = []
    for item in plan.uris:
        for group in item.by_order():
            for planned in group:
                out.append(argv(item.uri, step_call(planned, planned.actions[0], config)))
    return out


def step_call(planned: GuestStop, action: Action, config: Config) -> list[str]:
    """The virsh call of one step of *planned*'s chain (``migrate`` to its target)."""
    if action == Action.MIGRATE:
        if planned.target is None:
            raise ValueError(f"{planned.guest.uuid}: migrate without a target")
        return commands.migrate(planned.guest.uuid, planned.target, config.migrate_options)
    return commands.stop_action(action, planned.guest.uuid, config)


@dataclass(frozen=True)
class GuestStart:
    uuid: str
    name: str
    decided: Optional[Outcome] = None
    """The outcome the plan already knows (already active, skipped by policy), or None:
    ``virsh start`` it."""
    order: int = 0
    delay_after: Optional[int] = None


@dataclass(frozen=True)
class UriStart:
    uri: str
    guests: tuple[GuestStart, ...]
    probe: bool = False
    """The URI was not listed: the first start is also the connection check."""


@dataclass(frozen=True)
class StartPlan:
    uris: tuple[UriStart, ...]
    ignored: tuple[str, ...]
    unreachable: tuple[UriView, ...]
    gone: tuple[tuple[str, str], ...]
    """Recorded guests (URI, UUID) that are no longer defined."""
    pending_unreachable: Mapping[str, Sequence[str]]
    """The guests of unreachable URIs: they stay pending for the next start."""


def plan_start(
    config: Config,
    recorded: Mapping[str, Sequence[str]],
    views: Mapping[str, UriView],
    policy: PolicyLookup = no_policy,
) -> StartPlan:
    """Which recorded guests to start, per configured URI, in list order.

    *recorded* maps list-file URIs to UUIDs; URIs no longer in URIS are ignored.
    """
    uris: list[UriStart] = []
    ignored: list[str] = []
    unreachable: list[UriView] = []
    gone: list[tuple[str, str]] = []
    pending_unreachable: dict[str, list[str]] = {}
    for uri, ids in recorded.items():
        if uri not in config.uris:
            ignored.append(uri)
            continue
        view = views.get(uri)
        if view is None or not view.reachable:
            unreachable.append(view or UriView(uri, error="not contacted"))
            pending_unreachable.setdefault(uri, []).extend(ids)
            continue
        guests: list[GuestStart] = []
        for uuid in ids:
            guest = view.find(uuid)
            if guest is None:
                gone.append((uri, uuid))
                continue
            rule = policy(uri, guest)
            if rule.skip_start:
                guests.append(GuestStart(uuid, guest.name, Outcome.SKIPPED_BY_POLICY,
                                         rule.order, rule.start_delay))
            elif guest.active:
                guests.append(GuestStart(uuid, guest.name, Outcome.ALREADY_ACTIVE,
                                         rule.order, rule.start_delay))
            else:
                guests.append(GuestStart(uuid, guest.name, None, rule.order,
                                         rule.start_delay))
        uris.append(UriStart(uri, tuple(guests), probe=not view.listed))
    return StartPlan(tuple(uris), tuple(ignored), tuple(unreachable), tuple(gone),
                     pending_unreachable)


def orphans(view: UriView, recorded: Sequence[str]) -> list[str]:
    """Inactive guests with a managed-save image that no list file mentions."""
    return [g.uuid for g in view.guests
            if g.managed_save and not g.active and g.uuid not in recorded]


def start_commands(plan: StartPlan, config: Config,
                   argv: Callable[[str, Sequence[str]], list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for item in plan.uris:
        for guest in sorted(item.guests, key=lambda g: g.order):
            if guest.decided is None:
                out.append(argv(item.uri, commands.start(guest.uuid, config)))
            if config.sync_time and guest.decided != Outcome.SKIPPED_BY_POLICY:
                out.append(argv(item.uri, commands.sync_time(guest.uuid)))
    return out


# -- bringing migrated guests home (start) -------------------------------------------


@dataclass(frozen=True)
class GuestReturn:
    """One guest of the migrated record, and what start does about it."""

    departure: Departure
    decided: Optional[Outcome] = None
    """None: migrate it home.  ALREADY_ACTIVE (running at home) and GONE (on neither
    host) end its record; AWAY (MIGRATE_RETURN=0, ON_BOOT=ignore) and FAILED (a host
    that cannot be seen, a guest not running on its peer) keep it."""
    detail: str = ""

    @property
    def kept(self) -> bool:
        """Whether the record keeps it (AWAY is settled for the run, yet still away)."""
        return self.decided not in (Outcome.ALREADY_ACTIVE, Outcome.GONE)


@dataclass(frozen=True)
class ReturnPlan:
    guests: tuple[GuestReturn, ...] = ()

    def by_peer(self) -> dict[str, list[GuestReturn]]:
        """The guests to migrate home, per peer in record order."""
        out: dict[str, list[GuestReturn]] = {}
        for item in self.guests:
            if item.decided is None:
                out.setdefault(item.departure.peer, []).append(item)
        return out


def plan_return(config: Config, departures: Sequence[Departure],
                views: Mapping[str, UriView]) -> ReturnPlan:
    """Decide each recorded departure from what its home and peer URIs look like.

    *views* holds listings of every home and peer (``observe.view_all``); a URI
    missing from it counts as not seen.  Only a guest seen running on its peer and
    not active at home is migrated; one running at home already is done; one seen
    on neither reachable host is gone.  Nothing else ends a record.
    """
    if config.on_boot != OnBoot.START or not config.migrate_return:
        why = ("MIGRATE_RETURN=0" if config.on_boot == OnBoot.START else "ON_BOOT=ignore")
        return ReturnPlan(tuple(GuestReturn(d, Outcome.AWAY, why) for d in departures))

    def decide(d: Departure) -> GuestReturn:
        home, peer = views.get(d.home), views.get(d.peer)
        if home is None or not home.reachable:
            return GuestReturn(d, Outcome.FAILED, f"cannot reach its home {d.home}: "
                               f"{home.error if home else 'not listed'}")
        at_home = home.find(d.uuid)
        if at_home is not None and at_home.active:
            return GuestReturn(d, Outcome.ALREADY_ACTIVE, "already running at home")
        if peer is None or not peer.reachable:
            return GuestReturn(d, Outcome.FAILED, f"cannot reach {d.peer}: "
                               f"{peer.error if peer else 'not listed'}")
        there = peer.find(d.uuid)
        if there is None:
            return GuestReturn(d, Outcome.GONE, f"no longer on {d.peer}" + (
                "; shut off at home" if at_home is not None else " nor at home"))
        if not there.active:
            return GuestReturn(d, Outcome.FAILED, f"not running on {d.peer}")
        return GuestReturn(d)

    return ReturnPlan(tuple(decide(d) for d in departures))


def return_commands(plan: ReturnPlan, config: Config,
                    argv: Callable[[str, Sequence[str]], list[str]]) -> list[list[str]]:
    """``virsh -c PEER migrate OPTIONS UUID HOME`` for each guest to bring home."""
    return [argv(peer, commands.migrate(item.departure.uuid, item.departure.home,
                                        config.migrate_options))
            for peer, items in plan.by_peer().items() for item in items]
