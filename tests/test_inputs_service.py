"""What virtguests reads, on a simulated host (issue 10, items 4, 6, 12, 13): ``cli.main``
and the fake virsh in-process (``run_inprocess``), every file on disk as in production.

Bad files are refused and `stop` still protects every guest; a broken URIS
line never shrinks the hosts protected; each command refuses only the
problems it cares about; `default` is the host `virsh uri` names.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest

from tests import oddfiles
from virtguests.testing import FakeHost, Run, run_inprocess

Make = Callable[..., FakeHost]


def inproc(host: FakeHost, *args: str, timeout: Optional[float] = None) -> Run:
    """virtguests in this process on the jumping virtual clock, the fake virsh too.

    With *timeout* (real seconds) the run goes on in a thread, and one still running
    then fails the test instead of hanging it: a run blocked outside virtual time (on
    a FIFO, say) never ends by itself.
    """
    if timeout is None:
        return run_inprocess(host, *args)[0]
    done: list[Run] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            done.append(run_inprocess(host, *args)[0])
        except BaseException as exc:  # re-raised in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=target, name="virtguests-inprocess", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"virtguests {' '.join(args)} still running after {timeout:g}s"
                             " (real): blocked outside virtual time")
    if failed:
        raise failed[0]
    return done[0]


def two_guests(uri: str = "default") -> dict[str, Any]:
    return {"uris": {uri: {"guests": [{"name": "web"}, {"name": "db"}]}}}


# -- a broken URIS line never shrinks the hosts protected -------------------------------


def test_stop_with_a_broken_uris_line_saves_every_uri_it_named_and_the_seen_file(
        fake_host: Make) -> None:
    host = fake_host({"uris": {
        "test:///a": {"guests": [{"name": "a1"}, {"name": "a2"}]},
        "test:///b": {"guests": [{"name": "b1"}]},
        "test:///seen": {"guests": [{"name": "s1"}]},
        "test:///other": {"guests": [{"name": "o1"}]},
    }}, 'URIS="test:///seen"\n')
    assert inproc(host, "stop").code == 0  # remembers test:///seen's guests in the seen file
    assert host.managed_saved("test:///seen") == {"s1"}
    inproc(host, "start")
    assert host.active("test:///seen") == {"s1"}
    host.set_config('URIS="test:///a $(hostname) test:///b"\nON_SHUTDOWN=suspend\n')
    run = inproc(host, "stop")
    assert run.code == 6, run
    assert f"{host.config_file}:1: URIS: command substitution" in run.err
    assert "protecting every URI it names and every URI in the state files" in run.err
    assert host.managed_saved("test:///a") == {"a1", "a2"}
    assert host.managed_saved("test:///b") == {"b1"}
    assert host.managed_saved("test:///seen") == {"s1"}
    assert host.active("test:///other") == {"o1"}, "a URI no file names is not touched"
    recorded = {line.split()[0] for line in host.list_file.read_text().splitlines()}
    assert recorded == {"test:///a", "test:///b", "test:///seen"}


def test_stop_with_an_unreadable_config_protects_default_and_the_recorded_uris(
        fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}]},
                               "test:///b": {"guests": [{"name": "b1"}]}}})
    host.list_file.write_text(f"test:///b {host.uuid('b1', 'test:///b')}\n")
    host.config_file.unlink()
    os.mkfifo(host.config_file)
    run = inproc(host, "stop", timeout=60)
    assert run.code == 6 and "FIFO" in run.err
    assert host.managed_saved() == {"web"} and host.managed_saved("test:///b") == {"b1"}


# -- bad files are refused, never followed; stop still protects --------------------------


@pytest.mark.parametrize("what", ["fifo", "directory", "huge", "dev-zero"])
@pytest.mark.parametrize("which", ["config", "policy", "list", "pending", "seen", "report"])
def test_stop_protects_the_guests_whatever_file_is_bad(fake_host: Make, tmp_path: Path,
                                                       what: str, which: str) -> None:
    policy_file = tmp_path / "guests.yaml"
    host = fake_host(two_guests(), f"GUEST_POLICY={policy_file}\n")
    policy_file.write_text("guests: []\n")
    path = {"config": host.config_file, "policy": policy_file, "list": host.list_file,
            "pending": host.pending_file, "seen": host.state_dir / "virtguests-seen.json",
            "report": host.state_dir / "virtguests-last-run.json"}[which]
    oddfiles.put(path, what)
    run = inproc(host, "stop", timeout=60)
    assert "Traceback" not in run.err and "MemoryError" not in run.err
    assert host.managed_saved() == {"web", "db"}, run
    if which in ("config", "policy"):
        assert run.code == 6 and str(path) in run.err, run
    elif which != "report":  # the report is only written (replaced), never read, at stop
        assert str(path) in run.err, run


@pytest.mark.parametrize("what", ["fifo", "directory"])
@pytest.mark.parametrize("which", ["marker", "lock", "pending", "seen", "report"])
def test_start_never_hangs_on_a_file_that_is_not_a_file(fake_host: Make, what: str,
                                                      which: str) -> None:
    """At boot a FIFO at the marker once blocked `start` forever (no start timeout): the unit
    never became active, so the next shutdown protected no guest."""
    host = fake_host(two_guests())
    assert inproc(host, "stop").code == 0
    path = {"marker": host.marker, "lock": host.state_dir / "virtguests.lock",
            "pending": host.pending_file, "seen": host.state_dir / "virtguests-seen.json",
            "report": host.state_dir / "virtguests-last-run.json"}[which]
    oddfiles.put(path, what)
    run = inproc(host, "start", timeout=60)
    assert "Traceback" not in run.err, run
    if (which, what) != ("report", "fifo"):  # only written, by a rename over the FIFO
        assert str(path) in run.err, run
    assert host.active() == {"web", "db"}, run


def test_report_on_a_damaged_report_file_prints_its_problems_and_exits_6(
        fake_host: Make) -> None:
    host = fake_host(two_guests())
    inproc(host, "stop")
    path = host.state_dir / "virtguests-last-run.json"
    doc = json.loads(path.read_text())
    doc["guests"][1]["outcome"] = ["saved"]
    path.write_text(json.dumps(doc, indent=2))
    run = inproc(host, "report")
    assert run.code == 6 and "Traceback" not in run.err
    assert f"{path}:" in run.err and ": guests[1].outcome: expected a string, got a list" \
        in run.err
    assert "web" in run.out and "db" not in run.out, "the valid guest is still shown"
    status = inproc(host, "--json", "status")
    assert status.code == 3 and "guests[1].outcome" in status.err
    assert [g["name"] for g in json.loads(status.out)["last_run"]["guests"]] == ["web"]
    path.write_text('{"command": "stop",\n "guests": [\n')
    run = inproc(host, "--json", "report")
    assert run.code == 6 and f"{path}:3: not valid JSON" in run.err
    document = json.loads(run.out)
    assert (document["recorded"], document["path"]) == (False, str(path))
    assert [p.startswith(f"{path}:3: not valid JSON") for p in document["problems"]] == [True]


def test_a_damaged_seen_file_is_reported_repaired_and_stop_protects(fake_host: Make) -> None:
    host = fake_host(two_guests())
    seen = host.state_dir / "virtguests-seen.json"
    seen.write_text('{"default": {"not-a-uuid": "x"}, "test:///gone": 7}')
    run = inproc(host, "stop")
    assert run.code == 0 and host.managed_saved() == {"web", "db"}
    assert "not-a-uuid" in run.err and '["test:///gone"]' in run.err
    assert set(json.loads(seen.read_text())["default"].values()) == {"web", "db"}


def test_a_binary_list_file_costs_a_bounded_error_and_its_guests_are_kept(
        fake_host: Make) -> None:
    host = fake_host(two_guests())
    inproc(host, "stop")
    good = host.list_file.read_bytes()
    host.list_file.write_bytes(os.urandom(300_000) + b"\n" + good + os.urandom(300_000))
    run = inproc(host, "start")
    assert len(run.err.splitlines()) <= 12, run.err
    assert host.active() == {"web", "db"}


# -- each command refuses only what it uses (item 12) ----------------------------------


def test_status_answers_with_any_invalid_value(fake_host: Make) -> None:
    host = fake_host(two_guests(), "ON_BOOT=maybe\nURIS=$(x)\nSHUTDOWN_TIMEOUT=5m\n")
    run = inproc(host, "status")
    assert (run.code, run.out) == (3, "stopped, with no saved guests\n")
    assert run.err.count("virtguests: warning:") == 3 and "error" not in run.err


@pytest.mark.parametrize("line", ["SHUTDOWN_TIMEOUT=5m", "ON_SHUTDOWN=hibernate",
                                  "PARALLEL_SHUTDOWN=x", "STOP_DEADLINE=-1",
                                  "PERSISTENT_ONLY=maybe"])
def test_start_resumes_despite_a_value_it_does_not_use(fake_host: Make, line: str) -> None:
    host = fake_host(two_guests())
    inproc(host, "stop")
    host.set_config(line + "\n")
    run = inproc(host, "start")
    assert run.code == 6, run
    assert "(not used by start)" in run.err and "refusing" not in run.err
    assert host.active() == {"web", "db"} and not host.list_file.exists()


@pytest.mark.parametrize("line", ["URIS=''", "ON_BOOT=maybe", "START_DELAY=010",
                                  "BYPASS_CACHE=$(x)", "PARALLEL_START=0", "QUERY_TIMEOUT=1e3",
                                  "SAVE_TIMEOUT=99999999999", "CONNECT_RETRIES=+1",
                                  "RETRIES_SLEEP=nan", "RESUME_ORPHANS=$1", "X=1 rm -rf /"])
def test_start_refuses_a_bad_value_it_uses_and_keeps_the_record(fake_host: Make,
                                                                line: str) -> None:
    host = fake_host(two_guests())
    inproc(host, "stop")
    before = host.list_file.read_text()
    calls = len(host.calls())
    host.set_config(line + "\n")
    run = inproc(host, "start")
    assert run.code == 6 and "refusing to act" in run.err, run
    assert host.list_file.read_text() == before and len(host.calls()) == calls


def test_a_typo_in_actions_never_makes_start_forget_skip_start(fake_host: Make,
                                                               tmp_path: Path) -> None:
    policy_file = tmp_path / "guests.yaml"
    policy_file.write_text("guests:\n  - match: db\n    actions: shutdwn\n    skip_start: true\n")
    host = fake_host(two_guests(), f"GUEST_POLICY={policy_file}\n")
    stop = inproc(host, "stop")
    assert stop.code == 6 and "actions: invalid chain 'shutdwn'" in stop.err
    assert host.managed_saved() == {"web", "db"}, "the invalid actions fall back to the config"
    run = inproc(host, "start")
    assert run.code == 6 and "(not used by start)" in run.err, run
    assert host.active() == {"web"}


# -- `default` is a real host (item 13) ---------------------------------------------------


def test_a_uri_rule_matches_guests_listed_through_default(fake_host: Make,
                                                          tmp_path: Path) -> None:
    policy_file = tmp_path / "guests.yaml"
    policy_file.write_text("guests:\n  - match: db\n    uri: qemu:///system\n"
                           "    actions: shutdown\n    skip_start: true\n")
    host = fake_host({"uris": {"default": {"uri": "qemu:///system", "guests": [
        {"name": "web"}, {"name": "db", "shutdown_seconds": 0.1}]}}},
        f"GUEST_POLICY={policy_file}\n")
    run = inproc(host, "stop")
    assert run.code == 0, run
    assert "Shutdown of guest db complete." in run.lines and "Suspending web: done" in run.lines
    assert host.managed_saved() == {"web"} and host.active() == set()
    listing = host.commands()[0]
    assert len(listing) == 1 and listing[0].endswith("; echo virtguests-next; uri"), \
        "virsh uri joins the one listing process"
    calls = len(host.calls())
    start = inproc(host, "start")
    assert start.code == 0, start
    assert host.active() == {"web"}, "db's rule (uri: qemu:///system) says skip_start"
    assert [c for c in host.commands()[calls:] if c == ["uri"]] == [["uri"]]


def test_no_uri_rule_means_virsh_uri_is_never_asked(fake_host: Make, tmp_path: Path) -> None:
    policy_file = tmp_path / "guests.yaml"
    policy_file.write_text("guests:\n  - match: db\n    order: 1\n")
    host = fake_host(two_guests(), f"GUEST_POLICY={policy_file}\n")
    inproc(host, "stop")
    inproc(host, "start")
    assert "uri" not in host.verbs()


@pytest.mark.parametrize("which", ["list", "pending"])
@pytest.mark.parametrize("what", ["symlink", "huge"])
def test_a_record_that_cannot_be_read_is_set_aside_never_lost(fake_host: Make, which: str,
                                                               what: str) -> None:
    """What an unreadable list or pending file records is unknown, not empty: `status` does
    not say started, and `stop`/`start` move it aside instead of replacing or removing it."""
    host = fake_host(two_guests())
    path = host.list_file if which == "list" else host.pending_file
    if what == "symlink":
        target = host.root / "elsewhere"
        target.write_text("default 11111111-2222-3333-4444-555555555555\n")
        path.symlink_to(target)
    else:
        with open(path, "wb") as handle:
            handle.truncate(20 * 1024 * 1024)
    status = inproc(host, "status")
    assert (status.code, status.out) == (3, "stopped, with saved guests\n"), status
    command = "stop" if which == "pending" else "start"
    run = inproc(host, command)
    assert run.code == 1 and f"{path} could not be read; kept as " in run.err, run
    [aside] = [p for p in host.state_dir.iterdir() if ".unreadable-" in p.name]
    assert aside.name.startswith(path.name + ".unreadable-")
    assert aside.is_symlink() if what == "symlink" else aside.stat().st_size > 0
