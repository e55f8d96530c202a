"""Command line: the same commands, usage line and exit codes as libvirt-guests."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Optional, TextIO

from virtguests.exitstatus import EXIT_DEPENDENCY, EXIT_FAIL, EXIT_OK, EXIT_USAGE
from virtguests.signals import StopRequests

if TYPE_CHECKING:
    from virtguests.actions.context import Context
    from virtguests.clock import Clock
    from virtguests.messages import Messages
    from virtguests.runreport import RunReport
    from virtguests.virsh import Virsh

COMMANDS = ("start", "stop", "status", "restart", "condrestart", "try-restart", "reload",
            "force-reload", "gueststatus", "shutdown")
EXTRA_COMMANDS = ("check", "plan", "report", "drain")
NO_POLICY = ("status", "gueststatus", "report", "reload", "force-reload")
NO_DEPENDENCY = ("status", "report", "reload", "force-reload")
"""Commands that run no virsh and read no YAML: they work, and stay quick (importing sh
and PyYAML to check them doubles status' start-up), whatever sh and PyYAML are
installed; every other command refuses an unserved one (deps.py)."""

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
  drain [--to URI] [--fallback]
                live-migrate the running guests to peers now (MIGRATE_URIS, or each
                --to URI), stopping nothing else; --fallback: a guest that cannot
                leave gets the rest of ON_SHUTDOWN's chain

options:
  --config PATH     config file (env VIRTGUESTS_CONFIG; default: the first of
                    /etc/sysconfig/libvirt-guests, /etc/default/libvirt-guests,
                    /etc/conf.d/libvirt-guests, /usr/local/etc/sysconfig/libvirt-guests)
  --state-dir DIR   keep the list file, marker and reports in DIR
                    (env VIRTGUESTS_STATE_DIR; default /var/lib/libvirt and /var/lock)
  --virsh PATH      virsh to run (env VIRSH; default: virsh on PATH)
  -n, --dry-run     print the virsh commands that would change something; change nothing
  --json            status, gueststatus, plan, report and check print one JSON
                    document (format_version 1: virtguests(8), JSON)
  -v, --verbose     also print each virsh command with its duration, and the virsh
                    processes and connections per URI (stderr)
  -q, --quiet       print only errors
  -h, --help        this help
  --version         print "virtguests VERSION" and exit 0

exit status: 0 success, 1 a guest or URI failed, 2 usage, 3 stopped (status),
  5 sh or PyYAML unusable, 6 bad config.
"""


def _usage(prog: str) -> str:
    return f"Usage: {prog} {{{'|'.join(COMMANDS)}}}"


ARGUMENTS = {"plan": ("stop", "start")}
"""Commands that take a word after them, and the words they accept (the first is the default)."""


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
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--to", action="append", default=[])
    parser.add_argument("--fallback", action="store_true")
    parser.add_argument("command", nargs="*")
    return parser


class _UsageError(Exception):
    pass


def _command(args: argparse.Namespace) -> tuple[str, Optional[str]]:
    """The command and its argument, or _UsageError for anything we cannot mean."""
    for option in ("config", "state_dir", "virsh"):
        if getattr(args, option) == "":
            raise _UsageError(f"--{option.replace('_', '-')} needs a non-empty value")
    words = args.command
    if not words:
        raise _UsageError("no command given")
    command, rest = words[0], words[1:]
    if command not in (*COMMANDS, *EXTRA_COMMANDS):
        raise _UsageError(f"unknown command {command!r}")
    if (args.to or args.fallback) and command != "drain":
        raise _UsageError("--to and --fallback are drain's options")
    for uri in args.to:
        if not uri or not uri.isprintable() or uri.startswith("-") or uri != "".join(uri.split()):
            raise _UsageError(f"--to needs a libvirt URI, not {uri!r}")
    allowed = ARGUMENTS.get(command, ())
    if len(rest) > (1 if allowed else 0):
        raise _UsageError(f"too many arguments for {command}: {' '.join(rest)!r}")
    if rest and rest[0] not in allowed:
        raise _UsageError(f"{command} takes one of {', '.join(allowed)}, not {rest[0]!r}")
    return command, (rest[0] if rest else allowed[0] if allowed else None)


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
    clock: Optional[Clock] = None,
    prog: str = "virtguests",
    make_virsh: Optional[Callable[..., Virsh]] = None,
) -> int:
    """Run one command; returns the exit status (never raises, never prints a traceback
    unless -v).

    *clock* and *make_virsh* (called as ``Virsh`` is) are for tests that run virtguests
    in-process on virtual time.
    """
    from virtguests.clock import Clock
    from virtguests.messages import Messages
    from virtguests.runreport import RunReport

    run_report = RunReport()  # a run starts here
    args_in = list(sys.argv[1:] if argv is None else argv)
    messages = Messages(out if out is not None else sys.stdout,
                        err if err is not None else sys.stderr,
                        verbose="-v" in args_in or "--verbose" in args_in,
                        journal=(environ if environ is not None else os.environ).get(
                            "JOURNAL_STREAM"))
    real_clock = clock if clock is not None else Clock()
    requests = StopRequests(_on_stop_request(real_clock, messages))
    with requests:  # until the output is drained: a late signal changes nothing
        try:
            return _main(args_in, environ if environ is not None else os.environ,
                         messages, run_report, real_clock, requests, prog, make_virsh)
        except Exception as exc:
            messages.internal_error("running virtguests", exc)
            return EXIT_FAIL
        finally:
            messages.close()


def _on_stop_request(clock: Clock, messages: Messages) -> Callable[[int, bool], None]:
    def react(signum: int, first: bool) -> None:
        clock.cancel.set()
        name = signal.Signals(signum).name
        if first:
            messages.error(f"got {name}: finishing what is in flight, starting nothing new")
        else:
            messages.error(f"got {name} again: still finishing what is in flight (every "
                           "virsh call ends within its timeout)")

    return react


