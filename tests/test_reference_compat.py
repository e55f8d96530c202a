"""Drop-in compatibility, proved against the real libvirt-guests.sh (Debian's).

Each test runs the reference script (see ``tools/reference.py``: unmodified,
its fixed paths redirected in a private mount namespace) and virtguests on the
same simulated host, or on identical fresh twins, through the same fake virsh.

Differences that are deliberate are asserted explicitly, each with a comment.
Two kinds of noise in the reference's stdout are ignored everywhere
(:func:`ref_lines`), and virtguests is checked never to print them:

* a blank line per URI at stop and start: the script does not silence the
  stdout of ``virsh connect``, which is just virsh's trailing newline;
* a blank line after the (empty) transient-guest list when suspending and no
  transient guest runs: the script ends that message with ``echo`` even when
  it printed nothing.

Without a reference (not root, no unshare, no apt), the tests skip, except
when ``CI`` or ``VIRTGUESTS_REQUIRE_REALHOST=1`` is set: then they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pytest

from tools.reference import fetch_reference, reference_available, run_reference
from virtguests.testing import FakeHost, Run

pytestmark = pytest.mark.timeout(1500)
"""The first test fetches Debian's package (tools/reference.py: apt-get download, and
apt-get update when that fails, up to 600 s each); setup.cfg's 300 s would end the run."""

COMMANDS = "{start|stop|status|restart|condrestart|try-restart|reload|force-reload|" \
           "gueststatus|shutdown}"


def _required() -> bool:
    # same rule as tests/realhost/conftest.py
    ci = os.environ.get("CI", "").strip().lower()
    return (ci not in ("", "0", "false", "no")
            or os.environ.get("VIRTGUESTS_REQUIRE_REALHOST") == "1")


@pytest.fixture(autouse=True)
def _reference_here() -> None:
    reason = reference_available()
    if reason is not None:
        if _required():
            pytest.fail(f"{reason} (required here: CI or VIRTGUESTS_REQUIRE_REALHOST=1 is set)",
                        pytrace=False)
        pytest.skip(reason)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def new_host(root: Path, desc: dict[str, Any], config: str) -> FakeHost:
    root.mkdir()
    return FakeHost(root, desc, config)


@dataclass
class Twins:
    """Two identical fresh hosts: one for the reference, one for virtguests."""

    ref: FakeHost
    ours: FakeHost

    def both(self, action: Any) -> None:
        """The same preparation on both hosts (at once)."""
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(action, self.ref), pool.submit(action, self.ours)]:
                done.result()

    def run(self, command: Union[str, list[str]]) -> tuple[Run, Run]:
        """Both tools at once (separate hosts), to keep the tests short."""
        args = [command] if isinstance(command, str) else command
        with ThreadPoolExecutor(1) as pool:
            ours = pool.submit(self.ours.run, *args)
            ref = reference(self.ref, command)
            return ref, ours.result()

    def set_config(self, text: str) -> None:
        self.ref.set_config(text)
        self.ours.set_config(text)


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[Any]:
    def make(desc: dict[str, Any], config: str) -> Twins:
        return Twins(new_host(tmp_path / "reference", desc, config),
                     new_host(tmp_path / "virtguests", desc, config))
    yield make


def reference(host: FakeHost, command: Union[str, list[str]]) -> Run:
    """The reference on ``host``, with the same config file virtguests reads."""
    return run_reference(command, host=host, config_text=host.config_file.read_text())


def ref_lines(run: Run) -> list[str]:
    """The reference's stdout lines without its blank noise lines (module doc)."""
    return [line for line in run.lines if line]


def our_lines(run: Run) -> list[str]:
    assert "" not in run.lines, f"virtguests printed a blank line:\n{run.out}"
    return run.lines


def assert_same(ref: Run, ours: Run, *, ordered: bool = True) -> None:
    r, o = ref_lines(ref), our_lines(ours)
    if not ordered:
        r, o = sorted(r), sorted(o)
    assert (ours.code, o) == (ref.code, r), f"reference:\n{ref.out}{ref.err}\nvirtguests:\n" \
                                             f"{ours.out}{ours.err}"


