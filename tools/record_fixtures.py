#!/usr/bin/env python3
"""Record virsh fixtures from a *real* virsh binary.

Usage (``make fixtures``)::

    python tools/record_fixtures.py [--qemu-uri URI] [--test-uri URI] [--out DIR]

Every recording runs the real ``virsh`` (env ``LC_ALL=C`` unless the spec says
otherwise, stdin ``/dev/null``, a timeout per call) and is written verbatim to
``fixtures/<driver>-<slug>.yaml``.  Nothing in those files is typed by hand.

* ``test`` recordings use libvirt's test driver with the host definitions in
  ``fixtures/hosts/*.xml`` (``virsh -c test:///abs/path/host.xml``, no daemon).
  Every virsh process is a fresh connection, so each recording starts from the
  state written in the XML file.
* ``nohost`` recordings talk to URIs where no daemon listens.
* ``qemu`` recordings (only with ``--qemu-uri`` or ``--private-libvirtd``) drive
  a live libvirtd with QEMU guests: they pick a running guest from that URI and
  record the qemu-only forms (domjobinfo during a managedsave, restore reasons,
  guest-agent errors, list forms).
* ``--private-libvirtd`` (root, Debian's libvirt-daemon and qemu-system-x86)
  starts a throwaway libvirtd in its own mount namespace
  (``tools/realhost/libvirtd.py``) with one persistent guest of
  ``--guest-memory-mib`` MiB (big enough for domjobinfo to catch the save in
  progress) and one small transient guest, both tiny busybox guests from
  ``tools/realhost/guestimage.py`` with fixed names and UUIDs, records the qemu
  forms against it, and stops it.  Nothing of a libvirtd already on the
  machine is used.  Only there (it stops QEMU threads) the ``busy`` recordings
  are made too: ``managedsave`` and ``shutdown`` while another managedsave of
  the guest holds its job (``tools/realhost/libvirtd.StalledSave``), once as a
  slow save and once with QEMU hung (``-hung``).
  ``make fixtures FIXTURE_ARGS="--test-uri test:///default --private-libvirtd"``
  records everything; ``--only qemu`` (repeatable) records one group.
* ``migrate`` recordings (``qemu-migrate-*``, with ``--private-libvirtd``) start
  two private libvirtds (another host UUID each: home ``/LIBVIRTD`` and peer
  ``/PEERD``), a third with home's host UUID (``/TWIND``, the same host to
  libvirt), and record ``virsh migrate`` with ``--live --persistent
  --undefinesource`` (success, an unreachable peer, the same host, a guest whose
  disk only home has, a shut off and an unknown guest), ``domjobinfo`` during
  an outgoing migration held in progress (``tools/realhost/libvirtd.StalledMigration``)
  and its ``domjobabort``, the guest's state on both sides meanwhile and after,
  ``domjobabort`` with no job, ``nodememstats``, ``capabilities`` and ``dominfo``;
  ``virsh event --loop --event lifecycle`` (virtguests' watch) on both daemons
  during a migration and one back home (``qemu-event-migrate*``); a suspended guest
  migrated there and back with the default options (``*-paused*``).
* ``session`` recordings (``*-session-*.yaml``, with the ``stdin`` fed) run one
  ``virsh -c URI`` reading command lines on a pipe, each followed by the markers
  ``virtguests/session.py`` sends: the test driver, an unreachable URI and, with
  ``--private-libvirtd``, a private libvirtd killed between two commands.

In the written files the absolute path of this ``fixtures`` directory is
replaced by ``/FIXTURES`` (so ``test:///FIXTURES/hosts/basic.xml``), and the
private libvirtd's temp dir by ``/LIBVIRTD``, so the files are stable across
checkouts and runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from virtguests import observe  # noqa: E402  (the listings exactly as virtguests runs them)

BATCHES = {
    "running": observe.batch(observe.RUNNING),
    "every": observe.batch([*observe.EVERY, observe.MANAGED_SAVE]),
}
TIMEOUT = 30.0
TEST_TIMEOUT = 5.0  # test-driver calls are instant; a hung one is retried sooner
RETRIES = 3
# libvirt waits 30 s for a domain's job (state-change lock) before it fails a call
BUSY_TIMEOUT = 180.0
GROUPS = ("test", "nohost", "qemu", "session", "migrate")
UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/sock"
# --private-libvirtd guests: fixed names and UUIDs so re-recording gives small diffs
FIXTURE_GUEST = ("vg-fixture", "0f1e7a5e-0000-4000-8000-000000000001")
FIXTURE_TRANSIENT = ("vg-fixture-tr", "0f1e7a5e-0000-4000-8000-000000000002")
# migrate group: a guest that migrates, one whose disk only its home daemon has
FIXTURE_MIGRATE = ("vg-fixture-mig", "0f1e7a5e-0000-4000-8000-000000000003")
FIXTURE_LOCAL_DISK = ("vg-fixture-disk", "0f1e7a5e-0000-4000-8000-000000000004")
FIXTURE_HOSTS = ("0f1e7a5e-0000-4000-8000-0000000000a1", "0f1e7a5e-0000-4000-8000-0000000000a2")
"""Host UUIDs of the migrate group's home (and twin) and peer daemons: fixed, so
re-recording gives small diffs."""
LOCAL_DISK = "/var/lib/libvirt/images/vg-fixture-disk.img"
"""Inside the home daemon's mount namespace only (its own tmpfs): no peer can open it."""
MIGRATE_OPTIONS = ("--live", "--persistent", "--undefinesource")
"""What MIGRATE_OPTIONS defaults to (virtguests/config.py)."""


@dataclass
class Guest:
    name: str
    uuid: str


@dataclass
class Spec:
    slug: str
    description: str
    argv: list[str]
    host: Optional[str] = None  # fixtures/hosts/<host>.xml for test recordings
    subjects: Optional[list[str]] = None  # guest names; None = guests named in argv
    env: dict[str, str] = field(default_factory=dict)


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # multi-line output as one double-quoted scalar: "\n" stays visible and exact
    style = '"' if "\n" in data or data.endswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


