"""Priorities for the journal: when stdout or stderr is the socket ``JOURNAL_STREAM``
names, every line starts with ``<N>`` (sd-daemon(3)); anywhere else nothing changes.

The fake journal is a socket pair (as journald's stream is) or a pipe, whose
``st_dev:st_ino`` the test puts in ``JOURNAL_STREAM``; what journald would make of the
bytes is ``journal_entries`` below (``SyslogLevelPrefix=yes``, its default).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sizes import examples
from virtguests.messages import LogHandler, Messages
from virtguests.output import DEBUG, ERROR, INFO, WARNING, Output, journal_stream
from virtguests.testing import FakeHost, run_inprocess

Make = Callable[..., FakeHost]

DEADLINE = 120.0
PREFIX = re.compile(r"^<([0-7])>")


def journal_entries(data: bytes) -> list[tuple[int, str]]:
    """(priority, message) per line, as journald parses a stream with level prefixes:
    a line without a prefix is info."""
    entries = []
    for line in data.decode("utf-8", "replace").split("\n")[:-1]:
        match = PREFIX.match(line)
        entries.append((int(match.group(1)), line[3:]) if match else (INFO, line))
    return entries


def identity(fd: int) -> str:
    info = os.fstat(fd)
    return f"{info.st_dev}:{info.st_ino}"


@contextmanager
def pipe() -> Iterator[tuple[TextIO, Callable[[], bytes]]]:
    """A writable text stream and a function that returns all that was written to it
    once the stream is closed."""
    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: os.read(read_fd, 65536), b"")), daemon=True)
    reader.start()
    stream = cast(TextIO, os.fdopen(write_fd, "w", encoding="utf-8"))

    def read() -> bytes:
        stream.close()
        reader.join(DEADLINE)
        assert not reader.is_alive()
        return b"".join(chunks)

    try:
        yield stream, read
    finally:
        if not stream.closed:
            stream.close()
        reader.join(DEADLINE)
        os.close(read_fd)


@pytest.mark.parametrize("value", [None, "", "12", "12:", ":34", "a:b", "1:2:3", "-1:2",
                                   " 1:2"])
def test_a_malformed_journal_stream_is_no_journal(value: Any) -> None:
    assert journal_stream(value) is None


def test_journal_stream_is_device_colon_inode() -> None:
    assert journal_stream("8:1234567") == (8, 1234567)


def test_lines_to_the_journal_carry_their_priority() -> None:
    with pipe() as (stream, read):
        output = Output(stream, stream, journal_stream(identity(stream.fileno())))
        output.line(0, "Suspending web: done")
        output.line(1, "virtguests: warning: w", WARNING)
        output.line(1, "virtguests: error: e", ERROR)
        output.line(1, "virtguests: virsh: list", DEBUG)
        output.text(0, '{\n  "a": 1\n}\n')
        output.text(0, "no newline yet ")
        output.text(1, "continued\n", ERROR)
        output.line(0, "")
        output.line(0, "<0>a tenant's name")
        assert output.close()
        written = read()
    assert written == (b"<6>Suspending web: done\n<4>virtguests: warning: w\n"
                       b"<3>virtguests: error: e\n<7>virtguests: virsh: list\n"
                       b'<6>{\n<6>  "a": 1\n<6>}\n<6>no newline yet continued\n<6>\n'
                       b"<6><0>a tenant's name\n")
    assert journal_entries(written)[-1] == (INFO, "<0>a tenant's name")


def test_a_stream_that_is_not_the_journal_is_unchanged() -> None:
    with pipe() as (stream, read), pipe() as (other, _):
        output = Output(stream, stream, journal_stream(identity(other.fileno())))
        output.line(1, "virtguests: error: e", ERROR)
        output.text(0, "{\n}\n")
        assert output.close()
        assert read() == b"virtguests: error: e\n{\n}\n"


def test_only_the_stream_that_is_the_journal_gets_prefixes() -> None:
    with pipe() as (journal, read_journal), pipe() as (terminal, read_terminal):
        output = Output(terminal, journal, journal_stream(identity(journal.fileno())))
        output.line(0, "Suspending web: done")
        output.line(1, "virtguests: error: e", ERROR)
        assert output.close()
        assert read_terminal() == b"Suspending web: done\n"
        assert read_journal() == b"<3>virtguests: error: e\n"


LEVELS = st.sampled_from([ERROR, WARNING, INFO, DEBUG])
PIECES = st.lists(st.tuples(st.sampled_from(["line", "text"]),
                            st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
                            LEVELS), max_size=20)


@given(PIECES)
@settings(max_examples=examples(200))
def test_the_journal_sees_what_a_terminal_sees_each_line_with_one_priority(
        pieces: list[tuple[str, str, int]]) -> None:
    written = {}
    for journal in (False, True):
        with pipe() as (stream, read):
            output = Output(stream, stream,
                            journal_stream(identity(stream.fileno())) if journal else None)
            for kind, text, level in pieces:
                if kind == "line":
                    output.line(0, text, level)
                else:
                    output.text(0, text, level)
            assert output.close()
            written[journal] = read()
    lines = written[True].decode().split("\n")
    assert all(PREFIX.match(line) for line in lines[:-1]), lines
    assert lines[-1] == "" or PREFIX.match(lines[-1])
    assert "\n".join(PREFIX.sub("", line) for line in lines).encode() == written[False]


def test_stray_logging_warnings_go_through_the_messages_with_their_priority() -> None:
    with pipe() as (stream, read):
        messages = Messages(stream, stream, journal=identity(stream.fileno()))
        logger = logging.getLogger("virtguests.test_journal")
        handler = LogHandler(messages)
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.warning("virsh -c %s: %s", "test:///x", "odd\nname")
            logger.error("broken")
        finally:
            logger.removeHandler(handler)
        messages.close()
        assert read() == (b"<4>virtguests: warning: virsh -c test:///x: odd\\x0aname\n"
                          b"<3>virtguests: error: broken\n")


def test_the_observe_warning_reaches_stderr_as_a_warning_line(fake_host: Make) -> None:
    """The combined listing's fallback is logged (``log.warning``); without a handler
    ``logging`` printed it to ``sys.stderr`` itself, unprefixed and blocking."""
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}]}}, "faults": [
        {"cmd": "echo", "nth": 1, "action": "garbage", "output": "truncated"}]})
    run, _ = run_inprocess(host, "stop")
    assert ("virtguests: warning: virsh -c default: combined listing not usable "
            "(1 parts for 2 listings); listing one by one") in run.err.splitlines()
    assert run.code == 0 and host.managed_saved() == {"web"}


HOST = {"uris": {"default": {"guests": [{"name": "web"}, {"name": "<0>evil"}]},
                 "test:///down": {"unreachable": True}}}
CONFIG = 'ON_SHUTDOWN=suspend\nURIS="default test:///down"\nCONNECT_RETRIES=0\n'


def run_as_the_unit(host: FakeHost, *args: str, journal: bool) -> tuple[int, bytes]:
    """virtguests as its own process with stdout and stderr on one stream socket, as
    systemd's ``StandardOutput=journal`` gives it; *journal*: JOURNAL_STREAM names it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = host.env()
    env.pop("JOURNAL_STREAM", None)
    if journal:
        env["JOURNAL_STREAM"] = identity(theirs.fileno())
    with ours:
        with theirs:
            proc = subprocess.Popen([sys.executable, "-m", "virtguests", *host.argv(*args)],
                                    env=env, stdin=subprocess.DEVNULL, stdout=theirs.fileno(),
                                    stderr=theirs.fileno())
        ours.settimeout(DEADLINE)
        chunks = list(iter(lambda: ours.recv(65536), b""))
    return proc.wait(DEADLINE), b"".join(chunks)


