"""What the fake prints: templates compiled from the recordings, tables, job statistics.

A recording's text becomes a template by replacing the domain argument, the subject's
name and UUID (and a socket path, a command, an option) with markers; the trailing
newline that virsh prints after every command (suppressed by ``-q``) is stripped from
stdout.  Without a recording the builtin fallback is used.
"""

from __future__ import annotations

import os

from virtguests.testing.recordings import load_yaml

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

DEFAULT_SOCKET = "/var/run/libvirt/libvirt-sock"
MIB = 1024 * 1024

# markers used in templates compiled from the recordings
ARG = "\x00ARG\x00"
NAME = "\x00NAME\x00"
UUID = "\x00UUID\x00"
SOCK = "\x00SOCK\x00"
CMD = "\x00CMD\x00"
OPT = "\x00OPT\x00"
HOST = "\x00HOST\x00"
"""A URI's host UUID (``capabilities``, the same-host refusal of ``migrate``)."""

STATE_TEXT = {"running": "running", "paused": "paused", "shutoff": "shut off"}

JOB_BUSY = (f"error: Failed to {CMD} domain '{ARG}'\n"
            "error: Timed out during operation: cannot acquire state change lock "
            "(held by monitor=remoteDispatchDomainManagedSave)\n")
"""Only without the recordings (fixtures/qemu-managedsave-busy, qemu-shutdown-busy)."""
TEMPLATE_SOURCES: dict[str, tuple[list[str], str, str]] = {
    "unreachable": (
        ["nohost-connect"],
        "stderr",
        "error: failed to connect to the hypervisor\n"
        f"error: Failed to connect socket to '{SOCK}': No such file or directory\n",
    ),
    "missing": (["test-domid-missing-uuid"], "stderr", f"error: failed to get domain '{ARG}'\n"),
    "requires_domain": (
        ["test-domstate-missing-arg"],
        "stderr",
        f"error: command '{CMD}' requires <domain> option\n",
    ),
    "table_exclusive": (
        ["test-list-table-uuid-error"],
        "stderr",
        f"error: Options --table and --{OPT} are mutually exclusive\n",
    ),
    "managedsave_ok": (
        ["qemu-managedsave-ok", "test-managedsave-ok"],
        "stdout",
        f"\nDomain '{ARG}' state saved by libvirt\n",
    ),
    "managedsave_busy": (
        ["qemu-managedsave-busy"],
        "stderr",
        JOB_BUSY.replace(CMD, "save"),
    ),
    "shutdown_busy": (
        ["qemu-shutdown-busy"],
        "stderr",
        JOB_BUSY.replace(CMD, "shutdown"),
    ),
    "managedsave_transient": (
        ["test-managedsave-transient"],
        "stderr",
        f"error: Failed to save domain '{ARG}' state\nerror: Requested operation is not valid: "
        "cannot do managed save for transient domain\n",
    ),
    "managedsave_not_running": (
        ["qemu-managedsave-not-running", "test-managedsave-not-running"],
        "stderr",
        f"error: Failed to save domain '{ARG}' state\n"
        "error: Requested operation is not valid: domain is not running\n",
    ),
    "shutdown_ok": (
        ["qemu-shutdown-ok", "test-shutdown-ok"],
        "stdout",
        f"Domain '{ARG}' is being shutdown\n",
    ),
    "test:shutdown_not_running": (
        ["test-shutdown-not-running"],
        "stderr",
        f"error: Failed to shutdown domain '{ARG}'\n"
        f"error: internal error: domain '{NAME}' not running\n",
    ),
    "qemu:shutdown_not_running": (
        ["qemu-shutdown-not-running"],
        "stderr",
        f"error: Failed to shutdown domain '{ARG}'\n"
        "error: Requested operation is not valid: domain is not running\n",
    ),
    "destroy_ok": (["qemu-destroy-ok", "test-destroy-ok"], "stdout", f"Domain '{ARG}' destroyed\n"),
    "destroy_not_running": (
        ["test-destroy-not-running"],
        "stderr",
        f"error: Failed to destroy domain '{ARG}'\n"
        "error: Requested operation is not valid: domain is not running\n",
    ),
    "start_ok": (["qemu-start-saved", "test-start-uuid"], "stdout", f"Domain '{NAME}' started\n"),
    "start_active": (
        ["qemu-start-active", "test-start-active"],
        "stderr",
        "error: Domain is already active\n",
    ),
    "test:start_bypass_cache": (
        ["test-start-bypass-cache"],
        "stderr",
        f"error: Failed to start domain '{NAME}'\n"
        "error: unsupported flags (0x4) in function testDomainCreateWithFlags\n",
    ),
    "test:domjobinfo": (
        ["test-domjobinfo-running"],
        "stderr",
        "error: this function is not supported by the connection driver: virDomainGetJobInfo\n",
    ),
    "qemu:domjobinfo_none": (
        ["qemu-domjobinfo-none"],
        "stdout",
        "Job type:         None        \n",
    ),
    "qemu:domjobinfo_saving": (
        ["qemu-domjobinfo-saving"],
        "stdout",
        # virsh cmdDomjobinfo: "%-17s %-12s\n", "%-17s %-12llu ms\n", "%-17s %-.3lf %s\n"
        "Job type:         Unbounded   \n"
        "Operation:        Save        \n"
        "Time elapsed:     0            ms\n"
        "Data processed:   0.000 B\n"
        "Data remaining:   0.000 B\n"
        "Data total:       0.000 B\n"
        "Memory processed: 0.000 B\n"
        "Memory remaining: 0.000 B\n"
        "Memory total:     0.000 B\n"
        "Memory bandwidth: 0.000 B/s\n",
    ),
    "qemu:domjobinfo_not_running": (
        ["qemu-domjobinfo-shutoff"],
        "stderr",
        "error: Requested operation is not valid: domain is not running\n",
    ),
    "domtime_not_running": (
        ["test-domtime-sync-shutoff"],
        "stderr",
        "error: Requested operation is not valid: domain is not running\n",
    ),
    "qemu:domtime_no_agent": (
        ["qemu-domtime-sync"],
        "stderr",
        "error: argument unsupported: QEMU guest agent is not configured\n",
    ),
    "managedsave_remove_ok": (
        ["test-managedsave-remove"],
        "stdout",
        f"Removed managedsave image for domain '{ARG}'",
    ),
    "qemu:domjobinfo_migrating": (
        ["qemu-domjobinfo-migrating"],
        "stdout",
        "Job type:         Unbounded   \n"
        "Operation:        Outgoing migration\n"
        "Time elapsed:     0            ms\n"
        "Data processed:   0.000 B\n"
        "Data remaining:   0.000 B\n"
        "Data total:       0.000 B\n"
        "Memory processed: 0.000 B\n"
        "Memory remaining: 0.000 B\n"
        "Memory total:     0.000 B\n",
    ),
    "qemu:domjobinfo_incoming": (
        ["qemu-domjobinfo-incoming"],
        "stderr",
        "error: Operation not supported: migration statistics are available only on the "
        "source host\n",
    ),
    "domjobabort_ok": (["qemu-domjobabort-migrating"], "stdout", ""),
    "domjobabort_none": (
        ["qemu-domjobabort-none"],
        "stderr",
        "error: Requested operation is not valid: no job is active on the domain\n",
    ),
    "migrate_ok": (["qemu-migrate-ok"], "stdout", ""),
    "migrate_busy": (["qemu-migrate-busy"], "stderr", JOB_BUSY.split("\n", 1)[1]),
    "migrate_aborted": (
        ["qemu-migrate-aborted"],
        "stderr",
        "error: operation aborted: job 'migration out' canceled by client\n",
    ),
    "migrate_unreachable": (
        ["qemu-migrate-unreachable"],
        "stderr",
        f"error: Failed to connect socket to '{SOCK}': No such file or directory\n",
    ),
    "migrate_same_host": (
        ["qemu-migrate-same-host"],
        "stderr",
        f"error: internal error: Attempt to migrate guest to the same host {HOST}\n",
    ),
    "migrate_refused": (
        ["qemu-migrate-local-disk"],
        "stderr",
        "error: Unsafe migration: Migration without shared storage is unsafe\n",
    ),
    "migrate_not_running": (
        ["qemu-migrate-not-running"],
        "stderr",
        "error: Requested operation is not valid: domain is not running\n",
    ),
    "nodememstats": (
        ["qemu-nodememstats"],
        "stdout",
        "total  :                    0 KiB\nfree   :                    0 KiB\n"
        "buffers:                    0 KiB\ncached :                    0 KiB\n",
    ),
    "capabilities": (
        ["qemu-capabilities"],
        "stdout",
        f"<capabilities>\n\n  <host>\n    <uuid>{HOST}</uuid>\n  </host>\n\n</capabilities>\n",
    ),
    "qemu:dominfo_active": (
        ["qemu-dominfo-running"],
        "stdout",
        "Id:             1\nName:           x\nUUID:           x\nState:          running\n"
        "Max memory:     0 KiB\nUsed memory:    0 KiB\nPersistent:     yes\n"
        "Managed save:   no\n",
    ),
    "qemu:dominfo_inactive": (
        ["qemu-dominfo-shutoff"],
        "stdout",
        "Id:             -\nName:           x\nUUID:           x\nState:          shut off\n"
        "Max memory:     0 KiB\nUsed memory:    0 KiB\nPersistent:     yes\n"
        "Managed save:   no\n",
    ),
    "test:dominfo_active": (
        ["test-dominfo-running"],
        "stdout",
        "Id:             1\nName:           x\nUUID:           x\nState:          running\n"
        "Max memory:     0 KiB\nUsed memory:    0 KiB\nPersistent:     yes\n"
        "Managed save:   no\n",
    ),
    "test:dominfo_inactive": (
        ["test-dominfo-saved"],
        "stdout",
        "Id:             -\nName:           x\nUUID:           x\nState:          shut off\n"
        "Max memory:     0 KiB\nUsed memory:    0 KiB\nPersistent:     yes\n"
        "Managed save:   no\n",
    ),
    # lifecycle events (virsh event --loop --event lifecycle): a guest that left by
    # migration (running, paused), one that arrived (running, paused); only the event
    # lines, not what virsh prints when the recording's SIGINT ended it
    "event_migrated_out": (
        ["qemu-event-migrate-home"],
        "stdout",
        f"event 'lifecycle' for domain '{NAME}': Stopped Migrated\n",
    ),
    "event_migrated_out_paused": (
        ["qemu-event-migrate-paused-home"],
        "stdout",
        f"event 'lifecycle' for domain '{NAME}': Stopped Migrated\n",
    ),
    "event_migrated_in": (
        ["qemu-event-migrate-peer"],
        "stdout",
        f"event 'lifecycle' for domain '{NAME}': Started Migrated\n"
        f"event 'lifecycle' for domain '{NAME}': Resumed Migrated\n",
    ),
    "event_migrated_in_paused": (
        ["qemu-event-migrate-paused-peer"],
        "stdout",
        f"event 'lifecycle' for domain '{NAME}': Started Migrated\n",
    ),
}
"""role ("driver:role" where the drivers differ) -> (candidate recordings by file stem,
stream, builtin fallback)."""
BUILTIN = {
    "managedsave_none": f"Domain '{ARG}' has no manage save image; removal skipped",
    "fail_save": f"error: Failed to save domain '{ARG}' state\n"
    "error: operation failed: domain save job: unexpectedly failed\n",
    "fail_start": f"error: Failed to start domain '{NAME}'\n"
    "error: internal error: qemu unexpectedly closed the monitor\n",
    "fail_shutdown": f"error: Failed to shutdown domain '{ARG}'\n"
    "error: operation failed: guest shutdown request failed\n",
    "migrate_dest_active": f"error: Requested operation is not valid: domain '{NAME}' is "
    "already active\n",
    "domjobabort_unsupported": "error: Operation not supported: abort of this job is not "
    "simulated\n",
    # not recorded yet: boots, shutdowns, saves and destroys all print these two
    "event_started": f"event 'lifecycle' for domain '{NAME}': Started Booted\n",
    "event_stopped": f"event 'lifecycle' for domain '{NAME}': Stopped Shutdown\n",
}
"""Messages no recording can produce with the test driver."""


