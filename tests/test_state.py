"""The list file and friends: reference format, atomic writes, damage tolerated."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import oddfiles
from virtguests import files, state
from virtguests.model import Departure

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
        thread.join(60)
        assert not thread.is_alive(), "the second lock never gave up"
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


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "dev-null"])
def test_a_marker_path_that_is_not_a_regular_file_is_refused_not_waited_on(
        tmp_path: Path, kind: str) -> None:
    """Opening a FIFO for writing blocks until a reader comes: at boot, forever."""
    marker = tmp_path / "libvirt-guests.started"
    oddfiles.put(marker, kind)
    result: list[BaseException] = []

    def touch() -> None:
        try:
            state.touch(marker)
        except OSError as err:
            result.append(err)

    worker = threading.Thread(target=touch, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "touch blocked"
    assert len(result) == 1


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_lock_path_that_is_not_a_regular_file_is_refused_not_waited_on(
        tmp_path: Path, kind: str) -> None:
    lock = tmp_path / "lock"
    oddfiles.put(lock, kind)
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


# -- bad files are refused, costs stay linear (issue 10, items 4 and 11) ----------------


def test_a_damaged_list_file_costs_a_bounded_summary_and_keeps_its_valid_lines(
        tmp_path: Path) -> None:
    path = tmp_path / "libvirt-guests"
    junk = bytes(range(256)) * 20_000  # 5 MB of binary, some 20,000 "lines"
    path.write_bytes(junk[:2_000_000] + f"\ndefault {U1}\n".encode() + junk[2_000_000:]
                     + f"\nqemu:///system {U2} nope\n".encode())
    entries, bad = state.read_list(path)
    assert entries == {"default": [U1], "qemu:///system": [U2]}
    assert len(bad) == state.MAX_REPORTED + 1
    assert "more problem(s) on" in bad[-1].message and "valid lines are kept" in bad[-1].message


@given(st.binary(max_size=2000))
def test_list_parsing_never_raises_keeps_valid_lines_and_bounds_its_errors(junk: bytes) -> None:
    valid = f"default {U1}\nqemu:///system {U2} {U1}\n"
    text = (junk + b"\n" + valid.encode() + junk).decode("utf-8", errors="replace")
    entries, bad = state.parse_list(text, Path("f"))
    assert U1 in entries.get("default", []) and {U1, U2} <= set(entries["qemu:///system"])
    assert len(bad) <= state.MAX_REPORTED + 1
    for line in bad:
        assert line.line >= 1
    for uri, ids in entries.items():
        assert uri and ids and all(len(i) == 36 for i in ids) and len(set(ids)) == len(ids)


def test_list_lines_split_like_read_does() -> None:
    """libvirt-guests' ``read uri list`` splits on spaces and tabs only."""
    entries, bad = state.parse_list(f"default\t{U1}\u00a0{U2}\n", Path("f"))
    assert entries == {} and "not a UUID" in bad[0].message


def test_merge_and_parse_are_linear_in_the_number_of_guests() -> None:
    """Counted, not timed: membership tests on lists would make this quadratic."""
    many = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(30_000)]
    entries, bad = state.parse_list("default " + " ".join(many + many) + "\n", Path("f"))
    assert entries == {"default": many} and bad == []
    assert state.merge(entries, {"default": list(reversed(many))}, {"x": many[:1]}) == {
        "default": many, "x": many[:1]}


@pytest.mark.parametrize("what", ["fifo", "directory", "symlink", "huge", "socket"])
def test_state_files_that_are_not_regular_files_are_refused(tmp_path: Path, what: str) -> None:
    from tests.test_files import within_deadline

    path = tmp_path / "libvirt-guests"
    (tmp_path / "elsewhere").write_text(f"default {U1}\n")  # a symlink's target
    oddfiles.put(path, what, size=files.STATE_CAP + 1)
    entries, bad = within_deadline(lambda: state.read_list(path))
    assert entries == {} and len(bad) == 1 and bad[0].message.startswith("cannot read: ")
    seen, problems = within_deadline(lambda: state.read_seen(path))
    assert seen == {} and len(problems) == 1 and "cannot read: " in str(problems[0])
    report, problems = within_deadline(lambda: state.read_run_report(path))
    assert report is None and len(problems) == 1


