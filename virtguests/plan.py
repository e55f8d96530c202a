"""Decide what to do: pure functions from config + observed host state to a plan.

Nothing here talks to virsh or the disk, so every decision is testable with
plain data, and ``--dry-run`` prints exactly what the executor would run (both
build their calls with ``commands``).  It reads ``model`` values from
``observe`` and ``policy`` and is read by ``executor``, never the other way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

from virtguests import commands
from virtguests.config import Config, OnBoot, PersistentOnly
from virtguests.model import (
    Action,
    Departure,
    Guest,
    Outcome,
    PolicyLookup,
    UriView,
    no_policy,
)


@dataclass(frozen=True)
class GuestStop:
    guest: Guest
    actions: tuple[Action, ...]
    timeout: int
    order: int = 0
    record: bool = True


@dataclass(frozen=True)
class UriStop:
    uri: str
    running: tuple[Guest, ...]
    transient_skipped: tuple[Guest, ...]
    guests: tuple[GuestStop, ...]

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
) -> StopPlan:
    """Which running guests get which action chain, per reachable URI."""
    uris: list[UriStop] = []
    for view in views:
        if not view.reachable:
            continue
        running = tuple(g for g in view.guests if g.active)
        stops: list[GuestStop] = []
        skipped: list[Guest] = []
        for guest in running:
            rule = policy(view.uri, guest)
            actions = rule.actions if rule.actions is not None else config.on_shutdown
            actions = tuple(a for a in actions if a != Action.MIGRATE)  # no target chosen yet
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
        uris.append(UriStop(view.uri, running, tuple(skipped), tuple(stops)))
    unreachable = tuple(v for v in views if not v.reachable)
    return StopPlan(config.suspending, tuple(uris), unreachable, dict(earlier or {}))


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
                out.append(argv(item.uri, commands.stop_action(planned.actions[0],
                                                               planned.guest.uuid, config)))
    return out


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
