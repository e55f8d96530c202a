"""The property test's machinery: random scenarios (hypothesis strategies) of stop,
then start, on simulated hosts through fault schedules, played as real processes and
checked against issue 10's invariant.  Shared by tests/test_properties.py (CI size and
the fixed fault classes) and tools/soak.py (``--scenarios``).

Each example is a host of 1-3 URIs with a few guests (random behaviour, tenant-chosen
names, sometimes a save by another job already in progress: ``saving_seconds``), a
random config (ON_SHUTDOWN chain, PARALLEL_*, small timeouts) and a fault schedule for
the fake virsh's fault layer (``faults:``: wedged URIs, failed, hung or garbled polls
and listings, random failures, busy errors, slow calls, a signal at any call), run as
real processes, sometimes with stdout closed (``>&-``) or full while a signal
arrives.  After ``stop`` and after a fault-free ``start`` the invariant of issue 10 is
checked (see :func:`check_stop`, :func:`check_start`); the verdicts use the virsh
calls as dispatched (``VIRTGUESTS_FAKE_JOURNAL``), never the wall clock: the run's
own time only feeds a generous subprocess timeout against hangs.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from hypothesis import strategies as st

from virtguests.execution import AGENT_SHUTDOWN_WAIT, JOB_LOCK_WAIT
from virtguests.state import read_list
from virtguests.testing import LOCK_WAIT as LOCK_WAIT
from virtguests.testing import FakeHost, Run

URIS = ["default", "test:///b", "qemu+ssh://c/system"]
HOSTILE = ["web", "db server", "it's", 'say "hi"', "x': Stopped", "--all", "-c default",
           "$(reboot)", "a; list", "virtguests-next", "ünï中", "tab\tname", "0", "a\\b",
           "event 'lifecycle' for domain 'web#1': Stopped Shutdown"]
"""Guest names as tenants choose them (each gets a unique ``#N`` suffix)."""
CHAINS = ["suspend", "shutdown", "poweroff", "suspend shutdown", "suspend poweroff",
          "shutdown poweroff", "suspend shutdown poweroff"]
ACTIONS = {"suspend": "managedsave", "shutdown": "shutdown", "poweroff": "destroy"}
SAVE_KIND = {"managedsave", "start"}  # calls whose timeout is SAVE_TIMEOUT
REQUEST_EXTRA = {"shutdown": AGENT_SHUTDOWN_WAIT, "destroy": JOB_LOCK_WAIT}
"""Requests get QUERY_TIMEOUT plus what libvirt itself may wait (the agent, a job lock)."""
MODES = ["normal"] * 6 + ["closed-stdout", "signal-during-output"]
SHORT_LOCK_WAIT = 0.5
"""A URI's ``lock_wait`` in the fake: libvirt's 30 s, or short, so that another job's
save can end after the lock wait and before SAVE_TIMEOUT (1-3 s here)."""
REACHED = 0.5
"""About when (seconds after the host is built) stop's first managedsave or shutdown
request reaches a guest: ``saving_seconds`` are aimed from there.  Only the aim: any
moment is a valid case, and the invariant does not depend on it."""
SAVING_SHAPES = ["in-lock-wait", "after-lock-wait", "past-save-timeout"]
STATUSES = {"stop": {0, 1, 6}, "start": {0, 1, 6}}  # README: stop/start exit statuses


@dataclass
class Scenario:
    """One host, config and fault schedule; YAML-able so a failure can be replayed."""

    uris: dict[str, list[dict[str, Any]]]
    config: dict[str, Any]
    faults: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "normal"
    mode_signal: str = "TERM"
    start_mode: str = "normal"
    lock_wait: dict[str, float] = field(default_factory=dict)
    """Per URI: the fake's ``lock_wait`` (default libvirt's 30 s)."""

    def host(self) -> dict[str, Any]:
        return {"uris": {u: {"guests": copy.deepcopy(gs),
                             **({"lock_wait": self.lock_wait[u]} if u in self.lock_wait else {})}
                         for u, gs in self.uris.items()},
                "faults": copy.deepcopy(self.faults)}

    def saving_shape(self, uri: str, seconds: float) -> str:
        """Where another job's save ends, as aimed: within the lock wait of our first
        request, after it but within SAVE_TIMEOUT, or past SAVE_TIMEOUT."""
        lock = self.lock_wait.get(uri, LOCK_WAIT)
        timeout = float(self.config["SAVE_TIMEOUT"])
        if seconds < REACHED + min(lock, timeout):
            return "in-lock-wait"
        return "after-lock-wait" if seconds < REACHED + timeout else "past-save-timeout"

    def config_text(self) -> str:
        return "".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}\n"
                       for k, v in {"URIS": " ".join(self.uris), **self.config}.items())

    @property
    def chain(self) -> list[str]:
        return str(self.config["ON_SHUTDOWN"]).split()

    def timeout_of(self, cmd: str) -> float:
        if cmd in SAVE_KIND:
            return float(self.config["SAVE_TIMEOUT"])
        return float(self.config["QUERY_TIMEOUT"]) + REQUEST_EXTRA.get(cmd, 0.0)

    def safety_net(self) -> float:
        """A generous bound on one run, against hangs only (never asserted as speed)."""
        c = self.config
        listing = c["QUERY_TIMEOUT"] * (1 + c["CONNECT_RETRIES"]) + c["CONNECT_RETRIES"]
        per_guest = (c["SAVE_TIMEOUT"] + 4 * c["QUERY_TIMEOUT"] + c["SHUTDOWN_TIMEOUT"] + 5
                     + sum(self.timeout_of(cmd) for cmd in REQUEST_EXTRA))
        guests = sum(len(gs) for gs in self.uris.values())
        return float(30.0 + 2 * (listing + per_guest * guests))

    def dump(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False, allow_unicode=True)

    def summary(self) -> str:
        """One line: the host, the config and the faults."""
        c = self.config
        host = "+".join(f"{len(gs)}" for gs in self.uris.values())
        faults = " ".join(describe_rule(r) for r in self.faults) or "no-faults"
        saving = "".join(
            f" saving:{self.saving_shape(u, g['saving_seconds'])}"
            f"{'' if self.lock_wait.get(u, LOCK_WAIT) == LOCK_WAIT else '/short-lock'}"
            for u, gs in self.uris.items() for g in gs if g.get("saving_seconds"))
        out = "" if (self.mode, self.start_mode) == ("normal", "normal") else \
            f" out={self.mode}{'+' + self.mode_signal if 'signal' in self.mode else ''}" \
            f"/{self.start_mode}"
        return (f"guests {host} [{c['ON_SHUTDOWN']}] PS={c['PARALLEL_SHUTDOWN']} "
                f"PSU={c['PARALLEL_SUSPEND']} T={c['SHUTDOWN_TIMEOUT']} "
                f"ST={c['SAVE_TIMEOUT']} R={c['CONNECT_RETRIES']} {faults}{saving}{out}")


