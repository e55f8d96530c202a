"""`make bench`: virtguests against Debian's libvirt-guests.sh on simulated hosts.

Both tools run against the fake virsh (``virtguests/testing/fakevirsh/``) on
identical fresh hosts (``virtguests.testing.FakeHost``); the reference runs
unmodified through ``tools/reference.run_reference`` (private mount namespace:
needs root, ``unshare`` and the reference's dependencies).  Every host has N
running persistent guests with ``save_seconds: 0.05`` and
``shutdown_seconds: 1``.  The tools run one after the other, never at the same
time, so they do not compete for the CPU.

Scenarios (each on fresh hosts unless said otherwise):

1. ``stop`` with ``ON_SHUTDOWN=suspend`` (one save at a time), both tools;
2. ``stop`` with ``PARALLEL_SUSPEND=8`` (virtguests only; the reference has no
   such option, its serial run of scenario 1 is shown for comparison);
3. ``stop`` with ``ON_SHUTDOWN=shutdown PARALLEL_SHUTDOWN=20`` (floor:
   ceil(N/20) x 1 s), both tools;
4. ``start`` (``START_DELAY=0``) on the hosts each tool stopped in scenario 1;
5. virsh processes per guest over that whole stop + start cycle (1 + 4); issue 13's
   target: at most 0.1x the reference's;
6. ``status`` start-up time, median of ``--status-runs`` runs, both tools;
7. scenario 1 again (virtguests, the smallest size) through a virsh that leaves a
   child holding its stdout and stderr open (``FakeHost.holding_virsh``: as ssh's
   ``ControlPersist`` master does); the cost per call above scenario 1's run.
8. issue 14's live-migration targets on real libvirt (root only, else noted as not
   run): ``tools/migrate_bench.py``, ``--migrate-rounds`` rounds (0 skips it).

Measured per run: wall time of the tool's process (for the reference this
includes the namespace harness: unshare, bind mounts), virsh calls (lines of
VIRTGUESTS_FAKE_LOG: one per command, whether a process ran it or a line of a
virtguests session), virsh processes (the distinct pids of those lines) and the
libvirtd connections they opened (virtguests: its own count, the run report's
``virsh``; the reference: one per process, a virsh process cannot share its
connection), peak number of virsh calls running at once (largest overlap of the
logged [start, end] intervals; these are taken inside the fake, so interpreter
start-up and exit are not in them), and virtguests / reference.

Defaults: ``--sizes 10,100,500``; the reference runs only for sizes up to
``--ref-max`` (100) because it sleeps >= 1 s per save (500 guests: 500+ s);
``--full`` runs it for every size.  The default run takes about 5 minutes on
2 cores.  ``--no-reference`` skips it entirely.

Honest numbers: this environment may set PYTHONDONTWRITEBYTECODE=1, which
makes every Python start recompile everything it imports.  The bench
byte-compiles ``virtguests/`` first and removes PYTHONDONTWRITEBYTECODE from
the environment of every child (virtguests and the fake virsh, whose shim
keeps its byte-code in one cache shared by this process's hosts; each
fresh host gets one unlogged warm-up call that builds the simulated host's
state (and compiles the fake the first time), for both tools alike).

Output: a markdown report on stdout and in ``bench/results.md`` (``--out``),
with PASS/FAIL for the targets.  Exit status 0 even when a target fails (this
is a benchmark, not a test); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# before FakeHost.env() copies os.environ for every child:
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

from tools.reference import (  # noqa: E402
    reference_available,
    reference_version,
    run_reference,
)
from virtguests.testing import FakeHost  # noqa: E402

SAVE_SECONDS = 0.05
SHUTDOWN_SECONDS = 1
PARALLEL_SUSPEND = 8
PARALLEL_SHUTDOWN = 20

# Both tools read exactly this config.  Explicit because Debian's build of the
# reference patches its defaults to ON_SHUTDOWN=shutdown and ON_BOOT=ignore.
BASE_CONFIG = "URIS=default\nON_BOOT=start\nSTART_DELAY=0\n"
CONFIGS = {
    "suspend": BASE_CONFIG + "ON_SHUTDOWN=suspend\n",
    "psuspend": BASE_CONFIG + f"ON_SHUTDOWN=suspend\nPARALLEL_SUSPEND={PARALLEL_SUSPEND}\n",
    "pshutdown": BASE_CONFIG + f"ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN={PARALLEL_SHUTDOWN}\n"
                               "SHUTDOWN_TIMEOUT=300\n",
}


@dataclass
class Result:
    tool: str            # "virtguests" | "reference"
    wall: float
    calls: int
    processes: int       # distinct pids among the calls: a session runs many
    peak: int
    code: int
    ok: bool             # the host ended in the expected state
    note: str = ""
    cpu: float = 0.0     # user+sys CPU seconds of the tool and every process it waited for
    connections: int = 0  # libvirtd connections opened (virtguests: its run report's count)
    counted: Optional[int] = None  # virtguests: the processes its run report counted

    def cell(self) -> str:
        flag = "" if self.ok and self.code == 0 else f" ⚠ exit {self.code} {self.note}"
        return f"{self.wall:.2f} s{flag}"


@dataclass
class Row:
    scenario: str
    n: int
    ours: Optional[Result]
    ref: Optional[Result]
    ref_label: str = ""          # e.g. "(serial, scenario 1)"
    floor: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# hosts and measurements
# ---------------------------------------------------------------------------
def host_desc(n: int) -> dict[str, Any]:
    return {"uris": {"default": {"guests": [
        {"name": f"guest{i:03d}", "save_seconds": SAVE_SECONDS,
         "shutdown_seconds": SHUTDOWN_SECONDS}
        for i in range(1, n + 1)]}}}


class Hosts:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def new(self, n: int, config: str) -> FakeHost:
        self.count += 1
        path = self.root / f"h{self.count:03d}-n{n}"
        path.mkdir()
        host = FakeHost(path, host_desc(n), config)
        warm = host.virsh("list", "--all", "--name")  # unlogged: byte-code + state file
        if warm.returncode != 0:
            raise RuntimeError(f"fake virsh warm-up failed: {warm.stderr}")
        return host


def peak_concurrency(calls: list[dict[str, Any]]) -> int:
    events = []
    for c in calls:
        events.append((float(c["start"]), 1))
        events.append((float(c["end"]), -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def reset_log(host: FakeHost) -> None:
    if host.log_file.exists():
        host.log_file.unlink()


def measure(tool: str, host: FakeHost, command: str,
            check: Callable[[FakeHost], str], timeout: float,
            options: tuple[str, ...] = ()) -> Result:
    reset_log(host)
    report = host.state_dir / "virtguests-last-run.json"
    if report.exists():
        report.unlink()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    if tool == "virtguests":
        run = host.run(*options, command, timeout=timeout)
    else:
        run = run_reference(command, host=host, config_text=host.config_file.read_text(),
                            timeout=timeout)
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    calls = host.calls()
    problem = check(host)
    if run.code != 0:
        problem = (problem + " " + run.err.strip().splitlines()[-1:][0][:120]
                   if run.err.strip() else problem)
    processes = len({call["pid"] for call in calls})
    connections, counted = processes, None  # the reference: one per virsh process
    if tool == "virtguests":
        started = json.loads(report.read_text()).get("virsh", []) if report.exists() else []
        connections = sum(entry["connections"] for entry in started)
        counted = sum(entry["processes"] for entry in started)
    return Result(tool, wall, len(calls), processes, peak_concurrency(calls), run.code,
                  not problem,
                  problem, cpu, connections, counted)


def all_saved(n: int) -> Callable[[FakeHost], str]:
    def check(host: FakeHost) -> str:
        active, saved = host.active(), host.managed_saved()
        return "" if not active and len(saved) == n else \
            f"{len(active)} still running, {len(saved)} saved"
    return check


def all_off(n: int) -> Callable[[FakeHost], str]:
    def check(host: FakeHost) -> str:
        active = host.active()
        return "" if not active else f"{len(active)} still running"
    return check


def all_running(n: int) -> Callable[[FakeHost], str]:
    def check(host: FakeHost) -> str:
        active, saved = host.active(), host.managed_saved()
        return "" if len(active) == n and not saved else \
            f"{len(active)} running, {len(saved)} still saved"
    return check


def virsh_call_cost(hosts: Hosts, n: int = 1, runs: int = 20) -> tuple[float, float]:
    """One fake virsh process (`domid`) on an n-guest host: median wall, mean CPU."""
    host = hosts.new(n, "")
    env = host.env()
    env.pop("VIRTGUESTS_FAKE_LOG", None)
    times = []
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([str(host.bin / "virsh"), "domid", "guest001"], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, check=True)
        times.append(time.monotonic() - t0)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return statistics.median(times), cpu / runs


# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------
def timeout_for(n: int, tool: str) -> float:
    return 120 + (3 * n if tool == "reference" else n)


def bench(args: argparse.Namespace, hosts: Hosts, with_ref: Callable[[int], bool]
          ) -> tuple[list[Row], list[Row], list[Row], list[Row], list[Row], list[Row],
                     dict[str, Any]]:
    serial, parallel_susp, shutdown, start, cycle, held = [], [], [], [], [], []
    costs: dict[int, tuple[float, float]] = {}
    for n in args.sizes:
        tools = ["virtguests"] + (["reference"] if with_ref(n) else [])
        costs[n] = virsh_call_cost(hosts, n)
        log(f"one fake virsh call on a {n}-guest host: {costs[n][0] * 1000:.0f} ms wall, "
            f"{costs[n][1] * 1000:.0f} ms CPU")

        # 1 + 4 + 5: serial suspend, then start on the same host
        res_stop: dict[str, Result] = {}
        res_start: dict[str, Result] = {}
        for tool in tools:
            log(f"scenario 1: {tool} stop (suspend, serial), {n} guests")
            host = hosts.new(n, CONFIGS["suspend"])
            res_stop[tool] = measure(tool, host, "stop", all_saved(n), timeout_for(n, tool))
            log(f"  {res_stop[tool].wall:.2f} s, {res_stop[tool].cpu:.2f} s CPU, "
                f"{res_stop[tool].calls} virsh")
            log(f"scenario 4: {tool} start, {n} guests")
            res_start[tool] = measure(tool, host, "start", all_running(n), timeout_for(n, tool))
            log(f"  {res_start[tool].wall:.2f} s, {res_start[tool].calls} virsh")
        serial.append(Row("suspend, serial", n, res_stop["virtguests"],
                          res_stop.get("reference"), floor=n * SAVE_SECONDS))
        start.append(Row("start (START_DELAY=0)", n, res_start["virtguests"],
                         res_start.get("reference")))
        cyc = {t: (res_stop[t].processes + res_start[t].processes) / n for t in tools}
        cycle.append(Row("virsh processes per guest, stop+start", n, None, None,
                         extra={"per_guest": cyc,
                                "calls": {t: (res_stop[t].processes, res_start[t].processes)
                                          for t in tools}}))

        # 2: parallel suspend (virtguests only)
        log(f"scenario 2: virtguests stop (PARALLEL_SUSPEND={PARALLEL_SUSPEND}), {n} guests")
        host = hosts.new(n, CONFIGS["psuspend"])
        ours = measure("virtguests", host, "stop", all_saved(n), timeout_for(n, "virtguests"))
        log(f"  {ours.wall:.2f} s, {ours.cpu:.2f} s CPU, {ours.calls} virsh")
        parallel_susp.append(Row(f"suspend, PARALLEL_SUSPEND={PARALLEL_SUSPEND}", n, ours,
                                 res_stop.get("reference"), ref_label="(serial)",
                                 floor=math.ceil(n / PARALLEL_SUSPEND) * SAVE_SECONDS))

        # 3: parallel shutdown
        res: dict[str, Result] = {}
        for tool in tools:
            log(f"scenario 3: {tool} stop (shutdown, PARALLEL_SHUTDOWN={PARALLEL_SHUTDOWN}), "
                f"{n} guests")
            host = hosts.new(n, CONFIGS["pshutdown"])
            res[tool] = measure(tool, host, "stop", all_off(n), timeout_for(n, tool))
            log(f"  {res[tool].wall:.2f} s, {res[tool].cpu:.2f} s CPU, {res[tool].calls} virsh")
        shutdown.append(Row(f"shutdown, PARALLEL_SHUTDOWN={PARALLEL_SHUTDOWN}", n,
                            res["virtguests"], res.get("reference"),
                            floor=math.ceil(n / PARALLEL_SHUTDOWN) * SHUTDOWN_SECONDS))

    # 7: serial suspend through a virsh whose child holds its output open
    n = min(args.sizes)
    log(f"scenario 7: virtguests stop (suspend, serial), {n} guests, every virsh leaving "
        "a child that holds its output open")
    host = hosts.new(n, CONFIGS["suspend"])
    virsh = host.holding_virsh()
    try:
        ours = measure("virtguests", host, "stop", all_saved(n), timeout_for(n, "virtguests"),
                       ("--virsh", str(virsh)))
    finally:
        host.release_holders()
    log(f"  {ours.wall:.2f} s, {ours.calls} virsh")
    held.append(Row("suspend, serial, a child holds each virsh's output open", n, ours,
                    None, floor=n * SAVE_SECONDS,
                    extra={"plain": next(r.ours for r in serial if r.n == n)}))

    # 6: status start-up
    status: dict[str, Any] = {}
    tools = ["virtguests"] + (["reference"] if not args.no_reference else [])
    for tool in tools:
        log(f"scenario 6: {tool} status x {args.status_runs}")
        host = hosts.new(10, CONFIGS["suspend"])
        times, calls, codes = [], 0, set()
        for _ in range(args.status_runs):
            r = measure(tool, host, "status", lambda h: "", 60)
            times.append(r.wall)
            calls += r.calls
            codes.add(r.code)
        status[tool] = {"median": statistics.median(times), "min": min(times),
                        "max": max(times), "calls": calls / args.status_runs,
                        "codes": sorted(codes)}
        log(f"  median {status[tool]['median'] * 1000:.0f} ms")
    status["costs"] = costs
    return serial, parallel_susp, shutdown, start, cycle, held, status


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def verdict(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def fmt_ratio(ours: Optional[Result], ref: Optional[Result]) -> str:
    if ours is None or ref is None or ref.wall <= 0:
        return "—"
    return f"{ours.wall / ref.wall:.3f}"


def machine() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    try:
        ref = f"Debian libvirt-daemon {reference_version()}"
    except Exception as err:  # informational only
        ref = f"unavailable ({err})"
    return [
        f"- CPU: {model}, {cores} cores (load average before the run: {load})",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({sys.executable})",
        "- virsh: the fake virsh (`virtguests/testing/fakevirsh/`), replaying recordings of "
        "virsh 9.0.0",
        f"- reference: `libvirt-guests.sh` from {ref}, run by `tools/reference.py` "
        "(unshare -m, bind mounts)",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        "- byte-code: `virtguests/` compiled first (`python -m compileall -q virtguests`), "
        "PYTHONDONTWRITEBYTECODE removed from every child's environment",
    ]


def result_cols(r: Optional[Result]) -> list[str]:
    if r is None:
        return ["not run", "", "", ""]
    virsh = f"{r.calls} / {r.processes} / {r.connections}"
    if r.counted is not None and r.counted != r.processes:  # never seen; would be a bug
        virsh += f" (own count {r.counted})"
    return [r.cell(), f"{r.cpu:.2f} s", virsh, str(r.peak)]


def report(args: argparse.Namespace, rows: tuple[list[Row], ...], status: dict[str, Any],
           elapsed: float) -> tuple[str, list[tuple[Optional[bool], str]]]:
    serial, parallel_susp, shutdown, start, cycle, held = rows
    out: list[str] = ["# virtguests vs libvirt-guests.sh: benchmark", ""]
    out += machine()
    costs = status["costs"]
    out += ["- one fake virsh process (`virsh domid`, started from Python): "
            + ", ".join(f"{n} guests {w * 1000:.0f} ms wall / {c * 1000:.0f} ms CPU"
                        for n, (w, c) in sorted(costs.items())),
            f"- command: `make bench` / `python tools/bench.py "
            f"{' '.join(sys.argv[1:])}`; whole run {elapsed:.0f} s", ""]
    out += ["Simulated hosts: one URI, N running persistent guests, each `save_seconds: "
            f"{SAVE_SECONDS}`, `shutdown_seconds: {SHUTDOWN_SECONDS}`. Every config sets "
            "`ON_BOOT=start START_DELAY=0` explicitly (Debian's reference defaults differ). "
            "Tools run one at a time. Wall = the whole tool process (the reference's includes "
            "its namespace harness, see the `status` row). virsh = calls (lines of "
            "`VIRTGUESTS_FAKE_LOG`, one per command, in a process or a session) / processes "
            "started (their distinct pids) / libvirtd connections they opened (virtguests: "
            "its run report's count; the reference: one per process); peak = most virsh "
            "calls running at once. "
            "ratio = virtguests wall / reference wall. \"not run\": reference skipped at that "
            "size (use `--full`).", ""]
    out += ["| # | scenario | N | floor | virtguests wall | CPU | virsh calls / proc. / conn. "
            "| peak | reference wall | CPU | virsh calls / proc. / conn. | peak | ratio |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def add(num: str, row: Row) -> None:
        floor = f"{row.floor:.2f} s" if row.floor is not None else ""
        ref_cols = result_cols(row.ref)
        if row.ref is not None and row.ref_label:
            ref_cols[0] += f" {row.ref_label}"
        out.append("| " + " | ".join([num, row.scenario, str(row.n), floor,
                                      *result_cols(row.ours), *ref_cols,
                                      fmt_ratio(row.ours, row.ref)]) + " |")

    for num, group in (("1", serial), ("2", parallel_susp), ("3", shutdown), ("4", start)):
        for row in group:
            add(num, row)
    for row in cycle:
        pg = row.extra["per_guest"]
        calls = row.extra["calls"]
        ours = f"{pg['virtguests']:.2f} /guest ({calls['virtguests'][0]}+{calls['virtguests'][1]})"
        if "reference" in pg:
            ref = f"{pg['reference']:.2f} /guest ({calls['reference'][0]}+{calls['reference'][1]})"
            ratio = f"{pg['virtguests'] / pg['reference']:.3f}"
        else:
            ref, ratio = "not run", "—"
        out.append(f"| 5 | {row.scenario} | {row.n} |  | {ours} |  |  |  | {ref} |  |  |  "
                   f"| {ratio} |")
    st_ours = status.get("virtguests")
    st_ref = status.get("reference")

    def st(s: Optional[dict[str, Any]]) -> list[str]:
        if s is None:
            return ["not run", "", "", ""]
        return [f"{s['median'] * 1000:.0f} ms (min {s['min'] * 1000:.0f}, max "
                f"{s['max'] * 1000:.0f})", "", f"{s['calls']:g}", ""]
    ratio = (f"{st_ours['median'] / st_ref['median']:.3f}" if st_ours and st_ref else "—")
    out.append("| 6 | `status`, median of " f"{args.status_runs} runs | 10 |  | "
               + " | ".join(st(st_ours) + st(st_ref)) + f" | {ratio} |")
    for row in held:
        add("7", row)
    out.append("")

    # targets
    targets: list[tuple[Optional[bool], str]] = []

    def find(group: list[Row], n: int) -> Optional[Row]:
        return next((r for r in group if r.n == n), None)

    r = find(serial, 100)
    if r and r.ours and r.ref:
        targets.append((r.ours.ok and r.ours.wall <= 0.1 * r.ref.wall,
                        f"suspend 100 serial: virtguests {r.ours.wall:.2f} s <= 0.1 x reference "
                        f"{r.ref.wall:.2f} s = {0.1 * r.ref.wall:.2f} s "
                        f"(ratio {r.ours.wall / r.ref.wall:.3f})"))
    else:
        targets.append((None, "suspend 100 serial: not measured (needs both tools at 100)"))
    for n in [100]:
        r = find(parallel_susp, n)
        rs = find(serial, n)
        if not (r and r.ours and r.floor is not None and rs and rs.ours):
            targets.append((None, f"suspend {n} PARALLEL_SUSPEND: not measured"))
            continue
        # Two floors: the waves of saves (ceil(N/P) x the slowest save), and, on a
        # small machine, the CPU the fake virsh processes need, spread over the cores
        # (each is a Python interpreter).  Check: within 1.25 x the larger floor plus
        # virtguests' start-up (its `status` median).
        cores = os.cpu_count() or 1
        fake_cpu = r.ours.calls * costs[n][1]
        cpu_floor = fake_cpu / cores
        fixed = status["virtguests"]["median"]
        limit = 1.25 * max(r.floor, cpu_floor) + fixed
        overhead = r.ours.wall - r.floor
        targets.append((r.ours.ok and r.ours.wall <= limit,
                        f"suspend {n} PARALLEL_SUSPEND={PARALLEL_SUSPEND}: {r.ours.wall:.2f} s "
                        f"(speed-up over serial {rs.ours.wall / r.ours.wall:.1f}x); slowest-save "
                        f"floor ceil({n}/{PARALLEL_SUSPEND}) x {SAVE_SECONDS} s = {r.floor:.2f} s, "
                        f"overhead above it {overhead:.2f} s ({overhead / n * 1000:.1f} ms/guest); "
                        f"CPU: run {r.ours.cpu:.2f} s, of which ~{fake_cpu:.2f} s the fake virsh "
                        f"({r.ours.calls} x {costs[n][1] * 1000:.0f} ms) -> CPU floor "
                        f"{cpu_floor:.2f} s on {cores} cores (the whole run's CPU, virtguests "
                        f"included, is {r.ours.cpu / cores:.2f} s on {cores} cores); check: "
                        f"<= 1.25 x max(floors) + start-up {fixed:.2f} s = {limit:.2f} s"))
    r = find(shutdown, 100)
    if r and r.ours and r.floor is not None:
        ok1 = r.ours.ok and r.ours.wall <= 1.2 * r.floor
        targets.append((ok1, f"shutdown 100 parallel 20: virtguests {r.ours.wall:.2f} s <= 1.2 x "
                             f"floor {r.floor:.0f} s = {1.2 * r.floor:.2f} s"))
        if r.ref:
            targets.append((r.ours.ok and r.ours.wall <= 0.5 * r.ref.wall,
                            f"shutdown 100 parallel 20: virtguests {r.ours.wall:.2f} s <= 0.5 x "
                            f"reference {r.ref.wall:.2f} s = {0.5 * r.ref.wall:.2f} s"))
    for row in cycle:
        pg = row.extra["per_guest"]
        if row.n == 100 and "reference" in pg:
            targets.append((pg["virtguests"] <= pg["reference"] / 10,
                            f"stop+start {row.n}: virsh processes per guest virtguests "
                            f"{pg['virtguests']:.2f} <= reference {pg['reference']:.2f} / 10 = "
                            f"{pg['reference'] / 10:.2f}"))
    if st_ours:
        targets.append((st_ours["median"] <= 0.150,
                        f"`virtguests status` median {st_ours['median'] * 1000:.0f} ms <= 150 ms"))

    for row in held:
        plain = row.extra["plain"]
        if row.ours is None or plain is None or not row.ours.calls:
            continue
        per_call = (row.ours.wall - plain.wall) / row.ours.calls
        targets.append((row.ours.ok and row.ours.code == 0 and per_call <= 0.1,
                        f"a child holding each virsh's output open, stop of {row.n}: "
                        f"{row.ours.wall:.2f} s against {plain.wall:.2f} s without "
                        f"(scenario 1): {per_call * 1000:+.0f} ms per call "
                        f"({row.ours.calls} calls) <= 100 ms"))

    out += ["## Targets", ""]
    out += [f"- **{verdict(ok)}** {text}" for ok, text in targets]
    out.append("")
    return "\n".join(out), targets


# ---------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,500",
                   help="guest counts, comma-separated (default: 10,100,500)")
    p.add_argument("--ref-max", type=int, default=100,
                   help="run the reference only for sizes up to this (default: 100)")
    p.add_argument("--full", action="store_true",
                   help="run the reference for every size (500 guests: ~10 more minutes)")
    p.add_argument("--no-reference", action="store_true", help="virtguests only")
    p.add_argument("--status-runs", type=int, default=20)
    p.add_argument("--out", default=str(REPO / "bench" / "results.md"),
                   help="write the report here too (default: bench/results.md; '' = no file)")
    p.add_argument("--keep", action="store_true", help="keep the temporary hosts")
    p.add_argument("--migrate-rounds", type=int, default=3,
                   help="rounds of the real-libvirt live-migration bench (root only; "
                        "tools/migrate_bench.py); 0 = skip it")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes: comma-separated integers")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes: at least one size >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "virtguests")],
                   check=True, env=dict(os.environ))
    if not args.no_reference:
        reason = reference_available()
        if reason is not None:
            log(f"{reason}: running virtguests only")
            args.no_reference = True

    def with_ref(n: int) -> bool:
        return not args.no_reference and (args.full or n <= args.ref_max)

    root = Path(tempfile.mkdtemp(prefix="virtguests-bench-"))
    try:
        hosts = Hosts(root)
        *rows, status = bench(args, hosts, with_ref)
        text, targets = report(args, tuple(rows), status, time.monotonic() - started)
        if args.migrate_rounds > 0:
            from tools import migrate_bench

            extra, more = migrate_bench.section(args.migrate_rounds, log)
            text, targets = text + "\n" + extra, targets + more
    finally:
        if args.keep:
            log(f"hosts kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"written to {out}")
    for ok, line in targets:
        print(f"{verdict(ok)}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