def template_from_recording(recording: dict[str, Any], stream: str) -> str:
    text: str = recording[stream]
    if stream == "stdout" and text.endswith("\n") and recording["argv"][0] != "-q":
        text = text[:-1]  # the newline virsh prints after each command
    words = [arg for arg in recording["argv"] if not arg.startswith("-")]
    domain = words[1] if len(words) > 1 else None
    subjects = recording.get("subjects") or []
    if domain is not None:
        text = text.replace(f"'{domain}'", f"'{ARG}'")
    if len(subjects) == 1:
        text = text.replace(f"'{subjects[0]['name']}'", f"'{NAME}'")
    text = text.replace("'/nonexistent/sock'", f"'{SOCK}'")
    if recording["argv"][:1] == ["domstate"]:
        text = text.replace("'domstate'", f"'{CMD}'")
    text = text.replace("--uuid are", f"--{OPT} are")
    return text


def events_from_recording(recording: dict[str, Any]) -> str:
    """A recorded ``virsh event --loop``'s event lines (not what virsh printed when the
    recording's SIGINT ended it), its subject's name a marker."""
    [subject] = recording["subjects"]
    lines = [line for line in str(recording["stdout"]).splitlines(True)
             if line.startswith(EVENT_LINE)]
    return "".join(lines).replace(f"'{subject['name']}'", f"'{NAME}'")


