"""Look at a URI: one virsh process lists every guest's facts.

The listings a question needs (names, UUIDs, persistence, managed save) run
as one virsh command string, so a URI costs one virsh process, never one per
guest.  Connection failures are retried a bounded number of times (libvirtd
may still be starting at boot); a call that *timed out* is not retried, so a
wedged URI is given up quickly.  It asks virsh through ``commands`` and
``query`` and hands ``plan`` ``model`` values, importing nothing downstream.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Optional, Union

from virtguests import commands, query, virshout
from virtguests.clock import Clock
from virtguests.concurrently import Job, run_all
from virtguests.config import Config
from virtguests.model import Guest, PeerView, UriView
from virtguests.query import run_with_retries
from virtguests.virsh import Virsh, VirshError

log = logging.getLogger(__name__)

# The listings and the batch as tests and tools/record_fixtures.py name them.
RUNNING = tuple(commands.stop_listings())
EVERY = tuple(commands.start_listings())
MANAGED_SAVE = commands.list_managed_save()
BATCH_MARK = commands.BATCH_MARK
batch = commands.batch_script


def listings(virsh: Virsh, uri: str, forms: Sequence[Sequence[str]], config: Config,
             clock: Clock) -> list[str]:
    """The output of each listing in *forms*, from one virsh process.

    virsh keeps going after a failed command and reports only the last exit
    status, so a batch that printed any ``error:`` line, or whose parts do not
    add up, is not trusted: each listing is then run on its own and fails
    loudly.  Other stderr (an ssh banner on a remote URI) is no reason to pay
    for more connections.
    """
    result = run_with_retries(virsh, uri, commands.batch(forms), config, clock)
    parts = virshout.batch_parts(result.stdout, commands.BATCH_MARK)
    errors = [line for line in virshout.lines(result.stderr) if line.startswith("error:")]
    if not errors and len(parts) == len(forms):
        return parts  # other stderr (an ssh banner, a warning) is no failed listing
    log.warning("virsh -c %s: combined listing not usable (%s); listing one by one", uri,
                "; ".join(errors) or f"{len(parts)} parts for {len(forms)} listings")
    return [virsh.run(uri, form, timeout=config.query_timeout, ignore_interrupt=True).stdout
            for form in forms]


def view_running(virsh: Virsh, uri: str, config: Config, clock: Clock,
                 *, ask_uri: bool = False) -> UriView:
    """Active guests with names and persistence (for stop)."""
    forms = commands.stop_listings(ask_uri=ask_uri)
    try:
        texts = listings(virsh, uri, forms, config, clock)
        active_text, persistent_text = texts[0], texts[1]
        active = virshout.uuid_names(virsh.argv(uri, forms[0]), active_text)
        persistent = {g.uuid for g in virshout.uuid_names(virsh.argv(uri, forms[1]),
                                                          persistent_text)}
    except VirshError as err:
        return UriView(uri, error=str(err))
    return UriView(uri, tuple(
        Guest(g.uuid, g.name, active=True, persistent=g.uuid in persistent) for g in active),
        canonical=parse_uri(texts[-1]) if ask_uri else None)


def parse_uri(text: str) -> Optional[str]:
    """``virsh uri`` prints the URI and a blank line (fixtures/test-custom-uri.yaml)."""
    lines = [line.strip() for line in virshout.lines(text) if line.strip()]
    return lines[0] if len(lines) == 1 and " " not in lines[0] else None


def canonical_uri(virsh: Virsh, uri: str, config: Config) -> Optional[str]:
    """``virsh uri`` on its own, for a URI start does not list; None if it fails."""
    try:
        result = virsh.run(uri, commands.uri(), timeout=config.query_timeout,
                           ignore_interrupt=True)
    except VirshError as err:
        log.warning("virsh -c %s uri: %s", uri, err)
        return None
    return parse_uri(result.stdout)


def view_all(virsh: Virsh, uri: str, config: Config, clock: Clock,
             *, managed_save: bool = False, ask_uri: bool = False) -> UriView:
    """Every guest, active or not (for start and status)."""
    forms = commands.start_listings(managed_save=managed_save, ask_uri=ask_uri)
    try:
        texts = listings(virsh, uri, forms, config, clock)
        every = virshout.uuid_names(virsh.argv(uri, forms[0]), texts[0])
        active = set(virshout.uuids(virsh.argv(uri, forms[1]), texts[1]))
        saved = ({g.uuid for g in virshout.uuid_names(virsh.argv(uri, forms[2]), texts[2])}
                 if managed_save else set())
    except VirshError as err:
        return UriView(uri, error=str(err))
    return UriView(uri, tuple(
        Guest(g.uuid, g.name, active=g.uuid in active, managed_save=g.uuid in saved)
        for g in every), canonical=parse_uri(texts[-1]) if ask_uri else None)


def guest_table(virsh: Virsh, uri: str, config: Config) -> str:
    """``virsh list`` as printed, for gueststatus (a stop request ends it too)."""
    return virsh.run(uri, commands.list_table(), timeout=config.query_timeout).stdout


def persistent_uuids(virsh: Virsh, uri: str, config: Config) -> set[str]:
    """Every persistent guest's UUID, active or not (a stop request ends it too)."""
    result = virsh.run(uri, commands.list_persistent_uuids(), timeout=config.query_timeout)
    return set(virshout.uuids(result.argv, result.stdout))


