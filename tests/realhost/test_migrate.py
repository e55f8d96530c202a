"""Issue 14 on real libvirt: stop live-migrates guests to a peer, start brings them home.

Two private libvirtds on this machine are two hosts to libvirt (``libvirtd`` is home,
``peer_libvirtd`` the peer, each with its own host UUID and migration ports). virtguests
runs as a subprocess with the real virsh (``cli.VirtGuestsCli``), ``MIGRATE_URIS`` the
peer's URI. A guest with a disk under the home daemon's own ``/var/lib/libvirt`` (a
tmpfs only its mount namespace has) cannot leave: libvirt refuses with ``Unsafe
migration``. "Never shut off" is seen from libvirt's own lifecycle events: ``virsh event
--all --loop`` on both daemons for the whole run. A migration is caught in flight by
holding QEMU's ``live_migration`` thread (ptrace, as ``StalledMigration`` does), so a
signal or a dead peer lands mid-migration every time. Timing targets are not asserted
here: ``make bench`` measures them (tools/migrate_bench.py).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tools.realhost.guestimage import GuestImage, domain_xml
from tools.realhost.libvirtd import Guest, PrivateLibvirtd, ThreadStop, kill_and_wait, thread_named

from .calllog import CallLog, verb
from .cli import UNREACHABLE_URI, VirtGuestsCli
from .conftest import DefineGuest, record_timing
from .test_e2e import assert_acpi_alive, list_entries, managed_saved, outcomes, uuid_of
from .test_hostile import finish, wait_until

LOCAL_DISK = "/var/lib/libvirt/images/{name}.img"
"""Inside the home daemon's mount namespace only (its own tmpfs): no peer can open it."""
UNSAFE = "error: Unsafe migration: Migration without shared storage is unsafe"
"""libvirt 9.0's refusal to migrate that guest (fixtures/qemu-migrate-local-disk.yaml)."""
WATCH_SECONDS = 600.0
"""How long an event watch may run before it is killed (a test fails if it had to be)."""


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
@pytest.fixture
def cli(libvirtd: PrivateLibvirtd, tmp_path: Path) -> VirtGuestsCli:
    return VirtGuestsCli(tmp_path / "vg", libvirtd)


def configure(cli: VirtGuestsCli, peer: PrivateLibvirtd, *others: str,
              **values: object) -> None:
    """``ON_SHUTDOWN="migrate suspend"`` to *peer* (after the URIs *others*) unless
    *values* say otherwise."""
    values = {"ON_SHUTDOWN": "migrate suspend", **values,
              "MIGRATE_URIS": " ".join([*others, peer.qemu_uri])}
    cli.set_config("".join(f'{key}="{value}"\n' for key, value in
                           {"URIS": cli.daemon.qemu_uri, **values}.items()))


DefinePinned = Callable[[str], Guest]


@pytest.fixture
def define_pinned(libvirtd: PrivateLibvirtd, guest_image: GuestImage,
                  tmp_path: Path) -> Iterator[DefinePinned]:
    """Factory: a persistent guest (not started) with a disk only home has, so libvirt
    refuses to migrate it (``Unsafe migration``); removed with its disk after the test."""
    made: list[tuple[Guest, Path]] = []

    def make(name: str) -> Guest:
        disk = LOCAL_DISK.format(name=name)
        libvirtd.ns_path(disk).write_bytes(b"\0" * (1 << 20))
        console, xml = tmp_path / f"{name}.console.log", tmp_path / f"{name}.xml"
        xml.write_text(domain_xml(name, image=guest_image, console_log=console,
                                  disks=(disk,)))
        guest = Guest(libvirtd, name, console, persistent=True)
        made.append((guest, libvirtd.ns_path(disk)))
        libvirtd.virsh("define", str(xml))
        return guest

    yield make
    for guest, disk in made:
        guest.remove()
        disk.unlink(missing_ok=True)


