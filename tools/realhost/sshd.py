"""A private sshd on 127.0.0.1, so the real-host tests reach a PrivateLibvirtd as a
remote host (``qemu+ssh://``) without touching the machine's own ssh setup.

Why: on a remote URI every virsh process pays an ssh handshake; only a real sshd in
front of a real libvirtd shows what that costs and what breaks when the link or the
daemon behind it goes away.  Everything lives in a temp dir made per run: the config,
the host key, the client key and the authorized_keys file holding it, the pid file
and the log.  The daemon is our child (``sshd -D``), listens on a free port of
127.0.0.1 only, accepts only that client key (``PermitRootLogin prohibit-password``,
no passwords, no PAM), and logs at ``LogLevel VERBOSE`` so each accepted connection
is one ``Accepted publickey`` line (:meth:`PrivateSshd.connections`).

Client side: libvirt's ssh transport runs the ``ssh`` binary; with ``no_verify=1`` it
accepts any host key, and ssh then records the key in the user's known_hosts (root's
``~/.ssh/known_hosts``, a new line per run, each run having a fresh key and port).
ssh reads its known_hosts and config from the passwd entry's home directory, not
``$HOME``, and libvirt's URI has no option for ssh options (its ``known_hosts``
parameter is for the libssh/libssh2 transports only), but the URI's ``command=``
names the ssh binary to run: :meth:`PrivateSshd.qemu_uri` points it at a two-line
wrapper here that runs the real ssh with ``-F`` (our client config: known_hosts in the
temp dir, no ControlMaster, BatchMode) and every argument libvirt gave it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Optional

from virtguests.testing import wait_exited

if TYPE_CHECKING:
    from tools.realhost.libvirtd import PrivateLibvirtd

ACCEPTED = "Accepted publickey"
"""How sshd (LogLevel VERBOSE and above) logs a connection that logged in."""


class SshdError(RuntimeError):
    """The private sshd could not be started (message includes its log)."""


def _which(cmd: str) -> Optional[str]:
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(cmd, path=path)


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on right now (sshd retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _descendants(pid: int) -> list[int]:
    """Every process below *pid* (sshd's per-connection children run in their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class PrivateSshd:
    """sshd on 127.0.0.1:``port`` for the client key ``client_key``; a context manager.

    ``stop()`` ends it with every connection it carries (the remote host gone);
    ``start()`` again serves the same port and keys, so URIs handed out stay valid.
    """

    def __init__(self, workdir: Optional[Path] = None, start_timeout: float = 30.0) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vg-sshd-", dir="/tmp"))
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "sshd_config"
        self.host_key = self.workdir / "host_ed25519"
        self.client_key = self.workdir / "client_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.pid_path = self.workdir / "sshd.pid"
        self.log_path = self.workdir / "sshd.log"
        self.client_config = self.workdir / "ssh_config"
        self.known_hosts = self.workdir / "known_hosts"
        self.ssh_command = self.workdir / "ssh"
        self.login_home = self.workdir / "home"
        """The logins' HOME: bash, run by sshd, reads ~/.bashrc, and root's may be slow
        or block (pyenv's rehash lock, left behind by a connection killed mid-login,
        held every later login for 60 s)."""
        self.port = 0
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._keys_made = False

    # -- what clients use ---------------------------------------------------

    def qemu_uri(self, daemon: PrivateLibvirtd) -> str:
        """The qemu+ssh URI of *daemon* through this sshd.

        ``socket=`` names the daemon's private socket, which only the netcat proxy
        honours (Debian's virt-ssh-helper, ``proxy=auto``'s first choice, ignores it
        and connects to the system socket); ``command=`` is our ssh wrapper (see the
        module doc: keeps root's known_hosts untouched).
        """
        return (f"qemu+ssh://root@127.0.0.1:{self.port}/system?socket={daemon.socket}"
                f"&keyfile={self.client_key}&no_verify=1&proxy=netcat"
                f"&command={self.ssh_command}")

    @property
    def pid(self) -> Optional[int]:
        """The listening sshd's pid, or None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connections(self) -> int:
        """Connections that logged in since this sshd was first started (its log)."""
        return self.log().count(ACCEPTED)

    # -- lifecycle ----------------------------------------------------------

    def _keys(self) -> None:
        if self._keys_made:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        for key, comment in ((self.host_key, "vg-sshd host"),
                             (self.client_key, "vg-sshd client")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                            "-f", str(key)], check=True, timeout=60,
                           stdin=subprocess.DEVNULL, capture_output=True)
        shutil.copyfile(self.client_key.with_suffix(".pub"), self.authorized_keys)
        os.chmod(self.authorized_keys, 0o600)
        self.client_config.write_text(
            f"UserKnownHostsFile {self.known_hosts}\n"
            "GlobalKnownHostsFile /dev/null\n"
            "BatchMode yes\n"
            "ControlMaster no\n"
            "ControlPath none\n"
            "IdentitiesOnly yes\n"
            "LogLevel ERROR\n"
        )
        ssh = _which("ssh")
        if ssh is None:
            raise SshdError("ssh (openssh-client) not found; run .ci/install-realhost-deps")
        self.ssh_command.write_text(
            f'#!/bin/sh\nexec {shlex.quote(ssh)} -F {shlex.quote(str(self.client_config))}'
            ' "$@"\n')
        self.ssh_command.chmod(0o755)
        self._keys_made = True

    def _write_config(self) -> None:
        # StrictModes no: the key files sit in a 0700 root dir below /tmp, whose 1777
        # mode StrictModes refuses for an AuthorizedKeysFile outside the home dir.
        # MaxStartups: ssh connections a run opens at once must not be dropped at
        # random past the default's 10 unauthenticated ones.
        self.config_path.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.pid_path}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "LogLevel VERBOSE\n"
            "MaxStartups 200\n"
            "PrintMotd no\n"
            "X11Forwarding no\n"
            "AllowAgentForwarding no\n"
            f"SetEnv HOME={self.login_home}\n"
        )

    def start(self) -> PrivateSshd:
        """Start sshd and wait until it greets on its port (bounded by start_timeout)."""
        if self.pid is not None:
            return self
        sshd = _which("sshd")
        if sshd is None:
            raise SshdError("sshd (openssh-server) not found; run .ci/install-realhost-deps")
        self._keys()
        self.login_home.mkdir(exist_ok=True)
        # sshd's privilege-separation directory; Debian's service makes it at start
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout
        fixed = self.port != 0
        while True:
            if not fixed:
                self.port = free_port()
            self._write_config()
            self._proc = subprocess.Popen(
                [sshd, "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                if self._wait_ready(deadline):
                    return self
            except BaseException:
                self.stop()
                raise
            # it exited: the port was taken between free_port() and its bind, or worse
            if fixed or time.monotonic() > deadline:
                raise SshdError(f"sshd exited with status {self._proc.returncode}\n"
                                f"--- {self.log_path} ---\n{self.log()[-3000:]}")

    def _wait_ready(self, deadline: float) -> bool:
        """True once sshd sends its banner; False if it exited; SshdError at the deadline."""
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.settimeout(2)
                if conn.recv(64).startswith(b"SSH-"):
                    return True
            if time.monotonic() > deadline:
                self.stop()
                raise SshdError(f"sshd did not greet on 127.0.0.1:{self.port} within "
                                f"{self.start_timeout:.0f}s\n--- {self.log_path} ---\n"
                                f"{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill sshd and every connection it carries (their processes are its descendants)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # stopped first, it accepts (forks) nothing while its children are found;
            # they are stopped too, so none forks (a netcat) between listing and killing
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGSTOP)
            doomed: set[int] = set()
            while fresh := set(_descendants(proc.pid)) - doomed:
                for pid in fresh:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                doomed |= fresh
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            wait_exited(doomed, time.monotonic() + 30, "sshd's processes")
        proc.wait(timeout=30)

    def restart(self) -> PrivateSshd:
        """Stop, then serve the same port with the same keys."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Remove the work dir (only if we created it)."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateSshd:
        return self.start()

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.stop()
