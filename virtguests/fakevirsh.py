"""A fake ``virsh`` that simulates a libvirt host described by a YAML file.

Tests and benchmarks put it on ``PATH`` as ``virsh`` (see :func:`write_shim`).
It answers in the formats of the real virsh recordings in ``fixtures/``
(tables, messages and errors are rendered from those recordings, with the
guest names/uuids substituted) and keeps the host state in a JSON file that
concurrent fake processes update under an ``flock``.

Environment:

``VIRTGUESTS_FAKE_HOST``
    path of the host YAML (required).
``VIRTGUESTS_FAKE_STATE``
    state file (default ``<host>.state.json``); rebuilt from the host YAML
    when missing or when the YAML changed.
``VIRTGUESTS_FAKE_LOG``
    append one JSON line per call:
    ``{"argv": [...], "pid": N, "start": t, "end": t, "exit": rc}``.
``VIRTGUESTS_FAKE_NOW_FILE``
    "now" is the float in that file instead of ``time.time()``; waiting for
    virtual time polls the file every 0.01 s.
``VIRTGUESTS_FIXTURES``
    directory of the recordings (default: ``fixtures/`` next to the package,
    else ``sys.prefix/share/virtguests/fixtures``).

Host YAML (unknown keys are rejected)::

    uris:
      default:                  # virsh without -c (or $LIBVIRT_DEFAULT_URI if listed)
        driver: qemu            # test | qemu (default: test for test:... URIs)
        uri: qemu:///system     # what `virsh uri` prints (default: the key)
        unreachable: false      # every call fails like the recorded connect error
        unreachable_until: 0    # ... until now >= this (virtual) epoch time
        unreachable_calls: 0    # ... for the first N calls
        hang: false             # every call sleeps until killed
        hang_after_calls: 0     # every call after the first N (processes) hangs
                                # (with these, the state's "calls" counts processes,
                                # killed ones too)
        lock_wait: 30           # seconds a command waits for a guest's job lock (libvirt:
                                # 30, fixed); shorter only to fit every order of "save
                                # ends", "lock wait ends" and SAVE_TIMEOUT in a short test
        guests:
          - name: web1
            uuid: ...           # default: uuid5(NAMESPACE_URL, "<uri key>/<name>")
            state: running      # running | paused | shutoff
            id: 1               # default: assigned 1, 2, ... to active guests
            reason: booted      # domstate --reason (default by driver and state)
            persistent: true
            managed_save: false
            save_seconds: 0.05  # managedsave blocks this long (a running guest is
                                # "paused (saving)" meanwhile; a paused one keeps its
                                # reason, as libvirt does)
            saving_seconds: 0   # another job's managedsave is running, ending this long
                                # after the host was built: a running guest is "paused
                                # (saving)", a paused one keeps its reason; domjobinfo
                                # shows the save job; managedsave and shutdown wait
                                # lock_wait for its lock and fail, and destroy loses
                                # the guest's memory (no image)
            shutdown_seconds: 1 # shut off this long after `shutdown`
            ignore_shutdown: false
            fail_save: false    # managedsave / start / shutdown fail (exit 1)
            fail_start: false
            fail_shutdown: false
            start_seconds: 0    # start blocks this long
            hang: []            # subcommands that hang for this guest
            agent: false        # domtime --sync works (qemu driver)
            memory_mib: 1024    # sizes in domjobinfo during a save

    faults: []                  # optional: fault rules ("Fault injection" below)

Unsupported argv (commands, options) exit 2 with a "fakevirsh:" message.

Fault injection (the ``faults:`` list of the host YAML)
    Kept apart from the host simulation: a rule picks virsh calls and makes
    them misbehave; the host itself behaves as described above.  A *call* is
    one virsh process (one line of ``VIRTGUESTS_FAKE_LOG``); a command string
    matches a rule when any of its commands does, and the fault hits the first
    such command.  Every rule that matches a call counts it (counters live in
    the state file, under its flock, so they hold across the separate fake
    processes); the first rule that fires decides the fault::

        faults:
          - cmd: list           # a subcommand, a list of them, or "*" (default: "*")
            options: [uuid]     # only calls with exactly these options (no dashes)
            uri: default        # only on this URI key of the host file (or a list)
            guest: web1         # only calls naming this guest (name or UUID, or a
                                # list); calls naming no guest never match
            nth: 2              # fire on the 2nd matching call only
            after: 1            # fire on every matching call after the first 1
            p: 0.25             # fire with this probability, drawn from seed and a
            seed: 7             #   per-(rule, subcommand, URI, guest) call counter
            action: fail        # fail | hang | slow | garbage | signal
            error: connect      # fail: a recording in fixtures/ by file stem, or
                                #   connect | internal | invalid | unsupported |
                                #   missing (default: connect); exit status, stderr
                                #   and stdout are the recording's
            seconds: 5          # slow: answer this many (virtual) seconds late
            output: binary      # garbage: binary | truncated | not-uuid (exit 0)
            signal: TERM        # signal: TERM | INT to the fake's parent (the
                                #   virtguests that ran this virsh), then go on

    ``nth``, ``after`` and ``p`` combine (all must hold); with none of them a
    rule fires on every matching call.  ``hang`` sleeps until killed (a
    wedged URI: ``{cmd: "*", uri: X, after: 1, action: hang}`` hangs every
    call after the first, i.e. after the listing at ``stop``); ``slow``
    applies the command at once and answers late, through the fake's clock
    (``VIRTGUESTS_FAKE_NOW_FILE``); ``garbage`` prints output no parser may
    accept: undecodable bytes, the real output cut inside its first line, or
    a table header line before it.

``VIRTGUESTS_FAKE_FAULTS=off``
    ignore the fault rules for this call (counters untouched): for a run
    without faults on the same host state, and for tests asking the host.
``VIRTGUESTS_FAKE_JOURNAL``
    append one JSON line per command *as it is dispatched* (so killed and
    hung calls are there too): ``{"t", "spawned" (when the process was forked:
    when its caller started the call), "now" (the fake's clock), "pid", "uri",
    "cmd", "argv", "guest" (UUID or null), "state", "job" (the guest's job
    then: "save", "start" or null), "fault" (the action injected, or null)}``.

The hot path imports only ``json``, ``os``, ``sys``, ``time`` and ``fcntl``;
YAML is read only when the state file is (re)built.
"""