def boot_guests(define_guest: DefineGuest, *names: str,
                pinned: Optional[Guest] = None) -> list[Guest]:
    """Start the guests *names* (and *pinned*, already defined) all at once and wait
    until each is ready."""
    guests = [define_guest(name, start=False) for name in names]
    if pinned is not None:
        guests.append(pinned)
    for guest in guests:
        guest.virsh("start", timeout=120)
    for guest in guests:
        guest.wait_console("vg: ready", timeout=120)
    return guests


def on(daemon: PrivateLibvirtd, guest: Guest) -> Guest:
    """The same guest (same console) as *daemon* sees it."""
    return Guest(daemon, guest.name, guest.console_log, persistent=True)


def defined(daemon: PrivateLibvirtd) -> set[str]:
    res = daemon.virsh("list", "--all", "--name")
    return {n for n in res.stdout.splitlines() if n.strip()}


def migrated_record(cli: VirtGuestsCli) -> Optional[dict[str, Any]]:
    path = cli.state_dir / "virtguests-migrated"
    if not path.exists():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def record_of(home: PrivateLibvirtd, peer: PrivateLibvirtd,
              *guests: tuple[str, str]) -> dict[str, Any]:
    """The migrated record naming *guests* ((name, uuid)) gone from *home* to *peer*."""
    return {"format_version": 1, "guests": [
        {"uuid": uuid, "name": name, "home": home.qemu_uri, "peer": peer.qemu_uri}
        for name, uuid in guests]}


def without_progress(lines: list[str]) -> list[str]:
    """*lines* without the progress lines a migration prints every 5 s (``NAME to PEER:
    42%``, or ``...`` again while there are no figures): how many depends on the load."""
    seen: set[str] = set()
    kept = []
    for line in lines:
        progress = re.fullmatch(r"(Migrating|Bringing) .*: (\d+%|\.\.\.)", line)
        if progress and (progress.group(2) != "..." or line in seen):
            continue
        seen.add(line)
        kept.append(line)
    return kept


