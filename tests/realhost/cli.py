"""Run the virtguests CLI as a subprocess against a PrivateLibvirtd (real virsh on PATH).

Mirrors ``tests/fakehost.py``: virtguests runs exactly as a service manager
would start it (``python -m virtguests --config CONF --state-dir DIR COMMAND``),
only here ``virsh`` is the real one and the URIs point at the private daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .libvirtd import PrivateLibvirtd

REPO = Path(__file__).resolve().parent.parent.parent

# A URI where nothing listens: virsh fails at once ("Failed to connect socket").
UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/sock"


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def __str__(self) -> str:
        return (f"exit {self.code} after {self.seconds:.2f}s\n--- stdout ---\n{self.out}"
                f"--- stderr ---\n{self.err}")


class VirtGuestsCli:
    """A config file and a state dir in ``root``; ``run(COMMAND)`` starts virtguests."""

    def __init__(self, root: Path, daemon: PrivateLibvirtd, config: str = "") -> None:
        self.root = root
        self.daemon = daemon
        self.state_dir = root / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_file = root / "libvirt-guests"
        self.set_config(config)

    def set_config(self, text: str) -> None:
        self.config_file.write_text(text)

    def config(self, *, uris: Optional[list[str]] = None, **values: object) -> None:
        """Write a config: ``URIS`` (default: the qemu URI) plus ``KEY=VALUE`` lines."""
        uris = uris if uris is not None else [self.daemon.qemu_uri]
        lines = [f'URIS="{" ".join(uris)}"']
        lines += [f'{key}="{value}"' for key, value in values.items()]
        self.set_config("\n".join(lines) + "\n")

    @property
    def list_file(self) -> Path:
        return self.state_dir / "libvirt-guests"

    @property
    def pending_file(self) -> Path:
        return self.state_dir / "virtguests-pending"

    @property
    def marker(self) -> Path:
        return self.state_dir / "libvirt-guests.started"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for key in ("VIRSH", "VIRTGUESTS_CONFIG", "VIRTGUESTS_STATE_DIR",
                    "LIBVIRT_DEFAULT_URI", "VIRSH_DEFAULT_CONNECT_URI"):
            env.pop(key, None)
        return env

    def run(self, *args: str, timeout: float = 180) -> Run:
        argv = [sys.executable, "-m", "virtguests", "--config", str(self.config_file),
                "--state-dir", str(self.state_dir), *args]
        began = time.monotonic()
        proc = subprocess.run(argv, env=self.env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)
        return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - began)
