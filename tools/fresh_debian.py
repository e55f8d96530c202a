#!/usr/bin/env python3
"""A fresh Debian 12 machine that gets virtguests only from its .deb (issue 12).

``tools/fresh_debian.py --deb build/virtguests_V_all.deb [--cache DIR] [--test-k EXPR]``,
as root (``make fresh-debian-check``):

1. debootstraps a minimal Debian 12 (bookworm, ``--variant=minbase``) once into
   ``CACHE/bookworm-minbase`` (reused while it exists; delete it for a newer one);
2. copies it to ``CACHE/root``, a new machine for every run, copies the .deb to its
   ``/srv`` and there runs ``apt-get update`` and ``apt-get install -y
   --no-install-recommends ./virtguests_V_all.deb``: Debian's python3, python3-sh,
   python3-yaml and libvirt-clients come from the mirror, nothing from this tree;
3. writes ``CACHE/virtguests-in-chroot``, an executable that runs the chroot's
   ``/usr/bin/virtguests`` with the host's ``/tmp`` at the same path (where the
   real-host tests keep config, state and the private libvirtd's socket, so the
   chroot's own virsh talks to that libvirtd), and prints ``--version``, ``check`` and
   ``status`` through it;
4. with ``--test-k``, runs ``tests/realhost/test_e2e.py -k EXPR`` with
   ``VIRTGUESTS_COMMAND`` set to that executable.

Every mount (``/proc``, ``/dev``, ``/sys``, ``/tmp``; debootstrap's own) is made in a
private mount namespace (``unshare -m --propagation private``): it ends with the
process, whatever happens, and the host never sees it. The host's /usr, /etc and apt
state are not touched. The chroot gets a ``policy-rc.d`` that refuses every service
start: it shares the host's processes and network, and is no booted machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TESTS = (
    "test_suspend_saves_persistent_guests_and_start_restores_them"
    " or test_start_after_our_stop_lists_nothing"
    " or test_serial_shutdown_waits_for_each_guest"
    " or test_status_and_gueststatus"
)
"""stop (suspend, shutdown), start (resume, refusals), status and gueststatus."""

STEP_TIMEOUT = 1800.0
"""How long one step may take (debootstrap or apt-get on a slow mirror, the tests)
before its whole process group is killed: a stalled mirror fails CI, never hangs it."""
QUICK_TIMEOUT = 120.0
"""For a quick command (umount, dpkg-query)."""
POLICY_RC_D = "#!/bin/sh\n# tools/fresh_debian.py: a chroot starts no service\nexit 101\n"

WRAPPER = """#!/bin/sh
# virtguests of a Debian 12 chroot, $1 of sh -c below (tools/fresh_debian.py):
# its /usr/bin/virtguests with its own Python, sh, PyYAML and virsh, the host's /tmp at
# /tmp. The mounts live in a private mount namespace that ends with virtguests (exec
# all the way: signals sent to this process reach virtguests).
exec unshare -m --propagation private -- /bin/sh -c '
    root=$1; shift
    mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" &&
        mount --rbind /tmp "$root/tmp" &&
        exec chroot "$root" /usr/bin/env PATH={path} /usr/bin/virtguests "$@"' sh {root_q} "$@"
"""


class FreshDebianError(Exception):
    """A step failed; the message says which."""


def run(argv: Sequence[str], *, env: Optional[dict[str, str]] = None,
        cwd: Optional[Path] = None, timeout: float = STEP_TIMEOUT) -> None:
    """Runs *argv* (echoed) in its own process group, failing with its exit status; past
    *timeout*, or when this script is interrupted, the whole group is killed."""
    print("+", shlex.join(argv), flush=True)
    proc = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise FreshDebianError(f"{argv[0]} did not finish within {timeout:.0f} s and was "
                                   f"killed: {shlex.join(argv)}") from None
        raise
    if code != 0:
        raise FreshDebianError(f"{argv[0]} exited {code}: {shlex.join(argv)}")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or under *path* in this process's mount namespace."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf *path*, refused while anything is mounted under it (rm would descend)."""
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        raise FreshDebianError(f"{path}: still mounted, not removed: {', '.join(mounted)}")
    shutil.rmtree(path)


