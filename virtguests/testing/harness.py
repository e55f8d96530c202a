"""A simulated libvirt host for end-to-end tests, benchmarks and soaks: the fake virsh
on PATH.

virtguests runs as a real subprocess and talks to ``virtguests-fake-virsh``
installed as ``virsh`` on PATH: the same code paths as production.  For a run
in this process on a virtual clock, see :mod:`virtguests.testing.inprocess`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import yaml

from virtguests import virshout
from virtguests.testing.fakevirsh.commandline import VirshCall, split_commands
from virtguests.testing.fakevirsh.errors import Unsupported
from virtguests.testing.fakevirsh.main import _log as log_call
from virtguests.testing.fakevirsh.main import answer, write_shim
from virtguests.testing.fakevirsh.process import CallerProcess
from virtguests.testing.fakevirsh.state import HostClock, apply_due_transitions_now
from virtguests.testing.recordings import SOURCE_TREE

ASK_TIMEOUT = 30.0
"""How long ``FakeHost.virsh`` lets a question take (the fake's time) before it fails."""


class _AskingClock(HostClock):
    """The host's clock for a question asked in-process: a call that would hang, or
    wait past *timeout* (the fake's time), raises TimeoutExpired at once (as a process
    would be killed then; in-process nothing else could move a virtual clock
    meanwhile)."""

    def __init__(self, argv: list[str], environ: Mapping[str, str],
                 timeout: float = ASK_TIMEOUT) -> None:
        super().__init__(environ)
        self.argv = argv
        self.timeout = timeout
        self.deadline = self.now() + timeout

    def wait_until(self, moment: float) -> None:
        if moment > self.deadline or (self.path is not None and moment > self.now()):
            raise subprocess.TimeoutExpired(self.argv, self.timeout)
        super().wait_until(moment)

    def nap(self, moment: float) -> None:
        self.wait_until(moment)  # nothing else runs meanwhile: waiting is all there is

    def hang(self) -> NoReturn:
        raise subprocess.TimeoutExpired(self.argv, self.timeout)


class _AskingProcess(CallerProcess):
    """A question's process, seen in this one: forked when it was asked; its parent
    would be this (the test's) process, so a ``signal`` fault is refused."""

    def __init__(self, environ: Mapping[str, str], started: float) -> None:
        super().__init__(environ)
        self.started = started

    def signal_parent(self, name: str) -> None:
        raise Unsupported(f"a 'signal' fault (SIG{name}) would signal the test process: "
                          "run the fake as a process")

    def spawned(self) -> float:
        return self.started


def ask(virsh: Path, args: Sequence[str], env: Mapping[str, str],
        timeout: float = ASK_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """The fake *virsh* called with *args* and *env*, answered in this process by the
    fake's own entry points (``VirshCall``, ``answer``) as its process would answer:
    exit status, the bytes it writes, its line in ``VIRTGUESTS_FAKE_LOG``.

    A call that would hang, or wait for virtual time to pass (or *timeout* seconds),
    raises TimeoutExpired at once and logs nothing, as a process killed at its timeout
    does. ``event`` runs the fake as a process.
    """
    argv = [str(virsh), *args]
    start = time.time()
    try:
        call = VirshCall(list(args), _AskingProcess(env, start))
        if call.command == "event" and not call.version:
            return subprocess.run(argv, env=env, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        status, out, err = answer(call, env, _AskingClock(argv, env, timeout))
    except Unsupported as exc:
        status, out, err = 2, "", f"fakevirsh: {exc}\n"
    except SystemExit as exc:
        status, out, err = exc.code if isinstance(exc.code, int) else 1, "", ""
    log_call(list(args), start, status, environ=env)
    return subprocess.CompletedProcess(argv, status, _written(out), _written(err))


def _written(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Run:
    """One finished virtguests run: exit status, output, and how long it took."""

    code: int
    out: str
    err: str
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def __str__(self) -> str:
        return (f"exit {self.code} after {self.seconds:.2f}s\n--- stdout ---\n{self.out}"
                f"--- stderr ---\n{self.err}")


class CliHarness:
    """A config file and a state dir under *root*; ``run(COMMAND)`` starts virtguests.

    Shared by the simulated host (below) and the real-libvirt tests.
    """

    def __init__(self, root: Path, config: str = "") -> None:
        self.root = root
        self.state_dir = root / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_file = root / "libvirt-guests"
        self.host_root = root / "host-root"
        """The host's ``/`` for the conflict checks: empty unless a test writes
        ``etc/libvirt/qemu.conf`` or unit links there; this machine's never show."""
        self.set_config(config)

    def set_config(self, text: str) -> None:
        self.config_file.write_text(text)

    @property
    def list_file(self) -> Path:
        return self.state_dir / "libvirt-guests"

    @property
    def pending_file(self) -> Path:
        return self.state_dir / "virtguests-pending"

    @property
    def marker(self) -> Path:
        return self.state_dir / "libvirt-guests.started"

    def env(self) -> dict[str, str]:
        """The caller's environment, minus anything that would redirect virtguests."""
        env = dict(os.environ)
        env["PYTHONPATH"] = SOURCE_TREE
        for key in ("VIRSH", "VIRTGUESTS_CONFIG", "VIRTGUESTS_STATE_DIR",
                    "LIBVIRT_DEFAULT_URI", "VIRSH_DEFAULT_CONNECT_URI"):
            env.pop(key, None)
        env["VIRTGUESTS_HOST_ROOT"] = str(self.host_root)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["--config", str(self.config_file), "--state-dir", str(self.state_dir), *args]

    def command(self) -> list[str]:
        """How virtguests is started: this interpreter on the source tree (env())."""
        return [sys.executable, "-m", "virtguests"]

    def run(self, *args: str, timeout: float = 180) -> Run:
        """virtguests as a separate process, exactly as systemd would start it."""
        began = time.monotonic()
        proc = subprocess.run(
            [*self.command(), *self.argv(*args)],
            env=self.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - began)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """virtguests in the background, for tests that signal or race it."""
        return subprocess.Popen(
            [*self.command(), *self.argv(*args)], env=self.env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_shared_pycache: Optional[Path] = None


def shared_pycache() -> Path:
    """One byte-code directory for every FakeHost's shim in this process (made on first
    use, private, removed at exit): the fake compiles once per test session, not once
    per host (compiling costs a call about six times what running it does)."""
    global _shared_pycache
    if _shared_pycache is None:
        path = Path(tempfile.mkdtemp(prefix="virtguests-fake-pycache-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _shared_pycache = path
    return _shared_pycache


class FakeHost(CliHarness):
    """A CliHarness whose ``virsh`` is the fake, playing the host described by *host*
    (the mapping the host YAML holds)."""

    def __init__(self, root: Path, host: dict[str, Any], config: str = "") -> None:
        super().__init__(root, config)
        self.bin = root / "bin"
        self.host_file = root / "host.yaml"
        self.log_file = root / "virsh-calls.jsonl"
        self.now_file: Optional[Path] = None
        write_shim(self.bin, shared_pycache())
        self.set_host(host)

    def set_host(self, host: dict[str, Any]) -> None:
        """Describe the host; the fake rebuilds its state when the YAML changes."""
        self.host_file.write_text(yaml.safe_dump(host))

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            VIRTGUESTS_FAKE_HOST=str(self.host_file),
            VIRTGUESTS_FAKE_LOG=str(self.log_file),
        )
        if self.now_file is not None:
            env["VIRTGUESTS_FAKE_NOW_FILE"] = str(self.now_file)
        return env

    def calls(self) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def commands(self) -> list[list[str]]:
        """The argv of every virsh call, without the leading -c URI."""
        out = []
        for call in self.calls():
            argv = list(call["argv"])
            if argv[:1] in (["-c"], ["--connect"]):
                argv = argv[2:]
            out.append(argv)
        return out

    def verbs(self) -> list[str]:
        """The virsh command of every call, each command of a command string counted."""
        return [command[0] for argv in self.commands()
                for command in (split_commands(argv[0]) if len(argv) == 1 else [argv])]

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Ask the simulated host directly (not logged as virtguests' work).

        Answered by the fake's own code in this process (a process per question cost
        most of the time of tests that look at the host), as the process would
        answer: a call that would hang or wait 30 s raises TimeoutExpired at once.
        ``event`` runs the fake as a process.
        """
        env = self.env()
        env.pop("VIRTGUESTS_FAKE_LOG")
        env.pop("VIRTGUESTS_FAKE_JOURNAL", None)
        env["VIRTGUESTS_FAKE_FAULTS"] = "off"  # asking is not a call the faults count
        raw = ask(self.bin / "virsh", args, env)
        # As a process's bytes are read back: strict UTF-8, no newline translation (text=True
        # would turn a \r in a guest's name into a line break)
        return subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(),
                                           raw.stderr.decode())

    def active(self, uri: str = "default") -> set[str]:
        args = ["list", "--name"] if uri == "default" else ["-c", uri, "list", "--name"]
        return {name for name in virshout.lines(self.virsh(*args).stdout) if name}

    def managed_saved(self, uri: str = "default") -> set[str]:
        args = ["list", "--all", "--name", "--with-managed-save"]
        if uri != "default":
            args = ["-c", uri, *args]
        return {name for name in virshout.lines(self.virsh(*args).stdout) if name}

    def uuid(self, name: str, uri: str = "default") -> str:
        args = ["domuuid", name] if uri == "default" else ["-c", uri, "domuuid", name]
        return self.virsh(*args).stdout.strip()

    def guests_now(self) -> dict[str, list[dict[str, Any]]]:
        """The fake's guests per URI key, with every transition due by now (the virtual
        clock's, after ``run_inprocess``) applied."""
        now = None
        if self.now_file is not None and self.now_file.exists():
            now = float(self.now_file.read_text())
        return apply_due_transitions_now(str(self.host_file), now=now)

    @property
    def holders_file(self) -> Path:
        return self.root / "holders.pids"

    def holding_virsh(self, *, own_session: bool = True, seconds: int = 600) -> Path:
        """A virsh for ``--virsh`` that leaves a child holding its stdout and stderr
        open for *seconds* after it exits, then runs the fake: as ssh's
        ``ControlPersist`` master does (*own_session*: ``setsid``, so a timeout's kill
        of virsh's session does not reach it) or a wrapper that daemonises without
        one.  Each holder's pid is appended to ``holders_file``;
        ``release_holders()`` ends them."""
        path = self.root / "holding" / "virsh"
        path.parent.mkdir(exist_ok=True)
        holder = f"{'setsid ' if own_session else ''}sleep {int(seconds)}"
        path.write_text(f"#!/bin/sh\n{holder} &\necho $! >> {shlex.quote(str(self.holders_file))}"
                        f"\nexec {shlex.quote(str(self.bin / 'virsh'))} \"$@\"\n")
        path.chmod(0o755)
        return path

    def holders(self) -> list[int]:
        """The pids of the holders ``holding_virsh`` started so far."""
        if not self.holders_file.exists():
            return []
        return [int(pid) for pid in self.holders_file.read_text().split()]

    def release_holders(self) -> None:
        """End every holder (by its recorded pid)."""
        for pid in self.holders():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
