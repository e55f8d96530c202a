"""``start``: bring migrated guests home, then resume or start the guests the last stop
recorded.

Guests the migrated record names come first (``_bring_home``): each home and peer
is listed, ``plan.plan_return`` decides, ``returning`` migrates them back and the
record loses each guest known home or gone.  A guest both migrated and in the list
file is thus home before the list file's starts, which find it already active.
Then for the list file: observe (the list and pending files, the URIs that must be
listed, saved guests nobody recorded with RESUME_ORPHANS) -> plan (``plan.plan_start``)
-> say what cannot be done (a dry run also prints the commands and stops there) ->
execute -> record (the guests still pending go to the pending file, the list file goes)
-> report (the marker, the run report).
The list file written by stop is the record while the guests start.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Optional

from virtguests import observe, plan, policy, returning, state
from virtguests.actions import records
from virtguests.actions.context import (
    Context,
    for_each_uri,
    holding_lock,
    interrupted_summary,
    look,
    refuse_bad_config,
    unique,
    warn_conflicts,
)
from virtguests.actions.records import Checkpoint
from virtguests.config import Config, OnBoot
from virtguests.executor import Executor
from virtguests.exitstatus import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from virtguests.model import Departure, Guest, Outcome, UriView
from virtguests.virsh import format_argv


def run_start(ctx: Context) -> int:
    status = EXIT_FAIL  # what the top-level handler exits with if a bug ends the run
    try:
        status = _run_start(ctx)
        return status
    finally:
        records.write_metrics(ctx, "start", status)


def _run_start(ctx: Context) -> int:
    if refuse_bad_config(ctx, "start"):
        return EXIT_CONFIG
    warn_conflicts(ctx)
    with holding_lock(ctx) as held:
        code = _start(ctx) if held else EXIT_FAIL
    return EXIT_CONFIG if ctx.loaded.problems else code


def _start(ctx: Context) -> int:
    config = ctx.config
    recorded, status = _read_records(ctx)
    returned = _bring_home(ctx)
    if returned is not None:
        status = max(status, returned)
    orphans_wanted = config.resume_orphans and config.on_boot == OnBoot.START
    if not recorded and not orphans_wanted:
        records.mark_started(ctx)
        return _finish(ctx, status) if returned is not None else status
    if config.on_boot != OnBoot.START:
        ctx.messages.say("libvirt-guests is configured not to start any guests on boot")
        if not ctx.dry_run:
            _forget_records(ctx)
        return _finish(ctx, status) if returned is not None else status
    wanted = unique([u for u in recorded if u in config.uris]
                    + (list(config.uris) if orphans_wanted else []))
    views = start_views(ctx, recorded, wanted, managed_save=orphans_wanted)
    if orphans_wanted:
        _add_orphans(ctx, views, recorded)

    lookup = policy.resolving(ctx.policy, {u: v.canonical for u, v in views.items()})
    the_plan = plan.plan_start(config, recorded, views, lookup)
    status = max(status, _say_unplanned(ctx, the_plan))
    if ctx.dry_run:
        for argv in plan.start_commands(the_plan, config, ctx.virsh.argv):
            ctx.messages.say(format_argv(argv))
        return status

    executor = Executor(ctx.virsh, config, ctx.messages, ctx.clock, run_report=ctx.run_report,
                        checkpoint=Checkpoint(ctx, "start"))
    result = executor.start(the_plan)  # the executor reports its own bugs

    _remember_running(ctx)
    pending = still_pending(config, recorded, result.settled, the_plan.gone)
    status = max(status, _record_pending(ctx, the_plan, pending))
    records.mark_started(ctx)
    return _finish(ctx, max(status, result.status))


def _finish(ctx: Context, status: int) -> int:
    if ctx.dry_run:
        return status
    if ctx.clock.cancel.is_set():
        status = interrupted_summary(ctx, "start")
    records.write_run_report(ctx, "start", status)
    return status


def _bring_home(ctx: Context) -> Optional[int]:
    """The migrated record's guests: brought home (or left away, or reported); None when
    nobody is recorded away, else the exit status so far."""
    departures, status = read_migrated(ctx, set_aside=not ctx.dry_run)
    if not departures:
        return None if status == EXIT_OK else status
    the_plan = plan.plan_return(ctx.config, departures, return_views(ctx, departures))
    if ctx.dry_run:
        for level, text in returning.decisions(the_plan):
            if level == returning.ERROR:
                status = EXIT_FAIL
                ctx.messages.error(text)
            else:
                ctx.messages.say(text)
        for argv in plan.return_commands(the_plan, ctx.config, ctx.virsh.argv):
            ctx.messages.say(format_argv(argv))
        return status
    record = _Record(ctx, departures)
    executor = Executor(ctx.virsh, ctx.config, ctx.messages, ctx.clock,
                        run_report=ctx.run_report, checkpoint=Checkpoint(ctx, "start"))
    return max(status, executor.bring_home(the_plan, record.forget).status)


def read_migrated(ctx: Context, *, set_aside: bool) -> tuple[list[Departure], int]:
    """The migrated record's guests; exit 1 when it is damaged: each problem is reported,
    and (*set_aside*) the file is kept aside whole and its valid entries written anew."""
    path = ctx.paths.migrated
    departures, problems = state.read_migrated(path)
    for problem in problems:
        ctx.messages.error(str(problem))
    if not problems:
        return departures, EXIT_OK
    if set_aside and (path.exists() or path.is_symlink()):
        try:
            aside = state.set_aside(path)
        except OSError as err:
            ctx.messages.error(f"cannot move the damaged {path} aside: {err}")
            return departures, EXIT_FAIL
        ctx.messages.error(f"{path} was damaged; kept as {aside}")
        records.disk(ctx, f"write {path}", lambda: state.write_migrated(path, departures))
    return departures, EXIT_FAIL


def return_views(ctx: Context, departures: Sequence[Departure]) -> dict[str, UriView]:
    """Every home and peer of the record, listed (all guests, active or not)."""
    if ctx.config.on_boot != OnBoot.START or not ctx.config.migrate_return:
        return {}
    uris = unique([u for d in departures for u in (d.home, d.peer)])
    return for_each_uri(uris, lambda uri: look(ctx, uri, lambda: observe.view_all(
        ctx.virsh, uri, ctx.config, ctx.clock)))


class _Record:
    """The migrated record while guests come home: an entry goes only when its guest is
    known home or gone, and the file is rewritten at once (atomically, under the run's
    lock), so a power cut loses no guest that is still away."""

    def __init__(self, ctx: Context, departures: Sequence[Departure]) -> None:
        self.ctx = ctx
        self.left = list(departures)
        self._lock = threading.Lock()

    def forget(self, departure: Departure) -> None:
        with self._lock:
            if departure not in self.left:
                return
            self.left.remove(departure)
            left = list(self.left)
            path = self.ctx.paths.migrated
            records.disk(self.ctx, f"write {path}", lambda: state.write_migrated(path, left))


def _read_records(ctx: Context) -> tuple[dict[str, list[str]], int]:
    """The guests the list and pending files record; exit 1 when one is damaged
    (an unreadable one is set aside, except in a dry run)."""
    list_entries, pending, bad = records.read_recorded(ctx)
    status = EXIT_OK
    for line in bad:
        ctx.messages.error(str(line))
        status = EXIT_FAIL
    if not ctx.dry_run:
        records.set_aside_unreadable(ctx, bad)
    return state.merge(list_entries, pending), status


def _forget_records(ctx: Context) -> None:
    """ON_BOOT=ignore: the records go, as the reference's do, and we count as started."""
    records.disk(ctx, f"remove {ctx.paths.list_file}",
                 lambda: state.remove(ctx.paths.list_file))
    records.disk(ctx, f"remove {ctx.paths.pending}",
                 lambda: state.remove(ctx.paths.pending))
    records.mark_started(ctx)