def test_dev_zero_as_a_state_file(tmp_path: Path) -> None:
    from tests.test_files import within_deadline

    path = tmp_path / "libvirt-guests"
    path.symlink_to("/dev/zero")
    assert "symbolic link" in within_deadline(lambda: state.read_list(path))[1][0].message


# -- JSON state files: FILE:LINE: KEY: problem, the valid parts kept --------------------


def report_doc(**changes: object) -> dict[str, object]:
    guest = {"uri": "default", "uuid": U1, "name": "web", "outcome": "saved",
             "steps": [{"action": "suspend", "result": "saved", "seconds": 1.5, "detail": ""}]}
    doc: dict[str, object] = {"command": "stop", "started": 1.0, "finished": 2.0,
                              "exit_status": 0, "guests": [guest, dict(guest, name="db")]}
    doc.update(changes)
    return doc


def test_a_valid_report_reads_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    state.write_json(path, report_doc())
    assert state.read_run_report(path) == (report_doc(), [])


def test_a_report_with_virsh_counts_reads_back_unchanged(tmp_path: Path) -> None:
    """``virsh`` (since issue 13) is kept when valid; a report without it (written
    before) is no problem and gains none."""
    path = tmp_path / "r.json"
    counts = [{"uri": "default", "processes": 11, "connections": 11},
              {"uri": "qemu+ssh://h/system", "processes": 0, "connections": 0}]
    state.write_json(path, report_doc(virsh=counts))
    assert state.read_run_report(path) == (report_doc(virsh=counts), [])


def test_damaged_virsh_counts_are_located_and_the_valid_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    good = {"uri": "default", "processes": 3, "connections": 3}
    state.write_json(path, report_doc(virsh=[
        good, dict(good, processes=-1), dict(good, connections=True), "x",
        {"uri": "b", "processes": 1}]))
    report, problems = state.read_run_report(path)
    assert [p.key for p in problems] == ["virsh[1].processes", "virsh[2].connections",
                                         "virsh[3]", "virsh[4].connections"]
    assert report is not None and report["virsh"] == [good]
    state.write_json(path, report_doc(virsh={"default": 3}))
    report, problems = state.read_run_report(path)
    assert [p.key for p in problems] == ["virsh"] and report is not None
    assert report["virsh"] == [] and len(report["guests"]) == 2


def test_schema_problems_name_line_and_key_path_and_keep_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    doc = report_doc()
    guests = doc["guests"]
    assert isinstance(guests, list)
    guests.append(dict(guests[0], name="bad", outcome=7))
    guests.append("not an object")
    guests.append(dict(guests[0], name="odd-step", steps=[{"action": "x", "result": "y",
                                                          "seconds": "slow"}]))
    doc["exit_status"] = "zero"
    state.write_json(path, doc)  # sort_keys, indent=2: a line per key
    report, problems = state.read_run_report(path)
    text = path.read_text().splitlines()
    keys = [p.key for p in problems]
    assert keys == ["exit_status", "guests[2].outcome", "guests[3]", "guests[4].steps[0].seconds"]
    for problem in problems:
        assert problem.line >= 1 and str(problem).startswith(f"{path}:{problem.line}: ")
    # each line is the one where the enclosing object starts
    assert text[problems[1].line - 1].strip() == "{"
    assert "seconds" not in text[problems[3].line - 1] and problems[3].line > problems[1].line
    assert report is not None and "exit_status" not in report
    assert [g["name"] for g in report["guests"]] == ["web", "db", "odd-step"]
    assert report["guests"][2]["steps"] == []


