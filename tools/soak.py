"""`make soak`: random stop/start cycles with injected faults on a simulated host.

A crash-consistency test in the spirit of a database's: every cycle runs
``virtguests stop``, power-cycles the simulated host, runs ``virtguests start``
and then checks that no guest was lost.

The host
    2-3 URIs (``default``, ``qemu+ssh://hostb/system``, ``test:///hostc``) with
    10-20 persistent guests, plus a few transient ones that come and go, played
    by the fake virsh (``virtguests/testing/fakevirsh/``) from a host YAML.

How the host state is carried between phases
    The fake keeps the live host in ``<host>.state.json`` and rebuilds it from
    the YAML whenever the YAML changes, which would forget every guest's state.
    So the YAML is only rewritten at phase boundaries, when no virtguests and no
    fake virsh runs (left-over ones are killed first): the soak reads the state
    file under the fake's own ``flock`` and applies the transitions that are due
    (``virtguests.testing.apply_due_transitions_now``: finished saves, shutdowns,
    starts), writes a new YAML that lists every guest with its current state
    (``state``, ``managed_save``, ``persistent``, ``uuid``) plus the next phase's
    faults, and deletes the state file so the next fake call rebuilds it from
    that YAML. Guest state therefore survives any change of faults, and the
    per-URI ``unreachable_calls`` counters restart at every phase.

The power cycle (between stop and start)
    Done on that same snapshot: every guest still active is hard powered off
    (``state: shutoff`` without a managed-save image; a save still in flight is
    cut and leaves no image), transient guests vanish. Saved guests keep their
    image. Fake virsh processes orphaned by a ``kill -9`` get a short grace and
    are then killed, as the shutdown of the host would.

Faults (random per cycle, listed on the cycle's line)
    stop:  ON_SHUTDOWN suspend | shutdown | "suspend shutdown poweroff",
           PARALLEL_SHUTDOWN 0/3, PARALLEL_SUSPEND 0/3, SHUTDOWN_TIMEOUT 1-2,
           CONNECT_RETRIES 0-2; per guest fail_save, fail_shutdown,
           ignore_shutdown, slow shutdown, slow save, hang managedsave/shutdown;
           per URI unreachable, unreachable_calls N (libvirtd still starting),
           hang; SIGKILL (or SIGTERM) of virtguests at a random moment, then a
           rerun of the same command, as systemd would; after a SIGKILL the
           virsh children are either killed with it (systemd's control-group
           kill) or left running as orphans.
    start: per URI unreachable, unreachable_calls, hang; per guest fail_start,
           hang start, slow start; SIGKILL/SIGTERM and rerun.
    Through the fake's fault layer (``faults:`` rules, drawn from a second random
    stream so the faults above stay what they were for a seed):
      stop:  per URI a wedge after the listing (every later call hangs: "wedge"),
             a failed status poll (``list --uuid`` fails: "pollfail") or one that
             hangs ("pollhang"); stdout closed (``>&-``, "out=closed") or a full
             stdout pipe with SIGTERM/SIGINT arriving while virtguests is blocked
             writing a progress line, drained a moment later ("out=full+TERM");
             these runs have no kill plan, and are rerun after the signal.
      start: per URI a wedge after the first call; stdout closed.
    Saves already in progress (a third random stream, so both lists above stay what
    they were for a seed): at stop, per URI, another job (a run killed mid-save,
    another tool, the admin) is saving one running guest ("u1=saving:SHAPE"): its save
    ends within the lock wait of virtguests' first request, after it but before
    SAVE_TIMEOUT, or past SAVE_TIMEOUT; the URI's lock wait is libvirt's 30 s or
    short ("/short-lock"), as in the property test (``aim_saving``).
    Runs start with ``PYTHONUNBUFFERED`` removed, as systemd starts them; runs with
    stdout closed start as the installed wrapper does (``python -I``).
    Sometimes a cycle begins with an extra `start` (no faults) while guests
    recorded as pending are still down: the administrator retrying leftovers.

Invariant, checked after every cycle
    Every persistent guest that was running before `stop` (and every guest
    still owed from an earlier cycle) is running after `start`, or
      * it is still recorded (list file or virtguests-pending) and virtguests
        named it (name or UUID) on stderr, or on a stdout line saying "failed",
        during the cycle ("accounted": the next start retries it), or
      * its URI could not be reached at stop ("Can't connect to URI") and
        virtguests named it on stderr as unprotected ("unprotected": nobody can
        save a guest on an unreachable host, but the operator was told).
    Anything else is a lost guest. Transient guests are exempt. At stop, from the
    fake's journal and state (not from virtguests' output): no guest destroyed, or shut
    down, while a save of it was in progress (another job's, or an orphaned virsh's
    after a SIGKILL), and a guest another job was saving ends saved and recorded when
    that save completed before the power cut (recorded either way once its URI was
    listed); a save still running at the power cut is cut. Also: no fake
    virsh left running after a virtguests run that was not killed, no Python
    traceback, exit statuses in {0, 1, 6} (1 after SIGTERM), no run hangs (a run
    signalled while blocked on its output must end within OUTPUT_GRACE seconds).
    After the check the soak plays the operator: guests left down and not
    recorded (the "unprotected" ones) are started by hand.

With ``--scenarios N`` the soak then runs N random scenarios of the property test
(``tools/properties.py``, as ``tests/test_properties.py`` runs them: stop then start
on small hosts with fault-layer schedules, checked against issue 10's invariant), one
line each, every one to the end; a failing scenario is saved as YAML for
``python -m tests.test_properties``.

Output: one line per cycle, then ``N cycles, 0 guests lost`` or the violations
with the seed to reproduce them (timing-dependent faults such as the moment of
a kill are drawn from the seed but land on whatever the host is doing then).
Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from virtguests.state import read_list  # noqa: E402
from virtguests.testing import apply_due_transitions_now, write_shim  # noqa: E402

ALL_URIS = ["default", "qemu+ssh://hostb/system", "test:///hostc"]
GUEST_PREFIXES = ["web", "db", "mail", "ci", "dns", "app", "cache", "vpn"]
RUN_TIMEOUT = 120.0
SAVE_TIMEOUT = 2.0  # the config's
OUTPUT_GRACE = 15.0
ORPHAN_GRACE = 1.0

Guests = dict[str, list[dict[str, Any]]]  # URI -> guest dicts of the fake's state


@dataclass
class Run:
    command: str
    code: int
    out: str
    err: str
    seconds: float
    signal_sent: Optional[str] = None  # "KILL" / "TERM" / "INT" when we signalled it
    hung: bool = False
    output: str = "pipe"

    @property
    def label(self) -> str:
        if self.signal_sent and self.code < 0:
            return f"{self.command}:SIG{self.signal_sent}"
        if self.signal_sent:
            return f"{self.command}:{self.code}(SIG{self.signal_sent})"
        return f"{self.command}:{self.code}"


@dataclass
class Violation:
    cycle: int
    what: str
    details: list[str] = field(default_factory=list)


@dataclass
class Owed:
    uri: str
    uuid: str
    name: str
    since: int


class Soak:
    def __init__(self, root: Path, seed: int, verbose: bool = False) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(f"{seed}/fault-layer")
        self.saving_rng = random.Random(f"{seed}/saving")
        self.journal: Optional[Path] = None  # VIRTGUESTS_FAKE_JOURNAL of the stop runs
        self.fault_counts: dict[str, int] = {}
        self.isolated = self._imports_isolated()
        self.seed = seed
        self.verbose = verbose
        self.bin = root / "bin"
        self.virsh = str(self.bin / "virsh")
        self.host_file = root / "host.yaml"
        self.log_file = root / "virsh-calls.jsonl"
        self.config_file = root / "libvirt-guests"
        self.state_dir = root / "state"
        self.state_dir.mkdir(parents=True)
        write_shim(self.bin)
        self.uris = ALL_URIS[: self.rng.choice([2, 3])]
        self.violations: list[Violation] = []
        self.owed: dict[tuple[str, str], Owed] = {}
        self.orphans: set[int] = set()
        self.transient_seq = 0
        self.seen: set[str] = set()  # guest names some earlier virtguests run listed
        self.totals = {"resumed": 0, "accounted": 0, "unprotected": 0, "unseen": 0,
                       "lost": 0, "unnamed": 0, "kills": 0, "runs": 0,
                       "other_saved": 0, "other_cut": 0}
        self._init_host()

    # -- the simulated host ------------------------------------------------------

    def _init_host(self) -> None:
        count = self.rng.randint(10, 20)
        guests: Guests = {u: [] for u in self.uris}
        used: set[str] = set()
        for i in range(count):
            uri = self.uris[i % len(self.uris)]
            while True:
                name = f"{self.rng.choice(GUEST_PREFIXES)}{self.rng.randint(1, 30)}"
                if name not in used:
                    break
            used.add(name)
            guests[uri].append({"name": name, "state": "running", "persistent": True,
                                "managed_save": False})
        self.write_host(guests, {}, {})

    def host_path(self) -> str:
        return os.path.abspath(self.host_file)

    def state_file(self) -> Path:
        return Path(self.host_path() + ".state.json")

    def read_state(self) -> Guests:
        """The live host, read under the fake's flock, with due transitions applied."""
        return apply_due_transitions_now(self.host_path(), str(self.state_file()))

    def settle(self, limit: float = 5.0) -> Guests:
        """Wait (bounded) for jobs in flight (orphaned saves, slow starts) to end."""
        deadline = time.monotonic() + limit
        while True:
            guests = self.read_state()
            ends = [g["job"]["end"] for gs in guests.values() for g in gs if g["job"]]
            if not ends or time.monotonic() >= deadline:
                return guests
            time.sleep(min(max(max(ends) - time.time(), 0.01), 0.2))

    def write_host(self, guests: Guests, uri_faults: dict[str, dict[str, Any]],
                   guest_faults: dict[str, dict[str, Any]],
                   rules: Optional[list[dict[str, Any]]] = None) -> None:
        """Rewrite the host YAML from a state snapshot plus faults; the fake rebuilds."""
        doc: dict[str, Any] = {"uris": {}}
        if rules:
            doc["faults"] = rules
        for uri in self.uris:
            entry: dict[str, Any] = dict(uri_faults.get(uri, {}))
            rows = []
            for g in guests.get(uri, []):
                row: dict[str, Any] = {"name": g["name"], "state": g["state"],
                                       "persistent": g["persistent"],
                                       "managed_save": g["managed_save"]}
                if g.get("uuid"):
                    row["uuid"] = g["uuid"]
                row["save_seconds"] = round(self.rng.uniform(0.02, 0.1), 3)
                row["shutdown_seconds"] = round(self.rng.uniform(0.1, 0.5), 3)
                row.update(guest_faults.get(g["name"], {}))
                rows.append(row)
            entry["guests"] = rows
            doc["uris"][uri] = entry
        self.host_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        with_state = self.state_file()
        if with_state.exists():
            with_state.unlink()

    # -- processes ---------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
                   VIRTGUESTS_FAKE_HOST=str(self.host_file),
                   VIRTGUESTS_FAKE_LOG=str(self.log_file),
                   PYTHONPATH=str(REPO))
        for key in ("VIRSH", "VIRTGUESTS_CONFIG", "VIRTGUESTS_STATE_DIR",
                    "VIRTGUESTS_FAKE_STATE", "VIRTGUESTS_FAKE_NOW_FILE",
                    "VIRTGUESTS_FAKE_FAULTS", "VIRTGUESTS_FAKE_JOURNAL", "PYTHONUNBUFFERED"):
            env.pop(key, None)
        if self.journal is not None:
            env["VIRTGUESTS_FAKE_JOURNAL"] = str(self.journal)
        return env

    @staticmethod
    def _imports_isolated() -> bool:
        """Does ``python -I`` (the installed wrapper's way) import this virtguests?"""
        proc = subprocess.run([sys.executable, "-I", "-c", "import virtguests; "
                               "print(virtguests.__file__)"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60, cwd="/")
        return proc.stdout.strip().startswith(str(REPO / "virtguests"))

    def fake_pids(self) -> set[int]:
        """Live fake virsh processes of this soak (zombies have no cmdline)."""
        pids = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if self.virsh.encode() in argv:
                pids.add(int(entry))
        return pids

    def describe(self, pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            return f"{pid} (gone)"
        return f"{pid}: {' '.join(argv[2:])}"

    def kill_pids(self, pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pids & self.fake_pids() and time.monotonic() < deadline:
            time.sleep(0.02)

    def reap_orphans(self, grace: float) -> int:
        """Give orphans of a killed virtguests `grace` seconds, then kill them."""
        deadline = time.monotonic() + grace
        while self.orphans & self.fake_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = self.orphans & self.fake_pids()
        self.kill_pids(alive)
        self.orphans.clear()
        return len(alive)

    def log_lines(self) -> int:
        try:
            with open(self.log_file, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0

    def run(self, cycle: int, command: str, kill: Optional[dict[str, Any]] = None,
            output: str = "pipe") -> Run:
        """virtguests as systemd starts it; `kill` = {"sig", "after_calls"|"after_s"};
        `output`: "pipe", "closed" (``>&-``) or "full+TERM"/"full+INT" (see the docstring)."""
        isolated = ["-I"] if output == "closed" and self.isolated else []
        argv = [sys.executable, *isolated, "-m", "virtguests", "--config",
                str(self.config_file), "--state-dir", str(self.state_dir), command]
        if output.startswith("full"):
            return self._run_output_signal(cycle, command, argv, output.split("+")[1])
        base = self.log_lines()
        began = time.monotonic()
        proc = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if output == "pipe" else None,
                                stderr=subprocess.PIPE,
                                preexec_fn=_close_stdout if output == "closed" else None)
        sent: Optional[str] = None
        if kill is not None:
            while proc.poll() is None and time.monotonic() - began < RUN_TIMEOUT:
                if "after_calls" in kill:
                    due = self.log_lines() - base >= kill["after_calls"]
                else:
                    due = time.monotonic() - began >= kill["after_s"]
                if due:
                    sent = kill["sig"]
                    proc.send_signal(signal.SIGKILL if sent == "KILL" else signal.SIGTERM)
                    break
                time.sleep(0.01)
        hung = False
        try:
            out, err = proc.communicate(timeout=max(RUN_TIMEOUT - (time.monotonic() - began),
                                                    1))
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            out, err = proc.communicate()
        run = Run(command, proc.returncode, (out or b"").decode(errors="replace"),
                  err.decode(errors="replace"), time.monotonic() - began, sent, hung, output)
        self.totals["runs"] += 1
        if sent == "KILL" and run.code == -signal.SIGKILL:
            self.totals["kills"] += 1
            children = self.fake_pids() - self.orphans
            if kill is not None and kill.get("cgroup"):
                self.kill_pids(children)  # systemd kills the unit's control group
            else:
                self.orphans |= children
        else:
            self.check_run(cycle, run)
        if self.verbose:
            print(f"--- {run.label} ({run.seconds:.1f}s)\n{run.out}{run.err}", end="")
        return run

    def _run_output_signal(self, cycle: int, command: str, argv: list[str],
                           sig: str) -> Run:
        """stdout is a pipe already full: the first progress line blocks in write().
        Signal virtguests then, drain the pipe a moment later; it must wind up."""
        read_end, write_end = full_pipe()
        began = time.monotonic()
        proc = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=write_end, stderr=subprocess.PIPE)
        os.close(write_end)
        chunks: list[bytes] = []
        drain = threading.Thread(target=_read_all, args=(read_end, chunks), daemon=True)
        blocked = wait_blocked_writing(proc, RUN_TIMEOUT)
        sent: Optional[str] = None
        if proc.poll() is None:
            proc.send_signal(getattr(signal, "SIG" + sig))
            sent = sig
        time.sleep(0.3)
        drain.start()
        hung = False
        try:
            _, err = proc.communicate(timeout=OUTPUT_GRACE if blocked else RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            _, err = proc.communicate()
        drain.join(10)
        os.close(read_end)
        out = b"".join(chunks).lstrip(b"\n").decode(errors="replace")
        run = Run(command, proc.returncode, out, err.decode(errors="replace"),
                  time.monotonic() - began, sent, hung, output=f"full+{sig}")
        self.totals["runs"] += 1
        self.check_run(cycle, run)
        if self.verbose:
            print(f"--- {run.label} ({run.seconds:.1f}s)\n{run.out}{run.err}", end="")
        return run

    def check_run(self, cycle: int, run: Run) -> None:
        if run.hung and run.output.startswith("full"):
            self.violate(cycle, f"`virtguests {run.command}` did not end within "
                         f"{OUTPUT_GRACE:.0f}s of SIG{run.signal_sent} arriving while it was "
                         "blocked writing to stdout (and the pipe then drained): deadlock",
                         run)
            self.kill_pids(self.fake_pids() - self.orphans)
        elif run.hung:
            self.violate(cycle, f"`virtguests {run.command}` did not finish within "
                         f"{RUN_TIMEOUT:.0f}s", run)
        if "Traceback (most recent call last)" in run.err + run.out:
            self.violate(cycle, f"`virtguests {run.command}` printed a Python traceback", run)
        allowed = {0, 1} if run.signal_sent in ("TERM", "INT") else {0, 1, 6}
        if run.code not in allowed and not run.hung:
            self.violate(cycle, f"`virtguests {run.command}` exited {run.code} "
                         f"(allowed {sorted(allowed)})", run)
        time.sleep(0.05)
        left = self.fake_pids() - self.orphans
        if left:
            time.sleep(0.5)  # a process being torn down right now
            left = self.fake_pids() - self.orphans
        if left:
            self.violate(cycle, f"fake virsh left running after `virtguests {run.command}` "
                         f"exited", run, [self.describe(p) for p in sorted(left)])
            self.kill_pids(left)

    def violate(self, cycle: int, what: str, run: Optional[Run] = None,
                extra: Optional[list[str]] = None) -> None:
        details = list(extra or [])
        if run is not None:
            details.append(f"exit status {run.code}, {run.seconds:.1f}s")
            details += [f"stdout| {ln}" for ln in run.out.splitlines()]
            details += [f"stderr| {ln}" for ln in run.err.splitlines()]
        self.violations.append(Violation(cycle, what, details))

    # -- faults ------------------------------------------------------------------

    def config_text(self) -> tuple[str, str]:
        rng = self.rng
        on_shutdown = rng.choice(["suspend", "shutdown", "suspend shutdown poweroff"])
        par_shut = rng.choice([0, 3])
        par_susp = rng.choice([0, 3])
        timeout = rng.choice([1, 2])
        retries = rng.choice([0, 1, 2])
        sleep = rng.choice([0.1, 0.1, 0.4])
        text = (f'URIS="{" ".join(self.uris)}"\n'
                "ON_BOOT=start\n"
                f'ON_SHUTDOWN="{on_shutdown}"\n'
                f"SHUTDOWN_TIMEOUT={timeout}\n"
                f"PARALLEL_SHUTDOWN={par_shut}\n"
                f"PARALLEL_SUSPEND={par_susp}\n"
                "QUERY_TIMEOUT=1\n"
                f"SAVE_TIMEOUT={SAVE_TIMEOUT:g}\n"
                f"CONNECT_RETRIES={retries}\n"
                f"RETRIES_SLEEP={sleep}\n")
        short = {"suspend": "suspend", "shutdown": "shutdown",
                 "suspend shutdown poweroff": "chain"}[on_shutdown]
        desc = f"{short} T={timeout} PS={par_shut} PSU={par_susp} R={retries}x{sleep}"
        return text, desc

    def uri_faults(self, p_down: float, p_flaky: float,
                   p_hang: float) -> tuple[dict[str, dict[str, Any]], list[str]]:
        faults: dict[str, dict[str, Any]] = {}
        desc = []
        for i, uri in enumerate(self.uris):
            x = self.rng.random()
            short = f"u{i}"
            if x < p_down:
                faults[uri] = {"unreachable": True}
                desc.append(f"{short}=down")
            elif x < p_down + p_flaky:
                n = self.rng.randint(1, 3)
                faults[uri] = {"unreachable_calls": n}
                desc.append(f"{short}=flaky{n}")
            elif x < p_down + p_flaky + p_hang:
                faults[uri] = {"hang": True}
                desc.append(f"{short}=hang")
        return faults, desc

    def layer_faults(self, phase: str, host_faults: dict[str, dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], list[str]]:
        """Fault-layer rules for one phase, per URI without a host-level fault."""
        rng = self.fault_rng
        rules: list[dict[str, Any]] = []
        desc = []
        for i, uri in enumerate(self.uris):
            x = rng.random()
            nth = rng.randint(1, 3)
            error = rng.choice(["connect", "internal"])
            if uri in host_faults:
                continue
            if x < (0.06 if phase == "stop" else 0.04):
                kind, rule = "wedge", {"cmd": "*", "after": 1, "action": "hang"}
            elif phase == "stop" and x < 0.16:
                kind, rule = f"pollfail{nth}", {"cmd": "list", "options": ["uuid"], "nth": nth,
                                                "action": "fail", "error": error}
            elif phase == "stop" and x < 0.21:
                kind, rule = f"pollhang{nth}", {"cmd": "list", "options": ["uuid"], "nth": nth,
                                                "action": "hang"}
            else:
                continue
            rules.append({**rule, "uri": uri})
            desc.append(f"u{i}={kind}")
            label = kind.rstrip("0123456789")
            self.fault_counts[label] = self.fault_counts.get(label, 0) + 1
        return rules, desc

    def saves_in_progress(self, guests: Guests, guest_faults: dict[str, dict[str, Any]]
                          ) -> tuple[dict[str, float], list[str]]:
        """At stop, per URI, maybe another job is saving one running guest (its
        ``saving_seconds`` go into *guest_faults*); returns the URIs' lock waits."""
        props = _properties()
        rng = self.saving_rng
        lock_wait: dict[str, float] = {}
        desc = []
        for i, uri in enumerate(self.uris):
            x = rng.random()
            shape = rng.choice(props.SAVING_SHAPES)
            lock = rng.choice([props.SHORT_LOCK_WAIT, props.SHORT_LOCK_WAIT,
                               props.LOCK_WAIT])
            candidates = [g for g in guests.get(uri, [])
                          if g["state"] == "running" and g["persistent"]]
            if x >= 0.15 or not candidates:
                continue
            g = rng.choice(candidates)
            guest_faults[g["name"]] = {**guest_faults.get(g["name"], {}),
                                       "saving_seconds": props.aim_saving(
                                           shape, lock, SAVE_TIMEOUT)}
            short = ""
            if lock != props.LOCK_WAIT:
                lock_wait[uri] = lock
                short = "/short-lock"
            desc.append(f"u{i}=saving:{shape}{short}")
            self.fault_counts["saving"] = self.fault_counts.get("saving", 0) + 1
        return lock_wait, desc

    def check_saves(self, cycle: int, others: dict[tuple[str, str], dict[str, Any]],
                    guests: Guests) -> tuple[int, int]:
        """After stop, before the power cut, from the fake's journal and state: nothing
        destroyed or shut down a guest while a save of it was in progress, and each
        guest another job was saving is saved (or still saving) and recorded.  Returns
        how many of those saves completed and how many the power cut will cut."""
        props = _properties()
        exits: dict[str, int] = {}
        if self.log_file.exists():
            for line in self.log_file.read_text().splitlines():
                call = json.loads(line)
                exits[props.call_id(call)] = call["exit"]
        path = self.root / f"journal-{cycle}.jsonl"
        journal = [{**j, "exit": exits.get(props.call_id(j))} for j in
                   map(json.loads, path.read_text().splitlines() if path.exists() else [])]
        live = {(uri, g["uuid"]): g for uri, gs in guests.items() for g in gs}
        recorded = self.recorded()
        for j in props.harmed_while_saving(journal):
            g = live.get((j["uri"], j["guest"]))
            name = g["name"] if g else "?"
            self.violate(cycle, f"guest {name} ({j['guest']}) on {j['uri']}: "
                         f"{'destroyed' if j['cmd'] == 'destroy' else 'shut down'} while a "
                         "save of it was in progress", None, [json.dumps(j)])
        listed = props.listed_uris(journal)
        saved = cut = 0
        for (uri, uuid), g in sorted(others.items()):
            now = live.get((uri, uuid))
            who = f"guest {g['name']} ({uuid}) on {uri}"
            for problem in props.check_other_save(g, now, who,
                                                  uuid in recorded.get(uri, set()),
                                                  listed.get(uri)):
                self.violate(cycle, problem, None,
                             [json.dumps(j) for j in journal if j["guest"] == uuid])
            if now is not None and now["job"] is not None:
                cut += 1
            elif now is not None and now["managed_save"]:
                saved += 1
            owed = self.owed.get((uri, uuid))
            seen_at = listed.get(uri)
            if owed is not None and owed.since == cycle and seen_at is not None \
                    and seen_at >= g["job"]["end"] and uuid not in recorded.get(uri, set()):
                # saved before stop listed its URI: an inactive guest with an image, as
                # if the admin had saved it; virtguests never saw it running
                del self.owed[(uri, uuid)]
        self.totals["other_saved"] += saved
        self.totals["other_cut"] += cut
        return saved, cut

    def output_mode(self, phase: str) -> str:
        """How virtguests' stdout looks this run: a pipe, closed, or full (+ a signal)."""
        x = self.fault_rng.random()
        sig = self.fault_rng.choice(["TERM", "INT"])
        mode = "pipe"
        if x < 0.08:
            mode = "closed"
        elif phase == "stop" and x < 0.16:
            mode = f"full+{sig}"
        if mode != "pipe":
            label = f"out={mode.split('+')[0]}"
            self.fault_counts[label] = self.fault_counts.get(label, 0) + 1
        return mode

    def stop_guest_faults(self, guests: Guests) -> tuple[dict[str, dict[str, Any]], list[str]]:
        rng = self.rng
        menu: list[tuple[str, float, Any]] = [
            ("fail_save", 0.25, lambda: {"fail_save": True}),
            ("ignore_sd", 0.2, lambda: {"ignore_shutdown": True}),
            ("slow_sd", 0.15, lambda: {"shutdown_seconds": round(rng.uniform(1.0, 3.0), 2)}),
            ("slow_save", 0.1, lambda: {"save_seconds": round(rng.uniform(0.3, 0.8), 2)}),
            ("fail_sd", 0.1, lambda: {"fail_shutdown": True}),
            ("hang_save", 0.1, lambda: {"hang": ["managedsave"]}),
            ("hang_sd", 0.1, lambda: {"hang": ["shutdown"]}),
        ]
        return self._guest_faults(guests, menu, 0.3)

    def start_guest_faults(self, guests: Guests) -> tuple[dict[str, dict[str, Any]], list[str]]:
        rng = self.rng
        menu: list[tuple[str, float, Any]] = [
            ("fail_start", 0.6, lambda: {"fail_start": True}),
            ("hang_start", 0.2, lambda: {"hang": ["start"]}),
            ("slow_start", 0.2, lambda: {"start_seconds": round(rng.uniform(0.2, 0.6), 2)}),
        ]
        return self._guest_faults(guests, menu, 0.12)

    def _guest_faults(self, guests: Guests, menu: list[tuple[str, float, Any]],
                      p: float) -> tuple[dict[str, dict[str, Any]], list[str]]:
        faults: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        for gs in guests.values():
            for g in gs:
                if self.rng.random() >= p:
                    continue
                x = self.rng.random() * sum(w for _, w, _ in menu)
                for label, weight, make in menu:
                    if x < weight:
                        faults[g["name"]] = make()
                        counts[label] = counts.get(label, 0) + 1
                        break
                    x -= weight
        return faults, [f"{k}={v}" for k, v in sorted(counts.items())]

    def kill_plan(self, p_kill: float, p_term: float,
                  expected_calls: int) -> Optional[dict[str, Any]]:
        x = self.rng.random()
        if x >= p_kill + p_term:
            return None
        plan: dict[str, Any] = {"sig": "KILL" if x < p_kill else "TERM",
                                "cgroup": self.rng.random() < 0.5}
        x = self.rng.random()
        if x < 0.3:  # early: while URIs are listed (and connections retried)
            plan["after_calls"] = self.rng.randint(1, 3)
        elif x < 0.7:
            plan["after_calls"] = self.rng.randint(0, max(expected_calls, 1))
        else:
            plan["after_s"] = round(self.rng.uniform(0.05, 2.0), 2)
        return plan

    @staticmethod
    def kill_desc(plan: Optional[dict[str, Any]]) -> str:
        if plan is None:
            return ""
        when = (f"@{plan['after_calls']}calls" if "after_calls" in plan
                else f"@{plan['after_s']}s")
        how = "" if plan["sig"] == "TERM" else ("+cg" if plan["cgroup"] else "+orph")
        missed = "(missed)" if plan.get("missed") else ""
        return f" SIG{plan['sig']}{when}{how}{missed}"

    # -- one phase: run, and rerun after a signal --------------------------------

    def phase(self, cycle: int, command: str, kill: Optional[dict[str, Any]],
              output: str = "pipe") -> list[Run]:
        if output.startswith("full"):
            kill = None  # the run signals itself, while blocked on its output
        runs = [self.run(cycle, command, kill, output)]
        if runs[0].signal_sent:
            runs.append(self.run(cycle, command))  # systemd runs the command again
        elif kill is not None:
            kill["missed"] = True  # it finished before the moment came
        return runs

    # -- the cycle -----------------------------------------------------------------

    def recorded(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for path in (self.state_dir / "libvirt-guests", self.state_dir / "virtguests-pending"):
            entries, _ = read_list(path)
            for uri, ids in entries.items():
                out.setdefault(uri, set()).update(ids)
        return out

    def cycle(self, n: int) -> str:
        began = time.monotonic()
        rng = self.rng
        self.reap_orphans(0)
        guests = self.settle()
        notes = []

        # the administrator retries leftovers while the host is up
        if self.owed and (self.state_dir / "virtguests-pending").exists() \
                and rng.random() < 0.3:
            self.write_host(guests, {}, {})
            self.config_file.write_text(self.config_text()[0])
            retry = self.run(n, "start")
            notes.append(f"retry-start:{retry.code}")
            self.reap_orphans(0)
            guests = self.settle()
            pre_runs = [retry]
        else:
            pre_runs = []

        # new transient guests come and go
        for uri in self.uris:
            if rng.random() < 0.4:
                self.transient_seq += 1
                guests[uri].append({"name": f"tmp{self.transient_seq}", "state": "running",
                                    "persistent": False, "managed_save": False})
        config, config_desc = self.config_text()
        self.config_file.write_text(config)
        ufaults, udesc = self.uri_faults(0.1, 0.1, 0.06)
        gfaults, gdesc = self.stop_guest_faults(guests)
        rules, fdesc = self.layer_faults("stop", ufaults)
        output = self.output_mode("stop")
        lock_wait, sdesc = self.saves_in_progress(guests, gfaults)
        for uri, wait in lock_wait.items():
            ufaults.setdefault(uri, {})["lock_wait"] = wait
        self.write_host(guests, ufaults, gfaults, rules)
        guests = self.read_state()
        others = {(uri, g["uuid"]): g for uri, gs in guests.items() for g in gs
                  if g["job"] is not None and g["job"]["op"] == "save"}
        running_before = 0
        for uri, gs in guests.items():
            for g in gs:  # a guest another job is saving is running ("paused (saving)")
                if g["persistent"] and (g["state"] == "running" or (uri, g["uuid"]) in others):
                    running_before += 1
                    self.owed.setdefault((uri, g["uuid"]), Owed(uri, g["uuid"], g["name"], n))
        count = sum(len(gs) for gs in guests.values())
        kill = self.kill_plan(0.3, 0.1, count * 2 + 2)
        self.journal = self.root / f"journal-{n}.jsonl"
        try:
            stop_runs = self.phase(n, "stop", kill, output)
        finally:
            self.journal = None
        out_desc = "" if output == "pipe" else f" out={output}"
        faults = " ".join(udesc + gdesc + fdesc + sdesc) or "no-faults"
        stop_desc = (f"stop[{config_desc} {faults}"
                     f"{out_desc}{'' if output.startswith('full') else self.kill_desc(kill)}]")

        # power cycle: cut in-flight work, hard power off whatever still runs
        cut_orphans = self.reap_orphans(ORPHAN_GRACE)
        guests = self.read_state()
        other_saved, other_cut = self.check_saves(n, others, guests)
        powered_off = vanished = cut_saves = 0
        for uri in list(guests):
            keep = []
            for g in guests[uri]:
                if g["job"] is not None and g["job"]["op"] == "save":
                    cut_saves += 1
                    g["managed_save"] = False
                if g["state"] != "shutoff" or g["job"] is not None:
                    if not g["persistent"]:
                        vanished += 1
                        continue
                    powered_off += 1
                    g.update(state="shutoff", job=None)
                keep.append(g)
            guests[uri] = keep
        saved = sum(1 for gs in guests.values() for g in gs if g["managed_save"])
        ufaults, udesc = self.uri_faults(0.08, 0.1, 0.04)
        gfaults, gdesc = self.start_guest_faults(guests)
        rules, fdesc = self.layer_faults("start", ufaults)
        output = self.output_mode("start")
        self.write_host(guests, ufaults, gfaults, rules)
        kill = self.kill_plan(0.25, 0.05, count + 2)
        start_runs = self.phase(n, "start", kill, output)
        out_desc = "" if output == "pipe" else f" out={output}"
        start_desc = (f"start[{' '.join(udesc + gdesc + fdesc) or 'no-faults'}{out_desc}"
                      f"{self.kill_desc(kill)}]")
        self.reap_orphans(ORPHAN_GRACE)
        guests = self.settle()

        counts = self.check_invariant(n, guests, pre_runs, stop_runs, start_runs)
        self.operator(guests)
        codes = "/".join(r.label.split(":", 1)[1] for r in stop_runs)
        scodes = "/".join(r.label.split(":", 1)[1] for r in start_runs)
        extra = f" {' '.join(notes)}" if notes else ""
        cut = f", {cut_saves} saves cut" if cut_saves else ""
        if others:
            cut += f" (another job's: {other_saved} saved, {other_cut} cut)"
        orph = f", {cut_orphans} orphans killed" if cut_orphans else ""
        return (f"cycle {n:3d}:{extra} {stop_desc} exit {codes}; power-off: {saved} saved, "
                f"{powered_off} cut off, {vanished} transient gone{cut}{orph}; "
                f"{start_desc} exit {scodes}; {running_before} running before: "
                f"{counts['resumed']} resumed, {counts['accounted']} recorded+reported, "
                f"{counts['unprotected']} unprotected+named, {counts['unseen']} unprotected "
                f"never-seen, {counts['unnamed']} UNNAMED, {counts['lost']} LOST "
                f"({time.monotonic() - began:.1f}s)")

    def check_invariant(self, n: int, guests: Guests, pre_runs: list[Run],
                        stop_runs: list[Run], start_runs: list[Run]) -> dict[str, int]:
        runs = [*pre_runs, *stop_runs, *start_runs]
        told = "\n".join([r.err for r in runs]
                         + [ln for r in runs for ln in r.out.splitlines() if "failed" in ln])
        stop_err = "\n".join(r.err for r in stop_runs)
        stop_out = "\n".join(r.out for r in stop_runs)
        recorded = self.recorded()
        live = {(uri, g["uuid"]): g for uri, gs in guests.items() for g in gs}
        counts = {"resumed": 0, "accounted": 0, "unprotected": 0, "unseen": 0, "lost": 0,
                  "unnamed": 0}
        for key, owed in sorted(self.owed.items(), key=lambda kv: kv[1].name):
            g = live.get(key)
            if g is None:
                self.violations.append(Violation(n, f"LOST: persistent guest {owed.name} "
                                                 f"({owed.uuid}) on {owed.uri} vanished"))
                counts["lost"] += 1
                del self.owed[key]
                continue
            if g["state"] == "running":
                counts["resumed"] += 1
                del self.owed[key]
                continue
            is_recorded = owed.uuid in recorded.get(owed.uri, set())
            named = mentions(told, owed.name, owed.uuid)
            if is_recorded and named:
                counts["accounted"] += 1
                continue
            unreachable = (f"Can't connect to {owed.uri}. Skipping." in stop_out
                           or f"cannot list guests on {owed.uri}: " in stop_err)
            named_at_stop = mentions(stop_err, owed.name, owed.uuid)
            if unreachable and not is_recorded and named_at_stop:
                counts["unprotected"] += 1
                del self.owed[key]
                continue
            if unreachable and not is_recorded and owed.name not in self.seen:
                counts["unseen"] += 1  # no run ever listed it: nothing could name it
                del self.owed[key]
                continue
            if unreachable and not is_recorded:
                kind = "unnamed"
                what = (f"UNNAMED guest {owed.name} ({owed.uuid}) on {owed.uri}: the URI was "
                        "unreachable at stop and virtguests reported its guests as not "
                        "protected without naming this one, although an earlier virtguests "
                        "run had listed it running there; it stays down after start")
            else:
                kind = "lost"
                what = (f"LOST guest {owed.name} ({owed.uuid}) on {owed.uri}: not running "
                        "after start, and neither recorded+reported nor reported as "
                        "unprotected")
            counts[kind] += 1
            why = [f"state after start: {g['state']} (reason {g.get('reason')}), "
                   f"managed-save image: {g['managed_save']}",
                   f"recorded in list file/pending: {is_recorded}",
                   f"named on stderr / a 'failed' line this cycle: {named}",
                   f"URI unreachable at stop: {unreachable}",
                   f"running before stop since cycle {owed.since}"]
            for path in (self.state_dir / "libvirt-guests",
                         self.state_dir / "virtguests-pending"):
                text = path.read_text().strip() if path.exists() else "(absent)"
                why.append(f"{path.name}: {text}")
            for r in runs:
                lines = [ln for ln in (r.out + r.err).splitlines()
                         if owed.uri in ln or mentions(ln, owed.name, owed.uuid)]
                why.append(f"`{r.label}` lines about it or its URI:")
                why += [f"    {ln}" for ln in lines] or ["    (none)"]
            self.violations.append(Violation(n, what, why))
            del self.owed[key]  # reported once; the operator restarts it
        for k, v in counts.items():
            self.totals[k] += v
        for r in runs:
            for line in r.out.splitlines():
                m = re.match(r"Running guests on \S+ URI: (.*)$", line)
                if m:
                    self.seen.update(x.strip() for x in m.group(1).split(","))
                m = re.match(r"Resuming guest (.*): ", line)
                if m:
                    self.seen.add(m.group(1))
        return counts

    def operator(self, guests: Guests) -> None:
        """Start by hand every persistent guest left down that nothing will resume."""
        recorded = self.recorded()
        changed = False
        for uri, gs in guests.items():
            for g in gs:
                if g["persistent"] and g["state"] != "running" \
                        and g["uuid"] not in recorded.get(uri, set()) \
                        and (uri, g["uuid"]) not in self.owed:
                    g.update(state="running", managed_save=False)
                    changed = True
        if changed:
            self.write_host(guests, {}, {})


def _properties() -> Any:
    """tools/properties.py: the saving shapes and the journal checks are shared."""
    from tools import properties

    return properties


def _close_stdout() -> None:
    os.close(1)  # `virtguests ... >&-`


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: the next write to it blocks."""
    read_end, write_end = os.pipe()
    flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"\n" * 4096)
    fcntl.fcntl(write_end, fcntl.F_SETFL, flags)
    return read_end, write_end


def _read_all(fd: int, chunks: list[bytes]) -> None:
    while data := os.read(fd, 65536):
        chunks.append(data)


def wait_blocked_writing(proc: subprocess.Popen[bytes], limit: float) -> bool:
    """Wait until a thread of *proc* sleeps in a pipe write (or it exits)."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                if "pipe_write" in (task / "wchan").read_text():
                    return True
        time.sleep(0.01)
    return False


def mentions(text: str, name: str, uuid: str) -> bool:
    if uuid in text:
        return True
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text) is not None


def property_scenarios(count: int, seed: int, root: Path) -> list[str]:
    """Run *count* scenarios of the property test (tools/properties.py), one line
    each, every one to the end (no stopping at a failure); returns the violations."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from tools import properties as props

    found: list[str] = []
    numbers = iter(range(1, count + 1))

    @hypothesis_seed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(props.scenarios())
    def one(sc: props.Scenario) -> None:
        n = next(numbers, count)
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="virtguests-prop-") as tmp:
            problems, transcript = props.play(sc, Path(tmp))
        verdict = "ok" if not problems else f"{len(problems)} VIOLATION(S)"
        print(f"scenario {n:3d}: {sc.summary()}: {verdict} "
              f"({time.monotonic() - began:.1f}s)", flush=True)
        if problems:
            path = root / f"scenario-{n}.yaml"
            path.write_text(sc.dump())
            for problem in problems:
                print(f"  VIOLATION: {problem}", flush=True)
            found.append(f"[scenario {n}, replay: python -m tests.test_properties {path}]\n"
                         + "\n".join(f"  {p}" for p in problems)
                         + "\n" + "".join(f"  | {ln}\n" for ln in transcript.splitlines()))

    one()
    return found


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--scenarios", type=int, default=0,
                        help="then run this many random fault scenarios of the property "
                        "test (tests/test_properties.py), reporting every violation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every virtguests run's output")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    more = f" --scenarios {args.scenarios}" if args.scenarios else ""
    print(f"soak: {args.cycles} cycles, seed {seed} "
          f"(reproduce: python tools/soak.py --cycles {args.cycles}{more} --seed {seed})",
          flush=True)
    root = Path(tempfile.mkdtemp(prefix="virtguests-soak-"))
    began = time.monotonic()
    soak = Soak(root, seed, args.verbose)
    print(f"host: {len(soak.uris)} URIs ({', '.join(soak.uris)}; u0..u{len(soak.uris) - 1} "
          f"below), {sum(len(g) for g in soak.read_state().values())} guests; work dir {root}",
          flush=True)
    try:
        for n in range(1, args.cycles + 1):
            before = len(soak.violations)
            print(soak.cycle(n), flush=True)
            for v in soak.violations[before:]:
                print(f"  VIOLATION: {v.what}", flush=True)
        soak.reap_orphans(0)
    finally:
        left = soak.fake_pids()
        soak.kill_pids(left)
    t = soak.totals
    elapsed = time.monotonic() - began
    print(f"\n{args.cycles} cycles in {elapsed:.0f}s: {t['runs']} virtguests runs, "
          f"{t['kills']} killed with SIGKILL; {t['resumed']} resumed, "
          f"{t['accounted']} times recorded+reported (retried later), "
          f"{t['unprotected']} unprotected and named (URI unreachable at stop), "
          f"{t['unseen']} unprotected never seen by virtguests")
    layer = ", ".join(f"{k} x{v}" for k, v in sorted(soak.fault_counts.items()))
    print(f"fault layer: {layer or 'none drawn'}")
    if soak.fault_counts.get("saving"):
        print(f"saves by another job in progress at stop: {soak.fault_counts['saving']}; "
              f"{t['other_saved']} completed before the power cut, {t['other_cut']} still "
              "running then (cut)")
    if not soak.violations:
        print(f"{args.cycles} cycles, 0 guests lost")
    else:
        lost = sum(1 for v in soak.violations if v.what.startswith("LOST"))
        unnamed = sum(1 for v in soak.violations if v.what.startswith("UNNAMED"))
        other = len(soak.violations) - lost - unnamed
        print(f"{args.cycles} cycles, {lost} guests lost, {unnamed} unprotected guests not "
              f"named, {other} other violation(s) (seed {seed}; work dir kept: {root})")
        for v in soak.violations:
            print(f"\n[seed {seed}, cycle {v.cycle}] {v.what}")
            for line in v.details:
                print(f"  {line}")
    found: list[str] = []
    if args.scenarios:
        print(f"\nproperty scenarios (tests/test_properties.py): {args.scenarios}, seed {seed}",
              flush=True)
        found = property_scenarios(args.scenarios, seed, root)
        print(f"\n{args.scenarios} scenarios, {len(found)} with violations"
              + (f" (work dir kept: {root})" if found else ""))
        for text in found:
            print(f"\n{text}", end="")
    if soak.violations or found:
        return 1
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
