"""An in-process simulated host behind the real runner, for property tests of the executor.

``SimVirsh`` is the production ``Virsh`` with only ``_spawn`` (starting a
process) and ``watch`` replaced: the wedge bookkeeping, timeouts and refusals
are the real ones.  Guests age on a ``SimClock`` (virtual time that advances
only when the executor waits), so a 300 s shutdown timeout costs nothing and
every run is exactly reproducible from its inputs: the property tests can
drive hundreds of fault schedules.

Faults are chosen per call: ``SimHost.fault(index, args)`` returns ``None``,
``"fail"`` (virsh exits 1 with a connection error), ``"hang"`` (the call
takes its whole timeout and is killed), ``slow(seconds)`` (libvirt answers
that much later: a timeout if that is past the call's limit) or ``"bug"`` (an
unexpected exception escapes the runner, as a bug in virtguests would).
``SimHost.noise`` lines are streamed to every event watcher after each call:
tenant-chosen text in event lines.  A guest's ``save_seconds`` past SAVE_TIMEOUT
leaves its save running after virsh was killed, as libvirt does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

from virtguests.clock import clamp
from virtguests.testing import FakeClock
from virtguests.virsh import Result, Virsh, VirshError, Watch

Fault = Callable[[int, Sequence[str]], Optional[str]]
HANG, FAIL, BUG = "hang", "fail", "bug"
LOCK_WAIT = 30.0
"""libvirt's wait for a guest's state-change lock before a request fails."""
BUSY = ("error: Failed to shutdown domain '{}'\nerror: Timed out during operation: cannot "
        "acquire state change lock (held by monitor=remoteDispatchDomainManagedSave)\n")
"""As recorded: fixtures/qemu-shutdown-busy.yaml."""


def slow(seconds: float) -> str:
    """A fault: libvirt answers *seconds* (virtual) late, e.g. after its guest agent wait."""
    return f"slow:{seconds}"


class SimClock(FakeClock):
    """Virtual time for a host with no real processes: a wait that no event ends
    advances the clock by the whole wait at once.

    A save runs in a worker thread of the executor, and its simulated call
    returns at once: a wait for anything but an event stream's bell first gives
    that thread up to *settle* real seconds.  A bell is only rung from inside a
    simulated call, which has returned by the time the executor waits.
    """

    def __init__(self, *, settle: float = 5.0) -> None:
        super().__init__()
        self.settle = settle
        self.bells: list[threading.Event] = []

    def wait(self, event: threading.Event, seconds: float) -> bool:
        bell = any(event is known for known in self.bells)
        if event.wait(0.0 if bell else self.settle):
            return True
        self.advance(clamp(seconds))
        return event.is_set()


@dataclass
class SimGuest:
    uuid: str
    name: str
    shutdown_seconds: Optional[float] = 1.0
    """None: ignores ACPI shutdown requests."""
    active: bool = True
    stop_at: Optional[float] = None
    destroyed: bool = False
    shut_down: bool = False
    saved: bool = False
    save_seconds: float = 0.0
    """A managedsave takes this long; past the call's timeout libvirt goes on with it
    (virsh was killed, not the save job): the guest is ``paused (saving)`` till then."""
    saving_until: Optional[float] = None
    destroyed_while_saving: bool = False


@dataclass
class SimHost:
    guests: list[SimGuest]
    fault: Fault = lambda index, args: None
    noise: list[str] = field(default_factory=list)
    calls: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)

    def find(self, uuid: str) -> Optional[SimGuest]:
        return next((g for g in self.guests if g.uuid == uuid), None)


class SimWatch(Watch):
    """A watch with no process: closing it only marks it closed."""

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv, None)
        self.closed = False

    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


class SimVirsh(Virsh):
    def __init__(self, clock: SimClock, hosts: dict[str, SimHost], *,
                 query_timeout: float = 10) -> None:
        super().__init__("virsh", environ={}, default_timeout=query_timeout)
        self.clock = clock
        self.hosts = hosts
        self.watchers: dict[str, list[Callable[[str], None]]] = {}
        self.sim_lock = threading.RLock()

    def watch(self, uri: str, args: Sequence[str],
              on_line: Callable[[str], None]) -> SimWatch:
        argv = self.argv(uri, args)
        self._refuse_if_given_up(uri, argv)
        with self.sim_lock:
            self.watchers.setdefault(uri, []).append(on_line)
        bell = getattr(getattr(on_line, "__self__", None), "rung", None)
        if isinstance(bell, threading.Event):
            self.clock.bells.append(bell)
        return SimWatch(argv)

    def _emit(self, uri: str, line: str) -> None:
        for on_line in self.watchers.get(uri, []):
            on_line(line + "\n")

    def _spawn(self, argv: list[str], limit: float) -> Result:
        with self.sim_lock:
            return self._answer(argv, limit)

    def _answer(self, argv: list[str], limit: float) -> Result:
        uri, args = (argv[2], argv[3:]) if argv[1:2] == ["-c"] else ("default", argv[1:])
        host = self.hosts[uri]
        now = self.clock.now()
        self._tick(uri, host, now)
        index = len(host.calls)
        host.calls.append((now, tuple(args)))
        fault = host.fault(index, args)
        try:
            late = float(fault.split(":")[1]) if fault and fault.startswith("slow:") else 0.0
            if fault == HANG or late >= limit:  # libvirtd does not get to the command
                self.clock.advance(limit)
                raise VirshError(argv, f"timed out after {limit:g}s and was killed",
                                 timed_out=True)
            if late:
                self.clock.advance(late)
                now = self.clock.now()
                self._tick(uri, host, now)
            if fault == BUG:
                raise RuntimeError(f"injected bug in call {index}")
            if fault == FAIL:
                return Result(tuple(argv), 1, "", "error: failed to connect to the hypervisor\n"
                              "error: Cannot recv data: Connection reset by peer\n", 0.0)
            return self._command(uri, host, argv, args, now, limit)
        finally:
            for line in host.noise:
                self._emit(uri, line)

    def _tick(self, uri: str, host: SimHost, now: float) -> None:
        for guest in host.guests:
            if guest.saving_until is not None and now >= guest.saving_until:
                guest.saving_until, guest.active, guest.saved = None, False, True
            if guest.active and guest.stop_at is not None and now >= guest.stop_at:
                guest.active, guest.shut_down = False, True
                self._emit(uri, f"event 'lifecycle' for domain '{guest.name}': Stopped Shutdown")

    def _command(self, uri: str, host: SimHost, argv: list[str], args: Sequence[str],
                 now: float, limit: float) -> Result:
        def ok(text: str = "") -> Result:
            return Result(tuple(argv), 0, text, "", 0.0)

        def error(text: str) -> Result:
            return Result(tuple(argv), 1, "", text, 0.0)

        if len(args) == 1 and ";" in args[0]:  # a command string: the batched listings
            parts = []
            for command in args[0].split(";"):
                words = command.split()
                parts.append(" ".join(words[1:]) + "\n" if words[0] == "echo"
                             else _listing(host, words))
            return ok("".join(parts))
        if args[0] == "list":
            return ok(_listing(host, args))
        guest = host.find(args[-1])
        if guest is None:
            return error(f"error: failed to get domain '{args[-1]}'\n")
        if args[0] == "shutdown" and guest.saving_until is not None:
            wait = min(LOCK_WAIT, guest.saving_until - now)
            if wait >= limit:
                raise AssertionError("a shutdown waiting for the lock past its timeout "
                                     "is not simulated")
            self.clock.advance(wait)
            self._tick(uri, host, self.clock.now())
            if guest.saving_until is not None:
                return error(BUSY.format(args[-1]))
        if args[0] == "shutdown":
            if not guest.active:
                return error("error: Requested operation is not valid: domain is not running\n")
            if guest.shutdown_seconds is not None and guest.stop_at is None:
                guest.stop_at = now + guest.shutdown_seconds
            return ok(f"Domain '{args[-1]}' is being shutdown\n")
        if args[0] == "destroy":
            if not guest.active:
                return error("error: Requested operation is not valid: domain is not running\n")
            guest.destroyed_while_saving = guest.saving_until is not None
            guest.active, guest.destroyed, guest.saving_until = False, True, None
            self._emit(uri, f"event 'lifecycle' for domain '{guest.name}': Stopped Destroyed")
            return ok(f"Domain '{args[-1]}' destroyed\n")
        if args[0] == "domstate":
            if guest.saving_until is not None:
                return ok("paused (saving)\n\n")
            if guest.active:
                return ok("running (booted)\n\n")
            reason = "destroyed" if guest.destroyed else "saved" if guest.saved else "shutdown"
            return ok(f"shut off ({reason})\n\n")
        if args[0] == "domjobinfo":
            if guest.saving_until is not None:
                return ok("Job type:         Unbounded   \nOperation:        Save        \n\n")
            return ok("Job type:         None        \n\n")
        if args[0] == "domtime":
            return ok("")
        if args[0] == "managedsave":
            if not guest.active:
                return error(f"error: Failed to save domain '{args[-1]}' state\n"
                             "error: Requested operation is not valid: domain is not running\n")
            if guest.save_seconds >= limit:  # virsh is killed, the save job goes on
                guest.saving_until = now + guest.save_seconds
                self.clock.advance(limit)
                self._tick(uri, host, self.clock.now())
                raise VirshError(argv, f"timed out after {limit:g}s and was killed",
                                 timed_out=True)
            self.clock.advance(guest.save_seconds)
            guest.active, guest.saved = False, True
            return ok(f"\nDomain '{args[-1]}' state saved by libvirt\n")
        if args[0] == "start":
            if guest.active:
                return error("error: Domain is already active\n")
            guest.active, guest.saved, guest.destroyed = True, False, False
            guest.stop_at, guest.shut_down = None, False
            return ok(f"Domain '{guest.name}' started\n\n")
        raise AssertionError(f"the simulated host does not answer {list(args)}")


def _listing(host: SimHost, words: Sequence[str]) -> str:
    """``virsh list`` with the options virtguests uses (every guest is persistent)."""
    options = set(words[1:])
    known = {"--all", "--uuid", "--name", "--persistent", "--with-managed-save"}
    if words[0] != "list" or not options <= known or "--uuid" not in options:
        raise AssertionError(f"the simulated host does not answer {list(words)}")
    picked = [g for g in host.guests if (g.active or "--all" in options)
              and (g.saved or "--with-managed-save" not in options)]
    if "--name" in options:
        return "".join(f"{g.uuid} {g.name}\n" for g in picked) + "\n"
    return "".join(f"{g.uuid}\n" for g in picked) + "\n"
