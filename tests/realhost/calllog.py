"""A ``--virsh`` wrapper for real-host tests: every virsh call virtguests makes, logged,
whether it runs as a process of its own or as a line of a long-lived session
(virtguests.session), with a hook after each answer, before virtguests reads it.

A session's lines are told apart by the session protocol itself: a command line, then
``echo --err MARK`` and ``echo MARK``; its answer ends at the line MARK on stdout, and it
failed if an ``error:`` line came on stderr before ``error: MARK``.  The wrapper stands
between virtguests and the real virsh on all three streams, so it can act (SIGSTOP a
libvirtd, hold the answer) before virtguests has seen the answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from tools.realhost.libvirtd import PrivateLibvirtd

    from .cli import Run, VirtGuestsCli

_WRAPPER = r'''#!{python} -I
"""virsh for virtguests in a test: log each call, run the real virsh, maybe act."""
import json, os, shlex, signal, subprocess, sys, threading, time

LOG, REAL, WEDGED = {log!r}, {real!r}, {wedged!r}
WEDGE_URI, WEDGE_PID = {wedge_uri!r}, {wedge_pid!r}
PAUSE_URI, PAUSE_VERB, PAUSED, RELEASED = {pause_uri!r}, {pause_verb!r}, {paused!r}, {released!r}
args = sys.argv[1:]
target = args[:2] if args[:1] == ["-c"] else []
lock = threading.Lock()


def note(**fields):
    fields.update(t=time.monotonic(), pid=os.getpid())
    fields.setdefault("call", str(os.getpid()))
    with lock, open(LOG, "a") as f:
        f.write(json.dumps(fields) + "\n")


def verb(argv):
    words = [a for a in argv[len(target):] if not a.startswith("-")]
    return words[0].split()[0] if words else ""


def first(path):
    try:
        open(path, "x").close()
        return True
    except FileExistsError:
        return False


def answered(argv, code):
    """After a call's answer, before virtguests reads it."""
    if WEDGE_URI and target == ["-c", WEDGE_URI] and verb(argv) == "list" and first(WEDGED):
        os.kill(WEDGE_PID, signal.SIGSTOP)
        note(event="wedged")
    if (PAUSE_URI and code == 0 and target == ["-c", PAUSE_URI]
            and verb(argv) == PAUSE_VERB and first(PAUSED)):
        deadline = time.monotonic() + 120
        while not os.path.exists(RELEASED) and time.monotonic() < deadline:
            time.sleep(0.02)
        note(event="paused")


def one_process():
    note(event="start", argv=args)
    code = subprocess.call([REAL, *args])
    note(event="end", argv=args, exit=code)
    answered(args, code)
    sys.exit(code)


def words(line):
    """A session's line as the argv of a process of its own (virsh's quoting is a
    shell's, for what virtguests sends)."""
    try:
        return shlex.split(line)
    except ValueError:
        return [line]


