"""Output can never hurt the guests: closed, broken, full or narrow stdout/stderr.

Each case runs virtguests as its own process, as systemd or an admin's pipe
would, *without* PYTHONUNBUFFERED (a newcomer's environment) and through
``python -I`` (the installed wrapper), and checks that what is done to the
guests, the state files and the exit status are exactly those of a run with
a healthy terminal, and that no traceback is printed.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sizes import examples
from virtguests.output import MAX_QUEUED, Output, printable
from virtguests.testing import FakeHost

Make = Callable[..., FakeHost]

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
DEADLINE = 120.0
"""Generous: a run that hangs fails here instead of hanging the suite."""

NAMES = ["web", "caf\u00e9-\u2603", "db two", "x" * 300]
"""A guest name the terminal cannot encode, one with a space, one long enough to fill a
small pipe quickly."""


def host_of(make: Make) -> FakeHost:
    return make({"uris": {"default": {"guests": [{"name": n} for n in NAMES]}}})


def env_of(host: FakeHost, **extra: str) -> dict[str, str]:
    env = host.env()
    env.pop("PYTHONUNBUFFERED", None)
    env.update(extra)
    return env


ENTRY = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from virtguests.cli import console_main; console_main()")
"""What the installed wrapper runs.  ``python -I`` ignores PYTHONPATH, so the checkout
comes as the first argument."""

REPO = str(Path(__file__).resolve().parent.parent)


def run_wrapped(host: FakeHost, args: list[str], *, stdout: Any = subprocess.PIPE,
                stderr: Any = subprocess.PIPE, close: tuple[int, ...] = (),
                env: Optional[dict[str, str]] = None,
                isolated: bool = True) -> subprocess.CompletedProcess[bytes]:
    """virtguests as the installed wrapper runs it (``python -I``), with the descriptors in
    *close* closed; *isolated* False lets PYTHONIOENCODING through."""

    def closed() -> None:
        for fd in close:
            os.close(fd)

    flags = ["-I"] if isolated else []
    return subprocess.run([sys.executable, *flags, "-c", ENTRY, REPO, *host.argv(*args)],
                          env=env or env_of(host), stdout=stdout, stderr=stderr,
                          stdin=subprocess.DEVNULL, timeout=DEADLINE, check=False,
                          preexec_fn=closed if close else None)


@contextmanager
def broken_pipe() -> Iterator[int]:
    """A pipe whose reader is gone: every write fails with EPIPE (``| head -c0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


@contextmanager
def full_pipe() -> Iterator[int]:
    """A pipe nobody reads, as small as the kernel allows: writes soon block for good."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    try:
        yield write_end
    finally:
        os.close(write_end)
        os.close(read_end)


@contextmanager
def sabotaged(condition: str, stream: str, err_file: Path) -> Iterator[dict[str, Any]]:
    """subprocess.run keywords that give *stream* (stdout, stderr or both) the *condition*;
    a stream left healthy that is stderr goes to *err_file*, to look for tracebacks."""
    which = {"stdout": (1,), "stderr": (2,), "both": (1, 2)}[stream]
    with open(err_file, "wb") as err_sink:
        base: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": err_sink}
        names = {1: "stdout", 2: "stderr"}
        if condition == "closed":
            yield {**base, "close": which}
        elif condition == "ascii":
            yield {**base, "isolated": False,
                   "env_extra": {"PYTHONIOENCODING": "ascii:strict"}}
        else:
            with (broken_pipe() if condition == "broken-pipe" else full_pipe()) as fd:
                yield {**base, **{names[n]: fd for n in which}}


CASES = [("closed", "stdout"), ("closed", "stderr"), ("closed", "both"),
         ("broken-pipe", "stdout"), ("broken-pipe", "both"), ("full-pipe", "both"),
         ("ascii", "both")]


@pytest.mark.parametrize(("condition", "stream"), CASES)
def test_stop_and_start_act_the_same_whatever_happens_to_the_output(
        fake_host: Make, tmp_path: Path, condition: str, stream: str) -> None:
    """The same guests saved, the same list file and exit 0, then all resumed, as on a
    healthy terminal (see test_service for that run)."""
    host = host_of(fake_host)
    for command in ("stop", "start"):
        err_file = tmp_path / f"{command}.err"
        with sabotaged(condition, stream, err_file) as how:
            extra = how.pop("env_extra", {})
            proc = run_wrapped(host, [command], env=env_of(host, **extra), **how)
        assert proc.returncode == 0, (command, err_file.read_text())
        assert "Traceback" not in err_file.read_text()
        if command == "stop":
            assert host.managed_saved() == set(NAMES)
            assert sorted(host.list_file.read_text().split()) == sorted(
                ["default", *(host.uuid(name) for name in NAMES)])
    assert host.active() == set(NAMES)
    assert not host.list_file.exists() and host.marker.exists()


def test_closed_descriptors_through_a_real_shell_redirect(fake_host: Make) -> None:
    """``virtguests stop >&-`` exactly as an admin or an init script would write it."""
    host = host_of(fake_host)
    words = " ".join(f"'{a}'" for a in (REPO, *host.argv("stop")))
    for redirect in (">&-", "2>&-", ">&- 2>&-"):
        proc = subprocess.run(
            ["sh", "-c", f'"$0" -I -c "$1" {words} {redirect}; echo "exit=$?"',
             sys.executable, ENTRY],
            env=env_of(host), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=DEADLINE, check=False)
        assert proc.stdout.splitlines()[-1] == "exit=0", (redirect, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert host.managed_saved() == set(NAMES)
        assert host.run("start").code == 0


def test_status_through_a_broken_pipe_exits_0_or_3_without_a_traceback(
        fake_host: Make, tmp_path: Path) -> None:
    host = host_of(fake_host)
    for args, want in ((["--json", "status"], 3), (["status"], 3), (["gueststatus"], 0),
                       (["--json", "gueststatus"], 0), (["--help"], 0)):
        with broken_pipe() as fd:
            proc = run_wrapped(host, args, stdout=fd)
        assert proc.returncode == want, proc.stderr
        assert proc.stderr == b""


def test_a_name_the_terminal_cannot_show_is_escaped_not_fatal(fake_host: Make) -> None:
    host = host_of(fake_host)
    proc = run_wrapped(host, ["stop"], env=env_of(host, PYTHONIOENCODING="ascii:strict"),
                       isolated=False)
    assert proc.returncode == 0, proc.stderr
    assert b"Suspending caf\\xe9-\\u2603: done" in proc.stdout.splitlines()
    assert host.managed_saved() == set(NAMES)


# -- the writer itself ---------------------------------------------------------------


class Blocking(io.StringIO):
    """A stream whose writes block until released: a reader that stopped reading."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(DEADLINE)
        return super().write(text)


def test_a_blocked_stream_never_blocks_the_caller_and_excess_lines_are_counted() -> None:
    blocked = Blocking()
    output = Output(blocked, io.StringIO())
    for number in range(MAX_QUEUED + 50):
        output.line(0, f"line {number}")  # returns at once although nothing is written
    assert output.dropped >= 49
    assert output.drain(timeout=0.05) is False
    blocked.release.set()
    assert output.close(timeout=DEADLINE) is False  # drained, but some lines were dropped
    assert blocked.getvalue().startswith("line 0\nline 1\n")


def test_lines_keep_their_order_across_stdout_and_stderr() -> None:
    shared = io.StringIO()
    output = Output(shared, shared)
    for number in range(200):
        output.line(number % 2, str(number))
    assert output.close(timeout=DEADLINE)
    assert shared.getvalue().split() == [str(n) for n in range(200)]


@settings(max_examples=examples(200), deadline=None)
@given(st.text())
def test_no_name_can_split_or_forge_a_line(name: str) -> None:
    shown = printable(f"Suspending {name}: done")
    assert len(shown.splitlines()) == 1  # every line separator Python knows is escaped
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert shown.startswith("Suspending ") and shown.endswith(": done")


BIDI_CLASSES = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI", "LRM", "RLM",
                "ALM"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=4), st.sampled_from(
    [chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))])),
    min_size=1, max_size=4).map(lambda parts: "".join(a + b for a, b in parts)))
def test_no_name_can_reorder_what_the_terminal_shows(name: str) -> None:
    """Found in review: U+202E in a guest's name was printed as is, so the rest of the
    line read backwards in a terminal.  Every bidi control is escaped (unicodedata says
    which they are: the test does not trust the product's list)."""
    shown = printable(f"Suspending {name}: done")
    assert not [c for c in shown if unicodedata.bidirectional(c) in BIDI_CLASSES
                and unicodedata.category(c) == "Cf"]


def test_sys_stdout_and_stderr_none_in_process(fake_host: Make,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """What Python gives a program started with fds 1 and 2 closed: sys.stdout is None."""
    from virtguests import cli

    host = host_of(fake_host)
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    assert cli.main(host.argv("stop"), environ=host.env()) == 0
    assert cli.main(host.argv("status"), environ=host.env()) == 3
    assert host.managed_saved() == set(NAMES)
