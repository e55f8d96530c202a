"""``plan [stop|start]``: what stop or start would do to each guest right now, and the
virsh commands; changes nothing.

observe (as stop or start does) -> plan (the same pure planner, ``virtguests.plan``) ->
report (a table, or one JSON document).  Nothing is recorded or executed.
"""

from __future__ import annotations

from typing import Any

from virtguests import commands, observe, plan, policy, render
from virtguests.actions import records
from virtguests.actions.context import Context, for_each_uri, refuse_bad_config, unique
from virtguests.actions.start import read_migrated, return_views, start_views
from virtguests.exitstatus import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from virtguests.model import Action, Outcome, PlanNote, UriView
from virtguests.virsh import format_argv


def run_plan(ctx: Context, which: str = "stop") -> int:
    """What stop or start would do to each guest right now; changes nothing."""
    if refuse_bad_config(ctx):
        return EXIT_CONFIG
    config = ctx.config
    uris = unique(config.uris)
    entries: list[dict[str, Any]] = []
    if which == "stop":
        views = for_each_uri(uris, lambda uri: observe.view_running(
            ctx.virsh, uri, config, ctx.clock, ask_uri=policy.wants_canonical(ctx.policy, uri)))
        lookup = policy.resolving(ctx.policy, {u: views[u].canonical for u in uris})
        views, peers, homes = observe.for_migration(
            ctx.virsh, config, views, plan.movers(config, [views[u] for u in uris], lookup))
        the_plan = plan.plan_stop(config, [views[u] for u in uris], {}, lookup, peers, homes)
        for uri in uris:
            entries.append(_stop_entry(ctx, views[uri], the_plan))
    else:
        recorded, _ = records.recorded_earlier(ctx, stale_warning=False)
        wanted = [u for u in uris if u in recorded]
        views = start_views(ctx, recorded, wanted)
        start_plan = plan.plan_start(config, recorded, views, policy.resolving(
            ctx.policy, {u: v.canonical for u, v in views.items()}))
        for uri in wanted:
            entries.append(_start_entry(ctx, views[uri], start_plan))
    document: dict[str, Any] = {"command": which, "uris": entries}
    failed = any(e["error"] for e in entries)
    if which == "start":
        document["returns"], bad = _returns(ctx)
        failed = failed or bad
    if ctx.json:
        ctx.messages.out.write(render.json_document(document))
    else:
        _print_returns(ctx, document.get("returns", []))
        _print_plan(ctx, document)
    return EXIT_FAIL if failed else EXIT_OK


def _returns(ctx: Context) -> tuple[list[dict[str, Any]], bool]:
    """The migrated record's guests as start would bring them home; True when start
    would fail (a damaged record, a host not seen, a guest gone or not running)."""
    departures, status = read_migrated(ctx, set_aside=False)
    the_plan = plan.plan_return(ctx.config, departures, return_views(ctx, departures))
    out = []
    for item in the_plan.guests:
        d = item.departure
        out.append({"name": d.name, "uuid": d.uuid, "home": d.home, "peer": d.peer,
                    "note": item.decided, "detail": item.detail,
                    "commands": [] if item.decided is not None else [ctx.virsh.argv(
                        d.peer, commands.migrate(d.uuid, d.home, ctx.config.migrate_options))]})
    bad = status != EXIT_OK or any(g.decided not in (None, Outcome.AWAY, Outcome.ALREADY_ACTIVE)
                                   for g in the_plan.guests)
    return out, bad


def _print_returns(ctx: Context, returns: list[dict[str, Any]]) -> None:
    if not returns:
        return
    ctx.messages.say("Bringing home (the migrated record):")
    rows = [("GUEST", "FROM", "ACTION", "COMMAND")]
    for item in returns:
        what = Action.MIGRATE.value if item["note"] is None else \
            f"{item['note']}: {item['detail']}"
        rows.append((item["name"], item["peer"], what,
                     format_argv(item["commands"][0]) if item["commands"] else ""))
    for line in render.table(rows, indent="  "):
        ctx.messages.say(line)


