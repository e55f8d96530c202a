"""The one place that starts processes: virsh, with argv lists and a timeout.

Every call gets stdin closed, ``LC_ALL=C`` merged into a copy of the
environment (we parse the output), its own session so a timeout kills virsh
and anything it started (ssh for remote URIs), and the full stderr kept for
the error message.  A session's virsh (``virtguests.session``) reads its commands on a
pipe instead, started here too.

One call style serves sh 1.14 (Debian 12's and Ubuntu's python3-sh) and sh 2.x
(PyPI), so there is no version switch: every call is backgrounded (``_bg=True``),
which returns the running command in both (sh 2.x's ``_return_cmd`` only matters for
a call that waits itself, and sh 1.x passes that unknown keyword to virsh as an
argument), then waited for with ``wait()``, which raises ``ErrorReturnCode`` only
for a signal (``_ok_code`` holds every exit status) in both. Only special keywords
both accept with the same meaning are used: ``_env``, ``_bg``, ``_bg_exc``,
``_new_session`` (explicit: sh 2.x's default is False, sh 1.x's True), ``_tty_out``,
``_out``/``_err`` callbacks (a decoded line in both) or files (given to the child
as they are, no pipe, in both), ``_ok_code``,
``_decode_errors``. The supported range is checked at start-up (virtguests.deps).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from virtguests import commands
from virtguests.clock import clamp

if TYPE_CHECKING:
    import subprocess

    from virtguests.session import Sessions

log = logging.getLogger("virtguests.virsh")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Started:
    """What a run started on one URI: virsh processes, and the connections to libvirtd
    they opened (one each: for a remote URI, one ssh handshake each)."""

    processes: int = 0
    connections: int = 0


class VirshError(Exception):
    """A virsh call failed, timed out, could not start, or printed nonsense."""

    def __init__(
        self,
        argv: Sequence[str],
        message: str,
        *,
        exit_code: Optional[int] = None,
        stderr: str = "",
        timed_out: bool = False,
        given_up: bool = False,
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.message = message
        self.exit_code = exit_code
        self.stderr = stderr
        self.timed_out = timed_out
        self.given_up = given_up
        """Refused without running: an earlier call on this URI timed out."""

    @property
    def detail(self) -> str:
        """virsh's own words (``error: ...`` lines), or our description."""
        lines = [ln.strip() for ln in self.stderr.split("\n") if ln.strip()]
        return "; ".join(lines) if lines else self.message

    def __str__(self) -> str:
        return f"{format_argv(self.argv)}: {self.detail}"


class Interrupted(Exception):
    """No new virsh call is started once a stop was requested (SIGTERM/SIGINT)."""


def format_argv(argv: Sequence[str]) -> str:
    """Quote argv the way a shell would need it, for logs and --dry-run."""
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


def resolve_path(explicit: Optional[str], environ: Mapping[str, str]) -> str:
    """--virsh, then $VIRSH, then virsh on PATH (looked up per run, never frozen)."""
    if explicit:
        return explicit
    if environ.get("VIRSH"):
        return environ["VIRSH"]
    return shutil.which("virsh", path=environ.get("PATH")) or "virsh"


CONNECT_FAILED = "error: failed to connect to the hypervisor"
"""virsh's first line when it cannot reach libvirtd (fixtures/nohost-connect.yaml)."""


def is_guest_call(args: Sequence[str]) -> bool:
    """Whether *args* is a call about one guest (``commands.GUEST_SUBCOMMANDS``); a
    command string (several commands in one argument) is a URI-level call.

    One such call timing out may be that guest's own fault (a hung QEMU, a tenant's
    unresponsive guest agent, a slow disk under a big save), so it only costs that
    guest's step and a liveness check of the URI.
    """
    return bool(args) and args[0] in commands.GUEST_SUBCOMMANDS