from __future__ import annotations

import json
import os
import sys
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NoReturn, Optional

VERSION_FALLBACK = "9.0.0"
STATE_FORMAT = 5
LOCK_WAIT = 30.0
"""Seconds libvirt waits for a domain's state-change lock before giving up (the default
of a URI's ``lock_wait``)."""
DEFAULT_SOCKET = "/var/run/libvirt/libvirt-sock"
MIB = 1024 * 1024

# markers used in templates compiled from the recordings
ARG = "\x00ARG\x00"
NAME = "\x00NAME\x00"
UUID = "\x00UUID\x00"
SOCK = "\x00SOCK\x00"
CMD = "\x00CMD\x00"
OPT = "\x00OPT\x00"

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
}
GUEST_KEYS = set(GUEST_DEFAULTS) | {"name", "uuid", "reason", "id"}
URI_KEYS = {
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
STATE_TEXT = {"running": "running", "paused": "paused", "shutoff": "shut off"}


class Unsupported(Exception):
    """The fake does not implement this argv: exit 2, loudly."""


class LockWait(Exception):
    """The guest's state-change lock is held by a job: wait for it, outside the state lock."""

    def __init__(self, until: float) -> None:
        super().__init__(until)
        self.until = until


class Failure(Exception):
    """A virsh error: exit 1 with this stderr text."""

    def __init__(self, stderr: str, extra_newline: bool = True) -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.extra_newline = extra_newline


# ---------------------------------------------------------------------------
# templates compiled from the recordings
# ---------------------------------------------------------------------------
# role -> (driver, candidate fixture stems, stream, builtin fallback).  The
# recorded text is turned into a template by replacing the domain argument,
# the subject's name and uuid with markers.  The trailing newline that virsh
# prints after every command (suppressed by -q) is stripped from stdout.
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
}
# builtin messages (no recording can produce them with the test driver)
BUILTIN = {
    "managedsave_none": f"Domain '{ARG}' has no manage save image; removal skipped",
    "fail_save": f"error: Failed to save domain '{ARG}' state\n"
    "error: operation failed: domain save job: unexpectedly failed\n",
    "fail_start": f"error: Failed to start domain '{NAME}'\n"
    "error: internal error: qemu unexpectedly closed the monitor\n",
    "fail_shutdown": f"error: Failed to shutdown domain '{ARG}'\n"
    "error: operation failed: guest shutdown request failed\n",
}


def fixtures_dir() -> str:
    env = os.environ.get("VIRTGUESTS_FIXTURES")
    if env:
        return env
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
    if os.path.isdir(here):
        return here
    return os.path.join(sys.prefix, "share", "virtguests", "fixtures")


def _load_yaml(path: str) -> Any:
    try:
        import yaml
    except ImportError:  # the shim runs python -S: enable site-packages now
        import site

        site.main()
        import yaml
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def _template_from_fixture(doc: dict[str, Any], stream: str) -> str:
    text: str = doc[stream]
    if stream == "stdout" and text.endswith("\n") and doc["argv"][0] != "-q":
        text = text[:-1]  # the newline virsh prints after each command
    argv = [a for a in doc["argv"] if not a.startswith("-")]
    arg = argv[1] if len(argv) > 1 else None
    subjects = doc.get("subjects") or []
    if arg is not None:
        text = text.replace(f"'{arg}'", f"'{ARG}'")
    if len(subjects) == 1:
        text = text.replace(f"'{subjects[0]['name']}'", f"'{NAME}'")
    text = text.replace("'/nonexistent/sock'", f"'{SOCK}'")
    if doc["argv"][:1] == ["domstate"]:
        text = text.replace("'domstate'", f"'{CMD}'")
    text = text.replace("--uuid are", f"--{OPT} are")
    return text


def compile_templates(fdir: str) -> dict[str, Any]:
    templates: dict[str, str] = {}
    sources: dict[str, str] = {}
    for role, (stems, stream, fallback) in TEMPLATE_SOURCES.items():
        templates[role] = fallback
        sources[role] = "builtin"
        for stem in stems:
            path = os.path.join(fdir, stem + ".yaml")
            if not os.path.exists(path):
                continue
            doc = _load_yaml(path)
            if stream == "stderr" and doc["exit"] == 0:
                continue  # e.g. qemu domtime --sync succeeded: the guest has an agent
            templates[role] = _template_from_fixture(doc, stream)
            sources[role] = stem
            break
    templates.update(BUILTIN)
    return {"templates": templates, "sources": sources}


# ---------------------------------------------------------------------------
# host YAML -> state
# ---------------------------------------------------------------------------
def _bad_host(msg: str) -> NoReturn:
    raise Unsupported(f"host file: {msg}")


def build_state(host_path: str, sig: list[int]) -> dict[str, Any]:
    import uuid as uuidmod

    doc = _load_yaml(host_path)
    built = Clock().now()
    if not isinstance(doc, dict) or not isinstance(doc.get("uris"), dict):
        _bad_host(f"{host_path}: expected a mapping with a 'uris' mapping")
    unknown_top = set(doc) - {"uris", "faults"}
    if unknown_top:
        _bad_host(f"{host_path}: unknown keys {sorted(map(str, unknown_top))}")
    uris: dict[str, Any] = {}
    for key, conf in doc["uris"].items():
        conf = conf or {}
        if not isinstance(conf, dict):
            _bad_host(f"uri {key!r}: expected a mapping")
        unknown = set(conf) - URI_KEYS
        if unknown:
            _bad_host(f"uri {key!r}: unknown keys {sorted(unknown)}")
        driver = conf.get("driver") or ("test" if str(key).startswith("test:") else "qemu")
        if driver not in ("test", "qemu"):
            _bad_host(f"uri {key!r}: driver must be test or qemu")
        u: dict[str, Any] = {
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
        }
        next_id = 1
        for g in conf.get("guests") or []:
            if not isinstance(g, dict) or "name" not in g:
                _bad_host(f"uri {key!r}: every guest needs a name")
            unknown = set(g) - GUEST_KEYS
            if unknown:
                _bad_host(f"guest {g['name']!r}: unknown keys {sorted(unknown)}")
            guest = dict(GUEST_DEFAULTS)
            guest.update(g)
            guest["name"] = str(g["name"])
            guest["uuid"] = str(
                g.get("uuid") or uuidmod.uuid5(uuidmod.NAMESPACE_URL, f"{key}/{g['name']}")
            ).lower()
            if guest["state"] not in STATES:
                _bad_host(f"guest {g['name']!r}: state must be one of {sorted(STATES)}")
            guest["hang"] = list(guest["hang"] or [])
            if guest["state"] == "shutoff":
                guest["id"] = None
            else:
                guest["id"] = int(g.get("id") or next_id)
                next_id = max(next_id, guest["id"]) + 1
            if "reason" not in g:
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
                    _bad_host(f"guest {g['name']!r}: saving_seconds needs an active guest")
                guest["job"] = {"op": "save", "start": built,
                                "end": built + float(guest["saving_seconds"])}
                if guest["state"] == "running":  # libvirt pauses it for the save
                    guest.update(state="paused", reason="saving")
            u["guests"].append(guest)
        u["next_id"] = next_id
        uris[str(key)] = u
    fdir = fixtures_dir()
    return {
        "format": STATE_FORMAT,
        "host": host_path,
        "sig": sig,
        "fixtures": fdir,
        **compile_templates(fdir),
        "uris": uris,
        "faults": build_faults(doc.get("faults"), fdir, uris),
    }


