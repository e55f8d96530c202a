"""The runner's rule for timeouts: a URI-level call that times out gives its URI up, a
guest's call that times out asks first (one liveness check per URI at a time).

Process creation is scripted (``Scripted._spawn``): each test says which calls time
out, fail or answer, and may hold a call until it lets it go.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import pytest

from virtguests.testing import exited, wait_exited
from virtguests.virsh import (
    CONNECT_FAILED,
    Result,
    Started,
    Virsh,
    VirshError,
    is_guest_call,
)

WAIT = 10.0
"""Real seconds any wait in these tests may take before the test fails."""

Answer = Callable[[Sequence[str]], Optional[Result]]


class Scripted(Virsh):
    """A Virsh whose calls are answered by *answer* (None: the call times out)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("virsh", environ={}, default_timeout=7)
        self.answer = answer
        self.spawned: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    def _spawn(self, argv: list[str], limit: float) -> Result:
        args = tuple(argv[3:])  # after "virsh -c URI"
        with self.lock:
            self.spawned.append(args)
        result = self.answer(args)
        if result is None:
            raise VirshError(argv, f"timed out after {limit:g}s and was killed",
                             timed_out=True)
        return result


def ok(args: Sequence[str]) -> Result:
    return Result(tuple(args), 0, "", "", 0.0)


def timed_out(*which: tuple[str, ...]) -> Answer:
    return lambda args: None if tuple(args) in which else ok(args)


URI = "qemu+ssh://host/system"
LIVENESS = ("list", "--uuid")
SAVE = ("managedsave", "0f1e7a5e-0000-4000-8000-000000000001")


@pytest.mark.parametrize("args", [["list", "--uuid"], ["uri"],
                                  ["list --uuid --name; echo x; list --uuid"]])
def test_a_uri_level_call_that_times_out_gives_the_uri_up_at_once(args: list[str]) -> None:
    virsh = Scripted(timed_out(tuple(args)))
    with pytest.raises(VirshError) as caught:
        virsh.run(URI, args)
    assert caught.value.timed_out and not is_guest_call(args)
    assert virsh.spawned == [tuple(args)] and virsh.liveness_checks == 0
    assert virsh.given_up(URI) == str(caught.value)
    with pytest.raises(VirshError) as refused:
        virsh.run(URI, ["domstate", "--reason", SAVE[1]])
    assert refused.value.given_up and virsh.spawned == [tuple(args)]


@pytest.mark.parametrize("args", [SAVE, ("shutdown", SAVE[1]), ("destroy", SAVE[1]),
                                  ("domjobinfo", SAVE[1]), ("domstate", "--reason", SAVE[1]),
                                  ("domtime", "--sync", SAVE[1]), ("start", SAVE[1])])
def test_a_guests_call_that_times_out_costs_that_call_while_libvirtd_answers(
        args: tuple[str, ...]) -> None:
    virsh = Scripted(timed_out(args))
    with pytest.raises(VirshError) as caught:
        virsh.run(URI, args)
    assert caught.value.timed_out and not caught.value.given_up
    assert virsh.spawned == [args, LIVENESS] and virsh.liveness_checks == 1
    assert virsh.given_up(URI) is None
    virsh.run(URI, ["domstate", "--reason", "another-guest"])  # the URI goes on
    assert virsh.given_up("other") is None


def test_a_guests_call_and_the_check_timing_out_give_the_uri_up() -> None:
    virsh = Scripted(timed_out(SAVE, LIVENESS))
    with pytest.raises(VirshError):
        virsh.run(URI, SAVE, timeout=1800)
    why = virsh.given_up(URI)
    assert why == (f"virsh -c {URI} managedsave {SAVE[1]}: timed out after 1800s and was "
                   f"killed; then virsh -c {URI} list --uuid: timed out after 7s and was "
                   "killed")
    with pytest.raises(VirshError) as refused:
        virsh.run(URI, ["list", "--uuid"])
    assert refused.value.given_up and virsh.spawned == [SAVE, LIVENESS]


def test_processes_and_connections_are_counted_per_uri_as_they_start() -> None:
    """Every process started counts, the liveness check and one that timed out
    included; a call refused on a given-up URI starts nothing and counts nothing."""
    virsh = Scripted(timed_out(SAVE, LIVENESS))
    virsh.run("qemu:///system", ["list", "--uuid", "--name"])
    with pytest.raises(VirshError):
        virsh.run(URI, SAVE)
    with pytest.raises(VirshError):
        virsh.run(URI, ["list", "--uuid"])  # refused: given up
    virsh.run("qemu:///system", ["domstate", "--reason", SAVE[1]])
    assert virsh.started() == {"qemu:///system": Started(2, 2), URI: Started(2, 2)}
    assert len(virsh.spawned) == 4 == virsh.calls