def guests(*names: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": n, "shutdown_seconds": 0.1, "save_seconds": 0.05, **extra} for n in names]


def one_uri(*guest_list: dict[str, Any]) -> dict[str, Any]:
    return {"uris": {"default": {"guests": list(guest_list)}}}


def marker(host: FakeHost) -> Path:
    return host.state_dir / "libvirt-guests.started"


def list_text(host: FakeHost) -> str:
    return host.list_file.read_text() if host.list_file.exists() else ""


# ---------------------------------------------------------------------------
# (a) swap the tools between stop and start
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["suspend", "shutdown"])
def test_reference_stop_then_virtguests_start(tmp_path: Path, mode: str) -> None:
    host = new_host(tmp_path / "h", one_uri(*guests("web", "db"),
                                             {"name": "off", "state": "shutoff"}),
                    f"ON_SHUTDOWN={mode}\nON_BOOT=start\nCONNECT_RETRIES=0\n")
    assert host.run("start").code == 0 and marker(host).exists()

    stop = reference(host, "stop")
    assert stop.code == 0, stop.err
    assert host.active() == set() and list_text(host)
    assert not marker(host).exists()  # the reference removed its marker: mirrored
    assert (host.run("status").code, host.run("status").out) == (3,
                                                                "stopped, with saved guests\n")

    start = host.run("start")
    assert start.code == 0, start.err
    assert sorted(start.lines) == ["Resuming guest db: done", "Resuming guest web: done",
                                   "Resuming guests on default URI..."]
    assert host.active() == {"web", "db"} and host.managed_saved() == set()
    assert not host.list_file.exists() and marker(host).exists()
    assert reference(host, "status").out == "started\n"


@pytest.mark.parametrize("mode", ["suspend", "shutdown"])
def test_virtguests_stop_then_reference_start(tmp_path: Path, mode: str) -> None:
    host = new_host(tmp_path / "h", one_uri(*guests("web", "db"),
                                             {"name": "off", "state": "shutoff"}),
                    f"ON_SHUTDOWN={mode}\nON_BOOT=start\nCONNECT_RETRIES=0\n")
    assert reference(host, "start").code == 0 and marker(host).exists()

    stop = host.run("stop")
    assert stop.code == 0, stop.err
    assert host.active() == set() and not marker(host).exists()
    status = reference(host, "status")
    assert (status.code, status.out) == (3, "stopped, with saved guests\n")

    start = reference(host, "start")
    assert start.code == 0, start.err
    assert ref_lines(start) == ["Resuming guests on default URI...",
                                "Resuming guest web: done", "Resuming guest db: done"]
    assert host.active() == {"web", "db"} and host.managed_saved() == set()
    assert not host.list_file.exists() and marker(host).exists()
    assert (host.run("status").code, host.run("status").out) == (0, "started\n")


# ---------------------------------------------------------------------------
# (b) same messages on the same host
# ---------------------------------------------------------------------------
def test_suspend_messages(twins: Any) -> None:
    t = twins(one_uri(*guests("web"), {"name": "tmp", "persistent": False},
                      {"name": "off", "state": "shutoff"}), "ON_SHUTDOWN=suspend\n")
    ref, ours = t.run("stop")
    assert_same(ref, ours)
    assert ours.lines == ["Running guests on default URI: web, tmp",
                          "Not suspending transient guests on URI: default: tmp",
                          "Suspending guests on default URI...",
                          "Suspending web: ...", "Suspending web: done"]
    assert list_text(t.ours) == list_text(t.ref)
    assert t.ours.managed_saved() == t.ref.managed_saved() == {"web"}
    assert t.ours.active() == t.ref.active() == {"tmp"}


def test_serial_shutdown_messages(twins: Any) -> None:
    t = twins(one_uri(*guests("web", "db")), "ON_SHUTDOWN=shutdown\n")
    ref, ours = t.run("stop")
    assert_same(ref, ours)
    assert ours.lines[-4:] == ["Starting shutdown on guest: web",
                               "Shutdown of guest web complete.",
                               "Starting shutdown on guest: db",
                               "Shutdown of guest db complete."]
    assert list_text(t.ours) == list_text(t.ref)
    assert t.ours.active() == t.ref.active() == set()


def test_serial_shutdown_timeout_messages(twins: Any) -> None:
    t = twins(one_uri(*guests("web", ignore_shutdown=True)),
              "ON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=1\n")
    ref, ours = t.run("stop")
    assert_same(ref, ours)  # a serial timeout does not change the exit status (0)
    assert ours.lines[-1] == "Shutdown of guest web failed to complete in time."
    assert list_text(t.ours) == list_text(t.ref)