class Recorder:
    def __init__(self, out: Path, virsh: str) -> None:
        self.out = out
        self.virsh = virsh
        self.version = self._version()
        self.written: list[Path] = []
        # (path, placeholder) pairs replaced in every written text, e.g. a temp dir
        self.replacements: list[tuple[str, str]] = [(str(REPO / "fixtures"), "/FIXTURES")]

    def _version(self) -> str:
        proc = subprocess.run(
            [self.virsh, "--version"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=TIMEOUT,
            env=self.env(),
            check=True,
        )
        return proc.stdout.decode().strip()

    @staticmethod
    def env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
        env.pop("LANG", None)
        env.pop("LIBVIRT_DEFAULT_URI", None)
        env.pop("VIRSH_DEFAULT_CONNECT_URI", None)
        env["LC_ALL"] = "C"
        env.update(extra or {})
        return env

    def run(
        self,
        uri: Optional[str],
        argv: list[str],
        env: Optional[dict[str, str]] = None,
        timeout: float = TIMEOUT,
    ) -> tuple[int, str, str]:
        """Run virsh once; a call that hangs is retried (up to RETRIES times).

        Why: virsh 9.0's ``managedsave`` sometimes never exits when the save job
        ends before virsh starts watching it (the test driver saves instantly;
        ~1 call in 6 hangs on a loaded machine).  The call is repeatable, since
        every test-driver recording starts from the host XML again.
        """
        cmd = [self.virsh] + (["-c", uri] if uri is not None else []) + argv
        for attempt in range(RETRIES + 1):
            try:
                proc = subprocess.run(
                    cmd,
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout,
                    env=self.env(env),
                )
                break
            except subprocess.TimeoutExpired:
                if attempt == RETRIES:
                    raise
                print(f"  virsh {' '.join(argv)} hung for {timeout:.0f}s; retrying",
                      file=sys.stderr)
        return (
            proc.returncode,
            proc.stdout.decode("utf-8", "surrogateescape"),
            proc.stderr.decode("utf-8", "surrogateescape"),
        )

    def session(self, uri: str, steps: list[Any], timeout: float = TIMEOUT
                ) -> tuple[tuple[int, str, str], str]:
        """One interactive ``virsh -c URI`` fed *steps* on a pipe, then EOF: its exit
        status, stdout, stderr, and the exact text it was fed.

        A step is a command line, or a callable run once virsh has answered every line
        before it (known by an ``echo`` of a sync word, fed and recorded like the rest).
        """
        import threading

        proc = subprocess.Popen([self.virsh, "-c", uri], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env(SESSION_ENV), start_new_session=True)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        streams = {"out": bytearray(), "err": bytearray()}
        arrived = threading.Condition()

        def drain(name: str, stream: Any) -> None:
            for chunk in iter(lambda: stream.read1(65536), b""):
                with arrived:
                    streams[name] += chunk
                    arrived.notify_all()

        readers = [threading.Thread(target=drain, args=(name, stream), daemon=True)
                   for name, stream in (("out", proc.stdout), ("err", proc.stderr))]
        for reader in readers:
            reader.start()
        fed: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            for number, step in enumerate(steps):
                line = step if isinstance(step, str) else f"echo recorder-sync-{number}"
                fed.append(line + "\n")
                proc.stdin.write((line + "\n").encode())
                proc.stdin.flush()
                if isinstance(step, str):
                    continue
                want = f"\nrecorder-sync-{number}\n".encode()
                with arrived:
                    if not arrived.wait_for(functools.partial(streams["out"].__contains__, want),
                                            max(0.0, deadline - time.monotonic())):
                        raise SystemExit(f"virsh session on {uri}: no answer to {line!r}")
                step()
            proc.stdin.close()
            rc = proc.wait(max(0.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
            for reader in readers:
                reader.join(5)
        return ((rc, streams["out"].decode("utf-8", "surrogateescape"),
                 streams["err"].decode("utf-8", "surrogateescape")), "".join(fed))

    def stable(self, text: str) -> str:
        for path, placeholder in self.replacements:
            text = text.replace(path, placeholder)
        return text

    def write(
        self,
        driver: str,
        slug: str,
        description: str,
        uri: Optional[str],
        argv: list[str],
        result: tuple[int, str, str],
        subjects: list[Guest],
        env: Optional[dict[str, str]] = None,
        stdin: Optional[str] = None,
    ) -> None:
        rc, out, err = result
        doc: dict[str, Any] = {
            "description": description,
            "virsh_version": self.version,
            "uri": self.stable(uri) if uri is not None else None,
            "argv": [self.stable(arg) for arg in argv],
            "exit": rc,
            "stdout": self.stable(out),
            "stderr": self.stable(err),
            "subjects": [{"name": g.name, "uuid": g.uuid} for g in subjects],
        }
        if env:
            doc["env"] = dict(env)
        if stdin is not None:
            doc["stdin"] = self.stable(stdin)
        path = self.out / f"{driver}-{slug}.yaml"
        with path.open("w", encoding="utf-8") as f:
            f.write("# recorded by tools/record_fixtures.py from real virsh; do not edit\n")
            yaml.dump(doc, f, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        self.written.append(path)
        print(f"  {path.name}: exit {rc}", file=sys.stderr)


def host_guests(xml_path: Path) -> list[Guest]:
    root = ET.parse(xml_path).getroot()
    guests = []
    for dom in root.findall("domain"):
        guests.append(Guest(dom.findtext("name", ""), dom.findtext("uuid", "")))
    return guests


# ---------------------------------------------------------------------------
# test-driver recordings
# ---------------------------------------------------------------------------
W = "11111111-2222-3333-4444-555555555555"  # web1, running (basic.xml, one.xml)
D = "22222222-3333-4444-5555-666666666666"  # db1, paused
T = "33333333-4444-5555-6666-777777777777"  # tr1, transient running
O = "44444444-5555-6666-7777-888888888888"  # old1, shut off  # noqa: E741
S = "55555555-6666-7777-8888-999999999999"  # saved1, shut off with managed save
MISSING = "99999999-8888-7777-6666-555555555555"
UNI = "a0000000-0000-4000-8000-000000000003"  # names.xml unicode guest


def test_specs() -> list[Spec]:
    s: list[Spec] = []

    def add(slug: str, desc: str, host: str, *argv: str, **kw: Any) -> None:
        s.append(Spec(slug, desc, list(argv), host=host, **kw))

    add("connect", "connect succeeds", "basic", "connect")
    add("connect-quiet", "connect with -q", "basic", "-q", "connect")
    add("uri", "uri prints the URI given with -c", "basic", "uri")
    # list: tables
    for host in ("empty", "one", "basic", "names"):
        add(f"list-{host}", f"list (table, active guests), host {host}", host, "list")
        add(f"list-all-{host}", f"list --all (table), host {host}", host, "list", "--all")
        add(f"list-all-{host}-quiet", f"-q list --all, host {host}", host, "-q", "list", "--all")
        add(f"list-uuid-{host}", f"list --uuid, host {host}", host, "list", "--uuid")
        add(f"list-name-{host}", f"list --name, host {host}", host, "list", "--name")
        add(
            f"list-uuid-name-{host}",
            f"list --uuid --name, host {host}",
            host,
            "list",
            "--uuid",
            "--name",
        )
        add(
            f"list-uuid-name-all-{host}",
            f"list --uuid --name --all, host {host}",
            host,
            "list",
            "--uuid",
            "--name",
            "--all",
        )
    add("list-quiet-basic", "-q list (no header)", "basic", "-q", "list")
    add("list-uuid-quiet-basic", "-q list --uuid", "basic", "-q", "list", "--uuid")
    add(
        "list-all-names-utf8",
        "list --all with unicode names under LC_ALL=C.UTF-8",
        "names",
        "list",
        "--all",
        env={"LC_ALL": "C.UTF-8"},
    )
    combos = [
        ("persistent", ["--persistent"]),
        ("persistent-all", ["--persistent", "--all"]),
        ("transient", ["--transient"]),
        ("transient-all", ["--transient", "--all"]),
        ("with-managed-save", ["--with-managed-save"]),
        ("with-managed-save-all", ["--with-managed-save", "--all"]),
        ("state-running", ["--state-running"]),
        ("state-running-all", ["--state-running", "--all"]),
        ("state-shutoff", ["--state-shutoff"]),
        ("state-shutoff-running", ["--state-shutoff", "--state-running"]),
        ("inactive", ["--inactive"]),
    ]
    for slug, extra in combos:
        add(
            f"list-uuid-name-{slug}",
            f"list --uuid --name {' '.join(extra)}",
            "basic",
            "list",
            "--uuid",
            "--name",
            *extra,
        )
    add(
        "list-uuid-persistent",
        "list --uuid --persistent",
        "basic",
        "list",
        "--uuid",
        "--persistent",
    )
    add(
        "list-name-all-state-shutoff",
        "list --name --all --state-shutoff",
        "basic",
        "list",
        "--name",
        "--all",
        "--state-shutoff",
    )
    add(
        "list-all-state-shutoff-table",
        "list --all --state-shutoff (table)",
        "basic",
        "list",
        "--all",
        "--state-shutoff",
    )
    add(
        "list-table-uuid-error",
        "list --table --uuid is rejected",
        "basic",
        "list",
        "--table",
        "--uuid",
    )
    add(
        "list-table-name-error",
        "list --table --name is rejected",
        "basic",
        "list",
        "--table",
        "--name",
    )
    # command strings: several commands in one virsh process
    for host in ("empty", "basic", "names"):
        for what, text in BATCHES.items():
            add(f"batch-{what}-{host}", f"command string: {text}, host {host}", host, text)
    add("batch-failed-command", "a failing command inside a command string", "basic",
        f"domname 1234; echo {observe.BATCH_MARK}; list --uuid")
    add("echo", "echo", "basic", "echo", "a", "b")
    add("echo-quiet", "-q echo", "basic", "-q", "echo", "a", "b")
    # lookups
    add("domname-uuid", "domname UUID", "basic", "domname", W)
    add("domname-id", "domname ID", "basic", "domname", "2", subjects=["db1"])
    add("domname-name-error", "domname does not accept a name", "basic", "domname", "web1")
    add("domname-unicode", "domname UUID of a unicode-named guest", "names", "domname", UNI)
    add("domname-quiet", "-q domname UUID", "basic", "-q", "domname", W)
    add("domid-running", "domid UUID (running)", "basic", "domid", W)
    add("domid-paused-name", "domid NAME (paused)", "basic", "domid", "db1")
    add("domid-shutoff", "domid UUID (shut off prints -)", "basic", "domid", O)
    add("domid-id-error", "domid does not accept an id", "basic", "domid", "1", subjects=[])
    add("domuuid-name", "domuuid NAME", "basic", "domuuid", "web1")
    add("domuuid-id", "domuuid ID", "basic", "domuuid", "1", subjects=["web1"])
    add("domuuid-uuid-error", "domuuid does not accept a uuid", "basic", "domuuid", W)
    for slug, uuid in (("running", W), ("paused", D), ("shutoff", O), ("saved", S)):
        add(f"domstate-{slug}", f"domstate UUID ({slug})", "basic", "domstate", uuid)
        add(
            f"domstate-reason-{slug}",
            f"domstate --reason UUID ({slug})",
            "basic",
            "domstate",
            "--reason",
            uuid,
        )
    add("domstate-id", "domstate ID", "basic", "domstate", "2", subjects=["db1"])
    add(
        "domstate-reason-unicode-name",
        "domstate --reason NAME (unicode)",
        "names",
        "domstate",
        "--reason",
        "ünïcødé-日本",
    )
    add("domstate-missing-arg", "domstate without a domain", "basic", "domstate")
    add("dominfo-running", "dominfo UUID (running; CPU time varies)", "basic", "dominfo", W)
    add("dominfo-saved", "dominfo UUID (shut off, managed save)", "basic", "dominfo", S)
    # managedsave
    add("managedsave-ok", "managedsave UUID (running guest)", "basic", "managedsave", W)
    add(
        "managedsave-bypass-cache-ok",
        "managedsave --bypass-cache UUID",
        "basic",
        "managedsave",
        "--bypass-cache",
        W,
    )
    add("managedsave-ok-name", "managedsave NAME", "basic", "managedsave", "web1")
    add("managedsave-paused-ok", "managedsave UUID (paused guest)", "basic", "managedsave", D)
    add("managedsave-quiet", "-q managedsave UUID", "basic", "-q", "managedsave", W)
    add("managedsave-transient", "managedsave UUID of a transient guest", "basic", "managedsave", T)
    add(
        "managedsave-not-running", "managedsave UUID of a shut off guest", "basic", "managedsave", O
    )
    add("managedsave-remove", "managedsave-remove UUID", "basic", "managedsave-remove", S)
    add(
        "domjobinfo-running", "domjobinfo UUID (test driver: unsupported)", "basic", "domjobinfo", W
    )
    add(
        "domjobinfo-shutoff",
        "domjobinfo UUID shut off (test driver: unsupported)",
        "basic",
        "domjobinfo",
        O,
    )
    # shutdown / destroy / start
    add("shutdown-ok", "shutdown UUID (running)", "basic", "shutdown", W)
    add("shutdown-ok-name", "shutdown NAME (running)", "basic", "shutdown", "web1")
    add("shutdown-quiet", "-q shutdown UUID", "basic", "-q", "shutdown", W)
    add("shutdown-not-running", "shutdown UUID of a shut off guest", "basic", "shutdown", O)
    add("destroy-ok", "destroy UUID", "basic", "destroy", W)
    add("destroy-quiet", "-q destroy UUID", "basic", "-q", "destroy", W)
    add(
        "domjobinfo-quiet",
        "-q domjobinfo UUID (test driver: unsupported)",
        "basic",
        "-q",
        "domjobinfo",
        W,
    )
    add("destroy-not-running", "destroy UUID of a shut off guest", "basic", "destroy", O)
    add("start-name", "start NAME", "basic", "start", "old1")
    add("start-uuid", "start UUID", "basic", "start", O)
    add("start-saved", "start UUID of a managed-saved guest", "basic", "start", S)
    add(
        "start-bypass-cache",
        "start --bypass-cache UUID (test driver: unsupported flag)",
        "basic",
        "start",
        "--bypass-cache",
        S,
    )
    add("start-active", "start UUID of a running guest", "basic", "start", W)
    add("start-quiet", "-q start UUID", "basic", "-q", "start", O)
    add("domtime-sync", "domtime --sync NAME (test driver)", "basic", "domtime", "--sync", "web1")
    add(
        "domtime-sync-shutoff",
        "domtime --sync UUID of a shut off guest",
        "basic",
        "domtime",
        "--sync",
        O,
    )
    # missing guests
    for cmd in ("domid", "domname", "domstate", "start", "managedsave", "shutdown"):
        add(f"{cmd}-missing-uuid", f"{cmd} on an unknown uuid", "basic", cmd, MISSING)
        add(f"{cmd}-missing-name", f"{cmd} on an unknown name", "basic", cmd, "nosuch")
    add("unknown-command", "an unknown virsh command", "basic", "frobnicate")
    add("unknown-option", "an unknown list option", "basic", "list", "--frobnicate")
    return s


def record_test(rec: Recorder) -> None:
    hosts = REPO / "fixtures" / "hosts"
    for spec in test_specs():
        assert spec.host is not None
        xml = hosts / f"{spec.host}.xml"
        uri = f"test://{xml}"
        guests = host_guests(xml)
        if spec.subjects is not None:
            subjects = [g for g in guests if g.name in spec.subjects]
        elif spec.argv and spec.argv[0 if spec.argv[0] != "-q" else 1].split()[0] == "list":
            subjects = guests
        else:
            subjects = [g for g in guests if g.name in spec.argv or g.uuid in spec.argv]
        result = rec.run(uri, spec.argv, spec.env, timeout=TEST_TIMEOUT)
        rec.write("test", spec.slug, spec.description, uri, spec.argv, result, subjects, spec.env)


def record_extra_test_uri(rec: Recorder, uri: str) -> None:
    """A few list forms against another test-driver URI (e.g. test:///default)."""
    _rc, out, _ = rec.run(uri, ["-q", "list", "--uuid", "--name", "--all"])
    guests = [Guest(*reversed(line.split(" ", 1))) for line in out.splitlines() if line]
    for argv in (["uri"], ["list", "--all"], ["list", "--uuid", "--name", "--all"]):
        slug = "custom-" + "-".join(a.lstrip("-") for a in argv)
        rec.write("test", slug, f"{' '.join(argv)} on {uri}", uri, argv, rec.run(uri, argv), guests)


def record_nohost(rec: Recorder) -> None:
    for slug, argv in (("connect", ["connect"]), ("list-all", ["list", "--all"]),
                       ("q-list-uuid", ["-q", "list", "--uuid"]),
                       ("batch-running", [BATCHES["running"]])):
        rec.write(
            "nohost",
            slug,
            f"{' '.join(argv)} against a URI where no daemon listens",
            UNREACHABLE_URI,
            argv,
            rec.run(UNREACHABLE_URI, argv),
            [],
        )
    # the default system URI, only if nothing is listening there on this machine
    result = rec.run("qemu:///system", ["connect"])
    if result[0] != 0:
        rec.write(
            "nohost",
            "system-connect",
            "connect to qemu:///system with no libvirtd",
            "qemu:///system",
            ["connect"],
            result,
            [],
        )
    else:
        print("  skipped nohost-system-connect: a daemon answers qemu:///system", file=sys.stderr)
    rc, out, err = rec.run(None, ["--version"])
    rec.write(
        "nohost",
        "version",
        "virsh --version (no connection)",
        None,
        ["--version"],
        (rc, out, err),
        [],
    )


# ---------------------------------------------------------------------------
# session recordings: one virsh reading commands on a pipe (virtguests/session.py)
# ---------------------------------------------------------------------------
SESSION_ENV = {"TERM": "dumb", "INPUTRC": "/dev/null", "XDG_CACHE_HOME": "/dev/null"}
"""What virtguests gives a session's virsh (virtguests/session.py ENV)."""


def _marked(*lines: str, mark: str = "vg-mark") -> list[str]:
    """Each line followed by the markers virtguests sends after a command."""
    out = [f"echo --err {mark}-0", f"echo {mark}-0"]
    for number, line in enumerate(lines, 1):
        out += [line, f"echo --err {mark}-{number}", f"echo {mark}-{number}"]
    return out


def record_session(rec: Recorder, private: bool) -> None:
    xml = REPO / "fixtures" / "hosts" / "basic.xml"
    uri = f"test://{xml}"
    guests = host_guests(xml)
    sessions = {
        "basic": ("commands on a pipe, each followed by the markers: listings, a "
                  "failed command, a command string, quoting of ; and quotes",
                  _marked("list --uuid --name", f"domstate --reason {W}",
                          f"shutdown {MISSING}", BATCHES["running"], "domstate 'x;y'",
                          "echo 'a b' 'it'\\''s' \"c\\\"d\" e\\;f", f"destroy {W}",
                          "list --uuid")),
        "long-line": ("a command line longer than readline's 80 columns",
                      _marked("domstate " + "x" * 300, "uri")),
        "no-markers": ("commands on a pipe, no markers, then EOF",
                       ["list --uuid", f"domstate {MISSING}"]),
    }
    for slug, (desc, lines) in sessions.items():
        result, fed = rec.session(uri, lines)
        rec.write("test", f"session-{slug}", desc, uri, [], result, guests, SESSION_ENV, fed)
    result, fed = rec.session(UNREACHABLE_URI, _marked("list --uuid"))
    rec.write("nohost", "session-connect", "a session on a URI where no daemon listens",
              UNREACHABLE_URI, [], result, [], SESSION_ENV, fed)
    if private:
        record_session_lost(rec)


def record_session_lost(rec: Recorder) -> None:
    """A session whose libvirtd is killed between two commands."""
    sys.path.insert(0, str(REPO))
    from tools.realhost.libvirtd import PrivateLibvirtd, kill_and_wait

    if os.geteuid() != 0:
        raise SystemExit("--private-libvirtd needs root (mount namespace, libvirtd)")
    with PrivateLibvirtd() as daemon:
        rec.replacements.append((str(daemon.workdir), "/LIBVIRTD"))

        def kill_libvirtd() -> None:
            pid = daemon.pid
            assert pid is not None
            if not kill_and_wait(pid, signal.SIGKILL, 30):
                raise SystemExit(f"libvirtd {pid} still there 30 s after SIGKILL")

        lines = _marked("list --uuid")
        after = _marked("list --uuid", "uri", mark="vg-after")[2:]
        steps: list[Any] = [*lines, kill_libvirtd, *after]
        result, fed = rec.session(daemon.test_uri, steps)
        rec.write("qemu", "session-lost", "a session whose libvirtd is killed (SIGKILL) "
                  "after its first command", daemon.test_uri, [], result, [], SESSION_ENV, fed)

        def restart_libvirtd() -> None:
            kill_libvirtd()
            daemon.stop()
            daemon.start()

        daemon.stop()  # killed by the recording above
        daemon.start()
        steps = [*lines, restart_libvirtd, *after]
        result, fed = rec.session(daemon.test_uri, steps)
        rec.write("qemu", "session-reconnect", "a session whose libvirtd is killed (SIGKILL) "
                  "and started again after its first command", daemon.test_uri, [], result, [],
                  SESSION_ENV, fed)


# ---------------------------------------------------------------------------
# qemu recordings (live private libvirtd)
# ---------------------------------------------------------------------------
def wait_state(rec: Recorder, uri: str, uuid: str, want: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        _, state, _ = rec.run(uri, ["-q", "domstate", uuid])
        if state.strip() == want:
            return state.strip()
        time.sleep(0.2)
    raise RuntimeError(f"guest {uuid} did not reach {want!r} (last: {state.strip()!r})")


EVENT_SETTLE = 2.0
"""Seconds an event watch is given to connect and register before the recorded call, and
events to arrive after it.  The recording checks it saw the guest's events (it raises
otherwise): a watch that missed them is never written."""


class EventWatch:
    """``virsh -c URI event --loop --event lifecycle`` (virtguests' own watch,
    ``commands.lifecycle_events``) in the background while something happens; ``stop()``
    ends it as a user would (SIGINT) and returns its exit status, stdout and stderr."""

    def __init__(self, rec: Recorder, uri: str) -> None:
        from virtguests import commands

        self.uri = uri
        self.argv = commands.lifecycle_events()
        self.proc = subprocess.Popen([rec.virsh, "-c", uri, *self.argv],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=rec.env(),
                                     start_new_session=True)

    def stop(self, guest: Guest) -> tuple[int, str, str]:
        time.sleep(EVENT_SETTLE)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
        text = out.decode("utf-8", "surrogateescape")
        if f"'{guest.name}'" not in text and f" {guest.name}:" not in text:
            raise SystemExit(f"event watch on {self.uri}: no event of {guest.name} "
                             f"(stdout {text!r}, stderr {err!r})")
        return self.proc.returncode, text, err.decode("utf-8", "surrogateescape")


def watched(rec: Recorder, uris: dict[str, str]) -> dict[str, EventWatch]:
    """An EventWatch per URI (key: the fixture slug's side), connected before returning."""
    watches = {side: EventWatch(rec, uri) for side, uri in uris.items()}
    time.sleep(EVENT_SETTLE)
    return watches


def _listed(out: str) -> list[Guest]:
    """Guests from ``-q list --uuid --name`` output (``UUID NAME`` lines)."""
    guests = []
    for line in out.splitlines():
        uuid, _, name = line.strip().partition(" ")
        if uuid:
            guests.append(Guest(name, uuid))
    return guests


def record_qemu(rec: Recorder, uri: str, guest: Optional[str] = None) -> None:
    """Record the qemu forms with a running persistent guest (``guest``: its name)."""
    rc, out, err = rec.run(
        uri, ["-q", "list", "--uuid", "--name", "--state-running", "--persistent"]
    )
    running = [g for g in _listed(out) if guest is None or g.name == guest]
    if rc != 0 or not running:
        raise SystemExit(
            f"--qemu-uri {uri}: no running persistent guest {guest or ''} to record with "
            f"({err.strip()})"
        )
    g = running[0]
    uuid, name = g.uuid, g.name
    everyone = _listed(rec.run(uri, ["-q", "list", "--uuid", "--name", "--all"])[1])
    print(f"recording qemu forms with guest {name} ({uuid}) at {uri}", file=sys.stderr)

    def rec1(
        slug: str, desc: str, *argv: str, subjects: Optional[list[Guest]] = None
    ) -> tuple[int, str, str]:
        result = rec.run(uri, list(argv))
        rec.write("qemu", slug, desc, uri, list(argv), result, [g] if subjects is None
                  else subjects)
        return result

    def rec_lists(when: str) -> None:
        """The listing forms virtguests uses, on a qemu host (``when``: slug suffix)."""
        forms = [
            ["list", "--uuid", "--name"],
            ["list", "--uuid", "--name", "--all"],
            ["list", "--uuid", "--name", "--persistent"],
            ["list", "--uuid", "--name", "--all", "--persistent"],
            ["list", "--uuid"],
            ["list", "--all", "--uuid", "--name", "--with-managed-save"],
            ["-q", "list", "--uuid", "--name"],
        ]
        for argv in forms:
            slug = "-".join(a.lstrip("-") for a in argv) + f"-{when}"
            rec1(slug, f"{' '.join(argv)} ({when.replace('-', ' ')})", *argv,
                 subjects=everyone)
        for what, text in BATCHES.items():
            rec1(f"batch-{what}-{when}", f"command string: {text} ({when.replace('-', ' ')})",
                 text, subjects=everyone)

    rec1("list-all", "list --all on a qemu host", "list", "--all", subjects=everyone)
    rec_lists("both-running")
    rec1(
        "domstate-reason-running", "domstate --reason UUID (running)", "domstate", "--reason", uuid
    )
    rec1("domjobinfo-none", "domjobinfo UUID with no job", "domjobinfo", uuid)
    agent = rec.run(uri, ["domtime", "--sync", name])
    rec.write(
        "qemu",
        "domtime-sync",
        "domtime --sync NAME " + ("(guest agent)" if agent[0] == 0 else "(no guest agent)"),
        uri,
        ["domtime", "--sync", name],
        agent,
        [g],
    )
    # managedsave in the background; domjobinfo and domstate while it runs.  A
    # small guest saves in ~0.1 s, so poll without pausing, and if the save
    # still beat us, restore the guest and try again.
    attempts = 5
    for attempt in range(1, attempts + 1):
        proc = subprocess.Popen(
            [rec.virsh, "-c", uri, "managedsave", uuid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=rec.env(),
        )
        job: Optional[tuple[int, str, str]] = None
        saving: Optional[tuple[int, str, str]] = None
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if job is None:
                result = rec.run(uri, ["domjobinfo", uuid])
                if result[0] == 0 and "Data processed:" in result[1]:
                    job = result
            elif saving is None:
                result = rec.run(uri, ["domstate", "--reason", uuid])
                if proc.poll() is None:  # still saving after the answer: taken during it
                    saving = result
            else:
                time.sleep(0.01)
        out_b, err_b = proc.communicate(timeout=TIMEOUT)
        if (job and saving) or proc.returncode != 0 or attempt == attempts:
            break
        print(f"  the save finished before domjobinfo/domstate saw it; retry {attempt}",
              file=sys.stderr)
        rec.run(uri, ["start", uuid])
        wait_state(rec, uri, uuid, "running")
    if job:
        rec.write("qemu", "domjobinfo-saving", "domjobinfo UUID during managedsave", uri,
                  ["domjobinfo", uuid], job, [g])
    if saving:
        rec.write("qemu", "domstate-reason-saving", "domstate --reason during managedsave",
                  uri, ["domstate", "--reason", uuid], saving, [g])
    if not (job and saving):
        print("  warning: the save was always too quick for domjobinfo/domstate "
              "(a bigger guest, --guest-memory-mib, may help)", file=sys.stderr)
    rec.write(
        "qemu",
        "managedsave-ok",
        "managedsave UUID (running qemu guest)",
        uri,
        ["managedsave", uuid],
        (proc.returncode, out_b.decode(), err_b.decode()),
        [g],
    )
    rec1(
        "domstate-reason-saved", "domstate --reason after managedsave", "domstate", "--reason", uuid
    )
    rec1("domjobinfo-shutoff", "domjobinfo UUID of a shut off guest", "domjobinfo", uuid)
    rec1("managedsave-not-running", "managedsave UUID of a shut off guest", "managedsave", uuid)
    rec1("shutdown-not-running", "shutdown UUID of a shut off guest", "shutdown", uuid)
    rec_lists("one-saved")
    rec1("start-saved", "start UUID of a managed-saved guest", "start", uuid)
    rec1(
        "domstate-reason-restored", "domstate --reason after restore", "domstate", "--reason", uuid
    )
    rec1("start-active", "start UUID of a running guest", "start", uuid)
    rec1("shutdown-ok", "shutdown UUID (running qemu guest)", "shutdown", uuid)
    try:
        wait_state(rec, uri, uuid, "shut off")
        rec1(
            "domstate-reason-shutdown",
            "domstate --reason after shutdown",
            "domstate",
            "--reason",
            uuid,
        )
    except RuntimeError as exc:
        print(f"  warning: {exc}; destroying", file=sys.stderr)
        rec.run(uri, ["destroy", uuid])
    rec1("start-bypass-cache", "start --bypass-cache UUID", "start", "--bypass-cache", uuid)
    rec1("destroy-ok", "destroy UUID", "destroy", uuid)
    rec1(
        "domstate-reason-destroyed", "domstate --reason after destroy", "domstate", "--reason", uuid
    )
    rec.run(uri, ["start", uuid])  # leave the guest running as we found it


# How a save is held in progress: (StalledSave hold, slug suffix, description)
BUSY_HOLDS = (
    ("thread", "", "a slow save: QEMU's migration thread held, QEMU answers libvirt"),
    ("process", "-hung", "QEMU SIGSTOPped mid-save: its monitor does not answer"),
)


def record_qemu_busy(rec: Recorder, daemon: Any, name: str, uuid: str) -> None:
    """Calls on a guest whose managed save is in progress (an earlier one holds its job).

    Why: an earlier virtguests killed mid-save leaves its ``virsh managedsave``
    running; libvirt holds the domain's job for the whole save, so a second save
    or a shutdown waits for the state-change lock and then fails.  The save is
    held in progress (``StalledSave``) two ways, since virsh's answer differs:
    a slow save (QEMU's migration thread stopped) and a hung QEMU (SIGSTOP).
    Each time it is let go, completes, and the guest is restored and left running.
    """
    from tools.realhost.libvirtd import StalledSave

    uri = daemon.qemu_uri
    g = Guest(name, uuid)

    def timed(argv: list[str]) -> tuple[int, str, str]:
        began = time.monotonic()
        result = rec.run(uri, argv, timeout=BUSY_TIMEOUT)
        print(f"  virsh {' '.join(argv)}: exit {result[0]} after "
              f"{time.monotonic() - began:.2f}s", file=sys.stderr)
        return result

    for hold, suffix, how in BUSY_HOLDS:
        wait_state(rec, uri, uuid, "running")
        print(f"recording busy forms: managedsave {uuid} held ({how})", file=sys.stderr)
        with StalledSave(daemon, name, domain=uuid, env=rec.env(), hold=hold) as save:
            state = timed(["domstate", "--reason", uuid])
            if state[1].strip() != "paused (saving)":
                raise SystemExit(f"busy recordings: the held save shows {state!r}, "
                                 "not paused (saving)")
            normal = rec.out / "qemu-domstate-reason-saving.yaml"
            known = yaml.safe_load(normal.read_text()) if normal.exists() else None
            if known and (known["exit"], known["stdout"], known["stderr"]) == state:
                print(f"  domstate --reason: same as {normal.name}; not recorded again",
                      file=sys.stderr)
            else:
                rec.write("qemu", f"domstate-reason-busy{suffix}",
                          f"domstate --reason while another managedsave holds the job ({how})",
                          uri, ["domstate", "--reason", uuid], state, [g])
            for verb in ("managedsave", "shutdown"):
                argv = [verb, uuid]
                rec.write("qemu", f"{verb}-busy{suffix}",
                          f"{verb} UUID while another managedsave of the guest is in "
                          f"progress and holds the domain's job ({how})",
                          uri, argv, timed(argv), [g])
            after = timed(["domstate", "--reason", uuid])
            if after != state:
                raise SystemExit(f"busy recordings: the save ended while recording ({after!r})")
        rc, _out, err = save.result or (-1, "", "")
        print(f"  the held managedsave: exit {rc} after {save.seconds:.2f}s (let go)",
              file=sys.stderr)
        if rc != 0:
            raise SystemExit(f"busy recordings: the held save failed once let go: {err}")
        wait_state(rec, uri, uuid, "shut off")
        rec.run(uri, ["start", uuid])  # restore it: leave the guest running as we found it
    wait_state(rec, uri, uuid, "running")


def record_migrate(rec: Recorder, memory_mib: int) -> None:
    """The migrate group (module docstring): two daemons, a twin of the first, two guests."""
    from tools.realhost.guestimage import build_guest_image, cache_dir, domain_xml
    from tools.realhost.libvirtd import Guest as LiveGuest
    from tools.realhost.libvirtd import PrivateLibvirtd, StalledMigration, StalledSave

    if os.geteuid() != 0:
        raise SystemExit("the migrate group needs root (--private-libvirtd)")
    image = build_guest_image()
    caps = cache_dir() / "libvirt-caps"
    home = PrivateLibvirtd(caps_cache=caps, host_uuid=FIXTURE_HOSTS[0])
    peer = PrivateLibvirtd(caps_cache=caps, host_uuid=FIXTURE_HOSTS[1])
    twin = PrivateLibvirtd(caps_cache=caps, host_uuid=FIXTURE_HOSTS[0])
    with contextlib.ExitStack() as stack, \
            tempfile.TemporaryDirectory(prefix="vg-fixture-mig-") as tmp:
        for daemon, placeholder in ((home, "/LIBVIRTD"), (peer, "/PEERD"), (twin, "/TWIND")):
            stack.enter_context(daemon)
            rec.replacements.append((str(daemon.workdir), placeholder))
        print(f"migrate recordings: home {home.qemu_uri}, peer {peer.qemu_uri}, "
              f"twin {twin.qemu_uri} (home's host UUID)", file=sys.stderr)
        disk = home.ns_path(LOCAL_DISK)
        disk.write_bytes(b"\0" * (1 << 20))
        live = {}
        for (name, uuid), mib, disks in ((FIXTURE_MIGRATE, memory_mib, ()),
                                         (FIXTURE_LOCAL_DISK, 96, (LOCAL_DISK,))):
            console = Path(tmp) / f"{name}.console.log"
            xml = Path(tmp) / f"{name}.xml"
            xml.write_text(domain_xml(name, image=image, console_log=console, uuid=uuid,
                                      memory_mib=mib, disks=disks))
            home.virsh("define", str(xml))
            home.virsh("start", name, timeout=120)
            live[name] = LiveGuest(home, name, console, persistent=True)
        for guest in live.values():
            guest.wait_console("vg: ready", timeout=120)
        g = Guest(*FIXTURE_MIGRATE)
        uuid = g.uuid
        migrate = ["migrate", *MIGRATE_OPTIONS, uuid]

        def rec1(uri: str, slug: str, desc: str, argv: list[str],
                 subjects: Optional[list[Guest]] = None,
                 timeout: float = TIMEOUT) -> tuple[int, str, str]:
            result = rec.run(uri, argv, timeout=timeout)
            rec.write("qemu", slug, desc, uri, argv, result, [g] if subjects is None
                      else subjects)
            return result

        rec1(home.qemu_uri, "capabilities", "capabilities (host UUID: /capabilities/host/uuid; "
             "this daemon's libvirtd.conf host_uuid)", ["capabilities"], subjects=[])
        rec1(home.qemu_uri, "nodememstats", "nodememstats (KiB: total, free, buffers, cached)",
             ["nodememstats"], subjects=[])
        rec1(home.qemu_uri, "dominfo-running", "dominfo UUID (running qemu guest; Max memory)",
             ["dominfo", uuid])
        rec1(home.qemu_uri, "domjobabort-none", "domjobabort UUID with no job",
             ["domjobabort", uuid])

        # an outgoing migration held in progress, then aborted
        print(f"holding a migration of {uuid} to the peer", file=sys.stderr)
        with StalledMigration(home, g.name, peer.qemu_uri, domain=uuid, options=MIGRATE_OPTIONS,
                              env=rec.env()) as held:
            rec1(home.qemu_uri, "domjobinfo-migrating",
                 "domjobinfo UUID during an outgoing migration (held in progress)",
                 ["domjobinfo", uuid])
            rec1(home.qemu_uri, "domstate-reason-migrating",
                 "domstate --reason UUID at home during its outgoing migration",
                 ["domstate", "--reason", uuid])
            rec1(peer.qemu_uri, "domstate-reason-incoming",
                 "domstate --reason UUID on the peer during the incoming migration",
                 ["domstate", "--reason", uuid])
            rec1(peer.qemu_uri, "list-uuid-name-all-incoming",
                 "list --uuid --name --all on the peer during an incoming migration",
                 ["list", "--uuid", "--name", "--all"])
            rec1(peer.qemu_uri, "domjobinfo-incoming",
                 "domjobinfo UUID on the peer during the incoming migration",
                 ["domjobinfo", uuid])
            rec1(home.qemu_uri, "domjobabort-migrating",
                 "domjobabort UUID during its outgoing migration (held: the abort "
                 "completes once the migration runs again)", ["domjobabort", uuid])
        rec.write("qemu", "migrate-aborted", "migrate UUID PEER aborted by domjobabort",
                  home.qemu_uri, [*migrate, peer.qemu_uri], held.wait(), [g])
        rec1(home.qemu_uri, "domstate-reason-migration-aborted",
             "domstate --reason UUID at home after its migration was aborted",
             ["domstate", "--reason", uuid])
        rec1(peer.qemu_uri, "domstate-migration-aborted-peer",
             "domstate UUID on the peer after the migration was aborted",
             ["domstate", uuid])

        # refusals: the guest stays home, running
        rec1(home.qemu_uri, "migrate-unreachable", "migrate UUID to a peer URI where no "
             "daemon listens", [*migrate, UNREACHABLE_URI])
        rec1(home.qemu_uri, "migrate-same-host", "migrate UUID to a daemon with the same host "
             "UUID as home's", [*migrate, twin.qemu_uri])
        disk_guest = Guest(*FIXTURE_LOCAL_DISK)
        rec1(home.qemu_uri, "migrate-local-disk", "migrate UUID of a guest whose disk is "
             "only on home (no shared storage)",
             ["migrate", *MIGRATE_OPTIONS, disk_guest.uuid, peer.qemu_uri], [disk_guest])
        rec1(home.qemu_uri, "migrate-missing", "migrate UUID of no guest",
             ["migrate", *MIGRATE_OPTIONS, MISSING, peer.qemu_uri], [])
        rec1(home.qemu_uri, "domstate-reason-migrate-refused",
             "domstate --reason UUID after the refused migrations", ["domstate", "--reason", uuid])

        # success, then back home; lifecycle events on both daemons meanwhile
        sides = {"home": home.qemu_uri, "peer": peer.qemu_uri}
        watches = watched(rec, sides)
        rec1(home.qemu_uri, "migrate-ok", "migrate --live --persistent --undefinesource UUID "
             "PEER (running guest)", [*migrate, peer.qemu_uri], timeout=300)
        record_events(rec, watches, "migrate", "the migration of a running guest to the peer",
                      g)
        rec1(peer.qemu_uri, "domstate-reason-migrated",
             "domstate --reason UUID on the peer after the migration", ["domstate", "--reason",
                                                                          uuid])
        rec1(peer.qemu_uri, "dominfo-migrated", "dominfo UUID on the peer after the migration",
             ["dominfo", uuid])
        rec1(peer.qemu_uri, "domjobinfo-migrated", "domjobinfo UUID on the peer after the "
             "migration", ["domjobinfo", uuid])
        rec1(home.qemu_uri, "domjobinfo-migrated-away", "domjobinfo UUID at home after the "
             "guest left (--undefinesource)", ["domjobinfo", uuid])
        rec1(home.qemu_uri, "list-uuid-name-all-migrated-away", "list --uuid --name --all at "
             "home after the guest left", ["list", "--uuid", "--name", "--all"],
             subjects=[disk_guest])
        watches = watched(rec, sides)
        rec1(peer.qemu_uri, "migrate-back-ok", "migrate UUID HOME from the peer (back home)",
             [*migrate, home.qemu_uri], timeout=300)
        record_events(rec, watches, "migrate-back", "the migration of the running guest back "
                      "home from the peer", g)
        rec1(home.qemu_uri, "domstate-reason-migrated-back",
             "domstate --reason UUID at home after coming back", ["domstate", "--reason", uuid])
        # the same calls in a session, as virtguests sends them (virtguests/session.py)
        from virtguests.session import command_line

        lines = [command_line(args) for args in (
            ["domjobabort", uuid], [*migrate, UNREACHABLE_URI], [*migrate, peer.qemu_uri],
            ["domstate", "--reason", uuid])]
        result, fed = rec.session(home.qemu_uri, _marked(*(line for line in lines if line)),
                                  timeout=300)
        rec.write("qemu", "session-migrate", "a session at home: domjobabort with no job, "
                  "migrate to an unreachable peer, migrate to the peer, domstate", home.qemu_uri,
                  [], result, [g], SESSION_ENV, fed)
        rec.run(peer.qemu_uri, [*migrate, home.qemu_uri], timeout=300)
        wait_state(rec, home.qemu_uri, uuid, "running")
        record_migrate_paused(rec, home.qemu_uri, peer.qemu_uri, g)
        # a migrate while a managedsave of the guest holds its job (libvirt's lock wait)
        with StalledSave(home, g.name, domain=uuid, env=rec.env()):
            rec1(home.qemu_uri, "migrate-busy", "migrate UUID PEER while a managedsave of "
                 "the guest is in progress and holds its job (after libvirt's lock wait)",
                 [*migrate, peer.qemu_uri], timeout=BUSY_TIMEOUT)
        wait_state(rec, home.qemu_uri, uuid, "shut off")
        rec.run(home.qemu_uri, ["start", uuid])
        wait_state(rec, home.qemu_uri, uuid, "running")
        rec.run(home.qemu_uri, ["destroy", uuid])
        rec1(home.qemu_uri, "migrate-not-running", "migrate UUID of a shut off guest",
             [*migrate, peer.qemu_uri])
        rec1(home.qemu_uri, "dominfo-shutoff", "dominfo UUID (shut off qemu guest)",
             ["dominfo", uuid])


def record_events(rec: Recorder, watches: dict[str, EventWatch], slug: str, what: str,
                  g: Guest) -> None:
    """Stop *watches* (from ``watched``) and write each as ``event-SLUG-SIDE``."""
    for side, watch in watches.items():
        rec.write("qemu", f"event-{slug}-{side}", f"{' '.join(watch.argv)} on the {side} "
                  f"daemon during {what} (ended by SIGINT)", watch.uri, watch.argv,
                  watch.stop(g), [g])


def record_migrate_paused(rec: Recorder, home: str, peer: str, g: Guest) -> None:
    """A paused guest migrated with the default options, and back; left running at home."""
    migrate = ["migrate", *MIGRATE_OPTIONS, g.uuid]
    rec.run(home, ["suspend", g.uuid])
    wait_state(rec, home, g.uuid, "paused")
    rec.write("qemu", "domstate-reason-paused-before-migrate", "domstate --reason UUID at "
              "home, suspended, before its migration", home, ["domstate", "--reason", g.uuid],
              rec.run(home, ["domstate", "--reason", g.uuid]), [g])
    sides = {"home": home, "peer": peer}
    watches = watched(rec, sides)
    argv = [*migrate, peer]
    rec.write("qemu", "migrate-paused-ok", "migrate --live --persistent --undefinesource UUID "
              "PEER (paused guest)", home, argv, rec.run(home, argv, timeout=300), [g])
    record_events(rec, watches, "migrate-paused", "the migration of a paused guest to the "
                  "peer", g)
    for slug, desc, args in (
            ("domstate-reason-migrated-paused", "domstate --reason UUID on the peer after "
             "a paused guest's migration", ["domstate", "--reason", g.uuid]),
            ("dominfo-migrated-paused", "dominfo UUID on the peer after a paused guest's "
             "migration", ["dominfo", g.uuid])):
        rec.write("qemu", slug, desc, peer, args, rec.run(peer, args), [g])
    watches = watched(rec, sides)
    argv = [*migrate, home]
    rec.write("qemu", "migrate-paused-back-ok", "migrate UUID HOME from the peer (the "
              "paused guest back home)", peer, argv, rec.run(peer, argv, timeout=300), [g])
    record_events(rec, watches, "migrate-paused-back", "the migration of the paused guest "
                  "back home from the peer", g)
    rec.write("qemu", "domstate-reason-migrated-paused-back", "domstate --reason UUID at "
              "home after the paused guest came back", home, ["domstate", "--reason", g.uuid],
              rec.run(home, ["domstate", "--reason", g.uuid]), [g])
    rec.run(home, ["resume", g.uuid])
    wait_state(rec, home, g.uuid, "running")


@contextlib.contextmanager
def private_libvirtd(rec: Recorder, memory_mib: int) -> Iterator[Any]:
    """A throwaway libvirtd with the fixture guests running; yields it (a PrivateLibvirtd)."""
    sys.path.insert(0, str(REPO))
    from tools.realhost.guestimage import build_guest_image, cache_dir, domain_xml
    from tools.realhost.libvirtd import Guest as LiveGuest
    from tools.realhost.libvirtd import LibvirtdError, PrivateLibvirtd

    if os.geteuid() != 0:
        raise SystemExit("--private-libvirtd needs root (mount namespace, libvirtd, QEMU)")
    image = build_guest_image()
    daemon = PrivateLibvirtd(caps_cache=cache_dir() / "libvirt-caps")
    try:
        daemon.start()
    except LibvirtdError as exc:
        raise SystemExit(f"--private-libvirtd: {exc}") from exc
    rec.replacements.append((str(daemon.workdir), "/LIBVIRTD"))
    try:
        with tempfile.TemporaryDirectory(prefix="vg-fixture-guests-") as tmp:
            live = []
            for (name, uuid), persistent, mib in (
                (FIXTURE_GUEST, True, memory_mib),
                (FIXTURE_TRANSIENT, False, 96),
            ):
                console = Path(tmp) / f"{name}.console.log"
                xml = Path(tmp) / f"{name}.xml"
                xml.write_text(domain_xml(name, image=image, console_log=console, uuid=uuid,
                                          memory_mib=mib))
                if persistent:
                    daemon.virsh("define", str(xml))
                    daemon.virsh("start", name, timeout=120)
                else:
                    daemon.virsh("create", str(xml), timeout=120)
                live.append(LiveGuest(daemon, name, console, persistent))
            for guest in live:
                guest.wait_console("vg: ready", timeout=120)
            print(f"private libvirtd at {daemon.qemu_uri}", file=sys.stderr)
            yield daemon
    finally:
        daemon.stop()
        daemon.cleanup()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qemu-uri", help="live libvirtd URI with a running QEMU guest")
    ap.add_argument(
        "--test-uri",
        help="also record list forms from this test:/// URI (e.g. test:///default); "
        "the main recordings always use fixtures/hosts/*.xml",
    )
    ap.add_argument(
        "--private-libvirtd",
        action="store_true",
        help="start a throwaway libvirtd with tiny QEMU guests (root) and record the "
        "qemu forms against it",
    )
    ap.add_argument(
        "--guest-memory-mib",
        type=int,
        default=512,
        help="RAM of the --private-libvirtd guest (the save must last long enough "
        "for domjobinfo to see it; default 512)",
    )
    ap.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        help="record only this group (repeatable; default: all); qemu still needs "
        "--qemu-uri or --private-libvirtd",
    )
    ap.add_argument("--out", type=Path, default=REPO / "fixtures")
    ap.add_argument("--virsh", default="virsh")
    ns = ap.parse_args(argv)
    if ns.qemu_uri and ns.private_libvirtd:
        ap.error("--qemu-uri and --private-libvirtd are mutually exclusive")
    ns.out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(ns.out, ns.virsh)
    print(f"virsh {rec.version}", file=sys.stderr)
    groups = set(ns.only or GROUPS)
    if "test" in groups:
        record_test(rec)
        if ns.test_uri:
            record_extra_test_uri(rec, ns.test_uri)
    if "nohost" in groups:
        record_nohost(rec)
    if "qemu" in groups and ns.qemu_uri:
        record_qemu(rec, ns.qemu_uri)
        print("  busy recordings skipped: they stop QEMU threads, so only with "
              "--private-libvirtd", file=sys.stderr)
    if "session" in groups:
        record_session(rec, ns.private_libvirtd)
    if "qemu" in groups and ns.private_libvirtd:
        with private_libvirtd(rec, ns.guest_memory_mib) as daemon:
            record_qemu(rec, daemon.qemu_uri, guest=FIXTURE_GUEST[0])
            record_qemu_busy(rec, daemon, *FIXTURE_GUEST)
    if "migrate" in groups:
        if ns.private_libvirtd:
            record_migrate(rec, ns.guest_memory_mib)
        else:
            print("  migrate recordings skipped: they need --private-libvirtd", file=sys.stderr)
    print(f"wrote {len(rec.written)} fixtures to {ns.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
