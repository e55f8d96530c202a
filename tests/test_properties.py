"""stop, then start, on simulated hosts through random fault schedules (hypothesis).

The scenarios, how one is played and the invariant checks are in ``tools/properties.py``
(shared with ``make soak``); here: the CI-size series and the fixed fault classes.

CI size: ``VIRTGUESTS_PROPERTY_EXAMPLES`` examples (default 8) from a fixed seed, no
shrinking, plus each class of issue 10 as a small fixed scenario (:data:`CLASSES`).
Bigger: ``VIRTGUESTS_PROPERTY_EXAMPLES=200``, ``VIRTGUESTS_PROPERTY_SEED=N`` for
another deterministic series, ``VIRTGUESTS_PROPERTY_SHRINK=1`` to shrink a failure;
``make soak`` runs 100 scenarios through ``tools/soak.py --scenarios``, every one to
the end (pytest stops at the first failure).  A scenario printed by a
failure replays with ``python -m tests.test_properties SCENARIO.yaml``, a class of
:data:`CLASSES` with ``python -m tests.test_properties CLASS``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings

from tools.properties import (
    HOSTILE,
    LOCK_WAIT,
    SHORT_LOCK_WAIT,
    URIS,
    Scenario,
    play,
    scenarios,
)

EXAMPLES = int(os.environ.get("VIRTGUESTS_PROPERTY_EXAMPLES", "8"))
SEED = int(os.environ.get("VIRTGUESTS_PROPERTY_SEED", "10"))
SHRINK = os.environ.get("VIRTGUESTS_PROPERTY_SHRINK", "") not in ("", "0")

pytestmark = pytest.mark.slow
"""Real processes on real time (each scenario a few seconds of fake virsh calls and
timeouts); every fault class here also has a deterministic test in the fast suite
(tests/test_faults.py, test_signals.py, test_output.py).  `make test-slow` runs it."""


def assert_invariant(sc: Scenario) -> None:
    with tempfile.TemporaryDirectory(prefix="virtguests-prop-") as tmp:
        problems, transcript = play(sc, Path(tmp))
    assert not problems, "\n".join(problems) + "\n" + transcript


def minimal(*guests: dict[str, Any], faults: tuple[dict[str, Any], ...] = (),
            mode: str = "normal", start_mode: str = "normal", uri: str = "default",
            lock_wait: float = LOCK_WAIT, **config: Any) -> Scenario:
    """A small deterministic scenario: guests ``g#1``, ``g#2``, ... running, persistent."""
    rows = [{"name": f"g#{i}", "state": "running", "persistent": True, "save_seconds": 0.05,
             "shutdown_seconds": 0.1, **g} for i, g in enumerate(guests, 1)]
    base = {"ON_BOOT": "start", "ON_SHUTDOWN": "suspend", "PARALLEL_SHUTDOWN": 0,
            "PARALLEL_SUSPEND": 0, "SHUTDOWN_TIMEOUT": 1, "SAVE_TIMEOUT": 1,
            "QUERY_TIMEOUT": 1, "CONNECT_RETRIES": 0, "RETRIES_SLEEP": 0.1}
    return Scenario({uri: rows}, {**base, **config}, list(faults), mode, "TERM", start_mode,
                    {} if lock_wait == LOCK_WAIT else {uri: lock_wait})


WEDGE = {"cmd": "*", "after": 1, "action": "hang"}
EVERY_POLL_FAILS = {"cmd": "list", "options": ["uuid"], "action": "fail", "error": "internal"}
FIRST_POLL_FAILS = {**EVERY_POLL_FAILS, "nth": 1}
FIRST_POLL_HANGS = {"cmd": "list", "options": ["uuid"], "nth": 1, "action": "hang"}
DEAF = {"ignore_shutdown": True}
CHAIN = "suspend shutdown poweroff"

