"""Messages: the reference's message lines on stdout, problems on stderr.

Admins and test suites grep libvirt-guests' exact English lines, so the
wording of every ``say`` call matches the reference.  Lines go out whole and
in order through ``output.Output``, which never lets a slow, full or closed
stream hold up the guests.  What happened to each guest is not kept here but
in the run report (``runreport``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from typing import Optional, TextIO

from virtguests.output import DEBUG, ERROR, INFO, WARNING, Output, journal_stream, printable


class Messages:
    """Where every line goes: progress (worded like libvirt-guests) on stdout, problems
    on stderr, in order, through ``output.Output``."""

    def __init__(
        self,
        out: Optional[TextIO] = None,
        err: Optional[TextIO] = None,
        *,
        quiet: bool = False,
        verbose: bool = False,
        journal: Optional[str] = None,
    ) -> None:
        """*journal*: the environment's ``JOURNAL_STREAM``; lines to that stream carry
        their priority (``output``)."""
        self.output = Output(out if out is not None else sys.stdout,
                             err if err is not None else sys.stderr,
                             journal_stream(journal))
        self.out = _Writer(self.output, 0)
        self.err = _Writer(self.output, 1)
        self.quiet = quiet
        self.verbose = verbose

    def say(self, line: str, level: int = INFO) -> None:
        """A progress line, worded like libvirt-guests; the few the reference prints
        when a guest or URI is not handled are ``WARNING`` (the journal's priority)."""
        if not self.quiet:
            self.output.line(0, line, level)

    def warn(self, line: str) -> None:
        if not self.quiet:
            self.output.line(1, f"virtguests: warning: {line}", WARNING)

    def error(self, line: str) -> None:
        self.output.line(1, f"virtguests: error: {line}", ERROR)

    def debug(self, line: str) -> None:
        """A line for ``-v`` only."""
        if self.verbose:
            self.output.line(1, f"virtguests: {line}", DEBUG)

    def internal_error(self, what: str, exc: BaseException) -> None:
        """A bug while doing *what*: one line naming it; the traceback only with ``-v``."""
        text = " ".join(str(exc).split())
        kind = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        hint = "" if self.verbose else " (run with -v for the traceback)"
        self.error(f"internal error, please report it: {what}: {kind}{hint}")
        if self.verbose:
            for line in traceback.format_exception(type(exc), exc, exc.__traceback__):
                for part in line.rstrip("\n").splitlines():
                    self.output.line(1, f"virtguests: {part}", ERROR)

    def flush(self) -> None:
        """Wait (a bounded time) until every line so far is out."""
        self.output.drain()

    def close(self) -> None:
        """End of the run: give the output a bounded time to drain, then stop it."""
        self.output.close()

    def cannot_resume_uri(self, uri: str, why: str, uuids: list[str]) -> None:
        self.say(f"Can't connect to {uri}. Skipping.", WARNING)
        self.error(f"cannot reach {uri}: {why}; its {len(uuids)} guest(s) stay recorded for "
                   f"the next start: {' '.join(uuids)}")

    def gone(self, uri: str, uuid: str) -> None:
        self.error(f"recorded guest {uuid} no longer exists on {uri}; dropped")


class _Writer:
    """File-like access for whole documents (JSON, virsh tables), through the same queue."""

    def __init__(self, output: Output, which: int) -> None:
        self.output = output
        self.which = which

    def write(self, text: str) -> int:
        lines = text.split("\n")
        self.output.text(self.which, "\n".join(printable(line) for line in lines))
        return len(text)

    def flush(self) -> None:
        pass


class LogHandler(logging.Handler):
    """The ``logging`` module's records through the messages, so they share their order,
    their safety and their priorities: warnings and errors as ``warn``/``error`` lines
    (otherwise ``logging`` would write them to ``sys.stderr`` itself, unescaped and
    blocking), the rest (``-v``: each virsh call) as debug lines in the handler's format."""

    def __init__(self, messages: Messages) -> None:
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never break a run
            if record.levelno >= logging.ERROR:
                self.messages.error(record.getMessage())
            elif record.levelno >= logging.WARNING:
                self.messages.warn(record.getMessage())
            else:
                self.messages.output.line(1, self.format(record), DEBUG)
