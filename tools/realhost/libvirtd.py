"""A private libvirtd for end-to-end tests, isolated from any libvirtd on the host.

Why: the tests start, save and shut down real guests; doing that against the
machine's own libvirtd would touch real VMs.  The private daemon runs in its
own mount namespace with tmpfs over libvirt's state directories and a temp
config dir bound over /etc/libvirt, and listens on a socket in a temp dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

# State directories hidden behind a per-daemon tmpfs.
_TMPFS_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt")
# Where QEMU capabilities are cached inside the namespace (see ``caps_cache``).
_CAPS_CACHE = "/var/cache/libvirt/qemu/capabilities"
# Directories libvirtd (Debian build) expects to exist below the tmpfs mounts.
_STATE_SUBDIRS = (
    "/var/lib/libvirt/qemu/save",
    "/var/lib/libvirt/qemu/snapshot",
    "/var/lib/libvirt/qemu/dump",
    "/var/lib/libvirt/qemu/checkpoint",
    "/var/lib/libvirt/qemu/nvram",
    "/var/lib/libvirt/qemu/ram",
    "/var/lib/libvirt/images",
    "/var/lib/libvirt/boot",
    "/var/cache/libvirt/qemu",
    "/var/log/libvirt/qemu",
)
QEMU_USER = "libvirt-qemu"

# Incoming-migration ports: each daemon takes its own block of MIGRATION_BLOCK ports,
# above Linux's default ephemeral range (32768-60999) so no outgoing connection sits
# on one; a block is held by an flock on a file under MIGRATION_LOCKS for the daemon's
# life, so daemons of concurrent test runs on one machine never share a port.
MIGRATION_PORTS = (61000, 65535)
MIGRATION_BLOCK = 16
MIGRATION_LOCKS = Path("/tmp/vg-libvirtd-migration-ports")

# Runs libvirtd as its child and reaps every orphan below it.  Why: QEMU
# daemonizes, so it is reparented to the nearest subreaper or PID 1; libvirt
# waits for a killed QEMU to vanish, and under a lazy PID 1 (containers,
# micro-VMs) the zombie lingers ~1.5 s per guest stop.
_REAPER = r"""
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = os.fork()
if child == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
def forward(sig, frame):
    try:
        os.kill(child, sig)
    except ProcessLookupError:
        pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
code = 0
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
        break
sys.exit(code if code >= 0 else 128 - code)
"""


def migration_host() -> Optional[str]:
    """What a daemon tells a migration's source to connect to, if not its host name.

    libvirt sends the destination's host name (QEMU listens on every address); that
    works when the name resolves here, as on most machines.  If it does not, a local
    non-loopback address (``hostname -I``): libvirt refuses a loopback
    ``migration_host``.  None: the host name will do (or nothing else would).
    """
    import socket

    try:
        socket.getaddrinfo(socket.gethostname(), None)
        return None
    except OSError:
        pass
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10,
                             check=False).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return next((addr for addr in out if "." in addr and not addr.startswith("127.")), None)


class LibvirtdError(RuntimeError):
    """The private libvirtd could not be started (message includes its log tail)."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def ensure_qemu_user() -> None:
    """Create the libvirt-qemu system user if missing.

    Why: the Debian qemu driver resolves its built-in default user/group
    (libvirt-qemu) before reading qemu.conf and fails to load without it; the
    user is normally created by libvirt-daemon-system's postinst, which we do
    not require.
    """
    try:
        pwd.getpwnam(QEMU_USER)
        return
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd", "--system", "--user-group", "--no-create-home",
            "--home-dir", "/var/lib/libvirt", "--shell", "/usr/sbin/nologin", QEMU_USER,
        ],
        check=True,
        timeout=60,
        stdout=subprocess.DEVNULL,
    )