def _main(args_in: list[str], env: Mapping[str, str], messages: Messages,
          run_report: RunReport, clock: Clock, requests: StopRequests, prog: str,
          make_virsh: Optional[Callable[..., Virsh]] = None) -> int:
    parser = _parser()
    parser.error = _raise_usage  # type: ignore[method-assign]
    try:
        args = parser.parse_args(args_in)
        if args.help:
            messages.out.write(_usage(prog) + "\n\n" + HELP)
            return EXIT_OK
        if args.version:
            from virtguests import __version__

            messages.out.write(f"virtguests {__version__}\n")
            return EXIT_OK
        command, argument = _command(args)
    except _UsageError as problem:
        messages.error(str(problem))
        messages.out.write(_usage(prog) + "\n")
        return EXIT_USAGE
    messages.quiet = args.quiet
    if command not in NO_DEPENDENCY:
        from virtguests import deps

        refusal = deps.refusal()
        if refusal is not None:
            messages.error(refusal)
            return EXIT_DEPENDENCY

    from virtguests import config as config_mod
    from virtguests import state
    from virtguests.actions.context import Context
    from virtguests.messages import LogHandler
    from virtguests.virsh import Virsh, resolve_path

    handler = LogHandler(messages)  # always: a stray warning goes through the messages too
    handler.setFormatter(logging.Formatter("virtguests: virsh: %(message)s"))
    logger = logging.getLogger("virtguests")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    logger.propagate = False
    loaded = config_mod.load(args.config, env)
    guest_policy = None
    if command not in NO_POLICY:
        from dataclasses import replace

        from virtguests import policy

        guest_policy, problems = policy.load(loaded.config.guest_policy)
        loaded = replace(loaded, problems=(*loaded.problems, *problems), warnings=(
            *loaded.warnings, *policy.unknown_peers(guest_policy, loaded.config.migrate_uris)))
    state_dir = args.state_dir or env.get("VIRTGUESTS_STATE_DIR")
    paths = state.Paths.in_dir(Path(state_dir)) if state_dir else state.Paths.default()
    virsh = (make_virsh or Virsh)(resolve_path(args.virsh, env), environ=env,
                                  default_timeout=loaded.config.query_timeout, sessions=True)
    if clock.cancel.is_set():
        virsh.interrupt()
    requests.on_signal = _and_then(requests.on_signal, virsh.interrupt)
    ctx = Context(loaded, paths, virsh, messages, clock, dry_run=args.dry_run, json=args.json,
                  run_report=run_report, host_root=Path(env.get("VIRTGUESTS_HOST_ROOT") or "/"))
    if guest_policy is not None:
        ctx.policy = guest_policy.lookup
    try:
        return action(command, argument, drain=(tuple(args.to), args.fallback))(ctx)
    finally:
        virsh.close()
        for uri, counts in virsh.started().items():  # -v: what the run cost each URI
            messages.debug(f"virsh on {uri}: {counts.processes} processes, "
                           f"{counts.connections} connections")
        logging.getLogger("virtguests").handlers[:] = []


def _and_then(first: Callable[[int, bool], None],
              then: Callable[[], None]) -> Callable[[int, bool], None]:
    def both(signum: int, is_first: bool) -> None:
        first(signum, is_first)
        then()

    return both


ACTIONS: dict[str, str] = {
    "start": "start.run_start",
    "stop": "stop.run_stop",
    "shutdown": "stop.run_shutdown",
    "status": "status.run_status",
    "gueststatus": "status.run_gueststatus",
    "restart": "restart.run_restart",
    "condrestart": "restart.run_condrestart",
    "try-restart": "restart.run_condrestart",
    "reload": "restart.run_reload",
    "force-reload": "restart.run_reload",
    "check": "check.run_check",
    "plan": "plan.run_plan",
    "report": "report.run_report",
    "drain": "drain.run_drain",
}
"""Every command: ``MODULE.FUNCTION`` in virtguests.actions that runs it."""


def action(command: str, argument: Optional[str] = None,
           drain: tuple[tuple[str, ...], bool] = ((), False)) -> Callable[[Context], int]:
    """The action *command* runs; *argument* is the word after it (``plan``'s), *drain*
    drain's ``--to`` URIs and ``--fallback``.

    Only that command's module is imported: ``status`` must not pay for the planner and
    the executor, and usage errors and ``--help`` import none.
    """
    import importlib

    import virtguests.actions

    module, function = ACTIONS[command].split(".")
    run: Callable[..., int] = getattr(
        importlib.import_module(f"{virtguests.actions.__name__}.{module}"), function)
    if command == "plan":
        return lambda ctx: run(ctx, argument or ARGUMENTS["plan"][0])
    if command == "drain":
        return lambda ctx: run(ctx, drain[0], drain[1])
    return run


def _raise_usage(message: str) -> NoReturn:
    raise _UsageError(message)


def _standard_fds() -> None:
    """Started with stdin, stdout or stderr closed (``>&-``): put /dev/null there.

    Otherwise the next file we open (the lock, a state file) would get fd 1 or
    2, and a progress line would be written into it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _quiet_exit_flush() -> None:
    """Nothing left buffered in sys.stdout/stderr may fail at interpreter exit.

    Python turns a failed final flush (a closed or broken stdout) into exit
    status 120; ours is decided already.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)


def console_main() -> None:
    # Before and after main()'s own handling, SIGINT ends the process like SIGTERM does,
    # without Python's KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _standard_fds()
    name = os.path.basename(sys.argv[0])
    code = main(prog="virtguests" if name in ("", "__main__.py") else name)
    _quiet_exit_flush()
    sys.exit(code)
