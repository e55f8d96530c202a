"""``drain [--to URI] [--fallback]``: evacuate the running guests to peers now, and stop
nothing else (maintenance).

It is the stop flow (``actions.stop``) under the same lock, each guest's chain cut to
``migrate`` (the whole chain with ``--fallback``), ``--to`` replacing MIGRATE_URIS.
The host stays started (the marker is kept).  The list file gets only the guests a
fallback may save or shut down; each guest that leaves goes into the migrated record,
so that ``start`` brings it home.  A guest that cannot leave (no target, a failed
migration without ``--fallback``) stays running at home, is named, and the exit status
is 1: the host is not drained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from virtguests import plan
from virtguests.actions.context import Context, holding_lock, warn_config, warn_conflicts
from virtguests.actions.stop import stop_flow
from virtguests.exitstatus import EXIT_CONFIG, EXIT_FAIL
from virtguests.model import PROTECTED, Action


def drain_chain(on_shutdown: Sequence[Action], fallback: bool) -> tuple[Action, ...]:
    """``migrate``, then (with *fallback*) ON_SHUTDOWN's other steps."""
    rest = tuple(a for a in on_shutdown if a != Action.MIGRATE) if fallback else ()
    return (Action.MIGRATE, *rest)


def run_drain(ctx: Context, to: Sequence[str] = (), fallback: bool = False) -> int:
    from virtguests.actions import records

    status = EXIT_FAIL  # what the top-level handler exits with if a bug ends the run
    try:
        status = _run_drain(ctx, tuple(to), fallback)
        return status
    finally:
        records.write_metrics(ctx, "drain", status)


def _run_drain(ctx: Context, to: tuple[str, ...], fallback: bool) -> int:
    config = ctx.config
    config = replace(config, on_shutdown=drain_chain(config.on_shutdown, fallback),
                     migrate_uris=to or config.migrate_uris)
    warn_config(ctx)
    warn_conflicts(ctx)
    if not config.migrate_uris:
        ctx.messages.error("drain: no peer to migrate to (MIGRATE_URIS is empty; give "
                           "--to URI)")
        return EXIT_CONFIG
    left: list[str] = []

    def adjust(the_plan: plan.StopPlan) -> plan.StopPlan:
        items = []
        for item in the_plan.uris:
            planned_ids = {g.guest.uuid for g in item.guests}
            transient = {g.uuid for g in item.transient_skipped}
            notes = getattr(item, "notes", {})  # why a migrate-only chain has no target
            for guest in item.running:
                if guest.uuid not in planned_ids:
                    why = notes.get(guest.uuid, "transient (PERSISTENT_ONLY)"
                                    if guest.uuid in transient
                                    else "its chain has no migrate (policy)")
                    ctx.messages.say(f"Not migrating {guest.name} on {item.uri}: {why}")
                    if guest.uuid in notes:
                        left.append(guest.name)
            guests = tuple(g if fallback else replace(g, record=False) for g in item.guests)
            items.append(replace(item, guests=guests))
        return replace(the_plan, uris=tuple(items))

    with holding_lock(ctx) as held:
        status = stop_flow(ctx, config, "drain", adjust) if held else EXIT_FAIL
    if held:
        stayed = [r.name for r in ctx.run_report.results.values()
                  if r.outcome not in PROTECTED]
        if left or stayed:
            ctx.messages.error("drain: not evacuated: " + ", ".join([*left, *stayed]))
            status = max(status, EXIT_FAIL)
    if ctx.loaded.problems:
        return EXIT_CONFIG
    return status