@pytest.mark.parametrize(("stderr", "wedged"), [
    (f"{CONNECT_FAILED}\nerror: Cannot recv data: Connection reset by peer\n", True),
    ("error: internal error: something else\n", False)])
def test_a_check_that_cannot_connect_gives_the_uri_up(stderr: str, wedged: bool) -> None:
    def answer(args: Sequence[str]) -> Optional[Result]:
        if tuple(args) == SAVE:
            return None
        return Result(tuple(args), 1, "", stderr, 0.0)

    virsh = Scripted(answer)
    with pytest.raises(VirshError):
        virsh.run(URI, SAVE)
    assert (virsh.given_up(URI) is not None) == wedged


def test_concurrent_timeouts_share_one_check_and_new_calls_wait_for_its_verdict() -> None:
    """Three saves time out together while libvirtd is gone: one check, not three; a
    call started while the check runs is not spawned, but refused once it failed."""
    in_check, verdict = threading.Event(), threading.Event()
    saves = [("managedsave", f"0f1e7a5e-0000-4000-8000-00000000000{i}") for i in range(3)]
    arrived = threading.Barrier(len(saves))

    def answer(args: Sequence[str]) -> Optional[Result]:
        if tuple(args) in saves:
            arrived.wait(WAIT)  # all three are in flight, then all time out
            return None
        if tuple(args) == LIVENESS:
            in_check.set()
            assert verdict.wait(WAIT), "the test never let the check end"
            return None
        return ok(args)

    virsh = Scripted(answer)
    errors: list[VirshError] = []

    def call(args: Sequence[str]) -> None:
        try:
            virsh.run(URI, args)
        except VirshError as err:
            errors.append(err)

    threads = [threading.Thread(target=call, args=(s,)) for s in saves]
    for thread in threads:
        thread.start()
    assert in_check.wait(WAIT)
    late = threading.Thread(target=call, args=(["domjobinfo", saves[0][1]],))
    late.start()
    late.join(0.3)
    assert late.is_alive(), "a call started during the check did not wait for it"
    verdict.set()
    for thread in [*threads, late]:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert virsh.liveness_checks == 1
    assert sorted(virsh.spawned) == sorted([*saves, LIVENESS])  # the late call never ran
    assert sum(1 for e in errors if e.timed_out) == 3
    assert [e.given_up for e in errors if not e.timed_out] == [True]
    assert virsh.given_up(URI) is not None


# ---------------------------------------------------------------------------
# The runner on real processes, under whichever sh is installed (make test: sh 2.x;
# make test-sh1: sh 1.14). The "virsh" is a small Python program of the test's own.
# ---------------------------------------------------------------------------
def program(tmp_path: Path, body: str) -> str:
    """An executable that runs *body* (Python) with ``argv``, ``os``, ``sys`` imported."""
    path = tmp_path / "virsh"
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\nargv = sys.argv[1:]\n"
                    + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


REPORT = """\
    sys.stdout.write(json.dumps({"argv": argv, "stdin": sys.stdin.read(),
                                 "LC_ALL": os.environ.get("LC_ALL"),
                                 "KEPT": os.environ.get("KEPT"),
                                 "leader": os.getsid(0) == os.getpid()}) + "\\n")
    sys.stderr.write("error: first line\\nerror: second line\\n")
    sys.exit(int(argv[-1]))
"""


@pytest.mark.parametrize("status", [0, 3, 255])
def test_a_call_gets_exactly_its_argv_no_stdin_lc_all_c_its_own_session(
        tmp_path: Path, status: int) -> None:
    """Nothing but the argv reaches the program (sh 1.x turned an unknown special
    keyword into an argument); exit status, stdout and the whole stderr come back."""
    virsh = Virsh(program(tmp_path, REPORT), environ={"KEPT": "yes", "LC_ALL": "de_DE"})
    args = ["list", "--name", "it's a \"guest\"; rm -rf /", "--", str(status)]
    result = virsh.run(URI, args, check=False)
    assert json.loads(result.stdout) == {"argv": ["-c", URI, *args], "stdin": "",
                                         "LC_ALL": "C", "KEPT": "yes", "leader": True}
    assert (result.exit_code, result.stderr) == (status, "error: first line\n"
                                                 "error: second line\n")
    if status:
        with pytest.raises(VirshError) as caught:
            virsh.run(URI, args)
        assert caught.value.exit_code == status
        assert caught.value.detail == "error: first line; error: second line"


def test_output_that_is_not_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    virsh = Virsh(program(tmp_path, """\
        sys.stdout.buffer.write(b"guest-\\xff\\n"); sys.stderr.buffer.write(b"\\xfe\\n")
    """))
    result = virsh.run("default", ["list"])
    assert (result.stdout, result.stderr) == ("guest-\ufffd\n", "\ufffd\n")