def compile_templates(fixtures: str) -> dict[str, Any]:
    """Every role's template and the recording it came from ("builtin" if none)."""
    templates: dict[str, str] = {}
    sources: dict[str, str] = {}
    for role, (stems, stream, fallback) in TEMPLATE_SOURCES.items():
        templates[role] = fallback
        sources[role] = "builtin"
        for stem in stems:
            path = os.path.join(fixtures, stem + ".yaml")
            if not os.path.exists(path):
                continue
            recording = load_yaml(path)
            if stream == "stderr" and recording["exit"] == 0:
                continue  # e.g. qemu domtime --sync succeeded: the guest has an agent
            if role.startswith("event_"):
                templates[role] = events_from_recording(recording)
            else:
                templates[role] = template_from_recording(recording, stream)
            sources[role] = stem
            break
    templates.update(BUILTIN)
    recorded_host = _recorded_host_uuid(fixtures)
    if recorded_host:
        for role, text in templates.items():
            templates[role] = text.replace(recorded_host, HOST)
    return {"templates": templates, "sources": sources}


def _recorded_host_uuid(fixtures: str) -> str:
    """The host UUID of the daemon the migrate recordings came from (its capabilities):
    a marker wherever a recording prints it."""
    path = os.path.join(fixtures, "qemu-capabilities.yaml")
    if not os.path.exists(path):
        return ""
    text = str(load_yaml(path)["stdout"])
    head = text.split("<host>", 1)[-1].split("</uuid>", 1)[0]
    return head.split("<uuid>", 1)[-1].strip() if "<uuid>" in head else ""


