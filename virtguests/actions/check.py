"""``check``: validate the config file and the guest policy; exit 6 on any problem.

``--json``: the same verdict as one document (``problems`` with file, line, key and
message; ``warnings``); the lines on stderr stay as without it.
"""

from __future__ import annotations

from virtguests import render
from virtguests.actions.context import Context, warn_config
from virtguests.config import Problem
from virtguests.exitstatus import EXIT_CONFIG, EXIT_OK


def run_check(ctx: Context) -> int:
    from virtguests import conflicts

    warn_config(ctx)
    host_warnings = [*conflicts.on_host(ctx.host_root), *_metrics_warnings(ctx)]
    for warning in host_warnings:
        ctx.messages.warn(warning)
    where = str(ctx.loaded.path) if ctx.loaded.path else "no config file (defaults)"
    code = EXIT_CONFIG if ctx.loaded.problems else EXIT_OK
    if ctx.json:
        ctx.messages.out.write(render.json_document({
            "config": str(ctx.loaded.path) if ctx.loaded.path else None,
            "ok": not ctx.loaded.problems,
            "exit_status": code,
            "problems": [{"file": p.path, "line": p.line or None, "key": p.key or None,
                          "message": p.message} for p in ctx.loaded.problems],
            "warnings": [*ctx.loaded.warnings, *host_warnings],
        }))
    elif ctx.loaded.problems:
        ctx.messages.error(f"{where}: {len(ctx.loaded.problems)} problem(s)")
    else:
        ctx.messages.say(f"{where}: OK")
    return code


def _metrics_warnings(ctx: Context) -> list[str]:
    """METRICS_FILE's directory must exist when stop and start write it (a warning then)."""
    from pathlib import Path

    if not ctx.config.metrics_file:
        return []
    directory = Path(ctx.config.metrics_file).parent
    if directory.is_dir():
        return []
    return [str(Problem(str(ctx.loaded.path or "config"),
                        ctx.loaded.sources.get("METRICS_FILE", 0), "METRICS_FILE",
                        f"the directory {directory} does not exist: stop and start cannot "
                        "write the metrics file"))]
