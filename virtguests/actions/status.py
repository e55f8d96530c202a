"""``status`` (what the records say: started, or stopped with or without saved guests, and
the guests away on a peer since a stop migrated them) and ``gueststatus`` (the guests on
every URI, as the reference lists them: peers are not asked).  Both only look: nothing is planned,
recorded or executed."""

from __future__ import annotations

from typing import Any, Optional

from virtguests import observe, render, state, virshout
from virtguests.actions import records
from virtguests.actions.context import Context, for_each_uri, refuse_bad_config, unique
from virtguests.exitstatus import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, EXIT_STOPPED
from virtguests.virsh import VirshError

STATUS_PENDING_KEY = "not_resumed"
"""``status --json``'s key for the pending file.  Its name predates "pending"; renaming
it would need a new document format, so it stays (the man page defines it)."""


def run_status(ctx: Context) -> int:
    if refuse_bad_config(ctx, "status"):
        return EXIT_CONFIG
    entries, pending, bad = records.read_recorded(ctx)
    any_pending = any(pending.values()) or any(b.unreadable for b in bad)
    if ctx.paths.list_file.exists() or any_pending:
        # Guests a start could not resume are saved guests still pending: never "started".
        word, code = "stopped, with saved guests", EXIT_STOPPED
    elif ctx.paths.marker.exists():
        word, code = "started", EXIT_OK
    else:
        word, code = "stopped, with no saved guests", EXIT_STOPPED
    away, away_problems = state.read_migrated(ctx.paths.migrated)
    if ctx.json:
        document: dict[str, Any] = {
            "state": word,
            "exit_status": code,
            "list_file": {"path": str(ctx.paths.list_file), "entries": entries,
                          "bad_lines": [str(b) for b in bad if b.path == ctx.paths.list_file]},
            STATUS_PENDING_KEY: {
                "path": str(ctx.paths.pending), "entries": pending,
                "bad_lines": [str(b) for b in bad if b.path == ctx.paths.pending]},
            "migrated": {"path": str(ctx.paths.migrated), "guests": [
                {"uuid": d.uuid, "name": d.name, "home": d.home, "peer": d.peer}
                for d in away], "problems": [str(p) for p in away_problems]},
            "last_run": records.read_run_report(ctx, ctx.messages.warn),
        }
        ctx.messages.out.write(render.json_document(document))
        return code
    ctx.messages.say(word)
    for uri, ids in pending.items():
        ctx.messages.say(f"Not resumed at the last start, kept for the next one: {uri}: "
                         + " ".join(ids))
    for d in away:
        ctx.messages.say(f"Away from home: {d.name} ({d.uuid}) runs on {d.peer}, home "
                         f"{d.home}")
    for line in bad:
        ctx.messages.error(str(line))
    for problem in away_problems:
        ctx.messages.error(str(problem))
    return code


def run_gueststatus(ctx: Context) -> int:
    if refuse_bad_config(ctx):
        return EXIT_CONFIG
    config = ctx.config
    uris = unique(config.uris)
    if ctx.json:
        views = for_each_uri(uris, lambda uri: _describe_uri(ctx, uri))
        ctx.messages.out.write(render.json_document({"uris": [views[u] for u in uris]}))
        return EXIT_FAIL if any(v.get("error") for v in views.values()) else EXIT_OK

    def table(uri: str) -> Optional[str]:
        try:
            return observe.guest_table(ctx.virsh, uri, config)
        except VirshError as err:
            ctx.messages.error(str(err))
            return None

    tables = for_each_uri(uris, table)
    code = EXIT_OK
    for uri in uris:
        ctx.messages.say(f"* {uri} URI:")
        text = tables.get(uri)
        if text is None:
            code = EXIT_FAIL
            ctx.messages.say("")
        else:
            ctx.messages.out.write(virshout.table_without_domain0(text))
            ctx.messages.out.flush()
    return code


def _describe_uri(ctx: Context, uri: str) -> dict[str, Any]:
    config = ctx.config
    view = observe.view_all(ctx.virsh, uri, config, ctx.clock, managed_save=True)
    if not view.reachable:
        return {"uri": uri, "error": view.error, "guests": []}
    persistent: Optional[set[str]] = None
    try:
        persistent = observe.persistent_uuids(ctx.virsh, uri, config)
    except VirshError as err:
        return {"uri": uri, "error": str(err), "guests": []}
    return {"uri": uri, "error": None, "guests": [
        {"uuid": g.uuid, "name": g.name, "active": g.active,
         "persistent": g.uuid in persistent, "managed_save": g.managed_save}
        for g in view.guests]}
