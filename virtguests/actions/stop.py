"""``stop`` and ``shutdown``: save or shut down the running guests, recorded first.

observe (earlier records, every URI's running guests, the seen file) -> plan
(``plan.plan_stop``) -> say what was found (a dry run also prints the commands and
stops there) -> record (the list file, before anything is done) -> execute -> report
(the marker goes, the run report is written).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Callable, Optional

from virtguests import observe, plan, policy, state
from virtguests.actions import records
from virtguests.actions.context import (
    Context,
    for_each_uri,
    holding_lock,
    interrupted_summary,
    look,
    unique,
    warn_config,
    warn_conflicts,
)
from virtguests.actions.records import Checkpoint
from virtguests.config import Config
from virtguests.executor import Executor
from virtguests.exitstatus import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from virtguests.model import Action, Departure, UriView
from virtguests.output import WARNING
from virtguests.virsh import format_argv


def run_stop(ctx: Context, *, force_shutdown: bool = False) -> int:
    status = EXIT_FAIL  # what the top-level handler exits with if a bug ends the run
    try:
        status = _run_stop(ctx, force_shutdown)
        return status
    finally:
        records.write_metrics(ctx, "stop", status)


def _run_stop(ctx: Context, force_shutdown: bool) -> int:
    config = ctx.config
    if force_shutdown:
        chain = config.on_shutdown
        chain = (chain[chain.index(Action.SHUTDOWN):] if Action.SHUTDOWN in chain
                 else (Action.SHUTDOWN,))
        config = replace(config, on_shutdown=chain)
    warn_config(ctx)
    warn_conflicts(ctx)
    with holding_lock(ctx) as held:
        status = stop_flow(ctx, config) if held else EXIT_FAIL
    if ctx.loaded.problems:
        return EXIT_CONFIG
    return status


def run_shutdown(ctx: Context) -> int:
    """stop with ON_SHUTDOWN=shutdown (what comes after shutdown in the chain stays)."""
    return run_stop(ctx, force_shutdown=True)


def stop_flow(ctx: Context, config: Config, command: str = "stop",
              adjust: Optional[Callable[[plan.StopPlan], plan.StopPlan]] = None) -> int:
    """The stop flow; ``drain`` runs it too (*command*), its plan changed by *adjust*
    (run before anything is said or recorded), and keeps the started marker."""
    earlier, damaged = records.recorded_earlier(ctx, stale_warning=True)
    uris = _stop_uris(ctx, config, earlier)
    config = replace(config, uris=tuple(uris))
    views = _observe(ctx, config, uris)
    seen = records.update_seen(ctx, {u: {g.uuid: g.name for g in views[u].guests
                                         if g.active and g.persistent}
                                     for u in uris if views[u].reachable}, replace_uris=True)
    for uri in uris:
        if not views[uri].reachable and seen.get(uri):
            # Keep them recorded, so the next start brings back whatever was powered off.
            earlier = state.merge(earlier, {uri: list(seen[uri])})

    lookup = policy.resolving(ctx.policy, {u: views[u].canonical for u in uris})
    views, peers, homes = observe.for_migration(
        ctx.virsh, config, views, plan.movers(config, [views[u] for u in uris], lookup))
    the_plan = plan.plan_stop(config, [views[u] for u in uris], earlier, lookup, peers, homes)
    if adjust is not None:
        the_plan = adjust(the_plan)
    status = _say_found(ctx, config, [views[u] for u in uris], seen, the_plan)
    if ctx.dry_run:
        _say_commands(ctx, config, the_plan)
        return status

    status = max(status, _record(ctx, the_plan, damaged))
    departed = Departures(ctx, the_plan)
    departed.record.home_again({u: [g.uuid for g in views[u].guests if g.active]
                                for u in uris if views[u].reachable})

    executor = Executor(ctx.virsh, config, ctx.messages, ctx.clock, run_report=ctx.run_report,
                        checkpoint=Checkpoint(ctx, command), departed=departed)
    result = executor.stop(the_plan)  # its bugs are reported: the list file is written
    if departed.record.failed or departed.failed:
        status = max(status, EXIT_FAIL)

    if command != "drain":  # drain stops nothing else: the host stays started
        records.disk(ctx, f"remove the started marker {ctx.paths.marker}",
                     lambda: state.remove(ctx.paths.marker))
    status = max(status, result.status)
    if ctx.clock.cancel.is_set():
        status = interrupted_summary(ctx, command)
    records.write_run_report(ctx, command, status)
    return status


def _stop_uris(ctx: Context, config: Config, earlier: Mapping[str, object]) -> list[str]:
    """URIS; when its line could not be read as written, never fewer hosts than it named.

    Then every URI the broken line still names (or ``default``), and every URI
    in the list file, the pending file and the seen file, are protected.
    """
    salvaged = ctx.loaded.salvaged_uris
    if salvaged is None:
        return unique(config.uris)
    seen = records.read_seen(ctx, warn=False)
    uris = unique([*salvaged, *(u for u in [*earlier, *seen] if _plausible_uri(u))])
    ctx.messages.warn("URIS could not be read as written; protecting every URI it names and "
                      "every URI in the state files: " + " ".join(uris))
    return uris


def _plausible_uri(uri: str) -> bool:
    return bool(uri) and uri.isprintable() and not uri.startswith("-") and " " not in uri


def _observe(ctx: Context, config: Config, uris: Sequence[str]) -> dict[str, UriView]:
    """The running guests of every URI, all URIs at once."""
    ask = {uri: policy.wants_canonical(ctx.policy, uri) for uri in uris}
    return for_each_uri(uris, lambda uri: look(ctx, uri, lambda: observe.view_running(
        ctx.virsh, uri, config, ctx.clock, ask_uri=ask[uri])))


def _say_found(ctx: Context, config: Config, views: Sequence[UriView],
               seen: Mapping[str, Mapping[str, str]], the_plan: plan.StopPlan) -> int:
    """The running guests of each URI, or why a URI could not be listed (exit 1)."""
    status = EXIT_OK
    for view in views:
        uri = view.uri
        if not view.reachable:
            status = EXIT_FAIL
            ctx.messages.say(f"Can't connect to {uri}. Skipping.", WARNING)
            known = seen.get(uri, {})
            names = (f"; last seen running there: {', '.join(known.values())} (recorded, so "
                     "start brings them back)") if known else ""
            ctx.messages.error(f"cannot list guests on {uri}: {view.error}; its guests are not "
                               f"protected{names}")
            continue
        item = next(i for i in the_plan.uris if i.uri == uri)
        names = ", ".join(g.name for g in item.running) or "no running guests."
        ctx.messages.say(f"Running guests on {uri} URI: {names}")
        for planned in item.guests:
            if planned.target_note:
                ctx.messages.say(f"Not migrating {planned.guest.name}: {planned.target_note}")
        for guest in item.running:
            if guest.uuid in item.notes:
                ctx.messages.warn(f"{guest.name} stays running: {item.notes[guest.uuid]}")
        if item.transient_skipped:
            verb = "suspending" if config.suspending else "shutting down"
            ctx.messages.say(f"Not {verb} transient guests on URI: {uri}: "
                             + ", ".join(g.name for g in item.transient_skipped))
    return status


def _say_commands(ctx: Context, config: Config, the_plan: plan.StopPlan) -> None:
    """A dry run: the virsh commands stop would run, and each guest's fallbacks."""
    for argv in plan.stop_commands(the_plan, config, ctx.virsh.argv):
        ctx.messages.say(format_argv(argv))
    for item in the_plan.uris:
        for planned in item.guests:
            if len(planned.actions) > 1:
                ctx.messages.say(f"# {planned.guest.name}: if {planned.actions[0]} fails: "
                                 + " -> ".join(planned.actions[1:]))


