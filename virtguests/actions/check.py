"""``check``: validate the config file and the guest policy; exit 6 on any problem."""

from __future__ import annotations

from virtguests.actions.context import Context, warn_config, warn_conflicts
from virtguests.exitstatus import EXIT_CONFIG, EXIT_OK


def run_check(ctx: Context) -> int:
    warn_config(ctx)
    warn_conflicts(ctx)
    where = str(ctx.loaded.path) if ctx.loaded.path else "no config file (defaults)"
    if ctx.loaded.problems:
        ctx.messages.error(f"{where}: {len(ctx.loaded.problems)} problem(s)")
        return EXIT_CONFIG
    ctx.messages.say(f"{where}: OK")
    return EXIT_OK