def in_namespace(argv: Sequence[str]) -> list[str]:
    """*argv* in a new private mount namespace: its mounts end with it."""
    return ["unshare", "-m", "--propagation", "private", "--", *argv]


def debootstrap(base: Path, mirror: str) -> None:
    """The minimal bookworm in *base*, made in *base*.new and renamed when complete."""
    partial = base.with_name(base.name + ".new")
    remove_tree(partial)
    run(in_namespace(["debootstrap", "--variant=minbase", SUITE, str(partial), mirror]))
    policy = partial / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    partial.rename(base)


@contextlib.contextmanager
def mounted(root: Path, *, host_tmp: bool) -> Iterator[None]:
    """/proc, /sys, /dev (and the host's /tmp) in *root*; unmounted on the way out."""
    done: list[Path] = []
    try:
        run(["mount", "-t", "proc", "proc", str(root / "proc")])
        done.append(root / "proc")
        for source in ("/sys", "/dev", *(["/tmp"] if host_tmp else [])):
            target = root / source.lstrip("/")
            run(["mount", "--rbind", source, str(target)])
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["umount", "-R", str(target)], check=False,
                               timeout=QUICK_TIMEOUT)


def chroot_env(extra: dict[str, str]) -> dict[str, str]:
    """A root login's environment on the fresh machine, plus *extra*."""
    return {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **extra}


def inside(root: Path, commands: list[list[str]], host_tmp: bool) -> None:
    """(In the namespace) runs each command in the chroot, in order, mounts around them."""
    with mounted(root, host_tmp=host_tmp):
        for argv in commands:
            run(["chroot", str(root), *argv],
                env=chroot_env({"DEBIAN_FRONTEND": "noninteractive"}))


def in_chroot(root: Path, commands: list[list[str]], *, host_tmp: bool = False) -> None:
    """Runs *commands* in *root* from this script, re-run in a private mount namespace."""
    specs = [arg for argv in commands for arg in ("--command", shlex.join(argv))]
    run(in_namespace([sys.executable, "-I", __file__, "--inside", str(root),
                      *(["--host-tmp"] if host_tmp else []), *specs]))


def install(root: Path, deb: Path) -> None:
    """Only what an admin types: apt-get update, apt-get install ./the.deb."""
    shutil.copy2(deb, root / "srv" / deb.name)
    (root / "srv" / deb.name).chmod(0o644)
    in_chroot(root, [
        ["apt-get", "update", "-q"],
        ["sh", "-c", "cd /srv && exec apt-get install -y -q --no-install-recommends "
                     + shlex.quote("./" + deb.name)],
    ])


def write_wrapper(root: Path, wrapper: Path) -> None:
    """The VIRTGUESTS_COMMAND for the real-host tests."""
    wrapper.write_text(WRAPPER.format(root_q=shlex.quote(str(root)), path=CHROOT_PATH))
    wrapper.chmod(0o755)


def smoke(wrapper: Path) -> None:
    """--version, check and status from the chroot (no config: the defaults)."""
    for args, ok in ((["--version"], {0}), (["check"], {0}), (["status"], {0, 3}),
                     (["--json", "check"], {0})):
        print("+", wrapper.name, shlex.join(args), flush=True)
        proc = subprocess.run([str(wrapper), *args], text=True, capture_output=True,
                              timeout=120, check=False, env=chroot_env({}))
        sys.stdout.write(proc.stdout + proc.stderr)
        print(f"  (exit {proc.returncode})", flush=True)
        if proc.returncode not in ok:
            raise FreshDebianError(f"virtguests {shlex.join(args)} exited {proc.returncode}")