def _say_unplanned(ctx: Context, the_plan: plan.StartPlan) -> int:
    """URIs ignored or unreachable and guests gone, each said before anything starts;
    exit 1 for the last two."""
    status = EXIT_OK
    for token in the_plan.ignored:
        ctx.messages.say(f"Ignoring guests on {token} URI")
    for view in the_plan.unreachable:
        status = EXIT_FAIL
        ctx.messages.cannot_resume_uri(view.uri, str(view.error),
                                       list(the_plan.pending_unreachable.get(view.uri, [])))
    for uri, uuid in the_plan.gone:
        status = EXIT_FAIL
        ctx.messages.gone(uri, uuid)
    return status


def _remember_running(ctx: Context) -> None:
    """The guests now running (resumed, or found already active) join the seen file."""
    up: dict[str, dict[str, str]] = {}
    for done in ctx.run_report.results.values():
        if done.outcome in (Outcome.RESUMED, Outcome.ALREADY_ACTIVE):
            up.setdefault(done.uri, {})[done.uuid] = done.name
    records.update_seen(ctx, up, replace_uris=False)


def _record_pending(ctx: Context, the_plan: plan.StartPlan,
                    pending: Mapping[str, Sequence[str]]) -> int:
    """The guests still pending go to the pending file, then the list file goes; exit 1
    when the pending file cannot be written (the list file stays: the next start retries
    all)."""
    # Unreachable and given-up URIs were named with their guests already.
    unreachable = {view.uri for view in the_plan.unreachable} | {
        uri for uri in pending if ctx.virsh.given_up(uri) is not None}
    names = [ctx.run_report.results[(uri, uuid)].name
             if (uri, uuid) in ctx.run_report.results else uuid
             for uri, ids in pending.items() if uri not in unreachable for uuid in ids]
    if names:
        ctx.messages.error("not resumed, kept for the next start: " + ", ".join(names))
    if records.disk(ctx, f"write {ctx.paths.pending}",
                    lambda: state.write_list(ctx.paths.pending, pending)):
        records.disk(ctx, f"remove the list file {ctx.paths.list_file}",
                     lambda: state.remove(ctx.paths.list_file))
        return EXIT_OK
    return EXIT_FAIL


