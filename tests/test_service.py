"""stop and start on a simulated host: messages, files, exit codes.

Most tests run virtguests and the fake virsh in this process on a virtual clock
(``run_inprocess``); the few marked so run ``python -m virtguests`` as a process, end to
end, as systemd starts it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from virtguests import observe
from virtguests.testing import FakeHost, Run, run_inprocess

Make = Callable[..., FakeHost]


def guests(*items: dict[str, Any], uri: str = "default") -> dict[str, Any]:
    return {"uris": {uri: {"guests": list(items)}}}


def run_here(host: FakeHost, *args: str) -> Run:
    """virtguests in this process against the fake in this process, on a virtual clock.

    Once a test has run this, the fake reads that clock's time from a file: the test's
    later runs must be in-process too (a process run would wait on a clock that stands).
    """
    return run_inprocess(host, *args)[0]


def test_suspend_saves_persistent_skips_transient_and_records(fake_host: Make) -> None:
    """A process: stop's end-to-end test (``python -m virtguests``, virsh on PATH)."""
    host = fake_host(guests({"name": "web"}, {"name": "scratch", "persistent": False},
                            {"name": "db"}, {"name": "off", "state": "shutoff"}))
    run = host.run("stop")
    assert run.code == 0, run.err
    assert run.lines == [
        "Running guests on default URI: web, scratch, db",
        "Not suspending transient guests on URI: default: scratch",
        "Suspending guests on default URI...",
        "Suspending web: ...",
        "Suspending web: done",
        "Suspending db: ...",
        "Suspending db: done",
    ]
    assert host.list_file.read_text() == f"default {host.uuid('web')} {host.uuid('db')}\n"
    assert host.managed_saved() == {"web", "db"} and host.active() == {"scratch"}
    assert ["managedsave", host.uuid("web")] in host.commands()


def test_start_resumes_by_uuid_and_cleans_up(fake_host: Make) -> None:
    """Processes: start's end-to-end test (and a stop before it)."""
    host = fake_host(guests({"name": "web"}, {"name": "db"}), "BYPASS_CACHE=1\n")
    host.run("stop")
    run = host.run("start")
    assert run.code == 0, run.err
    assert run.lines == ["Resuming guests on default URI...",
                         "Resuming guest web: done", "Resuming guest db: done"] or \
        sorted(run.lines) == sorted(["Resuming guests on default URI...",
                                     "Resuming guest web: done", "Resuming guest db: done"])
    assert host.active() == {"web", "db"} and host.managed_saved() == set()
    assert not host.list_file.exists() and (host.state_dir / "libvirt-guests.started").exists()
    assert ["start", "--bypass-cache", host.uuid("web")] in host.commands()


def test_no_running_guests(fake_host: Make) -> None:
    """Processes: status's end-to-end test, after a stop and a start with nothing to do."""
    host = fake_host(guests({"name": "off", "state": "shutoff"}))
    run = host.run("stop")
    assert run.lines == ["Running guests on default URI: no running guests."]
    assert run.code == 0 and not host.list_file.exists()
    assert (host.run("start").code, host.run("status").out) == (0, "started\n")


def test_start_without_list_file_only_marks_started(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}))
    run = run_here(host, "start")
    assert (run.code, run.out) == (0, "")
    assert host.calls() == []


def test_on_boot_ignore_drops_the_list(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}), "ON_BOOT=ignore\n")
    run_here(host, "stop")
    run = run_here(host, "start")
    assert run.lines == ["libvirt-guests is configured not to start any guests on boot"]
    assert not host.list_file.exists() and host.active() == set()


