"""Run the virtguests CLI as a subprocess against a PrivateLibvirtd (real virsh on PATH).

Mirrors ``virtguests/testing/harness.py``: virtguests runs exactly as a service manager
would start it (``python -m virtguests --config CONF --state-dir DIR COMMAND``),
only here ``virsh`` is the real one and the URIs point at the private daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tools.realhost.libvirtd import PrivateLibvirtd
from virtguests.testing import CliHarness, Run

__all__ = ["UNREACHABLE_URI", "Run", "VirtGuestsCli"]

# A URI where nothing listens: virsh fails at once ("Failed to connect socket").
UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/sock"


class VirtGuestsCli(CliHarness):
    """virtguests with the real virsh, configured for the private libvirtd."""

    def __init__(self, root: Path, daemon: PrivateLibvirtd, config: str = "") -> None:
        super().__init__(root, config)
        self.daemon = daemon

    def config(self, *, uris: Optional[list[str]] = None, **values: object) -> None:
        """Write a config: ``URIS`` (default: the qemu URI) plus ``KEY=VALUE`` lines."""
        uris = uris if uris is not None else [self.daemon.qemu_uri]
        lines = [f'URIS="{" ".join(uris)}"']
        lines += [f'{key}="{value}"' for key, value in values.items()]
        self.set_config("\n".join(lines) + "\n")
