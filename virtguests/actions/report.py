"""``report``: the last run's per-guest results, for people and for monitoring.

Only reads the run report the last stop or start wrote (``records``); a damaged one:
its problems (FILE:LINE: KEY), what is valid, exit 6.
"""

from __future__ import annotations

from virtguests import render, state
from virtguests.actions.context import Context
from virtguests.exitstatus import EXIT_CONFIG, EXIT_FAIL, EXIT_OK


def run_report(ctx: Context) -> int:
    document, problems = state.read_run_report(ctx.paths.run_report)
    for problem in problems:
        ctx.messages.error(str(problem))
    if ctx.json:
        ctx.messages.out.write(render.json_text(document))
    elif not isinstance(document, dict):
        if not problems:
            ctx.messages.say(f"no run recorded yet ({ctx.paths.run_report})")
        return EXIT_CONFIG if problems else EXIT_OK
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
    if problems:
        return EXIT_CONFIG
    if not isinstance(document, dict):
        return EXIT_OK
    return EXIT_OK if document.get("exit_status") in (0, None) else EXIT_FAIL