def test_already_active_guest_is_left_alone(fake_host: Make) -> None:
    """Our own stop named the guests, so start asks virsh to start each by UUID and
    virsh itself refuses a running one: no listing, and no race with autostart.  Its
    state is then asked once: a guest another job is saving is kept, not settled."""
    host = fake_host(guests({"name": "web"}, {"name": "db"}), "PARALLEL_START=1\n")
    run_here(host, "stop")
    host.virsh("start", "db")
    before = len(host.commands())
    run = run_here(host, "start")
    assert run.code == 0, run.err
    assert run.lines == ["Resuming guests on default URI...", "Resuming guest web: done",
                         "Resuming guest db: already active"]
    db = host.uuid("db")
    assert host.commands()[before:] == [["start", host.uuid("web")], ["start", db],
                                        ["domstate", "--reason", db]]
    assert host.active() == {"web", "db"} and not host.pending_file.exists()
    doc = json.loads(run_here(host, "--json", "status").out)
    assert {g["name"]: g["outcome"] for g in doc["last_run"]["guests"]} == {
        "web": "resumed", "db": "already active"}


def test_a_list_file_from_libvirt_guests_is_listed_first(fake_host: Make) -> None:
    """Guests we cannot name (libvirt-guests wrote the list) cost one listing, as before."""
    host = fake_host(guests({"name": "web", "state": "shutoff", "managed_save": True},
                            {"name": "db"}), "PARALLEL_START=1\n")
    web, db = host.uuid("web"), host.uuid("db")
    host.list_file.write_text(f"default {web} {db}\n")
    run = run_here(host, "start")
    assert run.lines == ["Resuming guests on default URI...", "Resuming guest web: done",
                         "Resuming guest db: already active"]
    assert host.commands() == [[observe.batch(observe.EVERY)], ["start", web],
                               ["domstate", "--reason", db]]  # not being saved?


def test_a_named_guest_undefined_since_the_stop_is_dropped_with_an_error(
        fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}, {"name": "gone"}), "PARALLEL_START=1\n")
    run_here(host, "stop")
    web, gone = host.uuid("web"), host.uuid("gone")
    host.set_host(guests({"name": "web", "uuid": web, "state": "shutoff",
                          "managed_save": True}))
    run = run_here(host, "start")
    assert run.code == 1
    assert run.lines == ["Resuming guests on default URI...", "Resuming guest web: done"]
    assert f"recorded guest {gone} no longer exists on default; dropped" in run.err
    assert not host.list_file.exists() and not host.pending_file.exists()


def test_the_first_start_waits_for_a_libvirtd_that_is_still_starting(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}, {"name": "db"}),
                     "PARALLEL_START=1\nRETRIES_SLEEP=0.05\n")
    run_here(host, "stop")
    saved = {"state": "shutoff", "managed_save": True}
    host.set_host({"uris": {"default": {"unreachable_calls": 2, "guests": [
        {"name": "web", "uuid": host.uuid("web"), **saved},
        {"name": "db", "uuid": host.uuid("db"), **saved}]}}})
    before = len(host.commands())
    run = run_here(host, "start")
    assert run.code == 0, run.err
    assert run.lines == ["Resuming guests on default URI...", "Resuming guest web: done",
                         "Resuming guest db: done"]
    assert host.commands()[before:] == [["start", host.uuid("web")]] * 3 + [
        ["start", host.uuid("db")]]


def test_uri_no_longer_configured_is_ignored(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}]},
                               "test:///old": {"guests": [{"name": "x"}]}}},
                     'URIS="default test:///old"\n')
    run_here(host, "stop")
    host.set_config("URIS=default\n")
    run = run_here(host, "start")
    assert "Ignoring guests on test:///old URI" in run.lines
    assert host.active() == {"web"}


def test_guest_renamed_between_stop_and_start_is_still_resumed(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}))
    run_here(host, "stop")
    uuid = host.uuid("web")
    host.set_host(guests({"name": "web-renamed", "uuid": uuid, "state": "shutoff",
                          "managed_save": True}))
    run = run_here(host, "start")
    assert "Resuming guest web-renamed: done" in run.lines
    assert host.active() == {"web-renamed"}


