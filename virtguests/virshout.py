"""Parsers for the virsh output forms we read (see fixtures/ for recordings).

Each parser is strict: output we do not understand raises ``OutputError``
naming the command, instead of being half-read into a wrong guest list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from virtguests.model import is_uuid
from virtguests.virsh import VirshError

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


class OutputError(VirshError):
    """virsh exited 0 but printed something we cannot trust."""


@dataclass(frozen=True)
class Listed:
    uuid: str
    name: str


def lines(text: str, *, keepends: bool = False) -> list[str]:
    """virsh's output lines: split at ``\n`` only.

    ``str.splitlines`` also splits at U+2028, U+2029, U+0085 and friends, which
    libvirt allows in a guest's name and virsh prints raw: one tenant's name
    would then break the listing of every guest on the host.
    """
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
        return [p + "\n" for p in parts] if keepends else parts
    if keepends:
        return [p + "\n" for p in parts[:-1]] + parts[-1:]
    return parts


def uuid_names(argv: Sequence[str], text: str) -> list[Listed]:
    """``virsh list --uuid --name [...]``: one ``UUID NAME`` per line.

    Names may contain spaces, so only the first space separates.  Xen's
    Domain-0 (all-zero UUID) is never a guest we act on.
    """
    out: list[Listed] = []
    for number, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        uuid, sep, name = line.partition(" ")
        if not sep or not is_uuid(uuid) or not name:
            raise OutputError(
                argv, f"unexpected output line {number}: {line[:120]!r} (expected 'UUID NAME')"
            )
        if uuid == ZERO_UUID:
            continue
        out.append(Listed(uuid.lower(), name))
    return out


def uuids(argv: Sequence[str], text: str) -> list[str]:
    """``virsh list --uuid [...]``: one UUID per line."""
    out: list[str] = []
    for number, line in enumerate(lines(text), 1):
        item = line.strip()
        if not item:
            continue
        if not is_uuid(item):
            raise OutputError(
                argv, f"unexpected output line {number}: {line[:120]!r} (expected a UUID)"
            )
        if item != ZERO_UUID:
            out.append(item.lower())
    return out


def batch_parts(text: str, mark: str) -> list[str]:
    """Split the output of ``a; echo MARK; b`` into the output of a and of b.

    A guest line always starts with a UUID, so a line that is exactly *mark*
    can only come from the echo.
    """
    parts = [""]
    for line in lines(text, keepends=True):
        if line.rstrip("\n") == mark:
            parts.append("")
        else:
            parts[-1] += line
    return parts


_STARTED = re.compile(r"^Domain '(?P<name>.*)' started$", re.MULTILINE)

class StartRefusal(Enum):
    """Why ``virsh start`` refused, where the reason changes what we do."""

    ALREADY_ACTIVE = "already active"
    GONE = "gone"
    UNREACHABLE = "unreachable"


START_REFUSALS = {
    StartRefusal.ALREADY_ACTIVE: ("error: Domain is already active",),
    StartRefusal.GONE: ("error: failed to get domain ",),
    StartRefusal.UNREACHABLE: ("error: failed to connect to the hypervisor",),
}
"""virsh start's refusals as recorded (fixtures/*start-active, *start-missing-uuid,
nohost-connect); any other failure is a failed start."""


def started_name(text: str) -> Optional[str]:
    """The guest's current name from ``virsh start``'s ``Domain 'NAME' started``."""
    match = _STARTED.search(text)
    return match.group("name") if match else None


def start_refusal(stderr: str) -> Optional[StartRefusal]:
    """Why ``virsh start`` refused, if it is a reason we act on (see START_REFUSALS)."""
    for line in lines(stderr):
        for reason, prefixes in START_REFUSALS.items():
            if line.startswith(prefixes):
                return reason
    return None


def data_processed(text: str) -> Optional[str]:
    """The ``Data processed:`` value of ``domjobinfo`` (e.g. ``1.2 GiB``), if any."""
    for line in lines(text):
        if line.startswith("Data processed:"):
            value = " ".join(line.split()[2:4])
            return value or None
    return None


_SAVE_LOCK = re.compile(r"cannot acquire state change lock \(held by [^)]*"
                        r"remoteDispatchDomain(?:Managed)?Save")


def save_lock(stderr: str) -> Optional[str]:
    """The line saying a failed call waited in vain for a guest's lock held by a save
    job (without ``error: ``), if there is one.

    Recorded: fixtures/qemu-managedsave-busy.yaml, qemu-shutdown-busy.yaml
    (``cannot acquire state change lock (held by monitor=remoteDispatchDomainManagedSave)``).
    """
    for line in stderr.splitlines():
        if _SAVE_LOCK.search(line):
            return line.strip().removeprefix("error: ")
    return None


def save_job(text: str) -> bool:
    """Whether ``virsh domjobinfo`` shows an active job saving the guest.

    Recorded: fixtures/qemu-domjobinfo-saving.yaml (``Job type: Unbounded``,
    ``Operation: Save``) and qemu-domjobinfo-none.yaml (``Job type: None``).  libvirt
    keeps an already paused guest's reason (``paused (user)``) during a save, so for a
    paused guest this is the only sign of another job's save.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep:
            fields.setdefault(label.strip(), value.strip())
    job = fields.get("Job type", "None")
    return job not in ("None", "Completed", "Failed", "Cancelled") \
        and fields.get("Operation") == "Save"


