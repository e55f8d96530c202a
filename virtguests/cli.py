"""Command line: the same commands, usage line and exit codes as libvirt-guests."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, TextIO

if TYPE_CHECKING:
    from virtguests.clock import Clock
    from virtguests.report import Reporter
    from virtguests.service import Context

COMMANDS = ("start", "stop", "status", "restart", "condrestart", "try-restart", "reload",
            "force-reload", "gueststatus", "shutdown")
EXTRA_COMMANDS = ("check", "plan", "report")
NO_POLICY = ("status", "gueststatus", "report", "reload", "force-reload")

HELP = """\
Save or shut down libvirt guests when the host stops; bring them back when it boots.
A drop-in replacement for libvirt-guests: same config file, variables, commands,
messages, exit codes and list file.

commands:
  start         resume the guests recorded by the last stop (ON_BOOT=start)
  stop          save (ON_SHUTDOWN=suspend) or shut down the running guests, record them
  shutdown      stop with ON_SHUTDOWN=shutdown
  status        started (exit 0), stopped with/without saved guests (exit 3)
  gueststatus   list the guests on every configured URI
  restart       stop, then start
  condrestart, try-restart
                restart only when started
  reload, force-reload
                nothing to do: the config is read on every run
  check         validate the config file (and the guest policy); exit 6 on any problem
  plan [stop|start]
                show what stop (default) or start would do to each guest now, and the
                virsh commands; changes nothing (--json: one JSON document)
  report        the last run's per-guest results (--json for monitoring)

options:
  --config PATH     config file (env VIRTGUESTS_CONFIG; default: the first of
                    /etc/sysconfig/libvirt-guests, /etc/default/libvirt-guests,
                    /etc/conf.d/libvirt-guests, /usr/local/etc/sysconfig/libvirt-guests)
  --state-dir DIR   keep the list file, marker and reports in DIR
                    (env VIRTGUESTS_STATE_DIR; default /var/lib/libvirt and /var/lock)
  --virsh PATH      virsh to run (env VIRSH; default: virsh on PATH)
  -n, --dry-run     print the virsh commands that would change something; change nothing
  --json            status, gueststatus, plan and report print one JSON document
  -v, --verbose     also print each virsh command with its duration (stderr)
  -q, --quiet       print only errors
  -h, --help        this help

exit status: 0 success, 1 a guest or URI failed, 2 usage, 3 stopped (status), 6 bad config.
"""


def _usage(prog: str) -> str:
    return f"Usage: {prog} {{{'|'.join(COMMANDS)}}}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--state-dir")
    parser.add_argument("--virsh")
    parser.add_argument("-n", "--dry-run", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("command", nargs="*")
    return parser


class _UsageError(Exception):
    pass


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
    clock: Optional[Clock] = None,
    prog: str = "virtguests",
) -> int:
    """Run one command; returns the exit status (never raises for user errors)."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    env = os.environ if environ is None else environ
    parser = _parser()
    parser.error = _raise_usage  # type: ignore[method-assign]
    try:
        args = parser.parse_args(args_in)
    except _UsageError as problem:
        stderr.write(f"virtguests: {problem}\n")
        stdout.write(_usage(prog) + "\n")
        return 2
    if args.help:
        stdout.write(_usage(prog) + "\n\n" + HELP)
        return 0
    words = args.command
    plan_of = words[1] if len(words) == 2 and words[0] == "plan" else "stop"
    if not words or words[0] not in (*COMMANDS, *EXTRA_COMMANDS) \
            or (len(words) != 1 and not (words[0] == "plan" and plan_of in ("stop", "start"))):
        stdout.write(_usage(prog) + "\n")
        return 2
    command = words[0]

    from virtguests import config as config_mod
    from virtguests import service, state
    from virtguests.clock import Clock
    from virtguests.report import Reporter
    from virtguests.virsh import Virsh, resolve_path

    if args.verbose:
        handler = logging.StreamHandler(stderr)
        handler.setFormatter(logging.Formatter("virtguests: virsh: %(message)s"))
        logger = logging.getLogger("virtguests")
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG)
    loaded = config_mod.load(args.config, env)
    guest_policy = None
    if command not in NO_POLICY:
        from dataclasses import replace

        from virtguests import policy

        guest_policy, problems = policy.load(loaded.config.guest_policy)
        loaded = replace(loaded, problems=(*loaded.problems, *problems))
    state_dir = args.state_dir or env.get("VIRTGUESTS_STATE_DIR")
    paths = state.Paths.in_dir(Path(state_dir)) if state_dir else state.Paths.default()
    real_clock = clock if clock is not None else Clock()
    reporter = Reporter(stdout, stderr, quiet=args.quiet)
    virsh = Virsh(resolve_path(args.virsh, env), environ=env,
                  default_timeout=loaded.config.query_timeout)
    ctx = service.Context(loaded, paths, virsh, reporter, real_clock,
                          dry_run=args.dry_run, json=args.json)
    if guest_policy is not None:
        ctx.policy = guest_policy.lookup
    with _signals_stop(real_clock.cancel, virsh.interrupt, reporter):
        if command == "plan":
            return service.plan_command(ctx, plan_of)
        return _dispatch(ctx, command)


def _dispatch(ctx: Context, command: str) -> int:
    from virtguests import service

    if command == "start":
        return service.start(ctx)
    if command == "stop":
        return service.stop(ctx)
    if command == "shutdown":
        return service.stop(ctx, force_shutdown=True)
    if command == "status":
        return service.status(ctx)
    if command == "gueststatus":
        return service.gueststatus(ctx)
    if command == "check":
        return service.check(ctx)
    if command == "report":
        return service.report_command(ctx)
    if command in ("reload", "force-reload"):
        return service.EXIT_CONFIG if service.refuse_bad_config(ctx) else service.EXIT_OK
    if command in ("condrestart", "try-restart") and not service.marker_exists(ctx):
        return service.EXIT_CONFIG if service.refuse_bad_config(ctx) else service.EXIT_OK
    if service.refuse_bad_config(ctx):
        return service.EXIT_CONFIG
    code = service.stop(ctx)
    return code if code != 0 else service.start(ctx)


def _raise_usage(message: str) -> NoReturn:
    raise _UsageError(message)


class _signals_stop:
    """SIGTERM/SIGINT: start nothing new, let calls in flight end, then exit non-zero."""

    def __init__(self, cancel: threading.Event, interrupt: Callable[[], None],
                 reporter: Reporter) -> None:
        self.cancel = cancel
        self.interrupt = interrupt
        self.reporter = reporter
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if not self.cancel.is_set():
            self.reporter.error(f"got {signal.Signals(signum).name}: finishing what is "
                                "in flight, starting nothing new")
        self.cancel.set()
        self.interrupt()

    def __enter__(self) -> _signals_stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def console_main() -> None:
    name = os.path.basename(sys.argv[0])
    sys.exit(main(prog="virtguests" if name in ("", "__main__.py") else name))