class Virsh:
    """Runs virsh for one invocation of virtguests.

    Counts calls, and per URI the processes started and connections opened
    (``_count_start``, ``started()``), so reports and benchmarks can say how much work
    was done, and refuses to start new calls after ``interrupt()``.

    A URI can be *given up* for the rest of the run: libvirtd (or the ssh to it)
    stopped answering, and waiting a full timeout again for every guest there
    would turn one hung host into hours of shutdown.  Later calls there fail at
    once (``VirshError.given_up``), naming the call that timed out; calls already
    running finish or time out.  A URI-level call (a listing, ``uri``) that
    times out gives its URI up at once.  A call about one guest
    (``is_guest_call``) that times out fails only that call and triggers one
    liveness check (``commands.liveness()``, *default_timeout*, i.e. QUERY_TIMEOUT):
    the URI is given up only if that check times out or cannot connect too.  One
    check runs at a time per URI; timeouts and new calls meanwhile wait for its
    verdict.

    With *sessions*, calls go through long-lived virsh processes reading commands, one
    connection per URI instead of one per call (``virtguests.session``); a call timing
    out there kills its session and counts as above.  ``close()`` ends them.
    """

    def __init__(
        self,
        path: str,
        *,
        environ: Optional[Mapping[str, str]] = None,
        default_timeout: float = 10.0,
        sessions: bool = False,
    ) -> None:
        self.path = path
        env = dict(os.environ if environ is None else environ)
        env["LC_ALL"] = "C"
        self._env = env
        self.default_timeout = default_timeout
        self.calls = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._given_up: dict[str, str] = {}
        self._checks: dict[str, threading.Event] = {}
        self.liveness_checks = 0
        self._use_sessions = sessions
        self._sessions: Optional[Sessions] = None  # made at the first call: status makes none
        self._started: dict[str, Started] = {}

    def _count_start(self, uri: str) -> None:
        """One virsh process is being started on *uri*, opening one connection there
        (whatever it then runs: a command, a liveness check, a watch, a session's many
        commands).  Called before it starts, so a process that is killed or never
        answers is counted too (for a remote URI, its ssh handshake happened or was
        tried)."""
        with self._lock:
            counts = self._started.get(uri, Started())
            self._started[uri] = Started(counts.processes + 1, counts.connections + 1)

    def started(self) -> dict[str, Started]:
        """Per URI (in the order first used), the virsh processes started and the
        connections they opened so far."""
        with self._lock:
            return dict(self._started)

    def argv(self, uri: str, args: Sequence[str]) -> list[str]:
        """The full command line for *args* on *uri* (``default`` means no ``-c``)."""
        if uri == "default":
            return [self.path, *args]
        return [self.path, "-c", uri, *args]

    def interrupt(self) -> None:
        self._stopping.set()

    @property
    def interrupted(self) -> bool:
        return self._stopping.is_set()

    def given_up(self, uri: str) -> Optional[str]:
        """Why *uri* is given up (its first timed-out call), or None if it is not."""
        with self._lock:
            return self._given_up.get(uri)

    def _refuse_if_given_up(self, uri: str, argv: Sequence[str]) -> None:
        """Refuse a call on a URI given up; while its liveness check runs, wait for the
        verdict first (bounded by the check's timeout), so that no call started
        meanwhile waits out its own timeout on a libvirtd that is gone."""
        with self._lock:
            check = self._checks.get(uri)
        if check is not None:
            check.wait()
        why = self.given_up(uri)
        if why is not None:
            raise VirshError(argv, f"not run: {uri} is not answering ({why})", given_up=True)

    def _give_up(self, uri: str, why: str) -> None:
        with self._lock:
            self._given_up.setdefault(uri, why)
        log.debug("%s: given up for the rest of the run: %s", uri, why)

    def _after_timeout(self, uri: str, args: Sequence[str], err: VirshError) -> None:
        """A URI-level call that timed out gives its URI up; a guest's call asks first."""
        if not is_guest_call(args):
            self._give_up(uri, str(err))
            return
        with self._lock:
            if uri in self._given_up:
                return
            check = self._checks.get(uri)
            ours = check is None
            if check is None:
                check = self._checks[uri] = threading.Event()
        if not ours:
            check.wait()  # bounded: the check has its own timeout
            return
        try:
            failed = self._liveness(uri)
            if failed is not None:
                self._give_up(uri, f"{err}; then {failed}")
        finally:
            with self._lock:
                del self._checks[uri]
            check.set()

    def _liveness(self, uri: str) -> Optional[str]:
        """None if libvirtd on *uri* answers a listing in time, else what went wrong."""
        argv = self.argv(uri, commands.liveness())
        with self._lock:
            self.calls += 1
            self.liveness_checks += 1
        self._count_start(uri)
        try:
            result = self._spawn(argv, self.default_timeout)
        except VirshError as err:
            return str(err)
        if result.exit_code != 0 and CONNECT_FAILED in result.stderr:
            return str(VirshError(argv, "cannot connect", exit_code=result.exit_code,
                                  stderr=result.stderr))
        log.debug("%s: still answering after a guest's call timed out", uri)
        return None

    def run(
        self,
        uri: str,
        args: Sequence[str],
        *,
        timeout: Optional[float] = None,
        check: bool = True,
        ignore_interrupt: bool = False,
    ) -> Result:
        """Run one virsh command; raise VirshError on failure when *check*."""
        if self._stopping.is_set() and not ignore_interrupt:
            raise Interrupted(format_argv(self.argv(uri, args)))
        argv = self.argv(uri, args)
        self._refuse_if_given_up(uri, argv)
        limit = self.default_timeout if timeout is None else timeout
        with self._lock:
            self.calls += 1
        try:
            result = self._call(uri, args, argv, limit)
        except VirshError as err:
            if err.timed_out:
                self._after_timeout(uri, args, err)
            raise
        log.debug(
            "%s (%.2fs, exit %s)", format_argv(argv), result.seconds, result.exit_code
        )
        if check and result.exit_code != 0:
            raise VirshError(
                argv,
                f"exit status {result.exit_code}",
                exit_code=result.exit_code,
                stderr=result.stderr,
            )
        return result

    def _call(self, uri: str, args: Sequence[str], argv: list[str], limit: float) -> Result:
        """In the URI's session when there is one for *args*, else in a process of its own."""
        if self._use_sessions:
            from virtguests import session

            with self._lock:
                if self._sessions is None:
                    self._sessions = session.Sessions(self._start_session)
                sessions = self._sessions
            started = time.monotonic()
            try:
                answer = sessions.ask(uri, args, limit)
            except session.TimedOut:
                raise VirshError(argv, f"timed out after {limit:g}s and was killed",
                                 timed_out=True) from None
            if answer is not None:
                return Result(tuple(argv), answer.exit_code, answer.stdout, answer.stderr,
                              time.monotonic() - started)
            self._refuse_if_given_up(uri, argv)  # it may have waited for a call that hung
        self._count_start(uri)
        return self._spawn(argv, limit)

    def _start_session(self, uri: str) -> subprocess.Popen[bytes]:
        """A virsh reading commands on a pipe (``virtguests.session``), in a process
        session of its own like every call, readline told there is no terminal."""
        import subprocess

        from virtguests import session

        env = {k: v for k, v in self._env.items() if k not in session.DROP_ENV}
        env.update(session.ENV)
        argv = self.argv(uri, [])
        self._count_start(uri)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        log.debug("%s (session)", format_argv(argv))
        return proc

    def close(self) -> None:
        """End every session of this run, killing whatever lingers."""
        with self._lock:
            sessions = self._sessions
        if sessions is not None:
            sessions.close()

    def watch(self, uri: str, args: Sequence[str], on_line: Callable[[str], None]) -> Watch:
        """Start a virsh that keeps running; *on_line* gets each line it prints."""
        import sh

        argv = self.argv(uri, args)
        self._refuse_if_given_up(uri, argv)
        with self._lock:
            self.calls += 1
        self._count_start(uri)
        try:
            proc = sh.Command(argv[0])(
                *argv[1:], _env=self._env, _bg=True, _bg_exc=False, _new_session=True,
                _out=lambda line: on_line(_text(line)), _err=lambda line: None,
                _tty_out=True, _ok_code=list(range(256)), _decode_errors="replace")
        except (sh.CommandNotFound, OSError, sh.ForkException) as err:
            raise VirshError(argv, f"cannot run {argv[0]!r}: {err}") from None
        log.debug("%s (watching)", format_argv(argv))
        return Watch(argv, proc)

    def _spawn(self, argv: list[str], limit: float) -> Result:
        """Start *argv*, wait for it (at most *limit* seconds, then kill its session).

        Its stdout and stderr are anonymous files (``_Capture``), not pipes: a child that
        keeps them open after virsh exits (ssh's ``ControlPersist`` master, a wrapper
        that daemonises) neither delays the call (sh drains a pipe until its last
        writer closes it, up to 2 s) nor is killed (it is not ours: only a timeout
        kills virsh's session).  What virsh wrote is complete once it has exited.
        """
        import sh  # imported lazily: status and check never start virsh

        started = time.monotonic()
        try:
            command = sh.Command(argv[0])
        except sh.CommandNotFound:
            raise VirshError(argv, f"cannot run {argv[0]!r}: not found") from None
        with _Capture("stdout") as stdout_file, _Capture("stderr") as stderr_file:
            try:
                proc: Any = command(
                    *argv[1:],
                    _env=self._env,
                    _out=stdout_file.file,
                    _err=stderr_file.file,
                    _bg=True,
                    _bg_exc=False,
                    _new_session=True,
                    _ok_code=list(range(256)),
                )
            except (OSError, sh.ForkException) as err:
                raise VirshError(argv, f"cannot run {argv[0]!r}: {err}") from None
            # Our own timer, not sh's _timeout: sh polls for it every 0.1 s (adding that
            # much to every call) and kills only virsh, not the ssh it may have started.
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                _kill_session(proc.pid)

            timer = threading.Timer(clamp(limit), expire) if limit > 0 else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                proc.wait()
            except sh.ErrorReturnCode as err:
                if not expired.is_set():
                    raise VirshError(argv, f"killed ({err.exit_code})") from None
            finally:
                if timer is not None:
                    timer.cancel()
            if expired.is_set():
                raise VirshError(argv, f"timed out after {limit:g}s and was killed",
                                 timed_out=True)
            stdout = stdout_file.read()
            stderr = stderr_file.read()
        return Result(tuple(argv), int(proc.exit_code), stdout, stderr,
                      time.monotonic() - started)


