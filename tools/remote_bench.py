#!/usr/bin/env python3
"""Issue 13's targets on a real remote URI: ssh connections and wall times, the
reference ``libvirt-guests.sh`` and virtguests side by side in one run.

As root (``make bench-remote``; needs what ``.ci/install-realhost-deps`` and
``.ci/install-reference-deps`` install).  A private libvirtd
(``tools/realhost/libvirtd.py``) runs N real guests (default six of 96 MiB, the
``tests/realhost`` image); both tools reach it only as
``qemu+ssh://root@127.0.0.1:PORT/system?socket=...`` through a private sshd
(``tools/realhost/sshd.py``), whose log counts the logins (``Accepted publickey``).
The reference runs unmodified through ``tools/reference.run_reference`` with the real
virsh.  For each tool, on the same guests (booted, or rebooted, through the daemon's
own socket between runs, so only the tools' calls cross the sshd):

1. ``stop`` with ``ON_SHUTDOWN=suspend`` (one save at a time, as the reference does);
2. ``start`` (resumes them);
3. ``stop`` with ``ON_SHUTDOWN=shutdown PARALLEL_SHUTDOWN=N``.

Each run's result is checked from libvirt's view (every guest saved, running, shut
off); a run that fails its check is marked in the table.  Prints a Markdown table
(``--json FILE`` also writes the numbers); the issue's targets are in the last column.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.realhost.guestimage import build_guest_image, cache_dir, domain_xml
from tools.realhost.libvirtd import Guest, PrivateLibvirtd
from tools.realhost.sshd import PrivateSshd
from tools.reference import reference_available, reference_version, run_reference
from virtguests.testing import CliHarness, Run

TOOLS = ("reference", "virtguests")
RUN_TIMEOUT = 900.0


@dataclass
class Measured:
    tool: str
    run: str            # "suspend" | "start" | "pshutdown"
    connections: int    # ssh logins during the run
    wall: float         # seconds of the tool's process
    code: int
    problem: str        # "" when libvirt shows the expected result


class Host:
    """The guests on the private libvirtd, as the tools see them through the sshd."""

    def __init__(self, daemon: PrivateLibvirtd, sshd: PrivateSshd, work: Path,
                 count: int, memory_mib: int) -> None:
        self.daemon, self.sshd, self.work = daemon, sshd, work
        self.uri = sshd.qemu_uri(daemon)
        image = build_guest_image()
        self.guests: list[Guest] = []
        for i in range(count):
            name = f"rb-{i}"
            console = work / f"{name}.console.log"
            xml = work / f"{name}.xml"
            xml.write_text(domain_xml(name, image=image, console_log=console,
                                      memory_mib=memory_mib))
            daemon.virsh("define", str(xml))
            self.guests.append(Guest(daemon, name, console, persistent=True))
        self.boot()

    def boot(self) -> None:
        """Start every shut-off guest (the daemon's socket) and wait until each is ready."""
        waits = []
        for guest in self.guests:
            if guest.state().startswith("shut off"):
                waits.append((guest, guest.console().count("vg: ready") + 1))
                guest.virsh("start", timeout=120)
        for guest, occurrence in waits:
            guest.wait_console("vg: ready", occurrence=occurrence, timeout=180)

    def check(self, prefix: str) -> str:
        """'' if every guest's ``domstate --reason`` starts with *prefix*, else what differs."""
        wrong = {g.name: s for g in self.guests if not (s := g.state()).startswith(prefix)}
        return "" if not wrong else f"not {prefix!r}: {wrong}"


def config(host: Host, **values: object) -> str:
    lines = [f'URIS="{host.uri}"', "ON_BOOT=start", "START_DELAY=0"]
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def run_tool(tool: str, harness: CliHarness, command: str) -> Run:
    if tool == "virtguests":
        return harness.run(command, timeout=RUN_TIMEOUT)
    began = time.monotonic()
    run = run_reference(command, host=harness, config_text=harness.config_file.read_text(),
                        timeout=RUN_TIMEOUT)
    run.seconds = time.monotonic() - began
    return run


def measure(tool: str, host: Host, harness: CliHarness, name: str, command: str,
            expect: str, log: Callable[[str], None]) -> Measured:
    before = host.sshd.connections()
    run = run_tool(tool, harness, command)
    connections = host.sshd.connections() - before
    problem = host.check(expect)
    if run.code != 0:
        problem = f"exit {run.code}: {run.err.strip()[-300:]} {problem}".strip()
    log(f"{tool:<10} {name:<10} {connections:3d} ssh connections, {run.seconds:6.2f} s"
        + (f"  PROBLEM: {problem}" if problem else ""))
    return Measured(tool, name, connections, run.seconds, run.code, problem)


def measure_tool(tool: str, host: Host, root: Path, count: int,
                 log: Callable[[str], None]) -> list[Measured]:
    harness = CliHarness(root / tool)
    out = []
    host.boot()
    harness.set_config(config(host, ON_SHUTDOWN="suspend"))
    out.append(measure(tool, host, harness, "suspend", "stop", "shut off (saved)", log))
    out.append(measure(tool, host, harness, "start", "start", "running", log))
    harness.set_config(config(host, ON_SHUTDOWN="shutdown", PARALLEL_SHUTDOWN=count,
                              SHUTDOWN_TIMEOUT=300))
    out.append(measure(tool, host, harness, "pshutdown", "stop", "shut off", log))
    host.boot()
    return out


def table(results: list[Measured], count: int, rounds: int, ref_label: str) -> str:
    """The issue's table; over several rounds: the range of connections, median walls."""
    got: dict[tuple[str, str], list[Measured]] = {}
    for m in results:
        got.setdefault((m.tool, m.run), []).append(m)

    def failed(tool: str, *runs: str) -> str:
        return " (FAILED)" if any(m.problem for r in runs for m in got.get((tool, r), [])) \
            else ""

    def conns(tool: str, run: str) -> str:
        counts = sorted(m.connections for m in got.get((tool, run), []))
        if not counts:
            return "not run"
        text = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
        return text + failed(tool, run)

    def wall(tool: str, *runs: str) -> Optional[float]:
        """Median over rounds of the summed walls of *runs*."""
        per_run = [got.get((tool, r), []) for r in runs]
        done = min(len(ms) for ms in per_run)
        if done == 0:
            return None
        return float(statistics.median(sum(ms[i].wall for ms in per_run)
                                       for i in range(done)))

    def wall_cell(tool: str, *runs: str) -> str:
        w = wall(tool, *runs)
        if w is None:
            return "not run"
        ref = wall("reference", *runs)
        ratio = f" ({w / ref:.2f}x)" if tool == "virtguests" and ref else ""
        return f"{w:.1f} s{ratio}{failed(tool, *runs)}"

    rows = [
        ("stop (suspend, serial), ssh connections", conns("reference", "suspend"),
         conns("virtguests", "suspend"), "at most 3, whatever the number of guests"),
        ("start, ssh connections", conns("reference", "start"),
         conns("virtguests", "start"), "at most 2 + PARALLEL_START"),
        (f"parallel shutdown of {count} (PARALLEL_SHUTDOWN={count}), ssh connections",
         conns("reference", "pshutdown"), conns("virtguests", "pshutdown"), "at most 3"),
        (f"parallel shutdown of {count}, wall", wall_cell("reference", "pshutdown"),
         wall_cell("virtguests", "pshutdown"), "at most 0.2x the reference's, same run"),
        (f"suspend then start of {count}, wall", wall_cell("reference", "suspend", "start"),
         wall_cell("virtguests", "suspend", "start"), "at most 0.4x"),
    ]
    lines = [f"{count} guests behind a private sshd (qemu+ssh, proxy=netcat), {rounds} "
             f"round(s), tools alternating; reference: {ref_label}; ssh connections = "
             "'Accepted publickey' lines of the sshd log (a range over rounds); walls: "
             "median over rounds.",
             "", "| run | reference | virtguests | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guests", type=int, default=6)
    parser.add_argument("--memory", type=int, default=96, help="MiB per guest")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="comma-separated, run in this order (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each tool this many times (the first tool "
                             "alternates between rounds)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    if any(t not in TOOLS for t in tools):
        parser.error(f"--tools: choose from {', '.join(TOOLS)}")
    if args.rounds < 1 or args.guests < 1:
        parser.error("--rounds and --guests: at least 1")
    if os.geteuid() != 0:
        parser.error("run as root (private libvirtd and sshd, the reference's namespace)")
    ref_label = "not run"
    if "reference" in tools:
        reason = reference_available()
        if reason:
            parser.error(reason)
        ref_label = f"Debian libvirt-daemon {reference_version()} libvirt-guests.sh"

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[Measured] = []
    work = Path(tempfile.mkdtemp(prefix="vg-remote-bench-"))
    daemon = PrivateLibvirtd(caps_cache=cache_dir() / "libvirt-caps")
    sshd = PrivateSshd()
    try:
        daemon.start()
        sshd.start()
        host = Host(daemon, sshd, work, args.guests, args.memory)
        log(f"{args.guests} guests ready on {host.uri}")
        for n in range(args.rounds):
            for tool in tools if n % 2 == 0 else tools[::-1]:
                results += measure_tool(tool, host, work / f"round{n}", args.guests, log)
    finally:
        sshd.stop()
        daemon.stop()
        sshd.cleanup()
        daemon.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(table(results, args.guests, args.rounds, ref_label))
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=2) + "\n")
    return 1 if any(m.problem for m in results) else 0


if __name__ == "__main__":
    sys.exit(main())
