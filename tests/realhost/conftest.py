"""Fixtures for end-to-end tests against a private libvirtd with real tiny guests.

Locally the tests skip (with instructions) when the host cannot run them; in CI
(``CI`` set) or with ``VIRTGUESTS_REQUIRE_REALHOST=1`` they fail instead, so a
broken CI setup can never turn into a silently green run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, NoReturn, Optional

import pytest

from tools.realhost.guestimage import (
    GuestImage,
    GuestImageError,
    build_guest_image,
    cache_dir,
    domain_xml,
)
from tools.realhost.libvirtd import Guest, LibvirtdError, PrivateLibvirtd
from tools.realhost.sshd import PrivateSshd, SshdError

HERE = Path(__file__).resolve().parent
ENABLE_HINT = "run `sudo .ci/install-realhost-deps` and the tests as root"

REALHOST_TIMEOUT = 1200
"""Seconds before pytest-timeout fails a real-host test (setup.cfg's default is 300):
the first one builds the guest image, and each boots QEMU guests under TCG and waits
up to 120 s per virsh step."""

# Timings measured by tests (name -> seconds), printed in the terminal summary.
TIMINGS: dict[str, list[float]] = {}
# Counts measured by tests (name -> e.g. ssh connections), printed after the timings.
COUNTS: dict[str, list[int]] = {}

DefineGuest = Callable[..., Guest]


def record_timing(name: str, seconds: float) -> None:
    """Remember a measured duration for the end-of-run summary."""
    TIMINGS.setdefault(name, []).append(seconds)


def record_count(name: str, count: int) -> None:
    """Remember a measured count (ssh connections of a run) for the end-of-run summary."""
    COUNTS.setdefault(name, []).append(count)


def realhost_required() -> bool:
    """CI must never silently skip the real-host tests."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get(
        "VIRTGUESTS_REQUIRE_REALHOST"
    ) == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip locally, fail loudly in CI."""
    if realhost_required():
        pytest.fail(
            f"real-host tests cannot run: {reason} (CI/VIRTGUESTS_REQUIRE_REALHOST set, "
            f"so this is a failure, not a skip; {ENABLE_HINT})",
            pytrace=False,
        )
    pytest.skip(f"real-host tests need: {reason}; to enable: {ENABLE_HINT}")


def _which(cmd: str) -> Optional[str]:
    """shutil.which that also looks in sbin dirs (often not in a user's PATH)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(cmd, path=path)


def missing_requirements() -> list[str]:
    """What this host lacks to run the real-host tests (empty list: all good)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (mount namespaces, libvirtd)")
    for cmd in ("libvirtd", "virsh", "qemu-system-x86_64", "unshare", "mount"):
        if not _which(cmd):
            missing.append(f"`{cmd}` command")
    if not missing:
        try:
            res = subprocess.run(
                ["unshare", "-m", "--propagation", "private", "true"],
                capture_output=True, text=True, timeout=30, check=False,
            )
            if res.returncode != 0:
                missing.append(f"mount namespaces (unshare -m failed: {res.stderr.strip()})")
        except (OSError, subprocess.TimeoutExpired) as exc:
            missing.append(f"mount namespaces ({exc})")
    return missing


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "realhost: end-to-end test against a private libvirtd with real QEMU guests"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory ``realhost`` and ``slow`` (real QEMU guests on
    real time: ``make test`` leaves them out, ``make test-slow``/``test-all`` run them;
    select with -m), with its own timeout.  First, so ``-m`` sees the marks."""
    here: dict[Path, bool] = {}  # per file: resolving each item's path cost 4 s a run
    for item in items:
        if item.path not in here:
            here[item.path] = HERE in item.path.resolve().parents
        if here[item.path]:
            item.add_marker(pytest.mark.realhost)
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.timeout(REALHOST_TIMEOUT))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTS:
        terminalreporter.section("realhost counts")
        for name, counts in COUNTS.items():
            terminalreporter.write_line(f"{name:<40} {', '.join(map(str, counts))}")
    if not TIMINGS:
        return
    terminalreporter.section("realhost timings (seconds)")
    command = os.environ.get("VIRTGUESTS_COMMAND")
    terminalreporter.write_line(f"virtguests under test: {command or 'python -m virtguests'}")
    for name, values in TIMINGS.items():
        vals = ", ".join(f"{v:.2f}" for v in values)
        terminalreporter.write_line(f"{name:<28} {vals}")


@pytest.fixture(scope="session")
def realhost_ready() -> None:
    """Skip (or fail in CI) once per session if the host cannot run these tests."""
    missing = missing_requirements()
    if missing:
        unavailable(", ".join(missing))


