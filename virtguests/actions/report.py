"""``report``: the last run's per-guest results, for people and for monitoring.

Only reads the run report the last stop or start wrote (``records``), and the migrated
record (guests away on a peer, named after the table); a damaged one:
its problems (FILE:LINE: KEY), what is valid, exit 6.  No run recorded yet is exit 1,
text or JSON: monitoring that asks whether the last run went well gets no yes before
there is a run (a host whose unit never ran, a state directory that was lost).
"""

from __future__ import annotations

from virtguests import render, state
from virtguests.actions.context import Context
from virtguests.exitstatus import EXIT_CONFIG, EXIT_FAIL, EXIT_OK


def run_report(ctx: Context) -> int:
    document, problems = state.read_run_report(ctx.paths.run_report)
    away, record_problems = state.read_migrated(ctx.paths.migrated)
    problems = [*problems, *record_problems]
    for problem in problems:
        ctx.messages.error(str(problem))
    recorded = isinstance(document, dict)
    if ctx.json:
        ctx.messages.out.write(render.json_document(
            {**(document if isinstance(document, dict) else {}), "recorded": recorded,
             "away": [{"uuid": d.uuid, "name": d.name, "home": d.home, "peer": d.peer}
                      for d in away],
             "path": str(ctx.paths.run_report), "problems": [str(p) for p in problems]}))
    elif not isinstance(document, dict):
        if not problems:
            ctx.messages.say(f"no run recorded yet ({ctx.paths.run_report})")
    else:
        ctx.messages.say(f"last run: {document.get('command')}, exit status "
                         f"{document.get('exit_status')}")
        rows = [("GUEST", "URI", "OUTCOME", "STEPS", "SECONDS")]
        for guest in document.get("guests", []):
            steps = " -> ".join(f"{s['action']}:{s['result']}" for s in guest.get("steps", []))
            seconds = sum(float(s.get("seconds", 0)) for s in guest.get("steps", []))
            rows.append((str(guest.get("name")), str(guest.get("uri")),
                         str(guest.get("outcome")), steps, f"{seconds:.1f}"))
        for line in render.table(rows):
            ctx.messages.say(line)
        for entry in document.get("virsh", []):
            ctx.messages.say(f"virsh on {entry['uri']}: {entry['processes']} processes, "
                             f"{entry['connections']} connections")
    if not ctx.json:
        for departure in away:  # the migrated record, in status' words
            ctx.messages.say(f"Away from home: {departure.name} ({departure.uuid}) runs on "
                             f"{departure.peer}, home {departure.home}")
    if problems:
        return EXIT_CONFIG
    if not isinstance(document, dict):
        return EXIT_FAIL
    return EXIT_OK if document.get("exit_status") in (0, None) else EXIT_FAIL
