"""Run the virtguests CLI as a subprocess against a PrivateLibvirtd (real virsh on PATH).

Mirrors ``virtguests/testing/harness.py``: virtguests runs exactly as a service manager
would start it (``python -m virtguests --config CONF --state-dir DIR COMMAND``),
only here ``virsh`` is the real one and the URIs point at the private daemon.

``VIRTGUESTS_COMMAND=/usr/bin/virtguests`` runs an installed virtguests instead (the
Debian package in CI, with the distribution's Python, sh and PyYAML): the same tests
then drive the installed command, not the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from tools.realhost.libvirtd import PrivateLibvirtd
from virtguests.testing import CliHarness, Run

__all__ = ["UNREACHABLE_URI", "Run", "VirtGuestsCli", "installed_command"]

# A URI where nothing listens: virsh fails at once ("Failed to connect socket").
UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/sock"


def installed_command() -> Optional[str]:
    """``$VIRTGUESTS_COMMAND``: an installed virtguests to test, or None (the source)."""
    command = os.environ.get("VIRTGUESTS_COMMAND", "")
    if not command:
        return None
    if not os.path.isabs(command) or not os.access(command, os.X_OK):
        raise RuntimeError(f"VIRTGUESTS_COMMAND={command!r}: not an executable absolute path")
    return command


class VirtGuestsCli(CliHarness):
    """virtguests with the real virsh, configured for the private libvirtd."""

    def __init__(self, root: Path, daemon: PrivateLibvirtd, config: str = "") -> None:
        super().__init__(root, config)
        self.daemon = daemon

    def command(self) -> list[str]:
        installed = installed_command()
        return [installed] if installed else super().command()

    def env(self) -> dict[str, str]:
        env = super().env()
        if installed_command():
            # the installed command imports its own package, not the source tree
            del env["PYTHONPATH"]
        return env

    def config(self, *, uris: Optional[list[str]] = None, **values: object) -> None:
        """Write a config: ``URIS`` (default: the qemu URI) plus ``KEY=VALUE`` lines."""
        uris = uris if uris is not None else [self.daemon.qemu_uri]
        lines = [f'URIS="{" ".join(uris)}"']
        lines += [f'{key}="{value}"' for key, value in values.items()]
        self.set_config("\n".join(lines) + "\n")