def fill(templates: dict[str, str], driver: str, role: str, domain: Optional[str],
         guest: Optional[dict[str, Any]], markers: dict[str, str]) -> str:
    """A role's template for this driver, with the command's domain argument, the guest
    and any other *markers* (``{"opt": "uuid"}`` fills ``OPT``) substituted."""
    text = templates.get(f"{driver}:{role}") or templates[role]
    if domain is not None:
        text = text.replace(ARG, domain)
    if guest is not None:
        text = text.replace(NAME, guest["name"]).replace(UUID, guest["uuid"])
    for key, value in markers.items():
        text = text.replace(f"\x00{key.upper()}\x00", value)
    return text


EVENT_LINE = "event 'lifecycle' for domain '"
DEFINED = "': Defined "


def lifecycle_events(templates: dict[str, str], seen: dict[str, Any],
                     current: dict[str, Any]) -> str:
    """The event lines between two looks at a URI (``state.lifecycle_view``), in the
    recorded forms.  A guest that left by migration prints what the source daemon
    printed (running: ``Suspended Migrated``, ``Stopped Migrated``); one that arrives
    prints the destination's first line (``Started Migrated``) when its copy appears
    (``list`` shows it then, ``paused``) and the rest when it has arrived (``Defined
    Added`` only if it is persistent there, then ``Resumed Migrated``, or ``Suspended
    Paused`` for a guest that was paused).  Anything else is a start or a stop."""
    out = []
    for uuid in [*seen, *(uuid for uuid in current if uuid not in seen)]:
        name, before, was_incoming, old_move = seen.get(uuid, ("", "gone", False, None))
        name, after, incoming, move = current.get(uuid, (name, "gone", False, old_move))
        was_active = before not in ("shutoff", "gone")
        is_active = after not in ("shutoff", "gone")
        lines: list[str] = []
        if move is not None and move != old_move:
            paused = "_paused" if move["state"] == "paused" else ""
            lines = templates[f"event_migrated_{move['way']}{paused}"].splitlines(True)
            if move["way"] == "in":
                if was_active and was_incoming:
                    lines = lines[1:]  # its Started line came when the copy appeared
                if not move["persistent"]:
                    lines = [line for line in lines if DEFINED not in line]
        elif is_active and not was_active:
            role = "event_migrated_in" if incoming else "event_started"
            lines = templates[role].splitlines(True)[:1]
        elif was_active and not is_active:
            lines = templates["event_stopped"].splitlines(True)
        out += [line.replace(NAME, name) for line in lines]
    return "".join(out)


def socket_of(uri: str) -> str:
    """The socket a URI connects to (``?socket=``, else libvirtd's default)."""
    if "socket=" in uri:
        return uri.split("socket=", 1)[1].split("&", 1)[0]
    return DEFAULT_SOCKET


def unreachable_error(templates: dict[str, str], uri: str) -> str:
    return templates["unreachable"].replace(SOCK, socket_of(uri))


def _c_locale(environ: Mapping[str, str]) -> bool:
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = environ.get(var)
        if value:
            lower = value.lower()
            return not ("utf-8" in lower or "utf8" in lower)
    return True


