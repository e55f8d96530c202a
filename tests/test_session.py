"""One virsh session per URI (virtguests/session.py): the protocol against the recordings of
real virsh 9.0 (fixtures/*-session-*.yaml), the fake virsh's stdin mode against the same
recordings, and Virsh with sessions against the fake: attribution, quoting of tenant
strings, timeouts, a session that dies, the pool, closing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_fakevirsh import base_env, host_from_test_xml, load_fixture, migrate_setup
from virtguests import session
from virtguests.testing import FakeHost, exited, fixtures_dir, wait_exited
from virtguests.testing.fakevirsh.commandline import split_commands
from virtguests.virsh import Result, Virsh, VirshError

FIXTURES = Path(fixtures_dir())
W = "11111111-2222-3333-4444-555555555555"
MISSING = "99999999-8888-7777-6666-555555555555"
DEADLINE = 60.0


def recording(stem: str) -> dict[str, Any]:
    return load_fixture(FIXTURES / f"{stem}.yaml")


def replaying(doc: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A process that prints a recorded session's stdout and stderr and reads its stdin to
    EOF: the Session reads real virsh's bytes, markers included."""
    script = ("import sys\n"
              "sys.stdout.buffer.write(sys.argv[1].encode('utf-8', 'surrogateescape'))\n"
              "sys.stdout.flush()\n"
              "sys.stderr.buffer.write(sys.argv[2].encode('utf-8', 'surrogateescape'))\n"
              "sys.stderr.flush()\n"
              "sys.stdin.buffer.read()\n")
    return subprocess.Popen([sys.executable, "-c", script, doc["stdout"], doc["stderr"]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def command_lines(doc: dict[str, Any]) -> list[str]:
    """The commands of a recorded session, without the markers after each."""
    return [ln for ln in doc["stdin"].splitlines() if not ln.startswith("echo vg-")
            and not ln.startswith("echo --err vg-") and not ln.startswith("echo recorder-")]


@pytest.fixture
def recorded() -> Iterator[Callable[[dict[str, Any]], session.Session]]:
    opened: list[session.Session] = []

    def make(doc: dict[str, Any]) -> session.Session:
        s = session.Session(replaying(doc), nonce="mark")
        opened.append(s)
        s.greet(time.monotonic() + DEADLINE)
        return s

    yield make
    for s in opened:
        s.close()


# -- the protocol, on real virsh's recorded bytes ----------------------------------------


def test_each_recorded_answer_is_what_virsh_prints_as_a_process_of_its_own(
        recorded: Callable[[dict[str, Any]], session.Session]) -> None:
    doc = recording("test-session-basic")
    s = recorded(doc)
    assert s.prompt == "virsh # "
    alone = ["test-list-uuid-name-basic", "test-domstate-reason-running",
             "test-shutdown-missing-uuid", "test-batch-running-basic"]
    lines = command_lines(doc)
    for line, stem in zip(lines, alone):
        one = recording(stem)
        answer = s.ask(line, time.monotonic() + DEADLINE)
        assert answer == session.Answer(one["exit"], one["stdout"], one["stderr"]), line
    semicolon, quoting, destroy, listing = (s.ask(line, time.monotonic() + DEADLINE)
                                            for line in lines[len(alone):])
    assert semicolon == session.Answer(1, "\n", "error: failed to get domain 'x;y'\n")
    assert quoting == session.Answer(0, "a b it's c\"d e;f\n", "")
    assert destroy == session.Answer(0, recording("test-destroy-ok")["stdout"], "")
    assert listing.stdout.split() == [u for u in recording("test-list-uuid-basic")["stdout"]
                                      .split() if u != W]


def test_a_line_wider_than_readline_is_scrolled_and_still_attributed(
        recorded: Callable[[dict[str, Any]], session.Session]) -> None:
    doc = recording("test-session-long-line")
    s = recorded(doc)
    long_line, uri = command_lines(doc)
    assert len(long_line) > 80 and "\r" in doc["stdout"]
    answer = s.ask(long_line, time.monotonic() + DEADLINE)
    assert answer == session.Answer(1, "\n", f"error: failed to get domain '{'x' * 300}'\n")
    assert s.ask(uri, time.monotonic() + DEADLINE) == session.Answer(
        0, "test:///FIXTURES/hosts/basic.xml\n\n", "")


def test_a_killed_libvirtd_makes_the_next_command_lost(
        recorded: Callable[[dict[str, Any]], session.Session]) -> None:
    doc = recording("qemu-session-lost")
    s = recorded(doc)
    assert s.ask("list --uuid", time.monotonic() + DEADLINE).exit_code == 0
    s._nonce, s._count = "after", 0  # the recording's second half has its own markers
    with pytest.raises(session.Lost):
        s.ask("list --uuid", time.monotonic() + DEADLINE)


def test_a_libvirtd_started_again_is_reconnected_and_the_command_run(
        recorded: Callable[[dict[str, Any]], session.Session]) -> None:
    doc = recording("qemu-session-reconnect")
    s = recorded(doc)
    listing = s.ask("list --uuid", time.monotonic() + DEADLINE)
    assert listing.exit_code == 0 and listing.stdout.strip()
    s._nonce, s._count = "after", 0  # the recording's second half has its own markers
    again = s.ask("list --uuid", time.monotonic() + DEADLINE)
    assert "error: Reconnected to the hypervisor" in doc["stderr"]
    assert (again.exit_code, again.stderr) == (0, "")  # the notices are not its errors
    assert again.stdout.endswith(listing.stdout)  # after the recorder's sync echo
    uri = s.ask("uri", time.monotonic() + DEADLINE)
    assert uri == session.Answer(0, doc["uri"] + "\n\n", "")


def test_a_failed_connection_ends_the_session_with_virsh_s_errors() -> None:
    doc = recording("nohost-session-connect")
    s = session.Session(_exiting(doc), nonce="mark")
    with pytest.raises(session.Ended) as ended:
        s.greet(time.monotonic() + DEADLINE)
    assert ended.value.connect_failed
    assert session.NO_HISTORY in doc["stderr"]  # at exit: not the connection's error
    alone = recording("nohost-list-all")  # the same URI, a process of its own
    assert (ended.value.exit_code, ended.value.stdout, ended.value.stderr) == (
        alone["exit"], alone["stdout"], alone["stderr"])
    s.close()


def _exiting(doc: dict[str, Any]) -> subprocess.Popen[bytes]:
    script = ("import sys\nsys.stderr.write(sys.argv[1])\nsys.exit(int(sys.argv[2]))\n")
    return subprocess.Popen([sys.executable, "-c", script, doc["stderr"], str(doc["exit"])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


# -- quoting -------------------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)


@given(st.lists(printable, min_size=2, max_size=4))
@settings(max_examples=300, deadline=None)
def test_every_printable_argument_stays_one_argument(args: list[str]) -> None:
    line = session.command_line(args)
    assert line is not None
    assert split_commands(line) == [args]


@given(st.lists(st.text(min_size=1), min_size=1, max_size=3))
def test_a_line_is_only_printable_ascii(args: list[str]) -> None:
    line = session.command_line(args)
    if any(not (" " <= c <= "~") for arg in args for c in arg):
        assert line is None
    else:
        assert line is not None and "\n" not in line and "\r" not in line


def test_one_argument_is_a_command_string_as_for_a_process() -> None:
    assert session.command_line(["list --uuid; echo x"]) == "list --uuid; echo x"
    assert session.command_line(["domstate", "a;b"]) == "domstate 'a;b'"
    assert session.command_line(["domstate", "it's"]) == "domstate 'it'\\''s'"
    assert session.command_line(["domstate", ""]) is None


# -- the fake virsh reads commands as real virsh does ------------------------------------


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from virtguests.testing import write_shim

    return write_shim(tmp_path_factory.mktemp("bin"))


def test_a_recorded_migration_session_answers_as_the_one_shot_calls(
        recorded: Callable[[dict[str, Any]], session.Session]) -> None:
    """A migrate in a session (a slow call: a session of its own in production) answers
    as its process would: exit status, stdout and stderr of the one-shot recordings."""
    doc = recording("qemu-session-migrate")
    s = recorded(doc)
    answers = [s.ask(line, time.monotonic() + DEADLINE) for line in command_lines(doc)]
    for answer, stem in zip(answers, ("qemu-domjobabort-none", "qemu-migrate-unreachable",
                                      "qemu-migrate-ok")):
        one = recording(stem)
        assert answer == session.Answer(one["exit"], one["stdout"], one["stderr"]), stem
    gone = answers[3]
    assert (gone.exit_code, gone.stdout) == (1, "\n")
    assert gone.stderr == recording("qemu-domjobinfo-migrated-away")["stderr"]


def test_the_fake_replays_the_migration_session(shim: Path, tmp_path: Path) -> None:
    doc = recording("qemu-session-migrate")
    setup = migrate_setup()
    for guest in setup["host"]["uris"][doc["uri"]]["guests"]:
        guest["migrate_seconds"] = 0
    host = tmp_path / "host.yaml"
    host.write_text(yaml.safe_dump(setup["host"]))
    env = base_env() | doc["env"] | {"VIRTGUESTS_FAKE_HOST": str(host)}
    proc = subprocess.run([str(shim), "-c", doc["uri"]], input=doc["stdin"].encode(), env=env,
                          capture_output=True, timeout=DEADLINE)
    assert unscrolled(proc.stdout.decode()) == unscrolled(doc["stdout"])
    assert proc.stderr.decode() == doc["stderr"]
    assert proc.returncode == doc["exit"]


def unscrolled(stdout: str) -> str:
    """*stdout* with the echo of each line wider than readline's 80 columns (which real
    readline scrolls, ``\\r<`` and the line's end, and the fake does not) as one mark."""
    return "\n".join("virsh # (scrolled)" if line.startswith("virsh # ") and (
        "\r" in line or len(line) >= 80) else line for line in stdout.split("\n"))


REPLAYED = ["test-session-basic", "test-session-long-line", "test-session-no-markers",
            "nohost-session-connect"]
"""Not qemu-session-lost nor -reconnect (when libvirtd went away, and virsh's asynchronous
message about it); the session's handling of them is tested on their recorded bytes above."""


@pytest.mark.parametrize("stem", REPLAYED)
def test_the_fake_replays_the_session_recordings(stem: str, shim: Path, tmp_path: Path) -> None:
    doc = recording(stem)
    host = tmp_path / "host.yaml"
    if doc["uri"].startswith("test:///FIXTURES/"):
        uri = doc["uri"].replace("/FIXTURES", str(FIXTURES))
        xml = FIXTURES / doc["uri"][len("test:///FIXTURES/"):]
        host.write_text(yaml.safe_dump(host_from_test_xml(xml, uri), allow_unicode=True))
    else:
        uri = doc["uri"]
        host.write_text(yaml.safe_dump({"uris": {uri: {"unreachable": True}}}))
    env = base_env() | doc["env"] | {"VIRTGUESTS_FAKE_HOST": str(host)}
    proc = subprocess.run([str(shim), "-c", uri], input=doc["stdin"].encode(), env=env,
                          capture_output=True, timeout=DEADLINE)
    expected = doc["stdout"].replace("/FIXTURES", str(FIXTURES))
    assert unscrolled(proc.stdout.decode()) == unscrolled(expected)
    assert proc.stderr.decode() == doc["stderr"]
    assert proc.returncode == doc["exit"]


# -- Virsh with sessions, against the fake ------------------------------------------------

NAMES = ["web1", "a;b", "it's", 'x"y', "#c", "l\\m", " sp ", "a\nb", "tab\there", "é"]


def uuid(n: int) -> str:
    return f"0f1e7a5e-0000-4000-8000-{n:012d}"


@pytest.fixture
def host(fake_host: Callable[..., FakeHost]) -> FakeHost:
    guests = [{"name": name, "uuid": uuid(n), "state": "running"}
              for n, name in enumerate(NAMES)]
    return fake_host({"uris": {"default": {"guests": guests}}})


class Counting(Virsh):
    """Virsh whose session processes are known (their URIs, in the order started)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions_started: list[str] = []

    def _start_session(self, uri: str) -> subprocess.Popen[bytes]:
        self.sessions_started.append(uri)
        return super()._start_session(uri)


def runner(host: FakeHost, sessions: bool = True) -> Counting:
    return Counting(str(host.bin / "virsh"), environ=host.env(), sessions=sessions)


def pids(host: FakeHost) -> list[int]:
    return [call["pid"] for call in host.calls()]


def triple(result: Result) -> tuple[int, str, str]:
    return result.exit_code, result.stdout, result.stderr


CALLS = [["list", "--uuid", "--name"], ["domstate", "--reason", uuid(0)],
         ["domstate", MISSING], ["list --all --uuid; echo virtguests-next; uri"],
         ["shutdown", uuid(1)], ["destroy", uuid(2)], ["destroy", uuid(2)],
         ["list", "--uuid"]]


def test_a_session_answers_every_call_as_processes_of_their_own_do(
        fake_host: Callable[..., FakeHost]) -> None:
    answers = {}
    for sessions in (False, True):
        guests = [{"name": name, "uuid": uuid(n), "state": "running"}
                  for n, name in enumerate(NAMES)]
        host = fake_host({"uris": {"default": {"guests": guests}}})
        virsh = runner(host, sessions)
        try:
            answers[sessions] = [triple(virsh.run("default", args, check=False))
                                 for args in CALLS]
        finally:
            virsh.close()
        assert len(set(pids(host))) == (1 if sessions else len(CALLS))
        assert virsh.sessions_started == (["default"] if sessions else [])
        host.log_file.unlink()
    assert answers[True] == answers[False]
    assert [exit for exit, _, _ in answers[True]] == [0, 0, 1, 0, 0, 0, 1, 0]


def test_a_tenant_s_name_stays_one_argument(host: FakeHost) -> None:
    virsh = runner(host)
    try:
        for name in NAMES:
            result = virsh.run("default", ["domstate", name])
            assert result.stdout == "running\n\n", name
    finally:
        virsh.close()
    commands = host.commands()
    assert commands == [["domstate", name] for name in NAMES]
    by_session = {tuple(c["argv"]) for c in host.calls() if c["pid"] == pids(host)[0]}
    assert ("domstate", "a\nb") not in by_session  # not printable ASCII: its own process
    assert ("domstate", "a;b") in by_session


def test_a_timeout_kills_the_session_s_process_group(host: FakeHost, tmp_path: Path) -> None:
    """The session's virsh starts a child (as ssh is for a remote URI); a command that hangs
    times out: both are killed, the URI is not given up (a guest's call; the liveness check
    answers), and the next call opens a new session."""
    child = tmp_path / "child.pid"
    wrapper = children_left(tmp_path, host, child)
    host.set_host({"uris": {"default": {"guests": [
        {"name": "web1", "uuid": uuid(0), "state": "running", "hang": ["shutdown"]}]}}})
    virsh = Counting(str(wrapper), environ=host.env(), sessions=True)
    try:
        assert virsh.run("default", ["list", "--uuid"]).exit_code == 0
        first = pids(host)[0]
        sleeper = int(child.read_text().split()[0])
        with pytest.raises(VirshError) as raised:
            virsh.run("default", ["shutdown", uuid(0)], timeout=1)
        assert raised.value.timed_out
        assert exited(first) and exited(sleeper)
        assert virsh.given_up("default") is None
        assert virsh.run("default", ["list", "--uuid"]).exit_code == 0
    finally:
        virsh.close()
        kill_children(child)
    listings = [c["pid"] for c in host.calls() if c["argv"][-1] == "--uuid"]
    assert len(virsh.sessions_started) == 2 and listings[0] != listings[-1]


def children_left(tmp_path: Path, host: FakeHost, record: Path) -> Path:
    """A virsh that leaves a child behind (as ssh's ControlPersist master), its pid
    appended to *record* (``kill_children`` ends them: virtguests rightly does not)."""
    wrapper = tmp_path / "virsh"
    wrapper.write_text(f"#!/bin/sh\nsleep 600 &\necho $! >> {record}\n"
                       f"exec {host.bin / 'virsh'} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def kill_children(record: Path) -> None:
    for pid in record.read_text().split() if record.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def test_a_session_that_dies_is_reopened_once(host: FakeHost) -> None:
    """Killed between two calls: the next call reopens it; killed again: calls run in
    processes of their own for the rest of the run."""
    virsh = runner(host)
    try:
        for _ in range(3):
            for _ in range(2):
                assert virsh.run("default", ["list", "--uuid"]).exit_code == 0
            with contextlib.suppress(ProcessLookupError):  # a process of its own: gone
                os.killpg(pids(host)[-1], signal.SIGKILL)
            wait_exited([pids(host)[-1]], time.monotonic() + DEADLINE)
    finally:
        virsh.close()
    first, second, third, fourth, fifth, sixth = pids(host)
    assert first == second and third == fourth and first != third
    assert len({third, fifth, sixth}) == 3
    assert len(virsh.sessions_started) == 2


def test_a_listing_that_times_out_gives_the_uri_up(host: FakeHost) -> None:
    host.set_host({"uris": {"default": {"guests": [], "hang": True}}})
    virsh = runner(host)
    try:
        with pytest.raises(VirshError) as raised:
            virsh.run("default", ["list", "--uuid"], timeout=1)
        assert raised.value.timed_out
        assert virsh.given_up("default") is not None
        with pytest.raises(VirshError) as refused:
            virsh.run("default", ["list", "--uuid"])
        assert refused.value.given_up
    finally:
        virsh.close()
    assert virsh.sessions_started == ["default"]


def test_an_unreachable_uri_answers_as_a_process_does(fake_host: Callable[..., FakeHost]
                                                      ) -> None:
    host = fake_host({"uris": {"default": {"unreachable": True}}})
    virsh, alone = runner(host), runner(host, sessions=False)
    try:
        ours = virsh.run("default", ["list", "--uuid"], check=False)
        theirs = alone.run("default", ["list", "--uuid"], check=False)
    finally:
        virsh.close()
    assert (ours.exit_code, ours.stdout, ours.stderr) == (
        theirs.exit_code, theirs.stdout, theirs.stderr)
    assert ours.exit_code == 1 and ours.stderr.startswith("error: failed to connect")


def test_slow_calls_use_a_pool_one_session_per_concurrent_caller(
        fake_host: Callable[..., FakeHost]) -> None:
    guests = [{"name": f"g{n}", "uuid": uuid(n), "state": "running"} for n in range(6)]
    host = fake_host({"uris": {"default": {"guests": guests}}})
    virsh = runner(host)
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def save(numbers: range) -> None:
        try:
            start.wait(DEADLINE)
            for n in numbers:
                virsh.run("default", ["managedsave", uuid(n)])
                virsh.run("default", ["list", "--uuid"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(range(n, 6, 3),)) for n in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
    finally:
        virsh.close()
    assert not errors and not any(t.is_alive() for t in threads)
    saves = {c["pid"] for c in host.calls() if c["argv"][0] == "managedsave"}
    listings = {c["pid"] for c in host.calls() if c["argv"][0] == "list"}
    assert len(listings) == 1 and not saves & listings
    assert 1 <= len(saves) <= 3 and len(virsh.sessions_started) == 1 + len(saves)
    assert host.managed_saved() == {f"g{n}" for n in range(6)}


def test_close_ends_every_session(host: FakeHost) -> None:
    virsh = runner(host)
    virsh.run("default", ["list", "--uuid"])
    virsh.run("default", ["start", uuid(0)], check=False)
    virsh.close()
    assert len(set(pids(host))) == 2
    assert all(exited(pid) for pid in pids(host))
    assert virsh.run("default", ["list", "--uuid"]).exit_code == 0  # a process of its own
    assert len(virsh.sessions_started) == 2


def test_close_after_a_clean_exit_leaves_virsh_s_children_alone(
        host: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose virsh exits at EOF is not killed with its process group: a child it
    left (ssh's ControlPersist master) outlives it, as it does a one-shot call."""
    children = tmp_path / "children.pid"
    virsh = Counting(str(children_left(tmp_path, host, children)), environ=host.env(),
                     sessions=True)
    killed: list[int] = []
    real_killpg = os.killpg

    def killpg(pgid: int, sig: int) -> None:
        killed.append(pgid)
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", killpg)
    try:
        assert virsh.run("default", ["list", "--uuid"]).exit_code == 0
        virsh.close()
        assert killed == []  # a SIGKILL is delivered later: the child's state cannot say
        assert all(exited(pid) for pid in pids(host))
        sleepers = [int(pid) for pid in children.read_text().split()]
        assert sleepers and not any(exited(pid) for pid in sleepers)
    finally:
        kill_children(children)


class Stuck:
    """Virshes that ignore SIGKILL (stuck in the kernel): their ``wait`` times out and
    moves a fake monotonic clock on by the time waited, so close's cost is counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pids: list[int]) -> None:
        self.pids = set(pids)
        self.now = 1000.0
        self.waited: list[float] = []
        real_wait = subprocess.Popen.wait

        def wait(proc: subprocess.Popen[bytes], timeout: float | None = None) -> int:
            if proc.pid in self.pids and timeout is not None:
                self.waited.append(timeout)
                self.now += timeout
                raise subprocess.TimeoutExpired(proc.args, timeout)
            return real_wait(proc, timeout)

        monkeypatch.setattr(session, "CLOSE_GRACE", 0.0)
        monkeypatch.setattr(subprocess.Popen, "wait", wait)
        monkeypatch.setattr("virtguests.session.time", SimpleNamespace(monotonic=lambda: self.now))


def test_a_virsh_that_outlives_sigkill_does_not_hold_up_close(
        host: FakeHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A virsh stuck in the kernel (D state) ignores SIGKILL until it leaves it: close waits
    REAP_WAIT for it, says so, and returns."""
    virsh = runner(host)
    assert virsh.run("default", ["list", "--uuid"]).exit_code == 0
    stuck = Stuck(monkeypatch, pids(host))
    with caplog.at_level("WARNING", logger="virtguests.session"):
        virsh.close()
    assert stuck.waited == [0.0, session.REAP_WAIT], stuck.waited
    assert "did not exit after SIGKILL" in caplog.text
    monkeypatch.undo()
    wait_exited(stuck.pids, time.monotonic() + DEADLINE)


def test_stuck_virshes_share_one_reap_deadline(
        fake_host: Callable[..., FakeHost], monkeypatch: pytest.MonkeyPatch) -> None:
    """Three URIs' sessions all stuck: the end of the run waits REAP_WAIT once, not once
    per session."""
    uris = ["qemu:///a", "qemu:///b", "qemu:///c"]
    host = fake_host({"uris": {uri: {"guests": []} for uri in uris}})
    virsh = runner(host)
    for uri in uris:
        assert virsh.run(uri, ["list", "--uuid"]).exit_code == 0
    assert virsh.sessions_started == uris
    stuck = Stuck(monkeypatch, pids(host))
    assert len(stuck.pids) == 3
    began = stuck.now
    virsh.close()
    assert stuck.now - began == pytest.approx(session.REAP_WAIT)
    assert len(stuck.waited) == 6, stuck.waited
    monkeypatch.undo()
    wait_exited(stuck.pids, time.monotonic() + DEADLINE)


def test_a_stop_run_uses_one_session_for_its_quick_calls(
        fake_host: Callable[..., FakeHost]) -> None:
    guests = [{"name": f"g{n}", "uuid": uuid(n), "state": "running", "shutdown_seconds": 0.2}
              for n in range(4)]
    host = fake_host({"uris": {"default": {"guests": guests}}},
                     config="ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=4\n")
    run = host.run("stop", timeout=DEADLINE)
    assert run.code == 0, run
    quick = [c for c in host.calls() if c["argv"][0] != "event"]
    assert len(quick) >= 6 and len({c["pid"] for c in quick}) == 1
    assert all(exited(c["pid"]) for c in host.calls())


# -- real virsh -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh is not installed")
def test_real_virsh_sessions_answer_as_its_processes_do() -> None:
    calls = [["list", "--all"], ["domstate", "--reason", "test"], ["domstate", "x;y"],
             ["echo", "a b", "it's", 'c"d', "e;f", "#h", "\\"], ["dominfo", "nosuch"],
             ["list --uuid; echo virtguests-next; uri"], ["domstate", "a\nb"]]
    answers = {}
    started = {}
    for sessions in (False, True):
        virsh = Counting("virsh", sessions=sessions)
        try:
            answers[sessions] = [triple(virsh.run("test:///default", args, check=False))
                                 for args in calls]
            answers[sessions].append(triple(virsh.run(  # cannot connect
                "qemu+unix:///system?socket=/nonexistent/sock", ["list"], check=False)))
        finally:
            virsh.close()
        started[sessions] = virsh.sessions_started
    assert answers[True] == answers[False]
    assert started == {False: [], True: ["test:///default",
                                         "qemu+unix:///system?socket=/nonexistent/sock"]}
    assert answers[True][3][1] == "a b it's c\"d e;f #h \\\n"
    assert [exit for exit, _, _ in answers[True]] == [0, 0, 1, 0, 1, 0, 1, 1]


def test_a_killed_virtguests_leaves_no_session_behind(host: FakeHost, tmp_path: Path) -> None:
    """SIGKILL gives virtguests no chance to close its sessions: each reads EOF on its stdin
    and exits (real virsh does too: fixtures/test-session-no-markers.yaml)."""
    script = ("import os, signal, sys\n"
              "from virtguests.virsh import Virsh\n"
              "virsh = Virsh(sys.argv[1], sessions=True)\n"
              "virsh.run('default', ['list', '--uuid'])\n"
              "virsh.run('default', ['start', sys.argv[2]], check=False)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(host.bin / "virsh"), uuid(0)],
                          env=host.env(), capture_output=True, timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sessions = set(pids(host))
    assert len(sessions) == 2
    wait_exited(sessions, time.monotonic() + DEADLINE)


def test_libvirtd_gone_mid_session_answers_as_a_process_does(host: FakeHost) -> None:
    """The session's next command cannot reconnect (not run): the session is reopened,
    which fails to connect, and that is the answer, as a process of its own would give."""
    guests = [{"name": "web1", "uuid": uuid(0), "state": "running"}]
    host.set_host({"uris": {"default": {"guests": guests}}})
    virsh, alone = runner(host), runner(host, sessions=False)
    try:
        assert virsh.run("default", ["list", "--uuid"]).exit_code == 0
        host.set_host({"uris": {"default": {"guests": guests, "unreachable": True}}})
        ours = triple(virsh.run("default", ["list", "--uuid"], check=False))
        assert ours == triple(alone.run("default", ["list", "--uuid"], check=False))
        assert ours[0] == 1 and ours[2].startswith("error: failed to connect")
        host.set_host({"uris": {"default": {"guests": guests}}})
        assert virsh.run("default", ["list", "--uuid"]).stdout == f"{uuid(0)}\n\n"
    finally:
        virsh.close()
    assert len(virsh.sessions_started) == 2  # reopened once; then a process per call


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polled"])
def test_a_child_holding_the_output_open_does_not_delay_a_failed_connection(
        fake_host: Callable[..., FakeHost], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        pidfd: bool) -> None:
    """virsh exits (it cannot connect) but a child it left (ssh's ControlPersist master)
    keeps its stdout and stderr open: the session sees virsh gone, not a timeout."""
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open")
    host = fake_host({"uris": {"default": {"unreachable": True}}})
    children = tmp_path / "children.pid"
    wrapper = children_left(tmp_path, host, children)
    virsh = Counting(str(wrapper), environ=host.env(), sessions=True)
    try:
        result = virsh.run("default", ["list", "--uuid"], timeout=DEADLINE, check=False)
    finally:
        virsh.close()
        kill_children(children)
    assert result.exit_code == 1 and result.stderr.startswith("error: failed to connect")
    assert virsh.sessions_started == ["default"] and virsh.given_up("default") is None


def test_sigterm_mid_run_leaves_no_session_behind(fake_host: Callable[..., FakeHost]) -> None:
    guests = [{"name": f"g{n}", "uuid": uuid(n), "state": "running", "save_seconds": 0.2}
              for n in range(8)]
    host = fake_host({"uris": {"default": {"guests": guests}}}, config="PARALLEL_SUSPEND=2\n")
    proc = host.spawn("stop")
    deadline = time.monotonic() + DEADLINE
    while sum(c[0] == "managedsave" for c in host.commands()) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no save started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode in (0, 1) and "Traceback" not in err, err
    sessions = {c["pid"] for c in host.calls()}
    assert 2 <= len(sessions) <= 3  # the quick session and at most two for the saves
    assert all(exited(pid) for pid in sessions)  # closed by the run, not left to read EOF


def test_a_quick_call_behind_a_slow_answer_takes_a_pooled_session(
        fake_host: Callable[..., FakeHost], monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown request that answers late (a guest agent that does not reply) holds the
    URI's session; a listing meanwhile waits QUICK_WAIT, then runs in a pooled session."""
    monkeypatch.setattr(session, "QUICK_WAIT", 0.05)
    guests = [{"name": "web1", "uuid": uuid(0), "state": "running"}]
    host = fake_host({"uris": {"default": {"guests": guests}},
                      "faults": [{"cmd": "shutdown", "action": "slow", "seconds": 1}]})
    virsh = runner(host)
    slow = threading.Thread(target=virsh.run, args=("default", ["shutdown", uuid(0)]))
    try:
        slow.start()
        deadline = time.monotonic() + DEADLINE
        assert virsh._sessions is not None
        while not virsh._sessions._uri("default").quick_lock.locked():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert virsh.run("default", ["list", "--uuid"]).exit_code == 0
        slow.join(DEADLINE)
        assert not slow.is_alive()
    finally:
        virsh.close()
    by_command = {c["argv"][0]: c["pid"] for c in host.calls()}
    assert by_command["shutdown"] != by_command["list"] and len(virsh.sessions_started) == 2


def test_each_line_a_session_reads_is_a_call_of_its_own_in_the_log_and_journal(
        host: FakeHost, tmp_path: Path) -> None:
    """tools/properties.py and the soak tell calls apart by ``call``, not by pid."""
    journal = tmp_path / "journal.jsonl"
    virsh = Counting(str(host.bin / "virsh"),
                     environ=host.env() | {"VIRTGUESTS_FAKE_JOURNAL": str(journal)},
                     sessions=True)
    try:
        for args in (["list", "--uuid"], ["domstate", uuid(0)], ["domstate", uuid(1)]):
            virsh.run("default", args)
    finally:
        virsh.close()
    logged = [c["call"] for c in host.calls()]
    dispatched = [json.loads(line)["call"] for line in journal.read_text().splitlines()]
    pid = pids(host)[0]
    assert logged == dispatched == [f"{pid}.1", f"{pid}.2", f"{pid}.3"]
