"""The live host: a JSON state file shared by concurrent fake processes under an flock,
its (possibly virtual) time, the jobs that end with it, and finding a guest."""

from __future__ import annotations

import os
import time

from virtguests.testing.fakevirsh.errors import Unsupported
from virtguests.testing.fakevirsh.jsonfile import dumps, loads
from virtguests.testing.procs import exited

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NoReturn, Optional

STATE_FORMAT = 7


class HostClock:
    """The fake's "now": ``time.time()``, or the float in ``VIRTGUESTS_FAKE_NOW_FILE``
    (a virtual clock the test advances; waiting polls the file every 0.01 s).

    Everything a call waits for goes through it, hanging too: the in-process runner
    gives calls a clock of its own (:mod:`virtguests.testing.inprocess`)."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        environ = os.environ if environ is None else environ
        self.path = environ.get("VIRTGUESTS_FAKE_NOW_FILE") or None

    def now(self) -> float:
        if self.path is None:
            return time.time()
        for _ in range(100):
            try:
                with open(self.path) as file:
                    return float(file.read().strip())
            except (OSError, ValueError):  # being rewritten: retry
                time.sleep(0.001)
        raise Unsupported(f"cannot read a float from VIRTGUESTS_FAKE_NOW_FILE={self.path}")

    def wait_until(self, moment: float) -> None:
        if self.path is None:
            delay = moment - time.time()
            if delay > 0:
                time.sleep(delay)
            return
        while self.now() < moment:
            time.sleep(0.01)

    def nap(self, moment: float) -> None:
        """Wait until *moment*, or less: a waiter that must also notice what other calls
        change (an abort of its job) looks again after this, and naps again.  A few real
        milliseconds on a virtual clock, which may stand still meanwhile."""
        if self.path is None:
            self.wait_until(min(moment, time.time() + 0.05))
        elif self.now() < moment:
            time.sleep(0.01)

    def hang(self) -> NoReturn:
        """Sleep until killed (a hung libvirtd or guest)."""
        while True:
            time.sleep(3600)


class StateFile:
    """The JSON state, read and written under an exclusive flock; rebuilt from the host
    YAML when missing, of another format, or when the YAML changed."""

    def __init__(self, host: str, path: str, clock: Optional[HostClock] = None) -> None:
        self.host = host
        self.path = path
        self.clock = clock
        """The time a (re)built host starts at (default: a ``HostClock()``)."""
        self.fd = -1
        self.data: dict[str, Any] = {}

    def __enter__(self) -> dict[str, Any]:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            stat = os.stat(self.host)
        except OSError as exc:
            raise Unsupported(f"VIRTGUESTS_FAKE_HOST={self.host}: {exc.strerror}") from None
        signature = [stat.st_mtime_ns, stat.st_size]
        raw = b""
        while True:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                break
            raw += chunk
        data: Optional[dict[str, Any]] = loads(raw) if raw else None
        if (
            data is None
            or data.get("format") != STATE_FORMAT
            or data.get("sig") != signature
            or data.get("host") != self.host
        ):
            # only here is the YAML read: the hot path does not import the host model
            from virtguests.testing.fakevirsh.hostfile import build_state

            built = (HostClock() if self.clock is None else self.clock).now()
            data = build_state(self.host, signature, built)
            self._write(data)
        self.data = data
        return data

    def _write(self, data: dict[str, Any]) -> None:
        raw = dumps(data, separators=(",", ":")).encode()
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, raw)

    def save(self) -> None:
        self._write(self.data)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the flock
        self.fd = -1


def apply_due_transitions(uri_state: dict[str, Any], now: float) -> bool:
    """Apply the transitions of one URI that are due at ``now`` (finished saves, starts
    and shutdowns; stopped transient guests vanish); True if anything changed."""
    changed = False
    kept = []
    for guest in uri_state["guests"]:
        job = guest["job"]
        if job is not None and now >= job["end"]:
            changed = True
            guest["job"] = None
            if job["op"] == "save":
                guest.update(state="shutoff", reason="saved", id=None, managed_save=True)
                guest["shutdown_at"] = None
            elif job["op"] == "start":
                guest.update(state="running", id=uri_state["next_id"], managed_save=False)
                guest["reason"] = job["reason"]
                uri_state["next_id"] += 1
            elif job["op"] == "migrate":  # left: undefined, or shut off (migrated)
                _moved(uri_state, guest, "out")
                if job["undefine"] or not guest["persistent"]:
                    continue
                guest.update(state="shutoff", reason="migrated", id=None, shutdown_at=None)
            elif job["op"] == "incoming":
                # a paused guest arrives paused, its reason kept (qemu-domstate-reason-
                # migrated-paused: "paused (user)" as it was at home)
                if job.get("state") == "paused":
                    guest.update(state="paused", reason=job["reason"])
                else:
                    guest.update(state="running", reason="migrated")
                guest["persistent"] = guest["persistent"] or job["persistent"]
                _moved(uri_state, guest, "in")
        shutdown_at = guest["shutdown_at"]
        if (shutdown_at is not None and guest["state"] == "running" and guest["job"] is None
                and now >= shutdown_at):
            changed = True
            guest.update(state="shutoff", reason="shutdown", id=None, shutdown_at=None)
        if guest["state"] == "shutoff" and not guest["persistent"] and guest["job"] is None:
            changed = True  # transient guests vanish when they stop
            continue
        kept.append(guest)
    uri_state["guests"] = kept
    return changed


def _moved(uri_state: dict[str, Any], guest: dict[str, Any], way: str) -> None:
    """Note that *guest* ended a migration *way* ("in", "out") on this URI: the event
    stream tells a guest that left or arrived from one that stopped or started, even
    when both ends of a migration fall between two of its looks."""
    uri_state["move_seq"] = int(uri_state.get("move_seq", 0)) + 1
    uri_state["moves"][guest["uuid"]] = {
        "seq": uri_state["move_seq"], "way": way, "name": guest["name"],
        "state": guest["state"], "persistent": guest["persistent"]}


def lifecycle_view(uri_state: dict[str, Any]) -> dict[str, tuple[str, str, bool, Any]]:
    """What the event stream compares between two looks: per UUID the guest's name,
    state (``gone`` for one that left by migration and is not defined here), whether it
    is an incoming migration's copy, and its last move here (None: none)."""
    moves = uri_state["moves"]
    view = {guest["uuid"]: (guest["name"], guest["state"],
                            guest["job"] is not None and guest["job"]["op"] == "incoming",
                            moves.get(guest["uuid"]))
            for guest in uri_state["guests"]}
    for uuid, move in moves.items():
        if uuid not in view:
            view[uuid] = (move["name"], "gone", False, move)
    return view


