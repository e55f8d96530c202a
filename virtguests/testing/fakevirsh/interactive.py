"""virsh without a command: command lines read on stdin, as virsh 9.0 reads a pipe.

As recorded (``fixtures/*-session-*.yaml``): once connected, the banner; before each line
the prompt, then the line echoed (real readline scrolls one wider than 80 columns, the fake
does not), then each command's output as a process of its own would print it and its
errors on stderr, flushed before the next prompt; at EOF a newline and exit status 0,
whatever failed.  A failed connection prints the one-process errors and exits 1 before
reading anything.  Once the host is unreachable, each command prints the reconnect error
(``qemu-session-lost``) and is not run.

Each line is one call to the host simulation (fault rules count it, the log has a line for
it with the session's pid, a command string as one), the connection and the first line
counting as one, as they would in a process of their own; a line that is one ``echo`` is
the protocol's marker and not logged.
"""

from __future__ import annotations

import os
import sys
import time

from virtguests.testing.fakevirsh.commandline import VirshCall, split_commands
from virtguests.testing.fakevirsh.commands import CONNECT_FAILED, execute, execute_script
from virtguests.testing.fakevirsh.errors import Unsupported
from virtguests.testing.fakevirsh.main import state_file
from virtguests.testing.fakevirsh.process import CallerProcess
from virtguests.testing.fakevirsh.rendering import write
from virtguests.testing.fakevirsh.state import HostClock
from virtguests.testing.recordings import fixtures_dir, load_yaml

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from typing import Callable

PROMPT = "virsh # "
FAILED_RECONNECT = "error: Failed to reconnect to the hypervisor\n"


def _banner() -> str:
    """What virsh prints once connected, before its first prompt (as recorded)."""
    recorded = load_yaml(os.path.join(fixtures_dir(), "test-session-no-markers.yaml"))
    return str(recorded["stdout"]).split(PROMPT, 1)[0]


class _Command(CallerProcess):
    """A command of the session: its process is the session's, started when it was read."""

    def __init__(self) -> None:
        super().__init__()
        self.read_at = time.time()

    def spawned(self) -> float:
        return self.read_at


def _out(text: str, stream: str = "stdout") -> None:
    write(getattr(sys, stream), text)


def session(call: VirshCall, log: Callable[[list[str], float, int], None]) -> int:
    options = call.argv
    connect = VirshCall([*options, "connect"], _Command())
    started = time.time()
    status, _, err = execute(connect, state_file(os.environ, HostClock()), HostClock())
    if status != 0:
        log([*options, "connect"], started, status)
        _out(err, "stderr")
        return status
    _out(_banner())
    counted = connect.counted_rules  # the first command shares the connection's count
    first = True
    while True:
        _out(PROMPT)
        raw = sys.stdin.buffer.readline()
        if not raw:
            _out("\n")
            return 0
        line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
        _out(line + "\n")
        try:
            commands = split_commands(line)
        except Unsupported as exc:
            status = 1
            _out(f"error: fakevirsh: {exc}\n", "stderr")
            continue
        if len(commands) == 1 and commands[0][0] == "echo":
            status = _echo(commands[0][1:])
        elif commands:
            status = _run([*options, *(commands[0] if len(commands) == 1 else [line])],
                          first, counted, log)
            first = False


def _echo(words: list[str]) -> int:
    if words[:1] == ["--err"]:
        _out(f"error: {' '.join(words[1:])}\n", "stderr")
        _out("\n")
    else:
        _out(" ".join(words) + "\n")
    return 0


def _run(argv: list[str], first: bool, counted: set[int],
         log: Callable[[list[str], float, int], None]) -> int:
    started = time.time()
    status = 2
    try:
        try:
            call = VirshCall(argv, _Command(), counted_rules=counted if first else None)
            if call.command == "event":
                raise Unsupported("'event' in a session is not simulated")
            clock = HostClock()
            run = execute_script if call.script else execute
            status, out, err = run(call, state_file(os.environ, clock), clock,
                                   count_call=not first)
        except Unsupported as exc:
            status, out, err = 1, "\n", f"error: fakevirsh: {exc}\n"
        if status != 0 and err.startswith(CONNECT_FAILED):
            err = FAILED_RECONNECT + err.split("\n", 1)[1]
        _out(err, "stderr")
        _out(out)
    finally:
        log(argv, started, status)
    return status