# ---------------------------------------------------------------------------
# runtime helpers
# ---------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.path = os.environ.get("VIRTGUESTS_FAKE_NOW_FILE") or None

    def now(self) -> float:
        if self.path is None:
            return time.time()
        for _ in range(100):
            try:
                with open(self.path) as f:
                    return float(f.read().strip())
            except (OSError, ValueError):  # being rewritten: retry
                time.sleep(0.001)
        raise Unsupported(f"cannot read a float from VIRTGUESTS_FAKE_NOW_FILE={self.path}")

    def wait_until(self, t: float) -> None:
        if self.path is None:
            delay = t - time.time()
            if delay > 0:
                time.sleep(delay)
            return
        while self.now() < t:
            time.sleep(0.01)


def hang_forever() -> NoReturn:
    while True:
        time.sleep(3600)


class StateFile:
    """The JSON state, read and written under an exclusive flock."""

    def __init__(self, host: str, path: str) -> None:
        self.host = host
        self.path = path
        self.fd = -1
        self.data: dict[str, Any] = {}

    def __enter__(self) -> dict[str, Any]:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            st = os.stat(self.host)
        except OSError as exc:
            raise Unsupported(f"VIRTGUESTS_FAKE_HOST={self.host}: {exc.strerror}") from None
        sig = [st.st_mtime_ns, st.st_size]
        raw = b""
        while True:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                break
            raw += chunk
        data: Optional[dict[str, Any]] = json.loads(raw) if raw else None
        if (
            data is None
            or data.get("format") != STATE_FORMAT
            or data.get("sig") != sig
            or data.get("host") != self.host
        ):
            data = build_state(self.host, sig)
            self._write(data)
        self.data = data
        return data

    def _write(self, data: dict[str, Any]) -> None:
        raw = json.dumps(data, separators=(",", ":")).encode()
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, raw)

    def save(self) -> None:
        self._write(self.data)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the flock
        self.fd = -1


def advance(u: dict[str, Any], now: float) -> bool:
    """Apply the transitions that are due at ``now``; True if anything changed."""
    changed = False
    keep = []
    for g in u["guests"]:
        job = g["job"]
        if job is not None and now >= job["end"]:
            changed = True
            g["job"] = None
            if job["op"] == "save":
                g.update(state="shutoff", reason="saved", id=None, managed_save=True)
                g["shutdown_at"] = None
            elif job["op"] == "start":
                g.update(state="running", id=u["next_id"], managed_save=False)
                g["reason"] = job["reason"]
                u["next_id"] += 1
        sd = g["shutdown_at"]
        if sd is not None and g["state"] == "running" and g["job"] is None and now >= sd:
            changed = True
            g.update(state="shutoff", reason="shutdown", id=None, shutdown_at=None)
        if g["state"] == "shutoff" and not g["persistent"] and g["job"] is None:
            changed = True  # transient guests vanish when they stop
            continue
        keep.append(g)
    u["guests"] = keep
    return changed


def _is_uuid(s: str) -> bool:
    t = s.replace("-", "")
    return len(t) == 32 and all(c in "0123456789abcdefABCDEF" for c in t)


def _norm_uuid(s: str) -> str:
    t = s.replace("-", "").lower()
    return f"{t[:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:]}"


def lookup(u: dict[str, Any], arg: str, by: str) -> Optional[dict[str, Any]]:
    """virsh's lookup: by id (if allowed and numeric), then uuid, then name."""
    guests: list[dict[str, Any]] = u["guests"]
    if "i" in by and arg.isdigit():
        for g in guests:
            if g["id"] is not None and g["id"] == int(arg):
                return g
    if "u" in by and _is_uuid(arg):
        want = _norm_uuid(arg)
        for g in guests:
            if g["uuid"] == want:
                return g
    if "n" in by:
        for g in guests:
            if g["name"] == arg:
                return g
    return None


def _c_locale() -> bool:
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        val = os.environ.get(var)
        if val:
            low = val.lower()
            return not ("utf-8" in low or "utf8" in low)
    return True


def _cell(text: str, c_locale: bool) -> tuple[str, int]:
    """vshTableSafeEncode: the cell text and its display width."""
    if text.isascii():
        return text, len(text)
    if c_locale:
        # libvirt 9.0 in the C locale prints every non-ASCII byte as "\xff"
        out = "".join(c if c.isascii() else "\\xff" * len(c.encode()) for c in text)
        return out, len(out)
    import unicodedata

    width = 0
    for c in text:
        if unicodedata.combining(c):
            continue
        width += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return text, width


def render_table(header: list[str], rows: list[list[str]], quiet: bool) -> str:
    c_locale = _c_locale()
    cells = [[_cell(c, c_locale) for c in row] for row in rows]
    hcells = [(h, len(h)) for h in header]
    all_rows = cells if quiet else [hcells, *cells]
    widths = [max([r[i][1] for r in all_rows] or [0]) for i in range(len(header))]
    lines = []
    for row in all_rows:
        parts = []
        for i, (text, width) in enumerate(row):
            pad = " " * (widths[i] - width) if i < len(row) - 1 else ""
            parts.append(text + pad)
        lines.append(" " + "   ".join(parts) + "\n")
        if not quiet and row is hcells:
            lines.append("-" * (sum(widths) + 3 * len(widths)) + "\n")
    return "".join(lines)