def describe_rule(rule: dict[str, Any]) -> str:
    """``hang:*@test:///b>1``, ``fail:list--uuid@default#2``, ``slow:destroy~0.5``..."""
    what = rule["action"] + (f"({rule['signal']})" if "signal" in rule else "") + \
        ("(busy)" if str(rule.get("error", "")).endswith("-busy") else "")
    cmd = rule.get("cmd", "*") + "".join(f"--{o}" for o in rule.get("options", []))
    where = f"@{rule['uri']}" if "uri" in rule else ""
    if "guest" in rule:
        where += f"[{rule['guest']}]"
    when = (f"#{rule['nth']}" if "nth" in rule else "") + \
        (f">{rule['after']}" if "after" in rule else "") + (f"~{rule['p']}" if "p" in rule else "")
    return f"{what}:{cmd}{where}{when}"


# -- strategies ------------------------------------------------------------------

@st.composite
def guests(draw: st.DrawFn, first: int) -> list[dict[str, Any]]:
    out = []
    for i in range(first, first + draw(st.integers(1, 3))):
        state = draw(st.sampled_from(["running"] * 5 + ["paused", "shutoff"]))
        g: dict[str, Any] = {
            "name": f"{draw(st.sampled_from(HOSTILE))}#{i}",
            "state": state,
            "persistent": state == "shutoff" or draw(st.sampled_from([True] * 4 + [False])),
            "save_seconds": draw(st.sampled_from([0.05, 0.05, 0.3, 5])),
            "shutdown_seconds": draw(st.sampled_from([0.1, 0.5, 30])),
        }
        for flag, one_in in (("ignore_shutdown", 4), ("fail_save", 8), ("fail_shutdown", 8)):
            if draw(st.integers(1, one_in)) == 1:
                g[flag] = True
        out.append(g)
    return out