class EventWatch:
    """``virsh -c URI event --all --loop`` running for a while: every lifecycle line.

    Started before the run it watches and proven connected (a probe domain defined and
    undefined must show up); killed at ``stop()`` or after WATCH_SECONDS at the latest.
    """

    def __init__(self, daemon: PrivateLibvirtd, tmp_path: Path, label: str) -> None:
        self.daemon = daemon
        self.lines: list[str] = []
        self.expired = False
        self.proc = subprocess.Popen(
            ["virsh", "-c", daemon.qemu_uri, "event", "--all", "--loop"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._timer = threading.Timer(WATCH_SECONDS, self._expire)
        self._timer.start()
        probe = f"vg-probe-{label}"
        xml = tmp_path / f"{probe}.xml"
        xml.write_text(domain_xml(probe, console_log=tmp_path / f"{probe}.log"))
        # the watch is connected once a definition made now shows up in it
        deadline = time.monotonic() + 60
        while not self.seen(probe, "Defined"):
            assert time.monotonic() < deadline, f"virsh event on {label}: {self.lines}"
            daemon.virsh("define", str(xml))
            daemon.virsh("undefine", probe)
            time.sleep(0.2)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _expire(self) -> None:
        self.expired = True
        self.proc.kill()

    def seen(self, name: str, word: str) -> bool:
        return any(f"for domain '{name}': {word}" in line for line in list(self.lines))

    def lifecycle(self, name: str) -> list[str]:
        """The lifecycle events of domain *name*, e.g. ``Stopped Migrated``."""
        head = f"event 'lifecycle' for domain '{name}': "
        return [line[len(head):] for line in list(self.lines) if line.startswith(head)]

    def stop(self) -> None:
        self._timer.cancel()
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(10)
        assert not self.expired, f"event watch ran out of time ({WATCH_SECONDS:.0f}s)"


def assert_never_shut_off(name: str, source: EventWatch, dest: EventWatch) -> None:
    """A guest that moved live from *source* to *dest*: where it left it only stopped
    because it migrated (that QEMU ends after the switch-over; ``Suspended Migrated``
    before it is the switch-over's pause), where it arrived it never stopped at all."""
    left = [e for e in source.lifecycle(name) if e.startswith(("Stopped", "Shutdown",
                                                               "Crashed"))]
    assert left == ["Stopped Migrated"], (name, source.lifecycle(name))
    assert not [e for e in dest.lifecycle(name) if e.startswith(("Stopped", "Shutdown",
                                                                 "Crashed"))], (
        name, dest.lifecycle(name))
    assert "Started Migrated" in dest.lifecycle(name), (name, dest.lifecycle(name))


class HeldMigration:
    """The first migration virtguests begins of *guest*, held in flight (its QEMU's
    ``live_migration`` thread stopped once memory flows, as ``StalledMigration`` does)."""

    def __init__(self, guest: Guest, proc: subprocess.Popen[str], timeout: float = 120) -> None:
        self.guest = guest
        qemu = guest.daemon.qemu_pid(guest.name)
        deadline = time.monotonic() + timeout
        self._held: Optional[ThreadStop] = None
        while self._held is None:
            assert proc.poll() is None, "virtguests ended before its migration was held"
            assert time.monotonic() < deadline, f"no migration of {guest.name} to hold"
            tid = thread_named(qemu, "live_migration")
            if tid is None:
                time.sleep(0.005)
                continue
            try:
                held = ThreadStop(tid)
            except OSError:  # the thread ended meanwhile
                continue
            try:
                res: Optional[subprocess.CompletedProcess[str]] = guest.virsh(
                    "domjobinfo", timeout=5, check=False)
            except subprocess.TimeoutExpired:  # held inside QEMU's big lock: try again
                res = None
            except BaseException:
                held.cont()
                raise
            if res is not None and "Data processed:" in res.stdout:
                self._held = held
                self.jobinfo = res.stdout
            else:
                held.cont()
                time.sleep(0.02)

    def release(self) -> None:
        if self._held is not None:
            self._held.cont()
            self._held = None


# ---------------------------------------------------------------------------
# 1. stop migrates two guests, saves the one that cannot leave; start brings them home
# ---------------------------------------------------------------------------
def test_stop_migrates_live_and_saves_the_pinned_guest_then_start_brings_them_home(
    libvirtd: PrivateLibvirtd, peer_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    define_pinned: DefinePinned, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    home, peer = libvirtd.qemu_uri, peer_libvirtd.qemu_uri
    a, b, pinned = boot_guests(define_guest, "mig-a", "mig-b", pinned=define_pinned("mig-pin"))
    uuids = {g.name: uuid_of(g) for g in (a, b, pinned)}
    configure(cli, peer_libvirtd)

    watch_home = EventWatch(libvirtd, tmp_path, "home")
    watch_peer = EventWatch(peer_libvirtd, tmp_path, "peer")
    try:
        stop = cli.run("stop", timeout=300)
    finally:
        watch_home.stop()
        watch_peer.stop()
    record_timing("stop: 2 migrated, 1 saved", stop.seconds)
    assert stop.code == 1, stop  # a failed step (the refused migration), as a failed save
    assert without_progress(stop.lines) == [
        f"Running guests on {home} URI: mig-a, mig-b, mig-pin",
        f"Suspending guests on {home} URI...",
        f"Migrating mig-a to {peer}: ...", f"Migrated mig-a to {peer}",
        f"Migrating mig-b to {peer}: ...", f"Migrated mig-b to {peer}",
        f"Migrating mig-pin to {peer}: ...",
        "Suspending mig-pin: ...", "Suspending mig-pin: done",
    ], stop
    assert stop.err.splitlines() == [
        f"virtguests: error: Migration of mig-pin to {peer} failed: {UNSAFE}; trying suspend",
    ], stop
    for guest in (a, b):
        away = on(peer_libvirtd, guest)
        assert away.state() == "running (migrated)", f"{stop}\n{away.describe()}"
        assert_never_shut_off(guest.name, watch_home, watch_peer)
    assert pinned.state() == "shut off (saved)", f"{stop}\n{pinned.describe()}"
    assert defined(libvirtd) == {"mig-pin"}
    assert managed_saved(libvirtd) == {"mig-pin"}
    assert list_entries(cli) == {home: [uuids["mig-pin"]]}
    assert migrated_record(cli) == record_of(libvirtd, peer_libvirtd,
                                             ("mig-a", uuids["mig-a"]),
                                             ("mig-b", uuids["mig-b"]))
    assert outcomes(cli) == {"mig-a": "migrated", "mig-b": "migrated", "mig-pin": "saved"}

    status = cli.run("status")
    assert status.code == 3, status  # stopped, with saved guests (mig-pin)
    assert status.lines == [
        "stopped, with saved guests",
        f"Away from home: mig-a ({uuids['mig-a']}) runs on {peer}, home {home}",
        f"Away from home: mig-b ({uuids['mig-b']}) runs on {peer}, home {home}",
    ], status

    # home again live: now the peer is where they leave from
    watch_home = EventWatch(libvirtd, tmp_path, "home-start")
    watch_peer = EventWatch(peer_libvirtd, tmp_path, "peer-start")
    try:
        start = cli.run("start", timeout=300)
    finally:
        watch_home.stop()
        watch_peer.stop()
    record_timing("start: 2 brought home, 1 resumed", start.seconds)
    assert start.code == 0, start
    assert without_progress(start.lines) == [
        f"Bringing mig-a home from {peer}: ...", f"Brought mig-a home from {peer}",
        f"Bringing mig-b home from {peer}: ...", f"Brought mig-b home from {peer}",
        f"Resuming guests on {home} URI...", "Resuming guest mig-pin: done",
    ], start
    assert start.err == "", start
    for guest in (a, b):
        assert_never_shut_off(guest.name, watch_peer, watch_home)
    for guest in (a, b):
        assert guest.state() == "running (migrated)", f"{start}\n{guest.describe()}"
    assert pinned.state() == "running (restored)", f"{start}\n{pinned.describe()}"
    assert defined(peer_libvirtd) == set()
    assert migrated_record(cli) is None
    assert not cli.list_file.exists() and cli.marker.exists()
    for guest in (a, b, pinned):
        assert_acpi_alive(guest)


# ---------------------------------------------------------------------------
# 2. plan stop shows the targets; drain evacuates what can leave
# ---------------------------------------------------------------------------
def test_plan_stop_shows_targets_and_drain_evacuates_what_can_leave(
    libvirtd: PrivateLibvirtd, peer_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    define_pinned: DefinePinned, cli: VirtGuestsCli, tmp_path: Path
) -> None:
    home, peer = libvirtd.qemu_uri, peer_libvirtd.qemu_uri
    a, b, pinned = boot_guests(define_guest, "dr-a", "dr-b", pinned=define_pinned("dr-pin"))
    uuids = {g.name: uuid_of(g) for g in (a, b, pinned)}
    configure(cli, peer_libvirtd)

    plan = cli.run("plan", "stop")
    assert plan.code == 0 and plan.err == "", plan
    assert plan.lines[0] == f"{home}:", plan
    assert plan.lines[1].split() == ["GUEST", "ORDER", "ACTIONS", "TIMEOUT", "TARGET",
                                     "COMMAND"], plan
    rows = {line.split()[0]: line for line in plan.lines[2:]}
    assert sorted(rows) == ["dr-a", "dr-b", "dr-pin"], plan
    for name, row in rows.items():
        # libvirt's refusal of dr-pin's disk is only known when it is tried
        head, command = row.split(maxsplit=5)[:5], shlex.split(row.split(maxsplit=6)[6])
        assert head == [name, "0", "migrate", "->", "suspend"], plan
        assert row.split()[5] == peer, plan
        assert command[1:] == ["-c", home, "migrate", "--live", "--persistent",
                               "--undefinesource", uuids[name], peer], plan

    plan_json = cli.run("--json", "plan", "stop")
    assert plan_json.code == 0, plan_json
    [uri_plan] = json.loads(plan_json.out)["uris"]
    assert uri_plan["uri"] == home and uri_plan["error"] is None, plan_json
    assert {g["name"]: (g["actions"], g["target"], g["target_note"])
            for g in uri_plan["guests"]} == {
        name: (["migrate", "suspend"], peer, None) for name in uuids}, plan_json

    # the same setup with more memory kept free on the peer than this machine has:
    # no target, and plan says why in the man page's words
    reserve = 1 << 30  # MiB
    configure(cli, peer_libvirtd, MIGRATE_RESERVE=reserve)
    short = cli.run("plan", "stop")
    assert short.code == 0, short
    why = rf"no target: {re.escape(peer)}: \d+ MiB free, needs {96 + reserve} MiB"
    notes = sorted(line for line in short.lines if ": no target: " in line)
    assert [note.split(":")[0] for note in notes] == [f"  {name}" for name in sorted(uuids)]
    assert all(re.fullmatch(rf"  [a-z-]+: {why}", note) for note in notes), short
    short_json = cli.run("--json", "plan", "stop")
    assert short_json.code == 0, short_json
    for guest in json.loads(short_json.out)["uris"][0]["guests"]:
        assert (guest["actions"], guest["target"]) == (["suspend"], None), short_json
        assert re.fullmatch(why, guest["target_note"]), short_json
    # a peer that cannot be reached is passed over for the next, or is the note's reason
    configure(cli, peer_libvirtd, UNREACHABLE_URI)
    both = cli.run("--json", "plan", "stop")
    assert both.code == 0, both
    assert {g["target"] for g in json.loads(both.out)["uris"][0]["guests"]} == {peer}, both
    cli.set_config(cli.config_file.read_text().replace(f"{UNREACHABLE_URI} {peer}",
                                                       UNREACHABLE_URI))
    gone = cli.run("plan", "stop")
    assert gone.code == 0, gone
    notes = sorted(line for line in gone.lines if ": no target: " in line)
    unreachable = (f"no target: {UNREACHABLE_URI}: unreachable (error: failed to connect to "
                   "the hypervisor; error: Failed to connect socket to '/nonexistent/sock': "
                   "No such file or directory)")
    assert notes == [f"  {name}: {unreachable}" for name in sorted(uuids)], gone
    configure(cli, peer_libvirtd)

    watch_home = EventWatch(libvirtd, tmp_path, "home")
    watch_peer = EventWatch(peer_libvirtd, tmp_path, "peer")
    try:
        drain = cli.run("drain", timeout=300)
    finally:
        watch_home.stop()
        watch_peer.stop()
    record_timing("drain: 2 migrated, 1 stays", drain.seconds)
    assert drain.code == 1, drain
    assert without_progress(drain.lines) == [
        f"Running guests on {home} URI: dr-a, dr-b, dr-pin",
        f"Migrating guests on {home} URI...",
        f"Migrating dr-a to {peer}: ...", f"Migrated dr-a to {peer}",
        f"Migrating dr-b to {peer}: ...", f"Migrated dr-b to {peer}",
        f"Migrating dr-pin to {peer}: ...",
    ], drain
    # no next step to try: the failure is the last word on dr-pin, then drain names it
    assert drain.err.splitlines() == [
        f"virtguests: error: Migration of dr-pin to {peer} failed: {UNSAFE}",
        "virtguests: error: drain: not evacuated: dr-pin",
    ], drain
    for guest in (a, b):
        assert on(peer_libvirtd, guest).state() == "running (migrated)", drain
        assert_never_shut_off(guest.name, watch_home, watch_peer)
    assert pinned.state() == "running (booted)", f"{drain}\n{pinned.describe()}"
    assert defined(libvirtd) == {"dr-pin"}
    assert migrated_record(cli) == record_of(libvirtd, peer_libvirtd,
                                             ("dr-a", uuids["dr-a"]), ("dr-b", uuids["dr-b"]))
    assert not cli.list_file.exists() and not cli.marker.exists()
    assert outcomes(cli) == {"dr-a": "migrated", "dr-b": "migrated", "dr-pin": "failed"}
    for guest in (a, b):  # they answer ACPI where they now run
        away = on(peer_libvirtd, guest)
        away.virsh("shutdown")
        away.wait_state("shut off", timeout=60)
        assert away.state() == "shut off (shutdown)", away.describe()
        assert guest.console().count("vg: ready") == 1, away.describe()
        assert "vg: poweroff" in guest.console(), away.describe()


# ---------------------------------------------------------------------------
# 3. the peer's libvirtd dies mid-migration
# ---------------------------------------------------------------------------
def kill_peer_mid_migration(guest: Guest, peer: PrivateLibvirtd,
                            proc: subprocess.Popen[str]) -> None:
    """Once virtguests' migration of *guest* is in flight, SIGKILL the peer's libvirtd
    and the QEMU it started for the arrival; then let the migration go on."""
    held = HeldMigration(guest, proc)
    try:
        assert on(peer, guest).state() == "paused (migrating)"
        incoming = peer.qemu_pid(guest.name)
        daemon = peer.pid
        assert daemon is not None
        for pid in (daemon, incoming):
            assert kill_and_wait(pid, signal.SIGKILL, 30)
    finally:
        held.release()


def test_a_peer_killed_mid_migration_leaves_the_guest_home_and_saved(
    libvirtd: PrivateLibvirtd, peer_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    cli: VirtGuestsCli
) -> None:
    home, peer = libvirtd.qemu_uri, peer_libvirtd.qemu_uri
    guest = define_guest("lost-peer")
    uuid = uuid_of(guest)
    configure(cli, peer_libvirtd)
    began = time.monotonic()
    proc = cli.spawn("stop")
    kill_peer_mid_migration(guest, peer_libvirtd, proc)
    run = finish(proc, began)
    record_timing("stop: peer killed mid-migration", run.seconds)
    assert run.code == 1, run  # a failed step, as a failed save
    assert without_progress(run.lines) == [
        f"Running guests on {home} URI: lost-peer", f"Suspending guests on {home} URI...",
        f"Migrating lost-peer to {peer}: ...",
        "Suspending lost-peer: ...", "Suspending lost-peer: done"], run
    # libvirt 9.0: "Unable to write to socket: Bad file descriptor"
    [failed] = run.err.splitlines()
    assert failed.startswith(f"virtguests: error: Migration of lost-peer to {peer} failed: "
                             "error: operation failed: job 'migration out' failed: "), run
    assert failed.endswith("; trying suspend"), run
    assert guest.state() == "shut off (saved)", f"{run}\n{guest.describe()}"
    assert outcomes(cli) == {"lost-peer": "saved"}
    assert list_entries(cli) == {home: [uuid]}
    assert migrated_record(cli) is None
    start = cli.run("start")
    assert start.code == 0, start
    assert guest.state() == "running (restored)", f"{start}\n{guest.describe()}"
    assert guest.console().count("vg: ready") == 1


def test_a_peer_killed_mid_drain_leaves_the_guest_running_at_home(
    libvirtd: PrivateLibvirtd, peer_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    cli: VirtGuestsCli
) -> None:
    """drain without --fallback: nothing else is tried; the guest runs on at home."""
    home, peer = libvirtd.qemu_uri, peer_libvirtd.qemu_uri
    guest = define_guest("lost-drain")
    configure(cli, peer_libvirtd)
    began = time.monotonic()
    proc = cli.spawn("drain")
    kill_peer_mid_migration(guest, peer_libvirtd, proc)
    run = finish(proc, began)
    assert run.code == 1, run
    assert without_progress(run.lines) == [
        f"Running guests on {home} URI: lost-drain", f"Migrating guests on {home} URI...",
        f"Migrating lost-drain to {peer}: ..."], run
    failed, named = run.err.splitlines()
    assert failed.startswith(f"virtguests: error: Migration of lost-drain to {peer} failed: "
                             "error: operation failed: job 'migration out' failed: "), run
    assert named == "virtguests: error: drain: not evacuated: lost-drain", run
    assert guest.state() == "running (booted)", f"{run}\n{guest.describe()}"
    assert guest.console().count("vg: ready") == 1
    assert outcomes(cli) == {"lost-drain": "failed"}
    assert migrated_record(cli) is None and not cli.list_file.exists()


# ---------------------------------------------------------------------------
# 3b. a migration that hangs: aborted at MIGRATE_TIMEOUT, then the next step
# ---------------------------------------------------------------------------
def test_a_hung_migration_is_aborted_at_migrate_timeout_and_the_guest_saved(
    libvirtd: PrivateLibvirtd, peer_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    cli: VirtGuestsCli, tmp_path: Path
) -> None:
    """The migration is held (no progress) until virtguests' domjobabort was answered."""
    home, peer = libvirtd.qemu_uri, peer_libvirtd.qemu_uri
    guest = define_guest("hung-mig")
    uuid = uuid_of(guest)
    configure(cli, peer_libvirtd, MIGRATE_TIMEOUT=3)
    calls = CallLog(tmp_path / "calls")
    began = time.monotonic()
    proc = cli.spawn("--virsh", str(calls.path), "stop")
    held = HeldMigration(guest, proc)
    try:
        wait_until("virtguests aborts the migration", lambda: any(
            verb(c) == "domjobabort" and c["exit"] == 0 for c in calls.calls(home)), 60)
        assert guest.state() == "running (booted)", guest.describe()
    finally:
        held.release()
    run = finish(proc, began)
    record_timing("stop: migration aborted at MIGRATE_TIMEOUT", run.seconds)
    assert run.code == 1, run  # a failed step, as a failed save
    assert without_progress(run.lines) == [
        f"Running guests on {home} URI: hung-mig", f"Suspending guests on {home} URI...",
        f"Migrating hung-mig to {peer}: ...",
        "Suspending hung-mig: ...", "Suspending hung-mig: done"], run
    assert run.err.splitlines() == [
        f"virtguests: error: Migration of hung-mig to {peer} failed: not done after 3s "
        "(MIGRATE_TIMEOUT); aborted: error: operation aborted: job 'migration out' canceled "
        "by client; trying suspend"], run
    assert guest.state() == "shut off (saved)", f"{run}\n{guest.describe()}"
    assert outcomes(cli) == {"hung-mig": "saved"}
    assert list_entries(cli) == {home: [uuid]}
    assert migrated_record(cli) is None
    assert not defined(peer_libvirtd)


# ---------------------------------------------------------------------------
# 4. SIGTERM to virtguests during a migration
# ---------------------------------------------------------------------------
def test_sigterm_mid_migration_aborts_it_and_the_guest_is_saved_at_home(
    libvirtd: PrivateLibvirtd, peer_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    cli: VirtGuestsCli, tmp_path: Path
) -> None:
    home, peer = libvirtd.qemu_uri, peer_libvirtd.qemu_uri
    moving, queued = (define_guest(name, start=False) for name in ("term-mig", "term-next"))
    for guest in (moving, queued):
        guest.virsh("start", timeout=120)
    for guest in (moving, queued):
        guest.wait_console("vg: ready", timeout=120)
    uuids = {g.name: uuid_of(g) for g in (moving, queued)}
    configure(cli, peer_libvirtd)
    calls = CallLog(tmp_path / "calls")
    began = time.monotonic()
    proc = cli.spawn("--virsh", str(calls.path), "stop")
    held = HeldMigration(moving, proc)
    try:
        proc.send_signal(signal.SIGTERM)
        wait_until("virtguests aborts the migration", lambda: any(
            verb(c) == "domjobabort" and c["exit"] == 0 for c in calls.calls(home)), 60)
        assert moving.state() == "running (booted)", moving.describe()
    finally:
        held.release()
    run = finish(proc, began)
    record_timing("stop: SIGTERM mid-migration", run.seconds)
    assert run.code == 1, run  # interrupted by a signal
    assert without_progress(run.lines) == [
        f"Running guests on {home} URI: term-mig, term-next",
        f"Suspending guests on {home} URI...", f"Migrating term-mig to {peer}: ...",
        "Suspending term-mig: ...", "Suspending term-mig: done"], run
    assert run.err.splitlines() == [
        "virtguests: error: got SIGTERM: finishing what is in flight, starting nothing new",
        f"virtguests: error: Migration of term-mig to {peer} failed: stop requested during "
        "the migration; aborted: error: operation aborted: job 'migration out' canceled by "
        "client; trying suspend",
        "virtguests: error: stop interrupted by a signal: 1 interrupted, 1 saved",
    ], run
    # the guest in flight was handled by the rest of its chain; the next never began
    assert moving.state() == "shut off (saved)", f"{run}\n{moving.describe()}"
    assert queued.state() == "running (booted)", f"{run}\n{queued.describe()}"
    assert outcomes(cli) == {"term-mig": "saved", "term-next": "interrupted"}
    assert defined(peer_libvirtd) == set()
    assert migrated_record(cli) is None
    assert list_entries(cli) == {home: [uuids["term-mig"], uuids["term-next"]]}

    start = cli.run("start")
    assert start.code == 0, start
    assert start.lines == [f"Resuming guests on {home} URI...", "Resuming guest term-mig: done",
                           "Resuming guest term-next: already active"], start
    assert moving.state() == "running (restored)", f"{start}\n{moving.describe()}"
    assert queued.state() == "running (booted)", f"{start}\n{queued.describe()}"
    assert moving.console().count("vg: ready") == 1


# ---------------------------------------------------------------------------
# 5. four guests at once: zero downtime (the timing target is in make bench)
# ---------------------------------------------------------------------------
def test_four_guests_migrate_at_once_and_none_is_ever_shut_off(
    libvirtd: PrivateLibvirtd, peer_libvirtd: PrivateLibvirtd, define_guest: DefineGuest,
    cli: VirtGuestsCli, tmp_path: Path
) -> None:
    home, peer = libvirtd.qemu_uri, peer_libvirtd.qemu_uri
    guests = boot_guests(define_guest, *(f"four-{i}" for i in range(4)))
    uuids = {g.name: uuid_of(g) for g in guests}
    configure(cli, peer_libvirtd, PARALLEL_MIGRATE=4)
    watch_home = EventWatch(libvirtd, tmp_path, "home")
    watch_peer = EventWatch(peer_libvirtd, tmp_path, "peer")
    try:
        stop = cli.run("stop", timeout=300)
    finally:
        watch_home.stop()
        watch_peer.stop()
    record_timing("stop: 4 migrated at once", stop.seconds)
    assert stop.code == 0 and stop.err == "", stop
    lines = without_progress(stop.lines)
    assert lines[:2] == [f"Running guests on {home} URI: four-0, four-1, four-2, four-3",
                         f"Suspending guests on {home} URI..."], stop
    # all four in flight at once: every migration began before the first ended
    assert sorted(lines[2:6]) == [f"Migrating {g.name} to {peer}: ..." for g in guests], stop
    assert sorted(lines[6:]) == [f"Migrated {g.name} to {peer}" for g in guests], stop
    for guest in guests:
        assert on(peer_libvirtd, guest).state() == "running (migrated)", stop
        assert_never_shut_off(guest.name, watch_home, watch_peer)
    assert defined(libvirtd) == set()
    assert not cli.list_file.exists()
    record = migrated_record(cli)
    assert record is not None
    assert sorted(record["guests"], key=lambda g: g["name"]) == record_of(
        libvirtd, peer_libvirtd, *sorted(uuids.items()))["guests"]