CLASSES: dict[str, Scenario] = {
    # issue 10 item 1: SIGTERM while the main thread is blocked writing a progress line
    "signal-during-output": minimal({}, mode="signal-during-output"),
    # item 2: `stop >&-` (and as the installed wrapper runs it: python -I, buffered)
    "stdout-closed-at-stop": minimal({}, {}, mode="closed-stdout"),
    # items 2 and 3: `start >&-`; every guest must stay recorded until seen running
    "stdout-closed-at-start": minimal({}, {}, start_mode="closed-stdout"),
    # item 7: a URI that hangs after its listing is given up once, not once per guest
    "wedge-after-listing-serial": minimal({}, {}, {}, faults=(WEDGE,)),
    "wedge-after-listing-parallel": minimal({}, {}, {}, {}, faults=(WEDGE,),
                                            PARALLEL_SUSPEND=2),
    "wedge-after-listing-shutdown": minimal(DEAF, DEAF, faults=(WEDGE,),
                                            ON_SHUTDOWN="shutdown poweroff"),
    # item 8: a failed status poll never abandons a guest (then poweroff runs)
    "failed-poll-serial": minimal(DEAF, faults=(FIRST_POLL_FAILS,),
                                  ON_SHUTDOWN="shutdown poweroff"),
    "failed-polls-parallel": minimal(DEAF, DEAF, faults=(EVERY_POLL_FAILS,),
                                     ON_SHUTDOWN="shutdown poweroff", PARALLEL_SHUTDOWN=2),
    "timed-out-poll": minimal(DEAF, faults=(FIRST_POLL_HANGS,),
                              ON_SHUTDOWN="shutdown poweroff"),
    # item 9: a save still running after SAVE_TIMEOUT must not be destroyed
    "save-outlives-save-timeout": minimal({"save_seconds": 5},
                                          ON_SHUTDOWN="suspend shutdown poweroff"),
    # item 9: another job (a run killed mid-save, another tool, the admin) is saving g#1
    # when stop begins; its save ends while our managedsave waits for the lock (libvirt's
    # 30 s), after a (short) lock wait, or past SAVE_TIMEOUT; or our managedsave times out
    # first, waiting for the lock.  Waited for, never shut down or powered off.  g#2's
    # first managedsave fails with the same busy error although no job holds it.
    "other-save-ends-in-lock-wait": minimal(
        {"saving_seconds": 1.2}, {}, ON_SHUTDOWN=CHAIN, SAVE_TIMEOUT=2,
        faults=({"cmd": "managedsave", "guest": "g#2", "nth": 1, "action": "fail",
                 "error": "qemu-managedsave-busy"},)),
    "other-save-ends-after-lock-wait": minimal(
        {"saving_seconds": 1.9}, ON_SHUTDOWN=CHAIN, SAVE_TIMEOUT=2,
        lock_wait=SHORT_LOCK_WAIT),
    "other-save-outlives-save-timeout": minimal(
        {"saving_seconds": 2.0}, ON_SHUTDOWN=CHAIN, lock_wait=SHORT_LOCK_WAIT),
    # the same at a shutdown request, then before the power-off (the destroy path)
    "other-save-at-shutdown-then-poweroff": minimal(
        {"saving_seconds": 1.6}, ON_SHUTDOWN="shutdown poweroff", SAVE_TIMEOUT=2,
        lock_wait=SHORT_LOCK_WAIT),
    "lock-wait-outlasts-save-timeout": minimal(
        {"saving_seconds": 2.0}, {}, ON_SHUTDOWN=CHAIN),
    # hostile names through a whole chain, a signal at a save, garbage listings
    "hostile-names": Scenario(
        {"default": [{"name": f"{n}#{i}", "state": "running", "persistent": True,
                      "save_seconds": 0.05, "shutdown_seconds": 0.1, "fail_save": i % 2 == 0,
                      "ignore_shutdown": i % 3 == 0} for i, n in enumerate(HOSTILE, 1)]},
        {**minimal().config, "ON_SHUTDOWN": "suspend shutdown poweroff",
         "PARALLEL_SHUTDOWN": 3}),
    "signal-at-a-save": minimal({}, {}, {}, faults=(
        {"cmd": "managedsave", "nth": 2, "action": "signal", "signal": "INT"},)),
    "garbage-listings": Scenario(
        {u: [{"name": f"g#{i}", "state": "running", "persistent": True,
              "save_seconds": 0.05, "shutdown_seconds": 0.1}] for i, u in enumerate(URIS)},
        minimal().config, [
            {"cmd": "list", "uri": u, "nth": 1, "action": "garbage", "output": out}
            for u, out in zip(URIS, ["binary", "truncated", "not-uuid"])]),
}
"""The fault classes of issue 10, each reduced to a small deterministic scenario."""


@pytest.mark.parametrize("name", list(CLASSES))
def test_fault_class(name: str) -> None:
    assert_invariant(CLASSES[name])


@pytest.mark.timeout(max(300, 60 * EXAMPLES))  # VIRTGUESTS_PROPERTY_EXAMPLES=200 too
@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else []),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          print_blob=False)
@given(scenarios())
def test_stop_then_start_keeps_every_guest(sc: Scenario) -> None:
    assert_invariant(sc)


def main(argv: list[str]) -> int:
    """Replay one scenario (a class name, or a YAML file as a failure prints it)."""
    if len(argv) != 1:
        print(f"usage: python -m tests.test_properties {{{'|'.join(CLASSES)}|SCENARIO.yaml}}")
        return 2
    sc = CLASSES.get(argv[0]) or Scenario(**yaml.safe_load(Path(argv[0]).read_text()))
    with tempfile.TemporaryDirectory(prefix="virtguests-prop-") as tmp:
        problems, transcript = play(sc, Path(tmp))
    print(transcript)
    print("\n".join(problems) or "invariant holds")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