class PrivateLibvirtd:
    """Run a throwaway libvirtd; use as a context manager or call start()/stop().

    ``qemu_uri`` and ``test_uri`` point at its socket.  Nothing of the host's
    libvirt state (sockets, /etc/libvirt, /var/lib/libvirt, ...) is used.
    """

    def __init__(
        self,
        workdir: Optional[Path] = None,
        start_timeout: float = 30.0,
        caps_cache: Optional[Path] = None,
        host_uuid: Optional[str] = None,
    ) -> None:
        """``caps_cache``: optional persistent host dir for libvirt's QEMU capabilities.

        Why: probing QEMU takes ~8 s on the first qemu-URI call of every fresh
        daemon; libvirt revalidates the cache itself (QEMU/libvirtd binary
        ctimes, kernel version, ...), so sharing it between runs is safe.

        ``host_uuid``: the UUID the daemon reports as its host's (``virsh
        capabilities``); a fresh random one by default, so two daemons on this
        machine are two hosts to libvirt (it refuses to migrate a guest to the
        same host), or the same string for two daemons to test that refusal.
        Without it libvirt takes the SMBIOS UUID, the same for every daemon here.
        """
        # Short path: unix socket paths are limited to 107 bytes and libvirt
        # appends names such as libvirt-admin-sock.
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vg-libvirtd-", dir="/tmp"))
        self.start_timeout = start_timeout
        self.confdir = self.workdir / "etc"
        self.sockdir = self.workdir / "sock"
        self.logdir = self.workdir / "log"
        self.log_path = self.workdir / "libvirtd.log"
        self.stderr_path = self.workdir / "libvirtd.stderr"
        self.pid_path = self.workdir / "libvirtd.pid"
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._event_proc: Optional[subprocess.Popen[bytes]] = None
        self._stderr_f: Optional[object] = None
        self.caps_cache = Path(caps_cache) if caps_cache else None
        self.host_uuid = host_uuid or str(uuidlib.uuid4())
        self._ports_lock: Optional[int] = None
        self.migration_ports: Optional[tuple[int, int]] = None

    # -- URIs -------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.sockdir / "libvirt-sock"

    @property
    def qemu_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def test_uri(self) -> str:
        return f"test+unix:///default?socket={self.socket}"

    @property
    def pid(self) -> Optional[int]:
        """PID of libvirtd itself (its parent is our reaper), or None if not running."""
        if not self._proc or self._proc.poll() is not None:
            return None
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def virsh(
        self, *args: str, uri: Optional[str] = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``virsh -c URI ARGS`` (qemu URI by default) and capture its output."""
        argv = ["virsh", "-q", "-c", uri or self.qemu_uri, *args]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, argv, proc.stdout, proc.stderr
            )
        return proc

    def migrate(
        self, domain: str, peer: PrivateLibvirtd, *options: str, timeout: float = 300,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``virsh -c THIS migrate OPTIONS DOMAIN PEER_URI`` (default options: live,
        persistent on the peer, undefined here: what MIGRATE_OPTIONS defaults to)."""
        return self.virsh(
            "migrate", *(options or ("--live", "--persistent", "--undefinesource")), domain,
            peer.qemu_uri, timeout=timeout, check=check)

    def ns_path(self, path: str) -> Path:
        """Host path of a file inside the daemon's mount namespace (e.g. under /run/libvirt)."""
        if not self._proc:
            raise LibvirtdError("libvirtd is not running")
        return Path(f"/proc/{self._proc.pid}/root") / path.lstrip("/")

    def qemu_log(self, domain: str) -> str:
        """QEMU's per-domain log (stdio_handler=file), for failure messages."""
        return _tail(self.logdir / "qemu" / f"{domain}.log", 60)

    # -- lifecycle ----------------------------------------------------------

    def _reserve_migration_ports(self) -> tuple[int, int]:
        """Hold a free block of incoming-migration ports (see MIGRATION_PORTS)."""
        if self.migration_ports is not None:
            return self.migration_ports
        MIGRATION_LOCKS.mkdir(mode=0o700, exist_ok=True)
        low, high = MIGRATION_PORTS
        for first in range(low, high - MIGRATION_BLOCK + 2, MIGRATION_BLOCK):
            fd = os.open(MIGRATION_LOCKS / f"{first}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._ports_lock = fd
            self.migration_ports = (first, first + MIGRATION_BLOCK - 1)
            return self.migration_ports
        raise LibvirtdError(f"no free block of migration ports in {low}-{high}")

    def _release_migration_ports(self) -> None:
        if self._ports_lock is not None:
            os.close(self._ports_lock)
            self._ports_lock = None
            self.migration_ports = None

    def _write_config(self) -> None:
        for d in (self.confdir, self.sockdir, self.logdir, self.confdir / "qemu"):
            d.mkdir(parents=True, exist_ok=True)
        port_min, port_max = self._reserve_migration_ports()
        (self.confdir / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.sockdir}"\n'
            'unix_sock_group = "root"\n'
            'unix_sock_ro_perms = "0777"\n'
            'unix_sock_rw_perms = "0770"\n'
            'auth_unix_ro = "none"\n'
            'auth_unix_rw = "none"\n'
            'listen_tls = 0\n'
            'listen_tcp = 0\n'
            'log_level = 3\n'
            f'log_outputs = "3:file:{self.log_path}"\n'
            f'host_uuid = "{self.host_uuid}"\n'
        )
        (self.confdir / "qemu.conf").write_text(
            'user = "root"\n'
            'group = "root"\n'
            'dynamic_ownership = 0\n'
            'remember_owner = 0\n'
            'security_driver = "none"\n'
            'stdio_handler = "file"\n'
            'cgroup_controllers = [ ]\n'
            'namespaces = [ ]\n'
            # incoming migrations (a peer daemon on this machine): this daemon's own
            # ports; libvirt refuses a loopback migration_host/migration_address
            f'migration_port_min = {port_min}\n'
            f'migration_port_max = {port_max}\n'
            + (f'migration_host = "{host}"\n' if (host := migration_host()) else "")
        )
        # libvirt.conf for clients run inside the namespace (none expected).
        (self.confdir / "libvirt.conf").write_text("")

    def _script(self) -> str:
        q = shlex.quote
        lines = ["set -e"]
        for d in _TMPFS_DIRS:
            lines.append(f"mount -t tmpfs -o mode=0755 vg-libvirtd {q(d)}")
        lines.append(f"mount --bind {q(str(self.logdir))} /var/log/libvirt")
        if self.caps_cache:
            lines.append(f"mkdir -p {q(_CAPS_CACHE)}")
            lines.append(f"mount --bind {q(str(self.caps_cache))} {q(_CAPS_CACHE)}")
        lines.append(f"mount --bind {q(str(self.confdir))} /etc/libvirt")
        lines.append("mkdir -p " + " ".join(q(d) for d in _STATE_SUBDIRS))
        lines.append(
            f"exec {q(sys.executable)} -c {q(_REAPER)}"
            f" libvirtd -f /etc/libvirt/libvirtd.conf -p {q(str(self.pid_path))}"
        )
        return "\n".join(lines)

    def start(self) -> PrivateLibvirtd:
        """Start libvirtd and wait until the qemu URI answers (bounded by start_timeout)."""
        if self._proc:
            return self
        ensure_qemu_user()
        self._write_config()
        # Mount points must exist on the host file system; empty dirs are harmless
        # (the libvirt packages normally create them) and are never removed, since
        # other namespaces may be using them.
        for d in (*_TMPFS_DIRS, "/var/log/libvirt", "/etc/libvirt"):
            os.makedirs(d, exist_ok=True)
        if self.caps_cache:
            self.caps_cache.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("LIBVIRT_DEFAULT_URI", None)
        stderr_f = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self._stderr_f = stderr_f
        self._proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", self._script()],
            stdin=subprocess.DEVNULL,
            stdout=stderr_f,
            stderr=stderr_f,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_ready()
            self._start_event_loop()
        except BaseException:
            self.stop()
            raise
        return self

    def _failure(self, why: str) -> LibvirtdError:
        return LibvirtdError(
            f"private libvirtd {why}\n--- {self.stderr_path} ---\n{_tail(self.stderr_path)}"
            f"\n--- {self.log_path} ---\n{_tail(self.log_path)}"
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise self._failure(f"exited with status {self._proc.returncode}")
            if self.socket.exists():
                try:
                    res = self.virsh("uri", timeout=10, check=False)
                    if res.returncode == 0:
                        return
                    last = res.stderr.strip()
                except subprocess.TimeoutExpired:
                    last = "virsh uri timed out"
            if time.monotonic() > deadline:
                raise self._failure(
                    f"did not answer within {self.start_timeout:.0f}s (last: {last})"
                )
            time.sleep(0.1)

    def _start_event_loop(self) -> None:
        """Hold a test-driver connection open: its state only lives while one is open."""
        self._event_proc = subprocess.Popen(
            ["virsh", "-c", self.test_uri, "event", "--all", "--loop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._event_proc.poll() is not None:
                raise self._failure("test-driver event loop (virsh event) exited")
            try:
                res = self.virsh("list", "--all", "--name", uri=self.test_uri,
                                 timeout=10, check=False)
            except subprocess.TimeoutExpired:
                continue
            if res.returncode == 0:
                return
            time.sleep(0.1)
        raise self._failure("test driver did not answer")

    def _qemu_pids(self) -> list[int]:
        """PIDs of QEMU processes this daemon started (from its private pid files)."""
        pids: list[int] = []
        if not self._proc:
            return pids
        pattern = str(self.ns_path("/run/libvirt/qemu")) + "/*.pid"
        for f in glob.glob(pattern):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(Path(f).read_text().strip()))
        return pids

    def qemu_pid(self, name: str) -> int:
        """PID of the QEMU process running domain ``name`` (from libvirt's pid file)."""
        return int(self.ns_path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())

    def domain_status(self, name: str) -> Optional[tuple[str, str]]:
        """(state, reason) from libvirt's status XML of a running domain, e.g. ("paused", "save").

        Why: reading a file is instant, unlike a virsh call, so a test can act within
        the few milliseconds a state lasts; None when the domain is not running.
        """
        try:
            text = self.ns_path(f"/run/libvirt/qemu/{name}.xml").read_text()
        except OSError:
            return None
        match = re.search(r"<domstatus state='([^']*)' reason='([^']*)'", text)
        return (match.group(1), match.group(2)) if match else None

    def destroy_all(self) -> None:
        """Destroy every running domain and undefine persistent ones (best effort)."""
        try:
            res = self.virsh("list", "--all", "--name", timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return
        for name in res.stdout.split():
            try:
                self.virsh("destroy", name, timeout=30, check=False)
                self.virsh("undefine", "--managed-save", "--nvram", name,
                           timeout=30, check=False)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        """Destroy domains, stop libvirtd and the event loop; leave no processes."""
        if self._event_proc:
            _kill(self._event_proc)
            self._event_proc = None
        if self._proc:
            qemu_pids: list[int] = []
            if self._proc.poll() is None:
                self.destroy_all()
                qemu_pids = self._qemu_pids()
            _kill(self._proc, signal.SIGTERM, grace=10)
            for pid in qemu_pids:
                _kill_pid(pid)
            self._proc = None
        if self._stderr_f is not None:
            self._stderr_f.close()  # type: ignore[attr-defined]
            self._stderr_f = None
        self._release_migration_ports()

    def cleanup(self) -> None:
        """Remove the work dir (only if we created it)."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateLibvirtd:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


def _kill(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 5) -> None:
    """Signal a child we started, escalating to SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def _outcome(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """(exit, stdout, stderr) of a held virsh call let go, killed if not done in time."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate(timeout=10)
    return proc.returncode, out, err


def _kill_pid(pid: int, grace: float = 5) -> None:
    """Kill a non-child pid (a leftover QEMU) and wait for it to vanish."""
    if not kill_and_wait(pid, signal.SIGTERM, grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_and_wait(pid: int, sig: int, timeout: float) -> bool:
    """Send *sig* to a non-child *pid*; whether it vanished within *timeout* seconds."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class Guest:
    """A domain on a PrivateLibvirtd plus its serial console log, with polling helpers."""

    def __init__(self, daemon: PrivateLibvirtd, name: str, console_log: Path,
                 persistent: bool) -> None:
        self.daemon = daemon
        self.name = name
        self.console_log = console_log
        self.persistent = persistent

    def virsh(self, *args: str, timeout: float = 60,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        """``virsh CMD NAME ARGS...`` on the qemu URI."""
        return self.daemon.virsh(args[0], self.name, *args[1:], timeout=timeout, check=check)

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def state(self) -> str:
        """``virsh domstate --reason``, e.g. ``running (restored)`` or ``shut off (saved)``."""
        res = self.virsh("domstate", "--reason", check=False, timeout=30)
        return res.stdout.strip() if res.returncode == 0 else f"<error: {res.stderr.strip()}>"

    def describe(self) -> str:
        """Everything useful for a failure message."""
        return (f"domain {self.name}: {self.state()}\n--- console ---\n{self.console()}"
                f"\n--- qemu log ---\n{self.daemon.qemu_log(self.name)}")

    def wait_console(self, text: str, occurrence: int = 1, timeout: float = 60) -> float:
        """Wait for the ``occurrence``-th ``text`` on the console; return seconds waited."""
        start = time.monotonic()
        while self.console().count(text) < occurrence:
            if time.monotonic() - start > timeout:
                raise TimeoutError(
                    f"{text!r} (#{occurrence}) not on console after {timeout}s\n"
                    + self.describe()
                )
            time.sleep(0.05)
        return time.monotonic() - start

    def wait_state(self, prefix: str, timeout: float = 60) -> float:
        """Wait until domstate starts with ``prefix`` (e.g. ``shut off``); return seconds waited."""
        start = time.monotonic()
        while not self.state().startswith(prefix):
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"state {prefix!r} not reached after {timeout}s\n"
                                   + self.describe())
            time.sleep(0.05)
        return time.monotonic() - start

    def remove(self) -> None:
        """Destroy and undefine (with its managed save image); ignore 'no such domain'."""
        self.virsh("destroy", check=False, timeout=60)
        if self.persistent:
            self.virsh("undefine", "--managed-save", "--nvram", check=False, timeout=60)


class SaveNotStalled(RuntimeError):
    """The managedsave could not be caught in progress (it finished or never paused)."""


_PTRACE_SEIZE, _PTRACE_INTERRUPT, _PTRACE_DETACH = 0x4206, 0x4207, 17
_WALL = 0x40000000


def _ptrace(request: int, tid: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(request, tid, None, None) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"ptrace({request:#x}, {tid}): {os.strerror(errno)}")


class ThreadStop:
    """One thread of another process held still (ptrace seize + interrupt); the rest run.

    Only the thread that called ``stop()`` may call ``cont()`` (ptrace's rule); if
    this process dies first, the kernel lets the thread go on by itself.
    """

    def __init__(self, tid: int) -> None:
        self.tid = tid
        _ptrace(_PTRACE_SEIZE, tid)
        _ptrace(_PTRACE_INTERRUPT, tid)
        os.waitpid(tid, _WALL)

    def cont(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            _ptrace(_PTRACE_DETACH, self.tid)


def thread_named(pid: int, comm: str) -> Optional[int]:
    """The id of the first thread of *pid* called *comm* (QEMU names its threads)."""
    for path in glob.glob(f"/proc/{pid}/task/*/comm"):
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == comm:
                return int(Path(path).parent.name)
    return None


class StalledSave:
    """A ``virsh managedsave`` of one running domain, held in progress.

    Why: a small guest saves in well under a second, too quick to act on; a save
    left running by a killed virtguests (or a big guest on a slow disk) holds the
    domain's job for minutes.  ``start()`` runs ``virsh managedsave`` in the
    background and, once libvirt has paused the guest for the save (status XML
    ``paused``/``save``), holds it still: libvirt keeps the domain's job (the
    state-change lock) until ``resume()``.  Leaving the context resumes and waits
    for the save to end.

    ``hold="thread"`` (default) stops only QEMU's ``live_migration`` thread, which
    writes the image: QEMU still answers libvirt, so ``domjobinfo`` reports the
    save (with ``Data processed`` frozen) and ``destroy`` works at once, as for a
    slow save.  ``hold="process"`` SIGSTOPs the whole QEMU: its monitor hangs too,
    so ``domjobinfo`` hangs and ``destroy`` takes libvirt's 10 s SIGTERM grace.

    A guest paused before the save keeps its reason (e.g. ``paused``/``user``):
    libvirt sets ``save`` only when it pauses a running guest.  Such a save is held
    once QEMU's ``live_migration`` thread exists.  A save that ends before it is held
    is retried after ``virsh start``; a paused guest comes back ``paused``/``migration``
    (``domstate --reason``: ``paused (migrating)``), so its reason may differ.
    """

    def __init__(self, daemon: PrivateLibvirtd, name: str, domain: Optional[str] = None,
                 env: Optional[dict[str, str]] = None, attempts: int = 5,
                 hold: str = "thread") -> None:
        """``domain``: how to name the guest to virsh (default ``name``; e.g. its UUID)."""
        if hold not in ("thread", "process"):
            raise ValueError(f"hold must be 'thread' or 'process', not {hold!r}")
        self.daemon = daemon
        self.name = name
        self.domain = domain or name
        self.env = env
        self.attempts = attempts
        self.hold = hold
        self.proc: Optional[subprocess.Popen[str]] = None
        self.qemu_pid = 0
        self._held: Optional[ThreadStop] = None
        self._stopped = False
        self.began = 0.0
        self.was_paused = False
        self.result: Optional[tuple[int, str, str]] = None
        self.seconds = 0.0

    @property
    def held(self) -> bool:
        return self._held is not None or self._stopped

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["virsh", "-c", self.daemon.qemu_uri, "managedsave", self.domain],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=self.env, start_new_session=True,
        )

    def _catch(self, proc: subprocess.Popen[str], deadline: float) -> None:
        """Hold the save as soon as it runs (until *deadline* or the save's end)."""
        while proc.poll() is None and time.monotonic() < deadline:
            saving = self.daemon.domain_status(self.name) == ("paused", "save") or (
                self.was_paused and thread_named(self.qemu_pid, "live_migration") is not None)
            if saving:
                if self.hold == "process":
                    os.kill(self.qemu_pid, signal.SIGSTOP)
                    self._stopped = True
                    return
                tid = thread_named(self.qemu_pid, "live_migration")
                if tid is not None:
                    with contextlib.suppress(OSError):  # the thread ended: the save is done
                        self._held = ThreadStop(tid)
                    return
            time.sleep(0.001)

    def _answers(self) -> bool:
        """QEMU still answers libvirt (the thread was not held inside QEMU's big lock)."""
        if self.hold == "process":
            return True
        try:
            res = self.daemon.virsh("domjobinfo", self.domain, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False
        return "Operation:        Save" in res.stdout

    def start(self, timeout: float = 30) -> StalledSave:
        """Start the save and hold it; retried (restoring the guest) if it was too quick."""
        for _attempt in range(self.attempts):
            self.qemu_pid = self.daemon.qemu_pid(self.name)
            status = self.daemon.domain_status(self.name)
            self.was_paused = status is not None and status[0] == "paused"
            self.began = time.monotonic()
            proc = self._spawn()
            self._catch(proc, self.began + timeout)
            if self.held and proc.poll() is None and self._answers():
                self.proc = proc
                return self
            self.resume()  # too late (the save ended), or QEMU stopped answering
            try:
                _out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired as exc:
                _kill(proc)
                raise SaveNotStalled(f"managedsave {self.domain} never ended") from exc
            if proc.returncode != 0:
                raise SaveNotStalled(f"managedsave {self.domain} failed: {err.strip()}")
            # saved before we could hold it: restore the guest and try again
            self.daemon.virsh("start", self.domain, timeout=120)
        raise SaveNotStalled(f"managedsave {self.domain} could not be held in progress "
                             f"({self.attempts} attempts)")

    def resume(self) -> None:
        """Let the save go on (idempotent)."""
        if self._held is not None:
            self._held.cont()
            self._held = None
        if self._stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.qemu_pid, signal.SIGCONT)
            self._stopped = False

    def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        """Resume and wait for the held managedsave: (exit, stdout, stderr)."""
        self.resume()
        if self.result is None:
            assert self.proc is not None
            self.result = _outcome(self.proc, timeout)
            self.seconds = time.monotonic() - self.began
        return self.result

    def __enter__(self) -> StalledSave:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.wait()


class MigrationNotStalled(RuntimeError):
    """The migration could not be caught in progress (it ended first, or failed)."""


class StalledMigration:
    """A ``virsh migrate`` of one running domain to a peer, held in progress.

    Why: a small guest migrates in a second or two, too quick to act on (a
    ``domjobinfo`` with progress, a ``domjobabort``, a peer killed mid-way); a big
    guest over a slow link takes minutes.  ``start()`` runs ``virsh -c HOME
    migrate OPTIONS DOMAIN PEER_URI`` in the background and, once QEMU's
    ``live_migration`` thread has sent some memory (``domjobinfo`` shows ``Data
    processed``), holds that thread still: QEMU still answers libvirt, so
    ``domjobinfo`` reports the outgoing migration with its counters frozen and
    ``domjobabort`` is accepted (the abort completes once the thread runs again).
    ``resume()`` lets it go on; ``wait()`` returns the migrate call's result.
    """

    def __init__(self, daemon: PrivateLibvirtd, name: str, peer_uri: str,
                 domain: Optional[str] = None,
                 options: tuple[str, ...] = ("--live", "--persistent", "--undefinesource"),
                 env: Optional[dict[str, str]] = None) -> None:
        """``domain``: how to name the guest to virsh (default ``name``; e.g. its UUID)."""
        self.daemon = daemon
        self.name = name
        self.domain = domain or name
        self.argv = ["migrate", *options, self.domain, peer_uri]
        self.env = env
        self.proc: Optional[subprocess.Popen[str]] = None
        self._held: Optional[ThreadStop] = None
        self.jobinfo = ""
        """``domjobinfo`` as it was when the migration was held."""
        self.result: Optional[tuple[int, str, str]] = None

    def start(self, timeout: float = 60) -> StalledMigration:
        qemu_pid = self.daemon.qemu_pid(self.name)
        self.proc = subprocess.Popen(
            ["virsh", "-c", self.daemon.qemu_uri, *self.argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=self.env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            tid = thread_named(qemu_pid, "live_migration")
            if tid is None:
                time.sleep(0.005)
                continue
            with contextlib.suppress(OSError):  # the thread ended: the migration is over
                self._held = ThreadStop(tid)
            if self._held is None:
                break
            try:
                res = self.daemon.virsh("domjobinfo", self.domain, timeout=10, check=False)
            except subprocess.TimeoutExpired:
                res = None
            if res is not None and "Data processed:" in res.stdout:
                self.jobinfo = res.stdout
                return self
            self.resume()  # not sending memory yet: let it run a little
            time.sleep(0.02)
        self.resume()
        result = self.wait()
        raise MigrationNotStalled(
            f"{' '.join(self.argv)} could not be held in progress: exit {result[0]}, "
            f"{result[2].strip()!r}")

    def resume(self) -> None:
        """Let the migration go on (idempotent)."""
        if self._held is not None:
            self._held.cont()
            self._held = None

    def wait(self, timeout: float = 300) -> tuple[int, str, str]:
        """Resume and wait for the migrate call: (exit, stdout, stderr)."""
        self.resume()
        if self.result is None:
            assert self.proc is not None
            self.result = _outcome(self.proc, timeout)
        return self.result

    def __enter__(self) -> StalledMigration:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.wait()