def cancel_migration(state: dict[str, Any], token: str, outcome: Optional[str]) -> None:
    """End the migration *token* where it is: the guest stays at its source as it was, the
    arriving copy goes (a definition it replaced comes back); *outcome*: the role of the
    error its migrate call prints (None: no call waits for it)."""
    for uri_state in state["uris"].values():
        for index, guest in enumerate(uri_state["guests"]):
            job = guest["job"]
            if job is None or job.get("id") != token:
                continue
            if job["op"] == "migrate":
                guest["job"] = None
            elif job["replaced"] is not None:
                uri_state["guests"][index] = job["replaced"]
            else:
                del uri_state["guests"][index]
            break
    if outcome is not None:
        state.setdefault("migrations", {})[token] = outcome


def drop_orphaned_migrations(state: dict[str, Any]) -> bool:
    """Cancel each migration whose migrate call's process has ended before it (killed
    at its timeout, even by SIGKILL): libvirt cancels a migration whose client went
    away, at once (the guest runs on at its source).  True if any was."""
    orphans = [guest["job"]["id"] for uri_state in state["uris"].values()
               for guest in uri_state["guests"]
               if guest["job"] is not None and guest["job"]["op"] == "migrate"
               and exited(guest["job"]["owner"])]
    for token in orphans:
        cancel_migration(state, token, None)
    return bool(orphans)


def active_kib(uri_state: dict[str, Any]) -> int:
    """The memory of the URI's active guests (an incoming migration's too), in KiB."""
    return sum(int(float(guest["memory_mib"]) * 1024) for guest in uri_state["guests"]
               if guest["state"] != "shutoff")


def is_uuid(text: str) -> bool:
    hex_digits = text.replace("-", "")
    return len(hex_digits) == 32 and all(digit in "0123456789abcdefABCDEF" for digit in hex_digits)


def normalize_uuid(text: str) -> str:
    digits = text.replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def find_guest(uri_state: dict[str, Any], arg: str,
               lookup: tuple[str, ...]) -> Optional[dict[str, Any]]:
    """virsh's lookup: by id (if allowed and numeric), then uuid, then name."""
    guests: list[dict[str, Any]] = uri_state["guests"]
    if "id" in lookup and arg.isdigit():
        for guest in guests:
            if guest["id"] is not None and guest["id"] == int(arg):
                return guest
    if "uuid" in lookup and is_uuid(arg):
        wanted = normalize_uuid(arg)
        for guest in guests:
            if guest["uuid"] == wanted:
                return guest
    if "name" in lookup:
        for guest in guests:
            if guest["name"] == arg:
                return guest
    return None


def apply_due_transitions_now(host_file: str, state_file: Optional[str] = None,
                              now: Optional[float] = None) -> dict[str, list[dict[str, Any]]]:
    """The live host of *host_file*, read under the fake's own lock with every transition
    due by *now* (default: the wall clock) applied and saved: a copy of its guests per
    URI key.  *state_file* defaults to the fake's (``<host_file>.state.json``)."""
    host = os.path.abspath(host_file)
    states = StateFile(host, state_file or host + ".state.json")
    with states as state:
        moment = time.time() if now is None else now
        changed = drop_orphaned_migrations(state)
        for uri_state in state["uris"].values():
            changed = apply_due_transitions(uri_state, moment) or changed
        if changed:
            states.save()
        guests: dict[str, list[dict[str, Any]]] = loads(dumps(
            {key: uri_state["guests"] for key, uri_state in state["uris"].items()}))
        return guests