def table_without_domain0(text: str) -> str:
    """``virsh list`` table for gueststatus, minus the Xen Domain-0 row."""
    return "".join(
        line for line in lines(text, keepends=True) if "Domain-0" not in line
    )


# -- migration: a peer's host, a guest's memory, a job's progress --------------------

_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
          "PiB": 1 << 50, "EiB": 1 << 60}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?) (?P<unit>[KMGTPE]?i?B)")
_KIB = re.compile(r"(?P<label>[^:]+?)\s*:\s+(?P<kib>\d+) KiB")


def host_uuid(argv: Sequence[str], xml_text: str) -> str:
    """The host UUID in ``virsh capabilities`` (``/capabilities/host/uuid``, lower case).

    Recorded: fixtures/qemu-capabilities.yaml.  It is libvirtd.conf's ``host_uuid``, else
    the SMBIOS one: two URIs with the same host UUID are one host to libvirt, which
    refuses to migrate between them (qemu-migrate-same-host).
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise OutputError(argv, f"capabilities are not XML: {exc}") from None
    found = root.findall("./host/uuid") if root.tag == "capabilities" else []
    uuid = (found[0].text or "").strip() if len(found) == 1 else ""
    if not is_uuid(uuid):
        raise OutputError(argv, "no host UUID in the capabilities (expected one "
                          "/capabilities/host/uuid)")
    return uuid.lower()


def _kib_fields(argv: Sequence[str], text: str, what: str) -> dict[str, int]:
    fields: dict[str, int] = {}
    for number, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        match = _KIB.fullmatch(line.strip())
        if match is None or match.group("label") in fields:
            raise OutputError(argv, f"unexpected output line {number}: {line[:120]!r} "
                              f"(expected {what})")
        fields[match.group("label")] = int(match.group("kib"))
    return fields


def free_kib(argv: Sequence[str], text: str) -> int:
    """What a host has free for guests, in KiB: ``free + buffers + cached`` of ``virsh
    nodememstats`` (page cache is given back on demand).  Recorded:
    fixtures/qemu-nodememstats.yaml (``free   :  22506476 KiB`` lines)."""
    fields = _kib_fields(argv, text, "'NAME : N KiB'")
    missing = [name for name in ("free", "buffers", "cached") if name not in fields]
    if missing:
        raise OutputError(argv, f"no {', '.join(missing)} in the node's memory statistics")
    return fields["free"] + fields["buffers"] + fields["cached"]


def max_memory_kib(argv: Sequence[str], text: str) -> int:
    """A guest's ``Max memory: N KiB`` in ``virsh dominfo``: what it needs on a peer.
    Recorded: fixtures/qemu-dominfo-running.yaml (``Max memory:     524288 KiB``)."""
    found = [line for line in lines(text) if line.startswith("Max memory:")]
    match = re.fullmatch(r"Max memory:\s+(\d+) KiB", found[0].strip()) \
        if len(found) == 1 else None
    if match is None:
        raise OutputError(argv, "no 'Max memory: N KiB' line in the guest's info"
                          + (f": {found[0][:120]!r}" if found else ""))
    return int(match.group(1))


def _bytes(argv: Sequence[str], label: str, value: str) -> int:
    match = _SIZE.fullmatch(value)
    if match is None or match.group("unit") not in _UNITS:
        raise OutputError(argv, f"unexpected {label} {value[:60]!r} (expected "
                          "a size such as '1.250 GiB')")
    return int(float(match.group("number")) * _UNITS[match.group("unit")])


def job_percent(text: str, argv: Sequence[str] = ()) -> Optional[int]:
    """How far the job in ``virsh domjobinfo`` is (0-100), from ``Data processed`` and
    ``Data total`` (else ``Memory processed``/``Memory total``); None while it has no
    such figures: no job (``Job type: None``), or a migration still setting up.

    Recorded: fixtures/qemu-domjobinfo-migrating.yaml, qemu-domjobinfo-saving.yaml;
    a size virsh would not print raises OutputError naming *argv*.
    """
    fields: dict[str, str] = {}
    for line in lines(text):
        label, sep, value = line.partition(":")
        if sep:
            fields.setdefault(label.strip(), value.strip())
    if fields.get("Job type", "None") in ("None", "Completed", "Failed", "Cancelled"):
        return None
    for kind in ("Data", "Memory"):
        done, total = fields.get(f"{kind} processed"), fields.get(f"{kind} total")
        if done is None or total is None:
            continue
        done_bytes = _bytes(argv, f"{kind} processed", done)
        total_bytes = _bytes(argv, f"{kind} total", total)
        if total_bytes <= 0:
            return None
        return max(0, min(100, done_bytes * 100 // total_bytes))
    return None
