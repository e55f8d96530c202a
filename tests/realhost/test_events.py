"""Lifecycle events from real virsh, read through a pty: ``Doorbell`` on a private libvirtd.

Why: shutdown waits wake on ``virsh event --loop --event lifecycle``: a line
only rings the bell, and one UUID listing then says which guests stopped (a
line names a guest, and tenants choose names).  The
fake virsh streams events too, but only the real virsh (9.0 on Debian 12), read
through the pty that ``Virsh.watch`` sets up, shows whether that line really
arrives, how soon after the request, and that ``close()`` leaves no virsh
behind.  The Doorbell is opened right before the requests, exactly as the
executor does (no warm-up, no handshake).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import pytest

from tools.realhost.libvirtd import Guest, PrivateLibvirtd
from virtguests.doorbell import Doorbell
from virtguests.virsh import Virsh, Watch

from .conftest import DefineGuest, record_timing
from .test_e2e import active, boot

EVENT_TIMEOUT = 20.0
"""Seconds a Stopped line may take; a tiny guest powers off in well under one."""


class RecordingDoorbell(Doorbell):
    """The real Doorbell, also keeping every raw line with its arrival time.

    Why: the timings are measured to the line's arrival (not to our next poll),
    and a failure must show exactly what virsh printed.
    """

    def __init__(self, virsh: Virsh, uri: str) -> None:
        # Before super(): the watcher may deliver a line before __init__ returns.
        self.lines: list[tuple[float, str]] = []
        super().__init__(virsh, uri)

    def _line(self, line: str) -> None:
        self.lines.append((time.monotonic(), line))
        super()._line(line)

    def arrival(self, text: str) -> list[float]:
        """Arrival times of lines that are exactly *text* (line end ignored)."""
        return [t for t, line in list(self.lines) if line.rstrip("\r\n") == text]

    def report(self, since: float) -> str:
        """Raw lines (repr, seconds after *since*) and the watcher's state, for messages."""
        rows = [f"  +{t - since:7.3f}s {line!r}" for t, line in list(self.lines)]
        state = "no watcher" if self.watch is None else (
            f"watcher pid {self.watch.proc.pid} alive={self.watch.alive()}")
        return f"{state}; {len(rows)} line(s):\n" + ("\n".join(rows) or "  <none>")


OpenBell = Callable[[], RecordingDoorbell]


@pytest.fixture
def open_bell(libvirtd: PrivateLibvirtd) -> Iterator[OpenBell]:
    """Factory for Doorbells on the qemu URI with the real virsh; all closed after the test."""
    bells: list[RecordingDoorbell] = []

    def make() -> RecordingDoorbell:
        bell = RecordingDoorbell(Virsh("virsh"), libvirtd.qemu_uri)
        bells.append(bell)
        assert bell.watch is not None, "virsh event could not be started"
        return bell

    yield make
    for bell in bells:
        bell.close()


def stopped_line(name: str, reason: str) -> str:
    """The line virsh prints when *name* stops (``Shutdown``, ``Destroyed``, ...)."""
    return f"event 'lifecycle' for domain '{name}': Stopped {reason}"


def wait_stopped(bell: RecordingDoorbell, names: set[str],
                 timeout: float = EVENT_TIMEOUT) -> set[str]:
    """The *names* whose Stopped line came, until all did or *timeout*; wake on ``rung``.

    Why ``rung``: that is how the executor waits, so a line that never rings
    the bell would show up here as a timeout.  The names are the test's own.
    """
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        bell.rung.clear()
        seen |= {name for name in names for _, line in list(bell.lines)
                 if line.startswith(f"event 'lifecycle' for domain '{name}': Stopped ")}
        remaining = deadline - time.monotonic()
        if names <= seen or remaining <= 0:
            return seen
        bell.rung.wait(min(remaining, 0.5))


def cmdline(pid: int) -> list[str]:
    """argv of a process ([] for a zombie or a vanished one)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def session_of(pid: int) -> Optional[int]:
    """Session id of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after "(comm)": state ppid pgrp session ...
    return int(stat.rsplit(")", 1)[1].split()[3])


