from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from virtguests.testing import FakeHost

# -- hypothesis profiles, chosen by HYPOTHESIS_PROFILE (tests/sizes.py scales the tests
# that ask for more examples). ci: today's sizes, with hypothesis' own CI settings
# (derandomized, no deadline, no example database): make test-all, .ci/run. fast: the
# same with a quarter of the examples: make test. Unset: ci.
settings.register_profile("ci", derandomize=True, deadline=None, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fast", settings.get_profile("ci"), max_examples=25)
# Never hypothesis' default per-example deadline (200 ms of wall clock: a timed
# assertion that fails under load).
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")

# -- the slow marker (registered in setup.cfg): `make test` deselects it and says so ------
_SLOW_LEFT_OUT = pytest.StashKey[int]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Counts only what ``-m "not slow"`` left out (not a ``-k`` selection)."""
    for item in items:
        if "not slow" in (item.config.option.markexpr or "") \
                and item.get_closest_marker("slow") is not None:
            item.config.stash[_SLOW_LEFT_OUT] = item.config.stash.get(_SLOW_LEFT_OUT, 0) + 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist the workers collect: each tells the controller its count."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["slow_left_out"] = session.config.stash.get(_SLOW_LEFT_OUT, 0)


# The modules that start the most processes (child CPU seconds in a serial run, see
# doc/testing-speed.md), heaviest first. They are collected first, so pytest-xdist's
# loadscope hands them out first and the short in-process modules fill in at the
# end: both workers finish at about the same time. Order only; every test runs.
_HEAVY_FIRST = ("test_fakevirsh.py", "test_output.py", "test_dist.py", "test_signals.py",
                "test_faults.py", "test_service.py", "test_inprocess.py", "test_soak.py",
                "test_executor.py", "test_cli.py", "test_wait.py", "test_policy.py",
                "test_inputs_service.py", "test_journal.py", "test_release.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def weight(item: pytest.Item) -> int:
        name = item.path.name
        return _HEAVY_FIRST.index(name) if name in _HEAVY_FIRST else len(_HEAVY_FIRST)

    items.sort(key=weight)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """The controller's side (every worker collected the same tests)."""
    count = int(getattr(node, "workeroutput", {}).get("slow_left_out", 0))
    config = node.config
    config.stash[_SLOW_LEFT_OUT] = max(config.stash.get(_SLOW_LEFT_OUT, 0), count)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    left_out = config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(
            f"{left_out} slow tests left out (real-time runs: tests/realhost/, "
            f"tests/test_properties.py, the soak); run them with `make test-slow`, "
            f"everything with `make test-all`", yellow=True, bold=True)


@pytest.fixture
def fake_host(tmp_path: Path) -> Callable[..., FakeHost]:
    """Build a simulated host: ``fake_host({"uris": {...}}, config="ON_BOOT=start")``."""

    def make(host: dict[str, Any], config: str = "") -> FakeHost:
        return FakeHost(tmp_path, host, config)

    return make


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regenerate", action="store_true", default=False,
                     help="rewrite the golden files (tests/transcripts/) instead of comparing")


@pytest.fixture
def regenerate(request: pytest.FixtureRequest) -> bool:
    """Whether golden files are rewritten (``--regenerate``) rather than compared."""
    return bool(request.config.getoption("--regenerate"))