@st.composite
def fault_rules(draw: st.DrawFn, uris: list[str],
                names: list[str]) -> list[dict[str, Any]]:
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        uri = draw(st.sampled_from(uris))
        kind = draw(st.sampled_from(["wedge", "wedge", "poll-fail", "poll-fail", "poll-hang",
                                     "poll-garbage", "list-garbage", "list-fail",
                                     "random-fail", "slow", "signal", "signal",
                                     "guest-hang"]))
        error = draw(st.sampled_from(["connect", "internal"]))
        nth = draw(st.integers(1, 3))
        garbage = draw(st.sampled_from(["binary", "truncated", "not-uuid"]))
        cmd = draw(st.sampled_from(["managedsave", "shutdown", "destroy", "list", "event"]))
        by_kind: dict[str, dict[str, Any]] = {
            "wedge": {"cmd": "*", "uri": uri, "after": 1, "action": "hang"},
            "poll-fail": {"cmd": "list", "options": ["uuid"], "uri": uri, "nth": nth,
                          "action": "fail", "error": error},
            "poll-hang": {"cmd": "list", "options": ["uuid"], "uri": uri, "nth": nth,
                          "action": "hang"},
            "poll-garbage": {"cmd": "list", "options": ["uuid"], "uri": uri, "nth": nth,
                             "action": "garbage", "output": garbage},
            "list-garbage": {"cmd": "list", "uri": uri, "nth": 1, "action": "garbage",
                             "output": garbage},
            "list-fail": {"cmd": "list", "uri": uri, "nth": 1, "action": "fail",
                          "error": error},
            "random-fail": {"cmd": cmd, "p": 0.3, "seed": draw(st.integers(0, 99)),
                            "action": "fail", "error": error},
            "slow": {"cmd": cmd, "p": 0.5, "seed": draw(st.integers(0, 99)), "action": "slow",
                     "seconds": 0.3},
            "signal": {"cmd": cmd, "nth": nth, "action": "signal",
                       "signal": draw(st.sampled_from(["TERM", "INT"]))},
            "guest-hang": {"cmd": draw(st.sampled_from(["managedsave", "shutdown"])),
                           "guest": draw(st.sampled_from(names)), "action": "hang"},
        }
        rules.append(by_kind[kind])
    return rules


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    uris = draw(st.lists(st.sampled_from(URIS), min_size=1, max_size=3, unique=True))
    hosts: dict[str, list[dict[str, Any]]] = {}
    for uri in uris:
        hosts[uri] = draw(guests(1 + sum(len(v) for v in hosts.values())))
    config = {
        "ON_BOOT": "start",
        "ON_SHUTDOWN": draw(st.sampled_from(CHAINS)),
        "PARALLEL_SHUTDOWN": draw(st.sampled_from([0, 2])),
        "PARALLEL_SUSPEND": draw(st.sampled_from([0, 2])),
        "SHUTDOWN_TIMEOUT": draw(st.sampled_from([1, 2])),
        "SAVE_TIMEOUT": draw(st.sampled_from([1, 2])),
        "QUERY_TIMEOUT": 1,
        "CONNECT_RETRIES": draw(st.sampled_from([0, 1])),
        "RETRIES_SLEEP": 0.1,
    }
    names = [g["name"] for gs in hosts.values() for g in gs]
    sc = Scenario(hosts, config, draw(fault_rules(uris, names)),
                  draw(st.sampled_from(MODES)), draw(st.sampled_from(["TERM", "INT"])),
                  draw(st.sampled_from(["normal"] * 6 + ["closed-stdout"])))
    # drawn last, so the earlier draws (and the examples of a seed) stay what they were
    if draw(st.integers(1, 3)) == 1:
        saves_in_progress(draw, sc)
    if draw(st.integers(1, 6)) == 1:
        cmd = draw(st.sampled_from(["managedsave", "shutdown"]))
        sc.faults.append({"cmd": cmd, "nth": draw(st.integers(1, 2)), "action": "fail",
                          "error": f"qemu-{cmd}-busy"})  # a busy error with no job behind it
    return sc


