"""`make soak` in CI size, and the soak's findings reduced to deterministic cases.

tools/soak.py runs random stop / power cycle / start cycles with injected faults
on the fake host and checks that no guest is lost (see its docstring).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from virtguests.testing import FakeHost

REPO = Path(__file__).resolve().parent.parent

Make = Callable[..., FakeHost]


@pytest.mark.slow  # a minute or more of real processes and real timeouts: `make test-slow`
@pytest.mark.timeout(660)  # past the soak's own 600 s deadline
def test_tiny_soak_loses_no_guest() -> None:
    # seed 35: URIs hung, down and flaky at stop and start, failed/hung/slow saves,
    # shutdowns and starts, SIGKILL of stop and of start; and from the fault layer: a
    # SIGTERM while stop is blocked writing to a full stdout, stdout closed at stop and
    # at start, a URI wedged after its listing, a failed status poll; saves by another
    # job in progress at stop (one past SAVE_TIMEOUT on a URI that is down, cut by the
    # power cut; one ending in the lock wait, saved and resumed)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "soak.py"), "--cycles", "3",
                           "--seed", "35"], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("soak: 3 cycles, seed 35")
    assert sum(1 for ln in lines if ln.startswith("cycle ")) == 3
    cycles = "\n".join(ln for ln in lines if ln.startswith("cycle "))
    for kind in ("out=full+TERM", "out=closed", "=wedge", "=pollfail", "=saving:"):
        assert kind in cycles, kind
    assert "(another job's: 1 saved, 0 cut)" in cycles
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines[-1] == "3 cycles, 0 guests lost"


def test_sigterm_during_connect_retries_still_protects_the_reachable_uri(
        fake_host: Make) -> None:
    host = fake_host({"uris": {
        "default": {"guests": [{"name": "web"}, {"name": "db"}]},
        "test:///flaky": {"unreachable_calls": 5, "guests": [{"name": "far"}]}}},
        'URIS="default test:///flaky"\nCONNECT_RETRIES=5\nRETRIES_SLEEP=1\n')
    proc = host.spawn("stop")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the flaky URI failed once: now in its retry sleep
        if any(c["argv"][:2] == ["-c", "test:///flaky"] for c in host.calls()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in err, err
    assert host.list_file.exists(), err  # the README: the list file is written
    assert "stop interrupted by a signal" in err


def test_second_outage_of_a_uri_still_names_its_guests(fake_host: Make) -> None:
    def host_doc(down: bool, far_state: str = "running") -> dict[str, object]:
        return {"uris": {"default": {"guests": [{"name": "web"}]},
                         "test:///far": {"unreachable": down, "guests": [
                             {"name": "far1", "state": far_state},
                             {"name": "far2", "state": far_state}]}}}

    host = fake_host(host_doc(False), 'URIS="default test:///far"\nCONNECT_RETRIES=0\n')
    assert host.run("stop").code == 0  # virtguests sees far1 and far2 running
    assert host.run("start").code == 0
    host.set_host(host_doc(True))
    first = host.run("stop")
    assert "not protected; last seen running there: " in first.err
    assert "far1" in first.err and "far2" in first.err
    # recorded too, so the start after the power cycle brings them back
    recorded = dict(line.split(" ", 1) for line in host.list_file.read_text().splitlines())
    assert len(recorded["test:///far"].split()) == 2
    host.set_host(host_doc(False, "shutoff"))  # power cycle: far1, far2 were never saved
    assert host.run("start").code == 0
    assert host.active("test:///far") == {"far1", "far2"}
    host.set_host(host_doc(True, "running"))  # the URI fails again
    second = host.run("stop")
    assert second.code == 1
    assert "far1" in second.err and "far2" in second.err, second.err
