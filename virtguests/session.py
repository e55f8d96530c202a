"""One long-lived virsh per URI, reading commands on a pipe.

Why: on a remote URI every virsh process pays an ssh handshake and a libvirt connection
(about 0.5 s); one ``virsh -c URI`` reading commands answers each further command in
milliseconds over its one connection.

What virsh 9.0 does with commands on a pipe (``fixtures/*-session-*.yaml``, recorded by
tools/record_fixtures.py): it reads each line with readline, which prints the prompt and
echoes the line on stdout (one physical line: wider than 80 columns it is scrolled with a
carriage return), then prints the command's output exactly as a process of its own would
(the blank line after each command included) and its errors on stderr, all flushed before
the next prompt.  Nothing says whether a command succeeded, so each command is followed by
``echo --err MARK`` and ``echo MARK``: its stdout is what comes between the echo of its line
and the echo of the first marker, its stderr what comes before ``error: MARK``, and it
failed (virsh's exit status 1) if that stderr has an ``error:`` line.  MARK is random per
session: no guest name printed in a listing can fake it.

A failed connection makes virsh exit at once with the one-process call's errors: that is
the answer to the command that opened the session.  Once libvirtd is gone, each later
command prints ``error: Failed to reconnect to the hypervisor`` and is not run: the session
is closed and reopened once, and whatever then fails is answered as a process would.  If
libvirtd is back, virsh reconnects by itself, says so on stderr, and runs the command.  At
EOF on stdin virsh exits, so a session outlives virtguests by at most its current command.

Only printable ASCII goes on the line (readline acts on control characters, and on 8-bit
ones in the C locale); a call with anything else runs in a process of its own, with an
argv list.  Each argument is quoted for virsh's own parser (not a shell): ``;`` or a quote
in a tenant's string stays inside one argument.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

from virtguests import commands
from virtguests.clock import MAX_WAIT, clamp
from virtguests.virsh import CONNECT_FAILED

log = logging.getLogger("virtguests.session")

ENV = {"TERM": "dumb", "INPUTRC": "/dev/null", "XDG_CACHE_HOME": "/dev/null"}
"""Set for a session's virsh: readline gets no terminal features and no user key bindings,
and virsh keeps no command history (it would rewrite the admin's ~/.cache/libvirt/virsh/
history with our commands; under /dev/null it cannot, and says so once at exit)."""
DROP_ENV = ("COLUMNS", "LINES")
"""Removed: readline scrolls lines wider than 80 columns, which the markers never are."""
FAILED_RECONNECT = "error: Failed to reconnect to the hypervisor"
"""libvirtd went away since the last command; this one was not run."""
NOTICES = ("error: Disconnected from ", "error: Reconnected to the hypervisor")
"""libvirtd went away and came back (``qemu-session-reconnect``): virsh reconnected and ran
the command; printed as errors, they are not the command's (logged, then dropped)."""
NO_HISTORY = "error: Failed to create '/dev/null/libvirt/virsh'"
"""What virsh says at exit about the history it cannot write (ENV): not a command's."""
CLOSE_GRACE = 1.0
REAP_WAIT = 5.0
"""How long a killed virsh may take to exit before the run stops waiting for it."""
QUICK_WAIT = 1.0
"""How long a quick call waits for its URI's session before it takes one from the pool:
a slow answer there (a guest agent that does not reply) holds up no one for long."""
_PLAIN = re.compile(r"[A-Za-z0-9_./:=,+@%-]+")