def test_under_the_unit_journalctl_p_warning_shows_warnings_and_errors(
        fake_host: Make) -> None:
    host = fake_host(HOST, CONFIG)
    code, data = run_as_the_unit(host, "stop", journal=True)
    assert code == 1
    entries = journal_entries(data)
    assert all(PREFIX.match(line) for line in data.decode().split("\n")[:-1])
    warnings = [(p, m) for p, m in entries if p <= WARNING]
    assert (WARNING, "Can't connect to test:///down. Skipping.") in warnings
    assert [m for p, m in warnings if p == ERROR and "cannot list guests on test:///down" in m]
    assert (INFO, "Running guests on default URI: web, <0>evil") in entries
    assert (INFO, "Suspending <0>evil: done") in entries
    assert all(p == INFO for p, m in entries if not m.startswith("virtguests:")
               and "Skipping" not in m)


def test_the_same_run_without_the_journal_prints_the_plain_lines(fake_host: Make) -> None:
    host = fake_host(HOST, CONFIG)
    code, data = run_as_the_unit(host, "stop", journal=False)
    assert code == 1
    lines = data.decode().split("\n")
    assert "Can't connect to test:///down. Skipping." in lines
    assert not any(PREFIX.match(line) for line in lines)


def test_a_json_document_in_the_journal_is_one_prefix_per_line(fake_host: Make) -> None:
    host = fake_host(HOST, CONFIG)
    code, data = run_as_the_unit(host, "--json", "check", journal=True)
    assert code == 0
    entries = journal_entries(data)
    assert {p for p, _ in entries} == {INFO}
    assert json.loads("\n".join(m for _, m in entries))["format_version"] == 1


def test_a_failed_resume_is_a_warning_in_the_journal(fake_host: Make) -> None:
    """The reference's ``Resuming guest NAME: failed`` (stdout) at <4>, its error at <3>:
    what ``ExecStart=-`` hides from ``systemctl --failed``, ``journalctl -p warning`` shows."""
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}]}}, "faults": [
        {"cmd": "start", "action": "fail", "error": "internal"}]}, "ON_BOOT=start\n")
    assert run_as_the_unit(host, "stop", journal=True)[0] == 0
    code, data = run_as_the_unit(host, "start", journal=True)
    assert code == 1
    entries = journal_entries(data)
    assert (WARNING, "Resuming guest web: failed") in entries
    assert [m for p, m in entries if p == ERROR and m.startswith(
        "virtguests: error: starting guest web failed")]
    assert (INFO, "Resuming guests on default URI...") in entries