def saves_in_progress(draw: st.DrawFn, sc: Scenario) -> None:
    """Another job (a run killed mid-save, another tool, the admin) is saving some
    running persistent guests when stop begins: its save ends within the lock wait of
    our first request, after it, or past SAVE_TIMEOUT (early enough to end before the
    checks, see ``FaultHost.settle``)."""
    timeout = float(sc.config["SAVE_TIMEOUT"])
    for uri, gs in sc.uris.items():
        picked = [g for g in gs if g["state"] == "running" and g["persistent"]
                  and draw(st.integers(1, 3)) == 1]
        if not picked:
            continue
        lock = draw(st.sampled_from([SHORT_LOCK_WAIT, SHORT_LOCK_WAIT, LOCK_WAIT]))
        if lock != LOCK_WAIT:
            sc.lock_wait[uri] = lock
        for g in picked:
            g["saving_seconds"] = aim_saving(draw(st.sampled_from(SAVING_SHAPES)), lock,
                                             timeout)


def aim_saving(shape: str, lock: float, timeout: float) -> float:
    """``saving_seconds`` for one of :data:`SAVING_SHAPES`, given the URI's lock wait and
    SAVE_TIMEOUT (a save cannot end after a lock wait longer than SAVE_TIMEOUT and
    before SAVE_TIMEOUT: that one ends past it)."""
    if shape == "in-lock-wait":
        seconds = REACHED + min(lock, timeout) / 2
    elif shape == "after-lock-wait" and lock < timeout:
        seconds = REACHED + (lock + timeout) / 2
    else:
        seconds = REACHED + timeout + 1.0
    return round(seconds, 2)


# -- running it --------------------------------------------------------------------

Guests = dict[tuple[str, str], dict[str, Any]]  # (URI key, UUID) -> the fake's guest