def _record(ctx: Context, the_plan: plan.StopPlan, damaged: Sequence[state.BadLine]) -> int:
    """The list file, written before any guest is touched; exit 1 when it or an earlier
    record is lost (the guests are still protected)."""
    status = EXIT_OK
    records.set_aside_unreadable(ctx, damaged)
    if any(b.unreadable for b in damaged):
        status = EXIT_FAIL  # an earlier record is unknown: someone must look at it
    if records.disk(ctx, f"write the list file {ctx.paths.list_file} (guests are still "
                    "protected, but start will not know them)",
                    lambda: state.write_list(ctx.paths.list_file, the_plan.record())):
        records.disk(ctx, f"remove {ctx.paths.pending}", lambda: state.remove(ctx.paths.pending))
    else:
        status = EXIT_FAIL
    return status


class Departures:
    """Each guest that left for a peer: into the migrated record first, then out of the
    list file (which names only guests that start resumes at home).  A power cut
    between the two leaves it in both: start then finds it away, never lost."""

    def __init__(self, ctx: Context, the_plan: plan.StopPlan) -> None:
        self.ctx = ctx
        self.record = records.MigratedRecord(ctx)
        self.entries = the_plan.record()
        self.failed = False

    def __call__(self, departure: Departure) -> None:
        self.record(departure)
        with self.record.lock:
            ids = self.entries.get(departure.home, [])
            if departure.uuid not in ids:
                return
            ids.remove(departure.uuid)
            if not ids:
                del self.entries[departure.home]
            entries = {uri: list(v) for uri, v in self.entries.items()}
            if not records.disk(self.ctx, f"rewrite the list file {self.ctx.paths.list_file} "
                                f"without {departure.name} (migrated)",
                                lambda: state.write_list(self.ctx.paths.list_file, entries)):
                self.failed = True