def _cell(text: str, c_locale: bool) -> tuple[str, int]:
    """vshTableSafeEncode: the cell text and its display width."""
    if text.isascii():
        return text, len(text)
    if c_locale:
        # libvirt 9.0 in the C locale prints every non-ASCII byte as "\xff"
        out = "".join(char if char.isascii() else "\\xff" * len(char.encode())
                      for char in text)
        return out, len(out)
    import unicodedata

    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return text, width


def render_table(header: list[str], rows: list[list[str]], quiet: bool,
                 environ: Optional[Mapping[str, str]] = None) -> str:
    """virsh's table; cells as in the locale of *environ* (default: ``os.environ``)."""
    c_locale = _c_locale(os.environ if environ is None else environ)
    cells = [[_cell(text, c_locale) for text in row] for row in rows]
    header_cells = [(title, len(title)) for title in header]
    all_rows = cells if quiet else [header_cells, *cells]
    widths = [max([row[column][1] for row in all_rows] or [0])
              for column in range(len(header))]
    lines = []
    for row in all_rows:
        parts = []
        for column, (text, width) in enumerate(row):
            pad = " " * (widths[column] - width) if column < len(row) - 1 else ""
            parts.append(text + pad)
        lines.append(" " + "   ".join(parts) + "\n")
        if not quiet and row is header_cells:
            lines.append("-" * (sum(widths) + 3 * len(widths)) + "\n")
    return "".join(lines)


def _pretty(value: float) -> str:
    """vshPrettyCapacity + "%-.3lf %s"."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{value:.3f} {units[unit]}"


def domjobinfo_saving(template: str, guest: dict[str, Any], now: float) -> str:
    """``domjobinfo`` of a guest being saved: progress from the job's start and end."""
    job = guest["job"]
    elapsed = max(0.0, now - job["start"])
    duration = max(job["end"] - job["start"], 1e-9)
    total = float(guest["memory_mib"]) * MIB
    done = total * min(1.0, elapsed / duration)
    bandwidth = total / duration
    values = {
        "Time elapsed:": f"{int(elapsed * 1000):<12} ms",
        "Data processed:": _pretty(done),
        "Data remaining:": _pretty(total - done),
        "Data total:": _pretty(total),
        "Memory processed:": _pretty(done),
        "Memory remaining:": _pretty(total - done),
        "Memory total:": _pretty(total),
        "Memory bandwidth:": _pretty(bandwidth) + "/s",
    }
    lines = []
    for line in template.splitlines(keepends=True):
        label = line[:17].rstrip()
        if label in values:
            line = f"{label:<17} {values[label]}\n"
        lines.append(line)
    return "".join(lines)


def _relabel(template: str, width: int, values: dict[str, str]) -> str:
    """*template*'s ``LABEL: value`` lines with the values of *values* (by label, in a
    column *width* wide, as virsh prints them); other lines as recorded."""
    out = []
    for line in template.splitlines(keepends=True):
        label = line.split(":", 1)[0] + ":" if ":" in line else ""
        if label in values:
            line = f"{label:<{width}} {values[label]}\n"
        out.append(line)
    return "".join(out)


def dominfo(template: str, guest: dict[str, Any]) -> str:
    """``dominfo`` of *guest*, from the recording of a guest as active (or not)."""
    kib = str(int(float(guest["memory_mib"]) * 1024))
    return _relabel(template, 15, {
        "Id:": "-" if guest["id"] is None else str(guest["id"]),
        "Name:": guest["name"],
        "UUID:": guest["uuid"],
        "State:": STATE_TEXT[guest["state"]],
        "Max memory:": f"{kib} KiB",
        "Used memory:": f"{kib} KiB",
        "Persistent:": "yes" if guest["persistent"] else "no",
        "Managed save:": "yes" if guest["managed_save"] else "no",
    })


def nodememstats(template: str, total_kib: int, free_kib: int) -> str:
    """``nodememstats`` ("%-7s: %20llu KiB"): *free_kib* all free, no buffers or cache."""
    values = {"total": total_kib, "free": free_kib, "buffers": 0, "cached": 0}
    out = []
    for line in template.splitlines(keepends=True):
        label = line.split(":", 1)[0].strip()
        if label in values:
            line = f"{label:<7}: {values[label]:>20} KiB\n"
        out.append(line)
    return "".join(out)


def write(stream: Any, text: str) -> None:
    """Print *text* as virsh does: bytes (names may not be UTF-8), flushed at once."""
    if text:
        stream.buffer.write(text.encode("utf-8", "surrogateescape"))
        stream.flush()