def test_parallel_shutdown_messages(twins: Any) -> None:
    t = twins(one_uri(*guests("g1", "g2", "g3", "g4")),
              "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=2\n")
    ref, ours = t.run("stop")

    def no_progress(lines: list[str]) -> list[str]:
        # "Waiting for N guests to shut down, S seconds left" comes every 5 s of the
        # reference's 1 s ticks; whether it appears depends on timing.
        return [line for line in lines if not line.startswith("Waiting for ")]

    r, o = no_progress(ref_lines(ref)), no_progress(our_lines(ours))
    # Completion order legitimately differs between two concurrent runs.
    assert (ours.code, sorted(o)) == (ref.code, sorted(r)) == (0, sorted(r))
    for lines in (r, o):
        starts = [line for line in lines if line.startswith("Starting shutdown")]
        assert starts == [f"Starting shutdown on guest: g{i}" for i in (1, 2, 3, 4)]
        first_done = next(i for i, line in enumerate(lines) if line.endswith("complete."))
        # exactly PARALLEL_SHUTDOWN starts before the first completion (libvirt's own test)
        assert sum(line.startswith("Starting") for line in lines[:first_done]) == 2
    assert list_text(t.ours) == list_text(t.ref)
    assert t.ours.active() == t.ref.active() == set()


def _stopped_twins(twins: Any, desc: dict[str, Any], config: str) -> Any:
    """Twins with the same list file, left by ``virtguests stop`` on each."""
    t = twins(desc, "ON_SHUTDOWN=suspend\n")
    t.both(lambda h: h.run("stop"))
    assert list_text(t.ref) == list_text(t.ours) != ""
    t.set_config(config)
    return t


def test_start_with_on_boot_ignore(twins: Any) -> None:
    t = _stopped_twins(twins, one_uri(*guests("web", "db")), "ON_BOOT=ignore\n")
    ref, ours = t.run("start")
    assert_same(ref, ours)
    assert ours.lines == ["libvirt-guests is configured not to start any guests on boot"]
    for host in (t.ref, t.ours):
        assert not host.list_file.exists() and marker(host).exists()
        assert host.active() == set() and host.managed_saved() == {"web", "db"}


def test_start_with_an_already_active_guest(twins: Any) -> None:
    t = _stopped_twins(twins, one_uri(*guests("web", "db")), "ON_BOOT=start\n")
    t.both(lambda h: h.virsh("start", "web"))
    ref, ours = t.run("start")
    # virtguests starts guests concurrently (PARALLEL_START): lines in completion order
    assert_same(ref, ours, ordered=False)
    assert "Resuming guest web: already active" in ours.lines
    assert ours.lines[0] == "Resuming guests on default URI..."
    for host in (t.ref, t.ours):
        assert host.active() == {"web", "db"} and not host.list_file.exists()


def test_start_ignores_guests_of_an_unconfigured_uri(twins: Any) -> None:
    desc = {"uris": {"default": {"guests": guests("web")},
                     "test:///other": {"guests": guests("x")}}}
    t = twins(desc, 'ON_SHUTDOWN=suspend\nURIS="default test:///other"\n')
    t.both(lambda h: h.run("stop"))
    t.set_config("ON_BOOT=start\nURIS=test:///other\n")
    ref, ours = t.run("start")
    assert_same(ref, ours, ordered=False)  # virtguests handles URIs concurrently
    assert "Ignoring guests on default URI" in ours.lines
    assert "Resuming guest x: done" in ours.lines
    for host in (t.ref, t.ours):
        assert host.active("test:///other") == {"x"} and host.active() == set()
        assert not host.list_file.exists() and marker(host).exists()


def test_status_in_each_state(tmp_path: Path) -> None:
    host = new_host(tmp_path / "h", one_uri(*guests("web")),
                    "ON_SHUTDOWN=suspend\nON_BOOT=start\n")
    expected = {"fresh": (3, "stopped, with no saved guests\n"),
                "stop": (3, "stopped, with saved guests\n"),
                "start": (0, "started\n")}
    for step, want in expected.items():
        if step != "fresh":
            assert host.run(step).code == 0
        ref, ours = reference(host, "status"), host.run("status")
        assert (ref.code, ref.out) == want, step
        assert (ours.code, ours.out) == want, step


