"""Issue 13 item 1: real remote URIs (``qemu+ssh://``) next to a local one.

A second private libvirtd per test plays the remote host: virtguests reaches it only
through a private sshd (``tools/realhost/sshd.py``) as
``qemu+ssh://root@127.0.0.1:PORT/system?socket=...&proxy=netcat&...``, while the
session's libvirtd stays a local URI in the same run.  The test itself defines, boots
and inspects the remote guests over the daemon's own socket, so the sshd's log counts
only virtguests' connections.  Made real, not simulated: the sshd killed (with every
connection it carries) after virtguests' first save there answered, or while that
save is being written, and the remote libvirtd SIGSTOPped behind a sshd that still
answers.

The wrapper that times the first kill and the freeze (``calllog.CallLog``) sees each
call, a process's or a session's line, and acts before virtguests reads the answer; the
kill during a save is timed from libvirt's state alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.realhost.guestimage import GuestImage, domain_xml
from tools.realhost.libvirtd import Guest, PrivateLibvirtd
from tools.realhost.sshd import PrivateSshd

from .calllog import CallLog, stop_on_a_frozen_daemon, verb
from .cli import Run, VirtGuestsCli
from .conftest import DefineGuest, private_libvirtd, record_count, record_timing
from .test_e2e import list_entries, managed_saved, outcomes, start_all, uuid_of
from .test_hostile import (
    RUN_TIMEOUT,
    a_save_held,
    assert_given_up_then_brought_back,
    finish,
    wait_until,
)


@pytest.fixture
def remote(realhost_ready: None) -> Iterator[PrivateLibvirtd]:
    """The remote host's libvirtd: this test's own (a test may SIGSTOP it)."""
    with private_libvirtd("libvirtd (remote)") as daemon:
        yield daemon


@pytest.fixture
def cli(libvirtd: PrivateLibvirtd, tmp_path: Path) -> VirtGuestsCli:
    return VirtGuestsCli(tmp_path / "vg", libvirtd)


def boot_remote(daemon: PrivateLibvirtd, image: GuestImage, tmp_path: Path,
                *specs: tuple[str, dict[str, Any]]) -> list[Guest]:
    """Like test_e2e.boot on the remote host's daemon (through its own socket, not ssh):
    define persistent guests (``domain_xml`` options per guest), start all, wait for each."""
    guests = []
    for name, options in specs:
        console = tmp_path / f"{name}.console.log"
        xml = tmp_path / f"{name}.xml"
        xml.write_text(domain_xml(name, image=image, console_log=console, **options))
        daemon.virsh("define", str(xml))
        guests.append(Guest(daemon, name, console, persistent=True))
    return start_all(guests)


def states(*guests: Guest) -> dict[str, str]:
    return {g.name: g.state() for g in guests}


# ---------------------------------------------------------------------------
# a remote and a local URI in one run
# ---------------------------------------------------------------------------
def counted_run(cli: VirtGuestsCli, sshd: PrivateSshd, command: str, count: str,
                timing: str) -> Run:
    """Run *command*, recording its ssh logins (``ssh connections: COUNT``) and its time
    for the summary; a traceback is never acceptable, whatever the exit status."""
    before = sshd.connections()
    run = cli.run(command, timeout=RUN_TIMEOUT)
    record_count(f"ssh connections: {count}", sshd.connections() - before)
    record_timing(timing, run.seconds)
    assert "Traceback" not in run.err, run
    return run


def test_remote_and_local_uri_suspend_resume_and_parallel_shutdown(
    libvirtd: PrivateLibvirtd, remote: PrivateLibvirtd, sshd: PrivateSshd,
    define_guest: DefineGuest, guest_image: GuestImage, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    """Save and restore, then parallel shutdown with a poweroff, on both URIs at once.

    The remote URI is real ssh all the way: each of virtguests' virsh calls there is a
    login the sshd logs, counted for the timing summary.
    """
    remote_uri, local_uri = sshd.qemu_uri(remote), libvirtd.qemu_uri
    far = boot_remote(remote, guest_image, tmp_path, ("rm-a", {}), ("rm-b", {}),
                      ("rm-stuck", {"ignore": True}))
    stuck = far[-1]
    near = define_guest("lc-a")
    remote_uuids = [uuid_of(g) for g in far]
    cli.config(uris=[remote_uri, local_uri], ON_SHUTDOWN="suspend")

    # the URI really goes through the sshd, and the test's own calls do not
    before = sshd.connections()
    probe = remote.virsh("list", "--name", uri=remote_uri, timeout=60)
    assert set(probe.stdout.split()) == {"rm-a", "rm-b", "rm-stuck"}, probe
    assert sshd.connections() == before + 1, sshd.log()[-2000:]

    before = sshd.connections()
    stop = counted_run(cli, sshd, "stop", "stop (suspend, 3 guests)",
                       "stop, remote + local URI (suspend)")
    assert stop.code == 0, stop
    assert f"Running guests on {remote_uri} URI: rm-a, rm-b, rm-stuck" in stop.lines, stop
    assert f"Running guests on {local_uri} URI: lc-a" in stop.lines, stop
    for name in ("rm-a", "rm-b", "rm-stuck", "lc-a"):
        assert f"Suspending {name}: done" in stop.lines, stop
    assert states(*far, near) == dict.fromkeys(
        ("rm-a", "rm-b", "rm-stuck", "lc-a"), "shut off (saved)"), stop
    assert managed_saved(remote) == {"rm-a", "rm-b", "rm-stuck"}
    assert managed_saved(libvirtd) == {"lc-a"}
    entries = list_entries(cli)
    assert sorted(entries.get(remote_uri, [])) == sorted(remote_uuids), stop
    assert entries.get(local_uri) == [uuid_of(near)], stop
    assert sshd.connections() > before, "no virsh call went through the sshd"

    start = counted_run(cli, sshd, "start", "start (3 guests)", "start, remote + local URI")
    assert start.code == 0, start
    for name in ("rm-a", "rm-b", "rm-stuck", "lc-a"):
        assert f"Resuming guest {name}: done" in start.lines, start
    assert states(*far, near) == dict.fromkeys(
        ("rm-a", "rm-b", "rm-stuck", "lc-a"), "running (restored)"), start
    assert managed_saved(remote) == set() and managed_saved(libvirtd) == set()
    assert not cli.list_file.exists() and not cli.pending_file.exists(), start

    # parallel shutdown of both URIs; the stuck remote guest is powered off over ssh
    power = VirtGuestsCli(tmp_path / "shutdown", libvirtd)
    power.config(uris=[remote_uri, local_uri], ON_SHUTDOWN="shutdown poweroff",
                 PARALLEL_SHUTDOWN=4, SHUTDOWN_TIMEOUT=5)
    run = counted_run(power, sshd, "stop", "parallel shutdown (3 guests)",
                      "parallel shutdown, remote + local URI")
    for name in ("rm-a", "rm-b", "lc-a"):
        assert f"Starting shutdown on guest: {name}" in run.lines, run
        assert f"Shutdown of guest {name} complete." in run.lines, run
    assert "Powering off guest rm-stuck: done" in run.lines, run
    assert states(*far, near) == {
        "rm-a": "shut off (shutdown)", "rm-b": "shut off (shutdown)",
        "rm-stuck": "shut off (destroyed)", "lc-a": "shut off (shutdown)"}, run
    assert "power button pressed, ignoring" in stuck.console()
    assert outcomes(power) == {"rm-a": "shut off", "rm-b": "shut off",
                               "rm-stuck": "powered off", "lc-a": "shut off"}, run
    entries = list_entries(power)
    assert sorted(entries.get(remote_uri, [])) == sorted(remote_uuids), run
    assert entries.get(local_uri) == [uuid_of(near)], run
    # the timeout expiring in parallel mode is a failure, like the reference
    assert "Timeout expired while shutting down domains" in run.lines, run
    assert run.code == 1, run



# ---------------------------------------------------------------------------
# the remote host goes away mid-run
# ---------------------------------------------------------------------------
def test_remote_sshd_stopped_mid_run_guests_recorded_local_uri_handled(
    libvirtd: PrivateLibvirtd, remote: PrivateLibvirtd, sshd: PrivateSshd,
    define_guest: DefineGuest, guest_image: GuestImage, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    """The sshd dies, with every connection it carries, right after virtguests' first
    save on the remote URI answered (the wrapper holds that answer while the test kills
    it).  Serial suspend: the other remote guest cannot be saved; nothing of the remote
    URI is lost (both recorded, the unsaved one named), the local URI is handled in the
    same run, and start after the sshd is back brings everything back."""
    remote_uri, local_uri = sshd.qemu_uri(remote), libvirtd.qemu_uri
    far = boot_remote(remote, guest_image, tmp_path, ("gone-a", {}), ("gone-b", {}))
    near = define_guest("gone-local")
    uuids = {uuid_of(g): g for g in far}
    calls = CallLog(tmp_path / "calls", pause=(remote_uri, "managedsave"))
    cli.config(uris=[remote_uri, local_uri], ON_SHUTDOWN="suspend", QUERY_TIMEOUT=10,
               SAVE_TIMEOUT=60)

    began = time.monotonic()
    proc = cli.spawn("--virsh", str(calls.path), "stop")
    try:
        wait_until("virtguests' first save on the remote URI",
                   lambda: calls.paused() or proc.poll() is not None, timeout=RUN_TIMEOUT)
        assert calls.paused(), f"no save on the remote URI\n{finish(proc, began)}"
        sshd.stop()
        calls.release()
    except BaseException:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    run = finish(proc, began)
    record_timing("stop, remote sshd killed mid-run", run.seconds)
    context = f"{run}\nvirsh calls:\n{calls.describe(began)}"
    saves = [c for c in calls.calls(remote_uri) if verb(c) == "managedsave"]
    saved = uuids[saves[0]["argv"][-1]]
    unsaved = next(g for g in far if g is not saved)

    assert run.code == 1, context
    assert "Traceback" not in run.err, context
    assert saved.state() == "shut off (saved)", saved.describe() + "\n" + context
    assert unsaved.state().startswith("running"), unsaved.describe() + "\n" + context
    errors = [ln for ln in run.err.splitlines() if "error" in ln.lower()]
    assert any(unsaved.name in ln for ln in errors), f"{unsaved.name} not named\n{context}"
    # nothing lost: both remote guests recorded, the local one saved and recorded
    entries = list_entries(cli)
    assert sorted(entries.get(remote_uri, [])) == sorted(uuids), context
    assert entries.get(local_uri) == [uuid_of(near)], context
    assert f"Suspending {near.name}: done" in run.lines, context
    assert near.state() == "shut off (saved)", near.describe()

    # the remote host is back: start resumes the saved guest and keeps the running one
    sshd.start()
    start = cli.run("start", timeout=RUN_TIMEOUT)
    assert start.code == 0 and "Traceback" not in start.err, start
    assert f"Resuming guest {saved.name}: done" in start.lines, start
    assert saved.state() == "running (restored)", f"{start}\n{saved.describe()}"
    assert unsaved.state().startswith("running"), f"{start}\n{unsaved.describe()}"
    assert near.state() == "running (restored)", f"{start}\n{near.describe()}"
    assert not cli.list_file.exists() and not cli.pending_file.exists(), start


def test_remote_libvirtd_frozen_behind_live_sshd_given_up_local_uri_handled(
    libvirtd: PrivateLibvirtd, remote: PrivateLibvirtd, sshd: PrivateSshd,
    define_guest: DefineGuest, guest_image: GuestImage, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    """The remote libvirtd stops answering (SIGSTOP) right after virtguests listed it;
    the sshd and the netcat behind it still accept, so every call there hangs instead of
    failing.  As on a local socket (test_hostile's wedged URI): one save times out (its
    session still connecting), one liveness check times out, the URI is given up and
    its guests recorded and named; the local URI's guest is saved in the same run,
    which ends within its timeouts."""
    remote_uri, local_uri = sshd.qemu_uri(remote), libvirtd.qemu_uri
    far = boot_remote(remote, guest_image, tmp_path, ("frz-a", {}), ("frz-b", {}))
    near = define_guest("frz-local")
    daemon_pid = remote.pid
    assert daemon_pid is not None
    calls = CallLog(tmp_path / "calls", wedge=(remote_uri, daemon_pid))
    query_timeout, save_timeout = 2, 4
    cli.config(uris=[remote_uri, local_uri], QUERY_TIMEOUT=query_timeout,
               SAVE_TIMEOUT=save_timeout, ON_SHUTDOWN="suspend")

    run, _wedged, context = stop_on_a_frozen_daemon(cli, calls, remote, remote_uri,
                                                    RUN_TIMEOUT)
    record_timing("stop, remote libvirtd frozen behind sshd", run.seconds)
    assert sshd.pid is not None, "the sshd died\n" + sshd.log()[-2000:]
    # within its timeouts: the two calls' timeouts plus the local save and listings
    assert run.seconds < save_timeout + query_timeout + 60, context
    assert_given_up_then_brought_back(cli, run, context, remote, remote_uri, far,
                                      local_uri, near)


def test_remote_sshd_killed_during_a_remote_save_nothing_lost(
    libvirtd: PrivateLibvirtd, remote: PrivateLibvirtd, sshd: PrivateSshd,
    define_guest: DefineGuest, guest_image: GuestImage, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    """The sshd dies while virtguests' first save on the remote URI is being written
    (held: QEMU's migration thread stopped from the moment libvirt pauses the guest for
    it until the run is over or 10 s have passed), so virtguests loses the connection
    that asked for the save.  Triggered from libvirt's state, not from virtguests'
    calls.  libvirt finishes the save without its client; virtguests cannot know it
    did: every remote guest stays recorded and named, the local URI is saved, and the
    start after the sshd is back leaves every guest running."""
    remote_uri, local_uri = sshd.qemu_uri(remote), libvirtd.qemu_uri
    far = boot_remote(remote, guest_image, tmp_path, ("mid-a", {}), ("mid-b", {}))
    near = define_guest("mid-local")
    uuids = sorted(uuid_of(g) for g in far)
    cli.config(uris=[remote_uri, local_uri], ON_SHUTDOWN="suspend", QUERY_TIMEOUT=10,
               SAVE_TIMEOUT=60)

    began = time.monotonic()
    proc = cli.spawn("stop")
    with a_save_held(remote, far, proc, began) as saving:
        during = saving.state()
        sshd.stop()
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    run = finish(proc, began)
    record_timing("stop, remote sshd killed during a save", run.seconds)
    other = next(g for g in far if g is not saving)
    context = f"{run}\nheld: the save of {saving.name}"
    assert during == "paused (saving)", context  # the setup: the save was in flight

    assert run.code == 1, context
    assert "Traceback" not in run.err, context
    errors = [ln for ln in run.err.splitlines() if "error" in ln.lower()]
    for guest in far:
        assert any(guest.name in ln for ln in errors), f"{guest.name} not named\n{context}"
    entries = list_entries(cli)
    assert sorted(entries.get(remote_uri, [])) == uuids, context
    assert entries.get(local_uri) == [uuid_of(near)], context
    assert f"Suspending {near.name}: done" in run.lines, context
    assert near.state() == "shut off (saved)", near.describe()
    # libvirt finished the save its client no longer waited for; the other guest runs
    saving.wait_state("shut off", timeout=120)
    assert saving.state() == "shut off (saved)", saving.describe()
    assert other.state().startswith("running"), other.describe()

    sshd.start()
    start = cli.run("start", timeout=RUN_TIMEOUT)
    assert start.code == 0 and "Traceback" not in start.err, start
    assert f"Resuming guest {saving.name}: done" in start.lines, start
    for guest in (*far, near):
        assert guest.state().startswith("running"), f"{start}\n{guest.describe()}"
    assert not cli.list_file.exists() and not cli.pending_file.exists(), start
