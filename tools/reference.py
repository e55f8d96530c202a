"""Run the real ``libvirt-guests.sh`` against the same simulated host as virtguests.

The reference script is Debian's, taken from the ``libvirt-daemon`` package at
test time (it is LGPL; nothing of it is kept in this repository):
:func:`fetch_reference` runs ``apt-get download`` + ``dpkg -x`` once and caches
the result under ``$VIRTGUESTS_CACHE/reference/`` (default
``~/.cache/virtguests/reference/``).

:func:`run_reference` runs the script unmodified.  Its fixed paths are
redirected inside a private mount namespace (``unshare -m --propagation
private``; nothing is visible outside it, nothing on the real host changes):

=================================  ==========================================
the script uses                    lands in
=================================  ==========================================
``/etc/default/libvirt-guests``    a file holding ``config_text``
``/var/lib/libvirt/libvirt-guests``  ``host.state_dir/libvirt-guests``: the
                                   list file virtguests uses with
                                   ``--state-dir``, so each tool reads what
                                   the other wrote
``/var/lock/libvirt-guests``       a private lock directory, mirrored to
                                   virtguests' ``host.state_dir/
                                   libvirt-guests.started`` (see below)
``virsh``                          ``host.bin/virsh``, the fake, first on PATH
=================================  ==========================================

How: for each of ``/etc/default``, ``/var/lib`` and ``/run/lock`` (the target
of the ``/var/lock`` symlink), a temporary "shadow" directory is bind-mounted
over it.  The shadow holds the entry we redirect (``libvirt-guests`` as a
file, ``libvirt`` as a symlink to ``host.state_dir``) plus a symlink for every
other original entry, pointing into a (recursive) bind mount of the original, so
the rest of the system still looks the same to the script.  This works
whether or not ``/var/lib/libvirt`` exists on the machine.

The started marker: virtguests keeps it next to the list file
(``state_dir/libvirt-guests.started``), the reference in the lock directory
under the same name as the list file, so the two cannot share one directory.
Before the run the marker is copied into the private lock directory when
virtguests' marker exists; after the run virtguests' marker is created or
deleted to match what the reference left.  "Marker exists" therefore means the
same thing for both tools, before and after every run, and the two can be
mixed freely on one host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from virtguests.testing import CliHarness, Run

PACKAGE = "libvirt-daemon"
SCRIPT_NAME = "libvirt-guests.sh"
MARKER = "libvirt-guests.started"  # virtguests' marker name inside --state-dir

# Inside the namespace: bind the originals to stash points, then the shadows over
# the originals.  Arguments: N, then N triples (original stash shadow), then the
# command to run.
_MOUNT_SCRIPT = r"""
set -eu
n=$1; shift
while [ "$n" -gt 0 ]; do
    mount --rbind "$1" "$2" && mount --bind "$3" "$1" || {
        echo "mount-shadows: cannot shadow $1" >&2; exit 125; }
    shift 3; n=$((n - 1))
done
exec "$@"
"""


class ReferenceUnavailable(RuntimeError):
    """The reference script cannot run on this machine (the message says why)."""


def cache_dir() -> Path:
    root = os.environ.get("VIRTGUESTS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "virtguests"
    return base / "reference"


def _run_apt(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600, check=False)


def fetch_reference() -> Path:
    """Download and unpack Debian's libvirt-daemon once; return libvirt-guests.sh."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    done = cache / "tree"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test processes fetch once
        if not done.is_dir():
            _download_and_extract(cache, done)
    found = sorted(done.rglob(SCRIPT_NAME))
    if not found:
        raise ReferenceUnavailable(f"{SCRIPT_NAME} not found in {done} ({PACKAGE} package)")
    return found[0]


def _download_and_extract(cache: Path, done: Path) -> None:
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ReferenceUnavailable(f"{tool} not found: cannot fetch the reference "
                                       f"{SCRIPT_NAME} (Debian's {PACKAGE} package)")
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=cache))
    try:
        # apt downloads as the _apt user when it can: let it write there.
        with contextlib.suppress(OSError):
            os.chmod(work, 0o777)
        proc = _run_apt(["apt-get", "download", PACKAGE], work)
        if proc.returncode != 0:
            update = _run_apt(["apt-get", "update"], work)
            proc = _run_apt(["apt-get", "download", PACKAGE], work)
            if proc.returncode != 0:
                raise ReferenceUnavailable(
                    f"apt-get download {PACKAGE} failed (after apt-get update, exit "
                    f"{update.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}")
        debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise ReferenceUnavailable(f"apt-get download {PACKAGE} produced no .deb")
        tree = work / "tree"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(tree)], check=True,
                       capture_output=True, timeout=300)
        version = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        (tree / "VERSION").write_text(version + "\n")
        os.rename(tree, done)  # atomic: a half-extracted tree is never used
    finally:
        shutil.rmtree(work, ignore_errors=True)


def reference_version() -> str:
    """The Debian version of the package the script came from, e.g. ``9.0.0-4+deb12u2``."""
    fetch_reference()
    return (cache_dir() / "tree" / "VERSION").read_text().strip()