def _pretty(val: float) -> str:
    """vshPrettyCapacity + "%-.3lf %s"."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0
    while val >= 1024 and i < len(units) - 1:
        val /= 1024
        i += 1
    return f"{val:.3f} {units[i]}"


def domjobinfo_saving(template: str, g: dict[str, Any], now: float) -> str:
    job = g["job"]
    elapsed = max(0.0, now - job["start"])
    duration = max(job["end"] - job["start"], 1e-9)
    total = float(g["memory_mib"]) * MIB
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


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------
# command -> (boolean options, lookup order: i=id u=uuid n=name)
COMMANDS: dict[str, tuple[set[str], str]] = {
    "event": ({"loop", "timestamp"}, ""),
    "connect": (set(), ""),
    "uri": (set(), ""),
    "list": (
        {
            "all",
            "inactive",
            "uuid",
            "name",
            "table",
            "persistent",
            "transient",
            "with-managed-save",
            "without-managed-save",
            "state-running",
            "state-paused",
            "state-shutoff",
        },
        "",
    ),
    "domname": (set(), "iu"),
    "domid": (set(), "un"),
    "domuuid": (set(), "in"),
    "domstate": ({"reason"}, "iun"),
    "managedsave": ({"bypass-cache"}, "iun"),
    "managedsave-remove": (set(), "iun"),
    "domjobinfo": (set(), "iun"),
    "shutdown": (set(), "iun"),
    "destroy": (set(), "iun"),
    "start": ({"bypass-cache"}, "un"),
    "domtime": ({"sync"}, "iun"),
}


def split_commands(text: str) -> list[list[str]]:
    """A virsh command string (``"list --uuid; echo x"``) as one argv per command.

    Like virsh's own parser: blanks separate words, ``;`` separates commands,
    single or double quotes group a word.
    """
    commands: list[list[str]] = [[]]
    word: Optional[str] = None
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                word = (word or "") + ch
        elif ch in "'\"":
            quote, word = ch, word or ""
        elif ch.isspace() or ch == ";":
            if word is not None:
                commands[-1].append(word)
                word = None
            if ch == ";":
                commands.append([])
        else:
            word = (word or "") + ch
    if quote:
        raise Unsupported(f"unterminated quote in command string {text!r}")
    if word is not None:
        commands[-1].append(word)
    return [c for c in commands if c]


class Call:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.uri_arg: Optional[str] = None
        self.quiet = False
        self.version = False
        self.cmd = ""
        self.opts: set[str] = set()
        self.domain: Optional[str] = None
        self.words: list[str] = []
        self.script: list[Call] = []
        """Set when the command is a command string: each of its commands."""
        self._parse()

    def unsupported(self, why: str) -> NoReturn:
        raise Unsupported(f"{why}; argv={self.argv!r}")

    def _parse(self) -> None:
        args = list(self.argv)
        while args and args[0].startswith("-"):
            a = args.pop(0)
            if a in ("-c", "--connect"):
                if not args:
                    self.unsupported(f"{a} needs a URI")
                self.uri_arg = args.pop(0)
            elif a.startswith("--connect="):
                self.uri_arg = a.split("=", 1)[1]
            elif a in ("-q", "--quiet"):
                self.quiet = True
            elif a in ("-r", "--readonly"):
                pass
            elif a == "--version":
                self.version = True
            else:
                self.unsupported(f"unsupported global option {a!r}")
        if self.version:
            if args:
                self.unsupported("--version takes no command")
            return
        if not args:
            self.unsupported("no command (interactive virsh is not simulated)")
        if len(args) == 1 and (";" in args[0] or any(c.isspace() for c in args[0])):
            options = self.argv[: len(self.argv) - 1]
            self.script = [Call(options + argv) for argv in split_commands(args[0])]
            if not self.script:
                self.unsupported("empty command string")
            return
        self.cmd = args.pop(0)
        if self.cmd == "echo":
            self.words = args
            return
        if self.cmd not in COMMANDS:
            self.unsupported(f"unsupported command {self.cmd!r}")
        allowed, by = COMMANDS[self.cmd]
        while args:
            a = args.pop(0)
            if a == "--event" and self.cmd == "event":
                if not args or args[0] != "lifecycle":
                    self.unsupported("only '--event lifecycle' is simulated")
                self.opts.add(args.pop(0))
                continue
            if a == "--domain" and by:
                if not args:
                    self.unsupported("--domain needs a value")
                a = args.pop(0)
                if self.domain is not None:
                    self.unsupported("more than one domain")
                self.domain = a
            elif a.startswith("--") and a[2:] in allowed:
                self.opts.add(a[2:])
            elif a.startswith("-"):
                self.unsupported(f"unsupported option {a!r} for {self.cmd}")
            elif by and self.domain is None:
                self.domain = a
            else:
                self.unsupported(f"unexpected argument {a!r} for {self.cmd}")
        if self.cmd == "event" and self.opts != {"loop", "lifecycle"}:
            self.unsupported("only 'event --loop --event lifecycle' is simulated "
                             "(real virsh refuses --all with --event)")
        if self.cmd == "domtime" and "sync" not in self.opts:
            self.unsupported("only 'domtime --sync' is simulated")


class Runner:
    def __init__(self, call: Call, st: dict[str, Any], u: dict[str, Any], clock: Clock) -> None:
        self.call = call
        self.st = st
        self.u = u
        self.clock = clock
        self.tpl: dict[str, str] = st["templates"]
        self.out = ""  # printed also with -q
        self.extra = ""  # suppressed by -q
        self.lock_waited = False

    def t(self, role: str, g: Optional[dict[str, Any]] = None, **kw: str) -> str:
        driver = self.u["driver"]
        text = self.tpl.get(f"{driver}:{role}") or self.tpl[role]
        if self.call.domain is not None:
            text = text.replace(ARG, self.call.domain)
        if g is not None:
            text = text.replace(NAME, g["name"]).replace(UUID, g["uuid"])
        for key, val in kw.items():
            text = text.replace(f"\x00{key.upper()}\x00", val)
        return text

    def fail(self, role: str, g: Optional[dict[str, Any]] = None, **kw: str) -> NoReturn:
        raise Failure(self.t(role, g, **kw))

    def lock_busy(self, g: dict[str, Any], role: str, now: float) -> NoReturn:
        """libvirt waits the URI's lock_wait for a job's lock, then fails; the job may end
        first."""
        if self.lock_waited:
            self.fail(role, g)
        raise LockWait(min(float(g["job"]["end"]), now + float(self.u["lock_wait"])))


CONNECT_FAILED = "error: failed to connect to the hypervisor"


def unreachable_error(st: dict[str, Any], uri: str) -> str:
    sock = DEFAULT_SOCKET
    if "socket=" in uri:
        sock = uri.split("socket=", 1)[1].split("&", 1)[0]
    text: str = st["templates"]["unreachable"]
    return text.replace(SOCK, sock)


def run_list(r: Runner) -> None:
    o = r.call.opts
    if "table" in o:
        for other in ("name", "uuid"):
            if other in o:
                raise Failure(r.t("table_exclusive", OPT=other))
    shutoff_filter = "state-shutoff" in o
    want_active = "all" in o or not ("inactive" in o or shutoff_filter)
    want_inactive = "all" in o or "inactive" in o or shutoff_filter
    states = {s for s in ("running", "paused", "shutoff") if f"state-{s}" in o}
    picked = []
    for g in r.u["guests"]:
        active = g["state"] != "shutoff"
        if not (want_active if active else want_inactive):
            continue
        if states and g["state"] not in states:
            continue
        persistent, transient = "persistent" in o, "transient" in o
        if persistent != transient and g["persistent"] != persistent:
            continue
        with_ms, without_ms = "with-managed-save" in o, "without-managed-save" in o
        if with_ms != without_ms and g["managed_save"] != with_ms:
            continue
        picked.append(g)

    def key(g: dict[str, Any]) -> tuple[int, int, bytes]:
        if g["id"] is not None:
            return (0, g["id"], b"")
        return (1, 0, g["name"].encode().lower())

    picked.sort(key=key)
    if "uuid" in o or "name" in o:
        lines = []
        for g in picked:
            fields = []
            if "uuid" in o:
                fields.append(g["uuid"])
            if "name" in o:
                fields.append(g["name"])
            lines.append(" ".join(fields) + "\n")
        r.out += "".join(lines)
    else:
        rows = [
            ["-" if g["id"] is None else str(g["id"]), g["name"], STATE_TEXT[g["state"]]]
            for g in picked
        ]
        r.out += render_table(["Id", "Name", "State"], rows, r.call.quiet)


def run_guest_command(r: Runner, g: dict[str, Any], now: float) -> bool:
    """Run a domain command; True if the state changed."""
    cmd = r.call.cmd
    o = r.call.opts
    driver = r.u["driver"]
    active = g["state"] != "shutoff"
    if cmd == "domname":
        r.out += g["name"] + "\n"
    elif cmd == "domid":
        r.out += ("-" if g["id"] is None else str(g["id"])) + "\n"
    elif cmd == "domuuid":
        r.out += g["uuid"] + "\n"
    elif cmd == "domstate":
        text = STATE_TEXT[g["state"]]
        if "reason" in o:
            text += f" ({g['reason']})"
        r.out += text + "\n"
    elif cmd == "domjobinfo":
        if driver == "test":
            r.fail("domjobinfo", g)
        if not active:
            r.fail("domjobinfo_not_running", g)
        if g["job"] is not None and g["job"]["op"] == "save":
            r.out += domjobinfo_saving(r.t("domjobinfo_saving", g), g, now)
        else:
            r.out += r.t("domjobinfo_none", g)
    elif cmd == "domtime":
        if not active:
            r.fail("domtime_not_running", g)
        if driver == "qemu" and not g["agent"]:
            r.fail("domtime_no_agent", g)
    elif cmd == "managedsave-remove":
        if g["managed_save"] and not active:
            g["managed_save"] = False
            r.extra += r.t("managedsave_remove_ok", g)
            return True
        r.extra += r.t("managedsave_none", g)
    elif cmd == "destroy":
        if not active:
            r.fail("destroy_not_running", g)
        g.update(state="shutoff", reason="destroyed", id=None, job=None, shutdown_at=None)
        r.extra += r.t("destroy_ok", g)
        return True
    elif cmd == "shutdown":
        if not active:
            r.fail("shutdown_not_running", g)
        if g["job"] is not None:
            r.lock_busy(g, "shutdown_busy", now)
        if g["fail_shutdown"]:
            r.fail("fail_shutdown", g)
        r.extra += r.t("shutdown_ok", g)
        if not g["ignore_shutdown"] and g["shutdown_at"] is None:
            g["shutdown_at"] = now + float(g["shutdown_seconds"])
            return True
    elif cmd == "start":
        if active or g["job"] is not None:
            r.fail("start_active", g)
        if driver == "test" and "bypass-cache" in o:
            r.fail("start_bypass_cache", g)
        if g["fail_start"]:
            r.fail("fail_start", g)
        reason = "restored" if g["managed_save"] else "booted"
        end = now + float(g["start_seconds"])
        g["job"] = {"op": "start", "start": now, "end": end, "reason": reason}
        r.extra += r.t("start_ok", g)
        return True
    elif cmd == "managedsave":
        if not g["persistent"]:
            r.fail("managedsave_transient", g)
        if not active:
            r.fail("managedsave_not_running", g)
        if g["job"] is not None:
            r.lock_busy(g, "managedsave_busy", now)
        if g["fail_save"]:
            r.fail("fail_save", g)
        g["job"] = {"op": "save", "start": now, "end": now + float(g["save_seconds"])}
        if driver == "qemu" and g["state"] == "running":
            g.update(state="paused", reason="saving")
        r.extra += r.t("managedsave_ok", g)
        return True
    return False


def event_loop(call: Call, state_file: StateFile, clock: Clock) -> int:
    """``virsh event --loop --event lifecycle``: one line per start or stop.

    Like real virsh it runs until killed; it looks at the host every 20 ms and
    applies due transitions itself, so stops are reported as they happen.
    """
    seen: Optional[dict[str, tuple[str, bool]]] = None
    injected: Optional[Injected] = None
    while True:
        with state_file as st:
            u = st["uris"].get(call.uri_arg or "default")
            if u is None:
                call.unsupported(f"URI {call.uri_arg!r} is not in the host file")
            now = clock.now()
            dirty = advance(u, now)
            fresh = injected is None
            if injected is None:
                injected = inject(st, call, call.uri_arg or "default", u, now)  # fault layer
                dirty = injected.counted or dirty
                if u["hang_after_calls"] or u["hang"]:
                    u["calls"] += 1
                    dirty = True
            if dirty:
                state_file.save()
            if u["unreachable"] or now < u["unreachable_until"]:
                _write(sys.stderr, unreachable_error(st, u["uri"]))
                return 1
            hang = u["hang"] or injected.hang or 0 < u["hang_after_calls"] < u["calls"]
            current = {g["uuid"]: (g["name"], g["state"] != "shutoff") for g in u["guests"]}
        if hang:
            hang_forever()  # outside the lock: other calls go on
        if fresh:
            try:
                injected.act(call, u)
            except Failure as f:
                _write(sys.stderr, f.stderr)
                return 1
            injected.wait(clock)
            if injected.action == "garbage":
                _write(sys.stdout, injected.output("", u))
        if seen is not None:
            for uuid, (name, was_active) in seen.items():
                is_active = current.get(uuid, (name, False))[1]
                if was_active != is_active:
                    what = "Started Booted" if is_active else "Stopped Shutdown"
                    _write(sys.stdout, f"event 'lifecycle' for domain '{name}': {what}\n")
            for uuid, (name, is_active) in current.items():
                if uuid not in seen and is_active:
                    _write(sys.stdout, f"event 'lifecycle' for domain '{name}': Started Booted\n")
        seen = current
        time.sleep(0.02)


def execute_script(call: Call, state_file: StateFile, clock: Clock) -> tuple[int, str, str]:
    """A command string: its commands in order on one connection, as virsh runs them.

    The exit status is the last command's; a failed command does not stop the
    rest, but a failed connection ends the whole run (nothing else is printed).
    """
    rc, out, err = 0, "", ""
    for number, part in enumerate(call.script):
        if part.cmd == "event":
            part.unsupported("'event' inside a command string is not simulated")
        rc, text, error = execute(part, state_file, clock, count_call=number == 0)
        if rc != 0 and error.startswith(CONNECT_FAILED):
            return rc, "", error
        out, err = out + text, err + error
    return rc, out, err


def execute(call: Call, state_file: StateFile, clock: Clock, *,
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
    with state_file as st:
        key = call.uri_arg
        if key is None:
            env_uri = os.environ.get("VIRSH_DEFAULT_CONNECT_URI") or os.environ.get(
                "LIBVIRT_DEFAULT_URI"
            )
            key = env_uri if env_uri and env_uri in st["uris"] else "default"
        u = st["uris"].get(key)
        if u is None:
            call.unsupported(f"URI {key!r} is not in the host file {state_file.host}")
        now = clock.now()
        dirty = advance(u, now)
        down = u["unreachable"] or now < u["unreachable_until"]
        if (u["unreachable_calls"] or u["hang_after_calls"] or u["hang"]) and count_call:
            u["calls"] += 1
            dirty = True
            down = down or u["calls"] <= u["unreachable_calls"]
        r = Runner(call, st, u, clock)
        r.lock_waited = lock_waited
        injected = inject(st, call, key, u, now)  # the fault layer
        dirty = injected.counted or dirty
        try:
            injected.act(call, u)
            if down:
                raise Failure(unreachable_error(st, u["uri"]), extra_newline=False)
            if u["hang"] or injected.hang or 0 < u["hang_after_calls"] < u["calls"]:
                hang = True
            elif call.cmd == "uri":
                r.out += u["uri"] + "\n"
            elif call.cmd == "echo":
                r.out += " ".join(call.words)
            elif call.cmd == "list":
                run_list(r)
            elif call.cmd != "connect":
                if call.domain is None:
                    tpl = st["templates"]["requires_domain"].replace(CMD, call.cmd)
                    raise Failure(tpl, extra_newline=False)
                g = lookup(u, call.domain, COMMANDS[call.cmd][1])
                if g is None:
                    r.fail("missing")
                if call.cmd in g["hang"]:
                    hang = True
                else:
                    dirty = run_guest_command(r, g, now) or dirty
                    if g["job"] is not None and call.cmd in ("managedsave", "start"):
                        wait_job = g["job"]
        except Failure as f:
            if dirty:
                state_file.save()
            return 1, blank if f.extra_newline else "", f.stderr
        except LockWait as busy:
            lock_until = busy.until
        if dirty:
            state_file.save()
    if hang:
        hang_forever()
    if lock_until is not None:
        clock.wait_until(lock_until)
        return execute(call, state_file, clock, count_call=False, lock_waited=True)
    if wait_job is not None:
        clock.wait_until(wait_job["end"])
        with state_file as st:
            if advance(st["uris"][key], clock.now()):
                state_file.save()
    injected.wait(clock)
    out = r.out if call.quiet else r.out + r.extra + "\n"
    return 0, injected.output(out, u), ""


# ---------------------------------------------------------------------------
# fault injection (see "Fault injection" in the module docstring)
# ---------------------------------------------------------------------------
FAULT_ACTIONS = ("fail", "hang", "slow", "garbage", "signal")
FAULT_SELECTORS = {"cmd", "options", "uri", "guest", "nth", "after", "p", "seed", "action"}
FAULT_PARAMS = {"fail": "error", "slow": "seconds", "garbage": "output", "signal": "signal"}
FAULT_ERRORS = {
    "connect": "nohost-connect",
    "internal": "test-shutdown-not-running",
    "invalid": "qemu-managedsave-not-running",
    "unsupported": "test-domjobinfo-running",
    "missing": "test-domid-missing-uuid",
}
GARBAGE = ("binary", "truncated", "not-uuid")
FAULT_SIGNALS = ("TERM", "INT")
BINARY_GARBAGE = b"\xff\xfe\x00\x80\xc0\x1b[2J\xef\xbf virsh \xff\n".decode(
    "utf-8", "surrogateescape")
_MASK64 = (1 << 64) - 1

_counted_here: set[int] = set()
"""Rules this process has counted already: a call is one process, counted once."""


def _fault_list(rule: dict[str, Any], key: str, where: str) -> Optional[list[str]]:
    value = rule.get(key)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, (str, int)) for i in items):
        _bad_host(f"{where}: {key} must be a string or a list of strings")
    return [str(i) for i in items]


def _fault_int(rule: dict[str, Any], key: str, where: str, least: int) -> Optional[int]:
    value = rule.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        _bad_host(f"{where}: {key} must be an integer >= {least}")
    return value


def _fault_error(name: str, fdir: str, where: str) -> dict[str, Any]:
    """A recorded virsh failure, as a template (the way the host's messages are made)."""
    stem = FAULT_ERRORS.get(name, name)
    path = os.path.join(fdir, stem + ".yaml")
    if "/" in stem or not os.path.exists(path):
        _bad_host(f"{where}: error {name!r}: no recording {path} "
                  f"(or one of {sorted(FAULT_ERRORS)})")
    doc = _load_yaml(path)
    if not doc.get("exit") or not doc.get("stderr"):
        _bad_host(f"{where}: error {name!r}: the recording {stem} is not a failure")
    words = [a for a in doc["argv"] if not a.startswith("-")]
    subjects = doc.get("subjects") or []
    return {
        "stem": stem,
        "stderr": _template_from_fixture(doc, "stderr"),
        "newline": doc.get("stdout") == "\n",
        "arg": words[1] if len(words) > 1 else "",
        "name": subjects[0]["name"] if len(subjects) == 1 else "",
    }


def build_faults(raw: Any, fdir: str, uris: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Validate the ``faults:`` rules; compile each ``fail`` error from its recording."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        _bad_host("faults: expected a list of rules")
    rules = []
    for index, rule in enumerate(raw):
        where = f"faults rule {index + 1}"
        if not isinstance(rule, dict):
            _bad_host(f"{where}: expected a mapping")
        action = rule.get("action")
        if action not in FAULT_ACTIONS:
            _bad_host(f"{where}: action must be one of {list(FAULT_ACTIONS)}")
        allowed = FAULT_SELECTORS | ({FAULT_PARAMS[action]} if action in FAULT_PARAMS else set())
        unknown = set(rule) - allowed
        if unknown:
            _bad_host(f"{where}: unknown keys for action {action!r}: {sorted(map(str, unknown))}")
        cmds = _fault_list(rule, "cmd", where)
        if cmds == ["*"]:
            cmds = None
        for cmd in cmds or []:
            if cmd not in COMMANDS and cmd != "echo":
                _bad_host(f"{where}: cmd {cmd!r} is not a simulated subcommand")
        for uri in _fault_list(rule, "uri", where) or []:
            if uri not in uris:
                _bad_host(f"{where}: uri {uri!r} is not in the host file")
        options = _fault_list(rule, "options", where)
        guests = _fault_list(rule, "guest", where)
        p = rule.get("p")
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))
                              or not 0 <= p <= 1):
            _bad_host(f"{where}: p must be a number from 0 to 1")
        compiled: dict[str, Any] = {
            "index": index,
            "action": action,
            "cmd": cmds,
            "options": sorted(o.lstrip("-") for o in options) if options is not None else None,
            "uri": _fault_list(rule, "uri", where),
            "guest": [_norm_uuid(g) if _is_uuid(g) else g for g in guests] if guests else None,
            "nth": _fault_int(rule, "nth", where, 1),
            "after": _fault_int(rule, "after", where, 0),
            "p": None if p is None else float(p),
            "seed": _fault_int(rule, "seed", where, 0) or 0,
        }
        if action == "fail":
            compiled["error"] = _fault_error(str(rule.get("error", "connect")), fdir, where)
        elif action == "slow":
            seconds = rule.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                    or seconds < 0:
                _bad_host(f"{where}: slow needs seconds >= 0")
            compiled["seconds"] = float(seconds)
        elif action == "garbage":
            compiled["output"] = rule.get("output", "binary")
            if compiled["output"] not in GARBAGE:
                _bad_host(f"{where}: output must be one of {list(GARBAGE)}")
        elif action == "signal":
            compiled["signal"] = str(rule.get("signal", "TERM")).upper().removeprefix("SIG")
            if compiled["signal"] not in FAULT_SIGNALS:
                _bad_host(f"{where}: signal must be one of {list(FAULT_SIGNALS)}")
        rules.append(compiled)
    return {"rules": rules, "counts": {}}


