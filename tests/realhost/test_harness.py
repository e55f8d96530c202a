"""Prove the real-host harness itself: private daemon, booting guests, ACPI, save/restore."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import cast

import pytest

from tools.realhost.guestimage import GuestImage, cache_dir, domain_xml
from tools.realhost.libvirtd import Guest, PrivateLibvirtd, StalledMigration, kill_and_wait
from tools.realhost.sshd import PrivateSshd

from .cli import VirtGuestsCli
from .conftest import DefineGuest, record_timing


def test_virtguests_command_runs_an_installed_command(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """VIRTGUESTS_COMMAND: the tests drive that executable, without the source tree."""
    stub = tmp_path / "virtguests"
    stub.write_text('#!/bin/sh\necho "${PYTHONPATH-unset}|$*"\n')
    stub.chmod(0o755)
    daemon = cast(PrivateLibvirtd, None)  # not asked: the stub runs no virsh
    monkeypatch.delenv("VIRTGUESTS_COMMAND", raising=False)
    assert VirtGuestsCli(tmp_path / "a", daemon).command()[1:] == ["-m", "virtguests"]
    monkeypatch.setenv("VIRTGUESTS_COMMAND", str(stub))
    cli = VirtGuestsCli(tmp_path / "b", daemon)
    run = cli.run("status")
    assert (run.code, run.out) == (0, f"unset|{' '.join(cli.argv('status'))}\n")
    proc = cli.spawn("stop")
    out, _ = proc.communicate(timeout=60)
    assert out == f"unset|{' '.join(cli.argv('stop'))}\n"
    for bad in ("virtguests", str(tmp_path / "missing")):
        monkeypatch.setenv("VIRTGUESTS_COMMAND", bad)
        with pytest.raises(RuntimeError, match="VIRTGUESTS_COMMAND"):
            cli.run("status")


def test_guest_boots_and_reports_ready(define_guest: DefineGuest) -> None:
    guest = define_guest("vg-boot")
    assert guest.state().startswith("running (booted)")
    assert "vg: ready" in guest.console()
    assert "buttons=event" in guest.console(), guest.describe()


def test_acpi_shutdown_honours_delay(define_guest: DefineGuest) -> None:
    guest = define_guest("vg-delay1", delay=1)
    began = time.monotonic()
    guest.virsh("shutdown")
    guest.wait_state("shut off", timeout=30)
    elapsed = time.monotonic() - began
    record_timing("ACPI shutdown (delay=1)", elapsed)
    assert guest.state() == "shut off (shutdown)"
    assert "powering off in 1s" in guest.console()
    # vg.delay=1 must really delay, and a power-off must not take long after it.
    assert 0.9 <= elapsed < 10, guest.describe()


def test_acpi_shutdown_without_delay(define_guest: DefineGuest) -> None:
    guest = define_guest("vg-delay0")
    began = time.monotonic()
    guest.virsh("shutdown")
    guest.wait_state("shut off", timeout=30)
    record_timing("ACPI shutdown (delay=0)", time.monotonic() - began)


def test_ignoring_guest_stays_running(define_guest: DefineGuest) -> None:
    guest = define_guest("vg-ignore", ignore=True)
    guest.virsh("shutdown")
    guest.wait_console("power button pressed, ignoring", timeout=30)
    time.sleep(2)
    assert guest.state().startswith("running"), guest.describe()
    assert "vg: poweroff" not in guest.console()


def test_managedsave_restore_then_acpi_shutdown(define_guest: DefineGuest) -> None:
    guest = define_guest("vg-save")
    began = time.monotonic()
    guest.virsh("managedsave", timeout=120)
    record_timing("managedsave", time.monotonic() - began)
    assert guest.state() == "shut off (saved)"
    assert "Managed save:   yes" in guest.virsh("dominfo").stdout

    began = time.monotonic()
    guest.virsh("start", timeout=120)
    record_timing("restore (virsh start)", time.monotonic() - began)
    assert guest.state() == "running (restored)"
    # The console was appended to, not truncated, by the restore.
    assert guest.console().count("vg: ready") == 1

    began = time.monotonic()
    guest.virsh("shutdown")
    guest.wait_state("shut off", timeout=30)
    record_timing("ACPI shutdown after restore", time.monotonic() - began)
    assert guest.state() == "shut off (shutdown)"
    assert "vg: poweroff" in guest.console()


def test_transient_guest(define_guest: DefineGuest, libvirtd: PrivateLibvirtd) -> None:
    guest = define_guest("vg-transient", persistent=False)
    assert "yes" not in guest.virsh("dominfo").stdout.split("Persistent:")[1].split("\n")[0]
    guest.virsh("shutdown")
    deadline = time.monotonic() + 30
    while "vg-transient" in libvirtd.virsh("list", "--all", "--name").stdout.split():
        assert time.monotonic() < deadline, guest.describe()
        time.sleep(0.05)


def test_test_uri_lists_default_domain(libvirtd: PrivateLibvirtd) -> None:
    names = libvirtd.virsh("list", "--all", "--name", uri=libvirtd.test_uri).stdout.split()
    assert "test" in names
    # And the qemu driver of the same daemon does not see it.
    assert "test" not in libvirtd.virsh("list", "--all", "--name").stdout.split()


def test_daemon_is_private(libvirtd: PrivateLibvirtd) -> None:
    assert libvirtd.pid is not None
    assert os.readlink(f"/proc/{libvirtd.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    # Its sockets live in its temp dir, nothing appears in the host's /run/libvirt.
    assert libvirtd.socket.is_socket()
    assert not list(Path("/run/libvirt").glob("*sock*"))


def test_stop_leaves_no_processes(guest_image: GuestImage, tmp_path: Path) -> None:
    daemon = PrivateLibvirtd(caps_cache=cache_dir() / "libvirt-caps")
    with daemon:
        console = tmp_path / "leftover.console.log"
        xml = tmp_path / "leftover.xml"
        xml.write_text(domain_xml("vg-leftover", image=guest_image, console_log=console))
        daemon.virsh("define", str(xml))
        daemon.virsh("start", "vg-leftover", timeout=120)
        Guest(daemon, "vg-leftover", console, persistent=True).wait_console("vg: ready")
        daemon_pid = daemon.pid
        qemu_pids = daemon._qemu_pids()
        assert daemon_pid and qemu_pids
    began = time.monotonic()
    for pid in [daemon_pid, *qemu_pids]:
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() - began < 10, f"pid {pid} still alive after stop()"
            time.sleep(0.05)
    daemon.cleanup()


def _cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                           .decode(errors="replace"))
    return out


def test_private_sshd_carries_qemu_ssh_and_counts_logins(
    libvirtd: PrivateLibvirtd, sshd: PrivateSshd, tmp_path: Path
) -> None:
    """The qemu+ssh URI reaches the private daemon through the private sshd: one login
    per virsh process, only with the client key, nothing written to root's known_hosts;
    stop() ends the sshd with the connections it carries, start() serves the same URI."""
    known_hosts = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "known_hosts"
    known_before = known_hosts.read_bytes() if known_hosts.exists() else None
    uri = sshd.qemu_uri(libvirtd)
    assert uri.startswith(f"qemu+ssh://root@127.0.0.1:{sshd.port}/system?socket=")
    before = sshd.connections()
    res = libvirtd.virsh("list", "--all", "--name", uri=uri, timeout=60)
    assert res.returncode == 0
    assert sshd.connections() == before + 1, sshd.log()[-2000:]

    # a login's shell reads the private HOME's .bashrc, never root's (whose pyenv rehash
    # lock, left by a killed login, once held every later login for 60 s)
    (sshd.login_home / ".bashrc").write_text("echo vg-private-bashrc >&2\n")
    res = subprocess.run([str(sshd.ssh_command), "-p", str(sshd.port), "-l", "root", "-i",
                          str(sshd.client_key), "127.0.0.1", 'echo "$HOME"'],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == str(sshd.login_home), res
    assert "vg-private-bashrc" in res.stderr, res
    (sshd.login_home / ".bashrc").unlink()
    before = sshd.connections()

    # Debian's virt-ssh-helper (proxy=native) ignores socket=: hence proxy=netcat
    native = uri.replace("&proxy=netcat", "&proxy=native")
    res = libvirtd.virsh("uri", uri=native, timeout=60, check=False)
    assert res.returncode != 0 and "virt-ssh-helper" in res.stderr, res
    assert "/var/run/libvirt/libvirt-sock" in res.stderr, res

    # another key is refused (no password or keyboard-interactive fallback)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, timeout=60, capture_output=True)
    logins = sshd.connections()
    res = libvirtd.virsh("uri", uri=uri.replace(str(sshd.client_key), str(stranger)),
                         timeout=60, check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr, res
    assert sshd.connections() == logins

    # stop(): a live connection (an event stream) goes with it
    events = subprocess.Popen(["virsh", "-c", uri, "event", "--all", "--loop"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while sshd.connections() == logins and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sshd.connections() == logins + 1, sshd.log()[-2000:]
        assert any(f"-U {libvirtd.socket}" in c for c in _cmdlines())  # the netcat
        sshd.stop()
        assert sshd.pid is None
        assert not any(f"-U {libvirtd.socket}" in c for c in _cmdlines())
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", sshd.port), timeout=10).close()
        res = libvirtd.virsh("uri", uri=uri, timeout=60, check=False)
        assert res.returncode != 0 and "Connection refused" in res.stderr, res
    finally:
        events.kill()
        events.wait(timeout=30)

    sshd.start()  # same port, same keys: the URI works again
    assert libvirtd.virsh("uri", uri=uri, timeout=60).returncode == 0
    assert sshd.connections() == logins + 2
    known_after = known_hosts.read_bytes() if known_hosts.exists() else None
    assert known_after == known_before, f"{known_hosts} changed"
    assert sshd.known_hosts.read_text().count("ssh-ed25519") == 1


def _host_uuid(daemon: PrivateLibvirtd) -> str:
    caps = daemon.virsh("capabilities").stdout
    return caps.split("<host>", 1)[1].split("<uuid>", 1)[1].split("</uuid>", 1)[0]


def _names(daemon: PrivateLibvirtd) -> list[str]:
    return daemon.virsh("list", "--all", "--name").stdout.split()


def test_guest_migrates_to_the_peer_and_back(define_guest: DefineGuest,
                                             libvirtd: PrivateLibvirtd,
                                             peer_libvirtd: PrivateLibvirtd) -> None:
    """Two private daemons are two hosts to libvirt (their own host UUIDs, as
    configured) and a plain ``virsh -c HOME migrate --live --persistent
    --undefinesource UUID PEER_URI`` moves a running guest either way: it arrives
    ``running (migrated)``, persistent, and is gone from where it left."""
    assert _host_uuid(libvirtd) == libvirtd.host_uuid
    assert _host_uuid(peer_libvirtd) == peer_libvirtd.host_uuid != libvirtd.host_uuid
    assert libvirtd.migration_ports != peer_libvirtd.migration_ports
    home = define_guest("vg-mig")
    uuid = home.virsh("domuuid").stdout.strip()
    away = Guest(peer_libvirtd, home.name, home.console_log, persistent=True)
    for source, dest, guest in ((libvirtd, peer_libvirtd, away),
                                (peer_libvirtd, libvirtd, home)):
        began = time.monotonic()
        res = source.migrate(uuid, dest)
        record_timing("migrate one guest", time.monotonic() - began)
        assert (res.stdout, res.stderr) == ("", ""), res
        assert guest.state() == "running (migrated)", guest.describe()
        assert "Persistent:     yes" in guest.virsh("dominfo").stdout
        assert home.name not in _names(source), source.virsh("list", "--all").stdout
    assert home.console().count("vg: ready") == 1  # the same guest, never rebooted
    away = Guest(peer_libvirtd, home.name, home.console_log, persistent=True)
    libvirtd.migrate(uuid, peer_libvirtd)
    away.virsh("shutdown")
    away.wait_state("shut off", timeout=30)
    assert away.state() == "shut off (shutdown)"
    assert "vg: poweroff" in away.console()


def test_four_guests_migrate_at_once_to_one_peer(define_guest: DefineGuest,
                                                 libvirtd: PrivateLibvirtd,
                                                 peer_libvirtd: PrivateLibvirtd) -> None:
    """Four migrations to the same peer at the same time: each takes its own port
    from the peer's block, all arrive running and still answer ACPI there."""
    guests = [define_guest(f"vg-mig{i}") for i in range(4)]
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def migrate(name: str) -> None:
        results[name] = libvirtd.migrate(name, peer_libvirtd, check=False)

    began = time.monotonic()
    threads = [threading.Thread(target=migrate, args=(g.name,)) for g in guests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    record_timing("migrate 4 guests at once", time.monotonic() - began)
    assert {name: res.returncode for name, res in results.items()} == {
        g.name: 0 for g in guests}, results
    assert not set(_names(libvirtd)) & {g.name for g in guests}
    away = [Guest(peer_libvirtd, g.name, g.console_log, persistent=True) for g in guests]
    for guest in away:
        assert guest.state() == "running (migrated)", guest.describe()
        guest.virsh("shutdown")
    for guest in away:
        guest.wait_state("shut off", timeout=60)
        assert "vg: poweroff" in guest.console()


def test_same_host_uuid_is_refused(define_guest: DefineGuest, libvirtd: PrivateLibvirtd,
                                   tmp_path: Path) -> None:
    """A daemon given the home daemon's host UUID is the same host to libvirt: the
    migration is refused and the guest keeps running at home."""
    twin = PrivateLibvirtd(workdir=tmp_path / "twin", host_uuid=libvirtd.host_uuid,
                           caps_cache=cache_dir() / "libvirt-caps")
    with twin:
        assert _host_uuid(twin) == libvirtd.host_uuid
        guest = define_guest("vg-mig-twin")
        res = libvirtd.migrate(guest.name, twin, check=False)
        assert res.returncode == 1, res
        assert "same host" in res.stderr, res
        assert guest.state() == "running (booted)"
        assert guest.name not in _names(twin)


def test_a_held_migration_is_aborted_and_the_guest_stays_home(
        define_guest: DefineGuest, libvirtd: PrivateLibvirtd,
        peer_libvirtd: PrivateLibvirtd) -> None:
    """StalledMigration holds a migration in progress: domjobinfo shows it at home (with
    progress), the guest is ``paused (migrating)`` on the peer; domjobabort ends it and
    the guest runs on at home, never stopped, gone from the peer."""
    guest = define_guest("vg-mig-held")
    with StalledMigration(libvirtd, guest.name, peer_libvirtd.qemu_uri) as held:
        assert "Operation:        Outgoing migration" in held.jobinfo
        assert "Data processed:" in held.jobinfo
        assert guest.state() == "running (booted)"
        away = Guest(peer_libvirtd, guest.name, guest.console_log, persistent=False)
        assert away.state() == "paused (migrating)"
        assert guest.virsh("domjobabort").returncode == 0
    code, _out, err = held.wait()
    assert (code, err) == (1, "error: operation aborted: job 'migration out' canceled by "
                              "client\n")
    assert guest.state() == "running (booted)"
    assert guest.name not in _names(peer_libvirtd)
    assert guest.console().count("vg: ready") == 1


def test_a_peer_killed_mid_migration_leaves_the_guest_running_at_home(
        define_guest: DefineGuest, libvirtd: PrivateLibvirtd,
        peer_libvirtd: PrivateLibvirtd) -> None:
    """The peer's libvirtd (and the QEMU it started for the arrival) die mid-migration:
    the migrate call fails and the guest runs on at home."""
    guest = define_guest("vg-mig-lost")
    with StalledMigration(libvirtd, guest.name, peer_libvirtd.qemu_uri) as held:
        incoming = peer_libvirtd.qemu_pid(guest.name)
        daemon = peer_libvirtd.pid
        assert daemon is not None
        for pid in (daemon, incoming):
            assert kill_and_wait(pid, signal.SIGKILL, 30)
    code, _out, err = held.wait(timeout=300)
    # libvirt 9.0: "error: operation failed: job 'migration out' failed: Unable to write
    # to socket: Bad file descriptor"
    assert code == 1 and err.startswith("error: operation failed: job 'migration out' "
                                        "failed: "), err
    assert guest.state() == "running (booted)", guest.describe()
    assert guest.console().count("vg: ready") == 1


def test_a_killed_migrate_call_cancels_its_migration(
        define_guest: DefineGuest, libvirtd: PrivateLibvirtd,
        peer_libvirtd: PrivateLibvirtd) -> None:
    """virtguests kills a timed-out call with SIGKILL: libvirt cancels the migration of
    a client that went away, at once (what the fake virsh does too): the guest runs on
    at home, the peer has nothing, even once the migration thread could go on."""
    guest = define_guest("vg-mig-killed")
    held = StalledMigration(libvirtd, guest.name, peer_libvirtd.qemu_uri).start()
    try:
        assert held.proc is not None
        os.killpg(held.proc.pid, signal.SIGKILL)
        held.proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while guest.name in _names(peer_libvirtd):
            assert time.monotonic() < deadline, peer_libvirtd.virsh("list", "--all").stdout
            time.sleep(0.05)
    finally:
        held.resume()
    time.sleep(2)  # the migration thread runs again: nothing more happens
    assert guest.state() == "running (booted)", guest.describe()
    assert guest.name not in _names(peer_libvirtd)
    assert "Job type:         None" in guest.virsh("domjobinfo").stdout