@pytest.mark.parametrize("content, line, message", [
    ('{"command": "stop",\n "exit_status": 0,\n "guests": [\n', 4, "not valid JSON"),
    ("{\n\n  'single': 1}\n", 3, "not valid JSON"),
    ("[" * 100_000, 1, "nested too deeply"),
    ('{"command": "stop", "exit_status": NaN, "guests": []}', 1, "the number NaN"),
    ('{"command": "stop", "exit_status": ' + "9" * 5000 + ', "guests": []}', 1, "the number 9"),
    ('{"command": "stop", "exit_status": 0, "guests": [], "finished": 1e999}', 1,
     "expected a number"),
    ("", 1, "not valid JSON"),
])
def test_malformed_json_is_one_located_problem(tmp_path: Path, content: str, line: int,
                                               message: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    _, problems = state.read_run_report(path)
    assert len(problems) == 1 and problems[0].line == line and message in str(problems[0]), \
        problems


def test_bad_utf8_in_json(tmp_path: Path) -> None:
    path = tmp_path / "seen.json"
    path.write_bytes(b'{\n"default": {"x": "caf\xe9"}}\n')
    assert [(p.line, p.message) for p in state.read_seen(path)[1]] == [(2, "not valid UTF-8")]


def test_seen_file_keeps_its_valid_entries(tmp_path: Path) -> None:
    path = tmp_path / "seen.json"
    path.write_text(json.dumps({"default": {U1: "web", "nope": "x", U2: 5},
                                "qemu:///system": [U1], "test:///default": {}}, indent=2))
    seen, problems = state.read_seen(path)
    assert seen == {"default": {U1: "web"}, "test:///default": {}}
    assert [p.key for p in problems] == ['default.nope', f'default["{U2}"]',
                                         '["qemu:///system"]']
    assert all(p.line >= 1 for p in problems)


@given(st.one_of(st.text(max_size=300), st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20).map(json.dumps)))
def test_fuzz_json_readers_never_raise(tmp_path_factory: pytest.TempPathFactory,
                                       content: str) -> None:
    path = tmp_path_factory.mktemp("j") / "f.json"
    path.write_text(content)
    for reader in (state.read_run_report, state.read_seen,
                   state.read_migrated):
        _, problems = reader(path)
        for problem in problems:
            assert problem.line >= 1, problem


def test_migrated_record_round_trip_and_empty_removes_it(tmp_path: Path) -> None:
    path = state.Paths.in_dir(tmp_path).migrated
    assert path == tmp_path / "virtguests-migrated"
    assert state.read_migrated(path) == ([], [])
    away = [Departure(U1, "web", "qemu:///system", "qemu+ssh://peer/system"),
            Departure(U2, "db 'x'", "default", "qemu+tls://b/system")]
    state.write_migrated(path, away)
    assert json.loads(path.read_text())["format_version"] == 1
    assert state.read_migrated(path) == (away, [])
    state.write_migrated(path, [])
    assert not path.exists()


def test_migrated_record_keeps_valid_entries_and_locates_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "virtguests-migrated"
    good = {"uuid": U1.upper(), "name": "web", "home": "default", "peer": "qemu://b/system"}
    later = {**good, "peer": "qemu://c/system"}
    path.write_text(json.dumps({"format_version": 1, "guests": [
        good, {"uuid": "nope", "name": "x", "home": "default", "peer": "p"},
        {"uuid": U2, "name": "y", "home": "", "peer": "p"},
        {"uuid": U2, "name": 5, "home": "default", "peer": "p"}, [], later]}, indent=2))
    departures, problems = state.read_migrated(path)
    assert departures == [Departure(U1, "web", "default", "qemu://c/system")]
    assert [p.key for p in problems] == ["guests[1].uuid", "guests[2].home",
                                         "guests[3].name", "guests[4]"]
    assert all(p.line >= 1 for p in problems)


@pytest.mark.parametrize("content", ['{"guests": []}', '{"format_version": 2, "guests": []}',
                                     '{"format_version": 1, "guests": {}}', "[]", "{",
                                     '{"format_version": true, "guests": []}'])
def test_a_migrated_record_of_another_shape_keeps_nothing_and_says_why(
        tmp_path: Path, content: str) -> None:
    path = tmp_path / "virtguests-migrated"
    path.write_text(content)
    departures, problems = state.read_migrated(path)
    assert departures == [] and len(problems) == 1 and problems[0].line >= 1


def test_a_migrated_record_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "virtguests-migrated"
    os.mkfifo(path)
    from tests.test_files import within_deadline
    departures, problems = within_deadline(lambda: state.read_migrated(path))
    assert departures == [] and "cannot read: " in str(problems[0])