def test_save_failure_is_reported_and_guest_still_recorded(fake_host: Make) -> None:
    host = fake_host(guests({"name": "gpu", "fail_save": True}, {"name": "db"}))
    run = run_here(host, "stop")
    assert run.code == 1
    assert "Suspending gpu: done" not in run.lines and "Suspending db: done" in run.lines
    assert "saving guest gpu failed: error:" in run.err
    assert host.uuid("gpu") in host.list_file.read_text()


def test_escalation_suspend_then_shutdown_then_poweroff(fake_host: Make) -> None:
    host = fake_host(guests({"name": "gpu", "fail_save": True, "shutdown_seconds": 0.2},
                            {"name": "stuck", "fail_save": True, "ignore_shutdown": True},
                            {"name": "db"}),
                     'ON_SHUTDOWN="suspend shutdown poweroff"\nSHUTDOWN_TIMEOUT=1\n')
    run = run_here(host, "stop")
    assert "Suspending db: done" in run.lines
    assert "Starting shutdown on guest: gpu" in run.lines
    assert "Shutdown of guest gpu complete." in run.lines
    assert "Shutdown of guest stuck failed to complete in time." in run.lines
    assert "Powering off guest stuck: done" in run.lines
    assert "saving guest gpu failed" in run.err and "trying shutdown" in run.err
    assert host.active() == set()
    commands = host.commands()
    assert ["destroy", host.uuid("stuck")] in commands
    assert ["destroy", host.uuid("gpu")] not in commands
    doc = json.loads(run_here(host, "--json", "status").out)
    outcomes = {g["name"]: g["outcome"] for g in doc["last_run"]["guests"]}
    assert outcomes == {"gpu": "shut off", "stuck": "powered off", "db": "saved"}
    # every guest is still recorded so start brings it back
    assert run_here(host, "start").code == 0 and host.active() == {"gpu", "stuck", "db"}


def test_serial_shutdown_messages(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web", "shutdown_seconds": 0.2},
                            {"name": "db", "shutdown_seconds": 0.1},
                            {"name": "tmp", "persistent": False, "shutdown_seconds": 0.1}),
                     "ON_SHUTDOWN=shutdown\n")
    run = run_here(host, "stop")
    assert run.code == 0
    assert run.lines == [
        "Running guests on default URI: web, db, tmp",
        "Shutting down guests on default URI...",
        "Starting shutdown on guest: web", "Shutdown of guest web complete.",
        "Starting shutdown on guest: db", "Shutdown of guest db complete.",
        "Starting shutdown on guest: tmp", "Shutdown of guest tmp complete.",
    ]
    # transient guests cannot come back, so they are not recorded
    assert host.list_file.read_text() == f"default {host.uuid('web')} {host.uuid('db')}\n"


def test_shutdown_command_forces_shutdown_mode(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web", "shutdown_seconds": 0.1}))
    run = run_here(host, "shutdown")
    assert "Starting shutdown on guest: web" in run.lines and host.managed_saved() == set()


def test_parallel_shutdown_keeps_n_in_flight(fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"g{i}", "shutdown_seconds": 0.3 + 0.05 * i}
                              for i in range(5))),
                     "ON_SHUTDOWN=shutdown\nPARALLEL_SHUTDOWN=2\n")
    run = run_here(host, "stop")
    assert run.code == 0, run.err
    first_done = next(i for i, line in enumerate(run.lines) if line.endswith("complete."))
    assert sum(1 for line in run.lines[:first_done]
               if line.startswith("Starting shutdown on guest:")) == 2
    assert sum(1 for line in run.lines if line.endswith("complete.")) == 5
    assert host.active() == set()


