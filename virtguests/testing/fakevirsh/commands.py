"""Running a parsed call against the host: what each simulated command does and prints.

Everything a call changes happens under the state file's lock; hanging and waiting
(for a job, a lock, a ``slow`` fault) happen outside it, so other calls go on.
"""

from __future__ import annotations

import os
import sys
import time

from virtguests.testing.fakevirsh.commandline import VirshCall
from virtguests.testing.fakevirsh.errors import Failure, LockWait
from virtguests.testing.fakevirsh.faults import Injected, inject
from virtguests.testing.fakevirsh.rendering import (
    CMD,
    STATE_TEXT,
    dominfo,
    domjobinfo_saving,
    fill,
    lifecycle_events,
    nodememstats,
    render_table,
    socket_of,
    unreachable_error,
    write,
)
from virtguests.testing.fakevirsh.state import (
    HostClock,
    StateFile,
    active_kib,
    apply_due_transitions,
    cancel_migration,
    drop_orphaned_migrations,
    find_guest,
    lifecycle_view,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from typing import Any, NoReturn, Optional

CONNECT_FAILED = "error: failed to connect to the hypervisor"
MIGRATE_MIB_PER_SECOND = 512.0
"""How fast a guest migrates unless it says (``migrate_seconds``): its memory at this rate."""


class CommandRun:
    """One command on one URI: what it prints (``out`` also with ``-q``, ``extra`` not)."""

    def __init__(self, call: VirshCall, state: dict[str, Any], uri_state: dict[str, Any],
                 clock: HostClock, uri_key: str = "default") -> None:
        self.call = call
        self.state = state
        self.uri_state = uri_state
        self.uri_key = uri_key
        self.hang = False  # the command hangs once the state is saved (a hung peer)
        self.migration: Optional[dict[str, Any]] = None  # the migrate job to wait for
        self.clock = clock
        self.templates: dict[str, str] = state["templates"]
        self.out = ""  # printed also with -q
        self.extra = ""  # suppressed by -q
        self.lock_waited = False

    def render(self, role: str, guest: Optional[dict[str, Any]] = None,
               **markers: str) -> str:
        return fill(self.templates, self.uri_state["driver"], role, self.call.domain, guest,
                    markers)

    def fail(self, role: str, guest: Optional[dict[str, Any]] = None, **markers: str
             ) -> NoReturn:
        raise Failure(self.render(role, guest, **markers))

    def lock_busy(self, guest: dict[str, Any], role: str, now: float) -> NoReturn:
        """libvirt waits the URI's lock_wait for a job's lock, then fails; the job may end
        first."""
        if self.lock_waited:
            self.fail(role, guest)
        raise LockWait(min(float(guest["job"]["end"]), now + float(self.uri_state["lock_wait"])))


def run_list(run: CommandRun) -> None:
    options = run.call.options
    if "table" in options:
        for other in ("name", "uuid"):
            if other in options:
                raise Failure(run.render("table_exclusive", OPT=other))
    shutoff_filter = "state-shutoff" in options
    want_active = "all" in options or not ("inactive" in options or shutoff_filter)
    want_inactive = "all" in options or "inactive" in options or shutoff_filter
    states = {name for name in ("running", "paused", "shutoff") if f"state-{name}" in options}
    picked = []
    for guest in run.uri_state["guests"]:
        active = guest["state"] != "shutoff"
        if not (want_active if active else want_inactive):
            continue
        if states and guest["state"] not in states:
            continue
        persistent, transient = "persistent" in options, "transient" in options
        if persistent != transient and guest["persistent"] != persistent:
            continue
        with_image = "with-managed-save" in options
        without_image = "without-managed-save" in options
        if with_image != without_image and guest["managed_save"] != with_image:
            continue
        picked.append(guest)

    def order(guest: dict[str, Any]) -> tuple[int, int, bytes]:
        if guest["id"] is not None:
            return (0, guest["id"], b"")
        return (1, 0, guest["name"].encode().lower())

    picked.sort(key=order)
    if "uuid" in options or "name" in options:
        lines = []
        for guest in picked:
            fields = []
            if "uuid" in options:
                fields.append(guest["uuid"])
            if "name" in options:
                fields.append(guest["name"])
            lines.append(" ".join(fields) + "\n")
        run.out += "".join(lines)
    else:
        rows = [
            ["-" if guest["id"] is None else str(guest["id"]), guest["name"],
             STATE_TEXT[guest["state"]]]
            for guest in picked
        ]
        run.out += render_table(["Id", "Name", "State"], rows, run.call.quiet,
                                run.call.process.environ)


def run_guest_command(run: CommandRun, guest: dict[str, Any], now: float) -> bool:
    """Run a domain command; True if the state changed."""
    command = run.call.command
    options = run.call.options
    driver = run.uri_state["driver"]
    active = guest["state"] != "shutoff"
    if command == "domname":
        run.out += guest["name"] + "\n"
    elif command == "domid":
        run.out += ("-" if guest["id"] is None else str(guest["id"])) + "\n"
    elif command == "domuuid":
        run.out += guest["uuid"] + "\n"
    elif command == "domstate":
        text = STATE_TEXT[guest["state"]]
        if "reason" in options:
            text += f" ({guest['reason']})"
        run.out += text + "\n"
    elif command == "domjobinfo":
        if driver == "test":
            run.fail("domjobinfo", guest)
        if not active:
            run.fail("domjobinfo_not_running", guest)
        op = guest["job"]["op"] if guest["job"] is not None else None
        if op == "save":
            run.out += domjobinfo_saving(run.render("domjobinfo_saving", guest), guest, now)
        elif op == "migrate":
            run.out += domjobinfo_saving(run.render("domjobinfo_migrating", guest), guest, now)
        elif op == "incoming":
            run.fail("domjobinfo_incoming", guest)
        else:
            run.out += run.render("domjobinfo_none", guest)
    elif command == "dominfo":
        role = "dominfo_active" if active else "dominfo_inactive"
        run.out += dominfo(run.render(role, guest), guest)
    elif command == "domjobabort":
        if driver == "test":
            run.call.unsupported("domjobabort on the test driver is not simulated")
        if not active:
            run.fail("domjobinfo_not_running", guest)
        if guest["job"] is None:
            run.fail("domjobabort_none", guest)
        if guest["job"]["op"] != "migrate":
            run.call.unsupported(f"domjobabort of a {guest['job']['op']} job is not simulated")
        cancel_migration(run.state, guest["job"]["id"], "migrate_aborted")
        run.extra += run.render("domjobabort_ok", guest)
        return True
    elif command == "migrate":
        return run_migrate(run, guest, now)
    elif command == "domtime":
        if not active:
            run.fail("domtime_not_running", guest)
        if driver == "qemu" and not guest["agent"]:
            run.fail("domtime_no_agent", guest)
    elif command == "managedsave-remove":
        if guest["managed_save"] and not active:
            guest["managed_save"] = False
            run.extra += run.render("managedsave_remove_ok", guest)
            return True
        run.extra += run.render("managedsave_none", guest)
    elif command == "destroy":
        if not active:
            run.fail("destroy_not_running", guest)
        if guest["job"] is not None and guest["job"]["op"] in ("migrate", "incoming"):
            cancel_migration(run.state, guest["job"]["id"], "migrate_aborted")
        guest.update(state="shutoff", reason="destroyed", id=None, job=None, shutdown_at=None)
        run.extra += run.render("destroy_ok", guest)
        return True
    elif command == "shutdown":
        if not active:
            run.fail("shutdown_not_running", guest)
        if guest["job"] is not None:
            run.lock_busy(guest, "shutdown_busy", now)
        if guest["fail_shutdown"]:
            run.fail("fail_shutdown", guest)
        run.extra += run.render("shutdown_ok", guest)
        if not guest["ignore_shutdown"] and guest["shutdown_at"] is None:
            guest["shutdown_at"] = now + float(guest["shutdown_seconds"])
            return True
    elif command == "start":
        if active or guest["job"] is not None:
            run.fail("start_active", guest)
        if driver == "test" and "bypass-cache" in options:
            run.fail("start_bypass_cache", guest)
        if guest["fail_start"]:
            run.fail("fail_start", guest)
        reason = "restored" if guest["managed_save"] else "booted"
        end = now + float(guest["start_seconds"])
        guest["job"] = {"op": "start", "start": now, "end": end, "reason": reason}
        run.extra += run.render("start_ok", guest)
        return True
    elif command == "managedsave":
        if not guest["persistent"]:
            run.fail("managedsave_transient", guest)
        if not active:
            run.fail("managedsave_not_running", guest)
        if guest["job"] is not None:
            run.lock_busy(guest, "managedsave_busy", now)
        if guest["fail_save"]:
            run.fail("fail_save", guest)
        guest["job"] = {"op": "save", "start": now, "end": now + float(guest["save_seconds"])}
        if driver == "qemu" and guest["state"] == "running":
            guest.update(state="paused", reason="saving")
        run.extra += run.render("managedsave_ok", guest)
        return True
    return False


def find_uri(state: dict[str, Any], uri: str) -> Optional[str]:
    """The host file's key of *uri*: a key itself, or what a key's ``virsh uri`` prints."""
    if uri in state["uris"]:
        return uri
    return next((key for key, conf in state["uris"].items() if conf["uri"] == uri), None)


def run_migrate(run: CommandRun, guest: dict[str, Any], now: float) -> bool:
    """``migrate [OPTIONS] DOMAIN DESTURI``: the guest goes on running here while a copy
    arrives at DESTURI's host ``paused (migrating)`` (both recorded); after its time
    (``migrate_seconds``, else its memory at MIGRATE_MIB_PER_SECOND) it runs there
    ``running (migrated)``, persistent with ``--persistent`` (or if defined there), and
    here it is undefined (``--undefinesource``, or transient) or ``shut off (migrated)``.
    """
    call = run.call
    if run.uri_state["driver"] == "test":
        call.unsupported("migrate on the test driver is not simulated")
    if guest["state"] == "shutoff":
        run.fail("migrate_not_running", guest)
    if guest["job"] is not None:
        run.lock_busy(guest, "migrate_busy", now)
    dest_key = find_uri(run.state, call.values["desturi"])
    if dest_key is None:
        call.unsupported(f"destination URI {call.values['desturi']!r} is not in the host file")
    dest = run.state["uris"][dest_key]
    apply_due_transitions(dest, now)
    if dest["unreachable"] or now < dest["unreachable_until"]:
        run.fail("migrate_unreachable", guest, SOCK=socket_of(dest["uri"]))
    if dest["hang"]:
        run.hang = True
        return False
    if dest["host_uuid"] == run.uri_state["host_uuid"]:
        run.fail("migrate_same_host", guest, HOST=dest["host_uuid"])
    if guest["fail_migrate"]:
        run.fail("migrate_refused", guest)
    there = find_guest(dest, guest["uuid"], ("uuid",))
    if there is not None and (there["state"] != "shutoff" or there["job"] is not None):
        run.fail("migrate_dest_active", there)
    seconds = guest["migrate_seconds"]
    if seconds is None:
        seconds = float(guest["memory_mib"]) / MIGRATE_MIB_PER_SECOND
    token = f"{run.uri_key}|{guest['uuid']}|{now!r}"
    end = now + float(seconds)
    guest["job"] = {"op": "migrate", "start": now, "end": end, "id": token,
                    "undefine": "undefinesource" in call.options, "owner": os.getpid()}
    arriving = dict(guest)
    arriving.update(
        id=dest["next_id"], state="paused", reason="migrating", managed_save=False,
        shutdown_at=None, persistent=there is not None and there["persistent"],
        job={"op": "incoming", "start": now, "end": end, "id": token,
             "persistent": "persistent" in call.options, "replaced": there,
             "state": guest["state"], "reason": guest["reason"]})
    dest["next_id"] += 1
    if there is not None:
        dest["guests"][dest["guests"].index(there)] = arriving
    else:
        dest["guests"].append(arriving)
    run.migration = guest["job"]
    run.extra += run.render("migrate_ok", guest)
    return True


def wait_migration(call: VirshCall, state_file: StateFile, clock: HostClock,
                   job: dict[str, Any], templates: dict[str, str]) -> Optional[str]:
    """Wait (outside the lock) for the migrate job *job* to end: None once the guest has
    arrived, or the error an abort (``domjobabort``, ``destroy``) left for this call.

    If the call itself ends first (killed at its timeout, SIGTERM), the migration is
    cancelled, as libvirt cancels one whose client went away.
    """
    token, end = job["id"], float(job["end"])
    try:
        while True:
            with state_file as state:
                now = clock.now()
                outcome = state.setdefault("migrations", {}).pop(token, None)
                if outcome is not None or now >= end:
                    for uri_state in state["uris"].values():
                        apply_due_transitions(uri_state, now)
                    state_file.save()
                    return None if outcome is None else fill(
                        templates, "qemu", outcome, call.domain, None, {})
            clock.nap(end)
    except BaseException:
        with state_file as state:
            cancel_migration(state, token, None)
            state_file.save()
        raise


def event_loop(call: VirshCall, state_file: StateFile, clock: HostClock) -> int:
    """``virsh event --loop --event lifecycle``: lines per start, stop or migration
    (``rendering.lifecycle_events``).

    Like real virsh it runs until killed; it looks at the host every 20 ms and
    applies due transitions itself, so stops are reported as they happen.
    """
    seen: Optional[dict[str, Any]] = None
    injected: Optional[Injected] = None
    while True:
        with state_file as state:
            uri_state = state["uris"].get(call.uri_arg or "default")
            if uri_state is None:
                call.unsupported(f"URI {call.uri_arg!r} is not in the host file")
            now = clock.now()
            dirty = drop_orphaned_migrations(state)
            dirty = apply_due_transitions(uri_state, now) or dirty
            fresh = injected is None
            if injected is None:
                injected = inject(state, call, call.uri_arg or "default", uri_state, now)
                dirty = injected.counted or dirty
                if uri_state["hang_after_calls"] or uri_state["hang"]:
                    uri_state["calls"] += 1
                    dirty = True
            if dirty:
                state_file.save()
            if uri_state["unreachable"] or now < uri_state["unreachable_until"]:
                write(sys.stderr, unreachable_error(state["templates"], uri_state["uri"]))
                return 1
            hang = (uri_state["hang"] or injected.hang
                    or 0 < uri_state["hang_after_calls"] < uri_state["calls"])
            current = lifecycle_view(uri_state)
            templates = state["templates"]
        if hang:
            clock.hang()  # outside the lock: other calls go on
        if fresh:
            try:
                injected.act(call, uri_state)
            except Failure as failure:
                write(sys.stderr, failure.stderr)
                return 1
            injected.wait(clock)
            if injected.action == "garbage":
                write(sys.stdout, injected.output("", uri_state))
        if seen is not None:
            lines = lifecycle_events(templates, seen, current)
            if lines:
                write(sys.stdout, lines)
        seen = current
        time.sleep(0.02)


def execute_script(call: VirshCall, state_file: StateFile, clock: HostClock, *,
                   count_call: bool = True) -> tuple[int, str, str]:
    """A command string: its commands in order on one connection, as virsh runs them.

    The exit status is the last command's; a failed command does not stop the
    rest, but a failed connection ends the whole run (nothing else is printed).
    """
    status, out, err = 0, "", ""
    for number, part in enumerate(call.script):
        if part.command == "event":
            part.unsupported("'event' inside a command string is not simulated")
        status, text, error = execute(part, state_file, clock,
                                      count_call=count_call and number == 0)
        if status != 0 and error.startswith(CONNECT_FAILED):
            return status, "", error
        out, err = out + text, err + error
    return status, out, err


def execute(call: VirshCall, state_file: StateFile, clock: HostClock, *,
            count_call: bool = True, lock_waited: bool = False) -> tuple[int, str, str]:
    """Run one virsh call: everything under one lock, then hang/wait outside it.

    *count_call* is False for the later commands of a command string, which
    share the first one's process (``unreachable_calls`` counts processes).
    A command that needs a guest's job lock while another job holds it waits
    (outside the state lock) and is run again once, *lock_waited*.
    """
    wait_job: Optional[dict[str, Any]] = None
    lock_until: Optional[float] = None
    hang = False
    blank = "" if call.quiet else "\n"
    with state_file as state:
        uri_key = call.uri_arg
        if uri_key is None:
            environ = call.process.environ
            env_uri = (environ.get("VIRSH_DEFAULT_CONNECT_URI")
                       or environ.get("LIBVIRT_DEFAULT_URI"))
            uri_key = env_uri if env_uri and env_uri in state["uris"] else "default"
        uri_state = state["uris"].get(uri_key)
        if uri_state is None:
            call.unsupported(f"URI {uri_key!r} is not in the host file {state_file.host}")
        now = clock.now()
        dirty = drop_orphaned_migrations(state)
        dirty = apply_due_transitions(uri_state, now) or dirty
        down = uri_state["unreachable"] or now < uri_state["unreachable_until"]
        counts_calls = (uri_state["unreachable_calls"] or uri_state["hang_after_calls"]
                        or uri_state["hang"])
        if counts_calls and count_call:
            uri_state["calls"] += 1
            dirty = True
            down = down or uri_state["calls"] <= uri_state["unreachable_calls"]
        run = CommandRun(call, state, uri_state, clock, uri_key)
        run.lock_waited = lock_waited
        injected = inject(state, call, uri_key, uri_state, now)  # the fault layer
        dirty = injected.counted or dirty
        try:
            injected.act(call, uri_state)
            if down:
                raise Failure(unreachable_error(state["templates"], uri_state["uri"]),
                              extra_newline=False)
            if (uri_state["hang"] or injected.hang
                    or 0 < uri_state["hang_after_calls"] < uri_state["calls"]):
                hang = True
            elif call.command == "uri":
                run.out += uri_state["uri"] + "\n"
            elif call.command == "echo":
                run.out += " ".join(call.words)
            elif call.command == "list":
                run_list(run)
            elif call.command == "nodememstats":
                free = uri_state["free_kib"] - (active_kib(uri_state)
                                                - uri_state["built_active_kib"])
                run.out += nodememstats(run.render("nodememstats"), uri_state["memory_kib"],
                                        max(0, free))
            elif call.command == "capabilities":
                run.out += run.render("capabilities", HOST=uri_state["host_uuid"])
            elif call.command != "connect":
                if call.domain is None:
                    template = state["templates"]["requires_domain"].replace(CMD, call.command)
                    raise Failure(template, extra_newline=False)
                guest = find_guest(uri_state, call.domain, call.lookup)
                if guest is None:
                    run.fail("missing")
                if call.command in guest["hang"]:
                    hang = True
                else:
                    dirty = run_guest_command(run, guest, now) or dirty
                    hang = run.hang
                    if guest["job"] is not None and call.command in ("managedsave", "start"):
                        wait_job = guest["job"]
        except Failure as failure:
            if dirty:
                state_file.save()
            return 1, blank if failure.extra_newline else "", failure.stderr
        except LockWait as busy:
            lock_until = busy.until
        if dirty:
            state_file.save()
    if hang:
        clock.hang()
    if lock_until is not None:
        clock.wait_until(lock_until)
        return execute(call, state_file, clock, count_call=False, lock_waited=True)
    if run.migration is not None:
        error = wait_migration(call, state_file, clock, run.migration, state["templates"])
        if error is not None:
            return 1, blank, error
    if wait_job is not None:
        clock.wait_until(wait_job["end"])
        with state_file as state:
            if apply_due_transitions(state["uris"][uri_key], clock.now()):
                state_file.save()
    injected.wait(clock)
    out = run.out if call.quiet else run.out + run.extra + "\n"
    return 0, injected.output(out, uri_state), ""
