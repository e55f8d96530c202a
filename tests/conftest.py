from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from virtguests.testing import FakeHost

# -- the slow marker (registered in setup.cfg): `make test` deselects it and says so ------
_SLOW_LEFT_OUT = pytest.StashKey[int]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.config.stash[_SLOW_LEFT_OUT] = item.config.stash.get(_SLOW_LEFT_OUT, 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    left_out = config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(
            f"{left_out} slow tests left out (real-time fault runs: tests/test_properties.py, "
            f"the soak, ...); run them with `make test-slow`, everything with `make test-all`",
            yellow=True, bold=True)


@pytest.fixture
def fake_host(tmp_path: Path) -> Callable[..., FakeHost]:
    """Build a simulated host: ``fake_host({"uris": {...}}, config="ON_BOOT=start")``."""

    def make(host: dict[str, Any], config: str = "") -> FakeHost:
        return FakeHost(tmp_path, host, config)

    return make
