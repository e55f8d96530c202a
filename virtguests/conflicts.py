"""Other things on the host that would act on the same guests at shutdown.

libvirt-guests itself, or libvirt's in-daemon auto-shutdown (qemu.conf
``auto_shutdown_*``, libvirt >= 11.2), would race virtguests for every guest:
one saves while the other shuts down.  We only warn; the admin decides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from virtguests import files

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
UNIT_WANTS_DIRS = (Path("/etc/systemd/system"),)
SYSV_RC_DIRS = tuple(Path(f"/etc/rc{n}.d") for n in "0123456S")
HOST_ROOT = Path("/")

_ACTIVE = re.compile(
    r"^\s*(auto_shutdown_try_save|auto_shutdown_try_shutdown|auto_shutdown_poweroff)"
    r"\s*=\s*\"?([A-Za-z]+)\"?", re.MULTILINE)


def auto_shutdown(qemu_conf: Path = QEMU_CONF) -> list[str]:
    """Enabled ``auto_shutdown_*`` settings in qemu.conf (comments ignored)."""
    return _auto_shutdown(qemu_conf)[0]


def _auto_shutdown(qemu_conf: Path) -> tuple[list[str], str]:
    """The enabled settings, and why qemu.conf could not be read ("" if it could)."""
    try:
        text = files.read(qemu_conf, cap=files.CONFIG_CAP).decode(errors="replace")
    except FileNotFoundError:
        return [], ""
    except files.Unreadable as err:
        return [], str(err)
    return [f"{key} = \"{value}\"" for key, value in _ACTIVE.findall(text)
            if value.lower() not in ("none", "false", "0")], ""


def reference_enabled(wants_dirs: Iterable[Path] = UNIT_WANTS_DIRS,
                      rc_dirs: Iterable[Path] = SYSV_RC_DIRS) -> list[str]:
    """Where libvirt-guests is enabled to run at boot or shutdown."""
    found: list[str] = []
    for base in wants_dirs:
        for wants in sorted(base.glob("*.wants")):
            link = wants / "libvirt-guests.service"
            if os.path.lexists(link):  # a dangling link still means "enabled"
                found.append(str(link))
    for rc in rc_dirs:
        found.extend(str(p) for p in sorted(rc.glob("[SK][0-9]*libvirt-guests")))
    return found


def warnings(qemu_conf: Path = QEMU_CONF,
             wants_dirs: Iterable[Path] = UNIT_WANTS_DIRS,
             rc_dirs: Iterable[Path] = SYSV_RC_DIRS) -> list[str]:
    out = []
    settings, unreadable = _auto_shutdown(qemu_conf)
    if unreadable:
        out.append(f"cannot check {qemu_conf} for libvirt's own auto-shutdown: {unreadable}")
    if settings:
        out.append(f"libvirt's own auto-shutdown is enabled in {qemu_conf} "
                   f"({', '.join(settings)}): it acts on the same guests at host shutdown; "
                   "disable it or virtguests")
    enabled = reference_enabled(wants_dirs, rc_dirs)
    if enabled:
        out.append("libvirt-guests is also enabled (" + ", ".join(enabled) + "): both would "
                   "save or shut down the same guests; disable one of them")
    return out


def on_host(root: Path = HOST_ROOT) -> list[str]:
    """``warnings()`` for the host whose ``/etc`` is under *root*
    (``$VIRTGUESTS_HOST_ROOT``: a chroot, or a test's empty directory)."""

    def under(path: Path) -> Path:
        return root / path.relative_to("/")

    return warnings(under(QEMU_CONF), [under(p) for p in UNIT_WANTS_DIRS],
                    [under(p) for p in SYSV_RC_DIRS])