def _chance(*parts: object) -> float:
    """A number in [0, 1) fixed by *parts*: the same in every process (no hash seed)."""
    h = 0xCBF29CE484222325  # FNV-1a, then the splitmix64 finaliser
    for byte in "|".join(map(str, parts)).encode("utf-8", "surrogateescape"):
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK64
    h ^= h >> 31
    return h / 2.0**64


def _subject(u: dict[str, Any], call: Call) -> Optional[dict[str, Any]]:
    if call.domain is None or call.cmd not in COMMANDS or not COMMANDS[call.cmd][1]:
        return None
    return lookup(u, call.domain, COMMANDS[call.cmd][1])


def _rule_matches(rule: dict[str, Any], call: Call, key: str,
                  g: Optional[dict[str, Any]]) -> bool:
    if rule["cmd"] is not None and call.cmd not in rule["cmd"]:
        return False
    if rule["options"] is not None and sorted(call.opts) != rule["options"]:
        return False
    if rule["uri"] is not None and key not in rule["uri"]:
        return False
    if rule["guest"] is not None:
        if call.domain is None:
            return False
        named = {call.domain} if g is None else {call.domain, g["name"], g["uuid"]}
        if not named & set(rule["guest"]):
            return False
    return True


class Injected:
    """The fault chosen for one command (or none), applied at each stage of the call."""

    def __init__(self, rule: Optional[dict[str, Any]] = None,
                 g: Optional[dict[str, Any]] = None, counted: bool = False) -> None:
        self.rule = rule
        self.action: Optional[str] = rule["action"] if rule else None
        self.g = g
        self.counted = counted  # counters changed: the state must be saved

    @property
    def hang(self) -> bool:
        return self.action == "hang"

    def act(self, call: Call, u: dict[str, Any]) -> None:
        """At dispatch: ``fail`` raises the recorded error, ``signal`` is sent now."""
        if self.rule is None:
            return
        if self.action == "fail":
            err = self.rule["error"]
            sock = DEFAULT_SOCKET
            if "socket=" in u["uri"]:
                sock = u["uri"].split("socket=", 1)[1].split("&", 1)[0]
            text = (err["stderr"].replace(ARG, call.domain or err["arg"])
                    .replace(NAME, self.g["name"] if self.g else err["name"])
                    .replace(SOCK, sock).replace(CMD, call.cmd))
            raise Failure(text, extra_newline=err["newline"])
        if self.action == "signal" and os.getppid() > 1:  # never init, if orphaned
            import signal

            os.kill(os.getppid(), getattr(signal, "SIG" + self.rule["signal"]))

    def wait(self, clock: Clock) -> None:
        """``slow``: the answer comes this many (virtual) seconds late."""
        if self.rule is not None and self.action == "slow":
            clock.wait_until(clock.now() + self.rule["seconds"])

    def output(self, text: str, u: dict[str, Any]) -> str:
        """``garbage``: what the command prints instead of *text* (exit status 0)."""
        if self.rule is None or self.action != "garbage":
            return text
        kind = self.rule["output"]
        if kind == "binary":
            return BINARY_GARBAGE
        if kind == "not-uuid":  # the header of the recorded table form, then the output
            return render_table(["Id", "Name", "State"], [], False).splitlines(True)[0] + text
        line = next((ln for ln in text.splitlines() if ln.strip()), "")
        if not line:
            line = u["guests"][0]["uuid"] if u["guests"] else _norm_uuid("0" * 32)
        return line[: max(1, min(len(line) // 2, 18))]


NO_FAULT = Injected()


def _spawn_time() -> float:
    """When this process was forked (wall clock), i.e. when its caller started the call."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def inject(st: dict[str, Any], call: Call, key: str, u: dict[str, Any],
           now: float) -> Injected:
    """The fault layer's one hook, under the state lock as a command is dispatched:
    journal it, count it against every rule it matches, pick the fault."""
    faults = st.get("faults")
    journal = os.environ.get("VIRTGUESTS_FAKE_JOURNAL")
    if not faults and not journal:
        return NO_FAULT
    g = _subject(u, call)
    chosen: Optional[dict[str, Any]] = None
    counted = False
    if faults and os.environ.get("VIRTGUESTS_FAKE_FAULTS", "").lower() != "off":
        counts = faults["counts"]
        for rule in faults["rules"]:
            index = rule["index"]
            if index in _counted_here or not _rule_matches(rule, call, key, g):
                continue
            _counted_here.add(index)
            counted = True
            n = counts[str(index)] = counts.get(str(index), 0) + 1
            subject = g["uuid"] if g is not None else call.domain or ""
            per_key = f"{index}|{call.cmd}|{key}|{subject}"
            k = counts[per_key] = counts.get(per_key, 0) + 1
            if chosen is not None:
                continue
            if rule["nth"] is not None and n != rule["nth"]:
                continue
            if rule["after"] is not None and n <= rule["after"]:
                continue
            if rule["p"] is not None and \
                    _chance(rule["seed"], index, call.cmd, key, subject, k) >= rule["p"]:
                continue
            chosen = rule
    injected = Injected(chosen, g, counted) if chosen is not None or counted else NO_FAULT
    if journal:
        job = g["job"]["op"] if g is not None and g["job"] is not None else None
        line = json.dumps({"t": time.time(), "spawned": _spawn_time(), "now": now,
                           "pid": os.getpid(), "uri": key,
                           "cmd": call.cmd, "argv": call.argv,
                           "guest": g["uuid"] if g is not None else None,
                           "state": g["state"] if g is not None else None, "job": job,
                           "fault": injected.action})
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    return injected


# ---------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------
def _log(argv: list[str], start: float, rc: int) -> None:
    path = os.environ.get("VIRTGUESTS_FAKE_LOG")
    if not path:
        return
    line = json.dumps(
        {"argv": argv, "pid": os.getpid(), "start": start, "end": time.time(), "exit": rc}
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _write(stream: Any, text: str) -> None:
    if text:
        stream.buffer.write(text.encode("utf-8", "surrogateescape"))
        stream.flush()


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    start = time.time()
    rc = 2
    try:
        import signal

        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            call = Call(argv)
            if call.version:
                out = VERSION_FALLBACK + "\n"
                rc, err = 0, ""
            else:
                host = os.environ.get("VIRTGUESTS_FAKE_HOST")
                if not host:
                    raise Unsupported("VIRTGUESTS_FAKE_HOST is not set (path of the host YAML)")
                host = os.path.abspath(host)
                state_path = os.environ.get("VIRTGUESTS_FAKE_STATE") or host + ".state.json"
                if call.cmd == "event":
                    return event_loop(call, StateFile(host, state_path), Clock())
                if call.script:
                    rc, out, err = execute_script(call, StateFile(host, state_path), Clock())
                else:
                    rc, out, err = execute(call, StateFile(host, state_path), Clock())
        except Unsupported as exc:
            rc, out, err = 2, "", f"fakevirsh: {exc}\n"
        _write(sys.stdout, out)
        _write(sys.stderr, err)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        _log(argv, start, rc)
    return rc


def console_main() -> int:
    return main(sys.argv[1:])


def write_shim(bin_dir: Path) -> Path:
    """Create ``bin_dir/virsh``: an executable that runs this fake with sys.executable.

    The shim starts Python with ``-S`` (no site import: much faster startup),
    puts this package's parent directory on ``sys.path`` itself and keeps
    byte-code in ``bin_dir/__pycache__`` even under PYTHONDONTWRITEBYTECODE
    (compiling the module on every call would double the cost of a call).
    """
    from pathlib import Path as _Path

    bin_dir = _Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shim = bin_dir / "virsh"
    shim.write_text(
        f"#!{sys.executable} -S\n"
        "import sys\n"
        "sys.dont_write_bytecode = False\n"
        f"sys.pycache_prefix = {str(bin_dir.resolve() / '__pycache__')!r}\n"
        f"sys.path.insert(0, {pkg_parent!r})\n"
        "from virtguests.fakevirsh import console_main\n"
        "sys.exit(console_main())\n",
        encoding="utf-8",
    )
    shim.chmod(0o755)
    return shim


if __name__ == "__main__":
    sys.exit(console_main())