def test_gueststatus_messages(twins: Any) -> None:
    desc = {"uris": {
        "default": {"guests": [*guests("web"), {"name": "p", "state": "paused"},
                               {"name": "off", "state": "shutoff"}]},
        "test:///other": {"guests": guests("x")}}}
    t = twins(desc, 'URIS="default test:///other"\n')
    ref, ours = t.run("gueststatus")
    assert (ours.code, ours.out) == (ref.code, ref.out) == (0, ref.out)
    assert ours.lines[0] == "* default URI:"


def test_gueststatus_with_an_unreachable_uri(twins: Any) -> None:
    desc = {"uris": {"default": {"guests": guests("web")},
                     "test:///down": {"unreachable": True}}}
    t = twins(desc, 'URIS="test:///down default"\nCONNECT_RETRIES=0\n')
    ref, ours = t.run("gueststatus")
    assert ours.out == ref.out
    assert ours.out.startswith("* test:///down URI:\n\n* default URI:\n")
    # Deliberate: the reference's `retval` runs in a pipeline subshell, so a failed
    # listing never reaches its exit status (0); virtguests reports it (1).
    assert (ref.code, ours.code) == (0, 1)
    assert "test:///down" in ours.err


@pytest.mark.parametrize("args", [[], ["bogus"], ["start", "stop"]])
def test_usage_errors_exit_2(twins: Any, args: list[str]) -> None:
    t = twins(one_uri(*guests("web")), "")
    ref, ours = t.run(args)
    assert ref.code == ours.code == 2
    # Deliberate: the reference names itself by its path ($0); virtguests by its name.
    assert ref.out == f"Usage: {fetch_reference()} {COMMANDS}\n"
    assert ours.out == f"Usage: virtguests {COMMANDS}\n"
    assert t.ref.calls() == t.ours.calls() == []


def test_help_exits_0(twins: Any) -> None:
    t = twins(one_uri(*guests("web")), "")
    ref, ours = t.run("--help")
    assert ref.code == ours.code == 0
    assert ref.lines[0].split(" ", 2)[2] == ours.lines[0].split(" ", 2)[2] == COMMANDS


@pytest.mark.parametrize("command", ["reload", "force-reload"])
def test_reload_does_nothing(twins: Any, command: str) -> None:
    t = twins(one_uri(*guests("web")), "")
    ref, ours = t.run(command)
    assert (ref.code, ref.out) == (ours.code, ours.out) == (0, "")
    assert t.ref.calls() == t.ours.calls() == []


# ---------------------------------------------------------------------------
# deliberate differences, asserted
# ---------------------------------------------------------------------------
def test_unreachable_uri_at_stop(twins: Any) -> None:
    desc = {"uris": {"default": {"guests": guests("web")},
                     "test:///down": {"unreachable": True}}}
    t = twins(desc, 'ON_SHUTDOWN=suspend\nURIS="default test:///down"\nCONNECT_RETRIES=0\n')
    ref, ours = t.run("stop")
    # Reference 9.0 prints the message without a newline: with the unreachable URI
    # last, the next message is glued to it. virtguests prints a whole line.
    assert ("Can't connect to test:///down. Skipping.Suspending guests on default URI..."
            in ref.lines)
    assert ours.lines == ["Running guests on default URI: web",
                          "Can't connect to test:///down. Skipping.",
                          "Suspending guests on default URI...",
                          "Suspending web: ...", "Suspending web: done"]
    # Deliberate: the reference exits 0 although the URI's guests were not protected;
    # virtguests says so on stderr and exits 1.
    assert (ref.code, ours.code) == (0, 1)
    assert "test:///down" in ours.err and "not protected" in ours.err
    assert list_text(t.ours) == list_text(t.ref)


def test_failed_start(twins: Any) -> None:
    t = _stopped_twins(twins, one_uri(*guests("web", fail_start=True), *guests("db")),
                       "ON_BOOT=start\n")
    ref, ours = t.run("start")
    assert ref.code == ours.code == 1
    # The reference prints "Resuming guest NAME: " before starting and "done" after
    # it, so a failure leaves the bare prefix; virtguests prints whole lines with
    # the outcome, and keeps the guest for the next start instead of forgetting it.
    assert "Resuming guest web: " in ref.lines
    assert "Resuming guest web: failed" in ours.lines
    assert sorted(set(ours.lines) - {"Resuming guest web: failed"}) == sorted(
        set(ref_lines(ref)) - {"Resuming guest web: "})
    assert "kept for the next start" in ours.err
    assert t.ours.pending_file.exists()
    for host in (t.ref, t.ours):
        assert host.active() == {"db"} and not host.list_file.exists()


