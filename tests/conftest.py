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
