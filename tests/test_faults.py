"""Never lose a guest: hangs, signals, concurrent runs, damaged state, garbage output."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from virtguests import execution, observe
from virtguests.testing import FakeClock, FakeHost, exited, run_inprocess

Make = Callable[..., FakeHost]


def guests(*items: dict[str, Any]) -> dict[str, Any]:
    return {"uris": {"default": {"guests": list(items)}}}


def wait_for(predicate: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    """Poll until *predicate* holds; fail (killing *proc*) after 60 s or if it exits."""
    deadline = time.monotonic() + 60
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"never saw {what}; virtguests exit {proc.returncode}\n"
                                 f"{out}{err}")
        time.sleep(0.05)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll until *predicate* holds; fail after 60 s."""
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def later(host: FakeHost, seconds: float) -> None:
    """Let *seconds* of the host's virtual time pass after an in-process run."""
    assert host.now_file is not None, "no in-process run yet"
    FakeClock(float(host.now_file.read_text()) + seconds, now_file=host.now_file)


def leftover_fakes(host: FakeHost) -> list[str]:
    proc = subprocess.run(["pgrep", "-af", str(host.bin / "virsh")], capture_output=True,
                          text=True)
    return [ln for ln in proc.stdout.splitlines() if "pgrep" not in ln]


def test_hung_uri_is_given_up_with_defaults_while_others_finish(fake_host: Make) -> None:
    sick = {"guests": [{"name": "far1"}, {"name": "far2"}]}
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}, {"name": "db"}]},
                               "test:///wedged": sick}},
                     'URIS="test:///wedged default"\n')
    assert run_inprocess(host, "stop")[0].code == 0  # a good night: names are remembered
    assert run_inprocess(host, "start")[0].code == 0
    host.set_host({"uris": {"default": {"guests": [{"name": "web"}, {"name": "db"}]},
                            "test:///wedged": {**sick, "hang": True}}})
    host.log_file.unlink()
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    # one listing, killed after QUERY_TIMEOUT; nothing else tried there
    assert fake_state(host)["uris"]["test:///wedged"]["calls"] == 1
    assert "Suspending web: done" in run.lines and "Suspending db: done" in run.lines
    assert "Can't connect to test:///wedged. Skipping." in run.lines
    assert "timed out after 10s" in run.err
    assert "last seen running there: far1, far2" in run.err


def test_a_hung_virsh_process_is_killed_and_none_is_left(fake_host: Make) -> None:
    """The process side of every hang above (those run in-process): the fake that
    hangs is killed at the timeout, and no virsh process outlives the run.  Only a
    hung URI: whether its fake had started within 1 s or not, it must be gone."""
    host = fake_host({"uris": {"test:///wedged": {"hang": True, "guests": [{"name": "far"}]}}},
                     'URIS="test:///wedged"\nQUERY_TIMEOUT=1\n')
    run = host.run("stop")
    assert run.code == 1
    assert "Can't connect to test:///wedged. Skipping." in run.lines
    assert "timed out after 1s and was killed" in run.err
    assert leftover_fakes(host) == []


def on_uri(host: FakeHost, uri: str) -> list[list[str]]:
    """The virsh commands run on *uri*, in order."""
    out = []
    for call in host.calls():
        argv = list(call["argv"])
        where = argv[1] if argv[:1] in (["-c"], ["--connect"]) else "default"
        if where == uri:
            out.append(argv[2:] if where != "default" else argv)
    return out


def test_sigterm_mid_stop_then_start_resumes_exactly_the_saved(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [
        {"name": f"g{i:02d}", "save_seconds": 0.3} for i in range(20)]}}})
    proc = host.spawn("stop")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(1 for c in host.commands() if c[0] == "managedsave") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "got SIGTERM" in err and "stop interrupted by a signal" in err
    saved = host.managed_saved()
    assert 3 <= len(saved) < 20
    assert {ln.split()[1].rstrip(":") for ln in out.splitlines()
            if ln.endswith(": done")} == saved
    assert len(host.list_file.read_text().split()) == 21  # URI + every running guest
    report = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    assert Counter(g["outcome"] for g in report["guests"])["interrupted"] == 20 - len(saved)
    start = host.run("start")
    assert start.code == 0, start.err
    resumed = {ln.split()[2].rstrip(":") for ln in start.lines if ln.endswith(": done")}
    assert resumed == saved
    assert sum(1 for ln in start.lines if ln.endswith("already active")) == 20 - len(saved)
    assert host.active() == {f"g{i:02d}" for i in range(20)}