def _stop_entry(ctx: Context, view: UriView, the_plan: plan.StopPlan) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": view.uri, "error": view.error, "guests": []}
    item = next((i for i in the_plan.uris if i.uri == view.uri), None)
    if item is None:
        return entry
    acted_on = {s.guest.uuid for s in item.guests}
    for group in item.by_order():
        for planned in group:
            entry["guests"].append({
                "name": planned.guest.name, "uuid": planned.guest.uuid, "order": planned.order,
                "actions": list(planned.actions),
                "timeout": planned.timeout if Action.SHUTDOWN in planned.actions else None,
                "commands": [ctx.virsh.argv(view.uri, plan.step_call(planned, a, ctx.config))
                             for a in planned.actions],
                "target": planned.target, "target_note": planned.target_note or None,
            })
    for guest in item.running:
        if guest.uuid not in acted_on:
            why = item.notes.get(guest.uuid) or (
                PlanNote.TRANSIENT if guest in item.transient_skipped
                else PlanNote.LEFT_RUNNING)
            entry["guests"].append({"name": guest.name, "uuid": guest.uuid, "order": None,
                                    "actions": [], "timeout": None, "commands": [],
                                    "note": why, "target": None,
                                    "target_note": item.notes.get(guest.uuid)})
    return entry


def _start_entry(ctx: Context, view: UriView,
                 start_plan: plan.StartPlan) -> dict[str, Any]:
    entry: dict[str, Any] = {"uri": view.uri, "error": view.error, "guests": [],
                             "listed": view.listed}
    item = next((i for i in start_plan.uris if i.uri == view.uri), None)
    for guest in sorted(item.guests if item else (), key=lambda g: g.order):
        calls = []
        if guest.decided is None:
            calls.append(ctx.virsh.argv(view.uri, commands.start(guest.uuid, ctx.config)))
        entry["guests"].append({
            "name": guest.name, "uuid": guest.uuid, "order": guest.order,
            "actions": [Action.START] if guest.decided is None else [],
            "note": guest.decided,
            "delay_after": guest.delay_after, "commands": calls})
    for uri, uuid in start_plan.gone:
        if uri == view.uri:
            entry["guests"].append({"name": None, "uuid": uuid, "order": None, "actions": [],
                                    "note": PlanNote.GONE, "commands": []})
    return entry


def _print_plan(ctx: Context, document: dict[str, Any]) -> None:
    for entry in document["uris"]:
        ctx.messages.say(f"{entry['uri']}:")
        if entry["error"]:
            ctx.messages.say(f"  cannot list guests: {entry['error']}")
            continue
        if entry.get("listed") is False:
            ctx.messages.say("  (not listed: names from the last stop; virsh start reports "
                             "guests already running)")
        migrating = any(g.get("target") or g.get("target_note") for g in entry["guests"])
        rows = [("GUEST", "ORDER", "ACTIONS", "TIMEOUT", *(("TARGET",) if migrating else ()),
                 "COMMAND")]
        notes: list[str] = []
        for guest in entry["guests"]:
            name = str(guest["name"] or guest["uuid"])
            if guest.get("target_note"):
                notes.append(f"  {name}: {guest['target_note']}")
            actions = " -> ".join(guest["actions"]) or (
                "none" if guest.get("target_note") else guest.get("note")) or "none"
            timeout = guest.get("timeout")
            target = (guest.get("target") or ("none" if guest.get("target_note") else ""),)
            rows.append((name, "" if guest["order"] is None else str(guest["order"]),
                         actions, "" if timeout is None else f"{timeout}s",
                         *(target if migrating else ()),
                         format_argv(guest["commands"][0]) if guest["commands"] else ""))
        if len(rows) == 1:
            ctx.messages.say("  no guests to act on")
            continue
        for line in [*render.table(rows, indent="  "), *notes]:
            ctx.messages.say(line)
