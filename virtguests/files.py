"""Read a file virtguests trusts: a regular file of bounded size, or a clear refusal.

Every file virtguests reads (the config, the policy file, the state files,
qemu.conf) goes through ``read``.  A FIFO where the config should be would
block ``open`` or ``read`` forever, ``/dev/zero`` would fill the memory, a
directory or a socket would raise half-way: at host shutdown each of these
must cost a one-line error, never a hang, a MemoryError or a traceback.  So
the path is looked at before it is opened (opening a device can have side
effects), opened non-blocking, looked at again through the descriptor (it may
have been swapped), and read up to its cap plus one byte.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MiB = 1024 * 1024
CONFIG_CAP = 1 * MiB
"""The config file, the policy file and qemu.conf: far above any real one."""
STATE_CAP = 16 * MiB
"""The list file, the pending file and the JSON state files (a list file of 16 MiB
names about 440,000 guests)."""


class Unreadable(Exception):
    """The path exists but is not a file we read; the message says why, in words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def kind(mode: int) -> str:
    """What a non-regular file is, for the message."""
    return next((word for test, word in _KINDS if test(mode)), "not a regular file")


def _refuse_kind(path: Path, mode: int, nofollow: bool) -> None:
    if stat.S_ISREG(mode):
        return
    what = kind(mode)
    if stat.S_ISLNK(mode) and nofollow:
        raise Unreadable(path, f"{what}: refused (state files are never followed through "
                               "links)")
    raise Unreadable(path, f"{what}, not a regular file: refused")


def _refuse_size(path: Path, size: int, cap: int) -> None:
    if size > cap:
        raise Unreadable(path, f"too large ({_size(size)}; at most {_size(cap)} is read): "
                               "refused")


def _size(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    return f"{n} bytes"


def read(path: Path, *, cap: int, nofollow: bool = False) -> bytes:
    """The whole content of *path*, a regular file of at most *cap* bytes.

    Raises FileNotFoundError when nothing is there (callers decide whether
    that is fine), ``Unreadable`` for everything else: not a regular file, a
    symbolic link when *nofollow*, over the cap, or any OS error.  Never
    blocks on a FIFO or device and never reads more than ``cap + 1`` bytes.
    """
    try:
        before = os.lstat(path) if nofollow else os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise Unreadable(path, err.strerror or str(err)) from None
    _refuse_kind(path, before.st_mode, nofollow)
    _refuse_size(path, before.st_size, cap)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if nofollow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise Unreadable(path, err.strerror or str(err)) from None
    try:
        now = os.fstat(fd)
        _refuse_kind(path, now.st_mode, nofollow)
        _refuse_size(path, now.st_size, cap)
        chunks: list[bytes] = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as err:
        raise Unreadable(path, err.strerror or str(err)) from None
    finally:
        os.close(fd)
    _refuse_size(path, len(data), cap)
    return data
