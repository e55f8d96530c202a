"""``journalctl -p warning`` shows virtguests' warnings: the real systemd-journald.

tests/test_journal.py models what journald makes of the ``<N>`` prefixes; here the real
journald (systemd 252 on Debian 12) reads them. It runs in a private mount namespace
(``unshare -m``) with tmpfs over /run and /var/log/journal, so it creates its own sockets
and keeps its journal there, and neither outlives the test. virtguests gets a stream
connection to /run/systemd/journal/stdout as systemd gives a unit (the header of
sd_journal_stream_fd(3), ``JOURNAL_STREAM`` naming the socket): systemd-cat 252 does not
set ``JOURNAL_STREAM``, so it is not used. Root only; where journald is missing the test
skips, and with CI set it fails instead (.ci/install-dist-deps installs systemd).

Run as a script (by the test, inside the namespace) this file is the namespace's side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DEADLINE = 60.0
JOURNALDS = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
STDOUT_SOCKET = "/run/systemd/journal/stdout"
JOURNAL_DIR = "/run/log/journal"
IDENTIFIER = "virtguests"
# written after virtguests exits, on its stream: once journalctl shows it, journald has
# read everything virtguests wrote before it
SENTINEL = "virtguests-test: end of stream"


# -- inside the namespace ----------------------------------------------------------------

def _wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _journal_stream() -> socket.socket:
    """A connection to journald's stdout socket, set up as systemd sets up a unit's
    ``StandardOutput=journal``: identifier, unit, priority, level prefix, forward to
    syslog, kmsg, console."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.connect(STDOUT_SOCKET)
    sock.sendall(f"{IDENTIFIER}\n\n6\n1\n0\n0\n0\n".encode())
    sock.shutdown(socket.SHUT_RD)
    return sock


def _journalctl(priority: str) -> list[str]:
    out = subprocess.run(["journalctl", "-D", JOURNAL_DIR, "-p", priority, "-t", IDENTIFIER,
                          "-o", "cat", "--no-pager"], stdin=subprocess.DEVNULL,
                         capture_output=True, check=True, timeout=DEADLINE).stdout
    return out.decode("utf-8", "replace").splitlines()


def inside(journald: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Start journald, run virtguests on a journal stream, read the journal back."""
    for target in ("/run", "/var/log/journal"):
        if os.path.isdir(target):
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True,
                           timeout=DEADLINE)
    os.makedirs("/run/systemd/journal")
    proc = subprocess.Popen([journald], stdin=subprocess.DEVNULL, stdout=sys.stderr,
                            stderr=sys.stderr, env={**os.environ, "SYSTEMD_LOG_TARGET": "console"})
    try:
        _wait_for(lambda: os.path.exists(STDOUT_SOCKET) or proc.poll() is not None,
                  "journald's stdout socket")
        if proc.poll() is not None:
            raise SystemExit(f"systemd-journald exited with {proc.returncode}")
        with _journal_stream() as stream:
            info = os.fstat(stream.fileno())
            child = subprocess.run(
                [sys.executable, "-m", "virtguests", *argv], stdin=subprocess.DEVNULL,
                stdout=stream.fileno(), stderr=stream.fileno(), timeout=DEADLINE,
                env={**env, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
            stream.sendall(f"<6>{SENTINEL}\n".encode())
        _wait_for(lambda: SENTINEL in _journalctl("info"), "the journal to catch up")
        return {"code": child.returncode, "warning": _journalctl("warning"),
                "info": _journalctl("info")}
    finally:
        proc.terminate()
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(DEADLINE)


# -- the test ----------------------------------------------------------------------------

def _required() -> bool:
    # the rule of tests/test_dist.py
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no")


def _journald() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root (a mount namespace and a private systemd-journald)")
    journald = next((path for path in JOURNALDS if os.access(path, os.X_OK)), None)
    missing = [tool for tool in ("journalctl", "unshare", "mount") if not shutil.which(tool)]
    reason = None
    if journald is None or missing:
        reason = (f"{', '.join(missing) or 'systemd-journald'} is not installed "
                  "(.ci/install-dist-deps installs systemd)")
    else:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                               stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=DEADLINE)
        if probe.returncode != 0:
            reason = ("no private mount namespace here (unshare -m: "
                      f"{probe.stderr.decode('utf-8', 'replace').strip()})")
    if reason is not None:
        if _required():
            pytest.fail(f"{reason}; required in CI", pytrace=False)
        pytest.skip(reason)
    assert journald is not None
    return journald


def test_journalctl_p_warning_shows_the_warnings_and_errors_of_a_real_run(
        tmp_path: Path) -> None:
    from tests.test_journal import CONFIG, HOST, journal_entries, run_as_the_unit
    from virtguests.output import INFO, WARNING
    from virtguests.testing import FakeHost

    journald = _journald()
    hosts = []
    for name in ("journald", "model"):
        (tmp_path / name).mkdir()
        hosts.append(FakeHost(tmp_path / name, HOST, CONFIG))
    real, model = hosts
    request = json.dumps({"journald": journald, "argv": real.argv("stop"), "env": real.env()})
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", sys.executable,
                             __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(request.encode(), timeout=3 * DEADLINE)
    finally:
        # journald is in the helper's process group: nothing of it outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(DEADLINE)
    assert proc.returncode == 0, err.decode("utf-8", "replace")
    result = json.loads(out)
    assert result["code"] == 1
    warning, info = result["warning"], result["info"]
    assert info[-1] == SENTINEL
    info = info[:-1]

    assert "Can't connect to test:///down. Skipping." in warning
    assert [line for line in warning if line.startswith("virtguests: error: ")
            and "cannot list guests on test:///down" in line]
    assert "Running guests on default URI: web, <0>evil" in info
    assert "Suspending <0>evil: done" in info
    assert "Suspending <0>evil: done" not in warning
    assert set(warning) < set(info)
    assert real.managed_saved() == {"web", "<0>evil"}

    # the journal holds what tests/test_journal.py's model of journald makes of the
    # same run: each line, with the priority virtguests gave it
    code, data = run_as_the_unit(model, "stop", journal=True)
    assert code == 1
    entries = [(p, m.replace(str(tmp_path / "model"), str(tmp_path / "journald")))
               for p, m in journal_entries(data)]
    assert warning == [m for p, m in entries if p <= WARNING]
    assert info == [m for p, m in entries if p <= INFO]


if __name__ == "__main__":
    REQUEST = json.load(sys.stdin)
    print(json.dumps(inside(REQUEST["journald"], REQUEST["argv"], REQUEST["env"])))
