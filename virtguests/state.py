"""On-disk state: the list file (shared with libvirt-guests), marker, leftovers, lock.

The list file keeps the reference's format and place, so either tool can
resume what the other saved: one line per URI, ``URI UUID UUID ...``.
Everything is written atomically (temp file, fsync, rename), so a power cut
leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from virtguests.virshout import is_uuid

DEFAULT_LIST = Path("/var/lib/libvirt/libvirt-guests")


@dataclass(frozen=True)
class Paths:
    list_file: Path
    marker: Path
    pending: Path
    report: Path
    lock: Path
    seen: Path

    @classmethod
    def default(cls) -> Paths:
        subsys = Path("/var/lock/subsys")
        marker = subsys / "libvirt-guests" if subsys.is_dir() else Path("/var/lock/libvirt-guests")
        return cls._beside(DEFAULT_LIST, marker)

    @classmethod
    def in_dir(cls, state_dir: Path) -> Paths:
        return cls._beside(state_dir / "libvirt-guests", state_dir / "libvirt-guests.started")

    @classmethod
    def _beside(cls, list_file: Path, marker: Path) -> Paths:
        """virtguests' own files live next to the list file."""
        base = list_file.parent
        return cls(list_file, marker, base / "virtguests-pending",
                   base / "virtguests-last-run.json", base / "virtguests.lock",
                   base / "virtguests-seen.json")


@dataclass(frozen=True)
class BadLine:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


Entries = dict[str, list[str]]
"""URI (as written in the file) -> UUIDs, in file order."""


def read_list(path: Path) -> tuple[Entries, list[BadLine]]:
    """Parse a list file; bad lines or tokens are reported and skipped, never fatal."""
    try:
        data = _read_nofollow(path)
    except FileNotFoundError:
        return {}, []
    except OSError as err:
        return {}, [BadLine(path, 0, f"cannot read: {err.strerror or err}")]
    return parse_list(data.decode("utf-8", errors="replace"), path)


def parse_list(text: str, path: Path) -> tuple[Entries, list[BadLine]]:
    entries: Entries = {}
    bad: list[BadLine] = []
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        uri, *ids = tokens
        if is_uuid(uri):
            bad.append(BadLine(path, number, f"line starts with a UUID, not a URI: {line[:80]!r}"))
            continue
        good: list[str] = []
        for token in ids:
            if is_uuid(token):
                good.append(token.lower())
            else:
                bad.append(BadLine(path, number, f"not a UUID, skipped: {token[:80]!r}"))
        if good:
            merged = entries.setdefault(uri, [])
            merged.extend(u for u in good if u not in merged)
        elif not ids:
            bad.append(BadLine(path, number, f"no guests listed for URI {uri!r}"))
    return entries, bad


def format_list(entries: Mapping[str, Iterable[str]]) -> str:
    return "".join(
        f"{uri} {' '.join(ids)}\n" for uri, ids in entries.items() if list(ids)
    )


def merge(*parts: Mapping[str, Iterable[str]]) -> Entries:
    out: Entries = {}
    for part in parts:
        for uri, ids in part.items():
            merged = out.setdefault(uri, [])
            merged.extend(u for u in ids if u not in merged)
    return {uri: ids for uri, ids in out.items() if ids}


def write_list(path: Path, entries: Mapping[str, Iterable[str]]) -> None:
    """Replace the list file atomically; an empty list removes it."""
    text = format_list(entries)
    if text:
        write_atomic(path, text.encode())
    else:
        remove(path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, then rename over *path*.

    rename() replaces a symlink at *path* instead of following it.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _ignore_missing():
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def remove(path: Path) -> None:
    with _ignore_missing():
        os.unlink(path)
        _fsync_dir(path.parent)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    os.close(fd)


def write_json(path: Path, document: Any) -> None:
    write_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(_read_nofollow(path).decode())
    except (OSError, ValueError):
        return None


def _read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _ignore_missing() -> Iterator[None]:
    with suppress(FileNotFoundError):
        yield


class LockBusy(Exception):
    """Another virtguests held the lock for longer than we may wait."""


class LockInterrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT) while waiting for the lock."""


LOCK_POLL = 0.2


@contextmanager
def exclusive(
    path: Path,
    *,
    wait: float,
    on_wait: Callable[[str], None],
    sleep: Callable[[float], bool],
) -> Iterator[None]:
    """Hold an flock on *path*; another virtguests run waits up to *wait* seconds.

    *sleep* returns False when a stop was requested: then we give up at once
    (LockInterrupted), so a queued run never outlives its SIGTERM.  The lock
    file is opened without blocking and must be a regular file: a FIFO or a
    device planted there is refused (OSError), never waited on.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        waited = 0.0
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            if waited >= wait:
                raise LockBusy(
                    f"another virtguests (pid {holder}) holds {path}; gave up after {wait:g}s"
                )
            if not told:
                on_wait(f"waiting for another virtguests (pid {holder}) to finish ({path})")
                told = True
            if not sleep(LOCK_POLL):
                raise LockInterrupted(f"stop requested while waiting for another virtguests "
                                      f"(pid {holder}) to release {path}")
            waited += LOCK_POLL
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
