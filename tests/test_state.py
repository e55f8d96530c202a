"""The list file and friends: reference format, atomic writes, damage tolerated."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtguests import state

U1 = "6695eb01-f6a4-8304-79aa-97f2502e193f"
U2 = "11111111-2222-3333-4444-555555555555"


def test_reference_format_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "libvirt-guests"
    state.write_list(path, {"default": [U1, U2], "qemu+ssh://h/system": [U2]})
    assert path.read_text() == f"default {U1} {U2}\nqemu+ssh://h/system {U2}\n"
    assert state.read_list(path) == ({"default": [U1, U2], "qemu+ssh://h/system": [U2]}, [])


def test_empty_list_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "libvirt-guests"
    path.write_text("x")
    state.write_list(path, {"default": []})
    assert not path.exists()


def test_damaged_lines_are_reported_and_good_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "libvirt-guests"
    path.write_text(f"default {U1} garbage {U2[:20]}\n{U2}\nlonely-uri\n\nqemu:///system {U2}")
    entries, bad = state.read_list(path)
    assert entries == {"default": [U1], "qemu:///system": [U2]}
    assert [(b.line, b.message.split(":")[0]) for b in bad] == [
        (1, "not a UUID, skipped"), (1, "not a UUID, skipped"),
        (2, "line starts with a UUID, not a URI"), (3, "no guests listed for URI 'lonely-uri'")]
    assert str(bad[0]).startswith(f"{path}:1: ")


def test_write_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "libvirt-guests"
    path.symlink_to(victim)
    state.write_list(path, {"default": [U1]})
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == f"default {U1}\n"


def test_reading_a_symlinked_list_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(f"default {U1}\n")
    path = tmp_path / "libvirt-guests"
    path.symlink_to(target)
    entries, bad = state.read_list(path)
    assert entries == {} and "cannot read" in bad[0].message


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "libvirt-guests"
    state.write_list(path, {"default": [U1]})

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        state.write_list(path, {"default": [U2]})
    assert path.read_text() == f"default {U1}\n"
    assert os.listdir(tmp_path) == ["libvirt-guests"]


def test_merge_keeps_order_and_drops_duplicates() -> None:
    assert state.merge({"a": [U1]}, {"a": [U1, U2], "b": []}) == {"a": [U1, U2]}


def test_lock_makes_a_second_holder_wait_then_give_up(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    waits: list[str] = []
    with state.exclusive(lock, wait=1, on_wait=waits.append, sleep=lambda s: True):
        inner: list[BaseException] = []

        def second() -> None:
            try:
                with state.exclusive(lock, wait=0.4, on_wait=waits.append,
                                     sleep=lambda s: True):
                    pass
            except state.LockBusy as err:
                inner.append(err)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert inner and f"pid {os.getpid()}" in str(inner[0])
    assert waits and "waiting for another virtguests" in waits[0]
    with state.exclusive(lock, wait=0, on_wait=waits.append, sleep=lambda s: True):
        pass


def test_a_stop_request_ends_the_wait_for_the_lock_at_once(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    naps: list[float] = []

    def sleep(seconds: float) -> bool:
        naps.append(seconds)
        return len(naps) < 3  # the third nap is cut short by SIGTERM

    with state.exclusive(lock, wait=3600, on_wait=lambda line: None, sleep=lambda s: True), \
            pytest.raises(state.LockInterrupted, match="stop requested while waiting"), \
            state.exclusive(lock, wait=3600, on_wait=lambda line: None, sleep=sleep):
        pass
    assert len(naps) == 3


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_lock_path_that_is_not_a_regular_file_is_refused_not_waited_on(
        tmp_path: Path, kind: str) -> None:
    lock = tmp_path / "lock"
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "directory":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), \
            state.exclusive(lock, wait=0, on_wait=lambda line: None, sleep=lambda s: True):
        pass


@given(st.text(max_size=500))
def test_fuzz_parse_list_never_crashes(text: str) -> None:
    entries, bad = state.parse_list(text, Path("f"))
    for uri, ids in entries.items():
        assert uri and ids and all(len(i) == 36 for i in ids)
    for line in bad:
        assert line.line >= 1