def session():
    """Its opening (connecting, up to virtguests' first echo) is a call with no command."""
    proc = subprocess.Popen([REAL, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    opening = (f"{{os.getpid()}}.0", list(target))
    note(event="start", argv=opening[1], call=opening[0])
    calls = {{}}        # mark -> (call id, argv)
    marks = set()      # every MARK of an `echo --err MARK` sent (a greeting's too)
    failed = {{}}       # mark -> whether an error line came before error: MARK
    seen_err = threading.Condition()

    def feed():
        nonlocal opening
        last, n = None, 0
        for raw in sys.stdin.buffer:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("echo --err "):
                marks.add(line[len("echo --err "):])
            elif line.startswith("echo "):
                if last is not None or opening is not None:
                    calls[line[len("echo "):]] = last or opening
                last = opening = None
            else:
                n += 1
                last = (f"{{os.getpid()}}.{{n}}", [*target, *words(line)])
                note(event="start", argv=last[1], call=last[0])
            proc.stdin.write(raw)
            proc.stdin.flush()
        proc.stdin.close()

    def errors():
        error = False
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            mark = line[len("error: "):]
            if line.startswith("error: ") and mark in marks:
                with seen_err:
                    failed[mark], error = error, False
                    seen_err.notify_all()
            elif line.startswith("error: "):
                error = True
            sys.stderr.buffer.write(raw)
            sys.stderr.buffer.flush()

    threading.Thread(target=feed, daemon=True).start()
    threading.Thread(target=errors, daemon=True).start()
    for raw in proc.stdout:
        mark = raw.decode("utf-8", "replace").rstrip("\n")
        if mark in calls:
            call, argv = calls.pop(mark)
            with seen_err:
                seen_err.wait_for(lambda: mark in failed, timeout=10)
            code = 1 if failed.get(mark, True) else 0
            note(event="end", argv=argv, call=call, exit=code)
            answered(argv, code)
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
    sys.exit(proc.wait())


if args[len(target):]:
    one_process()
session()
'''


class CallLog:
    """A ``--virsh`` wrapper: every call virtguests makes, with when it started and ended.

    With ``wedge=(URI, PID)`` it SIGSTOPs process PID (a libvirtd) once the first
    listing on URI has answered, before virtguests reads that answer.  With
    ``pause=(URI, VERB)`` it holds the answer of the first successful VERB on URI
    until :meth:`release` (at most 120 s): the test acts in between.
    """

    def __init__(self, root: Path, wedge: Optional[tuple[str, int]] = None,
                 pause: Optional[tuple[str, str]] = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "virsh"
        self.log = root / "virsh-calls.jsonl"
        self.mark, self.ack = root / "paused", root / "released"
        real = shutil.which("virsh")
        assert real, "virsh not on PATH"
        wedge_uri, wedge_pid = wedge if wedge else ("", 0)
        pause_uri, pause_verb = pause if pause else ("", "")
        self.path.write_text(_WRAPPER.format(
            python=sys.executable, log=str(self.log), real=real,
            wedged=str(root / "wedged"), wedge_uri=wedge_uri, wedge_pid=wedge_pid,
            pause_uri=pause_uri, pause_verb=pause_verb, paused=str(self.mark),
            released=str(self.ack)))
        self.path.chmod(0o755)

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def calls(self, uri: Optional[str] = None) -> list[dict[str, Any]]:
        """One dict per call (its ``start`` event, plus ``end``/``exit`` once it ended)."""
        calls: dict[str, dict[str, Any]] = {}
        for event in self.events():
            if event["event"] == "start":
                calls[event["call"]] = {"argv": event["argv"], "start": event["t"],
                                        "end": None, "exit": None}
            elif event["event"] == "end" and event["call"] in calls:
                calls[event["call"]].update(end=event["t"], exit=event["exit"])
        return [c for c in calls.values()
                if uri is None or c["argv"][:2] == ["-c", uri]]

    def wedged_at(self) -> Optional[float]:
        times = [e["t"] for e in self.events() if e["event"] == "wedged"]
        return times[0] if times else None

    def paused(self) -> bool:
        return self.mark.exists()

    def release(self) -> None:
        self.ack.touch()

    def describe(self, since: float = 0.0) -> str:
        return "\n".join(
            f"  +{c['start'] - since:7.2f}s "
            + (f"exit {c['exit']} after {c['end'] - c['start']:.2f}s"
               if c["end"] is not None else "no end (killed or running)")
            + f": virsh {' '.join(c['argv'])}"
            for c in self.calls()) or "  <no calls>"


def verb(call: dict[str, Any]) -> str:
    """The virsh command of a call (``list`` for a command string of listings;
    ``connect`` for a session's opening)."""
    argv = call["argv"][2:] if call["argv"][:1] == ["-c"] else call["argv"]
    words = [a for a in argv if not a.startswith("-")]
    return words[0].split()[0] if words else "connect"


def names_guest(call: dict[str, Any], uuid: str, name: str) -> bool:
    return any(uuid in a or a == name or name in a.split() for a in call["argv"])


def stop_on_a_frozen_daemon(cli: VirtGuestsCli, calls: CallLog, daemon: PrivateLibvirtd,
                            uri: str, timeout: float) -> tuple[Run, float, str]:
    """``stop`` through *calls*, whose wrapper SIGSTOPs *daemon* right after its listing;
    SIGCONT whatever happens.  Asserts the setup (the wrapper froze it, it stayed frozen,
    it did not answer) and what the frozen URI then cost: the save's session, timing out
    while connecting, which never reached libvirtd, and one liveness check, both killed.
    Returns the run, when it froze, and the context for failure messages."""
    pid = daemon.pid
    assert pid is not None
    began = time.monotonic()
    try:
        run = cli.run("--virsh", str(calls.path), "stop", timeout=timeout)
        wedged = calls.wedged_at()
        status = Path(f"/proc/{pid}/status").read_text()
        try:
            answered = f"libvirtd answered: {daemon.virsh('uri', timeout=3, check=False)}"
        except subprocess.TimeoutExpired:
            answered = ""
    finally:
        os.kill(pid, signal.SIGCONT)
    context = f"{run}\nvirsh calls:\n{calls.describe(began)}"
    assert wedged is not None, "the wrapper never wedged libvirtd\n" + context
    assert "State:\tT" in status, f"libvirtd was not stopped:\n{status}"
    assert not answered, answered
    after = [c for c in calls.calls(uri) if c["start"] > wedged]
    assert [verb(c) for c in after] == ["connect", "list"], (
        f"{len(after)} virsh calls on the frozen URI after it froze; the first (the save's "
        "session, timing out) and one liveness check are all it may cost\n" + context)
    assert not [c for c in calls.calls() if verb(c) == "managedsave"
                and c["argv"][:2] == after[0]["argv"]], context
    assert after[1]["argv"][2:] == ["list", "--uuid"], context
    assert all(c["end"] is None for c in after), context  # both killed at their timeout
    return run, wedged, context