@pytest.fixture(scope="session")
def guest_image(realhost_ready: None) -> GuestImage:
    """Kernel + initramfs, built once and cached (see guestimage.cache_dir())."""
    start = time.monotonic()
    try:
        image = build_guest_image()
    except GuestImageError as exc:
        unavailable(f"a guest image (build failed: {exc})")
    record_timing("guest image (build/cache)", time.monotonic() - start)
    return image


@contextlib.contextmanager
def private_libvirtd(label: str) -> Iterator[PrivateLibvirtd]:
    """A started private libvirtd, stopped (no leftovers, even if SIGSTOPped) on exit."""
    daemon = PrivateLibvirtd(caps_cache=cache_dir() / "libvirt-caps")
    start = time.monotonic()
    try:
        daemon.start()
    except (LibvirtdError, OSError, subprocess.SubprocessError) as exc:
        # Not a skip: the host has everything, so a failing daemon is a real problem.
        pytest.fail(f"private {label} did not start: {exc}", pytrace=False)
    record_timing(label + " start", time.monotonic() - start)
    try:
        yield daemon
    finally:
        if daemon.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGCONT)
        daemon.stop()
        if os.environ.get("VIRTGUESTS_REALHOST_KEEP") != "1":
            daemon.cleanup()


@pytest.fixture
def sshd(realhost_ready: None) -> Iterator[PrivateSshd]:
    """A private sshd on 127.0.0.1 for this test (one a test may stop and restart):
    ``sshd.qemu_uri(daemon)`` reaches a private libvirtd as a remote host."""
    missing = [cmd for cmd in ("sshd", "ssh", "ssh-keygen", "nc") if not _which(cmd)]
    if missing:
        unavailable(f"{', '.join(missing)} (openssh-server, netcat-openbsd)")
    daemon = PrivateSshd()
    start = time.monotonic()
    try:
        daemon.start()
    except (SshdError, OSError, subprocess.SubprocessError) as exc:
        daemon.cleanup()
        pytest.fail(f"private sshd did not start: {exc}", pytrace=False)
    record_timing("sshd start", time.monotonic() - start)
    try:
        yield daemon
    finally:
        daemon.stop()
        if os.environ.get("VIRTGUESTS_REALHOST_KEEP") != "1":
            daemon.cleanup()


@pytest.fixture(scope="session")
def libvirtd(realhost_ready: None) -> Iterator[PrivateLibvirtd]:
    """A started private libvirtd for the whole session."""
    with private_libvirtd("libvirtd") as daemon:
        yield daemon


@pytest.fixture
def peer_libvirtd(realhost_ready: None) -> Iterator[PrivateLibvirtd]:
    """A second private libvirtd for this test only (a test may kill it): another host
    to libvirt (its own host UUID) with its own incoming-migration ports, so guests of
    ``libvirtd`` migrate to it and back (``PrivateLibvirtd.migrate``)."""
    with private_libvirtd("peer libvirtd") as daemon:
        yield daemon


@pytest.fixture
def define_guest(
    libvirtd: PrivateLibvirtd, guest_image: GuestImage, tmp_path: Path
) -> Iterator[DefineGuest]:
    """Factory: ``define_guest(name, delay=0, ignore=False, persistent=True, start=True)``.

    Defines (persistent) or creates (transient) a guest on ``libvirtd.qemu_uri``
    and, if started, waits for ``vg: ready`` on its console.  Every guest is
    destroyed and undefined (with its managed save image) after the test.
    """
    guests: list[Guest] = []

    def make(
        name: str,
        delay: int = 0,
        ignore: bool = False,
        persistent: bool = True,
        start: bool = True,
        uuid: Optional[str] = None,
    ) -> Guest:
        if not persistent and not start:
            raise ValueError("a transient guest only exists while running: start=True")
        console = tmp_path / f"{name}.console.log"
        xml_path = tmp_path / f"{name}.xml"
        xml_path.write_text(
            domain_xml(name, image=guest_image, console_log=console, delay=delay,
                       ignore=ignore, uuid=uuid)
        )
        guest = Guest(libvirtd, name, console, persistent)
        guests.append(guest)
        began = time.monotonic()
        if persistent:
            libvirtd.virsh("define", str(xml_path))
            if start:
                guest.virsh("start", timeout=120)
        else:
            libvirtd.virsh("create", str(xml_path), timeout=120)
        if start:
            guest.wait_console("vg: ready")
            record_timing("boot to 'vg: ready'", time.monotonic() - began)
        return guest

    yield make
    for guest in reversed(guests):
        guest.remove()
