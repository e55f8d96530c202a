"""Every user-visible spelling of a concept, pinned: renaming code must not move these.

The words below are read by admins, scripts and earlier runs' files (the run report,
the pending file, ``status --json``): the names in the code may change, these may not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from virtguests import config, model
from virtguests.state import Paths
from virtguests.testing import FakeHost, run_inprocess

Make = Callable[..., FakeHost]

OUTCOMES = {
    "saved", "shut off", "powered off", "failed", "timed out", "skipped", "interrupted",
    "given up", "save in progress", "internal error", "resumed", "already active",
    "no longer exists", "skipped by policy", "migrated", "returned home", "left on peer",
}
ACTIONS = ("migrate", "suspend", "shutdown", "poweroff")


def test_outcome_words() -> None:
    assert {str(outcome) for outcome in model.Outcome} == {*OUTCOMES, "pending"}
    assert {"saved", "shut off", "powered off", "migrated"} == model.PROTECTED
    assert {"resumed", "already active", "no longer exists", "skipped by policy",
            "returned home", "left on peer"} == model.SETTLED


def test_action_words() -> None:
    assert {str(action) for action in model.Action} == {*ACTIONS, "start", "none"}
    assert model.STOP_CHAIN == ACTIONS


def test_words_are_their_values() -> None:
    """A ``Word`` equals, hashes and prints as its plain string (files read back, JSON)."""
    word = model.Action.SUSPEND
    assert word == "suspend" and hash(word) == hash("suspend") and "suspend" in {word}
    assert (str(word), f"{word}", f"{word:>8}", "%s" % word) == (  # noqa: UP031
        "suspend", "suspend", " suspend", "suspend")
    assert json.dumps({"action": word}) == '{"action": "suspend"}'


def test_plan_notes() -> None:
    assert {str(note) for note in model.PlanNote} == {
        "transient: not suspended", "left running by policy", "recorded but no longer exists"}


def test_no_target_words_are_pinned_and_documented() -> None:
    """``no target: PEER: WHY; ...`` (plan stop, stop, the man page's MIGRATE_URIS)."""
    assert {str(why) for why in model.PeerWhy} == {
        "no target", "no peers (MIGRATE_URIS is empty)", "the guest's memory is unknown",
        "not in its migrate_to", "unreachable ({error})", "its host UUID is unknown",
        "the same host as the guest's", "its free memory is unknown",
        "{free} MiB free, needs {need} MiB"}
    page = " ".join((Path(__file__).parent.parent / "doc" / "virtguests.8.md").read_text()
                    .split())
    shown = {"{error}": "ERROR", "{free}": "N", "{need}": "M"}
    for why in model.PeerWhy:
        text = str(why)
        for field, name in shown.items():
            text = text.replace(field, name)
        assert f"`{text}" in page, text
    assert model.no_target([("qemu:///a", "x"), ("", "y")]) == "no target: qemu:///a: x; y"


def test_file_names(tmp_path: Path) -> None:
    paths = Paths.in_dir(tmp_path)
    assert {name: Path(str(path)).name for name, path in vars(paths).items()} == {
        "list_file": "libvirt-guests", "marker": "libvirt-guests.started",
        "pending": "virtguests-pending", "run_report": "virtguests-last-run.json",
        "lock": "virtguests.lock", "seen": "virtguests-seen.json",
        "migrated": "virtguests-migrated"}


def test_config_words() -> None:
    defaults = config.Config()
    assert (defaults.on_boot, defaults.persistent_only, defaults.on_shutdown) == (
        "start", "default", ("suspend",))


HOST = {"uris": {"default": {"guests": [
    {"name": "web", "uuid": "5a1e0000-0000-4000-8000-000000000001"},
    {"name": "db", "uuid": "5a1e0000-0000-4000-8000-000000000002"}]}}}


def test_status_report_and_plan_keys(fake_host: Make) -> None:
    host = fake_host(HOST, "ON_SHUTDOWN=shutdown\nON_BOOT=start\n")
    plan_stop = json.loads(run_inprocess(host, "--json", "plan")[0].out)
    assert set(plan_stop) == {"format_version", "command", "uris"}
    assert plan_stop["format_version"] == 1
    assert set(plan_stop["uris"][0]) == {"uri", "error", "guests"}
    assert set(plan_stop["uris"][0]["guests"][0]) == {
        "name", "uuid", "order", "actions", "timeout", "commands", "target",
        "target_note"}
    assert plan_stop["uris"][0]["guests"][0]["actions"] == ["shutdown"]
    assert plan_stop["uris"][0]["guests"][0]["commands"] == [
        [str(host.bin / "virsh"), "shutdown", "5a1e0000-0000-4000-8000-000000000001"]]

    assert run_inprocess(host, "stop")[0].code == 0
    status = json.loads(run_inprocess(host, "--json", "status")[0].out)
    assert set(status) == {"format_version", "state", "exit_status", "list_file",
                           "not_resumed", "migrated", "last_run"}
    assert set(status["list_file"]) == set(status["not_resumed"]) == {
        "path", "entries", "bad_lines"}
    assert set(status["migrated"]) == {"path", "guests", "problems"}
    report = status["last_run"]
    assert set(report) == {"command", "started", "finished", "exit_status", "guests", "virsh"}
    assert [set(entry) for entry in report["virsh"]] == [{"uri", "processes", "connections"}]
    assert set(report["guests"][0]) == {"uri", "uuid", "name", "outcome", "steps"}
    assert set(report["guests"][0]["steps"][0]) == {"action", "result", "seconds", "detail"}
    assert [(g["outcome"], g["steps"][0]["action"]) for g in report["guests"]] == [
        ("shut off", "shutdown"), ("shut off", "shutdown")]

    plan_start = json.loads(run_inprocess(host, "--json", "plan", "start")[0].out)
    assert set(plan_start["uris"][0]) == {"uri", "error", "guests", "listed"}
    assert set(plan_start["uris"][0]["guests"][0]) == {
        "name", "uuid", "order", "actions", "note", "delay_after", "commands"}
    assert plan_start["uris"][0]["guests"][0]["actions"] == ["start"]

    host.set_host({"uris": {"default": {"guests": [HOST["uris"]["default"]["guests"][0]]}}})
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    report = json.loads(run_inprocess(host, "--json", "report")[0].out)
    assert set(report) == {"format_version", "recorded", "path", "problems", "command",
                           "started", "finished", "exit_status", "guests", "virsh", "away"}
    assert (report["format_version"], report["recorded"]) == (1, True)
    assert [(g["name"], g["outcome"]) for g in report["guests"]] == [
        ("web", "already active"), ("db", "no longer exists")]
    assert "recorded guest 5a1e0000-0000-4000-8000-000000000002 no longer exists" in run.err


def test_pending_words(fake_host: Make) -> None:
    """A guest start cannot resume stays in ``virtguests-pending``, under ``not_resumed``."""
    host = fake_host({**HOST, "faults": [{"cmd": "start", "action": "fail", "error": "internal"}]},
                     "ON_SHUTDOWN=suspend\nON_BOOT=start\n")
    assert run_inprocess(host, "stop")[0].code == 0
    run, _ = run_inprocess(host, "start")
    assert run.code == 1
    assert "not resumed, kept for the next start: web, db" in run.err
    assert (host.root / "state" / "virtguests-pending").exists()
    status, _ = run_inprocess(host, "status")
    assert "Not resumed at the last start, kept for the next one: default: " in status.out
    document = json.loads(run_inprocess(host, "--json", "status")[0].out)
    assert len(document["not_resumed"]["entries"]["default"]) == 2
    assert {g["outcome"] for g in document["last_run"]["guests"]} == {"failed"}


def test_check_gueststatus_and_empty_report_keys(fake_host: Make) -> None:
    host = fake_host(HOST, "ON_SHUTDOWN=shutdown\nON_BOOT=sometimes\n")
    run, _ = run_inprocess(host, "--json", "check")
    assert run.code == 6
    check = json.loads(run.out)
    assert set(check) == {"format_version", "config", "ok", "exit_status", "problems",
                          "warnings"}
    assert (check["format_version"], check["ok"], check["exit_status"]) == (1, False, 6)
    [problem] = check["problems"]
    assert set(problem) == {"file", "line", "key", "message"}
    assert (problem["file"], problem["line"], problem["key"]) == (check["config"], 2, "ON_BOOT")

    host = fake_host(HOST, "ON_SHUTDOWN=shutdown\n")
    run, _ = run_inprocess(host, "--json", "check")
    assert (run.code, json.loads(run.out)["problems"]) == (0, [])
    guests = json.loads(run_inprocess(host, "--json", "gueststatus")[0].out)
    assert set(guests) == {"format_version", "uris"}
    assert set(guests["uris"][0]) == {"uri", "error", "guests"}
    assert set(guests["uris"][0]["guests"][0]) == {
        "uuid", "name", "active", "persistent", "managed_save"}

    run, _ = run_inprocess(host, "--json", "report")
    assert run.code == 1
    assert json.loads(run.out) == {"format_version": 1, "recorded": False, "problems": [],
                                   "path": str(host.root / "state" / "virtguests-last-run.json"),
                                   "away": []}
    run, _ = run_inprocess(host, "report")
    assert run.code == 1 and "no run recorded yet" in run.out


def test_json_words_are_the_enum_values(fake_host: Make) -> None:
    """Every action, outcome and note a document shows is one of the ``Word`` values the
    man page lists (JSON): a stop that fails one guest, then start, then plans."""
    host = fake_host({**HOST, "faults": [{"cmd": "shutdown", "guest": "db", "action": "fail",
                                          "error": "internal"}]},
                     "ON_SHUTDOWN=shutdown\nON_BOOT=start\n")
    run_inprocess(host, "stop")
    run_inprocess(host, "start")
    documents = [json.loads(run_inprocess(host, "--json", *args)[0].out)
                 for args in (("report",), ("status",), ("plan",), ("plan", "start"))]
    words: dict[str, set[object]] = {"action": set(), "outcome": set(), "note": set()}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("action", "outcome", "result"):
                    words["outcome" if key != "action" else "action"].add(value)
                elif key == "actions":
                    words["action"].update(value)
                elif key == "note":
                    words["note"].add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(documents)
    assert words["action"] <= {str(a) for a in model.Action} and words["action"]
    assert words["outcome"] <= {str(o) for o in model.Outcome} and len(words["outcome"]) > 1
    assert words["note"] - {None} <= {str(n) for n in model.PlanNote} | {
        str(o) for o in model.Outcome}
