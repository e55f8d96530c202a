"""The service manager's compositions: ``restart`` (stop, then start), ``condrestart`` and
``try-restart`` (restart only when started), ``reload`` and ``force-reload`` (nothing to
do: the config is read on every run; only a bad one is refused)."""

from __future__ import annotations

from virtguests.actions import records
from virtguests.actions.context import Context, refuse_bad_config
from virtguests.actions.start import run_start
from virtguests.actions.stop import run_stop
from virtguests.exitstatus import EXIT_CONFIG, EXIT_OK


def run_reload(ctx: Context) -> int:
    return EXIT_CONFIG if refuse_bad_config(ctx) else EXIT_OK


def run_restart(ctx: Context) -> int:
    if refuse_bad_config(ctx):
        return EXIT_CONFIG
    code = run_stop(ctx)
    return code if code != EXIT_OK else run_start(ctx)


def run_condrestart(ctx: Context) -> int:
    if not records.marker_exists(ctx):
        return run_reload(ctx)
    return run_restart(ctx)
