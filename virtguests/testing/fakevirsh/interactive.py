"""virsh without a command: command lines read on stdin, as virsh 9.0 reads a pipe.

As recorded (``fixtures/*-session-*.yaml``): once connected, the banner; before each line
the prompt, then the line echoed (real readline scrolls one wider than 80 columns, the fake
does not), then each command's output as a process of its own would print it and its
errors on stderr, flushed before the next prompt; at EOF a newline and exit status 0,
whatever failed.  A failed connection prints the one-process errors and exits 1 before
reading anything.  Once the host is unreachable, each command prints the reconnect error
(``qemu-session-lost``) and is not run.

Each line is one call to the host simulation (fault rules count it, the log and the journal
have a line for it with the session's pid and a ``call`` of its own, a command string as
one); connecting is counted with the first line (``unreachable_calls``) and is no call for
the fault rules or the journal, as in a process of its own; a line that is one ``echo`` is
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
    from collections.abc import Mapping
    from typing import Callable, Optional

PROMPT = "virsh # "
FAILED_RECONNECT = "error: Failed to reconnect to the hypervisor\n"


def _banner() -> str:
    """What virsh prints once connected, before its first prompt (as recorded)."""
    recorded = load_yaml(os.path.join(fixtures_dir(), "test-session-no-markers.yaml"))
    return str(recorded["stdout"]).split(PROMPT, 1)[0]


class _Command(CallerProcess):
    """A command of the session: its process is the session's, started when it was read."""

    count = 0

    def __init__(self, environ: Optional[Mapping[str, str]] = None, *,
                 line: bool = True) -> None:
        super().__init__(environ)
        self.read_at = time.time()
        _Command.count += line
        self.number = _Command.count if line else 0

    def call_id(self) -> str:
        return f"{os.getpid()}.{self.number}"

    def spawned(self) -> float:
        return self.read_at


def _out(text: str, stream: str = "stdout") -> None:
    write(getattr(sys, stream), text)


def session(call: VirshCall, log: Callable[[list[str], float, int, str], None]) -> int:
    options = call.argv
    # connecting is no command of virtguests': no fault rule, no journal line
    quiet = {k: v for k, v in os.environ.items() if k != "VIRTGUESTS_FAKE_JOURNAL"}
    process = _Command(quiet | {"VIRTGUESTS_FAKE_FAULTS": "off"}, line=False)
    connect = VirshCall([*options, "connect"], process)
    started = time.time()
    status, _, err = execute(connect, state_file(os.environ, HostClock()), HostClock())
    if status != 0:
        log([*options, "connect"], started, status, process.call_id())
        _out(err, "stderr")
        _history()
        return status
    _out(_banner())
    first = True
    while True:
        _out(PROMPT)
        raw = sys.stdin.buffer.readline()
        if not raw:
            _out("\n")
            _history()
            return 0
        line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
        _out(line + "\n")
        try:
            commands = split_commands(line)
        except Unsupported as exc:
            _out(f"error: fakevirsh: {exc}\n", "stderr")
            continue
        if len(commands) == 1 and commands[0][0] == "echo":
            _echo(commands[0][1:])
        elif commands:
            _run([*options, *(commands[0] if len(commands) == 1 else [line])],
                 _Command(), first, log)
            first = False


def _history() -> None:
    """At exit virsh writes its history under $XDG_CACHE_HOME; it says so where it cannot."""
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache and os.path.exists(cache) and not os.path.isdir(cache):
        _out(f"error: Failed to create '{cache}/libvirt/virsh': Not a directory\n", "stderr")


def _echo(words: list[str]) -> None:
    if words[:1] == ["--err"]:
        _out(f"error: {' '.join(words[1:])}\n", "stderr")
        _out("\n")
    else:
        _out(" ".join(words) + "\n")


def _run(argv: list[str], process: _Command, first: bool,
         log: Callable[[list[str], float, int, str], None]) -> None:
    """One line; the first was counted with the connection (``unreachable_calls``)."""
    started = time.time()
    status = 2
    try:
        try:
            call = VirshCall(argv, process)
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
        log(argv, started, status, process.call_id())