def test_a_timeout_kills_the_program_and_everything_it_started(tmp_path: Path) -> None:
    """Like virsh and the ssh it started for a remote URI: the whole session goes."""
    pids = tmp_path / "pids"
    virsh = Virsh(program(tmp_path, f"""\
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open({str(pids)!r}, "w") as out:
            out.write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
    """), default_timeout=0.5)
    with pytest.raises(VirshError) as caught:
        virsh.run("default", ["managedsave", "guest"])
    assert caught.value.timed_out
    ours = [int(pid) for pid in pids.read_text().split()]
    wait_exited(ours, time.monotonic() + WAIT)


def test_a_program_that_cannot_start_is_a_virsh_error(tmp_path: Path) -> None:
    with pytest.raises(VirshError, match="cannot run"):
        Virsh(str(tmp_path / "missing")).run("default", ["list"])


def test_a_watch_feeds_each_line_and_close_ends_the_session(tmp_path: Path) -> None:
    lines: list[str] = []
    printed = threading.Event()

    def on_line(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            printed.set()

    virsh = Virsh(program(tmp_path, """\
        print("event 'lifecycle' for domain 'a': Stopped", flush=True)
        print("event 'lifecycle' for domain 'b': Started", flush=True)
        time.sleep(600)
    """))
    watch = virsh.watch("default", ["event", "--loop"], on_line)
    try:
        assert printed.wait(WAIT), lines
        assert watch.alive()
    finally:
        watch.close()
    assert not watch.alive()
    assert virsh.started() == {"default": Started(1, 1)}
    assert [line.strip() for line in lines] == [
        "event 'lifecycle' for domain 'a': Stopped", "event 'lifecycle' for domain 'b': Started"]


def shell(tmp_path: Path, body: str) -> str:
    """An executable ``/bin/sh`` script (starts in a millisecond, unlike a Python one)."""
    path = tmp_path / "virsh"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def kill_recorded(pids: Path) -> None:
    for pid in (int(p) for p in pids.read_text().split()) if pids.exists() else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("setsid", ["setsid ", ""], ids=["own-session", "virsh-session"])
@pytest.mark.parametrize("holds", ["2>/dev/null", ">/dev/null"], ids=["stdout", "stderr"])
def test_a_child_that_keeps_the_output_open_neither_delays_the_call_nor_is_killed(
        tmp_path: Path, setsid: str, holds: str) -> None:
    """ssh's ControlPersist master (its own session) or a wrapper's daemon (virsh's)
    keeps stdout or stderr open after virsh exits: the call ends when virsh does, with
    all it wrote, well within a 1 s timeout (sh drained the pipe for 2 s more and the
    call timed out), and the holder lives on (it is not ours to kill)."""
    pids = tmp_path / "pids"
    virsh = Virsh(shell(tmp_path, f"""\
        {setsid}sleep 600 {holds} &
        echo $! > {pids}
        echo " Id   Name   State"
        echo "error: a warning" >&2
        exit 3
    """), default_timeout=1)
    try:
        result = virsh.run("default", ["list"], check=False)
        assert (result.exit_code, result.stdout, result.stderr) == (
            3, " Id   Name   State\n", "error: a warning\n")
        assert virsh.given_up("default") is None
        assert not exited(int(pids.read_text()))
    finally:
        kill_recorded(pids)


def test_a_child_that_writes_after_virsh_exited_cannot_grow_the_output(tmp_path: Path) -> None:
    """What virsh left behind may write on for ever: once the call has read the output,
    the child's further writes fail (EPERM on the sealed file: it cannot fill memory),
    and it is not killed for it; the call's result is what virsh wrote."""
    go, ended, pids = tmp_path / "go", tmp_path / "ended", tmp_path / "pids"
    virsh = Virsh(shell(tmp_path, f"""\
        (while [ ! -e {go} ]; do sleep 0.01; done
         while echo more; do :; done 2>/dev/null; touch {ended}) &
        echo $! > {pids}
        echo done
    """))
    try:
        result = virsh.run("default", ["list"])
        go.touch()
        deadline = time.monotonic() + WAIT
        while not ended.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ended.exists(), "the child's writes never failed"
        assert result.stdout == "done\n"
    finally:
        go.touch()
        kill_recorded(pids)


def test_without_memfd_the_output_goes_to_unlinked_temporary_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``memfd_create`` is missing or refused, the same holds on temporary files."""
    def refused(*args: object) -> int:
        raise OSError("memfd_create refused")

    monkeypatch.setattr(os, "memfd_create", refused)
    pids = tmp_path / "pids"
    virsh = Virsh(shell(tmp_path, f"""\
        setsid sleep 600 &
        echo $! > {pids}
        echo out; echo err >&2
    """), default_timeout=1)
    try:
        result = virsh.run("default", ["list"])
        assert (result.stdout, result.stderr) == ("out\n", "err\n")
        assert not exited(int(pids.read_text()))
    finally:
        kill_recorded(pids)
