"""Things that are not a regular file, put where a test expects virtguests to find one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

HUGE = 20 * 1024 * 1024
"""Bytes of a sparse "huge" file: above every cap in :mod:`virtguests.files`."""


def put(path: Path, kind: str, *, size: int = HUGE) -> None:
    """Make *path* a ``fifo``, a ``directory``, a ``huge`` sparse file of *size* bytes, a
    ``socket``, a ``symlink`` to ``elsewhere`` beside it (missing unless the caller made
    it), or a symlink to a device (``dev-zero``, ``dev-null``)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.truncate(size)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
    elif kind == "symlink":
        path.symlink_to(path.with_name("elsewhere"))
    elif kind in ("dev-zero", "dev-null"):
        path.symlink_to("/dev/" + kind.removeprefix("dev-"))
    else:
        raise ValueError(f"unknown kind of file: {kind}")
