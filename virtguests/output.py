"""Getting lines out without ever letting the output hold up the guests.

At host shutdown stdout and stderr may be a journal socket that stopped
reading, a closed descriptor, a pipe to ``head``, or a terminal whose encoding
cannot show a guest's name.  None of that may delay, stop or change what is
done to the guests.  So the threads that act on guests only queue lines, and
a writer thread writes them.  A stream that fails is given up (its later lines
are dropped); a stream that blocks holds up only its writer; each queue is
bounded, and lines beyond it are dropped and counted.  At exit the writers get
a bounded time to drain.

stdout and stderr that lead to the same place (the journal, one terminal, one
file) share one writer, so their lines stay in order; separate destinations
get a writer each, so errors still reach a healthy stderr while stdout is stuck.

When a stream is the journal (systemd names it in ``JOURNAL_STREAM``, sd-daemon(3)),
every line written to it starts with its syslog priority (``<3>`` error, ``<4>``
warning, ``<6>`` info, ``<7>`` debug), which journald strips and records
(systemd.exec(5) ``SyslogLevelPrefix=``, on by default).  Info lines carry ``<6>`` too:
otherwise a line beginning with ``<N>`` (a tenant's guest name at the start of a
table row) would choose its own priority.  Terminals, pipes and files get the lines
unchanged.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from typing import Optional, TextIO

MAX_QUEUED = 10_000
"""Lines held for a destination that does not keep up; later lines are dropped."""

DRAIN_SECONDS = 2.0
"""How long the end of a run waits for a slow reader before giving up on it."""

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09}
BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
"""Unicode's Bidi_Control characters: they reorder what a terminal shows (a name with
U+202E reads backwards), so a tenant could make one guest's line look like another's."""
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *BIDI_CONTROLS)})
"""Control characters, line separators and bidi controls (a tenant chooses a guest's
name) are shown escaped, so no guest can forge, split or disguise a line of the log."""


def printable(line: str) -> str:
    return line.translate(_CONTROL)


ERROR, WARNING, INFO, DEBUG = 3, 4, 6, 7
"""syslog priorities (sd-daemon(3)): what a line is, for a journal that reads prefixes."""


def journal_stream(value: Optional[str]) -> Optional[tuple[int, int]]:
    """``JOURNAL_STREAM``'s ``DEVICE:INODE`` (decimal), or None if unset or malformed."""
    if not value:
        return None
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return None
    return int(device), int(inode)


class _Stream:
    """One destination: written through its file descriptor when it has one.

    Writing the descriptor directly (not the TextIO's buffer) leaves nothing
    buffered in ``sys.stdout`` for the interpreter to fail on at exit.
    """

    def __init__(self, stream: Optional[TextIO]) -> None:
        self.stream = stream
        self.encoding = (getattr(stream, "encoding", None) or "utf-8") if stream else "utf-8"
        self.fd: Optional[int] = None
        self.identity: object = stream
        self.dead = stream is None
        self.journal = False
        """Whether lines get a priority prefix: set by ``Output`` (JOURNAL_STREAM)."""
        if stream is not None:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                fd = stream.fileno()
                info = os.fstat(fd)
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    stream.flush()  # anything written before we took over goes first
                self.fd = fd
                self.identity = (info.st_dev, info.st_ino)

    def write(self, text: str) -> None:
        if self.dead:
            return
        try:
            if self.fd is not None:
                data = text.encode(self.encoding, errors="backslashreplace")
                while data:
                    written = os.write(self.fd, data)
                    data = data[written:]
            else:
                assert self.stream is not None
                self.stream.write(text.encode(self.encoding, errors="backslashreplace")
                                  .decode(self.encoding))
                self.stream.flush()
        except (OSError, ValueError, LookupError):
            self.dead = True


class _Writer:
    """A bounded queue of (stream, text) and the thread that empties it in order."""

    def __init__(self) -> None:
        self.queue: deque[tuple[_Stream, str]] = deque()
        self.cond = threading.Condition()
        self.busy = False
        self.closing = False
        self.dropped = 0
        self.line_start = True
        """Whether the next text queued starts a line (journal prefixes; stdout and stderr
        to one place share the writer, so one line's parts may come from both); changed
        under ``Output.lock``."""
        self.thread = threading.Thread(target=self._run, name="virtguests-output",
                                       daemon=True)
        self.thread.start()

    def put(self, stream: _Stream, text: str) -> None:
        with self.cond:
            if self.closing or stream.dead:
                return
            if len(self.queue) >= MAX_QUEUED:
                self.dropped += 1
                return
            self.queue.append((stream, text))
            self.cond.notify_all()

    def drain(self, deadline: float) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: not self.queue and not self.busy,
                               max(deadline - time.monotonic(), 0.0))
            return not self.queue and not self.busy and not self.dropped

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                self.busy = False
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.queue or self.closing)
                if not self.queue:
                    return
                stream, text = self.queue.popleft()
                self.busy = True
            stream.write(text)


def _prefixed(text: str, prefix: str, line_start: bool) -> str:
    """*text* with *prefix* at the start of every line it begins (the first only when
    *line_start*: else it continues a line queued before)."""
    parts = text.split("\n")
    return "\n".join(
        prefix + part if (i > 0 or line_start) and (part or i < len(parts) - 1) else part
        for i, part in enumerate(parts))


class Output:
    """Ordered, bounded, non-blocking line output to stdout (0) and stderr (1)."""

    def __init__(self, out: Optional[TextIO], err: Optional[TextIO],
                 journal: Optional[tuple[int, int]] = None) -> None:
        """*journal*: ``journal_stream(JOURNAL_STREAM)``; a stream that is that socket
        gets priority prefixes."""
        self.streams = (_Stream(out), _Stream(err))
        self.lock = threading.Lock()
        for stream in self.streams:
            stream.journal = journal is not None and stream.identity == journal
        shared = self.streams[0].identity is self.streams[1].identity or (
            self.streams[0].identity == self.streams[1].identity
            and self.streams[0].stream is not None)
        first = _Writer()
        self.writers = (first, first if shared else _Writer())

    @property
    def dropped(self) -> int:
        return sum(w.dropped for w in set(self.writers))

    def line(self, which: int, text: str, level: int = INFO) -> None:
        """Queue one line for stdout (0) or stderr (1); never blocks on the stream."""
        self.text(which, printable(text) + "\n", level)

    def text(self, which: int, text: str, level: int = INFO) -> None:
        """Queue text that is already safe to print as is (JSON, a virsh table); each line
        it starts is at syslog priority *level* (shown only to a journal)."""
        stream = self.streams[which]
        if not stream.journal:
            self.writers[which].put(stream, text)
            return
        writer = self.writers[which]
        with self.lock:  # the prefixes follow the order the lines are queued in
            writer.put(stream, _prefixed(text, f"<{level}>", writer.line_start))
            if text:
                writer.line_start = text.endswith("\n")

    def drain(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait up to *timeout* seconds in all; True if every line got out."""
        deadline = time.monotonic() + timeout
        return all([w.drain(deadline) for w in set(self.writers)])

    def close(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Drain (bounded), then let the writers end; later lines are dropped."""
        done = self.drain(timeout)
        for writer in set(self.writers):
            writer.close()
        return done
