"""Test tooling shipped with virtguests: the public entry points of the fake virsh.

The fake virsh (``virtguests-fake-virsh``, :mod:`virtguests.testing.fakevirsh`) is a
feature for users' CI; the rest serves this project's tests and ``tools/``, which use
only the names in ``__all__``.  Nothing in the product imports this package.

The names are loaded on first use: every fake virsh call imports this package, and
must not pay for the harness (subprocess, YAML, virtguests.cli).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from typing import Any

    from virtguests.testing.clock import FakeClock
    from virtguests.testing.fakevirsh.commandline import split_commands
    from virtguests.testing.fakevirsh.hostfile import LOCK_WAIT
    from virtguests.testing.fakevirsh.main import write_shim
    from virtguests.testing.fakevirsh.state import apply_due_transitions_now
    from virtguests.testing.harness import CliHarness, FakeHost, Run
    from virtguests.testing.inprocess import VirtualClock, run_inprocess
    from virtguests.testing.procs import exited, wait_exited
    from virtguests.testing.recordings import fixtures_dir

__all__ = [
    "LOCK_WAIT",
    "CliHarness",
    "FakeClock",
    "FakeHost",
    "Run",
    "VirtualClock",
    "apply_due_transitions_now",
    "exited",
    "fixtures_dir",
    "run_inprocess",
    "split_commands",
    "wait_exited",
    "write_shim",
]

_HOME = {
    "LOCK_WAIT": "virtguests.testing.fakevirsh.hostfile",
    "CliHarness": "virtguests.testing.harness",
    "FakeClock": "virtguests.testing.clock",
    "FakeHost": "virtguests.testing.harness",
    "Run": "virtguests.testing.harness",
    "VirtualClock": "virtguests.testing.inprocess",
    "apply_due_transitions_now": "virtguests.testing.fakevirsh.state",
    "exited": "virtguests.testing.procs",
    "fixtures_dir": "virtguests.testing.recordings",
    "run_inprocess": "virtguests.testing.inprocess",
    "split_commands": "virtguests.testing.fakevirsh.commandline",
    "wait_exited": "virtguests.testing.procs",
    "write_shim": "virtguests.testing.fakevirsh.main",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
