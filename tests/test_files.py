"""The safe reader: anything but a regular file of bounded size is refused, quickly.

Each read that could hang if the code regressed (a FIFO with no writer, a
device that never ends) runs in a worker thread with a deadline, so a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from virtguests import files

T = TypeVar("T")
DEADLINE = 30.0
"""Generous: a correct refusal takes microseconds; only a hang comes near this."""


def within_deadline(call: Callable[[], T]) -> T:
    """Run *call* in a daemon thread; fail (not hang) if it has not returned in time."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed back to the test thread below
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE)
    assert not worker.is_alive(), f"read did not return within {DEADLINE}s (it hangs)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def refused(path: Path, *, cap: int = files.CONFIG_CAP, nofollow: bool = False) -> str:
    with pytest.raises(files.Unreadable) as info:
        within_deadline(lambda: files.read(path, cap=cap, nofollow=nofollow))
    return str(info.value)


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"A=1\n" * 1000)
    assert files.read(path, cap=files.CONFIG_CAP) == b"A=1\n" * 1000


def test_missing_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.read(tmp_path / "nope", cap=10)


def test_a_fifo_without_writer_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "FIFO" in refused(fifo)
    assert "FIFO" in refused(fifo, nofollow=True)


def test_a_fifo_swapped_in_after_the_check_is_refused_at_fstat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path is a regular file when looked at, a FIFO when opened (a race)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real_stat = os.stat
    a_regular_file = real_stat(__file__)

    def fake_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        return a_regular_file if Path(str(path)) == fifo else real_stat(path)  # type: ignore

    monkeypatch.setattr(os, "stat", fake_stat)
    assert "FIFO" in refused(fifo)


def test_dev_zero_is_refused() -> None:
    assert "character device" in refused(Path("/dev/zero"))


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "directory" in refused(tmp_path)


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(1)
        assert "socket" in refused(path)
    finally:
        server.close()


def test_a_symlink_is_refused_for_state_files_and_followed_for_config(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("x\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert "symbolic link" in refused(link, nofollow=True)
    assert files.read(link, cap=10) == b"x\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    to_fifo = tmp_path / "to-fifo"
    to_fifo.symlink_to(fifo)
    assert "FIFO" in refused(to_fifo)


def test_over_the_cap_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big"
    with open(path, "wb") as handle:
        handle.truncate(64 * files.MiB)  # sparse: costs no disk
    message = refused(path, cap=files.MiB)
    assert "too large" in message and "at most 1 MiB" in message
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * 100)
    assert len(files.read(exact, cap=100)) == 100
    assert "too large" in refused(exact, cap=99)


def test_a_file_growing_past_the_cap_while_read_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fstat said small, the read finds more: at most cap + 1 bytes are read."""
    path = tmp_path / "growing"
    path.write_bytes(b"y" * 10)
    real_read = os.read
    asked: list[int] = []

    def endless(fd: int, n: int) -> bytes:
        asked.append(n)
        return b"z" * n if len(asked) < 100 else real_read(fd, n)

    monkeypatch.setattr(os, "read", endless)
    assert "too large" in refused(path, cap=1000)
    assert sum(asked) == 1001