def start_views(ctx: Context, recorded: Mapping[str, Sequence[str]], wanted: Sequence[str],
                *, managed_save: bool = False) -> dict[str, UriView]:
    """What start needs to know about each URI, listing only where it must.

    A URI whose recorded guests all have names in our records is not listed:
    starting them by UUID tells which are already active or gone, and the
    first start checks the connection.  Guests we cannot name (a list file
    written by libvirt-guests), a search for unrecorded saved guests, or
    START_DELAY (no delay is spent on a guest that is already running) need a
    listing.  ``plan start`` looks the same way.
    """
    seen = records.read_seen(ctx, warn=False)

    def view(uri: str) -> UriView:
        names = seen.get(uri, {})
        ids = recorded.get(uri, [])
        ask = policy.wants_canonical(ctx.policy, uri)
        if managed_save or ctx.config.start_delay or not all(uuid in names for uuid in ids):
            return look(ctx, uri, lambda: observe.view_all(
                ctx.virsh, uri, ctx.config, ctx.clock, managed_save=managed_save, ask_uri=ask))
        return UriView(uri, tuple(Guest(uuid, names[uuid], active=False) for uuid in ids),
                       listed=False,
                       canonical=observe.canonical_uri(ctx.virsh, uri, ctx.config)
                       if ask else None)

    return for_each_uri(wanted, view)


def _add_orphans(ctx: Context, views: Mapping[str, UriView],
                 recorded: dict[str, list[str]]) -> None:
    """RESUME_ORPHANS: saved guests nobody recorded join the record (each one warned)."""
    for uri, view in views.items():
        known = recorded.get(uri, [])
        extra = plan.orphans(view, known)
        for uuid in extra:
            guest = view.find(uuid)
            ctx.messages.warn(f"guest {guest.name if guest else uuid} on {uri} has a "
                              "managed-save image but was not recorded; resuming it "
                              "(RESUME_ORPHANS)")
        if extra:
            recorded[uri] = [*known, *extra]


def still_pending(config: Config, recorded: Mapping[str, Sequence[str]],
                  settled: Mapping[str, frozenset[str]],
                  gone: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The guests pending after a start: every recorded guest without a definite outcome.

    Only guests that were resumed, found running, found gone or skipped by
    policy (``model.SETTLED``) leave the record, whatever else happened (a
    failure, a signal, an unreachable or given-up URI, a bug).  Guests of URIs
    no longer in URIS are dropped, as the reference does.
    """
    done = {uri: set(ids) for uri, ids in settled.items()}
    for uri, uuid in gone:
        done.setdefault(uri, set()).add(uuid)
    pending: dict[str, list[str]] = {}
    for uri, ids in recorded.items():
        if uri not in config.uris:
            continue
        left = [uuid for uuid in dict.fromkeys(ids) if uuid not in done.get(uri, set())]
        if left:
            pending[uri] = left
    return pending