def test_stale_list_file_is_reported_and_running_guests_still_protected(
        fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}, {"name": "db"}))
    run_here(host, "stop")
    host.virsh("start", "db")  # an admin started one by hand; no `start` ran
    run = run_here(host, "stop")
    assert "was never resumed by a start" in run.err
    assert "Suspending db: done" in run.lines
    assert host.list_file.read_text() == f"default {host.uuid('web')} {host.uuid('db')}\n"
    run_here(host, "start")
    assert host.active() == {"web", "db"}


def test_unreachable_uri_at_stop_is_an_error_and_others_are_protected(fake_host: Make) -> None:
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}]},
                               "test:///down": {"unreachable": True}}},
                     'URIS="test:///down default"\nCONNECT_RETRIES=1\nRETRIES_SLEEP=0\n')
    run = run_here(host, "stop")
    assert run.code == 1
    assert "Can't connect to test:///down. Skipping." in run.lines
    assert "Suspending web: done" in run.lines
    assert "test:///down" in run.err and "not protected" in run.err


def test_unreachable_uri_at_start_is_kept_for_the_next_start(fake_host: Make) -> None:
    two = {"default": {"guests": [{"name": "web"}]},
           "test:///far": {"guests": [{"name": "x"}, {"name": "y"}]}}
    host = fake_host({"uris": two}, 'URIS="default test:///far"\nCONNECT_RETRIES=0\n')
    run_here(host, "stop")
    x, y = host.uuid("x", "test:///far"), host.uuid("y", "test:///far")
    down = {"uris": {**two, "test:///far": {**two["test:///far"], "unreachable": True}}}
    saved_state = host.host_file.with_name("host.yaml.state.json").read_text()
    host.set_host(down)
    host.host_file.with_name("host.yaml.state.json").write_text(saved_state)
    run = run_here(host, "start")
    assert run.code == 1
    assert "Can't connect to test:///far. Skipping." in run.lines
    assert f"stay recorded for the next start: {x} {y}" in run.err
    assert host.pending_file.read_text() == f"test:///far {x} {y}\n"
    status = run_here(host, "status")  # guests still owed are saved guests: not "started"
    assert status.code == 3
    assert status.lines == ["stopped, with saved guests",
                            f"Not resumed at the last start, kept for the next one: "
                            f"test:///far: {x} {y}"]
    host.set_host({"uris": two})
    host.host_file.with_name("host.yaml.state.json").write_text(
        saved_state.replace('"unreachable": true', '"unreachable": false'))
    again = run_here(host, "start")
    assert again.code == 0, again.err
    assert host.active("test:///far") == {"x", "y"} and not host.pending_file.exists()


def test_failed_start_is_kept_and_named(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}, {"name": "broken", "fail_start": True}))
    run_here(host, "stop")
    run = run_here(host, "start")
    assert run.code == 1
    assert "Resuming guest broken: failed" in run.lines
    assert "not resumed, kept for the next start: broken" in run.err
    assert host.pending_file.read_text() == f"default {host.uuid('broken')}\n"