def test_two_concurrent_stops_never_act_twice(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [
        {"name": f"g{i}", "save_seconds": 0.2} for i in range(5)]}}})
    procs = [host.spawn("stop") for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    saves = Counter(c[1] for c in host.commands() if c[0] == "managedsave")
    assert len(saves) == 5 and set(saves.values()) == {1}
    assert any("waiting for another virtguests" in err for _, err in results)
    assert host.run("start").code == 0 and len(host.active()) == 5


def test_damaged_list_file_good_lines_still_resumed(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}, {"name": "db"}]}}})
    assert run_inprocess(host, "stop")[0].code == 0
    web, db = host.uuid("web"), host.uuid("db")
    host.list_file.write_text(f"default {web} zzzz\n%%%garbage\ndefault {db[:10]}")
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    assert "Resuming guest web: done" in run.lines
    assert f"{host.list_file}:1: not a UUID, skipped: 'zzzz'" in run.err
    assert f"{host.list_file}:2: no guests listed for URI '%%%garbage'" in run.err
    assert f"{host.list_file}:3: not a UUID, skipped" in run.err
    assert "Traceback" not in run.err


def write_virsh(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_garbage_virsh_output_is_a_clear_error(fake_host: Make, tmp_path: Path) -> None:
    host = fake_host({"uris": {"default": {"guests": []}}}, "CONNECT_RETRIES=0\n")
    bad = tmp_path / "garbage-virsh"
    write_virsh(bad, 'echo "Welcome to virsh, the virtualization interactive terminal."')
    run = host.run("--virsh", str(bad), "stop")
    assert run.code == 1
    assert f"{bad} list --uuid --name: unexpected output line 1" in run.err
    assert "Traceback" not in run.err


def test_connect_retries_survive_a_libvirtd_that_is_still_starting(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"unreachable_calls": 3,
                                           "guests": [{"name": "web"}]}}},
                     "RETRIES_SLEEP=0.05\n")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 0, run.err
    assert "Suspending web: done" in run.lines
    assert host.commands()[:5] == [[observe.batch(observe.RUNNING)]] * 4 + [
        ["managedsave", host.uuid("web")]]


def test_timed_out_calls_are_not_retried(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"hang": True, "guests": [{"name": "web"}]}}},
                     "QUERY_TIMEOUT=1\nCONNECT_RETRIES=10\n")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1 and "timed out after 1s" in run.err
    assert fake_state(host)["uris"]["default"]["calls"] == 1  # not retried


def test_a_hung_save_costs_that_guest_not_its_uri(fake_host: Make) -> None:
    """Found: a save that timed out gave its whole URI up ("trying shutdown", and nothing
    was tried).  libvirtd still answers (the liveness check): the guest's chain goes on,
    the other guests are saved."""
    host = fake_host({"uris": {
        "default": {"guests": [{"name": "stuck", "hang": ["managedsave"],
                                "shutdown_seconds": 0.2}, {"name": "next"}]},
        "test:///fine": {"guests": [{"name": "far"}]}}},
        'URIS="default test:///fine"\nON_SHUTDOWN="suspend shutdown poweroff"\n'
        "SAVE_TIMEOUT=1\n")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    assert "saving guest stuck failed: timed out after 1s and was killed; trying shutdown" \
        in run.err
    assert "gave up" not in run.err
    assert "Suspending next: done" in run.lines and "Suspending far: done" in run.lines
    stuck = host.uuid("stuck")
    # the listing, the save that hung (killed, so the fake could not log it), the
    # liveness check, the look for a save in progress, then the other guest's save
    assert on_uri(host, "default")[:4] == [[observe.batch(observe.RUNNING)], ["list", "--uuid"],
                                           ["domstate", "--reason", stuck],
                                           ["managedsave", host.uuid("next")]]
    assert [s[:2] for s in report_steps(host, "stuck")] == [("suspend", "failed"),
                                                           ("shutdown", "shut off")]
    assert host.active() == set() and host.managed_saved() == {"next"}
    assert host.list_file.read_text().splitlines() == [
        f"default {stuck} {host.uuid('next')}",
        f"test:///fine {host.uuid('far', 'test:///fine')}"]


def test_a_save_outlasting_save_timeout_is_left_to_finish(fake_host: Make) -> None:
    """libvirt goes on with a save after virsh is killed: the guest is not shut down or
    powered off while its memory is written, stays recorded, and start restores it."""
    host = fake_host(guests({"name": "big", "save_seconds": 4}, {"name": "web"},
                            {"name": "db"}),
                     'ON_SHUTDOWN="suspend shutdown poweroff"\nSAVE_TIMEOUT=1\n')
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    big = host.uuid("big")
    assert ("saving guest big failed: timed out after 1s and was killed; libvirt is still "
            "saving it: not shutting it down or powering it off") in run.err
    assert "trying" not in run.err and "gave up" not in run.err
    assert "Suspending web: done" in run.lines and "Suspending db: done" in run.lines
    assert not [c for c in host.commands() if c[0] in ("shutdown", "destroy")]
    assert report_steps(host, "big")[-1][:2] == ("suspend", "save in progress")
    assert big in host.list_file.read_text().split()
    assert host.virsh("domstate", "--reason", "big").stdout.strip() == "paused (saving)"
    later(host, 4)  # the save's own time: it has ended by then, whenever the run did
    assert host.virsh("domstate", "--reason", "big").stdout.strip() == "shut off (saved)"
    assert run_inprocess(host, "start")[0].code == 0
    assert host.active() == {"big", "web", "db"}


