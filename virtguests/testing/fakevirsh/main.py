"""The entry point (``virtguests-fake-virsh``) and the shim that puts it on PATH as virsh."""

from __future__ import annotations

import os
import sys
import time

from virtguests.testing.fakevirsh.commandline import VirshCall
from virtguests.testing.fakevirsh.commands import event_loop, execute, execute_script
from virtguests.testing.fakevirsh.errors import Unsupported
from virtguests.testing.fakevirsh.jsonfile import dumps
from virtguests.testing.fakevirsh.rendering import write
from virtguests.testing.fakevirsh.state import HostClock, StateFile

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Optional

VERSION_FALLBACK = "9.0.0"


def _log(argv: list[str], start: float, status: int, call: str = "",
         environ: Optional[Mapping[str, str]] = None) -> None:
    """The call's line in ``VIRTGUESTS_FAKE_LOG`` (of *environ*, default ``os.environ``);
    *call* tells a session's commands apart (they share one pid)."""
    path = (os.environ if environ is None else environ).get("VIRTGUESTS_FAKE_LOG")
    if not path:
        return
    line = dumps(
        {"argv": argv, "pid": os.getpid(), "call": call or str(os.getpid()), "start": start,
         "end": time.time(), "exit": status}
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    start = time.time()
    status = 2
    try:
        # not signal, which imports enum: a third of what a call imports
        import _signal  # type: ignore[import-not-found]

        _signal.signal(_signal.SIGTERM, _on_sigterm)
        try:
            call = VirshCall(argv)
            if call.interactive:
                from virtguests.testing.fakevirsh.interactive import session

                argv = []  # each of its commands is logged by itself
                return session(call, _log)
            if call.command == "event" and not call.version:
                return event_loop(call, state_file(os.environ), HostClock())
            status, out, err = answer(call, os.environ, HostClock())
        except Unsupported as exc:
            status, out, err = 2, "", f"fakevirsh: {exc}\n"
        write(sys.stdout, out)
        write(sys.stderr, err)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    finally:
        if argv:
            _log(argv, start, status)
    return status


def state_file(environ: Mapping[str, str], clock: Optional[HostClock] = None) -> StateFile:
    """The host's state, as a call with *environ* finds it."""
    host = environ.get("VIRTGUESTS_FAKE_HOST")
    if not host:
        raise Unsupported("VIRTGUESTS_FAKE_HOST is not set (path of the host YAML)")
    host = os.path.abspath(host)
    return StateFile(host, environ.get("VIRTGUESTS_FAKE_STATE") or host + ".state.json", clock)


def answer(call: VirshCall, environ: Mapping[str, str],
           clock: HostClock) -> tuple[int, str, str]:
    """One call that ends (not ``event``): exit status, stdout, stderr."""
    if call.version:
        return 0, VERSION_FALLBACK + "\n", ""
    if call.command == "event":
        raise Unsupported("'event' runs only as a process")
    if call.script:
        return execute_script(call, state_file(environ, clock), clock)
    return execute(call, state_file(environ, clock), clock)


def console_main() -> int:
    return main(sys.argv[1:])


def write_shim(bin_dir: Path, pycache: Optional[Path] = None) -> Path:
    """Create ``bin_dir/virsh``: an executable that runs this fake with sys.executable.

    The shim starts Python with ``-S`` (no site import: much faster startup),
    puts this package's source tree on ``sys.path`` itself and keeps
    byte-code in *pycache* (default ``bin_dir/__pycache__``) even under
    PYTHONDONTWRITEBYTECODE: compiling the modules costs a call about six times
    what running it does, so shims that share a *pycache* compile them once.
    """
    from pathlib import Path as _Path

    from virtguests.testing.recordings import SOURCE_TREE

    bin_dir = _Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    cache = _Path(pycache) if pycache is not None else bin_dir / "__pycache__"
    shim = bin_dir / "virsh"
    shim.write_text(
        f"#!{sys.executable} -S\n"
        "import sys\n"
        "sys.dont_write_bytecode = False\n"
        f"sys.pycache_prefix = {str(cache.resolve())!r}\n"
        f"sys.path.insert(0, {SOURCE_TREE!r})\n"
        "from virtguests.testing.fakevirsh.main import console_main\n"
        "sys.exit(console_main())\n",
        encoding="utf-8",
    )
    shim.chmod(0o755)
    return shim