def pids() -> list[int]:
    """Every process on the host (the watcher must be gone everywhere, not just unreaped)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def watchers(watch: Watch) -> list[int]:
    """Processes running this watch's ``virsh ... event --loop --event lifecycle``.

    argv[0] is compared by basename: ``sh`` execs the resolved ``/usr/bin/virsh``.
    """
    want = list(watch.argv)
    found = []
    for pid in pids():
        argv = cmdline(pid)
        if argv and os.path.basename(argv[0]) == "virsh" and argv[1:] == want[1:]:
            found.append(pid)
    return found


def wait_running(watch: Watch, timeout: float = 10.0) -> int:
    """Wait until the watcher has exec'd virsh with its stdout on a pty; return its pid.

    Why the pty: a pipe would make virsh block-buffer its output, and a
    Stopped line could sit in the buffer until virsh exits.
    """
    pid = int(watch.proc.pid)
    deadline = time.monotonic() + timeout
    while True:
        try:
            stdout = os.readlink(f"/proc/{pid}/fd/1")
        except OSError:
            stdout = ""
        if pid in watchers(watch) and stdout.startswith("/dev/pts/"):
            return pid
        assert time.monotonic() < deadline, (
            f"watcher {pid} not running virsh on a pty: argv={cmdline(pid)} stdout={stdout!r}")
        time.sleep(0.02)


def close_and_check(bell: RecordingDoorbell) -> float:
    """``close()`` the bell; assert no ``virsh event`` (nor anything in its session) remains.

    Returns how long ``close()`` took.
    """
    watch = bell.watch
    assert watch is not None
    pid = wait_running(watch)
    assert watch.alive(), bell.report(bell.lines[0][0] if bell.lines else 0.0)
    began = time.monotonic()
    bell.close()
    took = time.monotonic() - began
    assert not watch.alive()
    assert not os.path.exists(f"/proc/{pid}"), f"watcher {pid} not reaped: {cmdline(pid)}"
    assert watchers(watch) == [], f"virsh event still running: {watchers(watch)}"
    left = [p for p in pids() if session_of(p) == pid]
    assert left == [], f"processes left in the watcher's session: {[cmdline(p) for p in left]}"
    return took


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("verb", "reason", "guest_kw", "state"), [
    ("shutdown", "Shutdown", {}, "shut off (shutdown)"),
    ("destroy", "Destroyed", {"ignore": True}, "shut off (destroyed)"),
], ids=["shutdown", "destroy"])
def test_a_stop_is_reported_as_stopped_through_the_pty(
    libvirtd: PrivateLibvirtd, define_guest: DefineGuest, open_bell: OpenBell,
    verb: str, reason: str, guest_kw: dict[str, Any], state: str,
) -> None:
    """ACPI shutdown, or ``virsh destroy`` (the poweroff step) of a guest that ignores
    the power button: the Stopped line arrives and rings the bell, and the guest is off."""
    (guest,) = boot(define_guest, (f"ev-{verb}", guest_kw))
    bell = open_bell()
    assert not bell.proven
    began = time.monotonic()
    guest.virsh(verb)
    seen = wait_stopped(bell, {guest.name})
    assert seen == {guest.name}, (
        f"no Stopped line within {EVENT_TIMEOUT:g}s of `virsh {verb}`; "
        f"{bell.report(began)}\n{guest.describe()}")
    arrived = bell.arrival(stopped_line(guest.name, reason))
    assert len(arrived) == 1, bell.report(began)
    record_timing(f"{verb} -> Stopped line", arrived[0] - began)
    # The executor checks with one listing as the line rings: libvirt must agree at once.
    assert guest.name not in active(libvirtd), bell.report(began)
    assert guest.state() == state, guest.describe()
    if verb == "shutdown":
        assert "vg: poweroff" in guest.console(), guest.describe()
    print(bell.report(began))  # shown with -rP: what virsh really printed
    record_timing("Doorbell.close()", close_and_check(bell))


def test_several_shutdowns_at_once_all_reported(
    libvirtd: PrivateLibvirtd, define_guest: DefineGuest, open_bell: OpenBell
) -> None:
    """Three guests shut down concurrently: one Stopped line each, none for a bystander.

    One name has a space and a quote in it, as real guest names sometimes do.
    """
    *stopping, bystander = boot(
        define_guest, ("ev-many-a", {}), ("ev many b's", {}), ("ev-many-c", {}),
        ("ev-bystander", {}))
    names = {g.name for g in stopping}
    bell = open_bell()
    began = time.monotonic()
    barrier = threading.Barrier(len(stopping))

    def shutdown(guest: Guest) -> None:
        barrier.wait(10)
        guest.virsh("shutdown")

    with ThreadPoolExecutor(max_workers=len(stopping)) as pool:
        list(pool.map(shutdown, stopping))
    seen = wait_stopped(bell, names)
    assert seen == names, (
        f"missing Stopped lines for {sorted(names - seen)} within {EVENT_TIMEOUT:g}s; "
        f"{bell.report(began)}")
    last = 0.0
    for guest in stopping:
        arrived = bell.arrival(stopped_line(guest.name, "Shutdown"))
        assert len(arrived) == 1, f"{guest.name}: {bell.report(began)}"
        record_timing("3 at once: -> Stopped line", arrived[0] - began)
        last = max(last, arrived[0] - began)
    record_timing("3 at once: all Stopped", last)
    assert active(libvirtd) & (names | {bystander.name}) == {bystander.name}
    for guest in stopping:
        assert guest.state() == "shut off (shutdown)", guest.describe()
    assert bystander.state().startswith("running"), bystander.describe()
    assert not [line for _, line in bell.lines if f"'{bystander.name}'" in line], (
        bell.report(began))
    print(bell.report(began))  # shown with -rP: what virsh really printed
    record_timing("Doorbell.close()", close_and_check(bell))


def test_close_leaves_no_virsh_event_process(
    libvirtd: PrivateLibvirtd, open_bell: OpenBell
) -> None:
    """An idle stream (virsh blocked waiting for events) ends on ``close()``, nothing left.

    Also: no earlier test left a watcher on this daemon behind.
    """
    bell = open_bell()
    assert bell.watch is not None
    pid = wait_running(bell.watch)
    assert watchers(bell.watch) == [pid], "another virsh event on this URI is still running"
    assert bell.lines == []
    took = close_and_check(bell)
    record_timing("Doorbell.close() idle", took)
    # SIGTERM is enough: the SIGKILL fallback starts after a 1 s grace.
    assert took < 1.0, f"close() took {took:.2f}s"
    assert not bell.proven