def test_negative_shutdown_timeout(twins: Any) -> None:
    t = twins(one_uri(*guests("web")), "ON_SHUTDOWN=shutdown\nSHUTDOWN_TIMEOUT=-1\n")
    ref, ours = t.run("stop")
    assert ref.code == ours.code == 6
    assert ref.lines == ["SHUTDOWN_TIMEOUT must be equal or greater than 0"]
    # Deliberate: the reference refuses and leaves every guest running (they lose
    # power); virtguests reports the bad value (with file:line) and still shuts down.
    assert t.ref.active() == {"web"} and not t.ref.list_file.exists()
    assert "SHUTDOWN_TIMEOUT: must be equal or greater than 0" in ours.err
    assert ours.lines[-1] == "Shutdown of guest web complete."
    assert t.ours.active() == set()


# ---------------------------------------------------------------------------
# (c) the list file
# ---------------------------------------------------------------------------
def test_list_file_is_byte_identical(twins: Any) -> None:
    desc = {"uris": {
        "default": {"guests": [*guests("web"), {"name": "tmp", "persistent": False},
                               {"name": "off", "state": "shutoff"}]},
        "test:///other": {"guests": guests("x")}}}
    t = twins(desc, 'ON_SHUTDOWN=suspend\nURIS="default test:///other"\n')
    ref, ours = t.run("stop")
    assert ref.code == ours.code == 0
    assert t.ours.list_file.read_bytes() == t.ref.list_file.read_bytes()
    web, x = t.ours.uuid("web"), t.ours.uuid("x", "test:///other")
    assert t.ours.list_file.read_text() == f"default {web}\ntest:///other {x}\n"
    # (several guests on one line: the shutdown tests compare those list files)
    assert_same(ref, ours, ordered=False)  # virtguests handles URIs concurrently


def test_list_file_in_shutdown_mode_with_a_transient_guest(twins: Any) -> None:
    t = twins(one_uri(*guests("web"), *guests("tmp", persistent=False)),
              "ON_SHUTDOWN=shutdown\nON_BOOT=start\n")
    web, tmp = t.ours.uuid("web"), t.ref.uuid("tmp")
    ref, ours = t.run("stop")
    assert_same(ref, ours)
    # Deliberate: the reference also records transient guests, which vanish when
    # they shut down; virtguests records only guests that can come back.
    assert t.ref.list_file.read_text() == f"default {web} {tmp}\n"
    assert t.ours.list_file.read_text() == f"default {web}\n"
    # Both tools exit 1 at start on the reference's list (the transient guest is
    # gone); virtguests says which and still resumes the rest.
    t.ours.list_file.write_text(t.ref.list_file.read_text())
    ref_start, our_start = t.run("start")
    assert ref_start.code == our_start.code == 1
    assert "Resuming guest : " in ref_start.lines  # the reference lost the name
    assert our_start.lines == ["Resuming guests on default URI...", "Resuming guest web: done"]
    assert f"{tmp} no longer exists" in our_start.err
    for host in (t.ref, t.ours):
        assert host.active() == {"web"} and not host.list_file.exists()


# ---------------------------------------------------------------------------
# defaults: upstream's on purpose (the issue and README say so)
# ---------------------------------------------------------------------------
def test_empty_config_uses_upstream_defaults_unlike_debians_build(twins: Any) -> None:
    """Debian patches the reference to ON_SHUTDOWN=shutdown, ON_BOOT=ignore; we keep
    upstream's suspend/start, and the README tells admins switching on Debian to set
    both explicitly.  With them set, both tools behave the same."""
    t = twins(one_uri(*guests("web")), "# all commented out, as Debian ships it\n")
    t.run("stop")
    assert t.ref.managed_saved() == set() and t.ref.active() == set()  # shut down
    assert t.ours.managed_saved() == {"web"}
    t.run("start")
    assert t.ours.active() == {"web"}


def test_debians_defaults_set_explicitly_behave_the_same(twins: Any) -> None:
    t = twins(one_uri(*guests("web")), "ON_SHUTDOWN=shutdown\nON_BOOT=ignore\n")
    ref, ours = t.run("stop")
    assert_same(ref, ours)
    ref, ours = t.run("start")
    assert_same(ref, ours)
    assert t.ours.active() == t.ref.active() == set()