class FaultHost(FakeHost):
    """A FakeHost whose runs journal their virsh calls and can have stdout closed or full."""

    def __init__(self, root: Path, sc: Scenario) -> None:
        super().__init__(root, sc.host(), sc.config_text())
        self.sc = sc

    def snapshot(self) -> Guests:
        """The live host, read under the fake's own lock, due transitions applied."""
        return {(key, guest["uuid"]): guest
                for key, guests in self.guests_now().items() for guest in guests}

    def settle(self, limit: float = 10.0) -> Guests:
        """Let jobs still in flight on the host (a save whose virsh was killed) end."""
        deadline = time.monotonic() + limit
        while True:
            now = self.snapshot()
            if not any(g["job"] for g in now.values()) or time.monotonic() > deadline:
                return now
            time.sleep(0.05)

    def recorded(self) -> set[tuple[str, str]]:
        out = set()
        for path in (self.list_file, self.pending_file):
            entries, _ = read_list(path)
            out |= {(uri, uuid) for uri, ids in entries.items() for uuid in ids}
        return out

    def journal(self, phase: str) -> list[dict[str, Any]]:
        path = self.root / f"journal-{phase}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def fakes_alive(self) -> list[int]:
        needle = str(self.bin / "virsh").encode()
        pids = []
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if entry.isdigit() and needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
        return pids

    def play(self, command: str, phase: str, *, faults: bool, mode: str = "normal",
             sig: str = "TERM") -> tuple[Run, bool]:
        """Run virtguests; returns the run and whether it had to be killed (a hang)."""
        env = self.env()
        env["VIRTGUESTS_FAKE_JOURNAL"] = str(self.root / f"journal-{phase}.jsonl")
        env.pop("PYTHONUNBUFFERED", None)  # as systemd runs it
        if not faults:
            env["VIRTGUESTS_FAKE_FAULTS"] = "off"
        argv = [sys.executable, "-I", "-m", "virtguests", *self.argv(command)]
        began = time.monotonic()
        limit = self.sc.safety_net()
        stdout = _Stdout(mode)
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout.fd,
                                stderr=subprocess.PIPE,
                                preexec_fn=_close_stdout if mode == "closed-stdout" else None)
        stdout.spawned()
        if mode == "signal-during-output":
            _signal_when_writing(proc, getattr(signal, "SIG" + sig))
            stdout.release()
            limit = 15.0  # nothing was started yet: the run only has to wind up
        hung = False
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            _, err = proc.communicate()
        out = stdout.text()
        return Run(proc.returncode, out, err.decode("utf-8", "replace"),
                   time.monotonic() - began), hung


def _close_stdout() -> None:
    os.close(1)


class _Stdout:
    """virtguests' stdout: a pipe read as it comes (normal), a pipe that is already full
    and read only after ``release()`` (signal-during-output), or none (closed)."""

    def __init__(self, mode: str) -> None:
        self.fd: Optional[int] = None
        self.chunks: list[bytes] = []
        self.go = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.read_end = -1
        if mode == "closed-stdout":
            return
        self.read_end, self.fd = os.pipe()
        if mode == "normal":
            self.go.set()
        else:  # fill it: virtguests' first progress line blocks in write()
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(self.fd, b"\n" * 4096)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        self.go.wait()
        while data := os.read(self.read_end, 65536):
            self.chunks.append(data)

    def spawned(self) -> None:
        """The child has its copy: close ours, so the reader sees EOF when it exits."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        self.go.set()

    def text(self) -> str:
        self.spawned()
        self.go.set()
        if self.thread is not None:
            self.thread.join(10)
            os.close(self.read_end)
        return b"".join(self.chunks).lstrip(b"\n").decode("utf-8", "replace")


def _signal_when_writing(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Once a thread of virtguests blocks writing to the full pipe: signal it."""
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            tasks = Path(f"/proc/{proc.pid}/task").iterdir()
            if any("pipe_write" in (task / "wchan").read_text() for task in tasks):
                break
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(sig)
    time.sleep(0.3)  # the handler runs now, while the write is still blocked


# -- the invariant -------------------------------------------------------------------

def _named(text: str, g: dict[str, Any]) -> bool:
    return g["uuid"] in text or g["name"] in text


def call_id(entry: dict[str, Any]) -> str:
    """One virsh call in the fake's log or journal: a process, or one line of a session
    (``call``; the pid in an older log)."""
    return str(entry.get("call", entry["pid"]))