class _Capture:
    """One output stream of a call: an anonymous in-memory file (``memfd_create``; an
    unlinked temporary file where there is none), so no disk, full or read-only at
    shutdown, can cut a listing short.  ``read()`` seals it first: a process that kept
    it open gets EPERM for further writes (as it would get EPIPE from a closed pipe),
    and cannot grow it while it lives."""

    def __init__(self, name: str) -> None:
        self.sealable = False
        try:
            fd = os.memfd_create(f"virsh-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (AttributeError, OSError):
            self.file: Any = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        else:
            self.file = os.fdopen(fd, "w+b")
            self.sealable = True

    def __enter__(self) -> _Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def read(self) -> str:
        fd = self.file.fileno()
        if self.sealable:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW)
        # pread: a process that still holds the file shares its offset
        return _text(os.pread(fd, os.fstat(fd).st_size, 0))


class Watch:
    """A long-running virsh (e.g. ``event --loop``) feeding lines to a callback."""

    def __init__(self, argv: Sequence[str], proc: Any) -> None:
        self.argv = tuple(argv)
        self.proc = proc

    def alive(self) -> bool:
        try:
            return bool(self.proc.is_alive())
        except Exception:
            return False

    def close(self) -> None:
        """Ask it to exit (SIGTERM), then kill its whole session if it lingers.

        Once it is gone, sh's wait only drains its terminal, which a child that escaped
        the session (ssh's ``ControlPersist`` master) may hold open for good; sh gives
        up on that after 2 s.  That drain is left to a daemon thread, given a moment.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        _kill_session(self.proc.pid)

        def drain() -> None:
            with contextlib.suppress(Exception):
                self.proc.wait()

        drainer = threading.Thread(target=drain, name="virsh-watch-drain", daemon=True)
        drainer.start()
        drainer.join(0.2)


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data or "")


def _kill_session(pid: int) -> None:
    """Kill virsh and everything in its session (it was started as session leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