def _check_namespace() -> None:
    if os.geteuid() != 0:
        raise ReferenceUnavailable("not root: the reference runs in a private mount "
                                   "namespace (unshare -m) with bind mounts")
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            raise ReferenceUnavailable(f"{tool} not found (util-linux / mount)")
    with tempfile.TemporaryDirectory(prefix="virtguests-unshare-") as probe:
        proc = subprocess.run(["unshare", "-m", "--propagation", "private",
                               "mount", "--bind", probe, probe],
                              capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise ReferenceUnavailable("cannot create a mount namespace here: "
                                   + proc.stderr.strip())


def _check_script_deps() -> None:
    for path in ("/usr/bin/gettext.sh", "/lib/lsb/init-functions"):
        if not os.path.exists(path):
            raise ReferenceUnavailable(f"{path} is missing (needed by the reference script; "
                                       "see .ci/install-reference-deps)")
    for tool in ("envsubst", "gettext", "awk", "sed", "grep", "sleep"):
        if shutil.which(tool) is None:
            raise ReferenceUnavailable(f"{tool} not found (needed by the reference script; "
                                       "see .ci/install-reference-deps)")


_AVAILABLE: Optional[tuple[Optional[str]]] = None


def reference_available() -> Optional[str]:
    """None when the reference can run here, else why not (computed once)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            _check_namespace()
            _check_script_deps()
            fetch_reference()
            _AVAILABLE = (None,)
        except (ReferenceUnavailable, OSError, subprocess.SubprocessError) as err:
            _AVAILABLE = (f"reference {SCRIPT_NAME} unavailable: {err}",)
    return _AVAILABLE[0]


def _shadow(work: Path, original: str, label: str, entries: dict[str, Path]) -> list[str]:
    """Prepare a shadow of ``original``; return its (original, stash, shadow) triple.

    ``entries`` maps a name to create in the shadow to its symlink target, or
    to a path inside the shadow tree (a real file or directory we made).
    """
    real = os.path.realpath(original)
    stash = work / f"{label}.orig"
    shadow = work / label
    stash.mkdir()
    shadow.mkdir(exist_ok=True)
    os.chmod(shadow, os.stat(real).st_mode & 0o7777)
    for name in os.listdir(real):
        if name not in entries and not (shadow / name).exists():
            (shadow / name).symlink_to(stash / name)
    for name, target in entries.items():
        if target.parent != shadow:
            (shadow / name).symlink_to(target)
    return [real, str(stash), str(shadow)]


def _marker_path(script: Path) -> str:
    """Where the script keeps its started marker, relative to /var (``lock/...``)."""
    text = script.read_text(errors="replace")
    match = re.search(r'^VAR_SUBSYS_LIBVIRT_GUESTS="\$localstatedir"/(\S+)\s*$', text, re.M)
    return match.group(1) if match else "lock/libvirt-guests"


def run_reference(command: Union[str, Sequence[str]], *, host: CliHarness, config_text: str,
                  timeout: float = 120) -> Run:
    """Run ``libvirt-guests.sh COMMAND`` on ``host``'s simulated libvirt (see module doc),
    or on real libvirt: a plain CliHarness leaves the real virsh on PATH
    (``tools/remote_bench.py``).

    ``command`` is one argument, or a sequence for the whole argument list
    (``[]`` or two commands, for the usage errors).
    """
    args = [command] if isinstance(command, str) else list(command)
    reason = reference_available()
    if reason is not None:
        raise ReferenceUnavailable(reason)
    script = fetch_reference()
    work = Path(tempfile.mkdtemp(prefix="reference-", dir=host.root))
    try:
        etc = work / "etc-default"
        etc.mkdir()
        (etc / "libvirt-guests").write_text(config_text)
        marker_rel = _marker_path(script)  # e.g. lock/libvirt-guests or lock/subsys/...
        if not marker_rel.startswith("lock/"):
            raise ReferenceUnavailable(f"unexpected marker path /var/{marker_rel}")
        lock = work / "lock"
        marker_dir = lock.joinpath(*Path(marker_rel).parts[1:-1])
        marker_dir.mkdir(parents=True)
        ref_marker = marker_dir / Path(marker_rel).name
        our_marker = host.state_dir / MARKER
        if our_marker.exists():
            ref_marker.touch()
        top = Path(marker_rel).parts[1] if len(Path(marker_rel).parts) > 2 else None
        triples = [
            *_shadow(work, "/etc/default", "etc-default",
                     {"libvirt-guests": etc / "libvirt-guests"}),
            *_shadow(work, "/var/lib", "var-lib", {"libvirt": host.state_dir}),
            *_shadow(work, "/var/lock", "lock",
                     {top: lock / top} if top else {ref_marker.name: ref_marker}),
        ]
        env = host.env()
        env.pop("LANGUAGE", None)
        env.update(LC_ALL="C.UTF-8", SYSTEMCTL_SKIP_REDIRECT="1")
        argv = ["unshare", "-m", "--propagation", "private",
                "sh", "-c", _MOUNT_SCRIPT, "mount-shadows", str(len(triples) // 3),
                *triples, "sh", str(script), *args]
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started for it
            proc.communicate()
            raise
        if proc.returncode == 125 and "mount-shadows:" in err:
            raise ReferenceUnavailable(f"mounting the shadows failed: {err.strip()}")
        if ref_marker.exists():
            our_marker.touch()
        elif our_marker.exists():
            our_marker.unlink()
        return Run(proc.returncode, out, err)
    finally:
        shutil.rmtree(work, ignore_errors=True)