def timed_out(journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls killed before they answered (no line in the call log: virtguests' timeout
    kills with SIGKILL), one entry per call; ``event`` streams never answer."""
    first: dict[str, dict[str, Any]] = {}
    for j in journal:
        if not j["answered"] and j["cmd"] != "event":
            first.setdefault(call_id(j), j)
    return list(first.values())


def _answered_after(journal: list[dict[str, Any]], call: dict[str, Any]) -> bool:
    """Whether a call on the same URI dispatched after *call* was answered: libvirtd
    still answered, so *call* timing out was that guest's own fault (a hung QEMU)."""
    later = journal[next(i for i, j in enumerate(journal) if j is call) + 1:]
    return any(j["uri"] == call["uri"] and j["answered"] and j["cmd"] != "event"
               for j in later)


def wedged_uris(journal: list[dict[str, Any]]) -> set[str]:
    """URIs where a call timed out and nothing dispatched after it was answered: wedged
    (issue 10 item 7).  A guest's call that timed out while libvirtd still answered (the
    liveness check) only cost that guest's step."""
    return {j["uri"] for j in timed_out(journal) if not _answered_after(journal, j)}


def is_liveness_check(call: dict[str, Any]) -> bool:
    """``virsh [-c URI] list --uuid`` (a status poll looks the same: also one
    QUERY_TIMEOUT)."""
    return bool(call["argv"][-2:] == ["list", "--uuid"])


def check_bound(sc: Scenario, journal: list[dict[str, Any]], command: str) -> list[str]:
    """A wedged URI costs at most the calls in flight (one SAVE_TIMEOUT for saves, one
    request timeout for requests) plus one QUERY_TIMEOUT (the liveness check).

    From the journal: the calls on a URI that timed out with nothing answered after
    them form waves (calls started while the first of the wave was still within its
    timeout); the calls in flight are one wave, the liveness check after them another;
    any further wave means a call waited its full timeout again after the URI was
    known wedged.
    """
    problems = []
    for uri in sorted(wedged_uris(journal)):
        hung = sorted((j for j in timed_out(journal)
                       if j["uri"] == uri and not _answered_after(journal, j)),
                      key=lambda j: j["spawned"])
        waves: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for j in hung:
            first = waves[-1][0] if waves else None
            if first is not None and j["spawned"] < first["spawned"] + sc.timeout_of(
                    first["cmd"]):
                waves[-1][1].append(j)
            else:
                waves.append((j, [j]))
        if len(waves) > 2 or (len(waves) == 2 and not is_liveness_check(waves[1][0])):
            detail = "; ".join(
                f"t+{first['spawned'] - hung[0]['spawned']:.1f}s: "
                + ", ".join(j["cmd"] for j in calls) for first, calls in waves)
            problems.append(f"{command}: URI {uri} waited out {len(waves)} full timeouts "
                            f"one after another (bound: the calls in flight + one "
                            f"QUERY_TIMEOUT): {detail}")
    return problems


def listed_uris(journal: list[dict[str, Any]]) -> dict[str, float]:
    """URIs where a listing answered cleanly (exit 0, no fault in its virsh process),
    with the fake's time of the first such listing: virtguests saw every guest that
    was active there then."""
    faulty = {call_id(j) for j in journal if j["fault"]}
    listed: dict[str, float] = {}
    for j in journal:
        if j["cmd"] == "list" and j["exit"] == 0 and call_id(j) not in faulty:
            listed[j["uri"]] = min(listed.get(j["uri"], j["now"]), j["now"])
    return listed


def harmed_while_saving(journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls that took a guest's memory while a save of it (ours, another job's, an
    orphaned virsh's) was in progress: a destroy the fake applied (it does at dispatch,
    and the image is lost), or a shutdown it answered with success."""
    return [j for j in journal if j["job"] == "save" and (
        (j["cmd"] == "destroy" and j["fault"] not in ("fail", "hang")
         and j["exit"] in (0, None))
        or (j["cmd"] == "shutdown" and j["exit"] == 0))]


def check_other_save(g: dict[str, Any], now: Optional[dict[str, Any]], who: str,
                     is_recorded: bool, listed: Optional[float]) -> list[str]:
    """A guest another job was saving when stop began (``saving_seconds``), from the
    fake's state: a save that had time to complete leaves an image, unless the guest
    was destroyed or shut down meanwhile.  Saved, or still saving, it must be recorded
    when its URI was *listed* (the fake's time, :func:`listed_uris`) before that save
    ended (start resumes it); listed later, it was an inactive guest with an image."""
    if now is None:
        return [f"{who}: vanished while another job was saving it"]
    problems = []
    saving = now["job"] is not None and now["job"]["op"] == "save"
    if not saving and not (now["state"] == "shutoff" and now["managed_save"]):
        problems.append(f"{who}: another job's save was in progress (ending "
                        f"t+{g['job']['end'] - g['job']['start']:.2f}s); it is now "
                        f"{now['state']} ({now['reason']}) without a managed-save image: "
                        "its memory was lost")
    elif listed is not None and listed < g["job"]["end"] and not is_recorded:
        problems.append(f"{who}: {'still being saved' if saving else 'saved'} by another "
                        "job but not recorded in the list file: start will not resume it")
    return problems


def check_run(run: Run, hung: bool, command: str, leftovers: list[int]) -> list[str]:
    problems = []
    if hung:
        problems.append(f"{command}: did not finish (killed after {run.seconds:.0f}s)")
    elif run.code not in STATUSES[command]:
        problems.append(f"{command}: exit status {run.code} (documented: "
                        f"{sorted(STATUSES[command])})")
    if "Traceback" in run.out + run.err:
        problems.append(f"{command}: printed a Python traceback")
    if leftovers:
        problems.append(f"{command}: {len(leftovers)} fake virsh processes left running")
    return problems


def check_stop(sc: Scenario, before: Guests, after: Guests, recorded: set[tuple[str, str]],
               run: Run, journal: list[dict[str, Any]], interrupted: bool) -> list[str]:
    """Each guest running before stop is running untouched, saved and recorded, or shut
    down by a requested step (and recorded when persistent); none destroyed or shut down
    while a save was in progress, and one another job was saving ends saved and
    recorded (:func:`check_other_save`); one that was acted on and still runs had its
    whole chain tried, or is recorded and named because the run was interrupted or its
    URI wedged."""
    problems = []
    chain = sc.chain
    wedged = wedged_uris(journal)
    listed = listed_uris(journal)
    for key, g in sorted(before.items()):
        if g["state"] == "shutoff":
            continue
        uri, uuid = key
        who = f"guest {g['name']!r} ({uuid}) on {uri}"
        mine = [j for j in journal if j["uri"] == uri and j["guest"] == uuid]
        touched = {j["cmd"] for j in mine} & set(ACTIONS.values())  # tried
        acted = {j["cmd"] for j in mine if j["fault"] not in ("fail", "hang")} & touched
        now = after.get(key)
        is_recorded = key in recorded
        named = _named(run.err, g)
        for j in harmed_while_saving(mine):
            problems.append(f"{who}: {'destroyed' if j['cmd'] == 'destroy' else 'shut down'}"
                            " while its save was in progress")
        if g["job"] is not None and g["job"]["op"] == "save":  # another job's, at the start
            problems += check_other_save(g, now, who, is_recorded, listed.get(uri))
            continue
        if now is None:  # a transient guest vanishes when it stops
            if not ({"shutdown", "destroy"} & acted and {"shutdown", "poweroff"} & set(chain)):
                problems.append(f"{who}: transient guest gone without a requested step "
                                f"(chain {chain}, sent {sorted(touched)})")
            continue
        if now["state"] == "shutoff":
            if now["managed_save"]:
                how, step = "saved", "suspend"
            else:
                how, step = now["reason"], {"shutdown": "shutdown",
                                            "destroyed": "poweroff"}.get(now["reason"], "?")
            if step not in chain or ACTIONS.get(step) not in acted:
                problems.append(f"{who}: {how} but {step} was not a requested step that was "
                                f"sent (chain {chain}, sent {sorted(touched)})")
            if g["persistent"] and not is_recorded:
                problems.append(f"{who}: {how} but not recorded in the list file: LOST at "
                                "start")
            continue
        # still active
        if not touched:
            if g["persistent"] and not (is_recorded or named or uri in run.err):
                problems.append(f"{who}: left running, neither recorded nor named")
            continue
        last = ACTIONS[chain[-1]]
        if last in touched:
            continue
        if interrupted or uri in wedged:
            if g["persistent"] and not is_recorded:
                problems.append(f"{who}: still running after {sorted(touched)}, run "
                                f"{'interrupted' if interrupted else 'wedged'}, not recorded")
            if not interrupted and not (named or _named(run.out, g)):
                problems.append(f"{who}: its URI wedged; still running after "
                                f"{sorted(touched)}, not named")
            continue
        problems.append(f"{who}: abandoned: still running after {sorted(touched)}; "
                        f"the chain's last step ({chain[-1]}) was never tried")
    return problems


def check_start(before_start: set[tuple[str, str]], names: dict[tuple[str, str], str],
                after: Guests, recorded: set[tuple[str, str]], run: Run) -> list[str]:
    """Every guest recorded by stop is running after start, or still recorded and named."""
    problems = []
    for key in sorted(before_start):
        g = after.get(key)
        if g is not None and g["state"] != "shutoff":
            continue
        name = names.get(key, key[1])
        text = run.out + run.err
        if key in recorded and (key[1] in text or name in text):
            continue
        problems.append(f"start: recorded guest {name!r} ({key[1]}) on {key[0]} is "
                        f"{'gone' if g is None else g['state']}, "
                        f"{'still recorded' if key in recorded else 'no longer recorded'}"
                        f", {'named' if key[1] in text or name in text else 'not named'}")
    return problems


def play(sc: Scenario, root: Path) -> tuple[list[str], str]:
    """Run the scenario; returns the violations and a transcript for the report."""
    host = FaultHost(root, sc)
    before = host.snapshot()
    stop, stop_hung = host.play("stop", "stop", faults=True, mode=sc.mode, sig=sc.mode_signal)
    stop_left = _reap(host)
    exits = {call_id(call): call["exit"] for call in host.calls()}
    stop_journal = [{**j, "answered": call_id(j) in exits, "exit": exits.get(call_id(j))}
                    for j in host.journal("stop")]
    after_stop = host.settle()
    recorded = host.recorded()
    interrupted = sc.mode == "signal-during-output" or any(
        j["fault"] == "signal" for j in stop_journal)
    problems = check_run(stop, stop_hung, "stop", stop_left)
    problems += check_bound(sc, stop_journal, "stop")
    problems += check_stop(sc, before, after_stop, recorded, stop, stop_journal, interrupted)
    start, start_hung = host.play("start", "start", faults=False, mode=sc.start_mode)
    problems += check_run(start, start_hung, "start", _reap(host))
    names = {k: g["name"] for k, g in before.items()}
    problems += check_start(recorded, names, host.settle(), host.recorded(), start)
    transcript = (f"--- scenario\n{sc.dump()}--- stop ({sc.mode})\n{stop}"
                  f"--- stop: virsh calls as dispatched\n"
                  + "".join(f"  t+{j['spawned'] - stop_journal[0]['spawned']:.1f}s "
                            f"{j['uri']} {j['cmd']} {j['guest'] or ''} {j['fault'] or ''}"
                            f"{' (job: ' + j['job'] + ')' if j['job'] else ''}"
                            f"{' (killed)' if not j['answered'] else ''}\n"
                            for j in stop_journal)
                  + f"--- start ({sc.start_mode})\n{start}")
    return problems, transcript


def _reap(host: FaultHost) -> list[int]:
    """Fake virsh processes still alive after a run (then killed, so the next can go on)."""
    deadline = time.monotonic() + 2
    while (left := host.fakes_alive()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left