def test_sync_time_failure_is_reported_cleanly(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web"}), "SYNC_TIME=1\n")
    run_here(host, "stop")
    run = run_here(host, "start")
    assert run.code == 0 and "Resuming guest web: done" in run.lines
    assert "could not sync the time of guest web: error:" in run.err
    assert ["domtime", "--sync", host.uuid("web")] in host.commands()


def test_resume_orphans(fake_host: Make) -> None:
    host = fake_host(guests({"name": "web", "state": "shutoff", "managed_save": True},
                            {"name": "plain", "state": "shutoff"}),
                     "RESUME_ORPHANS=1\n")
    run = run_here(host, "start")
    assert "Resuming guest web: done" in run.lines
    assert "has a managed-save image but was not recorded" in run.err
    assert host.active() == {"web"}


def test_hostile_guest_names(fake_host: Make) -> None:
    """A process: the names must reach a real virsh executable as arguments, no shell
    (in-process the production runner's spawning is replaced)."""
    names = ["with space", "quote'\"s", "$(touch /tmp/pwned-virtguests)", "ünïcødé-✓", "-dash"]
    host = fake_host(guests(*({"name": n} for n in names)))
    run = host.run("stop")
    assert run.code == 0, run.err
    for name in names:
        assert f"Suspending {name}: done" in run.lines
    assert host.run("start").code == 0
    assert host.active() == set(names)
    import os
    assert not os.path.exists("/tmp/pwned-virtguests")


SEPARATORS = ["\u2028", "\u2029", "\x85", "\r", "\x0b", "\x1c"]


@pytest.mark.parametrize(("separator", "process"),
                         [(s, False) for s in SEPARATORS] + [("\r", True)],
                         ids=[repr(s) for s in SEPARATORS] + ["'\\r'-process"])
def test_a_name_with_a_line_separator_breaks_nobody_elses_protection(
        fake_host: Make, separator: str, process: bool) -> None:
    """virsh prints names raw; only \\n ends a line of its output (str.splitlines would split
    at these too, and one tenant's name would make the whole URI unreadable).  Once also
    as processes: there the output is read back through a real pipe."""
    evil = f"evil{separator}x"
    host = fake_host(guests({"name": "web"}, {"name": evil}, {"name": "db"}))
    run = host.run("stop") if process else run_here(host, "stop")
    assert run.code == 0, run.err
    assert host.managed_saved() == {"web", evil, "db"}
    assert "Suspending web: done" in run.lines and "Suspending db: done" in run.lines
    assert all(separator not in line for line in run.lines)  # shown escaped, one line
    assert (host.run("start") if process else run_here(host, "start")).code == 0
    assert host.active() == {"web", evil, "db"}


def test_uri_with_spaces_and_socket_query(fake_host: Make) -> None:
    # URIS is whitespace-separated (as in the reference): a space is written %20,
    # which libvirt decodes, so the list file's one-token URI stays intact.
    uri = "qemu+unix:///system?socket=/tmp/dir%20with%20space/sock"
    host = fake_host({"uris": {uri: {"guests": [{"name": "web"}]}}}, f"URIS='{uri}'\n")
    assert run_here(host, "stop").code == 0
    assert host.list_file.read_text() == f"{uri} {host.uuid('web', uri)}\n"
    run = run_here(host, "start")
    assert run.code == 0, run.err
    assert host.active(uri) == {"web"}


def peak(host: FakeHost, verb: str) -> int:
    """Most calls of *verb* that overlapped in time (from the fake's call log)."""
    events = []
    for call in host.calls():
        argv = call["argv"][2:] if call["argv"][:1] == ["-c"] else call["argv"]
        if argv[0] == verb:
            events += [(call["start"], 1), (call["end"], -1)]
    level = best = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        best = max(best, level)
    return best


def test_parallel_suspend_saves_n_at_once(fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"g{i}", "save_seconds": 0.6} for i in range(6))),
                     "PARALLEL_SUSPEND=3\n")
    run = run_here(host, "stop")
    assert run.code == 0, run.err
    assert sum(1 for ln in run.lines if ln.endswith(": done")) == 6
    assert peak(host, "managedsave") == 3


def test_serial_suspend_is_the_default(fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"g{i}", "save_seconds": 0.2} for i in range(3))))
    run_here(host, "stop")
    assert peak(host, "managedsave") == 1


def test_parallel_start_bounded_and_start_delay_serialises(fake_host: Make) -> None:
    host = fake_host(guests(*({"name": f"g{i}", "start_seconds": 0.5} for i in range(5))),
                     "PARALLEL_START=2\n")
    run_here(host, "stop")
    run = run_here(host, "start")
    assert run.code == 0, run.err
    assert peak(host, "start") == 2
    run_here(host, "stop")
    host.log_file.unlink()
    host.set_config("START_DELAY=1\n")
    assert run_here(host, "start").code == 0
    assert peak(host, "start") == 1
