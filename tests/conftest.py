from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from virtguests.testing import FakeHost


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