def journal(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[list[str]]]:
    """Journal the fake's commands as dispatched (killed ones too); returns a reader."""
    path = host.root / "journal.jsonl"
    monkeypatch.setenv("VIRTGUESTS_FAKE_JOURNAL", str(path))

    def read() -> list[list[str]]:
        if not path.exists():
            return []
        return [json.loads(line)["argv"] for line in path.read_text().splitlines()]

    return read


def test_a_hung_progress_query_costs_no_other_guest(fake_host: Make,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Found: a domjobinfo hanging on one guest (its QEMU hung) gave every other guest
    up although libvirtd answered.  Now only that save's progress is no longer asked."""
    host = fake_host(guests({"name": "big", "save_seconds": 12, "hang": ["domjobinfo"]},
                            {"name": "web"}, {"name": "db"}), "QUERY_TIMEOUT=1\n")
    dispatched = journal(host, monkeypatch)
    run, _ = run_inprocess(host, "stop")  # the 1 s timeouts in virtual time too
    assert run.code == 0, run.err
    assert [ln for ln in run.lines if ln.startswith("Suspending big: ")] == [
        "Suspending big: ...", "Suspending big: ...", "Suspending big: ...",
        "Suspending big: done"]
    assert "Suspending web: done" in run.lines and "Suspending db: done" in run.lines
    calls = dispatched()
    assert sum(1 for c in calls if c[0] == "domjobinfo") == 1  # asked once, never again
    assert ["list", "--uuid"] in calls  # the liveness check
    assert host.managed_saved() == {"big", "web", "db"}


@pytest.mark.parametrize("mode", ["", "PARALLEL_SHUTDOWN=3\n"])
def test_a_shutdown_request_hung_on_one_guest_costs_no_other_guest(
        fake_host: Make, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A tenant's unresponsive guest agent keeps ``virsh shutdown`` busy: that guest
    goes on to poweroff, the others shut down."""
    monkeypatch.setattr(execution, "AGENT_SHUTDOWN_WAIT", 0.0)  # the request: 1 s here
    host = fake_host(guests({"name": "a", "shutdown_seconds": 0.3},
                            {"name": "deaf", "hang": ["shutdown"]},
                            {"name": "c", "shutdown_seconds": 0.3}),
                     f'ON_SHUTDOWN="shutdown poweroff"\nQUERY_TIMEOUT=1\n'
                     f"SHUTDOWN_TIMEOUT=30\n{mode}")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    assert ("shutdown of guest deaf failed: timed out after 1s and was killed; trying "
            "poweroff") in run.err
    assert "Powering off guest deaf: done" in run.lines
    assert "Shutdown of guest a complete." in run.lines
    assert "Shutdown of guest c complete." in run.lines
    assert "gave up" not in run.err and host.active() == set()
    assert [s[:2] for s in report_steps(host, "deaf")] == [("shutdown", "failed"),
                                                          ("poweroff", "powered off")]


def test_a_hung_time_sync_at_start_costs_no_other_guest(fake_host: Make) -> None:
    """Found: with SYNC_TIME=1 a hung ``domtime --sync`` kept the other guests from
    being resumed."""
    host = fake_host(guests({"name": "web", "agent": True},
                            {"name": "db", "agent": True, "hang": ["domtime"]},
                            {"name": "app", "agent": True}),
                     "SYNC_TIME=1\nQUERY_TIMEOUT=1\nPARALLEL_START=1\n")
    assert run_inprocess(host, "stop")[0].code == 0
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err
    assert [ln for ln in run.lines if ln.startswith("Resuming guest ")] == [
        "Resuming guest web: done", "Resuming guest db: done", "Resuming guest app: done"]
    assert "could not sync the time of guest db: timed out after 1s and was killed" \
        in run.err
    assert "gave up" not in run.err
    assert ["domtime", "--sync", host.uuid("app")] in host.commands()
    assert host.active() == {"web", "db", "app"}
    assert not host.list_file.exists() and not host.pending_file.exists()


def test_queued_guests_get_their_requests_parallel_shutdown_at_a_time(
        fake_host: Make) -> None:
    """When the URI's timeout expires, the guests still queued get a shutdown request
    too, but PARALLEL_SHUTDOWN at a time: not one virsh each, all at once."""
    host = fake_host({"uris": {"default": {"guests": [
        {"name": f"g{i}", "ignore_shutdown": True} for i in range(6)]}},
        "faults": [{"cmd": "shutdown", "action": "slow", "seconds": 0.3}]},
        "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=2\nSHUTDOWN_TIMEOUT=1\n")
    run, _ = run_inprocess(host, "stop")
    assert "Timeout expired while shutting down domains" in run.lines
    requests = [c for c in host.calls() if c["argv"][0] == "shutdown"]
    assert sorted(c["argv"][1] for c in requests) == sorted(
        host.uuid(f"g{i}") for i in range(6))
    assert all(c["virtual_end"] - c["virtual_start"] == pytest.approx(0.3) for c in requests)
    edges = sorted([(c["virtual_start"], 1) for c in requests]
                   + [(c["virtual_end"], -1) for c in requests],
                   key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak <= 2, requests


def test_kill_9_during_stop_then_rerun_protects_everyone(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [
        {"name": f"g{i}", "save_seconds": 0.3} for i in range(8)]}}})
    proc = host.spawn("stop")
    wait_for(lambda: sum(1 for c in host.commands() if c[0] == "managedsave") >= 2,
             "two managedsave calls", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    rerun = host.run("stop")  # systemd runs stop again (or the next boot's start follows)
    assert "was never resumed by a start" in rerun.err
    # the save that was in flight when we died may still hold the guest's job lock:
    # the rerun waits for it and counts the guest as saved by that job
    assert rerun.code == 0, rerun.err
    wait_until(lambda: host.active() == set(), "every guest saved or off")
    assert len(host.list_file.read_text().split()) == 9
    assert host.run("start").code == 0
    assert len(host.active()) == 8



def test_unwritable_state_dir_at_shutdown_still_protects_guests(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}, {"name": "db"}]}}})
    run, _ = run_inprocess(host, "--state-dir", "/dev/null/state", "stop")  # ENOTDIR
    assert run.code == 1
    assert "cannot lock /dev/null/state/virtguests.lock" in run.err
    assert "cannot write the list file /dev/null/state/libvirt-guests" in run.err
    assert "Traceback" not in run.err
    assert run.lines[-2:] == ["Suspending db: ...", "Suspending db: done"]
    assert host.managed_saved() == {"web", "db"}


def test_sigterm_while_waiting_for_a_shutdown_is_not_a_timeout(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [
        {"name": "slow", "shutdown_seconds": 30}, {"name": "next"}]}}},
        "ON_SHUTDOWN=shutdown\n")
    proc = host.spawn("stop")
    wait_for(lambda: any(c[0] == "shutdown" for c in host.commands()), "a shutdown call", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "failed to complete in time" not in out and "Not tracking" not in out
    assert "Starting shutdown on guest: next" not in out  # nothing new after the signal
    assert "stop interrupted by a signal: 2 interrupted" in err
    report = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    assert {g["name"]: g["outcome"] for g in report["guests"]} == {
        "slow": "interrupted", "next": "interrupted"}


def test_closed_stdout_and_stderr_do_not_interrupt_a_stop(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}, {"name": "db"}]}}})
    read_end, write_end = os.pipe()
    os.close(read_end)  # like a journal that went away: every write fails with EPIPE
    proc = subprocess.run([sys.executable, "-m", "virtguests", *host.argv("stop")],
                          env=host.env(), stdout=write_end, stderr=write_end,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    os.close(write_end)
    assert proc.returncode == 0
    assert host.managed_saved() == {"web", "db"}
    assert len(host.list_file.read_text().split()) == 3


# -- a wedged URI is given up once (issue 10, item 7) ------------------------------------

WEDGE_CASES = [("suspend", "", 1), ("suspend", "PARALLEL_SUSPEND=3\n", 3),
               ("shutdown poweroff", "", 1), ("shutdown poweroff", "PARALLEL_SHUTDOWN=3\n", 3),
               ("suspend shutdown poweroff", "", 1)]


@pytest.mark.parametrize(("chain", "extra", "in_flight"), WEDGE_CASES)
def test_a_uri_that_hangs_after_its_listing_costs_one_timeout_not_one_per_guest(
        fake_host: Make, monkeypatch: pytest.MonkeyPatch, chain: str, extra: str,
        in_flight: int) -> None:
    """Found: a URI that hangs after its listing cost a full timeout per guest, serially.

    The calls in flight time out, one liveness check (shared by all of them) times out
    too, and nothing more is tried there."""
    monkeypatch.setattr(execution, "JOB_LOCK_WAIT", 0.0)  # requests time out after 1 s here
    monkeypatch.setattr(execution, "AGENT_SHUTDOWN_WAIT", 0.0)
    names = [f"w{i}" for i in range(5)]
    ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(5)]
    host = fake_host({"uris": {
        "test:///wedged": {"hang_after_calls": 1, "guests": [
            {"name": n, "uuid": u} for n, u in zip(names, ids)]},
        "default": {"guests": [{"name": "web", "shutdown_seconds": 2}]}}},
        f'URIS="test:///wedged default"\nON_SHUTDOWN="{chain}"\nSAVE_TIMEOUT=2\n'
        f"QUERY_TIMEOUT=1\nSHUTDOWN_TIMEOUT=30\n{extra}")
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    # the listing, then only the calls in flight when it wedged and the liveness check
    # (each killed after its timeout, so the fake could not log them; its own counter
    # counts every process)
    watch = [] if chain.startswith("suspend") else [["event", "--loop", "--event",
                                                      "lifecycle"]]
    assert on_uri(host, "test:///wedged") == [[observe.batch(observe.RUNNING)], *watch]
    assert fake_state(host)["uris"]["test:///wedged"]["calls"] == \
        1 + len(watch) + in_flight + 1
    # their errors, without "trying" (nothing more is tried there), and the summary
    # (the first call that timed out, then the check)
    assert run.err.count("timed out after") == in_flight + 2
    assert "trying" not in run.err
    [given_up] = [ln for ln in run.err.splitlines() if "gave up on test:///wedged" in ln]
    assert re.search(r"timed out after [12]s and was killed; then \S+ -c test:///wedged "
                     r"list --uuid: timed out after 1s and was killed\)", given_up), given_up
    assert given_up.endswith("recorded so that start brings them back: " + ", ".join(names))
    wedged_line = next(ln for ln in host.list_file.read_text().splitlines()
                       if ln.startswith("test:///wedged "))
    assert wedged_line.split()[1:] == ids
    assert host.active() == set()  # the other URI is handled as usual


@pytest.mark.parametrize("config", ["", "START_DELAY=5\n"])
def test_a_uri_that_hangs_at_start_keeps_its_guests_pending(fake_host: Make,
                                                            config: str) -> None:
    """The first start that hangs gives the URI up: its guests stay pending and named,
    the other URI's guests are resumed, and the next start retries them."""
    two = {"default": {"guests": [{"name": "web"}]},
           "test:///far": {"guests": [{"name": f"f{i}"} for i in range(4)]}}
    host = fake_host({"uris": two}, 'URIS="default test:///far"\n')
    assert run_inprocess(host, "stop")[0].code == 0
    host.set_config(f'URIS="default test:///far"\nSAVE_TIMEOUT=2\nQUERY_TIMEOUT=1\n{config}')
    far = [host.uuid(f"f{i}", "test:///far") for i in range(4)]
    saved = {"state": "shutoff", "managed_save": True}
    sick = {"uris": {"default": {"guests": [{"name": "web", "uuid": host.uuid("web"),
                                             **saved}]},
                     "test:///far": {"hang_after_calls": 1 if config else 0,
                                     "hang": not config,
                                     "guests": [{"name": f"f{i}", "uuid": far[i], **saved}
                                                for i in range(4)]}}}
    host.set_host(sick)
    host.log_file.unlink()
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    assert "Resuming guest web: done" in run.lines
    # one start hung (killed after SAVE_TIMEOUT, so never logged); nothing else tried
    assert [c for c in on_uri(host, "test:///far") if c[0] == "start"] == []
    assert report_steps(host, "f0") == [("start", "failed",
                                         "timed out after 2s and was killed")]
    assert all(report_steps(host, f"f{i}")[0][1] == "given up" for i in (1, 2, 3))
    assert run.err.count("timed out after 2s") == 2  # f0's error and the summary
    assert "gave up on test:///far: a call there timed out (" in run.err
    assert "kept for the next start: f0, f1, f2, f3" in run.err
    assert run.err.count("kept for the next start: ") == 1  # named once, not twice
    assert host.pending_file.read_text() == f"test:///far {' '.join(far)}\n"
    status, _ = run_inprocess(host, "status")
    assert (status.code, status.lines[0]) == (3, "stopped, with saved guests")
    host.set_host({"uris": {**sick["uris"], "test:///far": {
        "guests": [{"name": f"f{i}", "uuid": far[i], **saved} for i in range(4)]}}})
    again, _ = run_inprocess(host, "start")
    assert again.code == 0, again.err
    assert host.active("test:///far") == {f"f{i}" for i in range(4)}
    assert not host.pending_file.exists()


# -- never destroy a guest whose save is in progress (issue 10, item 9) -------------------


def fake_state(host: FakeHost) -> dict[str, Any]:
    """The fake's own state: its per-URI ``calls`` counter counts killed processes too."""
    state: dict[str, Any] = json.loads(
        host.host_file.with_name(host.host_file.name + ".state.json").read_text())
    return state


def report_steps(host: FakeHost, name: str) -> list[tuple[str, str, str]]:
    doc = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    [guest] = [g for g in doc["guests"] if g["name"] == name]
    return [(s["action"], s["result"], s["detail"]) for s in guest["steps"]]


CHAINS = ["suspend", "suspend shutdown poweroff", "shutdown poweroff", "poweroff"]


@pytest.mark.parametrize("state", ["running", "paused"])
@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("saving", [10, 100])
def test_a_save_by_another_job_is_waited_for_and_counts_as_saved(
        fake_host: Make, chain: str, saving: int, state: str) -> None:
    """Found: a rerun after kill -9 mid-save failed on libvirt's lock, then powered the
    guest off and lost its memory.  Here another job's save ends 10 s (before libvirt's
    30 s lock wait) or 100 s (after it) into the run.  Found too: a guest paused before
    that save keeps its reason (``paused (user)``), only domjobinfo shows the save, and
    it was powered off."""
    host = fake_host(guests({"name": "busy", "saving_seconds": saving, "state": state},
                            {"name": "idle", "shutdown_seconds": 1}),
                     f'ON_SHUTDOWN="{chain}"\nSHUTDOWN_TIMEOUT=20\nSAVE_TIMEOUT=600\n')
    run, _ = run_inprocess(host, "stop")
    busy = host.uuid("busy")
    assert ["destroy", busy] not in host.commands()
    assert "busy" in host.managed_saved()
    assert report_steps(host, "busy")[-1] == ("suspend", "saved", "saved by another job")
    assert host.virsh("domstate", "--reason", "busy").stdout.strip() == "shut off (saved)"
    assert busy in host.list_file.read_text().split()
    assert "Traceback" not in run.err
    assert not re.search(r"guest busy failed: .*; trying", run.err), run.err
    if saving > 30:  # the second job waited for the lock in vain: we saw the save running
        assert "guest busy on default is being saved by another job" in run.err


@pytest.mark.parametrize("chain", ["suspend shutdown poweroff", "shutdown poweroff"])
def test_a_failed_call_naming_a_saves_lock_is_enough_to_wait(fake_host: Make,
                                                             chain: str) -> None:
    """When domjobinfo cannot tell (it fails here), the failed managedsave's or
    shutdown's own words (the state-change lock held by a ManagedSave job,
    fixtures/qemu-*-busy.yaml) still keep the guest from being powered off."""
    host = fake_host({"uris": {"default": {"guests": [
        {"name": "busy", "saving_seconds": 100, "state": "paused"}]}},
        "faults": [{"cmd": "domjobinfo", "action": "fail", "error": "internal"}]},
        f'ON_SHUTDOWN="{chain}"\nSHUTDOWN_TIMEOUT=20\nSAVE_TIMEOUT=600\n')
    run, _ = run_inprocess(host, "stop")
    assert ["destroy", host.uuid("busy")] not in host.commands()
    assert ("guest busy on default is being saved by another job (the failed call said: "
            "Timed out during operation: cannot acquire state change lock (held by "
            "monitor=remoteDispatchDomainManagedSave))") in run.err
    assert report_steps(host, "busy")[-1] == ("suspend", "saved", "saved by another job")
    assert host.managed_saved() == {"busy"}


@pytest.mark.parametrize("chain", ["poweroff", "suspend shutdown poweroff"])
@pytest.mark.parametrize("nth", [2, 3, 50])
def test_a_domjobinfo_that_fails_while_waiting_for_a_save_never_ends_the_wait(
        fake_host: Make, chain: str, nth: int) -> None:
    """Found in CI on real libvirt: the wait for another job's save of a paused guest
    ended when one ``domjobinfo`` failed (there, because the save had just ended and the
    guest was off; the ``domstate`` before it still said paused), and the guest was
    sent ``destroy``.  A question that cannot tell is no answer: the wait goes on until
    the state says how the save ended.  *nth*: which domjobinfo fails (50: none, for
    contrast)."""
    host = fake_host({"uris": {"default": {"guests": [
        {"name": "busy", "saving_seconds": 10, "state": "paused"}]}},
        "faults": [{"cmd": "domjobinfo", "nth": nth, "action": "fail", "error": "internal"}]},
        f'ON_SHUTDOWN="{chain}"\nSHUTDOWN_TIMEOUT=20\nSAVE_TIMEOUT=600\n')
    run, _ = run_inprocess(host, "stop")
    assert ["destroy", host.uuid("busy")] not in host.commands(), run
    assert report_steps(host, "busy")[-1] == ("suspend", "saved", "saved by another job")
    assert host.managed_saved() == {"busy"}
    assert run.code == 0, run


@pytest.mark.parametrize("chain", CHAINS)
def test_a_save_by_another_job_that_outlasts_save_timeout_is_left_alone(
        fake_host: Make, chain: str) -> None:
    host = fake_host(guests({"name": "busy", "saving_seconds": 5000}),
                     f'ON_SHUTDOWN="{chain}"\nSHUTDOWN_TIMEOUT=20\nSAVE_TIMEOUT=60\n')
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    assert ["destroy", host.uuid("busy")] not in host.commands()
    assert host.virsh("domstate", "--reason", "busy").stdout.strip() == "paused (saving)"
    assert ("guest busy on default is still being saved by another job; not shutting it "
            "down or powering it off") in run.err
    assert report_steps(host, "busy")[-1][1] == "save in progress"
    assert host.uuid("busy") in host.list_file.read_text().split()


@pytest.mark.parametrize("state", ["running", "paused"])
@pytest.mark.parametrize("listed", [True, False], ids=["listed", "named"])
def test_start_keeps_a_recorded_guest_another_job_is_saving(fake_host: Make, state: str,
                                                            listed: bool) -> None:
    """Found in review: at start, a recorded guest another job was saving looked active
    (paused), was reported "already active" and its record dropped; once that save
    ended it was shut off with an image and nothing would resume it.  Whether the
    guest is known active from the listing (a libvirt-guests list file: bare UUIDs)
    or only from ``virsh start``'s refusal (our own list file names the guests), it
    stays recorded and the next start resumes it."""
    host = fake_host(guests({"name": "busy"}, {"name": "idle"}), "PARALLEL_START=1\n")
    busy, idle = host.uuid("busy"), host.uuid("idle")
    if listed:
        host.list_file.write_text(f"default {busy} {idle}\n")
    else:
        assert run_inprocess(host, "stop")[0].code == 0
        assert host.list_file.read_text() == f"default {busy} {idle}\n"
    host.set_host(guests({"name": "busy", "uuid": busy, "saving_seconds": 100,
                          "state": state},
                         {"name": "idle", "uuid": idle, "state": "shutoff",
                          "managed_save": True}))
    run, _ = run_inprocess(host, "start")
    assert run.code == 0, run.err  # nothing is lost: a warning, not a failure
    assert "Resuming guest busy: already active" not in run.lines
    assert "Resuming guest busy: a save by another job is in progress" in run.lines
    assert ("guest busy on default is being saved by another job (") in run.err
    assert "not resumed, kept for the next start" in run.err
    assert "Resuming guest idle: done" in run.lines
    assert report_steps(host, "busy")[-1][:2] == ("start", "save in progress")
    assert ["start", busy] not in host.commands() or not listed
    assert ["domtime", "--sync", busy] not in host.commands()
    assert host.pending_file.read_text() == f"default {busy}\n"
    status, _ = run_inprocess(host, "status")
    assert (status.code, status.lines[0]) == (3, "stopped, with saved guests")
    host.set_host(guests({"name": "busy", "uuid": busy, "state": "shutoff",
                          "managed_save": True},
                         {"name": "idle", "uuid": idle}))
    again, _ = run_inprocess(host, "start")
    assert again.code == 0, again.err
    assert "Resuming guest busy: done" in again.lines
    assert not host.pending_file.exists() and not host.list_file.exists()


# -- a failed status poll never abandons a guest (issue 10, item 8) ------------------------


def flaky_polls(failures: int) -> list[dict[str, Any]]:
    """Fault rules: the first *failures* status checks (``list --uuid``) cannot connect."""
    return [{"cmd": "list", "options": ["uuid"], "nth": nth, "action": "fail",
             "error": "connect"} for nth in range(1, failures + 1)]


@pytest.mark.parametrize("mode", ["", "PARALLEL_SHUTDOWN=3\n"])
@pytest.mark.parametrize("failures", [1, 4])
def test_a_failed_poll_never_abandons_a_guest_that_ignores_acpi(
        fake_host: Make, mode: str, failures: int) -> None:
    """Found: one failed poll printed "Not tracking it anymore", and a guest ignoring
    ACPI was left running, in serial and in parallel mode."""
    host = fake_host({**guests({"name": "stubborn", "ignore_shutdown": True},
                               {"name": "quick", "shutdown_seconds": 3}),
                      "faults": flaky_polls(failures)},
                     f'ON_SHUTDOWN="shutdown poweroff"\nSHUTDOWN_TIMEOUT=20\n{mode}')
    run, _ = run_inprocess(host, "stop")
    assert "Not tracking" not in run.out
    assert "cannot check which guests on default are still running" in run.err
    assert "Powering off guest stubborn: done" in run.lines
    assert "Shutdown of guest quick complete." in run.lines
    assert host.active() == set()
    assert [s[:2] for s in report_steps(host, "stubborn")] == [("shutdown", "timed out"),
                                                             ("poweroff", "powered off")]


# -- nothing a guest controls decides another guest's fate (issue 10, item 10) -------------

HOSTILE = ["web': Stopped", "web': Stopped Shutdown", "x': Stopped Shutdown' for domain 'web",
           "we", "b", "web web", "'web'", 'w"e"b']


@pytest.mark.parametrize("mode", ["", "PARALLEL_SHUTDOWN=4\n"])
def test_hostile_names_never_stand_for_another_guest(fake_host: Make, mode: str) -> None:
    """Guests named after event syntax or after parts of another guest's name stop on
    their own; the guest they imitate ignores ACPI and is powered off, not counted."""
    host = fake_host(guests({"name": "web", "ignore_shutdown": True},
                            *({"name": n, "shutdown_seconds": 1 + i % 3}
                              for i, n in enumerate(HOSTILE))),
                     f'ON_SHUTDOWN="shutdown poweroff"\nSHUTDOWN_TIMEOUT=15\n{mode}')
    run, _ = run_inprocess(host, "stop")
    assert "Shutdown of guest web complete." not in run.lines
    assert "Powering off guest web: done" in run.lines
    for name in HOSTILE:
        assert f"Shutdown of guest {name} complete." in run.lines
    assert host.active() == set()
    assert [s[:2] for s in report_steps(host, "web")] == [("shutdown", "timed out"),
                                                        ("poweroff", "powered off")]


def warm_up(host: FakeHost) -> None:
    """Run the fake once, unlogged, before a run with 1 s timeouts: its first process
    compiles it, which can take longer than that on a busy machine."""
    env = host.env()
    del env["VIRTGUESTS_FAKE_LOG"]
    env["VIRTGUESTS_FAKE_FAULTS"] = "off"
    subprocess.run([str(host.bin / "virsh"), "domid", "0"], env=env, timeout=60,
                   stdin=subprocess.DEVNULL, capture_output=True)


def test_a_virsh_whose_child_holds_its_output_open_costs_no_timeout(fake_host: Make) -> None:
    """Every virsh leaves a child holding stdout and stderr in its own session, as ssh's
    ControlPersist master does: with QUERY_TIMEOUT=1 the listing still succeeds (sh's
    2 s drain made it time out and skipped the URI) and every guest is saved while every
    holder is still alive: the run neither waited for them nor killed them (a holder in
    virsh's own session: tests/test_virsh.py)."""
    host = fake_host(guests({"name": "web"}, {"name": "db"}), "QUERY_TIMEOUT=1\n")
    warm_up(host)
    virsh = host.holding_virsh()
    try:
        run = host.run("--virsh", str(virsh), "stop")
        holders = host.holders()
        assert run.code == 0, run
        assert "Suspending web: done" in run.lines and "Suspending db: done" in run.lines
        assert host.managed_saved() == {"web", "db"}
        # a holder per virsh process: the listing's session and the saves' one
        assert len(holders) == len({call["pid"] for call in host.calls()}) >= 2
        assert not any(exited(pid) for pid in holders)
    finally:
        host.release_holders()


def test_processes_counted_are_the_processes_run_killed_ones_included(
        fake_host: Make) -> None:
    """The run report's (and -v's) virsh processes per URI are the virsh processes that
    started there, as a wrapper that notes each exec shows: the session hung at its
    connection on a hung URI, a save killed at its timeout and the liveness check after
    it included."""
    host = fake_host({"uris": {
        "default": {"guests": [{"name": "web"}, {"name": "stuck", "hang": ["managedsave"]}]},
        "test:///wedged": {"hang": True, "guests": [{"name": "far"}]}}},
        'URIS="default test:///wedged"\nQUERY_TIMEOUT=1\nSAVE_TIMEOUT=2\n')
    warm_up(host)
    execs = host.root / "execs"
    wrapper = host.root / "noting" / "virsh"
    wrapper.parent.mkdir()
    wrapper.write_text(
        '#!/bin/sh\nif [ "$1" = -c ]; then uri=$2; else uri=default; fi\n'
        f'echo "$$ $uri" >> {shlex.quote(str(execs))}\n'
        f'exec {shlex.quote(str(host.bin / "virsh"))} "$@"\n')
    wrapper.chmod(0o755)
    run = host.run("-v", "--virsh", str(wrapper), "stop")
    assert run.code == 1 and "Suspending web: done" in run.lines, run
    pids: dict[str, set[str]] = {}
    for line in execs.read_text().splitlines():
        pid, uri = line.split(" ", 1)
        pids.setdefault(uri, set()).add(pid)
    report = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    counted = {e["uri"]: (e["processes"], e["connections"]) for e in report["virsh"]}
    assert counted == {uri: (len(p), len(p)) for uri, p in pids.items()}
    # default: the listings' session, the saves' one (killed with the stuck save) and
    # the liveness check after it; the hung URI: its session, killed while connecting
    assert counted["test:///wedged"] == (1, 1) and counted["default"][0] >= 3
    for uri, (processes, connections) in counted.items():
        assert (f"virtguests: virsh on {uri}: {processes} processes, {connections} "
                "connections") in run.err.splitlines()