def packages(root: Path) -> str:
    """The versions that the fresh machine runs virtguests on."""
    names = ["virtguests", "python3", "python3-sh", "python3-yaml", "libvirt-clients"]
    proc = subprocess.run(["chroot", str(root), "dpkg-query", "-W", *names],
                          capture_output=True, text=True, check=False, env=chroot_env({}),
                          timeout=QUICK_TIMEOUT)
    return proc.stdout.strip().replace("\n", ", ")


def run_tests(wrapper: Path, expr: str, pytest_args: Sequence[str]) -> None:
    """The real-host end-to-end tests through the chroot's virtguests."""
    env = {**os.environ, "CI": "true", "VIRTGUESTS_COMMAND": str(wrapper)}
    run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/realhost/test_e2e.py", "-k", expr, *pytest_args], cwd=REPO, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", type=Path, help="the virtguests_*.deb to install")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "virtguests-fresh-debian",
                        help="where the debootstrapped base is kept (default: %(default)s)")
    parser.add_argument("--mirror", default=MIRROR, help="Debian mirror (%(default)s)")
    parser.add_argument("--test-k", metavar="EXPR", nargs="?", const=DEFAULT_TESTS,
                        help="then run tests/realhost/test_e2e.py -k EXPR through it "
                             "(without EXPR: stop, start and status tests)")
    parser.add_argument("--pytest-args", default="", help="more pytest options")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--host-tmp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--command", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.inside:
            inside(args.inside, [shlex.split(c) for c in args.command], args.host_tmp)
            return 0
        if args.deb is None or not args.deb.is_file():
            parser.error("--deb: a built virtguests_*.deb is needed (make deb)")
        if os.geteuid() != 0:
            parser.error("run as root (debootstrap, chroot, mount namespaces)")
        sbin = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        missing = [c for c in ("debootstrap", "unshare", "chroot")
                   if shutil.which(c, path=sbin) is None]
        if missing:
            parser.error(f"{', '.join(missing)} missing: run .ci/install-fresh-deps")
        return fresh_machine(args)
    except (FreshDebianError, OSError, subprocess.SubprocessError) as exc:
        print(f"fresh_debian: {exc}", file=sys.stderr)
        return 1


def fresh_machine(args: argparse.Namespace) -> int:
    """Steps 1 to 4, each timed."""
    cache: Path = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    base, root = cache / f"{SUITE}-minbase", cache / "root"
    wrapper = cache / "virtguests-in-chroot"
    timings: list[tuple[str, float]] = []

    def step(name: str, began: float) -> None:
        timings.append((name, time.monotonic() - began))

    began = time.monotonic()
    if base.is_dir():
        print(f"debootstrap: cached in {base}", flush=True)
    else:
        debootstrap(base, args.mirror)
        step("debootstrap (minbase)", began)
    began = time.monotonic()
    remove_tree(root)
    run(["cp", "-a", "--reflink=auto", str(base), str(root)])
    step("copy of the base", began)
    began = time.monotonic()
    install(root, args.deb.resolve())
    step("apt-get update + install", began)
    print("fresh machine runs:", packages(root), flush=True)
    write_wrapper(root, wrapper)
    began = time.monotonic()
    smoke(wrapper)
    step("--version, check, status", began)
    try:
        if args.test_k:
            began = time.monotonic()
            run_tests(wrapper, args.test_k, shlex.split(args.pytest_args))
            step("real-host tests", began)
    finally:
        leftover = mounts_under(cache)
        for name, seconds in timings:
            print(f"{name:<28} {seconds:7.1f} s")
        print(f"VIRTGUESTS_COMMAND={wrapper}")
        if leftover:
            print(f"fresh_debian: mounts left under {cache}: {leftover}", file=sys.stderr)
    return 1 if leftover else 0


if __name__ == "__main__":
    sys.exit(main())