# -- what a migration needs to know (asked only when a chain has migrate) -------------


def peer_views(virsh: Virsh, config: Config, peers: Sequence[str]) -> list[PeerView]:
    """Each peer's host UUID and free memory, all peers at once; a peer that cannot be
    asked is a PeerView with its error (never a target)."""
    jobs = [Job(functools.partial(_peer_view, virsh, config, peer),
                functools.partial(_peer_bug, peer)) for peer in peers]
    return run_all(jobs, max(1, len(jobs)))


def _peer_bug(peer: str, err: Exception) -> PeerView:
    log.error("internal error while asking the peer %s: %r", peer, err)
    return PeerView(peer, error=f"internal error: {err!r}")


def _peer_view(virsh: Virsh, config: Config, peer: str) -> PeerView:
    try:
        host = query.host_uuid(virsh, peer, config)
        free = query.free_kib(virsh, peer, config)
    except VirshError as err:
        return PeerView(peer, error=err.detail)  # the peer is named with it
    return PeerView(peer, host_uuid=host, free_kib=free)


def home_uuid(virsh: Virsh, uri: str, config: Config) -> Optional[str]:
    """*uri*'s host UUID, or None if it cannot be asked (then libvirt's own same-host
    refusal is the only guard)."""
    try:
        return query.host_uuid(virsh, uri, config)
    except VirshError as err:
        log.warning("virsh -c %s capabilities: %s", uri, err)
        return None


def with_memory(virsh: Virsh, view: UriView, uuids: Sequence[str],
                config: Config) -> UriView:
    """*view* with the memory of the guests *uuids* (``dominfo``); a guest whose memory
    cannot be asked keeps None (it gets no target)."""
    wanted = set(uuids)
    guests = []
    for guest in view.guests:
        if guest.uuid in wanted:
            try:
                guest = replace(guest, memory_kib=query.memory_kib(virsh, view.uri, guest.uuid,
                                                                   config))
            except VirshError as err:
                log.warning("virsh -c %s dominfo %s: %s", view.uri, guest.uuid, err)
        guests.append(guest)
    return replace(view, guests=tuple(guests))


def for_migration(virsh: Virsh, config: Config, views: Mapping[str, UriView],
                  movers: Mapping[str, Sequence[str]],
                  ) -> tuple[dict[str, UriView], list[PeerView], dict[str, Optional[str]]]:
    """What ``plan.plan_stop`` needs to choose targets: the guests' memory, the peers'
    views and each home URI's host UUID.  *movers* (``plan.movers``): URI -> the guests
    whose chain starts with migrate; empty, nothing is asked (a stop without migrate
    makes exactly the calls it always made)."""
    if not movers:
        return dict(views), [], {}
    homes = list(movers)
    Found = Union[PeerView, tuple[UriView, Optional[str]]]

    def home(uri: str) -> Found:
        return (with_memory(virsh, views[uri], movers[uri], config),
                home_uuid(virsh, uri, config))

    def peer(uri: str) -> Found:
        return _peer_view(virsh, config, uri)

    def peer_bug(uri: str, err: Exception) -> Found:
        return _peer_bug(uri, err)

    def home_bug(uri: str, err: Exception) -> Found:
        log.error("internal error while asking %s about migration: %r", uri, err)
        return views[uri], None

    jobs: list[Job[Found]] = [
        *(Job(functools.partial(peer, uri), functools.partial(peer_bug, uri))
          for uri in config.migrate_uris),
        *(Job(functools.partial(home, uri), functools.partial(home_bug, uri))
          for uri in homes)]
    results = run_all(jobs, len(jobs))
    peers = [r for r in results if isinstance(r, PeerView)]
    out = dict(views)
    uuids: dict[str, Optional[str]] = {}
    for uri, result in zip(homes, (r for r in results if not isinstance(r, PeerView))):
        out[uri], uuids[uri] = result
    return out, peers, uuids