def quote(arg: str) -> str:
    """*arg* as one word for virsh's parser: single quotes keep everything, ``'\\''`` a quote."""
    if _PLAIN.fullmatch(arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def command_line(args: Sequence[str]) -> Optional[str]:
    """The line that runs *args* as ``virsh -c URI ARGS`` would, or None if it cannot be
    sent (not printable ASCII).  One argument is a command string, parsed by virsh as
    a one-process virsh parses it; more are quoted one by one."""
    if not args or not all(arg and all(" " <= c <= "~" for c in arg) for arg in args):
        return None
    if len(args) == 1:
        return args[0]
    return " ".join(quote(arg) for arg in args)


class Answer(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


class TimedOut(Exception):
    """No answer by the deadline; the session's process group was killed."""


class Ended(Exception):
    """The session's virsh ended (or spoke out of protocol) before answering."""

    def __init__(self, message: str, exit_code: Optional[int] = None, stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def connect_failed(self) -> bool:
        return CONNECT_FAILED in self.stderr


class Lost(Exception):
    """The session's connection is gone; the command was not run."""


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


class Session:
    """One virsh reading commands on a pipe; one caller at a time."""

    def __init__(self, proc: subprocess.Popen[bytes], nonce: Optional[str] = None) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.prompt = ""
        self._nonce = nonce or os.urandom(8).hex()
        self._count = -1
        self._out = proc.stdout.fileno()
        self._err = proc.stderr.fileno()
        self._buffers = {self._out: bytearray(), self._err: bytearray()}
        self._eof: set[int] = set()
        for fd in self._buffers:
            os.set_blocking(fd, False)
        self._pidfd: Optional[int] = None
        """Readable once virsh has exited (Linux 5.3); else its exit is polled for."""
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(proc.pid)

    def _mark(self) -> str:
        self._count += 1
        return f"vg-{self._nonce}-{self._count}"

    def greet(self, deadline: float) -> None:
        """Wait until virsh reads commands (it has connected); learn its prompt."""
        mark = self._mark()
        self._send(f"echo --err {mark}\necho {mark}\n")
        out, _ = self._read(mark, deadline)
        echo = out[:-1].rsplit("\n", 1)[-1]
        if not echo.endswith(f"echo {mark}"):
            raise Ended(f"virsh did not echo its commands: {out[-200:]!r}", stdout=out)
        self.prompt = echo[: -len(f"echo {mark}")]
        if not out.endswith(self._tail(mark)):
            raise Ended(f"virsh did not echo its commands: {out[-200:]!r}", stdout=out)

    def _tail(self, mark: str) -> str:
        return f"{self.prompt}echo --err {mark}\n\n{self.prompt}echo {mark}\n"

    def ask(self, line: str, deadline: float) -> Answer:
        """Run one command line; its output, errors and status, read up to the markers."""
        mark = self._mark()
        self._send(f"{line}\necho --err {mark}\necho {mark}\n")
        out, err = self._read(mark, deadline)
        first = out.find("\n")
        tail = self._tail(mark)
        if first < 0 or not out.endswith(tail) or first + 1 > len(out) - len(tail):
            raise Ended(f"answer out of protocol: {out[-200:]!r}", stdout=out, stderr=err)
        lines = err.split("\n")
        if any(ln.startswith(FAILED_RECONNECT) for ln in lines):
            raise Lost(err)
        notices = [ln for ln in lines if ln.startswith(NOTICES)]
        if notices:
            log.debug("%s", "; ".join(notices))
            err = "".join(ln + "\n" for ln in lines[:-1] if not ln.startswith(NOTICES))
        failed = any(ln.startswith("error: ") for ln in err.split("\n"))
        return Answer(1 if failed else 0, out[first + 1: len(out) - len(tail)], err)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it ended: the read says how

    def _read(self, mark: str, deadline: float) -> tuple[str, str]:
        """stdout up to the line MARK, stderr up to ``error: MARK``; the rest stays."""
        out_end = f"\n{mark}\n".encode()
        err_end = f"error: {mark}\n".encode()
        exited = False
        with selectors.DefaultSelector() as selector:
            for fd in self._buffers:
                if fd not in self._eof:
                    selector.register(fd, selectors.EVENT_READ)
            if self._pidfd is not None:
                selector.register(self._pidfd, selectors.EVENT_READ)
            while True:
                out_at = self._buffers[self._out].find(out_end)
                err_buffer = self._buffers[self._err]
                err_at = 0 if err_buffer.startswith(err_end) else err_buffer.find(b"\n" + err_end)
                if out_at >= 0 and err_at >= 0:
                    err_at += 0 if err_at == 0 else 1
                    return (self._take(self._out, out_at + 1, len(out_end) - 1),
                            self._take(self._err, err_at, len(err_end)))
                if len(self._eof) == 2 or exited:
                    raise self._ended()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut()
                ready = selector.select(min(left, 3600.0 if self._pidfd is not None else 0.1))
                for key, _ in ready:
                    if key.fd == self._pidfd:
                        exited = True
                    else:
                        self._receive(int(key.fd))
                        if key.fd in self._eof:
                            selector.unregister(key.fd)
                if exited or (self._pidfd is None and self.proc.poll() is not None):
                    # virsh is gone; a child of it (ssh's ControlPersist master) may hold
                    # its output open: what is there now is all it said
                    exited = True
                    for fd in self._buffers:
                        while fd not in self._eof and self._receive(fd):
                            pass

    def _receive(self, fd: int) -> bool:
        """Read what *fd* holds now; False at EOF."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            self._eof.add(fd)
            return False
        self._buffers[fd] += data
        return True

    def _take(self, fd: int, end: int, skip: int) -> str:
        buffer = self._buffers[fd]
        text = _text(buffer[:end])
        del buffer[: end + skip]
        return text

    def _ended(self) -> Ended:
        try:
            code: Optional[int] = self.proc.wait(CLOSE_GRACE)
        except subprocess.TimeoutExpired:
            code = None
        out, err = (_text(self._buffers[fd]) for fd in (self._out, self._err))
        err = "".join(ln for ln in err.splitlines(keepends=True) if not ln.startswith(NO_HISTORY))
        return Ended(f"virsh ended (exit status {code})", code, out, err)

    def kill(self, reap_until: Optional[float] = None) -> None:
        """Kill virsh and everything in its process group (ssh for a remote URI)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._reap(reap_until)

    def end_input(self) -> None:
        """EOF on its stdin: virsh exits once its current command is done."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()

    def close(self, deadline: Optional[float] = None,
              reap_until: Optional[float] = None) -> None:
        """EOF on its stdin ends virsh; a virsh still there at *deadline* (default: in
        CLOSE_GRACE) is killed with its process group.  After a clean exit the group is
        left alone, as a one-shot call's is: a child virsh left (ssh's ControlPersist
        master) is not ours to kill.  *reap_until*: see ``_reap``."""
        self.end_input()
        until = time.monotonic() + CLOSE_GRACE if deadline is None else deadline
        try:
            self.proc.wait(max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill(reap_until)
        else:
            self._reap(reap_until)

    def _reap(self, until: Optional[float] = None) -> None:
        """Wait for the killed or exited virsh until *until* (default: REAP_WAIT from now),
        then close our ends: a virsh stuck in the kernel (D state) must not hold up the
        end of the run, and several share one deadline rather than adding theirs up."""
        wait = REAP_WAIT if until is None else max(0.0, until - time.monotonic())
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            log.warning("virsh (pid %d) did not exit after SIGKILL; not waiting for it",
                        self.proc.pid)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


@dataclass
class _Uri:
    quick: Optional[Session] = None
    quick_lock: threading.Lock = field(default_factory=threading.Lock)
    idle: list[Session] = field(default_factory=list)
    failures: int = 0
    """Sessions that ended or lost their connection: the first is reopened, then no more."""


class Sessions:
    """Every session of one run: per URI, one for the quick calls (serialised: each takes
    milliseconds) and a pool for the slow ones (``commands.SLOW_SUBCOMMANDS``, and a
    quick call that finds its session busy for QUICK_WAIT), one session per concurrent
    caller, so the callers' own parallelism (PARALLEL_SUSPEND...) bounds it.

    ``ask`` answers a call, raises ``TimedOut`` (the session was killed), or returns None:
    run it in a process of its own (a line that cannot be sent, sessions given up on this
    URI, a virsh that reads no commands, its session ended under it).  *start* starts a
    session's process (``Virsh._start_session``).
    """

    def __init__(self, start: Callable[[str], subprocess.Popen[bytes]]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._uris: dict[str, _Uri] = {}
        self._closed = False

    def _uri(self, uri: str) -> _Uri:
        with self._lock:
            return self._uris.setdefault(uri, _Uri())

    def ask(self, uri: str, args: Sequence[str], limit: float) -> Optional[Answer]:
        line = command_line(args)
        if line is None:
            return None
        deadline = time.monotonic() + (clamp(limit) if limit > 0 else MAX_WAIT)
        state = self._uri(uri)
        if args[0] not in commands.SLOW_SUBCOMMANDS and state.quick_lock.acquire(
                timeout=clamp(min(QUICK_WAIT, deadline - time.monotonic()))):
            try:
                session, state.quick = state.quick, None
                kept, answer = self._answer(uri, state, session, line, deadline)
                self._keep(kept, lambda s: setattr(state, "quick", s))
                return answer
            finally:
                state.quick_lock.release()
        if time.monotonic() >= deadline:
            return None
        with self._lock:
            session = state.idle.pop() if state.idle else None
        kept, answer = self._answer(uri, state, session, line, deadline)
        self._keep(kept, state.idle.append)
        return answer

    def _keep(self, session: Optional[Session], put: Callable[[Session], None]) -> None:
        """*put* the session back for the next call, unless the sessions were closed
        meanwhile: then it is closed too."""
        if session is None:
            return
        with self._lock:
            closed = self._closed
            if not closed:
                put(session)
        if closed:
            session.close()

    def _answer(self, uri: str, state: _Uri, session: Optional[Session], line: str,
                deadline: float) -> tuple[Optional[Session], Optional[Answer]]:
        """*line* answered in *session* (opened if None): the session to keep and the answer."""
        if session is not None and session.proc.poll() is not None:
            session.kill()  # it ended since its last answer: reaped, reopened below
            session = None
            self._failed(state)
        for _ in range(2):
            if session is None:
                with self._lock:
                    if self._closed or state.failures > 1:
                        return None, None
                try:
                    session = self._open(uri, deadline)
                except Ended as ended:
                    self._failed(state)
                    if ended.connect_failed:
                        return None, Answer(ended.exit_code or 1, ended.stdout, ended.stderr)
                    with self._lock:
                        state.failures = 2  # not a virsh that reads commands
                    return None, None
                except OSError:
                    return None, None  # the process of its own says why
            try:
                return session, session.ask(line, deadline)
            except TimedOut:
                session.kill()
                raise
            except Lost:
                session.close()
                session = None
                self._failed(state)
            except Ended:
                session.kill()
                self._failed(state)
                return None, None
        return None, None

    def _open(self, uri: str, deadline: float) -> Session:
        session = Session(self._start(uri))
        try:
            session.greet(deadline)
        except BaseException:
            session.kill()
            raise
        return session

    def _failed(self, state: _Uri) -> None:
        with self._lock:
            state.failures += 1

    def close(self) -> None:
        """End every session; none is opened after this."""
        with self._lock:
            self._closed = True
            sessions = [s for state in self._uris.values()
                        for s in (state.quick, *state.idle) if s is not None]
            for state in self._uris.values():
                state.quick = None
                state.idle.clear()
        for session in sessions:
            session.end_input()  # all at once: they exit in parallel
        deadline = time.monotonic() + CLOSE_GRACE
        for session in sessions:
            session.close(deadline, deadline + REAP_WAIT)
