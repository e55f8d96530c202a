"""The host YAML (documented in the package docstring) turned into the initial state."""

from __future__ import annotations

import uuid

from virtguests.testing.fakevirsh.errors import Unsupported, bad_host
from virtguests.testing.fakevirsh.faults import build_faults
from virtguests.testing.fakevirsh.rendering import compile_templates
from virtguests.testing.fakevirsh.state import (
    STATE_FORMAT,
    active_kib,
    is_uuid,
    normalize_uuid,
)
from virtguests.testing.recordings import RecordingsMissing, fixtures_dir, load_yaml

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LOCK_WAIT = 30.0
"""Seconds libvirt waits for a domain's state-change lock before giving up (the default
of a URI's ``lock_wait``)."""
GUEST_DEFAULTS: dict[str, Any] = {
    "state": "running",
    "persistent": True,
    "managed_save": False,
    "save_seconds": 0.05,
    "shutdown_seconds": 1.0,
    "ignore_shutdown": False,
    "fail_save": False,
    "fail_start": False,
    "fail_shutdown": False,
    "start_seconds": 0.0,
    "saving_seconds": 0.0,
    "hang": [],
    "agent": False,
    "memory_mib": 1024,
    "migrate_seconds": None,
    "fail_migrate": False,
}
GUEST_KEYS = set(GUEST_DEFAULTS) | {"name", "uuid", "reason", "id"}
HOST_MEMORY_MIB = 65536
HOST_FREE_MIB = 32768
URI_KEYS = {
    "host_uuid",
    "memory_mib",
    "free_mib",
    "lock_wait",
    "unreachable",
    "unreachable_until",
    "unreachable_calls",
    "hang",
    "hang_after_calls",
    "guests",
    "driver",
    "uri",
}
STATES = {"running", "paused", "shutoff"}


def _host_uuid(key: str, given: Any) -> str:
    """A URI's host UUID: as given (a UUID), else one of its own per URI key."""
    if given is None:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"host:{key}"))
    if not is_uuid(str(given)):
        bad_host(f"uri {key!r}: host_uuid {given!r} is not a UUID")
    return normalize_uuid(str(given))


def build_state(host_path: str, signature: list[int], built: float) -> dict[str, Any]:
    """The state of a freshly built host at (the fake's) time *built*; *signature*
    identifies the YAML it came from."""
    doc = load_yaml(host_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("uris"), dict):
        bad_host(f"{host_path}: expected a mapping with a 'uris' mapping")
    unknown_top = set(doc) - {"uris", "faults"}
    if unknown_top:
        bad_host(f"{host_path}: unknown keys {sorted(map(str, unknown_top))}")
    uris: dict[str, Any] = {}
    for key, conf in doc["uris"].items():
        conf = conf or {}
        if not isinstance(conf, dict):
            bad_host(f"uri {key!r}: expected a mapping")
        unknown = set(conf) - URI_KEYS
        if unknown:
            bad_host(f"uri {key!r}: unknown keys {sorted(unknown)}")
        driver = conf.get("driver") or ("test" if str(key).startswith("test:") else "qemu")
        if driver not in ("test", "qemu"):
            bad_host(f"uri {key!r}: driver must be test or qemu")
        uri_state: dict[str, Any] = {
            "driver": driver,
            "uri": conf.get("uri") or ("qemu:///system" if key == "default" else str(key)),
            "unreachable": bool(conf.get("unreachable", False)),
            "unreachable_until": float(conf.get("unreachable_until") or 0),
            "unreachable_calls": int(conf.get("unreachable_calls") or 0),
            "hang_after_calls": int(conf.get("hang_after_calls") or 0),
            "hang": bool(conf.get("hang", False)),
            "lock_wait": float(conf.get("lock_wait", LOCK_WAIT)),
            "calls": 0,
            "guests": [],
            "moves": {},
            "host_uuid": _host_uuid(key, conf.get("host_uuid")),
            "memory_kib": int(float(conf.get("memory_mib", HOST_MEMORY_MIB)) * 1024),
            "free_kib": int(float(conf.get("free_mib", HOST_FREE_MIB)) * 1024),
        }
        next_id = 1
        for entry in conf.get("guests") or []:
            if not isinstance(entry, dict) or "name" not in entry:
                bad_host(f"uri {key!r}: every guest needs a name")
            unknown = set(entry) - GUEST_KEYS
            if unknown:
                bad_host(f"guest {entry['name']!r}: unknown keys {sorted(unknown)}")
            guest = dict(GUEST_DEFAULTS)
            guest.update(entry)
            guest["name"] = str(entry["name"])
            guest["uuid"] = str(
                entry.get("uuid") or uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{entry['name']}")
            ).lower()
            if guest["state"] not in STATES:
                bad_host(f"guest {entry['name']!r}: state must be one of {sorted(STATES)}")
            guest["hang"] = list(guest["hang"] or [])
            if guest["state"] == "shutoff":
                guest["id"] = None
            else:
                guest["id"] = int(entry.get("id") or next_id)
                next_id = max(next_id, guest["id"]) + 1
            if "reason" not in entry:
                if driver == "qemu":
                    guest["reason"] = {
                        "running": "booted",
                        "paused": "user",
                        "shutoff": "saved" if guest["managed_save"] else "unknown",
                    }[guest["state"]]
                else:
                    guest["reason"] = "unknown"
            guest["job"] = None
            guest["shutdown_at"] = None
            if float(guest["saving_seconds"]) > 0:
                if guest["state"] == "shutoff":
                    bad_host(f"guest {entry['name']!r}: saving_seconds needs an active guest")
                guest["job"] = {"op": "save", "start": built,
                                "end": built + float(guest["saving_seconds"])}
                if guest["state"] == "running":  # libvirt pauses it for the save
                    guest.update(state="paused", reason="saving")
            uri_state["guests"].append(guest)
        uri_state["next_id"] = next_id
        uri_state["built_active_kib"] = active_kib(uri_state)
        uris[str(key)] = uri_state
    try:
        fixtures = fixtures_dir()
    except RecordingsMissing as exc:
        raise Unsupported(str(exc)) from None
    return {
        "format": STATE_FORMAT,
        "host": host_path,
        "sig": signature,
        "fixtures": fixtures,
        **compile_templates(fixtures),
        "uris": uris,
        "faults": build_faults(doc.get("faults"), fixtures, uris),
        "migrations": {},
    }
